"""The memory table: Phi-2 + CLIP ViT-B/32 at their real shapes (random weights), on the CPU.

    python benchmarks/memory.py [--tokens 64 512] [--tiny]

For quantization ``nf4`` (4-bit, the default) and ``none`` (``configs/bf16_lora.yaml``), loads the
model through mmcaption's own ``from_pretrained`` path and prints, each figure marked *measured* or
*computed*:

- weights: bytes of every parameter and buffer (4-bit storage and its quantization state included);
- trainable tensors + optimizer: LoRA, projection and cross-attention in float32, their gradients and
  AdamW's two moments (16 bytes per trainable parameter);
- activations per sample at each ``--tokens`` length (one image), without gradient checkpointing:
  the bytes of every tensor autograd keeps for the backward pass (``saved_tensors_hooks``; weights
  excluded) during the forward pass and the chunked loss, with float32 compute (this CPU emulates
  bfloat16, and the count does not depend on speed); with ``compute_dtype: bfloat16`` on a GPU the
  tensors the decoder computes are bfloat16: about half (computed);
- with gradient checkpointing (computed from the measured figure): each decoder layer keeps only its
  input, and backward recomputes one layer at a time.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import torch
from real_shapes import PHI2, TINY_PHI, write_backbones  # benchmarks/real_shapes.py, beside this script

from mmcaption.model import MultimodalCausalLM, MultimodalConfig
from mmcaption.model.loss import chunked_cross_entropy


def tensor_bytes(tensors) -> int:
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def saved_activation_bytes(model: MultimodalCausalLM, tokens: int) -> int:
    """Bytes autograd keeps for backward in one sample's forward pass and loss (weights excluded)."""
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights and storage.nbytes():
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    vision = model.vision_model.config
    input_ids = torch.randint(0, model.language_model.config.vocab_size, (1, tokens))
    pixels = torch.randn(1, 3, vision.image_size, vision.image_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        hidden = model.hidden_states(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixels)
        total, _ = chunked_cross_entropy(hidden, model.output_head, input_ids)
    del hidden, total
    return sum(saved.values())


def gib(n: float) -> str:
    return f"{n / 2**30:6.2f} GiB" if n >= 2**28 else f"{n / 2**20:6.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--tiny", action="store_true", help="small shapes: a check that runs in seconds")
    args = parser.parse_args()
    phi = TINY_PHI if args.tiny else PHI2
    with tempfile.TemporaryDirectory() as scratch:
        language, vision = write_backbones(Path(scratch), args.tiny)
        print(f"{'Phi-2 + CLIP ViT-B/32' if not args.tiny else 'tiny'} shapes, random weights, LoRA r=32 on q/k/v/dense, "
              "cross-attention in the last 4 layers; per sample: one image and N tokens")
        for quantization in ("nf4", "none"):
            # float32 compute: the tensors saved for backward are counted in float32 (see the docstring)
            config = MultimodalConfig(language_model=str(language), vision_model=str(vision), quantization=quantization,
                                      compute_dtype="float32" if quantization == "nf4" else "bfloat16",
                                      cross_attention_layers=[-4, -3, -2, -1], lora_r=32, lora_alpha=64, lora_dropout=0.05)
            model = MultimodalCausalLM.from_config(config).train()
            trainable = [p for p in model.parameters() if p.requires_grad]
            frozen_language = tensor_bytes(t for n, t in [*model.language_model.named_parameters(), *model.language_model.named_buffers()]
                                           if not t.requires_grad)
            frozen_vision = tensor_bytes([*model.vision_model.parameters(), *model.vision_model.buffers()])
            count = sum(p.numel() for p in trainable)
            print(f"\n{quantization}:")
            print(f"  weights: language model {gib(frozen_language)}, vision tower {gib(frozen_vision)} (measured)")
            print(f"  trainable: {count / 1e6:.1f} M parameters: {gib(4 * count)} + gradients {gib(4 * count)} + AdamW "
                  f"{gib(8 * count)} = {gib(16 * count)} (measured count x bytes)")
            if quantization == "none":
                del model
                gc.collect()
                continue  # the same tensors are saved for backward as with nf4 (bitsandbytes keeps the input, as nn.Linear)
            layers, width = phi["num_hidden_layers"], phi["hidden_size"]
            for tokens in args.tokens:
                measured = saved_activation_bytes(model, tokens)
                gc.collect()
                layer_inputs = layers * tokens * width * 4
                checkpointed = layer_inputs + measured / layers  # each layer's input, plus one layer recomputed
                print(f"  activations per sample at {tokens:4} tokens: {gib(measured)} float32 (measured), ~{gib(measured / 2)} "
                      f"bfloat16 (computed); with gradient checkpointing ~{gib(checkpointed)} float32 / "
                      f"~{gib(checkpointed / 2)} bfloat16 (computed)", flush=True)
            del model
            gc.collect()


if __name__ == "__main__":
    main()

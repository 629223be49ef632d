"""The memory table: Phi-2 + CLIP ViT-B/32 at their real shapes (random weights), on the CPU.

    python benchmarks/memory.py [--tokens 64 512] [--tiny]

At the real shapes ``--tokens 64`` takes about 8 minutes and 17 GB of RAM on 2 cores; 512 tokens take more
than 24 GB (the bf16-mixed passes run two samples).

For quantization ``nf4`` (4-bit, the default) and ``none`` (``configs/bf16_lora.yaml``), loads the
model through mmcaption's own ``from_pretrained`` path and prints, each figure marked *measured* or
*computed*:

- weights: bytes of every parameter and buffer (4-bit storage and its quantization state included);
- trainable tensors + optimizer: LoRA, projection and cross-attention in float32, their gradients and
  AdamW's two moments (16 bytes per trainable parameter);
- activations per sample at each ``--tokens`` length (one image), without gradient checkpointing:
  the bytes of every tensor autograd keeps for the backward pass (``saved_tensors_hooks``; weights
  excluded) during the forward pass and the chunked loss, measured three ways: with float32 compute
  (the demo configs on a CPU), under bf16-mixed with ``compute_dtype: bfloat16`` (the real configs; the
  CPU emulates bfloat16 slowly, and the count does not depend on speed), and the same with the
  unquantized weights (embeddings, norms, output head, biases) in float32, as mmcaption loaded them before
  they followed the compute dtype - which kept the residual stream, and what it saves, in float32;
- with gradient checkpointing (computed from the measured figures): each decoder layer keeps only its
  input, and backward recomputes one layer at a time.

On a GPU, dropout keeps a one-byte mask; on a CPU it keeps a mask in the input's dtype, so the
figures here count the LoRA dropout masks (4 per layer, each the layer's input) and Phi-2's residual
dropout masks (2 per layer, ``resid_pdrop`` 0.1 as its config has it) 4 (float32) or 2 (bfloat16) bytes
per element, where a GPU keeps 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from real_shapes import PHI2, TINY_PHI, write_backbones  # benchmarks/real_shapes.py, beside this script

from mmcaption.model import MultimodalCausalLM, MultimodalConfig
from mmcaption.model.backbones import unquantized_weights_to
from mmcaption.model.loss import chunked_cross_entropy


def tensor_bytes(tensors) -> int:
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def saved_activation_bytes(model: MultimodalCausalLM, tokens: int, autocast: torch.dtype | None = None, batch: int = 1) -> int:
    """Bytes autograd keeps for backward in the forward pass and loss of ``batch`` samples (weights excluded),
    under ``torch.autocast`` to ``autocast`` if given (what Lightning's bf16-mixed does: its copies of the
    trainable weights in that dtype, kept for backward, are counted here too)."""
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights and storage.nbytes():
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    vision = model.vision_model.config
    input_ids = torch.randint(0, model.language_model.config.vocab_size, (batch, tokens))
    pixels = torch.randn(batch, 3, vision.image_size, vision.image_size)
    mixed = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), mixed:
        hidden = model.hidden_states(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixels)
        total, _ = chunked_cross_entropy(hidden, model.output_head, input_ids)
    del hidden, total
    return sum(saved.values())


def mixed_bytes(model: MultimodalCausalLM, lengths: list[int]) -> tuple[dict[int, int], int]:
    """Under bf16-mixed: the bytes kept per sample at each length (two samples' bytes less one's), and what
    is kept once per step whatever the batch (what is left of one sample: autocast's bfloat16 copies of the
    trainable weights)."""
    one = {tokens: saved_activation_bytes(model, tokens, torch.bfloat16) for tokens in lengths}
    per_sample = {tokens: saved_activation_bytes(model, tokens, torch.bfloat16, batch=2) - one[tokens] for tokens in lengths}
    return per_sample, max(one[tokens] - per_sample[tokens] for tokens in lengths)


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
            config = MultimodalConfig(language_model=str(language), vision_model=str(vision), quantization=quantization,
                                      compute_dtype="bfloat16", cross_attention_layers=[-4, -3, -2, -1], lora_r=32,
                                      lora_alpha=64, lora_dropout=0.05)
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
            bf16, per_step = mixed_bytes(model, args.tokens)
            unquantized_weights_to(model.language_model.get_base_model(), torch.float32)  # as before they followed it
            bf16_float32_weights, _ = mixed_bytes(model, args.tokens)
            del model
            gc.collect()
            # float32 compute, as the demo configs on a CPU
            model = MultimodalCausalLM.from_config(replace(config, compute_dtype="float32")).train()
            float32 = {tokens: saved_activation_bytes(model, tokens) for tokens in args.tokens}
            del model
            gc.collect()
            layers, width = phi["num_hidden_layers"], phi["hidden_size"]
            for tokens in args.tokens:
                # with gradient checkpointing: each layer's input (the residual stream), plus one layer recomputed
                checkpointed_32 = layers * tokens * width * 4 + float32[tokens] / layers
                checkpointed_16 = layers * tokens * width * 2 + bf16[tokens] / layers
                print(f"  activations per sample at {tokens:4} tokens: {gib(float32[tokens])} float32 (measured); "
                      f"{gib(bf16[tokens])} bf16-mixed (measured; {gib(bf16_float32_weights[tokens])} with float32 "
                      f"embeddings, norms, head and biases: {bf16_float32_weights[tokens] / bf16[tokens]:.2f}x); with gradient "
                      f"checkpointing ~{gib(checkpointed_32)} float32 / ~{gib(checkpointed_16)} bf16-mixed (computed)", flush=True)
            print(f"  bf16-mixed, per step whatever the batch: {gib(per_step)} of bfloat16 copies of the trainable weights (measured)")

if __name__ == "__main__":
    main()

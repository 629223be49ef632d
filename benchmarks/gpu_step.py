"""Stage-1 training step on a GPU at the real shapes: Phi-2 (2.7B) and CLIP ViT-B/32, random weights.

    python benchmarks/gpu_step.py [--batch_size 16] [--seq_len 32] [--steps 10] [--json results.json]

Writes a random-weight Phi-2-shaped model and a CLIP ViT-B/32-shaped vision tower to a temporary
folder in Hugging Face format, then loads them through mmcaption's own ``from_pretrained`` path and
times the caption-stage training step (LoRA r=32 on q/k/v/dense, gated cross-attention in the last
4 layers, AdamW) for:

- bf16 LoRA: the language model in bfloat16;
- NF4 QLoRA: the language model quantized to 4-bit NF4 by bitsandbytes, bfloat16 compute;

each with the vision tower run every step and with cached vision features. Prints the median step
time, tokens/s and the peak GPU memory of each. ``--tiny`` uses small shapes (a check on any machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, PhiConfig, PhiForCausalLM

from mmcaption.model import MultimodalCausalLM, MultimodalConfig

PHI2 = dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
            partial_rotary_factor=0.4, max_position_embeddings=2048)
CLIP_B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32)
TINY_PHI = dict(vocab_size=512, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                partial_rotary_factor=0.5, max_position_embeddings=256)
TINY_CLIP = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16)


def write_backbones(folder: Path, tiny: bool, device: str) -> tuple[Path, Path]:
    torch.manual_seed(0)
    language, vision = folder / "language_model", folder / "vision_model"
    with torch.device(device):
        PhiForCausalLM(PhiConfig(**(TINY_PHI if tiny else PHI2))).to(torch.bfloat16).save_pretrained(language)
        CLIPVisionModel(CLIPVisionConfig(**(TINY_CLIP if tiny else CLIP_B32))).save_pretrained(vision)
    return language, vision


def measure(model: MultimodalCausalLM, batch_size: int, seq_len: int, steps: int, cached: bool, device: str) -> dict:
    vision = model.vision_model.config
    input_ids = torch.randint(0, model.language_model.config.vocab_size, (batch_size, seq_len), device=device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    pixels = torch.randn(batch_size, 3, vision.image_size, vision.image_size, device=device)
    if cached:
        inputs["vision_features"] = model.vision_features(pixels).to(torch.float16)
    else:
        inputs["pixel_values"] = pixels
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def one_step() -> None:
        logits = model(**inputs).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), input_ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        one_step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        one_step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"step_s": median, "tokens_per_s": batch_size * seq_len / median,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=32, help="COCO captions: ~16 tokens; 32 covers nearly all")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="small shapes: checks the script on any machine")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        language, vision = write_backbones(Path(scratch), args.tiny, device)
        layers = 4 if not args.tiny else 2
        for name, quantization in (("bf16 LoRA", "none"), ("NF4 QLoRA", "nf4")):
            config = MultimodalConfig(
                language_model=str(language), vision_model=str(vision), quantization=quantization, compute_dtype="bfloat16",
                cross_attention_layers=list(range(-layers, 0)), lora_r=32, lora_alpha=64, lora_dropout=0.05,
            )
            if device == "cuda":
                torch.cuda.empty_cache()
            model = MultimodalCausalLM.from_config(config, device=device).train()
            for cached in (False, True):
                key = f"{name}, {'cached features' if cached else 'vision tower'}"
                results[key] = measure(model, args.batch_size, args.seq_len, args.steps, cached, device)
                r = results[key]
                memory = f"{r['peak_memory_gb']:.1f} GiB" if r["peak_memory_gb"] is not None else "n/a"
                print(f"{key:34} step {r['step_s'] * 1e3:8.1f} ms  {r['tokens_per_s']:9.0f} tokens/s  peak {memory}", flush=True)
            del model
    shapes = "tiny" if args.tiny else "Phi-2 + CLIP ViT-B/32"
    print(f"{shapes}; batch {args.batch_size} x {args.seq_len} tokens; median of {args.steps} steps on {device}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "shapes": shapes, "batch_size": args.batch_size,
                                         "seq_len": args.seq_len, "results": results}, indent=2))


if __name__ == "__main__":
    main()

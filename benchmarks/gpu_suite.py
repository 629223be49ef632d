"""The GPU suite: training and generation at the real shapes (Phi-2 2.7B + CLIP ViT-B/32, random weights).

    python benchmarks/gpu_suite.py [--json results.json]        # a GPU: 2 minutes on an H200 (README, On a GPU)
    python benchmarks/gpu_suite.py --tiny                       # small shapes on any machine (CI runs it)

Writes a random-weight Phi-2-shaped language model (bfloat16) and a CLIP ViT-B/32-shaped vision tower
to a temporary folder in Hugging Face format and loads them through mmcaption's own ``from_pretrained``
path (LoRA r=32 on q/k/v/dense, gated cross-attention in the last 4 layers, AdamW). Prints:

1. training steps: median step time, tokens/s, peak memory and (on a GPU whose peak is known) the MFU that
   ``TrainingThroughput`` would log, for each of
   quantization ``none`` (bf16 LoRA) / ``nf4`` (QLoRA) x the vision tower run every step / cached
   features x the plain loss (the whole batch's float32 logits) / the chunked one (mmcaption's);
2. generation: new tokens/s at batch 1 and 16, with and without the cached image keys/values;
3. the original scripts' batch against mmcaption's at batch 16, same model (nf4): captions padded to
   128 tokens with every position in the loss, the tower every step and the plain loss, against
   captions padded per batch (``--caption_tokens``, a length-grouped COCO batch), cached features and
   the chunked loss. Data loading is not in this ratio (``benchmarks/training.py`` measures it too).

On a GPU the computation is in bfloat16 (as ``configs/caption.yaml``); on a CPU in float32 (most CPUs
emulate bfloat16); peak memory is CUDA's ``max_memory_allocated`` over the timed calls (n/a on a CPU):
everything allocated then, weights, trainable state and gradients included. The real shapes need a GPU
(without one the suite stops at once: on a CPU they would run for hours). A variant that fails (out of
memory, an error in a library) is reported with its error and the others still run; ``--json`` is
rewritten after every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from real_shapes import write_backbones  # benchmarks/real_shapes.py, beside this script

from mmcaption.model import MultimodalCausalLM, MultimodalConfig
from mmcaption.model.loss import chunked_cross_entropy
from mmcaption.model.optim import adamw
from mmcaption.throughput import available_flops

ORIGINAL_PADDING = 128  # the original scripts pad every caption to 128 tokens


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(function: Callable[[], object], repeats: int, warmup: int, device: str) -> tuple[float, float | None]:
    """Median seconds of ``function`` and the peak memory (GiB) over the timed calls (None on a CPU)."""
    for _ in range(warmup):
        function()
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return statistics.median(times), peak


def caption_batch(model: MultimodalCausalLM, batch_size: int, tokens: int, cached: bool, supervise_all: bool, device: str) -> dict:
    """Random captions of ``tokens`` tokens with an image each (pixels, or the tower's cached features in float16)."""
    vision = model.vision_model.config
    input_ids = torch.randint(0, model.language_model.config.vocab_size, (batch_size, tokens), device=device)
    labels = input_ids.clone()
    if not supervise_all:  # per-batch padding: the shorter captions' pads are masked, as the collator does
        lengths = torch.randint(tokens // 2, tokens + 1, (batch_size,), device=device)
        labels[torch.arange(tokens, device=device)[None, :] >= lengths[:, None]] = -100
    pixels = torch.randn(batch_size, 3, vision.image_size, vision.image_size, device=device)
    images = {"vision_features": model.vision_features(pixels).to(torch.float16)} if cached else {"pixel_values": pixels}
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels, **images}


def training_step(model: MultimodalCausalLM, optimizer: torch.optim.Optimizer, batch: dict, chunked: bool, dtype: torch.dtype) -> None:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.autocast(batch["input_ids"].device.type, dtype=dtype, enabled=dtype != torch.float32):
        if chunked:
            total, count = chunked_cross_entropy(model.hidden_states(**inputs), model.output_head, batch["labels"])
            loss = total / count
        else:
            logits = model(**inputs).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def build(language: Path, vision: Path, quantization: str, dtype: str, layers: int, device: str) -> MultimodalCausalLM:
    if device == "cuda":
        torch.cuda.empty_cache()
    config = MultimodalConfig(language_model=str(language), vision_model=str(vision), quantization=quantization,
                              compute_dtype=dtype, cross_attention_layers=list(range(-layers, 0)),
                              lora_r=32, lora_alpha=64, lora_dropout=0.05)
    torch.manual_seed(0)
    return MultimodalCausalLM.from_config(config, device=device).train()


def release(device: str) -> None:
    """Give back what a finished or failed variant held, so that the next one's peak is its own."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def attempt(results: dict, section: str, key: str, measure: Callable[[], object], device: str, save: Callable[[], None]) -> object:
    """``results[section][key] = measure()``; an error (out of memory, a library's) is recorded there
    instead and printed, and the suite goes on. The results file is rewritten either way."""
    try:
        value = measure()
    except Exception as error:  # noqa: BLE001 - one variant's failure must not lose the others' numbers
        value = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]}
        print(f"   {key:45} failed: {value['error']}", flush=True)
        del error  # its traceback holds the variant's tensors
        release(device)
    results[section][key] = value
    save()
    return value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16, help="training batch (the suite's third part uses 16 too)")
    parser.add_argument("--seq_len", type=int, default=64, help="training tokens per sample (the caption configs' max_length)")
    parser.add_argument("--caption_tokens", type=int, default=20, help="a length-grouped COCO batch's padded length with Phi-2's tokenizer")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--new_tokens", type=int, default=32, help="generated tokens per caption")
    parser.add_argument("--tiny", action="store_true", help="small shapes: a check that runs on any machine")
    parser.add_argument("--json", type=Path, help="also write the results here (rewritten after every measurement)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        raise SystemExit("the real shapes need a GPU, and torch sees none here (torch.cuda.is_available() is False; "
                         f"torch {torch.__version__}): run it on a GPU, or --tiny for the small shapes")
    dtype_name = "bfloat16" if device == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    layers = 2 if args.tiny else 4
    shapes = "tiny" if args.tiny else "Phi-2 + CLIP ViT-B/32"
    versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "peft", "bitsandbytes")}
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "shapes": shapes,
                     "compute_dtype": dtype_name, "versions": versions, "training": {}, "generation": {}, "original_scripts": {}}
    print(f"{shapes} (random weights) on {results['device']}, {dtype_name} compute; median of {args.steps} steps; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))

    def memory(gib: float | None) -> str:
        return "n/a" if gib is None else f"{gib:.1f} GiB"

    def train(model, optimizer, batch_size: int, tokens: int, cached: bool, supervise_all: bool, chunked: bool) -> tuple[float, float | None]:
        batch = caption_batch(model, batch_size, tokens, cached, supervise_all, device)
        return timed(lambda: training_step(model, optimizer, batch, chunked, dtype), args.steps, 3, device)

    def variant(language: Path, vision: Path, quantization: str) -> None:
        """Part 1 for one quantization; for nf4 also parts 2 and 3."""
        try:
            model = build(language, vision, quantization, dtype_name, layers, device)
        except Exception as error:  # noqa: BLE001
            results["training"][f"{quantization}, loading"] = {"error": f"{type(error).__name__}: {error}"[:300]}
            print(f"   {quantization}: loading failed: {type(error).__name__}: {error}", flush=True)
            save()
            return
        optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        flops_per_token = model.training_flops_per_token()  # what TrainingThroughput's MFU counts
        peak_flops = available_flops(torch.device(device), dtype) if device == "cuda" else None
        for cached in (False, True):
            for chunked in (False, True):
                key = f"{quantization}, {'cached features' if cached else 'vision tower'}, {'chunked' if chunked else 'plain'} loss"

                def measure(cached=cached, chunked=chunked) -> dict:
                    seconds, peak = train(model, optimizer, args.batch_size, args.seq_len, cached, False, chunked)
                    tokens_per_s = args.batch_size * args.seq_len / seconds
                    mfu = flops_per_token * tokens_per_s / peak_flops if peak_flops else None
                    return {"step_s": seconds, "tokens_per_s": tokens_per_s, "peak_memory_gib": peak, "mfu": mfu}

                row = attempt(results, "training", key, measure, device, save)
                if "error" not in row:
                    print(f"   {key:45} step {row['step_s'] * 1e3:8.1f} ms {row['tokens_per_s']:10.0f} tokens/s"
                          f"  peak {memory(row['peak_memory_gib'])}"
                          + ("" if row["mfu"] is None else f"  MFU {row['mfu']:.1%}"), flush=True)
        if quantization != "nf4":
            return
        model.eval()
        print(f"\n2. generation (nf4, greedy, {args.new_tokens} new tokens)")
        for batch_size in (1, 16):
            for cache in (True, False):
                key = f"batch {batch_size}, image keys/values {'cached' if cache else 'recomputed'}"

                def rate(batch_size=batch_size, cache=cache) -> float:
                    prompt = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
                    size = model.vision_model.config.image_size
                    pixels = torch.randn(batch_size, 3, size, size, device=device)
                    with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                        embeds = model.encode_images(pixels)
                        seconds, _ = timed(lambda: model.generate(
                            prompt, torch.ones_like(prompt), image_embeds=embeds, max_new_tokens=args.new_tokens,
                            min_new_tokens=args.new_tokens, do_sample=False, cache_image_key_values=cache), max(3, args.steps // 2), 1, device)
                    return batch_size * args.new_tokens / seconds

                value = attempt(results, "generation", key, rate, device, save)
                if not isinstance(value, dict):
                    print(f"   {key:45} {value:10.1f} new tokens/s", flush=True)
        model.train()
        print("\n3. the original scripts' batch vs mmcaption's (nf4, batch 16)")
        for name, tokens, cached, supervise_all, chunked in (("original scripts", ORIGINAL_PADDING, False, True, False),
                                                               ("mmcaption", args.caption_tokens, True, False, True)):
            def throughput(tokens=tokens, cached=cached, supervise_all=supervise_all, chunked=chunked) -> dict:
                seconds, peak = train(model, optimizer, 16, tokens, cached, supervise_all, chunked)
                return {"samples_per_s": 16 / seconds, "peak_memory_gib": peak}

            row = attempt(results, "original_scripts", name, throughput, device, save)
            if "error" not in row:
                print(f"   {name:45} {row['samples_per_s']:10.1f} samples/s  peak {memory(row['peak_memory_gib'])}", flush=True)
        both = [results["original_scripts"][name].get("samples_per_s") for name in ("mmcaption", "original scripts")]
        if None not in both:
            results["original_scripts"]["ratio"] = both[0] / both[1]
            print(f"   ratio {both[0] / both[1]:.1f}x")

    with tempfile.TemporaryDirectory() as scratch:
        language, vision = write_backbones(Path(scratch), args.tiny, device)
        print(f"\n1. training steps: batch {args.batch_size} x {args.seq_len} tokens")
        for quantization in ("none", "nf4"):
            try:
                variant(language, vision, quantization)
            finally:  # the variant's model and optimizer are gone with its frame: the next one's peak is its own
                release(device)
    save()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

"""Decoding throughput with and without the image key/value cache, on the demo backbones.

With the cache, each cross-attention block computes the keys and values of the image tokens once
per ``generate`` call; without it, at every decoding step (OpenFlamingo's way). Both runs use the
language model's own KV cache and greedy decoding, on the same prompts and images, in one process.

    python benchmarks/generation_cache.py [--demo_root demo_data] [--repeats 5]

Prints new tokens per second (median of the repeats) and the ratio cached / uncached at batch 1
and 16. Uses the demo's tiny backbones (run ``mmcaption-demo`` once, or it writes them).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmcaption.demo import prepare_demo_assets
from mmcaption.model import MultimodalCausalLM, MultimodalConfig


def tokens_per_second(model, input_ids, attention_mask, image_embeds, new_tokens: int, cached: bool) -> float:
    start = time.perf_counter()
    out = model.generate(
        input_ids, attention_mask, image_embeds=image_embeds, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, cache_image_key_values=cached,
    )
    elapsed = time.perf_counter() - start
    return out.numel() / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_root", default="demo_data")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=24)
    args = parser.parse_args()

    root = prepare_demo_assets(args.demo_root)
    config = MultimodalConfig(
        language_model=str(root / "backbones" / "language_model"), vision_model=str(root / "backbones" / "vision_model"),
        cross_attention_layers=[-2, -1], lora_r=8, lora_alpha=16,
    )
    torch.manual_seed(0)
    model = MultimodalCausalLM.from_config(config).eval()
    with torch.no_grad():
        for block in model.cross_attention_blocks:  # open the gates, as after training
            block.attn_gate.fill_(0.5)
    print(f"torch threads: {torch.get_num_threads()}; {args.new_tokens} new tokens; median of {args.repeats}")
    print(f"{'batch':>5} {'cached tok/s':>13} {'uncached tok/s':>15} {'ratio':>6}")
    for batch in (1, 16):
        input_ids = torch.zeros(batch, 1, dtype=torch.long)  # <|endoftext|>: the caption prompt
        attention_mask = torch.ones_like(input_ids)
        image_embeds = model.encode_images(torch.randn(batch, 3, 64, 64))
        results = {True: [], False: []}
        tokens_per_second(model, input_ids, attention_mask, image_embeds, 4, True)  # warm-up
        for _ in range(args.repeats):
            for cached in (True, False):  # interleaved, so machine noise hits both alike
                results[cached].append(tokens_per_second(model, input_ids, attention_mask, image_embeds, args.new_tokens, cached))
        cached, uncached = statistics.median(results[True]), statistics.median(results[False])
        print(f"{batch:>5} {cached:>13.1f} {uncached:>15.1f} {cached / uncached:>6.2f}")


if __name__ == "__main__":
    main()

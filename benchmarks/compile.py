"""``--model.compile true`` against eager: caption-stage steps on the demo backbones and data.

    python benchmarks/compile.py [--demo_root demo_data] [--batch_size 32] [--steps 20] [--rounds 3]

Two models from the same seed (the demo's 4-bit tiny Phi with LoRA and gated cross-attention, cached
tiny-CLIP features, the chunked loss, AdamW), one eager, one with each decoder layer compiled as the
option does (``layer.compile(dynamic=True)``), train on the same length-grouped batches of the demo's
preprocessed COCO split. Prints the time the compiled model's first steps took (compilation), then
samples/s of each (median of ``--rounds`` rounds of ``--steps`` steps, the two interleaved so that
machine noise hits both alike), the ratio, and the losses of both after the same steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmcaption.data import CaptionDataModule
from mmcaption.data.features import load_image_features, write_image_features
from mmcaption.demo import prepare_demo_assets
from mmcaption.model import MultimodalCausalLM, MultimodalConfig
from mmcaption.model.loss import chunked_cross_entropy
from mmcaption.model.optim import adamw


def step(model: MultimodalCausalLM, optimizer: torch.optim.Optimizer, batch: dict) -> float:
    hidden = model.hidden_states(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 vision_features=batch["vision_features"])
    total, count = chunked_cross_entropy(hidden, model.output_head, batch["labels"])
    loss = total / count
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_root", default="demo_data")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=8, help="steps before timing (the compiled model compiles in them)")
    args = parser.parse_args()

    root = prepare_demo_assets(args.demo_root)
    language, vision = str(root / "backbones" / "language_model"), str(root / "backbones" / "vision_model")
    compute_dtype = "bfloat16" if torch.cuda.is_available() else "float32"  # as the demo configs on a CPU
    config = MultimodalConfig(language_model=language, vision_model=vision, cross_attention_layers=[-2, -1], lora_r=8,
                              lora_alpha=16, compute_dtype=compute_dtype)
    dm = CaptionDataModule(data_dir=str(root / "coco"), tokenizer=language, image_processor=vision,
                           batch_size=args.batch_size, num_workers=0, group_by_length=True)
    dm.prepare_data()
    dm.setup("fit")
    split = dm.datasets["train2017"]
    split.features = load_image_features(write_image_features(split.folder, vision, config.vision_feature_layer))
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(args.warmup + args.steps)]

    models, optimizers = {}, {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        models[name] = MultimodalCausalLM.from_config(config).train()
        if name == "compiled":
            for layer in models[name].decoder_layers:
                layer.compile(dynamic=True)
        optimizers[name] = adamw([p for p in models[name].parameters() if p.requires_grad], lr=1e-4)

    warmup_seconds, losses = {}, {}
    for name in models:
        start = time.perf_counter()
        for batch in batches[: args.warmup]:
            losses[name] = step(models[name], optimizers[name], batch)
        warmup_seconds[name] = time.perf_counter() - start
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            start = time.perf_counter()
            for batch in batches[args.warmup:]:
                losses[name] = step(models[name], optimizers[name], batch)
            rates[name].append(len(batches[args.warmup:]) * args.batch_size / (time.perf_counter() - start))

    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"demo backbones ({device}, {compute_dtype} compute); batch {args.batch_size}; "
          f"median of {args.rounds} rounds of {args.steps} steps")
    print(f"first {args.warmup} steps (compilation)  eager {warmup_seconds['eager']:7.1f} s   compiled {warmup_seconds['compiled']:7.1f} s")
    eager, compiled = statistics.median(rates["eager"]), statistics.median(rates["compiled"])
    print(f"training throughput  eager {eager:8.1f} samples/s   compiled {compiled:8.1f} samples/s   ratio {compiled / eager:.2f}x")
    print(f"loss after the same steps  eager {losses['eager']:.4f}   compiled {losses['compiled']:.4f}")


if __name__ == "__main__":
    main()

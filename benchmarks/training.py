"""Caption-stage training throughput, preprocessed bytes per image and peak step memory: the original scripts'
data path against mmcaption's, on the demo backbones and the demo's synthetic COCO set.

    python benchmarks/training.py [--demo_root demo_data] [--batch_size 32] [--steps 30] [--our_steps N] [--rounds 3]

Both pipelines train the same model (the demo's 4-bit tiny Phi with LoRA and gated cross-attention,
frozen tiny CLIP) with the same optimizer, batch size and captions, in one process:

- original-style, re-created from the original scripts: a ``datasets`` table with one row per *caption*
  holding ``input_ids``/``attention_mask``/``labels`` padded to 128 tokens and float32
  ``pixel_values``; batches of fixed length; the vision tower runs every step; pads are not masked
  out of the loss;
- mmcaption: the preprocessed split (each image stored once, captions tokenized), a length-grouped
  sampler, per-batch padding with masked labels, and cached float16 vision features.

Prints samples/s (median over rounds, each timing steps including data loading after a warm-up) and
the ratio. The original-style batches all have the same length, so ``--steps`` of them tell its rate;
mmcaption's length-grouped batches run from a few tokens to the longest captions, and a window of 30
of them measured anywhere from 340 to 510 samples/s on the demo set, so each of its rounds times a
whole epoch unless ``--our_steps`` says fewer; bytes on disk per image of each preprocessed form (original-style measured on
``--original_images`` images); the step floor, a step whose captions are cut to two tokens, which bounds the ratio any
data path could reach with this model here; and the peak memory allocated during one training step (CPU: from the
profiler's allocation events; GPU: ``max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmcaption.collate import IGNORE_INDEX
from mmcaption.data import CaptionDataModule
from mmcaption.data.features import load_image_features, write_image_features
from mmcaption.demo import prepare_demo_assets
from mmcaption.images import load_rgb
from mmcaption.model import MultimodalCausalLM, MultimodalConfig
from mmcaption.model.optim import adamw

ORIGINAL_PADDING = 128


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_original_style(dm: CaptionDataModule, split_folder: Path, images: int, target: Path) -> datasets.Dataset:
    """The original scripts' preprocessing of the first ``images`` images: a row per caption, padded, with pixels."""
    tokenizer, processor = dm.tokenizer, dm.image_processor
    image_rows = datasets.load_from_disk(str(split_folder / "images"))
    captions = datasets.load_from_disk(str(split_folder / "captions")).filter(lambda r: r["image_index"] < images)

    def rows():
        for row in captions:
            pixels = processor(images=load_rgb(image_rows[row["image_index"]]["image"]), return_tensors="np")["pixel_values"][0]
            encoded = tokenizer(row["caption"] + tokenizer.eos_token, padding="max_length", truncation=True, max_length=ORIGINAL_PADDING)
            yield {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                   "labels": encoded["input_ids"], "pixel_values": pixels.astype(np.float32)}

    shape = tuple(processor(images=load_rgb(image_rows[0]["image"]), return_tensors="np")["pixel_values"][0].shape)
    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int64")), "attention_mask": datasets.Sequence(datasets.Value("int64")),
        "labels": datasets.Sequence(datasets.Value("int64")), "pixel_values": datasets.Array3D(shape, "float32"),
    })
    # fingerprinted by name: without one, datasets pickles what the generator refers to, and the RecursionError that
    # raised stopped this benchmark before it measured anything (the build folder is this run's own, never reused)
    table = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(target / "build"),
                                            fingerprint=f"original-style-{split_folder.name}-{images}")
    table.save_to_disk(str(target / "data"))
    return datasets.load_from_disk(str(target / "data")).with_format("torch")


def step(model, optimizer, batch: dict, masked: bool) -> float:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch.get("pixel_values"), vision_features=batch.get("vision_features")).logits
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX if masked else -1_000)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def samples_per_second(model, optimizer, loader: DataLoader, steps: int, warmup: int, masked: bool) -> float:
    iterator = iter(loader)
    for _ in range(warmup):
        step(model, optimizer, next(iterator), masked)
    start = time.perf_counter()
    samples = 0
    for _ in range(steps):
        batch = next(iterator)
        step(model, optimizer, batch, masked)
        samples += batch["input_ids"].size(0)
    return samples / (time.perf_counter() - start)


def floor_step_seconds(model, optimizer, batch: dict, repeats: int = 15) -> float:
    """The median time of a step on ``batch`` cut to its first two tokens (one predicted per caption): what the model
    costs per step whatever its data (4-bit dequantisation, LoRA and optimizer, each operator's dispatch), and so the
    least a step of this batch size can take on this machine, however few tokens a data path leaves."""
    cut = {key: value[:, :2] if key in ("input_ids", "attention_mask", "labels") else value for key, value in batch.items()}
    step(model, optimizer, cut, masked=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(model, optimizer, cut, masked=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_step_memory(model, optimizer, batch: dict, masked: bool) -> int:
    """Bytes allocated at the peak of one training step, above what was allocated before it (on the CPU
    from the profiler's per-operator allocation records; an operator's transient buffers are not seen)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(model, optimizer, batch, masked)
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        step(model, optimizer, batch, masked)
    # each operator's own allocations minus frees (and frees outside operators), in time order
    running = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_root", default="demo_data")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round of the original-style pipeline")
    parser.add_argument("--our_steps", type=int, default=None, help="timed steps per round of mmcaption's (default: an epoch)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--original_images", type=int, default=300, help="images preprocessed the original scripts' way")
    args = parser.parse_args()

    root = prepare_demo_assets(args.demo_root)
    language, vision = str(root / "backbones" / "language_model"), str(root / "backbones" / "vision_model")
    # as the demo configs: float32 compute on a CPU (most emulate bfloat16, ~5x slower), bfloat16 on a GPU
    compute_dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    config = MultimodalConfig(language_model=language, vision_model=vision, cross_attention_layers=[-2, -1], lora_r=8,
                              lora_alpha=16, compute_dtype=compute_dtype)
    torch.manual_seed(0)
    model = MultimodalCausalLM.from_config(config).train()
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    dm = CaptionDataModule(data_dir=str(root / "coco"), tokenizer=language, image_processor=vision,
                           batch_size=args.batch_size, num_workers=0, group_by_length=True)
    dm.prepare_data()
    dm.setup("fit")
    ours = dm.datasets["train2017"]
    features = write_image_features(ours.folder, vision, config.vision_feature_layer)
    ours.features = load_image_features(features)
    ours_loader = dm.train_dataloader()
    our_steps = args.our_steps or len(ours_loader) - args.warmup

    with tempfile.TemporaryDirectory() as scratch:
        original_table = write_original_style(dm, ours.folder, args.original_images, Path(scratch))
        original_bytes = folder_bytes(Path(scratch) / "data") / args.original_images
        original_loader = DataLoader(original_table, batch_size=args.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(0), drop_last=True)

        results: dict[str, list[float]] = {"original-style": [], "mmcaption": []}
        for _ in range(args.rounds):
            results["original-style"].append(samples_per_second(model, optimizer, original_loader, args.steps, args.warmup, masked=False))
            results["mmcaption"].append(samples_per_second(model, optimizer, ours_loader, our_steps, args.warmup, masked=True))
        floor = floor_step_seconds(model, optimizer, next(iter(ours_loader)))
        memory = {
            "original-style": peak_step_memory(model, optimizer, next(iter(original_loader)), masked=False),
            "mmcaption": peak_step_memory(model, optimizer, next(iter(ours_loader)), masked=True),
        }

    meta = json.loads((ours.folder / "meta.json").read_text())
    ours_bytes = (folder_bytes(ours.folder / "images") + folder_bytes(ours.folder / "captions")) / meta["images"]
    features_bytes = folder_bytes(features / "data") / meta["images"]
    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"demo backbones ({device}, {compute_dtype} compute); batch {args.batch_size}; median of {args.rounds} rounds "
          f"of {args.steps} original-style and {our_steps} mmcaption steps")
    original_rate, ours_rate = (statistics.median(results[k]) for k in ("original-style", "mmcaption"))
    print(f"training throughput  original-style {original_rate:8.1f} samples/s   mmcaption {ours_rate:8.1f} samples/s   "
          f"ratio {ours_rate / original_rate:.1f}x")
    print(f"step floor           {floor * 1e3:.1f} ms a step of 2-token captions (the model's own cost per step): no data path "
          f"exceeds {args.batch_size / floor / original_rate:.1f}x here (mmcaption's mean step {args.batch_size / ours_rate * 1e3:.1f} ms, "
          f"original-style {args.batch_size / original_rate * 1e3:.1f} ms)")
    print(f"bytes per image      original-style {original_bytes / 1e3:8.1f} kB        mmcaption {ours_bytes / 1e3:8.1f} kB        "
          f"ratio 1/{original_bytes / ours_bytes:.0f}  (+ {features_bytes / 1e3:.1f} kB of cached features: "
          f"1/{original_bytes / (ours_bytes + features_bytes):.0f})")
    print(f"peak step memory     original-style {memory['original-style'] / 1e6:8.1f} MB        mmcaption {memory['mmcaption'] / 1e6:8.1f} MB        "
          f"ratio {memory['mmcaption'] / memory['original-style']:.2f}")


if __name__ == "__main__":
    main()

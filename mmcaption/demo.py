"""The offline demo: synthetic shapes, tiny backbones, and both training stages through the real code path.

``mmcaption-demo`` writes (once) under ``demo_data/`` a synthetic captioning set in the official COCO
layout, conversations about the same images in the LLaVA layout, and tiny Phi / CLIP backbones with a
tokenizer in Hugging Face format. It then runs the pipeline - ``configs/demo/caption.yaml``, then
``configs/demo/instruct.yaml`` started from the caption stage's checkpoint - with the same 4-bit
loading, LoRA, cross-attention, data modules and CLI that train the real model. Extra arguments go
to both stages' ``mmcaption fit``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from mmcaption.data.cache import is_complete, publish_atomically
from mmcaption.data.synthetic import demo_corpus, write_coco_split, write_llava_split
from mmcaption.pipeline import run_pipeline
from mmcaption.tiny import save_tiny_backbones

DEMO_VERSION = 3
LANGUAGE_PRETRAINING_STEPS = 300  # text-only, ~1 minute on 2 cores; the loss has flattened by then
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def prepare_demo_assets(
    root: str | Path = "demo_data",
    seed: int = 0,
    train_images: int = 400,
    val_images: int = 40,
    pretrain_steps: int = LANGUAGE_PRETRAINING_STEPS,
) -> Path:
    """Write ``root/coco`` (synthetic COCO layout), ``root/llava`` (conversations about the same images)
    and ``root/backbones`` (tiny LM and CLIP) unless they are already there for this seed and size."""
    root = Path(root)
    settings = {"version": DEMO_VERSION, "seed": seed, "train_images": train_images, "val_images": val_images,
                "pretrain_steps": pretrain_steps}
    if is_complete(root):
        if json.loads((root / "meta.json").read_text()) == settings:
            return root
        shutil.rmtree(root)  # demo data written with other settings
    elif root.exists():
        raise FileExistsError(f"{root} exists but is not demo data written by mmcaption; remove it or pick --root")
    with publish_atomically(root) as staging:
        write_coco_split(staging / "coco", "train2017", train_images, seed=seed)
        write_coco_split(staging / "coco", "val2017", val_images, seed=seed, first_image_id=train_images + 1)
        for split in ("train2017", "val2017"):
            write_llava_split(staging / "llava", staging / "coco", split, seed=seed)
        save_tiny_backbones(staging / "backbones", demo_corpus(seed), seed=seed, pretrain_steps=pretrain_steps)
        (staging / "meta.json").write_text(json.dumps(settings))
    return root


def scalar_series(log_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of one scalar from the TensorBoard event files in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in events.Scalars(tag)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="demo_data", help="where the synthetic data and tiny backbones go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and backbones")
    parser.add_argument("--caption", default=str(CONFIG_DIR / "demo" / "caption.yaml"), help="caption stage config")
    parser.add_argument("--instruct", default=str(CONFIG_DIR / "demo" / "instruct.yaml"), help="instruct stage config")
    args, fit_args = parser.parse_known_args(argv)

    start = time.perf_counter()
    prepare_demo_assets(args.root, seed=args.seed)
    stages = run_pipeline(args.caption, args.instruct, fit_args)
    wall = time.perf_counter() - start

    print("\n== mmcaption demo ==")
    print(f"wall time             {wall:.0f} s")
    for stage in stages:
        trainer = stage.cli.trainer
        losses = scalar_series(trainer.logger.log_dir, "train/loss")
        print(f"[{stage.name}]")
        if losses:
            print(f"  train loss          first {losses[0][1]:.3f} (step {losses[0][0]}) -> last {losses[-1][1]:.3f} (step {losses[-1][0]})")
        for key in ("val/loss", "val/perplexity"):
            if key in trainer.callback_metrics:
                print(f"  {key:<19} {trainer.callback_metrics[key].item():.3f}")
        gates = stage.cli.model.model.gate_values()
        print("  tanh(gate)          " + ", ".join(f"layer {i}: {g['attn']:+.3f}" for i, g in gates.items()))
        print(f"  checkpoint          {stage.checkpoint}")
        print(f"  TensorBoard logs    {trainer.logger.log_dir}")
    print("Watch the curves with: tensorboard --logdir lightning_logs")


if __name__ == "__main__":
    main()

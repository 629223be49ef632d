"""Preprocessing speed of a caption split of full-size photos: images checked and shrunk by one thread against the
pool mmcaption uses (``preprocessing_threads``: the cores this process may use, up to 8), in one run.

    python benchmarks/preprocessing.py [--images 400] [--size 640x480] [--rounds 3] [--tokenizer FOLDER]

Writes ``--images`` JPEG photos of ``--size`` (synthetic scenes with sensor-like noise, ~90 KB each at
640 x 480, as COCO's are) in the official COCO layout with five captions each, then preprocesses the
split from nothing ``--rounds`` times each way (CLIP's 224-pixel side, as the real configs store them).
Prints images/s (median) of each and the ratio. Both ways write the same bytes: the script checks it.

Then, with the pool, what keeping the image pass's work costs (a build that keeps it against one that does not) and
what it saves: the build after one stopped (Ctrl-C) half-way through the images, against a build from nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessor

from mmcaption.data import CaptionDataModule, image_pass
from mmcaption.demo.synthetic import captions_for, demo_corpus, draw_scene, random_scene
from mmcaption.demo.tiny import save_tiny_backbones


def write_photos(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> None:
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    folder = root / "train2017"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        scene = random_scene(rng)
        base = np.asarray(draw_scene(scene, 64, rng).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = np.clip(base + noise.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        name = f"{index + 1:012d}.jpg"
        Image.fromarray(noisy).save(folder / name, quality=90)
        images.append({"id": index + 1, "file_name": name})
        annotations += [{"id": index * 5 + k, "image_id": index + 1, "caption": caption}
                        for k, caption in enumerate(captions_for(scene, rng))]
    (root / "annotations").mkdir()
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))


def preprocess(root: Path, backbones: tuple[Path, Path], cache: Path) -> tuple[float, str]:
    dm = CaptionDataModule(data_dir=str(root), cache_dir=str(cache), tokenizer=str(backbones[0]),
                           image_processor=str(backbones[1]), train_split="train2017", val_split="train2017")
    start = time.perf_counter()
    dm.prepare_data()
    seconds = time.perf_counter() - start
    folder = dm.split_folder("train2017") / "images"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.arrow")))).hexdigest()
    return seconds, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizer", default=None, help="a language model folder (default: the demo's tiny one)")
    args = parser.parse_args()
    size = tuple(int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        language = Path(args.tokenizer) if args.tokenizer else save_tiny_backbones(
            scratch / "backbones", demo_corpus(seed=0, num_scenes=200), seed=0, lm_hidden_size=64)[0]
        CLIPImageProcessor().save_pretrained(scratch / "processor")  # CLIP ViT-B/32's: a 224-pixel shorter side
        backbones = (language, scratch / "processor")
        write_photos(scratch / "coco", args.images, size)
        threads = image_pass.preprocessing_threads()
        rates, digests = {1: [], threads: []}, set()
        for _ in range(args.rounds):
            for count in rates:
                with mock.patch.object(image_pass, "preprocessing_threads", lambda count=count: count):
                    seconds, digest = preprocess(scratch / "coco", backbones, scratch / f"cache-{count}")
                shutil.rmtree(scratch / f"cache-{count}")
                rates[count].append(args.images / seconds)
                digests.add(digest)
        if len(digests) != 1:
            raise SystemExit("the two ways wrote different images")
        one, many = statistics.median(rates[1]), statistics.median(rates[threads])
        print(f"{args.images} photos of {size[0]} x {size[1]}, stored at a 224-pixel shorter side; medians of {args.rounds} rounds")
        print(f"  1 thread:            {one:7.1f} images/s")
        print(f"  {threads} threads (default): {many:7.1f} images/s")
        print(f"  ratio: {many / one:.2f}x")
        kept_work(scratch, backbones, args.images, args.rounds, digests.pop())


def kept_work(scratch: Path, backbones: tuple[Path, Path], images: int, rounds: int, digest: str) -> None:
    """Seconds of a build keeping the image pass's work, of one not keeping it, and of the build after a stop half-way."""
    seconds: dict[str, list[float]] = {"kept": [], "not kept": [], "after a stop": []}
    prepared, done = image_pass._prepared, []

    def stopped_half_way(image, image_size):  # Ctrl-C as half of the images are read
        done.append(image)
        if len(done) == images // 2:
            done.clear()
            raise KeyboardInterrupt
        return prepared(image, image_size)

    for _ in range(rounds):
        for way in seconds:
            cache = scratch / "cache-kept"
            if way == "after a stop":
                try:
                    with mock.patch.object(image_pass, "_prepared", stopped_half_way):
                        preprocess(scratch / "coco", backbones, cache)
                except KeyboardInterrupt:
                    pass
            with mock.patch.object(image_pass.CheckedImages, "add", lambda *args: None) if way == "not kept" \
                    else mock.patch.object(image_pass, "CHECKED_BYTES", image_pass.CHECKED_BYTES):
                taken, written = preprocess(scratch / "coco", backbones, cache)
            shutil.rmtree(cache)
            seconds[way].append(taken)
            if written != digest:
                raise SystemExit(f"the build {way} wrote other images")
    kept, bare, after = (statistics.median(seconds[way]) for way in seconds)
    print(f"keeping the image pass's work (the pool; medians of {rounds} rounds, the same bytes written):")
    print(f"  a build keeping it:       {kept:6.2f} s; not keeping it: {bare:6.2f} s; ratio {kept / bare:.2f}x")
    print(f"  the build after a stop half-way through the images: {after:6.2f} s, {after / kept:.2f}x of a build from nothing")


if __name__ == "__main__":
    main()

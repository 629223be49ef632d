"""Padding efficiency - real tokens / computed tokens - of caption batches from a COCO-format file.

    python benchmarks/padding.py ANNOTATIONS.json --tokenizer microsoft/phi-2 [--batch_size 64]

Each caption becomes ``<bos> caption <eos>`` (cut at ``--max_length``), as mmcaption trains on it.
Compared, for the same captions and batch size, in one run:

- original scripts: every caption padded to 128 tokens;
- shuffled: mmcaption with ``group_by_length: false`` - a seeded shuffle, each batch padded to its
  longest caption;
- grouped: mmcaption's default - batches of similar length (mega-batches of ``--mega_batch`` batches,
  100 by default as ``length_group_batches``, sorted by length; batches shuffled), each padded to its
  longest caption.

Prints the efficiency of each over one epoch (median over ``--epochs`` shuffles) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from mmcaption.data.sampling import DEFAULT_MEGA_BATCH, LengthGroupedSampler, padding_efficiency
from mmcaption.model.backbones import load_tokenizer

ORIGINAL_PADDING = 128


def caption_lengths(annotation_file: Path, tokenizer_name: str, max_length: int) -> np.ndarray:
    captions = [a["caption"] for a in json.loads(annotation_file.read_text())["annotations"]]
    tokenizer = load_tokenizer(tokenizer_name)
    ids = tokenizer(captions, add_special_tokens=False)["input_ids"]
    return np.minimum(np.array([len(i) for i in ids]), max_length - 2) + 2


def epoch_efficiency(lengths: np.ndarray, batch_size: int, epoch: int, grouped: bool, pad_to: int | None = None,
                     mega_batch: int = DEFAULT_MEGA_BATCH) -> float:
    sampler = LengthGroupedSampler(lengths, batch_size, seed=0, group_by_length=grouped, mega_batch=mega_batch)
    sampler.set_epoch(epoch)
    order = np.array(list(sampler))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return padding_efficiency(lengths, batches, pad_to)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations", type=Path, help="COCO captions JSON (annotations/captions_*.json)")
    parser.add_argument("--tokenizer", default="microsoft/phi-2", help="hub id or folder of the language model's tokenizer")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mega_batch", type=int, default=DEFAULT_MEGA_BATCH, help="batches sorted by length together (length_group_batches)")
    args = parser.parse_args()

    lengths = caption_lengths(args.annotations, args.tokenizer, args.max_length)
    print(f"{len(lengths)} captions from {args.annotations}; tokens per caption incl. <bos>/<eos>: "
          f"mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, max {lengths.max()}; batch {args.batch_size}")
    results = {
        "original scripts (pad to 128)": [epoch_efficiency(lengths, args.batch_size, e, False, ORIGINAL_PADDING) for e in range(args.epochs)],
        "mmcaption, shuffled": [epoch_efficiency(lengths, args.batch_size, e, False) for e in range(args.epochs)],
        "mmcaption, grouped": [epoch_efficiency(lengths, args.batch_size, e, True, mega_batch=args.mega_batch) for e in range(args.epochs)],
    }
    original = statistics.median(results["original scripts (pad to 128)"])
    print(f"{'':30} {'efficiency':>10} {'vs original':>11}")
    for name, values in results.items():
        value = statistics.median(values)
        print(f"{name:30} {value:10.3f} {value / original:10.1f}x")


if __name__ == "__main__":
    main()

"""What a preprocessed split holds, in numbers a user checks before a long GPU run (``mmcaption prepare``)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mmcaption.data.base import PreprocessedDataModule
from mmcaption.data.cache import folder_bytes
from mmcaption.data.llava import ANSWER_CUT, turn_counts
from mmcaption.data.records import Uncaptioned
from mmcaption.data.sampling import LengthGroupedSampler, padding_efficiency
from mmcaption.errors import ConfigError
from mmcaption.model.backbone_checks import context_problem


def split_summary(datamodule: PreprocessedDataModule, split: str) -> dict[str, Any]:
    """Rows kept, records skipped by kind (with the first of each), images, tokens per sample (mean,
    p99, max), the share cut to ``max_length``, and the padding efficiency of an epoch's batches at
    the configured batch size and grouping."""
    folder = datamodule.split_folder(split)
    meta = json.loads((folder / "meta.json").read_text())
    dataset = datamodule.make_dataset(folder)
    lengths = dataset.lengths()
    if datamodule.text_table == "captions":
        fixed = 2 + len(dataset.prompt_ids)
        cut = {"captions cut to max_length": int((dataset._column_lengths("token_ids") > datamodule.max_length - fixed).sum())}
    else:
        dropped = np.asarray(dataset.rows.data.column("turns_dropped").to_numpy(zero_copy_only=False))
        cut = {"conversations with turns dropped": int((dropped > 0).sum()),
               "first answers cut": int(meta.get("notes", {}).get(ANSWER_CUT, 0))}
        # per turn too: a quarter of the conversations cut can be three quarters of the answers never trained on
        turns = dict(zip(("kept", "dropped"), turn_counts(dataset.rows.data)))
    sampler = LengthGroupedSampler(lengths, datamodule.batch_size, seed=0, group_by_length=datamodule.group_by_length,
                                   mega_batch=datamodule.length_group_batches)
    order = np.fromiter(iter(sampler), dtype=np.int64)
    batches = [order[start:start + datamodule.batch_size] for start in range(0, len(order), datamodule.batch_size)]
    return {
        "split": split,
        "folder": str(folder),
        "rows": meta["rows"],
        "kind": datamodule.text_table,
        "images": meta["images"],
        "skipped": meta.get("skipped") or {},
        "skipped_examples": meta.get("skipped_examples") or {},
        "notes": meta.get("notes") or {},
        "note_examples": meta.get("note_examples") or {},
        "tokens": {"mean": float(lengths.mean()), "p99": float(np.percentile(lengths, 99)), "max": int(lengths.max())},
        "max_length": datamodule.max_length,
        "cut": cut,
        **({"turns": turns} if datamodule.text_table != "captions" else {}),
        "padding_efficiency": padding_efficiency(lengths, batches),
        "batch_size": datamodule.batch_size,
        "group_by_length": datamodule.group_by_length,
        "length_group_batches": datamodule.length_group_batches,
        # the vision features cached in it: one folder a tower and layer, and the parts stopped builds left
        "features": {path.name: folder_bytes(path)
                     for path in [*sorted(folder.glob("features-*")), *sorted(folder.glob(".features-*.chunks"))]},
        "features_read": datamodule.features_folder(folder).name if datamodule.cache_image_features else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    lines = [f"split {summary['split']}: {summary['folder']}",
             f"  kept        {rows:,} {summary['kind']} of {summary['images']:,} images"]
    skipped = summary["skipped"]
    if skipped:
        lines.append(f"  skipped     {sum(skipped.values()):,} records: " + "; ".join(f"{n:,} x {kind}" for kind, n in skipped.items()))
        lines += [f"              first {kind}: {example}" for kind, example in summary["skipped_examples"].items()]
    else:
        lines.append("  skipped     none")
    lines += [f"  note        {n:,} x {kind}" + (f" (first: {summary['note_examples'][kind]})" if kind in summary["note_examples"]
                                                  else "") for kind, n in summary["notes"].items()]
    tokens = summary["tokens"]
    lines.append(f"  tokens      mean {tokens['mean']:.1f}, p99 {tokens['p99']:.0f}, max {tokens['max']} per sample "
                 f"(max_length {summary['max_length']})")
    lines.append("  truncated   " + ", ".join(f"{n:,} {what} ({n / max(rows, 1):.1%})" for what, n in summary["cut"].items()))
    if turns := summary.get("turns"):
        total = turns["kept"] + turns["dropped"]
        lines.append(f"  turns       {turns['kept']:,} of {total:,} question-answer turns kept, {turns['dropped']:,} dropped to "
                     f"max_length ({turns['dropped'] / max(total, 1):.1%})")
    grouping = (f"group_by_length true, length_group_batches {summary['length_group_batches']}" if summary["group_by_length"]
                else "group_by_length false")
    lines.append(f"  padding     {summary['padding_efficiency']:.3f} of computed tokens are real at batch {summary['batch_size']} "
                 f"({grouping})")
    for name, size in summary.get("features", {}).items():  # what takes the room, and which one this config reads
        what = "read by this config" if name == summary.get("features_read") else "a stopped build's part" \
            if name.endswith(".chunks") else "another tower's or layer's"
        lines.append(f"  features    {name}: {size / 2**20:.1f} MB, {what}")
    return "\n".join(lines)


def prepare_splits(datamodule: Any, language_model: str) -> int:
    """``mmcaption prepare``: preprocess ``datamodule``'s splits (refusing a data module with nothing to prepare, and a
    ``max_length`` beyond the language model's context) and print what each split holds. Returns 0."""
    if not isinstance(datamodule, PreprocessedDataModule):
        raise ConfigError(f"{type(datamodule).__name__} has nothing to prepare (it reads its input at predict time)")
    if problem := context_problem(language_model, getattr(datamodule, "max_length", None)):
        raise ConfigError(problem)
    splits, refused = list(dict.fromkeys(datamodule.stage_splits().values())), {}
    try:
        datamodule.prepare_data()
    except Uncaptioned:  # a benchmark's test split without captions (TextCaps', COCO's test2017): left out, said
        for split in splits:  # (the inputs looked at again, split by split: only then)
            try:
                datamodule.prepare_data([split])
            except Uncaptioned as error:
                if len(refused) + 1 == len(splits):
                    raise
                refused[split] = f"split {split}: not prepared: {error}"
    print("\n".join(refused.get(split) or format_summary(split_summary(datamodule, split)) for split in splits))
    return 0

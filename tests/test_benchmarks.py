"""The benchmark scripts a lent GPU runs: their small-shape path runs everywhere, so they cannot rot."""

import json
import subprocess
import sys

import pytest
import torch

from .conftest import REPO


def test_gpu_suite_tiny_reports_every_training_variant_generation_and_the_original_scripts_ratio(tmp_path):
    out = tmp_path / "suite.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--tiny", "--steps", "2", "--new_tokens", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["shapes"] == "tiny"
    # 2 quantizations x 2 image paths x 2 losses, each with a step time and tokens/s
    assert len(results["training"]) == 8
    assert {key.split(",")[0] for key in results["training"]} == {"none", "nf4"}
    assert all(row["step_s"] > 0 and row["tokens_per_s"] > 0 for row in results["training"].values())
    assert all(row["mfu"] is None for row in results["training"].values())  # a CPU: no known peak FLOP/s
    assert set(results["generation"]) == {f"batch {b}, image keys/values {c}" for b in (1, 16) for c in ("cached", "recomputed")}
    assert all(rate > 0 for rate in results["generation"].values())
    ratio = results["original_scripts"]["ratio"]
    assert ratio == results["original_scripts"]["mmcaption"]["samples_per_s"] / results["original_scripts"]["original scripts"]["samples_per_s"]
    # what a user reads: one line per variant and the ratio
    assert "nf4, cached features, chunked loss" in result.stdout and f"ratio {ratio:.1f}x" in result.stdout


def test_memory_table_tiny_prints_weights_trainable_state_and_activations_for_both_quantizations():
    import re

    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "memory.py"), "--tiny", "--tokens", "16", "64"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights = dict(re.findall(r"^(nf4|none):\n  weights: language model\s+([0-9.]+) ", result.stdout, re.M))
    assert float(weights["nf4"]) < float(weights["none"])  # 4-bit storage is smaller than bfloat16
    rows = re.findall(r"activations per sample at\s+\d+ tokens:\s+([0-9.]+) MiB float32 \(measured\);\s+([0-9.]+) MiB "
                      r"bf16-mixed \(measured;\s+([0-9.]+) MiB with float32 embeddings", result.stdout)
    assert len(rows) == 2, result.stdout
    (short32, short16, _), (long32, long16, long16_before) = [[float(x) for x in row] for row in rows]
    assert 3 < long32 / short32 < 5 and 3 < long16 / short16 < 5  # about linear in the tokens at these lengths
    # bf16-mixed keeps less than float32, and less than it did with the unquantized weights in float32
    assert long16 < long32 and long16 < long16_before
    assert "of bfloat16 copies of the trainable weights (measured)" in result.stdout
    assert result.stdout.count("(measured count x bytes)") == 2


def test_gpu_suite_keeps_going_past_a_failed_variant_and_refuses_the_real_shapes_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_suite

    # one variant runs out of memory: its error is recorded, the next one is measured, the file kept current
    results, saved = {"training": {}}, []

    def out_of_memory() -> dict:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")

    gpu_suite.attempt(results, "training", "none, vision tower, plain loss", out_of_memory, "cpu", lambda: saved.append(dict(results["training"])))
    gpu_suite.attempt(results, "training", "nf4, vision tower, plain loss", lambda: {"step_s": 1.0}, "cpu", lambda: saved.append(dict(results["training"])))
    assert results["training"] == {"none, vision tower, plain loss": {"error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"},
                                   "nf4, vision tower, plain loss": {"step_s": 1.0}}
    assert len(saved) == 2 and "none, vision tower, plain loss" in saved[0]

    if not gpu_suite.torch.cuda.is_available():  # on a CPU the real shapes would run for hours: refused at once
        with pytest.raises(SystemExit, match="the real shapes need a GPU"):
            gpu_suite.main(["--json", str(tmp_path / "never.json")])
        assert not (tmp_path / "never.json").exists()


def test_training_benchmark_builds_the_original_scripts_table_a_row_per_caption_padded_with_pixels(backbones, coco_root, tmp_path, monkeypatch):
    # benchmarks/training.py stopped at this table with a RecursionError (datasets pickling what a generator refers to)
    # before it measured anything
    import shutil

    from mmcaption.data import CaptionDataModule

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import training

    coco = tmp_path / "coco"
    shutil.copytree(coco_root, coco)
    dm = CaptionDataModule(data_dir=str(coco), tokenizer=str(backbones[0]), image_processor=str(backbones[1]),
                           batch_size=4, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    table = training.write_original_style(dm, dm.datasets["train2017"].folder, 3, tmp_path / "original")
    assert len(table) == 3 * 5  # a row per caption of the first 3 images
    row = table[0]
    assert row["input_ids"].shape == (training.ORIGINAL_PADDING,) and row["pixel_values"].shape == (3, 64, 64)
    assert row["pixel_values"].dtype == torch.float32 and (row["labels"] == row["input_ids"]).all()  # pads not masked

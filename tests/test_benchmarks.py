"""The benchmark scripts a lent GPU runs: their small-shape path runs everywhere, so they cannot rot."""

import json
import subprocess
import sys

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
    assert set(results["generation"]) == {f"batch {b}, image keys/values {c}" for b in (1, 16) for c in ("cached", "recomputed")}
    assert all(rate > 0 for rate in results["generation"].values())
    ratio = results["original_scripts"]["ratio"]
    assert ratio == results["original_scripts"]["mmcaption"]["samples_per_s"] / results["original_scripts"]["original scripts"]["samples_per_s"]
    # what a user reads: one line per variant and the ratio
    assert "nf4, cached features, chunked loss" in result.stdout and f"ratio {ratio:.1f}x" in result.stdout

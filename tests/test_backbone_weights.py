"""Trained tensors loaded onto backbone weights other than those they were fitted to (a folder written again) are said."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from transformers import PhiForCausalLM

from mmcaption.cli import main
from mmcaption.export import export_checkpoint
from mmcaption.inference import Captioner

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = str(REPO / "configs" / "predict" / "captions.yaml")
CHANGED = "whose weight files have changed since"


def predict(checkpoint: Path, language_model: Path, images: Path, output: Path) -> str:
    """``mmcaption predict`` of captions, run in this process; the warnings it gave, one per line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["predict", "--config", CAPTIONS, "--ckpt_path", str(checkpoint), "--model.config.language_model",
              str(language_model), "--data.images", str(images), "--data.output", str(output),
              "--trainer.enable_progress_bar", "false"])
    return "\n".join(str(warning.message) for warning in caught)


def test_a_checkpoint_on_a_language_model_written_again_is_said_at_predict_and_from_its_export(
        backbones, trained_checkpoint, image_folder, tmp_path):
    # mmcaption-demo writes its backbones again when its settings or version change (as its note says), and a folder of
    # one's own can be saved over: the checkpoints trained on the earlier weights loaded onto the new ones (same shapes)
    # without a word, and `mmcaption predict` wrote captions that had nothing to do with the images
    language, _ = backbones
    moved = tmp_path / "elsewhere" / language.name
    shutil.copytree(language, moved)  # the same weights, moved: nothing to say
    err = predict(trained_checkpoint, moved, image_folder, tmp_path / "same.jsonl")
    assert CHANGED not in err
    assert len((tmp_path / "same.jsonl").read_text().splitlines()) == 3

    written_again = PhiForCausalLM.from_pretrained(moved)  # the same shapes, other values: another pretraining
    torch.manual_seed(1)
    with torch.no_grad():
        for param in written_again.parameters():
            param.normal_(0, 0.02)
    written_again.save_pretrained(moved)
    err = predict(trained_checkpoint, moved, image_folder, tmp_path / "again.jsonl")
    said = " ".join(err.split())
    assert f"checkpoint {trained_checkpoint} was trained with the language model {moved}, {CHANGED}" in said
    assert "Put back the backbone it was trained with, or train again with this one" in said
    assert len((tmp_path / "again.jsonl").read_text().splitlines()) == 3  # said, not refused: the run still goes

    # an export keeps the checkpoint's fingerprints, and the Python API says it as well
    exported = export_checkpoint(trained_checkpoint, tmp_path / "exported")
    assert json.loads((exported / "mmcaption.json").read_text())["backbone_weights"] == \
        torch.load(trained_checkpoint, weights_only=False)["backbone_weights"]
    with pytest.warns(UserWarning, match=rf"{exported} was trained with the language model .*{CHANGED}"):
        Captioner.from_pretrained(exported, language_model=str(moved))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # its own language model: nothing to say
        Captioner.from_pretrained(exported, language_model=str(language))

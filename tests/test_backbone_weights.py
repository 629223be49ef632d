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
CHANGED = "the fingerprint of the weight files it keeps differs"


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
    assert f"checkpoint {trained_checkpoint} was fitted to other weights than those of the language model {moved} (it was trained " \
           f"with {language}), loaded now: {CHANGED}" in said
    assert "Put back the backbone it was trained with, or train again with this one" in said
    assert len((tmp_path / "again.jsonl").read_text().splitlines()) == 3  # said, not refused: the run still goes

    # an export keeps the checkpoint's fingerprints, and the Python API says it as well
    exported = export_checkpoint(trained_checkpoint, tmp_path / "exported")
    assert json.loads((exported / "mmcaption.json").read_text())["backbone_weights"] == \
        torch.load(trained_checkpoint, weights_only=False)["backbone_weights"]
    with pytest.warns(UserWarning, match=rf"{exported} was fitted to other weights than those of the language model .*{CHANGED}"):
        Captioner.from_pretrained(exported, language_model=str(moved))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # its own language model: nothing to say
        Captioner.from_pretrained(exported, language_model=str(language))


def test_weights_are_compared_whatever_the_folders_are_called(backbones, trained_checkpoint, image_folder, tmp_path):
    # a folder of another name with other weights was not said (its name alone was compared, and only by init_from); a
    # copy of the same weights under another name was said by init_from as "another language model"
    from mmcaption.checkpoint import load_initial_weights
    from mmcaption.model import MultimodalCausalLM, MultimodalConfig

    language, _ = backbones
    renamed = tmp_path / "my_phi"
    shutil.copytree(language, renamed)
    checkpoint = torch.load(trained_checkpoint, weights_only=False)
    config = {**checkpoint["model_config"], "language_model": str(renamed)}
    model = MultimodalCausalLM.from_config(MultimodalConfig(**config))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the same weights, called otherwise: nothing to say
        load_initial_weights(model, trained_checkpoint)
    # the same weights, loaded unquantized for a stage trained in 4-bit: said (fit was silent; predict and export said it)
    trained = checkpoint["model_config"]["quantization"]
    assert trained == "nf4"
    unquantized = MultimodalCausalLM.from_config(MultimodalConfig(**{**config, "quantization": "none"}))
    with pytest.warns(UserWarning, match=rf"init_from {trained_checkpoint} was trained against the language model in nf4; this "
                                         r"run loads it in none: .* \(--model.config.quantization nf4 loads it as it was trained\)"):
        load_initial_weights(unquantized, trained_checkpoint)

    other = PhiForCausalLM.from_pretrained(renamed)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # the embeddings: another model of the same shapes
    other.save_pretrained(renamed)
    err = predict(trained_checkpoint, renamed, image_folder, tmp_path / "renamed.jsonl")
    assert f"was fitted to other weights than those of the language model {renamed} (it was trained with {language}), loaded " \
           "now" in " ".join(err.split())


def test_a_fingerprint_sees_a_change_in_the_middle_of_a_large_weight_file(tmp_path):
    from safetensors.torch import save_file

    from mmcaption.model.backbone_weights import weights_fingerprint

    for name, middle in (("a", 0.0), ("b", 1.0)):  # 3 x 2 MiB tensors: only the middle one differs
        (tmp_path / name).mkdir()
        save_file({"a": torch.zeros(512 * 1024), "b": torch.full((512 * 1024,), middle), "c": torch.zeros(512 * 1024)},
                  tmp_path / name / "model.safetensors")
    assert weights_fingerprint(str(tmp_path / "a")) != weights_fingerprint(str(tmp_path / "b"))
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    assert weights_fingerprint(str(tmp_path / "a")) == weights_fingerprint(str(tmp_path / "copy"))

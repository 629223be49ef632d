"""A new user's first hour: what they get wrong is found in seconds with one clear message, the
terminal says what is happening and nothing else, and the end of training is saved."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mmcaption import pipeline
from mmcaption.callbacks import ResumableStop
from mmcaption.chat import main as chat_main
from mmcaption.checkpoint import load_checkpoint_file
from mmcaption.cli import main
from mmcaption.data import CaptionDataModule, DataError
from mmcaption.data.choice_csv import read_choice_csv
from mmcaption.data.image_sources import find_images
from mmcaption.demo import prepare_demo_assets
from mmcaption.demo.run import main as demo_main
from mmcaption.errors import ConfigError, OutputExistsError
from mmcaption.inference import Captioner
from mmcaption.model import MultimodalCausalLM
from mmcaption.tasks import check_generation

from .conftest import REPO, make_captioner
from .test_interruptions import user_error

DEMO_CAPTION = str(REPO / "configs" / "demo" / "caption.yaml")
DEMO_INSTRUCT = str(REPO / "configs" / "demo" / "instruct.yaml")
PREDICT_CAPTIONS = str(REPO / "configs" / "predict" / "captions.yaml")
# the data settings are not in --help (a data module is a subclass chosen by the config): said how to list them
TIP = ("tip: `mmcaption fit --help` lists the model's and the trainer's settings, `mmcaption fit --data.help <class>` a data "
       "module's (CaptionDataModule or InstructDataModule); add --print_config to see the configuration in effect")


@pytest.fixture
def nothing_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the backbones were loaded before the check")
    monkeypatch.setattr(MultimodalCausalLM, "from_config", refuse)


def test_a_gpu_config_on_a_machine_without_one_says_so_and_how_to_try_it(tmp_path, monkeypatch, capsys, nothing_loads):
    monkeypatch.chdir(tmp_path)
    err = user_error(capsys, main, ["fit", "--config", str(REPO / "configs" / "caption.yaml")])
    assert "trainer.accelerator is 'gpu', and PyTorch sees no GPU on this machine" in err
    assert "--trainer.accelerator cpu" in err and "mmcaption-demo" in err


def test_a_backbone_that_is_not_downloaded_is_named_with_the_download_command(backbones, tmp_path, monkeypatch, capsys,
                                                                             nothing_loads):
    monkeypatch.chdir(tmp_path)  # the tests run offline (HF_HUB_OFFLINE=1): a message, never a download
    err = user_error(capsys, main, ["fit", "--config", str(REPO / "configs" / "caption.yaml"), "--trainer.accelerator", "cpu",
                                   "--model.config.language_model", "someone/not-downloaded"])
    assert "model.config.language_model 'someone/not-downloaded' is neither a local folder nor in the Hugging Face cache" in err
    assert "hf download someone/not-downloaded" in err
    err = user_error(capsys, main, ["fit", "--config", DEMO_CAPTION, "--model.config.language_model", str(backbones[0]),
                                   "--model.config.vision_model", "no/such/folder"])
    # a relative path is the working directory's, not the config file's: the message says which folder that is
    assert f"model.config.vision_model no/such/folder: no such folder (relative to the working directory, {tmp_path})" in err
    for windows in ("C:\\Users\\me\\models\\phi2", "models\\phi2"):  # a Windows path: was checked as a hub id, a traceback
        err = user_error(capsys, main, ["fit", "--config", DEMO_CAPTION, "--model.config.language_model", windows,
                                       "--model.config.vision_model", str(backbones[1])])
        assert f"model.config.language_model {windows}: no such folder" in err, err


def test_a_mistyped_key_gets_the_closest_valid_names_in_a_few_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO_CAPTION, "--model.lora_rank", "8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--model.lora_rank: did you mean --model.config.lora_r" in err
    assert len(err.strip().splitlines()) <= 4  # not the 70-line usage

    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO_CAPTION, "--data.init_args.batch_sise", "8"])
    assert "did you mean --data.init_args.batch_size" in capsys.readouterr().err

    # Hugging Face Trainer's names for settings (the original scripts'): no spelling is close to them, no suggestion was made
    for written, meant in (("--model.lr", "--model.learning_rate"), ("--trainer.gradient_accumulation_steps",
                                                                    "--trainer.accumulate_grad_batches"),
                           ("--data.init_args.per_device_train_batch_size", "--data.init_args.batch_size"),
                           ("--model.max_new_tokens", "--model.generation.max_new_tokens")):  # (a mapping's key)
        with pytest.raises(SystemExit):
            main(["fit", "--config", DEMO_CAPTION, written, "4"])
        assert f"{written}: did you mean {meant}" in capsys.readouterr().err

    # resuming as Lightning 1.x (resume_from_checkpoint), other tools (--resume, --checkpoint) and GPUs as Lightning 1.x
    # say it: sent to predict's `resume` (not fit's), to enable_checkpointing, to plugins
    for written, meant in (("--resume", "--ckpt_path?"), ("--trainer.resume_from_checkpoint", "--ckpt_path or"),
                           ("--checkpoint", "--ckpt_path or"), ("--trainer.gpus", "--trainer.devices or")):
        with pytest.raises(SystemExit):
            main(["fit", "--config", DEMO_CAPTION, written, "checkpoints/last.ckpt"])
        assert f"{written}: did you mean {meant}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO_CAPTION, "--data.init_args.resume", "true"])
    assert "(see its settings with --help); training goes on from a checkpoint with --ckpt_path" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # in predict, its own resume first
        main(["predict", "--config", DEMO_CAPTION, "--config", PREDICT_CAPTIONS, "--resume", "true"])
    assert "--resume: did you mean --data.init_args.resume or --ckpt_path?" in capsys.readouterr().err

    with pytest.raises(SystemExit):  # a key cut short is refused, not taken for the one it begins (argparse's abbreviations)
        main(["fit", "--config", DEMO_CAPTION, "--trainer.max_step", "5"])
    assert "--trainer.max_step: did you mean --trainer.max_steps" in capsys.readouterr().err

    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  config:\n    lora_rnk: 4\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO_CAPTION, "--config", str(typo)])
    # and where it is written: the file and the line (the message named neither, among several --config files)
    said = capsys.readouterr().err
    assert "--model.config.lora_rnk: did you mean --model.config.lora_r" in said and f"(written in {typo}, line 3)" in said

    # a setting at the wrong level: lora_r under data (was "did you mean --data.init_args.data_dir"), batch_size under
    # model (no suggestion: data has no default class, so its settings were not looked at)
    for written, meant in (("data:\n  init_args:\n    lora_r: 4\n", "--data.init_args.lora_r: did you mean --model.config.lora_r"),
                           ("model:\n  batch_size: 4\n", "--model.batch_size: did you mean --data.init_args.batch_size")):
        typo.write_text(written)
        with pytest.raises(SystemExit):
            main(["fit", "--config", DEMO_CAPTION, "--config", str(typo)])
        assert meant in capsys.readouterr().err
    with pytest.raises(SystemExit):  # another data module's setting: not suggested as itself
        main(["predict", "--ckpt_path", "x.ckpt", "--data", "mmcaption.data.CaptionPredictDataModule", "--data.images", ".",
              "--data.val_caption_images", "5"])
    assert "did you mean --data.init_args.val_caption_images" not in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the caption stage's hub source asked of the instruct stage: suggestions went in a circle
        main(["fit", "--config", str(REPO / "configs" / "demo" / "instruct.yaml"), "--data.init_args.source", "hub"])
    said = capsys.readouterr().err
    assert ("--data.init_args.source is a setting of CaptionDataModule, not of InstructDataModule, the data this command's "
            "config reads") in said and "did you mean" not in said
    with pytest.raises(SystemExit):  # another stage's setting mistyped: was offered the caption data's image_processor
        main(["fit", "--config", DEMO_CAPTION, "--data.init_args.image_rot", "photos"])
    said = capsys.readouterr().err
    assert ("--data.init_args.image_rot: image_root is a setting of InstructDataModule and MultipleChoiceDataModule and "
            "QuestionsPredictDataModule, not of CaptionDataModule") in said and "did you mean" not in said
    with pytest.raises(SystemExit):  # a mistyped setting of its own (predict's data has one of that name too): its own
        main(["fit", "--config", DEMO_CAPTION, "--data.init_args.caption_promt", "a photo of"])
    said = capsys.readouterr().err
    assert "--data.init_args.caption_promt: did you mean --data.init_args.caption_prompt" in said and "Predict" not in said

    with pytest.raises(SystemExit):  # a list's item by index: was 'Parser key "trainer.callbacks":' and nothing after
        main(["fit", "--config", DEMO_CAPTION, "--trainer.callbacks.0.init_args.dirpath", "elsewhere"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --0.init_args.dirpath=elsewhere" in err
    assert "a list's item (0) cannot be set on the command line: set it in a config file" in err
    with pytest.raises(SystemExit):  # the checkpoint folder by the option's name: given to the list's last callback
        main(["fit", "--config", DEMO_CAPTION, "--trainer.callbacks.dirpath", "elsewhere"])
    err = capsys.readouterr().err
    assert ("--trainer.callbacks.dirpath goes to the list's last callback, here mmcaption.throughput.TrainingThroughput, "
            "which has no 'dirpath': set it on the callback it belongs to in a config file (a copy of the stage's config "
            "with it changed, given as --config in its place") in err
    assert "did you mean" not in err  # that callback's settings (length_fn, ...) named twice as what was meant
    with pytest.raises(SystemExit):  # a key of one object, not of a list: nothing said of lists
        main(["fit", "--config", DEMO_CAPTION, "--data.batch_sise", "4"])
    assert "list's" not in capsys.readouterr().err


@pytest.mark.parametrize("setting, value, said", [
    ("--data.init_args.on_bad_record", "skipp", "data.init_args.on_bad_record: 'skipp' is not one of error, skip"),
    ("--data.init_args.batch_size", "two", "data.init_args.batch_size: 'two' is not a whole number"),
    ("--data.init_args.val_caption_images", "many", "data.init_args.val_caption_images: 'many' is not a whole number or null"),
    ("--trainer.max_steps", "abc", "trainer.max_steps: 'abc' is not a whole number"),
    ("--trainer.gradient_clip_val", "big", "trainer.gradient_clip_val: 'big' is not a number or null"),
    ("--model.config.quantization", "nf5", "model.config.quantization: 'nf5' is not one of nf4, fp4, int8, none"),
    # a callback added without what it needs: the whole list was said to be "not null"
    ("--trainer.callbacks+=EarlyStopping", None, "trainer.callbacks: EarlyStopping: the following arguments are required: "
     "monitor (--trainer.callbacks.monitor VALUE after it on the command line, or its init_args in a config)"),
    # the original scripts' prompts: refused without a word of why, or of how to give it
    ("--data.init_args.caption_prompt", "ROLE: describe.", "data.init_args.caption_prompt: \"{'ROLE': 'describe.'}\" is not "
     "text; on the command line a text with ': ' in it is read as a mapping (and quotes around it stay in the text): "
     "write it in a config file, quoted (caption_prompt: \"ROLE: ...\")"),
])
def test_a_value_of_the_wrong_kind_is_named_with_what_the_setting_takes(tmp_path, monkeypatch, capsys, setting, value, said):
    monkeypatch.chdir(tmp_path)  # was `error: Parser key "data":` alone, the reason dropped
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO_CAPTION, setting, *([] if value is None else [value])])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == f"error: {said}"


def test_config_files_as_users_leave_them_are_read_as_meant_or_refused_with_file_and_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def refused(*arguments: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", DEMO_CAPTION, *arguments])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err
        return err.splitlines()[0]

    def written(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return name

    # a value still to write: a TypeError in the sampler after the model had loaded (a file's null passed every check)
    empty = written("empty.yaml", "data:\n  init_args:\n    batch_size:\n    val_caption_images: null\nmodel:\n  learning_rate:\n")
    assert refused("--config", written("choice.yaml", "data:\n  on_bad_record:\n")) == (  # data's shorthand, a choice
        "error: config choice.yaml, line 2: data.init_args.on_bad_record is empty, and takes one of error, skip: give it a "
        "value, or delete the line to keep its default")
    assert refused("--config", empty) == ("error: config empty.yaml, line 3: data.init_args.batch_size is empty, and takes a "
                                          "whole number: give it a value, or delete the line to keep its default")
    assert refused("--config", empty, "--data.init_args.batch_size", "4").startswith(
        "error: config empty.yaml, line 6: model.learning_rate is empty, and takes a number")
    # a setting typed before the config that writes it: the file's 3 epochs trained, unsaid
    assert refused("--trainer.max_epochs", "1", "--config", DEMO_CAPTION) == (
        f"error: --trainer.max_epochs comes before --config {DEMO_CAPTION}, which writes trainer.max_epochs too (line 9): a "
        "later source replaces an earlier one, so the file's value would be used, not yours. Put the setting after the "
        "config files")
    # the data's tokenizer given: model.config.language_model's replaced it, unsaid (a misspelling was pointed at it)
    linked = ("is not set on its own: it follows model.config.{}, which the model loads with (the data must be read as the "
              "model reads it); give --model.config.{}, or leave {} out")
    assert refused("--data.init_args.tokenizer", "gpt2") == "error: data.init_args.tokenizer " + linked.format(
        "language_model", "language_model", "data.init_args.tokenizer")
    assert refused("--data.image_processor=clip") == "error: data.image_processor " + linked.format(
        "vision_model", "vision_model", "data.image_processor")
    for layers in ("-1", "[-2, -1]"):  # a list too, as the configs document it
        assert refused("--config", written("layer.yaml", f"data:\n  init_args:\n    vision_feature_layer: {layers}\n")) == (
            "error: data.init_args.vision_feature_layer " + linked.format("vision_feature_layer", "vision_feature_layer",
                                                                          "data.init_args.vision_feature_layer"))
    whole = '{"class_path": "mmcaption.data.CaptionDataModule", "init_args": {"tokenizer": "gpt2"}}'  # the data's settings whole
    for data in (whole, written("data.yaml", "class_path: mmcaption.data.CaptionDataModule\ninit_args:\n  tokenizer: gpt2\n")):
        assert refused("--data", data) == "error: data.init_args.tokenizer " + linked.format(
            "language_model", "language_model", "data.init_args.tokenizer")
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO_CAPTION, "--data.init_args.tokeniser", "gpt2"])
    assert "--data.init_args.tokenizer" not in capsys.readouterr().err
    # a callback added before the config whose callbacks list replaces it: it never ran, unsaid (given again after, too)
    assert refused("--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/loss", "--config", DEMO_CAPTION,
                   "--trainer.callbacks+=EarlyStopping").startswith(
        f"error: --trainer.callbacks+=EarlyStopping comes before --config {DEMO_CAPTION}, which writes trainer.callbacks too "
        "(line 18): a later source replaces an earlier one")
    # a setting of the class a config names, typed before that config: 'Parser key "trainer.logger":' and no reason, or
    # "a setting of CaptionDataModule ..., not of LightningDataModule, the data this command's config reads"
    for setting, value, named in (("--trainer.logger.name", "mine", "TensorBoardLogger"), ("--data.eval_batch_size", "8", "CaptionDataModule")):
        with pytest.raises(SystemExit):
            main(["fit", setting, value, "--config", str(REPO / "configs" / "ddp.yaml"), "--config", DEMO_CAPTION])
        err = capsys.readouterr().err
        assert (f"  {setting} comes before --config {DEMO_CAPTION}, the file that names its class ({named}), so it was read "
                "without it: put it after the config files") in err.splitlines(), err
        assert "did you mean" not in err and "not of LightningDataModule" not in err, err
    with pytest.raises(SystemExit):  # misspelt, it is not told to move
        main(["fit", "--data.eval_batch_sze", "8", "--config", DEMO_CAPTION])
    assert "comes before" not in capsys.readouterr().err
    # given again after the files (a wrapper script's `mmcaption fit $COMMON --config x.yaml "$@"`): that one is used
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--trainer.max_epochs", "1", "--config", DEMO_CAPTION, "--trainer.max_epochs", "2", "--print_config"])
    assert exit_info.value.code == 0 and yaml.safe_load(capsys.readouterr().out)["trainer"]["max_epochs"] == 2
    # a null seed is a seed as Lightning reads it (it ran before); a union of kinds said in words ("takes Union")
    assert refused("--config", written("seed.yaml", "seed_everything:\ntrainer:\n  devices:\n")) == (
        "error: config seed.yaml, line 3: trainer.devices is empty, and takes a list or text or a whole number: give it a "
        "value, or delete the line to keep its default")
    # a class name mistyped was "... is not null"; from the command line, the bare key
    typo = written("typo.yaml", "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.EarlyStoping\n"
                                "      init_args:\n        monitor: val/loss\n")
    assert refused("--config", typo) == (
        "error: trainer.callbacks: lightning.pytorch.callbacks.EarlyStoping: lightning.pytorch.callbacks has no class "
        "EarlyStoping; did you mean lightning.pytorch.callbacks.EarlyStopping? (written in typo.yaml, line 2)")
    assert refused("--trainer.logger", "CSVLoger") == ("error: trainer.logger: lightning.pytorch.loggers has no class "
                                                       "CSVLoger; did you mean lightning.pytorch.loggers.CSVLogger?")
    # YAML's `off` for a text: 'False', with no word of YAML or of where
    off = written("off.yaml", "trainer:\n  logger:\n    init_args:\n      name: off\n")
    assert refused("--config", off) == (
        "error: trainer.logger.init_args.name: 'False' is not text or null; YAML reads yes, no, on and off unquoted as true "
        "or false: quote the word (e.g. name: \"off\") (written in off.yaml, line 4)")
    # two sources as a list of data modules: "data: "[{...}]" is not null", the whole list repeated
    sources = written("sources.yaml", "data:\n  - class_path: mmcaption.data.CaptionDataModule\n    init_args: {data_dir: a}\n"
                                      "  - class_path: mmcaption.data.CaptionDataModule\n    init_args: {data_dir: b}\n")
    assert refused("--config", sources) == (
        "error: data: a list of data modules, where one is read: join the sources into one (a folder of tables, one file) "
        "(written in sources.yaml, line 1)")
    # LightningCLI's --optimizer and --lr_scheduler, as Lightning's docs show them: refused with no word of what sets
    # the optimizer, and --lr_scheduler.step_size "did you mean --data.init_args.batch_size?"
    own = ("  the optimizer and its schedule are mmcaption's own (fused AdamW, linear warm-up then linear decay), not "
           "LightningCLI's --optimizer and --lr_scheduler: --model.learning_rate, --model.weight_decay, --model.adam_betas "
           "and --model.warmup_ratio set them")
    for arguments in (["--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "1"],
                      ["--config", written("sgd.yaml", "optimizer:\n  class_path: torch.optim.SGD\n")]):
        with pytest.raises(SystemExit):
            main(["fit", "--config", DEMO_CAPTION, *arguments])
        assert capsys.readouterr().err.splitlines()[1:] == [own, TIP]
    # a value given on the command line in the README's short form (--data.batch_size) was blamed on the config's line
    assert refused("--data.batch_size", "abc") == "error: data.init_args.batch_size: 'abc' is not a whole number"
    # a callback's own setting mistyped: no closest name was offered
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO_CAPTION, "--config", written("key.yaml", "trainer:\n  callbacks:\n    - class_path: "
                                                                   "lightning.pytorch.callbacks.ModelCheckpoint\n      init_args:\n        dirpaht: ck\n")])
    assert "--trainer.callbacks.init_args.dirpaht: did you mean --trainer.callbacks.init_args.dirpath" in capsys.readouterr().err
    # predict with a training stage's config alone: Lightning's "`predict_dataloader` must be implemented", after loading
    message = user_error(capsys, main, ["predict", "--config", DEMO_CAPTION, "--ckpt_path", "last.ckpt"])
    assert message.startswith("error: predict reads images to caption or questions to answer, and data CaptionDataModule "
                              "is a training stage's: add a predict config after the stage's, --config configs/predict/captions.yaml")
    # and the other way round, fit or validate with a predict config: Lightning's "`train_dataloader` must be implemented"
    for command, predict_config in (("fit", "captions.yaml"), ("validate", "multiple_choice.yaml")):
        message = user_error(capsys, main, [command, "--config", DEMO_CAPTION, "--config", str(REPO / "configs/predict" / predict_config),
                                            "--ckpt_path", "last.ckpt"])
        assert message.startswith(f"error: {command} reads a training stage's data, and data ") and "is predict's" in message
    # a later config's generation settings add to the stage's (its 3 beams were dropped: greedy captions, unsaid)
    more = written("more.yaml", "model:\n  generation:\n    max_new_tokens: 16\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs" / "caption.yaml"), "--config", more, "--print_config"])
    generation = yaml.safe_load(capsys.readouterr().out)["model"]["generation"]
    assert generation == {"max_new_tokens": 16, "num_beams": 3, "do_sample": False}
    with pytest.raises(SystemExit):  # one given between the files is kept too (the earlier file's was put back over it)
        main(["fit", "--config", str(REPO / "configs" / "caption.yaml"), "--model.generation.num_beams", "5", "--config", more,
              "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["generation"]["num_beams"] == 5
    # a number in scientific notation an earlier file or the command line gives is carried over as the number it is
    # (PyYAML reads 3e-4 as text: "epsilon_cutoff '\"3e-4\"' is not a number", a valid config refused)
    sampling = written("sampling.yaml", "model:\n  generation:\n    do_sample: true\n    epsilon_cutoff: 3e-4\n")
    for arguments in (["--config", sampling, "--config", more], ["--config", more, "--model.generation.epsilon_cutoff", "3e-4",
                                                                  "--config", written("more2.yaml", "model:\n  generation:\n    num_beams: 1\n")]):
        with pytest.raises(SystemExit):
            main(["fit", "--config", str(REPO / "configs" / "caption.yaml"), *arguments, "--print_config"])
        assert yaml.safe_load(capsys.readouterr().out)["model"]["generation"]["epsilon_cutoff"] == pytest.approx(3e-4)
    with pytest.raises(SystemExit) as exit_info:  # a later file's generation with one key left empty: a TypeError
        main(["fit", "--config", str(REPO / "configs" / "caption.yaml"), "--config", written("empty_key.yaml", "model:\n  "
              "generation:\n    top_k:\n"), "--print_config"])
    assert "Traceback" not in capsys.readouterr().err and exit_info.value.code in (0, 2)


def test_a_count_of_batches_typed_as_a_whole_number_is_that_count_however_it_parsed(tmp_path, monkeypatch):
    # where typing had met Union[float, int] first (torch 2.6, huggingface_hub 1.x), jsonargparse read the 1 of a one-batch
    # smoke test as 1.0, every batch: a whole epoch, hours at COCO's scale
    from jsonargparse import Namespace

    from mmcaption import parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick.yaml").write_text("trainer:\n  limit_val_batches: 2\n  limit_test_batches: 0.5\n")
    monkeypatch.setattr(parser, "_ARGUMENTS", ["fit", "--config", "quick.yaml", "--trainer.limit_train_batches", "1",
                                               "--trainer.val_check_interval=1.0"])
    parsed = Namespace(limit_train_batches=1.0, limit_val_batches=2.0, limit_test_batches=0.5, val_check_interval=1.0)
    config = Namespace(subcommand="fit", fit=Namespace(trainer=parsed))
    parser._whole_numbers_as_written(config)
    assert config.fit.trainer == Namespace(limit_train_batches=1, limit_val_batches=2, limit_test_batches=0.5,
                                           val_check_interval=1.0)  # 1.0 written: the fraction, all of it
    assert isinstance(config.fit.trainer.limit_train_batches, int) and isinstance(config.fit.trainer.val_check_interval, float)


def test_a_run_in_a_process_that_ran_another_does_not_take_its_seed(monkeypatch):
    # a sweep's trial with seed_everything false took the trial before's seed (Lightning leaves it in PL_GLOBAL_SEED):
    # its data order and the seed its checkpoint records, so that resuming it in a new process was refused
    from mmcaption import run_callbacks

    monkeypatch.setattr(run_callbacks, "_SEED_GIVEN", {"PL_GLOBAL_SEED": None, "PL_SEED_WORKERS": None})
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # as a run before left it
    monkeypatch.setenv("PL_SEED_WORKERS", "1")  # its loader workers seeded from it, which a run without a seed did too
    run_callbacks.forget_earlier_seed()
    assert "PL_GLOBAL_SEED" not in os.environ and "PL_SEED_WORKERS" not in os.environ
    monkeypatch.setattr(run_callbacks, "_SEED_GIVEN", {"PL_GLOBAL_SEED": "7", "PL_SEED_WORKERS": None})  # the user's: kept
    run_callbacks.forget_earlier_seed()
    assert os.environ["PL_GLOBAL_SEED"] == "7"


def test_a_pattern_the_shell_expanded_into_file_names_is_said_as_such(tmp_path, monkeypatch, capsys):
    # `--data.images photos/*.jpg` unquoted: "unrecognized arguments:" and every photo's name on one line
    monkeypatch.chdir(tmp_path)
    photos = [f"IMG_{index:04d}.jpg" for index in range(500)]
    for name in photos:
        (tmp_path / name).touch()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", DEMO_CAPTION, "--config", str(REPO / "configs" / "predict" / "captions.yaml"), "--data.images", *photos])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: unrecognized arguments: 499 file names (IMG_0001.jpg, IMG_0002.jpg, IMG_0003.jpg, ...)"
    assert err[1] == ("  the shell gave a pattern (*.jpg) as file names, the first to the setting before them: give their folder "
                      "(--data.images photos) or a text file with one path per line")


def test_validate_with_a_checkpoint_and_no_config_says_where_the_data_comes_from(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["validate", "--ckpt_path", str(tmp_path / "last.ckpt")])
    err = capsys.readouterr().err  # was the parser's "the following arguments are required: validate.data" alone
    assert "the data comes from the stage's config (--config configs/caption.yaml" in err


def test_a_value_of_the_wrong_kind_in_a_config_file_is_named_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  init_args:\n    on_bad_record: skipp\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO_CAPTION, "--config", str(bad)])
    assert capsys.readouterr().err.splitlines()[0] == ("error: data.init_args.on_bad_record: 'skipp' is not one of error, skip "
                                                       f"(written in {bad}, line 3)")


def test_generation_settings_and_devices_that_cannot_work_are_refused_before_a_model_loads(
    backbones, tmp_path, monkeypatch, capsys, nothing_loads
):
    monkeypatch.chdir(tmp_path)  # each was a traceback from transformers or torch, after the model had loaded
    err = user_error(capsys, main, ["fit", "--config", DEMO_CAPTION, "--model.config.language_model", str(backbones[0]),
                                   "--model.config.vision_model", str(backbones[1]), "--model.generation.max_new_tokens", "0"])
    assert err == "error: model.generation: max_new_tokens 0 must be 1 or more"
    # a misspelled setting, in a config file or on the command line: it was kept (and saved, and exported) and the one
    # meant never applied, validation and predict decoding greedily where beams were asked for
    typos = tmp_path / "generation.yaml"
    typos.write_text("model:\n  generation:\n    num_beams: 3\n    lenght_penalty: 2.0\n")
    err = user_error(capsys, main, ["fit", "--config", DEMO_CAPTION, "--config", str(typos), "--model.config.language_model",
                                   str(backbones[0]), "--model.config.vision_model", str(backbones[1]), "--model.generation.num_beam", "3"])
    assert err == ("error: model.generation: lenght_penalty is no setting of Hugging Face's generate (did you mean "
                   "length_penalty, diversity_penalty?); num_beam is no setting of Hugging Face's generate (did you mean "
                   "num_beams, num_beam_groups?)")
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "mmcaption.json").write_text("{}")  # a model folder, as far as the checks before loading look
    monkeypatch.setattr(MultimodalCausalLM, "from_pretrained", MultimodalCausalLM.from_config)  # refuses, as nothing_loads set it
    err = user_error(capsys, chat_main, ["--model", str(folder), "--temperature", "-1", "--top_p", "2"])
    assert err == "error: mmcaption chat: temperature -1.0 must be above 0 when sampling; top_p 2.0 must be between 0 and 1"
    err = user_error(capsys, chat_main, ["--model", str(folder), "--min_new_tokens", "50", "--max_new_tokens", "10"])
    assert err == "error: mmcaption chat: min_new_tokens 50 is above max_new_tokens 10"
    if not torch.cuda.is_available():
        err = user_error(capsys, chat_main, ["--model", str(folder), "--device", "cuda"])
        assert err.startswith("error: device 'cuda': PyTorch sees no cuda device on this machine")
    with pytest.raises(ConfigError, match="device 'gpu' is not a device name: cpu, cuda, cuda:1, mps"):
        Captioner.from_pretrained(folder, device="gpu")
    check_generation({"do_sample": True, "temperature": None, "top_p": None, "num_beams": None})  # unset: transformers' own
    with pytest.raises(ConfigError, match="generation: max_new_tokens '32' is not a number"):
        check_generation({"max_new_tokens": "32"})


def test_the_demo_never_removes_a_users_folder_or_report_and_says_when_it_rewrites_its_own(tmp_path, capsys):
    mine = tmp_path / "userdir"
    (mine / "photos").mkdir(parents=True)
    (mine / "photos" / "notes.txt").write_text("precious\n")
    for meta in ('{"name": "my labelled photos"}', "not json"):  # a meta.json of the user's: the folder was deleted
        (mine / "meta.json").write_text(meta)
        with pytest.raises(OutputExistsError, match=f"{mine} exists but is not demo data written by mmcaption"):
            prepare_demo_assets(mine, train_images=8, val_images=4, pretrain_steps=0, clip_steps=0)
        assert (mine / "photos" / "notes.txt").read_text() == "precious\n"
    (tmp_path / "report.json").write_text('{"my": "own report"}')  # --report . beside one's own report: was replaced
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--root", str(mine), "--report", str(tmp_path)])
    assert exit_info.value.code == 2 and f"{tmp_path / 'report.json'}: not an earlier demo report's" in capsys.readouterr().err
    assert (tmp_path / "report.json").read_text() == '{"my": "own report"}'
    demo = prepare_demo_assets(tmp_path / "demo_data", train_images=8, val_images=4, pretrain_steps=0, clip_steps=0)
    capsys.readouterr()
    prepare_demo_assets(demo, train_images=10, val_images=4, pretrain_steps=0, clip_steps=0)
    said = capsys.readouterr().err
    assert f"note: {demo} holds demo data written with other settings (train_images 8 -> 10): it is written again" in said
    assert "backbones change" not in said  # the same seed and steps: the same backbones, earlier checkpoints still fit
    # a file of the user's kept in demo_data (predictions, notes): the whole folder was removed with the demo's data
    (demo / "my_captions.jsonl").write_text("mine\n")
    with pytest.raises(OutputExistsError, match=r"demo_data holds demo data written with other settings, and files the demo "
                                                r"did not write \(my_captions\.jsonl\)"):
        prepare_demo_assets(demo, train_images=8, val_images=4, pretrain_steps=0, clip_steps=0)
    assert (demo / "my_captions.jsonl").read_text() == "mine\n"
    (demo / "my_captions.jsonl").unlink()
    # ... and one further down (predictions beside the held-out photos the README captions), its caches aside
    (demo / "coco" / "val2017" / "preds").mkdir()
    (demo / "coco" / "val2017" / "preds" / "out.jsonl").write_text("mine\n")
    (demo / "coco" / "preprocessed" / "val2017-0123").mkdir(parents=True)
    (demo / "coco" / "preprocessed" / "val2017-0123" / "meta.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"files the demo did not write \(coco/val2017/preds/out\.jsonl\)"):
        prepare_demo_assets(demo, train_images=8, val_images=4, pretrain_steps=0, clip_steps=0)
    assert (demo / "coco" / "val2017" / "preds" / "out.jsonl").read_text() == "mine\n"
    shutil.rmtree(demo / "coco" / "val2017" / "preds")
    prepare_demo_assets(demo, train_images=10, val_images=4, pretrain_steps=0, clip_steps=0, seed=1)
    assert "its backbones change too, so checkpoints and exports trained on the earlier ones no longer fit them" in \
        capsys.readouterr().err
    # steps no pretraining can take: refused before the earlier data is removed (it was removed, then refused)
    with pytest.raises(ValueError, match="pretrain_steps must be 0 .no pretraining. or at least 4, not 3"):
        prepare_demo_assets(demo, train_images=10, val_images=4, pretrain_steps=3, clip_steps=0, seed=1)
    assert json.loads((demo / "meta.json").read_text())["seed"] == 1 and (demo / "backbones").is_dir()
    # --report naming a file: refused before anything trains (it failed with FileExistsError after both stages)
    (tmp_path / "notes.txt").write_text("my notes\n")
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--root", str(demo), "--report", str(tmp_path / "notes.txt")])
    assert exit_info.value.code == 2 and "--report " in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
    # a demo killed while it wrote its data (Ctrl-C twice, the OOM killer) left its hidden staging folder beside it for good
    leftover = tmp_path / ".again.k1ll3d.partial"
    (leftover / "coco" / "train2017").mkdir(parents=True)
    (leftover / "coco" / "train2017" / "000000000001.jpg").write_bytes(b"\xff\xd8" * 1000)
    prepare_demo_assets(tmp_path / "again", train_images=8, val_images=4, pretrain_steps=0, clip_steps=0)
    assert not leftover.exists() and f"note: removed {leftover}" in capsys.readouterr().err


def test_a_backbone_folder_moved_since_training_is_named_as_a_folder_not_a_hub_id(tmp_path):
    from mmcaption.model.backbone_checks import BackboneNotFoundError
    from mmcaption.model.backbones import load_tokenizer

    moved = tmp_path / "bb" / "language_model"  # what an export or the app reads from a checkpoint, after `mv bb elsewhere`
    with pytest.raises(BackboneNotFoundError, match=f"^cannot load the tokenizer of {moved}: it is no folder \\(any more\\)"
                                                    f"\\..*ln -s <where it is now> {moved}\\)$"):  # was "the tokenizer of: <folder>"
        load_tokenizer(str(moved))  # was "Repo id must be in the form ... download it first (hf download /tmp/...)"
    # both moved (the project's folder with them): both said at once (export, chat and the API said one, then the other)
    from mmcaption.model import MultimodalConfig
    from mmcaption.model.compatibility import check_structure
    from mmcaption.model.structure import model_structure

    config = MultimodalConfig(language_model=str(moved), vision_model=str(tmp_path / "bb" / "vision_model"))
    for check in (check_structure, model_structure):  # a model loaded (the API, chat), a checkpoint's structure (export)
        with pytest.raises(BackboneNotFoundError, match=f"^cannot load the language model {moved} nor the vision model "
                                                        f"{tmp_path}/bb/vision_model: neither is a folder \\(any more\\)"):
            check(config)


def test_a_model_folder_without_its_tokenizer_or_processor_files_is_refused_by_name(backbones, tmp_path):
    """A folder written by model.save_pretrained() alone: transformers still built a one-token tokenizer,
    and every caption was trained as nothing but its end-of-text token, without a word."""
    import shutil

    from mmcaption.model.backbone_checks import BackboneNotFoundError
    from mmcaption.model.backbones import load_image_processor, load_tokenizer

    language_dir, vision_dir = backbones
    weights_only = tmp_path / "lm"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(language_dir / name, weights_only / name)
    with pytest.raises(BackboneNotFoundError, match=f"tokenizer of {weights_only} has 1 token.*no tokenizer files"):
        load_tokenizer(str(weights_only))
    tower = tmp_path / "vm"
    tower.mkdir()
    shutil.copy(vision_dir / "config.json", tower / "config.json")
    with pytest.raises(BackboneNotFoundError, match=f"image processor of {tower}: the folder lacks its files") as refused:
        load_image_processor(str(tower))
    assert "hf download" not in str(refused.value)  # was: "Download it first (`hf download /tmp/.../vm` ...)"
    assert len(load_tokenizer(str(language_dir))) > 100  # the whole folder still loads


def test_every_command_says_its_version(capsys):
    # what a bug report and a container's log name: "unrecognized arguments: --version", or "did you mean --trainer.precision?"
    from importlib.metadata import version

    from mmcaption.export import main as export_main
    from mmcaption.pipeline import main as pipeline_main

    for command in (main, demo_main, export_main, pipeline_main):
        with pytest.raises(SystemExit) as exit_info:
            command(["--version"])
        assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"mmcaption {version('mmcaption')}", command


def test_the_demo_checks_its_arguments_before_building_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--model.config.lora_rnk", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "did you mean --model.config.lora_r" in err
    assert TIP in err  # the stages' settings: not the demo's own --help
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--language_steps", "2"])  # was a ZeroDivisionError once the data was built
    assert exit_info.value.code == 2 and "--language_steps must be 0 (no pretraining) or at least 4" in capsys.readouterr().err
    # the demo's own options near a mistyped one, or the trainer's setting of that name: fit named only its own settings
    # (--pretrain_steps: "did you mean --trainer.min_steps or --data.init_args.train_split")
    for given, meant in (("--lm_steps", "did you mean --clip_steps or --language_steps (the demo's own options)?"),
                         ("--max_steps", "did you mean --trainer.max_steps (each stage's trainer setting)?"),
                         ("--val_imgs", "did you mean --val_images or --train_images (the demo's own options)?")):
        with pytest.raises(SystemExit) as exit_info:
            demo_main([given, "10"])
        assert exit_info.value.code == 2 and f"unrecognized arguments: {given}: {meant}" in capsys.readouterr().err
    # pretrain_steps is the data's own name for it (meta.json, the note when it is written again): taken as written
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--pretrain_steps", "2"])
    assert exit_info.value.code == 2 and "--language_steps must be 0 (no pretraining) or at least 4" in capsys.readouterr().err
    assert not (tmp_path / "demo_data").exists()
    # --ckpt_path, as the note of a demo whose stage 2 was refused says to give: "unrecognized arguments: --ckpt_path"

    def checked(*args, **kwargs):
        raise RuntimeError("the arguments passed the checks")

    monkeypatch.setattr("mmcaption.demo.run.prepare_demo_assets", checked)
    with pytest.raises(RuntimeError, match="the arguments passed the checks"):
        demo_main(["--ckpt_path", "checkpoints/demo-caption/last.ckpt"])
    with pytest.raises(RuntimeError, match="the arguments passed the checks"):  # a logger beside TensorBoard's
        demo_main(["--trainer.logger+=CSVLogger", "--trainer.logger.save_dir", "logs"])
    # its report reads TensorBoard's curves: without a logger it trained both stages, then ended in a traceback and no
    # report; a CSVLogger in its place gave "80% exact match not measured" and a TensorBoard command of no curves
    for logger in (["--trainer.logger", "false"], ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", "logs"]):
        with pytest.raises(SystemExit) as exit_info:
            demo_main(logger)
        assert exit_info.value.code == 2 and "the demo reads its report's curves from TensorBoard" in capsys.readouterr().err


def test_the_pipeline_checks_the_instruct_data_before_the_caption_stage_starts(tmp_path, monkeypatch, nothing_loads):
    prepare_demo_assets(tmp_path / "demo_data", train_images=8, val_images=4, pretrain_steps=0, clip_steps=0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo_data" / "llava" / "instruct_train2017.json").unlink()

    def no_stage(args):
        raise AssertionError("a stage started before the instruct stage was checked")
    monkeypatch.setattr(pipeline, "run_cli", no_stage)
    with pytest.raises(DataError, match=r"LLaVA conversation file not found: demo_data/llava/instruct_train2017\.json"):
        pipeline.run_pipeline(DEMO_CAPTION, DEMO_INSTRUCT)
    prepare_demo_assets(tmp_path / "demo_data", train_images=10, val_images=4, pretrain_steps=0, clip_steps=0)
    # a model the caption stage's weights do not fit: was found after the whole caption stage had trained
    with pytest.raises(ConfigError, match=f"lora_r 8 in {DEMO_CAPTION}, 16 in {DEMO_INSTRUCT}. Give both stages the same"):
        pipeline.run_pipeline(DEMO_CAPTION, DEMO_INSTRUCT, stage_args={"instruct": ["--model.config.lora_r", "16"]})
    # one run folder named for both stages (a logger's version, as a user names runs): stage 2 was refused after stage 1
    # trained ("holds a run already"), and the resume its note advised was refused the same way
    named = ["--trainer.logger.name", "mine", "--trainer.logger.version", "v1"]
    with pytest.raises(ConfigError, match=r"both stages would log into lightning_logs/mine/v1 \(a trainer.logger version given to "
                                          r"both\): give each stage's config a version of its own"):
        pipeline.run_pipeline(DEMO_CAPTION, DEMO_INSTRUCT, named)
    with pytest.raises(AssertionError, match="a stage started"):  # a version alone, each stage's own name: two folders
        pipeline.run_pipeline(DEMO_CAPTION, DEMO_INSTRUCT, named[2:])


def test_last_ckpt_holds_the_last_step_also_after_the_last_validation(backbones, coco_root, tmp_path):
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                           image_processor=str(backbones[1]), batch_size=4, num_workers=0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/loss", save_last=True)
    trainer = Trainer(accelerator="cpu", max_steps=5, val_check_interval=2, check_val_every_n_epoch=None, logger=False,
                      limit_val_batches=1, num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[checkpoints, ResumableStop()])
    trainer.fit(make_captioner(backbones), datamodule=dm)
    assert load_checkpoint_file(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 5  # validations at 2 and 4 only


NOISE = [
    "LOAD REPORT", "UNEXPECTED", "kernels-community", "Tip: For seamless cloud logging", "TPU available",
    "requires torchvision", "set_vital", "Traceback",
]


@pytest.mark.slow
def test_a_short_fit_prints_what_happens_and_no_known_noise(tmp_path):
    prepare_demo_assets(tmp_path / "demo_data", train_images=16, val_images=4, pretrain_steps=0, clip_steps=0)
    overrides = tmp_path / "short.yaml"
    overrides.write_text(yaml.safe_dump({"trainer": {"max_steps": 4, "val_check_interval": 2, "limit_val_batches": 1,
                                                     "check_val_every_n_epoch": 1, "log_every_n_steps": 1},
                                         "data": {"init_args": {"num_workers": 0}}}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "mmcaption", "fit", "--config", DEMO_CAPTION, "--config", str(overrides)],
                            cwd=tmp_path, capture_output=True, text=True, env=env)  # not a terminal: plain lines
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    found = {pattern: [line for line in lines if pattern in line] for pattern in NOISE}
    assert not any(found.values()), {k: v[:2] for k, v in found.items() if v}
    text = "\n".join(lines)
    assert re.search(r"preprocessing split train2017 into .* \.\.\.", text)  # each long phase is named
    assert "demo-caption: training starts at step 0 of 4" in text
    assert re.search(r"demo-caption: validation at step 2: .*loss", text)
    assert "demo-caption: training done at step 4" in text
    # and where it all is, after the last save: which checkpoint goes with which curves (a sweep's last-v1.ckpt, version_1)
    assert re.search(r"demo-caption: saved checkpoints/demo-caption/last\.ckpt \(step 4\) and the best, checkpoints/demo-caption/"
                     r"epoch=0-step=[24]\.ckpt \(val/\S+ [-\d.e]+\); curves and config in lightning_logs/demo-caption/version_0$",
                     text, re.MULTILINE), text[-1500:]
    assert len(lines) <= 60, "\n".join(lines)
    assert not (tmp_path / "lightning_logs" / "demo-caption" / "version_1").exists()
    assert (tmp_path / "lightning_logs" / "demo-caption" / "version_0" / "config.yaml").is_file()  # the folder it names
    assert load_checkpoint_file(tmp_path / "checkpoints" / "demo-caption" / "last.ckpt")["global_step"] == 4


def test_predict_and_validate_write_no_tensorboard_run(tmp_path, monkeypatch):
    from mmcaption.cli import MMCaptionCLI
    from mmcaption.module import MultimodalCaptioner
    from mmcaption.parser import MMCaptionParser

    class Built(MMCaptionCLI):
        def _run_subcommand(self, subcommand):
            pass

        def after_instantiate_classes(self):
            pass

        def before_instantiate_classes(self):
            pass

    from lightning.pytorch import LightningDataModule

    monkeypatch.chdir(tmp_path)
    for subcommand in ("predict", "validate"):
        cli = Built(MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, auto_configure_optimizers=False,
                    args=[subcommand, "--config", DEMO_CAPTION])
        assert cli.trainer.logger is None, subcommand
        # asked for with `true`: the configs', in the stage's folder (was Lightning's own, lightning_logs/version_N), a
        # later config's settings of it laid over the earlier one's (the Karpathy config names its own)
        cli = Built(MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, auto_configure_optimizers=False,
                    args=[subcommand, "--config", DEMO_CAPTION, *(["--config", PREDICT_CAPTIONS] if subcommand == "predict" else []),
                          "--trainer.logger", "true"], parser_class=MMCaptionParser)
        assert cli.trainer.logger.name == "demo-caption" and cli.trainer.logger.save_dir == "lightning_logs", subcommand
        # and under the run's root, as fit puts it (a sweep's runs all wrote to the working folder's lightning_logs)
        cli = Built(MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, auto_configure_optimizers=False,
                    args=[subcommand, "--config", DEMO_CAPTION, *(["--config", PREDICT_CAPTIONS] if subcommand == "predict" else []),
                          "--trainer.default_root_dir", "runs/lr1", "--trainer.logger", "true"], parser_class=MMCaptionParser)
        assert cli.trainer.logger.save_dir == "runs/lr1/lightning_logs", subcommand
    cli = Built(MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, auto_configure_optimizers=False,
                args=["validate", "--config", "configs/caption.yaml", "--config", "configs/caption_karpathy.yaml",
                      "--trainer.logger=true", "--trainer.accelerator", "cpu"], parser_class=MMCaptionParser)  # as installed
    assert cli.trainer.logger.name == "caption-karpathy"
    cli = Built(MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, auto_configure_optimizers=False,
                args=["fit", "--config", DEMO_CAPTION])
    assert cli.trainer.logger is not None
    assert not Path("lightning_logs").exists()


def test_the_vision_tower_loads_the_checkpoints_weights_without_a_load_report(tmp_path, capsys, caplog):
    from safetensors.torch import load_file, save_file

    from mmcaption.demo.synthetic import demo_corpus
    from mmcaption.demo.tiny import save_tiny_backbones
    from mmcaption.errors import ConfigError
    from mmcaption.model.backbones import load_vision_model

    # a full CLIP checkpoint (text tower and projections too), as openai/clip-vit-base-patch32 and the demo's
    _, vision_dir = save_tiny_backbones(tmp_path / "backbones", demo_corpus(seed=0, num_scenes=50), seed=0, clip_steps=4)
    saved = load_file(vision_dir / "model.safetensors")
    assert any(key.startswith("text_model.") for key in saved)
    capsys.readouterr()
    tower = load_vision_model(str(vision_dir))
    for key, value in tower.state_dict().items():  # the checkpoint's weights, not a fresh initialisation
        assert torch.equal(value, saved.get(f"vision_model.{key}", saved.get(key))), key
    assert "LOAD REPORT" not in capsys.readouterr().err + caplog.text

    broken = tmp_path / "broken"  # a tower whose weights are missing: refused, not trained on noise
    shutil.copytree(vision_dir, broken)
    save_file({k: v for k, v in saved.items() if "layers.1." not in k}, broken / "model.safetensors")
    with pytest.raises(ConfigError, match=r"vision model .*broken: the checkpoint lacks \d+ of the tower's weights"):
        load_vision_model(str(broken))


def test_the_help_names_the_commands_beyond_lightnings_four_and_prepare_has_its_own(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # the epilog is wrapped to the terminal's width
    assert "`mmcaption prepare --config C` checks and preprocesses a config's data" in out
    assert "`mmcaption chat --model EXPORTED --image PHOTO`" in out and "mmcaption-pipeline" in out
    # `mmcaption prepare --help` is its own: its name and what it does, not Lightning's "Trainer command line tool"
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: mmcaption prepare ") and "Check and preprocess the data of a config" in out
    assert "Lightning Trainer command line tool" not in out



@pytest.mark.parametrize("script, argv, said", [
    ("export", ["--help"], "usage: mmcaption-export [-h] [--version] [--merge]"),
    ("mmcaption", ["chat", "--help"], "(--model MODEL | --checkpoint CHECKPOINT)"),
    ("app", ["--help"], "usage: mmcaption-app [-h]"),
    ("pipeline", ["--help"], "mmcaption fit --config configs/caption.yaml"),
    ("demo", ["--help"], "--scratch_control"),
    ("export", ["only.ckpt"], "the following arguments are required: out"),
    ("mmcaption", ["chat", "--model", "m", "--temprature", "1"], "unrecognized arguments: --temprature 1"),
    ("mmcaption", ["--version"], "mmcaption "),  # what a bug report asks for first: it took 13 s, torch imported
])
def test_the_argparse_scripts_answer_help_and_a_mistyped_flag_before_importing_torch(script, argv, said):
    # In a fresh interpreter: torch, Lightning and transformers take 10-20 s to import on a laptop's cores.
    code = (f"import sys\nfrom mmcaption import scripts\ntry:\n    scripts.{script}({argv!r})\n"
            "except SystemExit:\n    pass\n"
            "print('imported:', [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert said in done.stdout + done.stderr
    assert "imported: []" in done.stdout
def test_a_config_that_is_not_valid_yaml_is_named_with_its_line(tmp_path, capsys):
    tabbed = tmp_path / "mine.yaml"  # an editor that indents with tabs
    tabbed.write_text("trainer:\n\tmax_epochs: 1\n")
    unclosed = tmp_path / "other.yaml"
    unclosed.write_text("trainer:\n  max_epochs: 1\nmodel:\n  learning_rate: [1e-4\n")
    for config, expected in ((tabbed, "line 2, column 1: not valid YAML: found character '\\t' that cannot start any token "
                                      "(a tab: YAML indents with spaces)"),
                             (unclosed, "line 5, column 1: not valid YAML: expected ',' or ']'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(config)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"error: {config}, {expected}" in err, err  # not "Problems parsing config: while scanning for the next token"


def test_print_config_with_a_checkpoint_shows_the_settings_the_run_will_use(backbones, trained_checkpoint, image_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--ckpt_path", str(trained_checkpoint), "--data", "mmcaption.data.CaptionPredictDataModule",
              "--data.images", str(image_folder), "--model.generation", '{"max_new_tokens": 5}', "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # the checkpoint's settings, as predict uses them - not the defaults (microsoft/phi-2, 2e-4) printed before
    assert printed["model"]["config"]["language_model"] == str(backbones[0])
    assert printed["model"]["learning_rate"] == pytest.approx(3e-2)
    assert printed["model"]["generation"] == {"max_new_tokens": 5}  # and a setting given wins over the checkpoint's


def test_a_folder_an_image_or_a_table_given_where_another_input_belongs_is_named_as_what_it_is(tmp_path, image_folder):
    # a folder as the CSV was "not found", a photo as the CSV was "likely Windows' local code page, as Excel's plain CSV
    # writes it", and the questions CSV as --data.images was read as 401 image paths, its header the first
    with pytest.raises(DataError, match=r"^.*images is a folder: the multiple-choice CSV is one file$"):
        read_choice_csv(image_folder)
    photo = next(image_folder.glob("*.png"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(photo))} is an image \(PNG\), not a text file$"):
        read_choice_csv(photo)
    questions = tmp_path / "questions.csv"
    questions.write_text("img_path,Question,A,B,C,D,answer\nimages/img0.png,What colour?,red,blue,green,white,A\n")
    with pytest.raises(DataError, match=r"questions\.csv is a table, not an image list: questions about images go to "
                                        r"--data\.csv_file with --config configs/predict/multiple_choice\.yaml"):
        find_images(str(questions))
    captions = tmp_path / "captions.csv"  # a sheet of photos and captions: the command that captions and scores it
    captions.write_text("image,caption\nimages/img0.png,a red circle\n")
    with pytest.raises(DataError, match=r"captions\.csv is a table, not an image list: a table of images and their captions is "
                                        r"captioned and scored by mmcaption test with --data\.init_args\.source hub "
                                        r"--data\.init_args\.hub_dataset .*captions\.csv"):
        find_images(str(captions))
    listing = tmp_path / "list.csv"  # one path per line, saved as .csv: still a list of images, commas in names too
    shutil.copy(photo, tmp_path / "a,b.png")
    listing.write_text(f"a,b.png\n{photo}\n")
    assert find_images(str(listing)) == [tmp_path / "a,b.png", photo]


def test_predict_from_an_export_alone_takes_its_settings_and_its_backbones(backbones, trained_checkpoint, image_folder, tmp_path,
                                                                           capsys):
    # an export given to someone else: predict --model.init_from it, with no training config, looked for microsoft/phi-2
    # and then refused the export's own LoRA and layers; its backbones/ folder was never used
    from mmcaption.export import main as export_main

    export_main([str(trained_checkpoint), str(tmp_path / "shared"), "--include_backbones"])
    capsys.readouterr()
    command = ["predict", "--config", str(REPO / "configs" / "predict" / "captions.yaml"), "--model.init_from",
               str(tmp_path / "shared"), "--data.images", str(image_folder), "--trainer.accelerator", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]
    assert printed["config"]["language_model"] == str(tmp_path / "shared" / "backbones" / "language_model")
    assert printed["config"]["lora_r"] == 4 and printed["config"]["cross_attention_layers"] == [2, 3]  # the export's ([-2, -1])
    assert printed["generation"] == {"max_new_tokens": 8}
    config = tmp_path / "shared.yaml"  # init_from in a config, not on the command line: printed before it was read
    config.write_text(f"model:\n  init_from: {tmp_path / 'shared'}\n")
    with pytest.raises(SystemExit) as exit_info:
        main([*command[:3], "--config", str(config), *command[5:], "--print_config"])
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["config"]["language_model"] == printed["config"]["language_model"]
    with pytest.raises(SystemExit) as exit_info:  # layers as the configs write them ([-4, ..., -1]), the export resolved
        main([*command, "--model.config.cross_attention_layers", "[-2, -1]", "--print_config"])
    assert exit_info.value.code == 0  # was refused: "cross_attention_layers: export [2, 3], given [-2, -1]"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a structural setting given that the export's tensors cannot fit
        main([*command, "--model.config.lora_r", "8"])
    assert exit_info.value.code == 2
    assert (f"error: model.init_from {tmp_path / 'shared'} was trained with other structural settings than this run's "
            "(config.lora_r: export 4, given 8 (--model.config.lora_r 4 gives the export's)); its tensors cannot fit. Give the "
            "export's, after any --config") in capsys.readouterr().err


def test_configs_as_people_edit_them_are_refused_naming_the_file_and_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = str(REPO / "configs" / "demo" / "caption.yaml")

    def refused(*configs: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", base, *(arg for config in configs for arg in ("--config", config)), "--print_config"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    edits = tmp_path / "edits"
    edits.mkdir()
    # a section whose lines were all commented out is null: it replaced the base config's whole trainer with the defaults
    # (accelerator, logger, checkpoint folder gone) and the run trained without a word
    (edits / "commented.yaml").write_text("trainer:\n  # max_epochs: 1\nmodel:\n  learning_rate: 1.0e-3\n")
    assert "error: config edits/commented.yaml, line 1: trainer: has nothing under it (its lines commented out?)" in refused(
        "edits/commented.yaml")
    (edits / "empty.yaml").write_text("# nothing yet\n")  # was "Unexpected config: # nothing yet", no file named
    assert "error: config edits/empty.yaml holds no settings (it is empty, or only comments)" in refused("edits/empty.yaml")
    # a value added at the top of a --print_config dump, the dump's own further down: the first was dropped silently
    (edits / "twice.yaml").write_text("model:\n  learning_rate: 1.0e-2  # mine\n  weight_decay: 0.0\n  learning_rate: 3.0e-3\n")
    assert "error: config edits/twice.yaml: model.learning_rate is written twice (lines 2 and 4)" in refused("edits/twice.yaml")
    # a section indented under another: was 'data: "{...}" is not null', or "Option 'model.learning_rate' is not accepted"
    (edits / "nested.yaml").write_text("data:\n  init_args:\n    batch_size: 8\n  model:\n    learning_rate: 1.0e-4\n")
    assert ("error: config edits/nested.yaml, line 4: model: is indented under data:, where it is no setting: the sections "
            "trainer, model and data each begin at the top of the file (no indent)") in refused("edits/nested.yaml")
    (edits / "deeper.yaml").write_text("data:\n  init_args:\n    trainer:\n      max_steps: 3\n")
    assert "line 3: trainer: is indented under data.init_args:" in refused("edits/deeper.yaml")
    # a data module's settings beside its class_path: "Option 'class_path' is not accepted", guessing at val_split
    (edits / "flat.yaml").write_text("data:\n  class_path: mmcaption.data.CaptionDataModule\n  batch_size: 8\n")
    assert ("error: config edits/flat.yaml, line 3: data: batch_size is beside class_path, where its settings go under "
            "init_args: (class_path: ..., then init_args: with batch_size indented under it)") in refused("edits/flat.yaml")
    # saved by PowerShell 5's > (UTF-16), or a checkpoint given as a config: was an 80-line UnicodeDecodeError traceback
    (edits / "ps.yaml").write_bytes("model:\n  learning_rate: 1.0e-3\n".encode("utf-16"))
    assert "error: config edits/ps.yaml is UTF-16 text (as Windows PowerShell's > writes it), not UTF-8" in refused("edits/ps.yaml")
    # a config in another folder with a YAML error: jsonargparse reads it from its own folder, so the message lost the file
    (edits / "tab.yaml").write_text("trainer:\n\tmax_epochs: 1\n")
    assert "error: edits/tab.yaml, line 2, column 1: not valid YAML" in refused("edits/tab.yaml")
    # a path written as a job script would ($SCRATCH/coco): nothing expands it, so "not found: $SCRATCH/coco/..." said
    # nothing of why; or an output folder named "$SCRATCH" made beside the run
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    (edits / "var.yaml").write_text("model:\n  learning_rate: 1.0e-3\ndata:\n  init_args:\n    data_dir: ${SCRATCH}/coco\n")
    assert ("error: config edits/var.yaml, line 5: data.init_args.data_dir: ${SCRATCH}/coco - a config is not read by a "
            "shell, so environment variables stay as written (a shell would read /scratch/me/coco)") in refused("edits/var.yaml")
    with pytest.raises(SystemExit) as printed:  # given on the command line after it, as the message says: its value is read
        main(["fit", "--config", base, "--config", "edits/var.yaml", "--data.init_args.data_dir", "/scratch/me/coco",
              "--print_config"])
    assert printed.value.code == 0 and "data_dir: /scratch/me/coco" in capsys.readouterr().out
    (edits / "listed.yaml").write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                                       "      init_args:\n        dirpath: $SCRATCH/checkpoints\n")
    said = refused("edits/listed.yaml")  # a list's item: the command line cannot set it, so not offered
    assert "trainer.callbacks.init_args.dirpath: $SCRATCH/checkpoints" in said and "on the command line" not in said
    (edits / "unset.yaml").write_text("trainer:\n  default_root_dir: $NOT_SET_HERE/runs\n")
    assert "line 2: trainer.default_root_dir: $NOT_SET_HERE/runs - a config is not read by a shell" in refused("edits/unset.yaml")
    # settings before the subcommand
    with pytest.raises(SystemExit):
        main(["--config", base, "fit"])
    assert "settings go after the subcommand: mmcaption fit --config <file>" in capsys.readouterr().err
    # YAML given as the argument itself, longer than a file name may be: read as YAML (was an OSError traceback)
    inline = "{trainer: {max_steps: 1, limit_val_batches: 1, limit_train_batches: 2, log_every_n_steps: 1, " + ", ".join(
        f"num_sanity_val_steps: {n}" for n in range(1)) + "}, model: {learning_rate: 0.001, weight_decay: 0.0}}" + " " * 200
    with pytest.raises(SystemExit) as printed:
        main(["fit", "--config", base, "--config", inline, "--print_config"])
    assert printed.value.code == 0 and "max_steps: 1" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a command that is none: mmcaption's own are named beside Lightning's four
        main(["prepair"])
    assert "and mmcaption's own: prepare (preprocess the data), chat" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no command at all: the same, and the tip is about commands, not --data.help
        main([])
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  and mmcaption's own: prepare (preprocess the data), chat (talk about an image)",
        "tip: `mmcaption --help` lists the commands, `mmcaption fit --help` a command's settings"]


def test_the_pipeline_names_the_stage_and_the_default_config_a_refusal_is_about(tmp_path, monkeypatch, capsys, nothing_loads):
    # `mmcaption-pipeline --caption configs/demo/caption.yaml`: stage 2 took the real model's configs/instruct.yaml by
    # default, and its refusal (a GPU config on a CPU machine, Phi-2 not downloaded) read as the command's own
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(["--caption", "configs/demo/caption.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "note: refused in stage 2, instructions (--instruct configs/instruct.yaml, the default: --instruct names yours):"
    assert err[1].startswith("error: ")
    with pytest.raises(SystemExit):  # a config given: named, without the default's advice
        pipeline.main(["--caption", "configs/demo/caption.yaml", "--instruct", "configs/instruct.yaml"])
    assert capsys.readouterr().err.splitlines()[0] == "note: refused in stage 2, instructions (--instruct configs/instruct.yaml):"
    with pytest.raises(SystemExit):  # abbreviated, as argparse takes it: given, not the default
        pipeline.main(["--caption", "configs/demo/caption.yaml", "--inst", "configs/instruct.yaml"])
    assert capsys.readouterr().err.splitlines()[0] == "note: refused in stage 2, instructions (--instruct configs/instruct.yaml):"
    with pytest.raises(SystemExit) as exit_info:  # the parser's own error, said first: the note follows it
        pipeline.main(["--caption", "configs/demo/caption.yaml", "--instruct", "configs/demo/instruct.yaml",
                       "--trainer.max_epochs=abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and err[-1] == ("note: the error above came from checking stage 2, instructions "
                                                        "(--instruct configs/demo/instruct.yaml)")
    with pytest.raises(SystemExit) as exit_info:  # --print_config: printed, no refusal said
        pipeline.main(["--caption", "configs/demo/caption.yaml", "--instruct", "configs/demo/instruct.yaml", "--print_config"])
    assert exit_info.value.code in (0, None) and "note:" not in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
def test_the_demo_resumed_in_stage_2_as_its_stop_says_finishes_and_reports_both_stages(tmp_path, monkeypatch, capsys):
    # "stopped ... in stage 2: run the same command with --ckpt_path checkpoints/demo-instruct/last.ckpt": it trained, then
    # ended in a traceback (ValueError: not enough values to unpack), with no report
    monkeypatch.chdir(tmp_path)
    tiny = ["--train_images", "16", "--val_images", "4", "--language_steps", "0", "--clip_steps", "0"]
    demo_main([*tiny, "--trainer.max_steps", "2"])
    capsys.readouterr()
    last = Path("checkpoints/demo-instruct/last.ckpt")
    started_from = load_checkpoint_file(last)["hyper_parameters"]["init_from"]
    demo_main([*tiny, "--trainer.max_steps", "3", "--ckpt_path", str(last)])
    out = capsys.readouterr().out
    assert "captions (4 images)" in out and "tanh(gate) after caption" in out and "multiple choice: likelihood" in out
    assert f"caption: checkpoint {started_from} (trained before)" in out
    assert f"instruct: checkpoint {last.absolute()}" in out
    # stage 1's weights were loaded for the report, not trained or logged again
    assert sorted(p.name for p in Path("lightning_logs/demo-caption").iterdir()) == ["version_0"]


def test_a_captions_file_or_cocos_annotations_folder_given_as_data_dir_is_named_for_what_it_is(coco_root):
    # it said "COCO annotation file not found: .../annotations/captions_train2017.json/annotations/captions_train2017.json"
    # and ".../annotations/annotations/captions_train2017.json", and nothing of what data_dir should be
    file = coco_root / "annotations" / "captions_train2017.json"
    with pytest.raises(DataError, match=rf"data_dir {re.escape(str(file))} is a file: data_dir is the folder that holds annotations/ "
                                        rf"and the image folders: --data.init_args.data_dir {re.escape(str(coco_root))}$"):
        CaptionDataModule(data_dir=str(file)).check_inputs("fit")
    with pytest.raises(DataError, match=rf"data_dir {re.escape(str(file.parent))} is COCO's annotations folder: give the folder "
                                        rf"above it, --data.init_args.data_dir {re.escape(str(coco_root))}$"):
        CaptionDataModule(data_dir=str(file.parent)).check_inputs("fit")


def test_a_folder_of_fits_checkpoints_given_as_one_is_refused_before_the_model_loads_naming_its_newest_last(
    backbones, trained_checkpoint, tmp_path, monkeypatch, capsys, nothing_loads
):
    # --model.init_from checkpoints/demo-caption was refused only once the model was built and its data prepared, and
    # it named last.ckpt where a re-run into the folder had written the newer last-v1.ckpt (chat named the newest)
    import os
    import shutil

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs" / "checkpoints" / "demo-caption"
    folder.mkdir(parents=True)
    for name, age in (("last.ckpt", 200), ("epoch=1-step=8.ckpt", 100), ("last-v1.ckpt", 0)):
        shutil.copy(trained_checkpoint, folder / name)
        os.utime(folder / name, (1_700_000_000 - age,) * 2)
    newest = folder / "last-v1.ckpt"
    err = user_error(capsys, main, ["fit", "--config", DEMO_INSTRUCT, "--model.config.language_model", str(backbones[0]),
                                   "--model.config.vision_model", str(backbones[1]), "--model.init_from", str(folder)])
    assert err.startswith(f"error: {folder} is not a saved mmcaption model folder (no mmcaption.json)")
    assert f"give {newest} itself where a checkpoint is taken: --ckpt_path, --model.init_from" in err
    err = user_error(capsys, main, ["test", "--config", DEMO_INSTRUCT, "--ckpt_path", str(folder)])
    assert err == (f"error: {folder} is a folder, not a checkpoint file: a checkpoint of mmcaption fit is a .ckpt file "
                   f"(checkpoints/<stage>/last.ckpt); it holds checkpoints of fit: {newest} (the newest last*.ckpt)")


def test_several_nodes_asked_of_a_process_no_launcher_started_are_refused_at_once(backbones, tmp_path, monkeypatch, capsys,
                                                                                   nothing_loads):
    # --trainer.num_nodes 2 typed on one machine: it waited for the second node's process for ever ("Initializing
    # distributed: GLOBAL_RANK: 0, MEMBER: 1/2"), and neither timeout's SIGTERM nor Ctrl-C ended it, only SIGKILL
    from mmcaption.slurm import nodes_unlaunched

    for name in ("NODE_RANK", "GROUP_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID", "KUBERNETES_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    err = user_error(capsys, main, ["fit", "--config", DEMO_CAPTION, "--model.config.language_model", str(backbones[0]),
                                   "--model.config.vision_model", str(backbones[1]), "--trainer.num_nodes", "2"])
    assert err.startswith("error: trainer.num_nodes is 2, and nothing started this process as one of 2 machines (no torchrun, "
                          "SLURM srun, LSF or MPI environment, no NODE_RANK): it would wait for the other nodes for ever")
    # each machine's processes as trainer.devices asks (one by torchrun's default: Lightning refused the world size)
    assert "torchrun --nnodes 2 --nproc_per_node <its GPUs, as trainer.devices> --node_rank <its rank>" in err
    assert "leave num_nodes out and give --trainer.devices" in err
    assert nodes_unlaunched(1, None) is None and nodes_unlaunched(2, ["my_cluster_environment"]) is None
    monkeypatch.setenv("NODE_RANK", "1")  # started by hand on each machine, as Lightning's own environment reads it
    assert nodes_unlaunched(2, None) is None


def test_an_init_from_typed_beside_ckpt_path_is_said_not_to_be_read(trained_checkpoint, image_folder, tmp_path, capsys):
    # the weights are the checkpoint's, whatever init_from says: typed beside --ckpt_path it was dropped without a word
    other = tmp_path / "other.ckpt"
    other.write_bytes(trained_checkpoint.read_bytes())
    for subcommand, then in (("predict", f"to predict the weights of {other}, leave --ckpt_path out"),
                             ("fit", f"that run goes on from its weights; to start a new run from {other}, leave --ckpt_path out")):
        extra = ["--data", "mmcaption.data.CaptionPredictDataModule", "--data.images", str(image_folder)] if subcommand == "predict" \
            else ["--data", "mmcaption.data.CaptionDataModule", "--data.data_dir", str(tmp_path)]
        with pytest.raises(SystemExit):
            main([subcommand, "--ckpt_path", str(trained_checkpoint), *extra, "--model.init_from", str(other), "--print_config"])
        err = capsys.readouterr().err
        assert f"note: --model.init_from {other} is not read: the weights are --ckpt_path {trained_checkpoint}'s ({then})" in err, err
    with pytest.raises(SystemExit):  # without init_from typed, nothing is said
        main(["predict", "--ckpt_path", str(trained_checkpoint), "--data", "mmcaption.data.CaptionPredictDataModule",
              "--data.images", str(image_folder), "--print_config"])
    assert "is not read" not in capsys.readouterr().err

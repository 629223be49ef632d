"""The CLI end to end on the demo config: `mmcaption fit | validate | test` and `mmcaption-demo`."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmcaption.cli import main, run_cli
from mmcaption.demo import prepare_demo_assets, scalar_series

from .conftest import REPO

DEMO_CONFIG = str(REPO / "configs" / "demo" / "caption.yaml")
FAST = ["--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1", "--trainer.check_val_every_n_epoch", "1", "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false"]


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
    """A working directory holding small demo data, as `mmcaption-demo` would leave it."""
    prepare_demo_assets(tmp_path / "demo_data", train_images=16, val_images=4, pretrain_steps=0, clip_steps=0)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_fit_writes_a_lean_checkpoint_and_tensorboard_curves_and_resumes(demo_dir, capsys):
    cli = run_cli(["fit", "--config", DEMO_CONFIG, "--trainer.max_steps", "3", "--trainer.val_check_interval", "1", *FAST])
    last = demo_dir / "checkpoints" / "demo-caption" / "last.ckpt"
    assert last.is_file()
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 3
    assert set(checkpoint["state_dict"]) == cli.model.trainable_state_keys()
    # the backbones by absolute paths (the config names them relative to the working folder): it loads from anywhere
    saved = checkpoint["hyper_parameters"]["config"]
    assert saved["language_model"] == str((demo_dir / "demo_data" / "backbones" / "language_model").resolve()), saved

    log_dir = demo_dir / "lightning_logs" / "demo-caption" / "version_0"
    logged = yaml.full_load((log_dir / "hparams.yaml").read_text())  # as Lightning reads it; the model's config in it
    assert logged["config"]["lora_r"] == saved["lora_r"] and logged["config"]["language_model"] == saved["language_model"]
    assert list(log_dir.glob("events.out.tfevents.*"))
    assert len(scalar_series(log_dir, "train/loss")) >= 1
    assert scalar_series(log_dir, "gate/layer_2_attn") and scalar_series(log_dir, "gate/layer_3_attn")
    assert scalar_series(log_dir, "lr-AdamW/pg1")  # LearningRateMonitor, one curve per parameter group
    assert scalar_series(log_dir, "val/perplexity")
    # TensorBoard's HPARAMS tab compares runs by hp_metric: Lightning's -1, never updated, was its only column
    assert scalar_series(log_dir, "hp_metric")[-1][1] == pytest.approx(scalar_series(log_dir, "val/loss")[-1][1])
    # the example captions sit at the step of the validation scalars they belong to, not one step after
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert [e.step for e in events.Images("val/examples")] == [step for step, _ in scalar_series(log_dir, "val/CIDEr")]
    # every caption of each validation is kept with its scores and step (TensorBoard showed four; another logger none)
    kept = [json.loads(path.read_text()) for path in (log_dir / "validations").glob("val-val2017-step*.results.json")]
    kept.sort(key=lambda results: results["checkpoint"]["step"])
    assert [results["checkpoint"]["step"] for results in kept] == [1, 2, 3]  # as checkpoints name them (step=2)
    assert [results["metrics"]["CIDEr"] for results in kept] == pytest.approx([v for _, v in scalar_series(log_dir, "val/CIDEr")])
    assert kept and all(results["stage"] == "fit" and results["checkpoint"]["weights"] == "in training" for results in kept)
    assert kept[0]["checkpoint"]["checkpoints"] == str((demo_dir / "checkpoints" / "demo-caption").resolve())  # (whose)
    first = log_dir / "validations" / kept[0]["predictions"]
    assert len(first.read_text().splitlines()) == kept[0]["images"] > 0 and "caption" in json.loads(first.read_text().splitlines()[0])

    resumed = run_cli(["fit", "--config", DEMO_CONFIG, "--trainer.max_steps", "5", "--ckpt_path", str(last),
                       "--trainer.val_check_interval", "2", *FAST])
    assert resumed.trainer.global_step == 5
    # its validations say the step it resumed at: the checkpoint they name is saved over as the fit goes on
    (after,) = [json.loads(path.read_text()) for path in (demo_dir / "lightning_logs").rglob("val-val2017-step5.results.json")]
    assert after["checkpoint"]["resumed_at_step"] == 3 and after["checkpoint"]["resumed_from"] == str(last)
    restored = torch.load(last, weights_only=True)
    assert restored["global_step"] == 5

    capsys.readouterr()
    validated = run_cli(["validate", "--config", DEMO_CONFIG, "--ckpt_path", str(last), *FAST,
                         "--data.init_args.val_caption_images", "2", "--model.generation.max_new_tokens", "3"])
    assert "val/loss" in validated.trainer.callback_metrics
    # one table row per metric: the loss is not shown again beside the captioning loader, which has none (nor as hp_metric)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[printed.index(next(x for x in printed if x.startswith("metric"))) + 1:]] == \
        sorted(validated.trainer.callback_metrics) and "hp_metric" not in validated.trainer.callback_metrics
    # no run of the config's TensorBoard logger for validate; a logger asked for on the command line is kept (it was
    # dropped without a word)
    assert not validated.trainer.loggers
    run_cli(["validate", "--config", DEMO_CONFIG, "--ckpt_path", str(last), *FAST, "--data.init_args.val_caption_images", "0",
             "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "csv_logs"])
    assert "val/loss" in (next((demo_dir / "csv_logs").rglob("metrics.csv"))).read_text()
    # ... a TensorBoard one's HPARAMS column is the loss evaluated (it was Lightning's placeholder, -1)
    run_cli(["validate", "--config", DEMO_CONFIG, "--ckpt_path", str(last), *FAST, "--data.init_args.val_caption_images", "0",
             "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir", "tb_logs"])
    (evaluated,) = {events.parent for events in (demo_dir / "tb_logs").rglob("events.out.tfevents.*")}
    assert scalar_series(evaluated, "hp_metric")[-1][1] == pytest.approx(scalar_series(evaluated, "val/loss")[-1][1])

    # the console script: captions for the val images from the checkpoint, exit status 0
    result = subprocess.run(
        ["mmcaption", "predict", "--config", DEMO_CONFIG, "--data", "mmcaption.data.CaptionPredictDataModule",
         "--data.images", "demo_data/coco/val2017", "--data.output", "predictions/captions.jsonl",
         "--ckpt_path", str(last), "--trainer.enable_progress_bar", "false"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (demo_dir / "predictions" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(isinstance(row["caption"], str) for row in rows)
    # its rows are written as they come, and not held too: each image's row stayed in memory to the end (about 0.5 GB a
    # million captions, 1.3 GB a million multiple-choice rows)
    cli = run_cli(["predict", "--config", DEMO_CONFIG, "--data", "mmcaption.data.CaptionPredictDataModule", "--data.images",
                   "demo_data/coco/val2017", "--data.output", "predictions/again.jsonl", "--ckpt_path", str(last), *FAST])
    assert cli.trainer.predict_loop.predictions == [] and (demo_dir / "predictions" / "again.jsonl").read_text() == \
        (demo_dir / "predictions" / "captions.jsonl").read_text()


def print_config(capsys, *args: str, flag: str = "--print_config") -> str:
    """What ``mmcaption ... --print_config`` prints, run in this process (a subprocess each spends most of its
    time importing)."""
    with pytest.raises(SystemExit) as exited:
        main([*args, flag])
    assert exited.value.code in (0, None)
    return capsys.readouterr().out


def test_print_config_shows_the_whole_configuration(demo_dir, capsys):
    out = print_config(capsys, "fit", "--config", DEMO_CONFIG)
    assert "language_model: demo_data/backbones/language_model" in out
    assert "class_path: mmcaption.data.CaptionDataModule" in out

    # the predict configs combine with a stage's config
    predict = str(REPO / "configs" / "predict" / "multiple_choice.yaml")
    out = print_config(capsys, "predict", "--config", DEMO_CONFIG, "--config", predict)
    assert "class_path: mmcaption.data.MultipleChoiceDataModule" in out and "method: likelihood" in out

    ddp = str(REPO / "configs" / "ddp.yaml")
    out = print_config(capsys, "fit", "--config", DEMO_CONFIG, "--config", ddp)
    assert "strategy: ddp" in out and "devices: 2" in out
    assert "lora_r: 8" in out

    bf16 = str(REPO / "configs" / "bf16_lora.yaml")  # the large-GPU preset: the same run without 4-bit weights
    out = print_config(capsys, "fit", "--config", DEMO_CONFIG, "--config", bf16)
    assert "quantization: none" in out and "compute_dtype: bfloat16" in out
    assert "lora_r: 8" in out

    karpathy = str(REPO / "configs" / "caption_karpathy.yaml")  # Karpathy's splits, scored as papers score them
    out = print_config(capsys, "test", "--config", str(REPO / "configs" / "caption.yaml"), "--config", karpathy)
    assert "source: karpathy" in out and "data_dir: data/coco2014" in out
    assert "num_beams: 3" in out and "min_new_tokens: 5" in out and "dirpath: checkpoints/caption-karpathy" in out


def test_print_config_with_comments_documents_every_setting(capsys):
    out = print_config(capsys, "fit", "--config", DEMO_CONFIG, flag="--print_config=comments")
    # model settings under model.config, each with its one docstring line
    assert "  config:" in out and "    lora_r: 8" in out
    assert "# LoRA rank. (type: int, default: 32)" in out
    assert "# hidden state of the vision tower used as image tokens" in out
    # data settings declared once in a base class are shown, documented, for every data module
    assert ("# data loader worker processes (null: 4, or as many as the cores this process may use when fewer). (type: "
            "int | null, default: null)") in out
    assert "# training batch size per device. (type: int, default: 32)" in out


@pytest.mark.slow
def test_prepare_checks_the_data_without_the_language_model_and_prints_what_it_holds(demo_dir, capsys):
    (demo_dir / "demo_data" / "backbones" / "language_model" / "model.safetensors").unlink()  # never loaded
    for name in ("000000000003.jpg", "000000000005.jpg"):
        (demo_dir / "demo_data" / "coco" / "train2017" / name).unlink()
    command = [sys.executable, "-m", "mmcaption", "prepare", "--config", DEMO_CONFIG]
    refused = subprocess.run(command, cwd=demo_dir, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr[-2000:]  # a user error: one line, exit 2
    assert "error: " in refused.stderr and "2 of 16 referenced images are missing" in refused.stderr
    assert "Traceback" not in refused.stderr

    result = subprocess.run([*command, "--data.init_args.on_bad_record", "skip"], cwd=demo_dir, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "split train2017:" in out and "split val2017:" in out
    assert "kept        70 captions of 14 images" in out  # 16 images, 2 missing, 5 captions each
    assert "skipped     2 records: 2 x missing image" in out and "first missing image: " in out
    assert "tokens      mean " in out and "padding     0." in out and "truncated   0 captions cut to max_length (0.0%)" in out
    assert "(group_by_length false)" in out  # the demo config's
    # what its vision features take, and which this config reads (a layer or tower changed left others, unseen)
    assert re.search(r"\n  features    features-[0-9a-f]{16}: [\d.]+ MB, read by this config", out), out
    # its output in a log file (stderr a pipe here): what it does, not bars of redrawn counts
    assert "Generating" not in result.stderr and "Saving the dataset" not in result.stderr and "it/s]" not in result.stderr
    # the skipped records' warning is its message: Python showed records.py's line number and the line of source
    assert "UserWarning: demo_data/coco/annotations/captions_train2017.json: skipped 2 bad records: 2 x missing" in result.stderr, result.stderr[-2000:]
    assert "rank_zero_warn(" not in result.stderr and "records.py" not in result.stderr

    # with length grouping, the padding line names the group size it was computed with
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # a notebook's: off for the rest of its session after a prepare
    datasets.enable_progress_bars()
    import warnings

    from mmcaption import images

    shown_before = warnings.formatwarning("careful", UserWarning, images.__file__, 3)
    with pytest.raises(SystemExit) as exited:
        main(["prepare", "--config", DEMO_CONFIG, "--data.init_args.on_bad_record", "skip", "--data.init_args.group_by_length",
              "true", "--data.init_args.length_group_batches", "2"])
    assert exited.value.code == 0
    assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
    # a warning the notebook's own use of the Python API brings after it is shown as before it (the command's format of
    # mmcaption's warnings, its message alone, stayed in place for the rest of the session)
    assert warnings.formatwarning("careful", UserWarning, images.__file__, 3) == shown_before
    assert "(group_by_length true, length_group_batches 2)" in capsys.readouterr().out
    # run from another folder, the config's backbones are not there: said as fit says it, not "a checkpoint records..."
    with pytest.raises(SystemExit) as exited, pytest.MonkeyPatch.context() as elsewhere:
        elsewhere.chdir(demo_dir / "demo_data")
        main(["prepare", "--config", DEMO_CONFIG])
    said = capsys.readouterr().err
    assert exited.value.code == 2 and said.startswith("error: model.config.language_model demo_data/backbones/language_model: "
                                                      "no such folder (relative to the working directory, "), said
    assert "checkpoint" not in said


@pytest.mark.parametrize("setting, message", [
    (["--data.init_args.length_group_batches", "0"], "error: data.length_group_batches must be at least 1, got 0"),
    (["--data.init_args.batch_size", "-4"], "error: data.batch_size must be at least 1, got -4"),
    # joblib's "every core": torch refused it after the model had loaded, in a 70-line traceback
    (["--data.init_args.num_workers", "-1"], "error: data.num_workers must be 0 (load in the main process) or more, got -1"),
    (["--data.init_args.source", "hub"], "error: source: hub needs hub_dataset"),
    # LLaVA-NeXT's 4096 copied onto a model of a shorter context trained quietly on positions it never saw
    (["--data.init_args.max_length", "5000"], "error: data.max_length 5000 is longer than the language model's context"),
    # trained fully, then failed handing the model back ("220 unexpected keys"); predict's ranks locked each other out
    (["--trainer.strategy", "ddp_spawn"], "error: trainer.strategy ddp_spawn is not supported"),
    (["--trainer.strategy", "lightning.pytorch.strategies.DDPStrategy", "--trainer.strategy.start_method", "spawn"],
     "error: trainer.strategy with start_method spawn is not supported"),
])
def test_a_bad_data_setting_is_one_line_and_exit_2(demo_dir, capsys, setting, message):
    # the data module is built by jsonargparse, which wraps its errors: the user's message alone is shown
    with pytest.raises(SystemExit) as exited:
        main(["fit" if "--trainer.strategy" in setting else "prepare", "--config", DEMO_CONFIG, *setting])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "Union subtypes" not in err


def test_fit_refuses_a_max_length_beyond_the_language_models_context_before_loading(demo_dir):
    from mmcaption.command_checks import check_command
    from mmcaption.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.max_length 5000 is longer than the language model's context \(.*language_model: "
                                          r"max_position_embeddings \d+\)"):
        check_command(["fit", "--config", DEMO_CONFIG, "--data.init_args.max_length", "5000"])


def test_predict_asks_a_model_with_the_prompts_it_was_trained_with(trained_checkpoint, tmp_path, capsys):
    # the predict configs set the default prompts: a model trained with its own system prompt (or caption prompt) was
    # asked with the default by `mmcaption predict`, where the Python API asked it with its own
    checkpoint = torch.load(trained_checkpoint, weights_only=False)
    checkpoint["datamodule_hyper_parameters"].update(system_prompt="ROLE: You answer about images.", caption_prompt="A picture of")
    torch.save(checkpoint, tmp_path / "prompted.ckpt")
    for config, shown in (("multiple_choice.yaml", "system_prompt: 'ROLE: You answer about images.'"),
                          ("questions.yaml", "system_prompt: 'ROLE: You answer about images.'"),
                          ("captions.yaml", "caption_prompt: A picture of")):
        out = print_config(capsys, "predict", "--config", str(REPO / "configs" / "predict" / config),
                           "--ckpt_path", str(tmp_path / "prompted.ckpt"))
        assert shown in out, (config, out)
    from mmcaption.export import export_checkpoint  # an export's manifest holds them as well

    export_checkpoint(tmp_path / "prompted.ckpt", tmp_path / "exported")
    out = print_config(capsys, "predict", "--config", str(REPO / "configs" / "predict" / "multiple_choice.yaml"),
                       "--model.init_from", str(tmp_path / "exported"))
    assert "system_prompt: 'ROLE: You answer about images.'" in out
    out = print_config(capsys, "predict", "--config", str(REPO / "configs" / "predict" / "multiple_choice.yaml"),
                       "--model.init_from", str(tmp_path / "prompted.ckpt"))  # a checkpoint as init_from: its data settings
    assert "system_prompt: 'ROLE: You answer about images.'" in out
    # one set on purpose is kept, and said against the trained one
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(REPO / "configs" / "predict" / "multiple_choice.yaml"), "--ckpt_path",
              str(tmp_path / "prompted.ckpt"), "--data.init_args.system_prompt", "Be brief.", "--print_config"])
    out, err = capsys.readouterr()
    assert "system_prompt: Be brief." in out
    assert "was trained with system_prompt 'ROLE: You answer about images.'; this run asks with 'Be brief.', as set" in err
    # validate and test note only what a checkpoint recorded: an export fills in the prompts its stage never trained with
    with pytest.raises(SystemExit):
        main(["validate", "--data", "mmcaption.data.CaptionDataModule", "--model.init_from", str(tmp_path / "exported"),
              "--data.init_args.caption_prompt", "A photo of", "--print_config"])
    assert "was trained with" not in capsys.readouterr().err


def test_ckpt_path_best_asks_as_trained_and_evaluating_with_another_prompt_is_noted(trained_checkpoint, tmp_path, capsys,
                                                                                    monkeypatch):
    # --ckpt_path best was resolved after the checkpoint's settings were read: predict asked the model with the default
    # caption prompt where the same file given by its path got the trained one; validate and test scored a prompt the
    # model never saw without a word
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    checkpoint = torch.load(trained_checkpoint, weights_only=False)
    checkpoint["datamodule_hyper_parameters"].update(caption_prompt="Describe the image:")
    best = folder / "epoch=0-step=4.ckpt"
    torch.save(checkpoint, best)
    torch.save({**checkpoint, "callbacks": {"ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}": {
        "monitor": "val/loss", "best_model_score": torch.tensor(0.5), "best_model_path": str(best), "dirpath": str(folder)}}},
        folder / "last.ckpt")
    from mmcaption.checkpoint_folders import keyword_checkpoint

    monkeypatch.chdir(tmp_path)  # resolved from the config's folder and from Lightning's realpath of it: said once
    assert keyword_checkpoint("best", [Path("checkpoints")], "test") == Path("checkpoints") / best.name
    assert keyword_checkpoint("best", [folder], "test") == best
    assert capsys.readouterr().err.count("note: --ckpt_path best:") == 1
    saving = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(folder)]
    out = print_config(capsys, "predict", "--config", str(REPO / "configs" / "predict" / "captions.yaml"), *saving,
                       "--ckpt_path", "best")
    assert "caption_prompt: 'Describe the image:'" in out, out
    for subcommand in ("validate", "test"):
        with pytest.raises(SystemExit):
            main([subcommand, "--data", "mmcaption.data.CaptionDataModule", "--ckpt_path", str(best), "--print_config"])
        err = capsys.readouterr().err
        assert (f"note: {best} was trained with caption_prompt 'Describe the image:'; this {subcommand} asks with "
                "'', as given: --data.init_args.caption_prompt 'Describe the image:' evaluates it as trained") in err, err


def test_a_caption_separator_that_yaml_would_read_otherwise_stays_the_text_given(demo_dir, capsys, tmp_path):
    # typed as "str | None", "#" and "~" in a config were read as YAML's null: each cell then trained whole, unsaid
    for separator in ("#", "~", " | "):
        config = tmp_path / "separator.yaml"
        config.write_text(yaml.safe_dump({"data": {"init_args": {"hub_caption_separator": separator}}}))
        out = print_config(capsys, "fit", "--config", DEMO_CONFIG, "--config", str(config))
        assert yaml.safe_load(out)["data"]["init_args"]["hub_caption_separator"] == separator
    config.write_text("data:\n  init_args:\n    hub_caption_separator: ''\n")  # each cell one caption: still given so
    assert yaml.safe_load(print_config(capsys, "fit", "--config", DEMO_CONFIG, "--config", str(config)))["data"]["init_args"][
        "hub_caption_separator"] == ""


def test_a_root_folder_given_holds_the_logs_and_checkpoints_the_config_names(demo_dir, capsys):
    # the shipped configs name lightning_logs and checkpoints/<stage>: --trainer.default_root_dir runA was ignored, its
    # logs and checkpoints written beside every other experiment's, runA never made
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO_CONFIG, "--trainer.default_root_dir", "runA", "--print_config"])
    out, err = capsys.readouterr()
    assert "save_dir: runA/lightning_logs" in out and "dirpath: runA/checkpoints/demo-caption" in out
    assert "note: under trainer.default_root_dir: runA/lightning_logs, runA/checkpoints/demo-caption" in err
    with pytest.raises(SystemExit):  # a folder named absolutely stays where it is named
        main(["fit", "--config", DEMO_CONFIG, "--trainer.default_root_dir", "runA", "--trainer.logger.init_args.save_dir",
              "/tmp/elsewhere", "--print_config"])
    out, err = capsys.readouterr()
    assert "save_dir: /tmp/elsewhere" in out and "dirpath: runA/checkpoints/demo-caption" in out
    with pytest.raises(SystemExit):  # a folder already under the root, named from here: not put under it twice
        main(["fit", "--config", DEMO_CONFIG, "--trainer.default_root_dir", str(demo_dir / "runA"),
              "--trainer.logger.init_args.save_dir", "runA/lightning_logs", "--print_config"])
    assert "save_dir: runA/lightning_logs" in capsys.readouterr().out
    # a run begun before the root was given: --ckpt_path last would find nothing under the root and start at step 0
    (demo_dir / "checkpoints" / "demo-caption").mkdir(parents=True, exist_ok=True)
    (demo_dir / "checkpoints" / "demo-caption" / "last.ckpt").write_bytes(b"")
    try:
        with pytest.raises(SystemExit):
            main(["fit", "--config", DEMO_CONFIG, "--trainer.default_root_dir", "runB", "--ckpt_path", "last"])
        assert ("--ckpt_path last looks in runB/checkpoints/demo-caption, under trainer.default_root_dir, which holds no last "
                "checkpoint; checkpoints/demo-caption holds a run's: give --ckpt_path checkpoints/demo-caption/last.ckpt") in \
            capsys.readouterr().err
        # of two runs' last checkpoints there, the one --ckpt_path last takes there: the newest saved by the time it records,
        # not its file's (a copy's); was last.ckpt always. A link to no file there is no run's (was a traceback)
        saved = demo_dir / "checkpoints" / "demo-caption"
        torch.save({"saved_at": 3e9}, saved / "last-v1.ckpt")
        os.utime(saved / "last-v1.ckpt", (1e9, 1e9))
        (saved / "last-v2.ckpt").symlink_to("gone.ckpt")
        with pytest.raises(SystemExit):
            main(["fit", "--config", DEMO_CONFIG, "--trainer.default_root_dir", "runB", "--ckpt_path", "last"])
        assert "give --ckpt_path checkpoints/demo-caption/last-v1.ckpt\n" in capsys.readouterr().err
        for name in ("last-v1.ckpt", "last-v2.ckpt"):
            (saved / name).unlink()
        # the instruct stage of experiment runA started from the working folder's caption checkpoint (another run's),
        # although runA's own caption stage had saved its checkpoint under runA, with one line among Lightning's to say so
        instruct = str(REPO / "configs" / "demo" / "instruct.yaml")
        (demo_dir / "runA" / "checkpoints" / "demo-caption").mkdir(parents=True)
        (demo_dir / "runA" / "checkpoints" / "demo-caption" / "last.ckpt").write_bytes(b"")
        with pytest.raises(SystemExit):
            main(["fit", "--config", instruct, "--trainer.default_root_dir", "runA", "--print_config"])
        out, err = capsys.readouterr()
        assert "init_from: runA/checkpoints/demo-caption/last.ckpt" in out
        assert "model.init_from runA/checkpoints/demo-caption/last.ckpt" in err
        # typed on the command line and there in the working folder: that one, the root's said (the root's was taken
        # in its place, a 5-step checkpoint for the 100-step one named)
        with pytest.raises(SystemExit):
            main(["fit", "--config", instruct, "--trainer.default_root_dir", "runA", "--model.init_from",
                  "checkpoints/demo-caption/last.ckpt", "--print_config"])
        out, err = capsys.readouterr()
        assert "init_from: checkpoints/demo-caption/last.ckpt" in out
        assert ("note: model.init_from checkpoints/demo-caption/last.ckpt is read from the working folder (trainer."
                "default_root_dir holds another: runA/checkpoints/demo-caption/last.ckpt)") in err
        (demo_dir / "runA" / "checkpoints" / "x.ckpt").write_bytes(b"")
        with pytest.raises(SystemExit):  # typed, but only the root holds it: the root's, as from a config
            main(["fit", "--config", instruct, "--trainer.default_root_dir", "runA", "--model.init_from=checkpoints/x.ckpt",
                  "--print_config"])
        assert "init_from: runA/checkpoints/x.ckpt" in capsys.readouterr().out
        with pytest.raises(SystemExit):  # a root without one: the working folder's, said
            main(["fit", "--config", instruct, "--trainer.default_root_dir", "runC", "--print_config"])
        out, err = capsys.readouterr()
        assert "init_from: checkpoints/demo-caption/last.ckpt" in out
        assert ("note: model.init_from checkpoints/demo-caption/last.ckpt is read from the working folder: "
                "trainer.default_root_dir runC holds none") in err
    finally:
        (demo_dir / "checkpoints" / "demo-caption" / "last.ckpt").unlink()


def test_a_stage_started_from_a_checkpoint_of_another_lora_rank_is_refused_at_once_with_the_setting_that_fits(
        demo_dir, trained_checkpoint, capsys):
    # the caption stage trained with --model.config.lora_r 4; the next stage's config says 8: refused only after the
    # model and data had loaded (minutes with Phi-2), as tensor shapes, or told to "drop" a setting the user never gave
    instruct = str(REPO / "configs" / "demo" / "instruct.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", instruct, "--model.init_from", str(trained_checkpoint), "--trainer.accelerator", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model.init_from {trained_checkpoint} was trained with other structural settings than "
                          "this run's (config.vision_feature_layer: checkpoint -1, given -2 (--model.config.vision_feature_layer"
                          " -1 gives the checkpoint's); config.lora_r: checkpoint 4, given 8 (--model.config.lora_r 4 gives the "
                          "checkpoint's); config.lora_alpha: checkpoint 8, given 16 (--model.config.lora_alpha 8 gives the "
                          "checkpoint's)): its tensors cannot fit. Give the checkpoint's, after any --config")
    assert "preprocessing" not in err  # before any data was read
    with pytest.raises(SystemExit) as exit_info:  # and validate --ckpt_path with the config that names another rank
        main(["validate", "--config", DEMO_CONFIG, "--ckpt_path", str(trained_checkpoint), "--trainer.accelerator", "cpu"])
    assert exit_info.value.code == 2
    assert ("config.lora_r: checkpoint 4, given 8 (--model.config.lora_r 4 gives the checkpoint's); config.lora_alpha: "
            "checkpoint 8, given 16 (--model.config.lora_alpha 8 gives the checkpoint's)); its tensors cannot fit. Give the "
            "checkpoint's, after any --config") in capsys.readouterr().err


def test_an_export_or_its_weights_file_given_for_a_checkpoint_is_named_as_the_export_it_is(trained_checkpoint, tmp_path):
    # `--ckpt_path exported/demo/multimodal.safetensors` was "not a file torch.save writes (it starts b'...')", and an
    # export's folder given to mmcaption-export got advice about folders in general
    from mmcaption.checkpoint import CheckpointFileError, load_checkpoint_file
    from mmcaption.export import export_checkpoint

    exported = tmp_path / "exported"
    export_checkpoint(trained_checkpoint, exported)
    advice = f"{exported} is a model mmcaption-export wrote, given whole as --model.init_from {exported}"
    weights = sorted(exported.glob("*.safetensors"))
    assert weights  # the export's own weights file (multimodal.safetensors)
    for given in (exported, *weights):
        with pytest.raises(CheckpointFileError) as refused:
            load_checkpoint_file(given)
        assert advice in str(refused.value), given
    with pytest.raises(CheckpointFileError, match="a folder written by mmcaption-export is given as --model.init_from$"):
        load_checkpoint_file(tmp_path)  # any other folder


def test_a_suggested_setting_is_one_the_command_line_reads():
    # the checkpoint's cross_attention_heads None was suggested as "--model.config.cross_attention_heads None", which the
    # parser refuses ("'None' is not a whole number or null")
    from mmcaption.model.config import as_option

    assert as_option("cross_attention_heads", None) == "--model.config.cross_attention_heads null"
    assert as_option("config.lora_target_modules", ("q_proj", "dense")) == """--model.config.lora_target_modules '["q_proj", "dense"]'"""
    assert as_option("lora_r", 4) == "--model.config.lora_r 4"


@pytest.mark.parametrize("script", ["mmcaption", "export", "demo"])
def test_an_argument_the_locale_cannot_read_is_refused_naming_it_and_the_fix(script, tmp_path):
    # under LC_ALL=POSIX with PYTHONUTF8=0 a "café" arrives as bytes Python could not decode: the parser said only
    # 'error: Parser key "data":', its reason (a text that could not be encoded) naming nothing
    env = dict(os.environ, PYTHONUTF8="0", LC_ALL="POSIX", PYTHONPATH=str(REPO))
    argument = ["fit", "--data.init_args.data_dir"] if script == "mmcaption" else ["--root"] if script == "demo" else []
    run = subprocess.run([sys.executable, "-c", f"from mmcaption.scripts import {script}; {script}()", *argument,
                          "caf\xe9".encode()], cwd=tmp_path, env=env, capture_output=True, text=True, errors="replace")
    number = len(argument) + 1
    assert run.returncode == 2 and run.stderr == (
        f"error: argument {number} (caf\\xc3\\xa9) is not text the locale reads (its encoding: ascii): run with a UTF-8 "
        "locale (LANG=C.UTF-8) or PYTHONUTF8=1\n"), run.stderr
    # under a UTF-8 locale such bytes are a file's name in another encoding (a Latin-1 archive's, unzipped): it ended in a
    # traceback, writing the command line into the output folder's lock
    run = subprocess.run([sys.executable, "-c", f"from mmcaption.scripts import {script}; {script}()", *argument,
                          "caf\xe9".encode("latin-1")], cwd=tmp_path, env=dict(env, PYTHONUTF8="1"), capture_output=True,
                         text=True, errors="replace")
    assert run.returncode == 2 and run.stderr == (
        f"error: argument {number} (caf\\xe9) is not text the locale reads (its encoding: utf-8): rename it in UTF-8 (a name "
        "in another encoding, as a Latin-1 archive's unzipped: convmv -f latin1 -t utf8)\n"), run.stderr

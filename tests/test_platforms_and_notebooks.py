"""Users of Colab, Kaggle and Jupyter (GPUs without bfloat16: T4, V100, P100; the Python API in a notebook's kernel), and of
Windows and macOS."""

import math
import os
import signal
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.plugins.precision import MixedPrecision

from mmcaption.cli import main, run_cli
from mmcaption.data import CaptionDataModule
from mmcaption.errors import ConfigError
from mmcaption.model import MultimodalConfig

from .conftest import REPO, make_captioner
from .test_interruptions import fit_config, user_error

# float16 autocast with loss scaling, as Lightning's 16-mixed runs on a GPU (on the CPU it turns 16-mixed into bf16-mixed)
FLOAT16_AUTOCAST = ('{"class_path": "lightning.pytorch.plugins.precision.MixedPrecision", '
                    '"init_args": {"precision": "16-mixed", "device": "cpu"}}')
REFUSED = ("error: trainer.precision 16-mixed computes in float16, and model.config.compute_dtype bfloat16 keeps the "
           "language model in bfloat16: autocast cannot mix the two (the first step failed). Give "
           "--model.config.compute_dtype float16 with it (a GPU without bfloat16: T4, V100), or keep bf16-mixed")


@pytest.mark.slow
def test_float16_autocast_over_a_bfloat16_model_is_refused_at_once_and_the_setting_it_names_trains(
        backbones, coco_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--trainer.precision", "null",
            "--trainer.plugins", FLOAT16_AUTOCAST, "--trainer.max_steps", "3"]
    # the configs' compute_dtype bfloat16 under a T4's 16-mixed: a traceback at the first step ("Unexpected floating
    # ScalarType in at::autocast::prioritize"), after the data was preprocessed; now refused before anything is done
    assert user_error(capsys, main, args) == REFUSED
    assert not (tmp_path / "cache").exists()
    # the setting it names trains in float16: finite losses, the gradients scaled as 16-mixed scales them
    cli = run_cli([*args, "--model.config.compute_dtype", "float16"])
    assert cli.trainer.global_step == 3 and math.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert cli.trainer.precision == "16-mixed" and cli.trainer.precision_plugin.scaler.get_scale() > 1
    assert torch.load(tmp_path / "c" / "last.ckpt", weights_only=True)["global_step"] == 3
    # a precision plugin beside a config's precision: Lightning's "Choose one." was a traceback
    error = user_error(capsys, main, [*args[:-4], "--trainer.precision", "32-true", "--trainer.plugins", FLOAT16_AUTOCAST])
    assert error.startswith("error: trainer.precision and trainer.plugins (a precision plugin sets the precision itself: "
                            "give --trainer.precision null with it): Received both `precision=32-true`"), error


def test_a_scripts_own_trainer_in_float16_autocast_is_refused_before_the_backbones_load(backbones, coco_root, tmp_path):
    module = make_captioner(backbones)  # compute_dtype bfloat16, the default
    data = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                             image_processor=str(backbones[1]), batch_size=4, num_workers=0)
    trainer = Trainer(accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu")], max_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match=r"Give --model.config.compute_dtype float16 with it \(a GPU without bfloat16"):
        trainer.fit(module, datamodule=data)
    assert module.model is None


def test_bfloat16_on_a_gpu_that_emulates_it_is_said_with_the_settings_of_its_own_float16(monkeypatch, capsys):
    from mmcaption.settings_checks import check_trainer_for_model

    capability = (7, 5)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    trainer = SimpleNamespace(accelerator=CUDAAccelerator(), precision="bf16-mixed", is_global_zero=True,
                              strategy=SimpleNamespace(root_device=torch.device("cuda", 0), _start_method=None))

    def said(compute_dtype: str, quantization: str = "nf4") -> str:
        # as the module's setup calls it, a script's Trainer too
        check_trainer_for_model(trainer, MultimodalConfig(quantization=quantization, compute_dtype=compute_dtype).computed_dtype)
        return capsys.readouterr().err

    # a T4 (Colab's, Kaggle's) accepts the configs' bf16-mixed and emulates it, several times slower, without a word
    assert said("bfloat16") == ("note: Tesla T4 (compute capability 7.5) has no bfloat16 arithmetic, which trainer.precision "
                                "bf16-mixed and model.config.compute_dtype bfloat16 compute in: torch emulates it there, "
                                "several times slower. Its own is float16: --trainer.precision 16-mixed "
                                "--model.config.compute_dtype float16\n")
    trainer.precision = "32-true"
    assert "which model.config.compute_dtype bfloat16 compute in" in said("bfloat16")
    assert said("float16") == ""  # float32 around float16 4-bit matmuls: nothing in bfloat16
    trainer.precision = "16-mixed"
    assert said("float16") == ""  # as advised
    assert said("bfloat16", "int8") == ""  # LLM.int8 keeps float32 weights whatever compute_dtype says: not refused either
    capability, trainer.precision = (8, 0), "bf16-mixed"  # an A100's own
    assert said("bfloat16") == ""


@pytest.mark.slow
def test_a_trained_model_is_used_in_float16_on_request_and_bfloat16_on_a_gpu_that_emulates_it_is_said(
        trained_checkpoint, image_folder, tmp_path, monkeypatch, capsys):
    # the API, chat and the app computed in the model's bfloat16 whatever the GPU: on a T4 (Colab's) emulated, several
    # times slower, unsaid and with no way to ask for float16 (training has --model.config.compute_dtype)
    from mmcaption.chat import main as chat_main
    from mmcaption.export import main as export_main
    from mmcaption.inference import Captioner
    from mmcaption.tasks import Tasks

    export_main([str(trained_checkpoint), str(tmp_path / "export")])
    own = Captioner.from_pretrained(tmp_path / "export")
    halved = Captioner.from_pretrained(tmp_path / "export", compute_dtype="float16")
    assert (own.model.config.compute_dtype, halved.model.config.compute_dtype) == ("bfloat16", "float16")
    def dtypes(captioner: Captioner) -> set[torch.dtype]:  # the 4-bit weights' storage and what computes with them
        return {p.dtype for n, p in captioner.model.language_model.named_parameters()} - {torch.float32}

    assert (dtypes(own), dtypes(halved)) == ({torch.bfloat16}, {torch.float16})
    image = str(image_folder / "img0.png")
    assert isinstance(halved.caption(image), str) and isinstance(halved.answer(image, "What colour is it?"), str)
    with pytest.raises(ConfigError, match=r"compute_dtype is one of bfloat16, float16, float32 \(or None for the folder's "
                                          r"own\), not 'fp16'"):
        Captioner.from_pretrained(tmp_path / "export", compute_dtype="fp16")
    with pytest.raises(ConfigError, match=r"^compute_dtype 'float16' does nothing for a model in int8, which loads in "
                                          r"float32 \(LLM.int8 has no compute dtype\)"):
        Captioner.from_pretrained(tmp_path / "export", quantization="int8", compute_dtype="float16")
    # float32, what int8 computes in, is no contradiction
    assert Captioner.from_pretrained(tmp_path / "export", quantization="int8", compute_dtype="float32").model.config.quantization == "int8"
    export_main([str(trained_checkpoint), str(tmp_path / "merged"), "--merge"])  # its own language model, unquantized
    assert dtypes(Captioner.from_pretrained(tmp_path / "merged", compute_dtype="float16")) == {torch.float16}
    capsys.readouterr()
    loaded = []
    load = Captioner.from_pretrained.__func__
    monkeypatch.setattr(Captioner, "from_pretrained", classmethod(lambda cls, *a, **k: loaded.append(load(cls, *a, **k)) or
                                                                  loaded[-1]))
    for source in (["--checkpoint", str(trained_checkpoint)], ["--model", str(tmp_path / "export")]):
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO("What colour is it?\n"))
        chat_main([*source, "--image", image, "--max_new_tokens", "3", "--min_new_tokens", "3", "--compute_dtype", "float16"])
        assert capsys.readouterr().out.strip() and dtypes(loaded[-1]) == {torch.float16}, source
    assert len(loaded) == 2
    # on a T4: said where the model loads (where it computes is the model's device)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(Tasks, "device", property(lambda self: torch.device("cuda", 0)))
    with pytest.warns(UserWarning, match=r"^Tesla T4 \(compute capability 7\.5\) has no bfloat16 arithmetic, which this "
                                         r"model computes in: torch emulates it there, several times slower\. Its own is "
                                         r"float16: compute_dtype='float16' \(mmcaption chat, mmcaption-app: "
                                         r"--compute_dtype float16\)$"):
        Captioner.from_pretrained(tmp_path / "export")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Captioner.from_pretrained(tmp_path / "export", compute_dtype="float16")


def test_the_cli_called_in_a_notebook_without_arguments_says_to_give_them(monkeypatch, capsys):
    # a Jupyter kernel's command line: "-f kernel.json" was read as the subcommand ("invalid choice: '/root/.local/...'")
    monkeypatch.setattr(sys, "argv", ["/usr/local/lib/python3.11/dist-packages/ipykernel_launcher.py", "-f",
                                      "/root/.local/share/jupyter/runtime/kernel-1234.json"])
    from mmcaption.terminal import kernel_command_line

    said = 'in a notebook, give the command\'s arguments: run_cli(["fit", "--config", ...]), or main([...])'
    with pytest.raises(ConfigError) as refused:
        run_cli()
    assert str(refused.value) == said
    assert user_error(capsys, main, None) == f"error: {said}"
    monkeypatch.setattr(sys, "argv", [sys.argv[0], "fit", "--config", "my.yaml"])  # a cell's `sys.argv[1:] = [...]`
    assert not kernel_command_line()
    monkeypatch.setattr(sys, "argv", ["/usr/local/lib/python3.11/dist-packages/colab_kernel_launcher.py", "-f",
                                      "/root/.local/share/jupyter/runtime/kernel-abcd.json"])  # Colab's
    assert user_error(capsys, main, None) == f"error: {said}"


def test_ctrl_c_before_a_scripts_training_leaves_the_kernel_able_to_interrupt_again(backbones, coco_root, tmp_path):
    from mmcaption.callbacks import ResumableStop

    class Preprocessing(CaptionDataModule):
        def prepare_data(self) -> None:
            raise KeyboardInterrupt  # the notebook's interrupt button while the splits are preprocessed

    data = Preprocessing(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                         image_processor=str(backbones[1]), num_workers=0)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      callbacks=[ResumableStop()])
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's exit(1) for it
            trainer.fit(make_captioner(backbones), datamodule=data)
        # Lightning ignores Ctrl-C through its shutdown and left it so: the kernel's interrupt button did nothing any more
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_error_of_a_second_process_is_said_on_windows_which_has_no_user_ids(monkeypatch, capsys):
    from mmcaption.terminal import said_once

    monkeypatch.delattr("os.getuid", raising=False)  # as on Windows: the real error was an AttributeError's traceback
    monkeypatch.setenv("MASTER_PORT", str(29000 + os.getpid() % 1000))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    said_once("error: demo_data/coco/annotations/captions_train2017.json: not found")  # rank 0 says nothing within 3 s
    assert capsys.readouterr().err.endswith("error: demo_data/coco/annotations/captions_train2017.json: not found\n")


def test_a_windows_path_in_double_quotes_of_a_config_is_refused_with_how_to_write_it(tmp_path, monkeypatch, capsys):
    from mmcaption.config_files import check_config_file

    monkeypatch.chdir(tmp_path)
    hint = "in double quotes a backslash begins an escape, \\t a tab: write a Windows path in single quotes, or with /"
    tabbed = tmp_path / "runs.yaml"  # YAML reads "runs\test" as runs, a tab, est: a run trained and saved into that folder
    tabbed.write_text('trainer:\n  default_root_dir: "runs\\test"\n', encoding="utf-8")
    said = user_error(capsys, main, ["fit", "--config", str(REPO / "configs/demo/caption.yaml"), "--config", str(tabbed)])
    assert said == (f"error: config {tabbed}, line 2: trainer.default_root_dir: 'runs\\test' holds a control character that a "
                    f"backslash in double quotes made ({hint})")
    assert not (tmp_path / "runs\test").exists()
    unknown = tmp_path / "data.yaml"  # "demo_data\coco": YAML's own refusal, "unknown escape character 'c'", alone
    unknown.write_text('data:\n  init_args:\n    data_dir: "demo_data\\coco"\n', encoding="utf-8")
    with pytest.raises(SystemExit):  # the parser's refusal, with its tip after it
        main(["fit", "--config", str(REPO / "configs/demo/caption.yaml"), "--config", str(unknown)])
    said = capsys.readouterr().err.splitlines()
    assert f"error: {unknown}, line 3, column 26: not valid YAML: found unknown escape character 'c' ({hint})" in said
    prompt = tmp_path / "prompt.yaml"  # a prompt's newline in double quotes is meant
    prompt.write_text('data:\n  init_args:\n    system_prompt: "Answer briefly.\\nBe exact."\n', encoding="utf-8")
    check_config_file(str(prompt), prompt)


def test_the_configs_eight_workers_on_a_two_core_machine_load_with_two_said_once(backbones, coco_root, tmp_path, monkeypatch,
                                                                               capsys):
    # configs/caption.yaml's num_workers 8 (a GPU node's) on Colab's 2 cores: 8 worker processes per loader, training's
    # and validation's kept alive side by side, behind torch's warning that the loader may freeze
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    data = CaptionDataModule(data_dir=str(coco_root), tokenizer=str(backbones[0]), image_processor=str(backbones[1]),
                             num_workers=8, batch_size=4, cache_dir=str(tmp_path / "cache"))  # (the shared set left as it is)
    data.prepare_data()
    data.setup("fit")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="This DataLoader will create")  # "... 8 worker processes in total"
        loaders = [data.train_dataloader(), data.val_dataloader()]
        assert [loader.num_workers for loader in loaders] == [2, 2]
        next(iter(loaders[0]))
    said = capsys.readouterr().err
    assert said.count("note: data.num_workers is 8, and this process may use 2 cores: 2 worker processes load the data") == 1
    fewer = CaptionDataModule(data_dir=str(coco_root), tokenizer=str(backbones[0]), image_processor=str(backbones[1]),
                              num_workers=1)
    assert fewer.num_workers == 1 and "num_workers" not in capsys.readouterr().err
    # the data modules' own default is "up to 4": capped without a word (a predict of a few photos said it each time);
    # a 4 given is said as an 8 is
    default = CaptionDataModule(data_dir=str(coco_root), tokenizer=str(backbones[0]), image_processor=str(backbones[1]))
    assert default.num_workers == 2 and "num_workers" not in capsys.readouterr().err
    four = CaptionDataModule(data_dir=str(coco_root), tokenizer=str(backbones[0]), image_processor=str(backbones[1]), num_workers=4)
    assert four.num_workers == 2 and "note: data.num_workers is 4" in capsys.readouterr().err

"""Tiny backbones and synthetic data, generated once per test session; nothing is downloaded."""

from __future__ import annotations

import io
import logging
import os
import random
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import fields
from pathlib import Path
from unittest.mock import patch

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker takes its share of the cores (its subprocesses too, through the
# environment), rather than every worker starting a thread per core: OpenMP threads that outnumber the
# cores spin against each other, and two such processes on two cores ran six times slower, not two.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from mmcaption.demo.synthetic import demo_corpus, write_coco_split  # noqa: E402
from mmcaption.demo.tiny import save_tiny_backbones  # noqa: E402
from mmcaption.model import MultimodalCausalLM, MultimodalConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def run_in_process(args: list[str], cwd: Path) -> tuple[int, str]:
    """``mmcaption *args`` run to its end in this process, as the pipeline runs its stages (sequential runs in one process
    are supported), in ``cwd``: its exit status and console text. For the runs no signal interrupts: the ~13 s of imports
    a process takes are taken once. Its text is what the process itself prints, Lightning's lines (its logger holds its
    own stream) and warnings (pytest would record them); not its loader workers' nor C++'s, written to the descriptors.
    The environment is as before it (Lightning leaves its seed there). A run that hangs is a test that hangs: pytest's
    ``faulthandler_timeout`` (setup.cfg) prints every thread's stack, as a subprocess's timeout said where it stood."""
    from mmcaption.cli import main

    said = io.StringIO()
    lightning = logging.getLogger("lightning.pytorch")
    handler = logging.StreamHandler(said)

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        said.write(warnings.formatwarning(message, category, filename, lineno, line))

    status, previous, environment = 0, Path.cwd(), dict(os.environ)
    try:
        lightning.addHandler(handler)
        os.chdir(cwd)
        os.environ.pop("MMCAPTION_TRACEBACK", None)  # a user error exits 2, as it does for a user
        with redirect_stdout(said), redirect_stderr(said), patch.object(warnings, "showwarning", show):
            main(args)
    except SystemExit as stopped:
        status = stopped.code
    finally:
        os.chdir(previous)
        os.environ.clear()
        os.environ.update(environment)
        lightning.removeHandler(handler)
    return status or 0, said.getvalue()


def make_captioner(backbones, **settings):
    """A LightningModule on the tiny backbones: model settings (``lora_r``, ...) go into its
    ``MultimodalConfig`` (2 injected layers, LoRA r=4 unless given), the rest to the module."""
    from mmcaption.module import MultimodalCaptioner

    language_dir, vision_dir = backbones
    names = {f.name for f in fields(MultimodalConfig)}
    config = dict(language_model=str(language_dir), vision_model=str(vision_dir), cross_attention_layers=[-2, -1],
                  lora_r=4, lora_alpha=8)
    config.update({k: v for k, v in settings.items() if k in names})
    return MultimodalCaptioner(config=MultimodalConfig(**config), **{k: v for k, v in settings.items() if k not in names})


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> tuple[Path, Path]:
    """(language model folder, vision model folder): a tiny Phi with tokenizer, a tiny CLIP with processor."""
    root = tmp_path_factory.mktemp("backbones")
    return save_tiny_backbones(root, demo_corpus(seed=0, num_scenes=300), seed=0, lm_hidden_size=64)


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory) -> Path:
    """A small synthetic set in the official COCO layout: 12 train and 4 val images, 5 captions each."""
    root = tmp_path_factory.mktemp("coco")
    write_coco_split(root, "train2017", 12, seed=0)
    write_coco_split(root, "val2017", 4, seed=0, first_image_id=100)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three small scene images (PNG) in ``tmp_path/images``."""
    from mmcaption.demo.synthetic import Scene, draw_scene

    folder = tmp_path / "images"
    folder.mkdir()
    rng = random.Random(0)
    for i, scene in enumerate([Scene("red", "circle", "left"), Scene("blue", "square", "right", count=2), Scene("green", "triangle", "top")]):
        draw_scene(scene, 64, rng).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def model_config(backbones) -> MultimodalConfig:
    language_dir, vision_dir = backbones
    return MultimodalConfig(
        language_model=str(language_dir),
        vision_model=str(vision_dir),
        cross_attention_layers=[-2, -1],
        lora_r=4,
        lora_alpha=8,
    )


@pytest.fixture
def model(model_config) -> MultimodalCausalLM:
    torch.manual_seed(0)
    return MultimodalCausalLM.from_config(model_config).eval()


@pytest.fixture(scope="session")
def trained_checkpoint(backbones, coco_root, tmp_path_factory) -> Path:
    """A caption-stage checkpoint after a few steps on the synthetic set (gates and LoRA moved)."""
    from lightning.pytorch import Trainer

    from mmcaption.data import CaptionDataModule

    tmp = tmp_path_factory.mktemp("trained")
    language_dir, vision_dir = backbones
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp / "cache"), tokenizer=str(language_dir),
                           image_processor=str(vision_dir), batch_size=4, num_workers=0)
    torch.manual_seed(0)  # before the model's LoRA and gates are drawn: the same checkpoint whichever tests ran first
    module = make_captioner(backbones, learning_rate=3e-2, generation={"max_new_tokens": 8})
    trainer = Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, default_root_dir=tmp)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp / "caption.ckpt")
    return tmp / "caption.ckpt"


def pytest_collection_modifyitems(config, items):
    """The end-to-end runs first: on several processes the long ones then run beside the short ones
    instead of alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

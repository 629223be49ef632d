"""The caption -> instruct hand-off: initialisation from a checkpoint, not resumption."""

import os
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from mmcaption.checkpoint import CheckpointMismatchError
from mmcaption.data import CaptionDataModule, InstructDataModule
from mmcaption.demo.synthetic import write_llava_split
from mmcaption.module import MultimodalCaptioner

from .conftest import make_captioner


def make_module(backbones, **kwargs) -> MultimodalCaptioner:
    return make_captioner(backbones, **{**dict(learning_rate=1e-2, warmup_ratio=0.5), **kwargs})


def trainer(tmp_path, steps: int) -> Trainer:
    return Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=1, default_root_dir=tmp_path)


@pytest.fixture(scope="module")
def caption_checkpoint(backbones, coco_root, tmp_path_factory) -> Path:
    """The caption stage after 3 steps."""
    tmp = tmp_path_factory.mktemp("caption")
    language_dir, vision_dir = backbones
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp / "cache"), tokenizer=str(language_dir),
                           image_processor=str(vision_dir), batch_size=4, num_workers=0)
    t = trainer(tmp, 3)
    t.fit(make_module(backbones), datamodule=dm)
    t.save_checkpoint(tmp / "caption.ckpt")
    return tmp / "caption.ckpt"


@pytest.fixture
def instruct_data(backbones, coco_root, tmp_path) -> InstructDataModule:
    image_root = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    train = write_llava_split(tmp_path / "llava", image_root, "train2017", seed=0)
    val = write_llava_split(tmp_path / "llava", image_root, "val2017", seed=0)
    language_dir, vision_dir = backbones
    return InstructDataModule(train_file=str(train), val_file=str(val), image_root=str(image_root),
                              tokenizer=str(language_dir), image_processor=str(vision_dir), batch_size=4,
                              num_workers=0, max_length=128)


def test_instruct_stage_starts_from_exactly_the_caption_weights_with_a_fresh_optimizer(
    backbones, caption_checkpoint, instruct_data, tmp_path
):
    source = torch.load(caption_checkpoint, weights_only=True)
    module = make_module(backbones, init_from=str(caption_checkpoint))
    module.configure_model()
    module.initialise_from_checkpoint()
    state = module.state_dict()
    assert set(source["state_dict"]) == module.trainable_state_keys()
    for key, value in source["state_dict"].items():
        assert torch.equal(state[key], value), key
    # and outside a Trainer on first use, unasked: a script's torch.no_grad() captions came from an untrained model
    # (its gates at 0); loaded into the parameters an optimizer made after configure_model holds
    from PIL import Image

    from mmcaption.model.backbones import load_image_processor

    pixels = load_image_processor(str(backbones[1]))(images=[Image.new("RGB", (32, 32))], return_tensors="pt")["pixel_values"]
    for first_use in ("tasks", "forward"):
        used = make_module(backbones, init_from=str(caption_checkpoint))
        used.configure_model()
        held = [p for p in used.parameters() if p.requires_grad]
        if first_use == "tasks":
            assert used.tasks is not None
        else:
            ids = used.tokenizer("a photo of", return_tensors="pt")["input_ids"]
            used({"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels})
        state = used.state_dict()
        assert used.weights_loaded and all(torch.equal(state[key], value) for key, value in source["state_dict"].items())
        assert [p for p in used.parameters() if p.requires_grad] == held  # the same tensors, not new ones

    t = trainer(tmp_path, 2)
    t.fit(make_module(backbones, init_from=str(caption_checkpoint)), datamodule=instruct_data)
    t.save_checkpoint(tmp_path / "instruct.ckpt")
    saved = torch.load(tmp_path / "instruct.ckpt", weights_only=True)
    assert saved["global_step"] == 2  # the caption stage's 3 steps are not carried over
    optimizer_steps = {int(s["step"]) for s in saved["optimizer_states"][0]["state"].values()}
    assert optimizer_steps == {2}  # Adam moments started from zero here, not from the caption stage
    assert saved["lr_schedulers"][0]["last_epoch"] == 2
    assert saved["init_from"]["global_step"] == 3
    assert saved["init_from"]["path"] == str(caption_checkpoint.resolve())
    assert len(saved["init_from"]["sha256"]) == 64


def test_starting_from_a_stage_that_stopped_early_says_so(backbones, caption_checkpoint, tmp_path, monkeypatch):
    source = torch.load(caption_checkpoint, weights_only=True)
    assert (source["global_step"], source["planned_steps"]) == (3, 3)  # finished: started from without a word
    said: list[str] = []
    monkeypatch.setattr("mmcaption.module.rank_zero_info", said.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_module(backbones, init_from=str(caption_checkpoint)).initialise_from_checkpoint()
    # outside training (predict from it) the line says nothing of an optimizer
    assert said == [f"Initialised from {caption_checkpoint} (its step 3)."]
    # a best checkpoint of a run that went on (step 3 of 80): no warning, the run was not stopped
    best = tmp_path / "best.ckpt"
    torch.save({**source, "planned_steps": 80}, best)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_module(backbones, init_from=str(best)).initialise_from_checkpoint()
    # a caption stage stopped by Ctrl-C (or a preemption) at step 3 of 80: the next stage went on from it without a word
    stopped = tmp_path / "stopped.ckpt"
    torch.save({**source, "planned_steps": 80, "stopped_by": "SIGINT"}, stopped)
    with pytest.warns(UserWarning, match=r"stopped\.ckpt was saved as its run was stopped by SIGINT, at step 3 of 80: these "
                                         r"weights are of a stage that did not finish"):
        make_module(backbones, init_from=str(stopped)).initialise_from_checkpoint()
    # the same step 3 of 80 in a folder a fit is still writing (a labmate's stage 1, the README's recipe run too early):
    # started from without a word
    import subprocess
    import sys

    from mmcaption.checkpoint import load_checkpoint_file

    folder = tmp_path / "checkpoints" / "demo-caption"
    folder.mkdir(parents=True)
    torch.save({**source, "planned_steps": 80}, folder / "last.ckpt")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmcaption.folders import FolderLock; "
                               f"FolderLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.warns(UserWarning, match=r"last\.ckpt is at step 3 of 80, and the fit writing it is still training \(\d+ on .*: "
                                             r"-c\): these weights are of a stage not finished yet"):
            make_module(backbones, init_from=str(folder / "last.ckpt")).initialise_from_checkpoint()
        # a best checkpoint that fit replaced between --ckpt_path best naming it and its load: "not found" after "best: ..."
        with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*epoch=0-step=2\.ckpt \(a fit is writing that folder "
                                                    r"now, \d+ on .*: one it has not saved yet, or a best one it has replaced "
                                                    r"since it was named; its checkpoints now: last\.ckpt\)$"):
            load_checkpoint_file(folder / "epoch=0-step=2.ckpt")
    finally:
        holder.kill()
        holder.wait()
    with warnings.catch_warnings():  # once that fit has ended, as any best checkpoint of a run that went on
        warnings.simplefilter("error")
        make_module(backbones, init_from=str(folder / "last.ckpt")).initialise_from_checkpoint()
    # the caption stage run again into the same folder: its last checkpoint is last-v1.ckpt, and the instruct stage's
    # init_from (last.ckpt, as the configs name it) went on from the earlier run's weights with no more than "its step"
    later = folder / "last-v1.ckpt"
    torch.save({**source, "saved_at": time.time()}, later)  # each run records when it saved (copies keep it)
    os.utime(folder / "last.ckpt", (time.time() - 60, time.time() - 60))
    with pytest.warns(UserWarning, match=r"init_from .*last\.ckpt \(step 3\) is not the newest of its name: last-v1\.ckpt, of "
                                         rf"step 3 of 3, was saved since .*; --model.init_from {re.escape(str(later))} if that"):
        make_module(backbones, init_from=str(folder / "last.ckpt")).initialise_from_checkpoint()
    os.utime(later, (time.time() - 120, time.time() - 120))  # ... and a third run's last-v2.ckpt after last-v1.ckpt
    torch.save({**source, "saved_at": time.time() + 1}, folder / "last-v2.ckpt")
    with pytest.warns(UserWarning, match=r"last-v1\.ckpt \(step 3\) is not the newest of its name: last-v2\.ckpt"):
        make_module(backbones, init_from=str(later)).initialise_from_checkpoint()
    # stage 1 trained with another vision tower of the same shapes (ViT-B/32's stage 1 for a ViT-B/16 stage 2): it loaded
    # without a word, its projection and cross-attention fitted to the other tower's features
    other = {**source, "model_config": {**source["model_config"], "vision_model": "elsewhere/clip-vit-base-patch16"},
             "saved_at": time.time() + 2}  # saved after last-v1.ckpt
    other.pop("backbone_weights", None)  # as a checkpoint from before the weights' fingerprints were kept: by name
    torch.save(other, folder / "last-v2.ckpt")
    with pytest.warns(UserWarning, match=r"was trained with vision_model elsewhere/clip-vit-base-patch16, and this run's is "
                                         rf"{re.escape(str(backbones[1]))}: its weights .* were fitted to that one's features"):
        make_module(backbones, init_from=str(folder / "last-v2.ckpt")).initialise_from_checkpoint()
    # with the fingerprint of that tower's weights kept: said by the weights, with the tower it was trained with
    torch.save({**other, "backbone_weights": {**source["backbone_weights"], "vision_model": "0123456789abcdef"}}, folder / "last-v2.ckpt")
    with pytest.warns(UserWarning, match=r"was fitted to other weights than those of the vision tower "
                                         rf"{re.escape(str(backbones[1]))} \(it was trained with elsewhere/clip-vit-base-patch16\)"):
        make_module(backbones, init_from=str(folder / "last-v2.ckpt")).initialise_from_checkpoint()
    moved = {**source, "model_config": {**source["model_config"], "vision_model": f"/old/place/{Path(backbones[1]).name}"},
             "saved_at": time.time() + 3}
    torch.save(moved, folder / "last-v2.ckpt")
    with warnings.catch_warnings():  # the same folder's name elsewhere: a project moved, not another model
        warnings.simplefilter("error")
        make_module(backbones, init_from=str(folder / "last-v2.ckpt")).initialise_from_checkpoint()
    # stage 1 shared as an export (mmcaption-export's folder) of another tower: the same, said
    import json

    from mmcaption.export import main as export_main

    export_main([str(caption_checkpoint), str(tmp_path / "export")])
    manifest = json.loads((tmp_path / "export" / "mmcaption.json").read_text())
    manifest["model"]["vision_model"] = "elsewhere/clip-vit-base-patch16"
    del manifest["backbone_weights"]  # as an export from before the weights' fingerprints were kept: said by name
    (tmp_path / "export" / "mmcaption.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"init_from .*export was trained with vision_model elsewhere/clip-vit-base-patch16"):
        make_module(backbones, init_from=str(tmp_path / "export")).initialise_from_checkpoint()


def test_resuming_the_instruct_stage_does_not_reinitialise(backbones, caption_checkpoint, instruct_data, tmp_path):
    t = trainer(tmp_path, 2)
    t.fit(make_module(backbones, init_from=str(caption_checkpoint)), datamodule=instruct_data)
    t.save_checkpoint(tmp_path / "instruct.ckpt")
    after_two = torch.load(tmp_path / "instruct.ckpt", weights_only=True)["state_dict"]

    resumed = make_module(backbones, init_from=str(caption_checkpoint))
    t = trainer(tmp_path, 2)  # already at step 2: restores and stops
    t.fit(resumed, datamodule=instruct_data, ckpt_path=tmp_path / "instruct.ckpt")
    for key, value in after_two.items():
        assert torch.equal(resumed.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # the file named: in a sweep's root, init_from's last.ckpt is the oldest run's, and which file was refused went unsaid
        ({"lora_r": 8, "lora_alpha": 16}, r"^init_from .*\.ckpt does not match the model .*lora_r: checkpoint 4, model 8.*shape "
                                          r"mismatch"),
        ({"cross_attention_layers": [-1]}, r"cross_attention_layers: checkpoint \[2, 3\], model \[3\].*unexpected key"),
        ({"lora_alpha": 32}, r"lora_alpha: checkpoint 8, model 32"),
    ],
)
def test_mismatched_checkpoint_is_refused_saying_what_differs(backbones, caption_checkpoint, change, message):
    module = make_module(backbones, init_from=str(caption_checkpoint), **change)
    with pytest.raises(CheckpointMismatchError, match=message):
        module.initialise_from_checkpoint()


def test_the_same_settings_spelled_as_a_tuple_in_python_are_not_a_mismatch(backbones, caption_checkpoint):
    # the caption stage saved a list (as YAML gives one); a notebook writes the same modules as a tuple
    module = make_module(backbones, init_from=str(caption_checkpoint), lora_target_modules=("q_proj", "k_proj", "v_proj", "dense"))
    module.initialise_from_checkpoint()


def test_missing_init_checkpoint_is_named(backbones, tmp_path):
    module = make_module(backbones, init_from=str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match=r"init_from checkpoint not found: .*nope\.ckpt"):
        module.initialise_from_checkpoint()


def test_a_run_resumed_after_its_project_moved_keeps_one_last_and_one_best_checkpoint(backbones, coco_root, tmp_path):
    # the checkpoint callback's state names its files by absolute path: after `mv project elsewhere` (or a container
    # mounting it at another path) Lightning forgot them, wrote last-v1.ckpt beside last.ckpt and kept the old best
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(project: Path, steps: int, ckpt_path: Path | None = None) -> ModelCheckpoint:
        dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                               image_processor=str(backbones[1]), batch_size=4, num_workers=0, val_caption_images=0)
        saver = ModelCheckpoint(dirpath=project / "checkpoints", monitor="val/loss", save_top_k=1, save_last=True)
        t = Trainer(accelerator="cpu", max_steps=steps, logger=False, callbacks=[saver], enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=1)
        t.fit(make_captioner(backbones, learning_rate=1e-2), datamodule=dm, ckpt_path=ckpt_path)
        return saver

    fit(tmp_path / "project", 1)
    (tmp_path / "project").rename(tmp_path / "moved")
    folder = tmp_path / "moved" / "checkpoints"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saver = fit(tmp_path / "moved", 3, ckpt_path=folder / "last.ckpt")
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    names = sorted(p.name for p in folder.iterdir())
    assert "last-v1.ckpt" not in names and len(names) == 2 and "last.ckpt" in names, names  # one best, one last
    assert Path(saver.best_model_path).parent == folder and saver.best_model_path == str(folder / names[0])
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_run_resumed_from_another_runs_folder_says_where_it_saves_and_how_to_go_on_there(backbones, coco_root, tmp_path,
                                                                                           capsys):
    # --ckpt_path runs/b/checkpoints/demo/last.ckpt without that run's --trainer.default_root_dir runs/b: the resumed run
    # saved into the working folder's checkpoints, beside another run's, and only Lightning's "The dirpath has changed"
    # (naming its own source file) said so
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(root: Path, steps: int, ckpt_path: Path | None = None) -> None:
        dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                               image_processor=str(backbones[1]), batch_size=4, num_workers=0, val_caption_images=0)
        saver = ModelCheckpoint(dirpath=root / "checkpoints" / "demo", save_last=True)
        Trainer(accelerator="cpu", max_steps=steps, logger=False, callbacks=[saver], enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                default_root_dir=str(root)).fit(make_captioner(backbones), datamodule=dm, ckpt_path=ckpt_path)

    fit(tmp_path / "runs" / "b", 1)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The dirpath has changed from")  # (the CLI's filter)
        fit(tmp_path / "here", 2, ckpt_path=tmp_path / "runs" / "b" / "checkpoints" / "demo" / "last.ckpt")
    said = capsys.readouterr().err
    assert (f"note: the checkpoint resumed from saved its run's checkpoints in {tmp_path / 'runs' / 'b' / 'checkpoints' / 'demo'}; "
            f"this run saves its own in {tmp_path / 'here' / 'checkpoints' / 'demo'}, with its curves under ") in said
    assert f"to go on in that run's folders, give the same --trainer.default_root_dir it had ({tmp_path / 'runs' / 'b'})" in said
    # the project renamed since (runs/b -> runs/c), its checkpoint copied aside: that root is not advised, it is not there
    (tmp_path / "runs" / "b").rename(tmp_path / "runs" / "c")
    copy = tmp_path / "copy.ckpt"
    shutil.copyfile(tmp_path / "runs" / "c" / "checkpoints" / "demo" / "last.ckpt", copy)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
        fit(tmp_path / "there", 3, ckpt_path=copy)
    said = capsys.readouterr().err
    assert (f"saved its run's checkpoints in {tmp_path / 'runs' / 'b' / 'checkpoints' / 'demo'} (not there now: moved?); this "
            f"run saves its own in {tmp_path / 'there' / 'checkpoints' / 'demo'}") in said and "default_root_dir" not in said


def test_a_stage_two_checkpoint_loads_in_a_script_after_its_init_from_is_gone(backbones, caption_checkpoint, instruct_data,
                                                                              tmp_path):
    # load_from_checkpoint builds the model outside a Trainer: init_from (saved as an absolute path) must not be read
    # there - the checkpoint holds every trained tensor, and on another machine the stage-1 file is not there
    import shutil

    from mmcaption.module import MultimodalCaptioner

    stage1 = tmp_path / "stage1.ckpt"
    shutil.copy(caption_checkpoint, stage1)
    t = trainer(tmp_path, 1)
    t.fit(make_module(backbones, init_from=str(stage1)), datamodule=instruct_data)
    t.save_checkpoint(tmp_path / "stage2.ckpt")
    stage1.unlink()
    loaded = MultimodalCaptioner.load_from_checkpoint(tmp_path / "stage2.ckpt")
    assert loaded.tasks is not None and loaded.weights_loaded
    saved = torch.load(tmp_path / "stage2.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in saved.items())

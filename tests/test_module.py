import csv
import os

import pytest
import torch
from lightning.pytorch import Trainer

from mmcaption.checkpoint import CheckpointMismatchError
from mmcaption.data import CaptionDataModule
from mmcaption.module import MultimodalCaptioner

from .conftest import make_captioner


def make_module(backbones, **kwargs) -> MultimodalCaptioner:
    return make_captioner(backbones, **{**dict(learning_rate=1e-2), **kwargs})


@pytest.fixture
def trained(backbones, coco_root, tmp_path):
    """A module after 3 optimizer steps on the synthetic set, its data module and its checkpoint."""
    language_dir, vision_dir = backbones
    dm = CaptionDataModule(
        data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
        image_processor=str(vision_dir), batch_size=4, num_workers=0,
    )
    module = make_module(backbones)
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=1, default_root_dir=tmp_path)
    torch.manual_seed(0)
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return module, dm, path


def test_checkpoint_holds_only_trainable_tensors(trained):
    module, _, path = trained
    checkpoint = torch.load(path, weights_only=True)
    saved = set(checkpoint["state_dict"])
    assert saved == module.trainable_state_keys()
    assert not any("base_layer" in key or "vision_model" in key or "embed_tokens" in key for key in saved)
    assert checkpoint["optimizer_states"]  # resumable
    # the 4-bit base is not in the file: a handful of small tensors only
    assert sum(t.numel() for t in checkpoint["state_dict"].values()) == sum(
        p.numel() for p in module.model.parameters() if p.requires_grad
    )


def test_checkpoint_reloads_exactly(trained):
    module, dm, path = trained
    assert module.model.gate_values()[2]["attn"] != 0.0  # training moved the gates
    restored = MultimodalCaptioner.load_from_checkpoint(path)
    for key, value in module.state_dict().items():
        if key in module.trainable_state_keys():
            assert torch.equal(restored.state_dict()[key], value), key
    batch = next(iter(dm.val_dataloader()))
    module.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(module(batch), restored(batch))


def test_checkpoint_with_unexpected_key_is_refused(trained, tmp_path):
    _, _, path = trained
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["model.language_model.base_model.model.lm_head.weight"] = torch.zeros(3)
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected key.*lm_head"):
        MultimodalCaptioner.load_from_checkpoint(tampered)


def test_checkpoint_of_another_lora_rank_is_refused(trained, backbones):
    _, _, path = trained
    with pytest.raises(CheckpointMismatchError, match=r"lora_r: checkpoint 4, model 8.*shape mismatch.*lora_A.*\(4, 64\) vs model \(8, 64\)"):
        config = torch.load(path, weights_only=True)["hyper_parameters"]["config"]
        MultimodalCaptioner.load_from_checkpoint(path, config={**config, "lora_r": 8, "lora_alpha": 16})


def test_training_reduces_the_loss_on_a_repeated_batch(backbones, coco_root, tmp_path):
    language_dir, vision_dir = backbones
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                           image_processor=str(vision_dir), batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = make_module(backbones)
    module.configure_model()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        loss_sum, tokens = module.token_losses(batch)
        loss = loss_sum / tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # the tiny random LM caps how low it can go; half a nat in 20 steps shows gradients flow end to end
    assert losses[-1] < losses[0] - 0.5


def three_steps(tmp_path) -> Trainer:
    """A trainer of three steps, nothing saved or validated: the non-finite loss tests'."""
    return Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_non_finite_loss_stops_naming_the_step_or_is_skipped(backbones, coco_root, tmp_path, monkeypatch, policy):
    language_dir, vision_dir = backbones
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                           image_processor=str(vision_dir), batch_size=4, num_workers=0)
    module = make_module(backbones, on_nonfinite_loss=policy)
    original = MultimodalCaptioner.token_losses

    def poisoned(self, batch):
        loss_sum, tokens = original(self, batch)
        return (loss_sum * float("nan"), tokens) if self.global_step == 1 and self.training else (loss_sum, tokens)

    monkeypatch.setattr(MultimodalCaptioner, "token_losses", poisoned)
    trainer = three_steps(tmp_path)
    if policy == "error":
        with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at step 1, epoch 0, batch 1"):
            trainer.fit(module, datamodule=dm)
    else:
        with pytest.warns(UserWarning, match="skipping the batch at step 1"):
            trainer.fit(module, datamodule=dm)
        assert module.skipped_batches == 1
        assert all(torch.isfinite(p).all() for p in module.parameters() if p.requires_grad)


def test_a_diverged_run_stops_even_when_non_finite_batches_are_skipped(backbones, coco_root, tmp_path, monkeypatch):
    # a learning rate far too high: once an update made the weights NaN, "skip" skipped every batch after it and the run
    # ended "done" (exit 0), its last.ckpt all NaN; and "error" advised skipping
    language_dir, vision_dir = backbones
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                           image_processor=str(vision_dir), batch_size=4, num_workers=0)
    module = make_module(backbones, on_nonfinite_loss="skip")
    original = MultimodalCaptioner.token_losses

    def diverged(self, batch):
        if self.global_step == 1 and self.training:  # as an update of step 0 left them
            with torch.no_grad():
                next(p for p in self.parameters() if p.requires_grad).fill_(float("nan"))
        loss_sum, tokens = original(self, batch)
        return (loss_sum * float("nan"), tokens) if self.global_step == 1 and self.training else (loss_sum, tokens)

    monkeypatch.setattr(MultimodalCaptioner, "token_losses", diverged)
    trainer = three_steps(tmp_path)
    with pytest.raises(FloatingPointError, match=r"at step 1, epoch 0, batch 1: the trained weights themselves are no longer "
                                                 r"finite \(.*\), so skipping batches cannot help.* Lower model.learning_rate"):
        trainer.fit(module, datamodule=dm)
    assert module.skipped_batches == 0
    # NaN before any update of this run: they came so from the checkpoint it started from (a diverged stage's last.ckpt)
    module = make_module(backbones, on_nonfinite_loss="skip")

    def loaded_so(self, batch):
        with torch.no_grad():
            for parameter in (p for p in self.parameters() if p.requires_grad):
                parameter.fill_(float("nan"))
        return original(self, batch)

    monkeypatch.setattr(MultimodalCaptioner, "token_losses", loaded_so)
    trainer = three_steps(tmp_path)
    with pytest.raises(FloatingPointError, match=r"at step 0, .*the trained weights were not finite before this run's first "
                                                 r"update .*the checkpoint it started from"):
        trainer.fit(module, datamodule=dm)


def test_compile_option_compiles_every_decoder_layer_and_keeps_the_checkpoint_keys(backbones):
    # (the compiled model's speed and losses against eager's: benchmarks/compile.py; compiling here would take minutes)
    eager, compiled = make_captioner(backbones), make_captioner(backbones, compile=True)
    for module in (eager, compiled):
        module.configure_model()
    assert all(layer._compiled_call_impl is not None for layer in compiled.model.decoder_layers)
    assert not any(layer._compiled_call_impl is not None for layer in eager.model.decoder_layers)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints load either way



def test_caption_examples_reach_tensorboard_when_it_is_not_the_first_logger(backbones, tmp_path):
    # trainer.logger: [CSVLogger, TensorBoardLogger]: the example images and captions were left out of TensorBoard
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = TensorBoardLogger(tmp_path, name="tb")
    module = make_captioner(backbones)
    module.trainer = Trainer(accelerator="cpu", logger=[CSVLogger(tmp_path), board], enable_progress_bar=False)
    module.val_examples = (torch.rand(2, 3, 8, 8), ["a red circle", "a blue square"], [["a red circle"], ["two squares"]])
    module.log_caption_examples()
    board.experiment.flush()
    events = EventAccumulator(board.log_dir)
    events.Reload()
    assert "val/examples" in events.Tags()["images"] and events.Tags()["tensors"]  # the caption table is a text summary


def test_a_model_config_dict_with_a_setting_this_version_lacks_is_refused_by_name(backbones):
    from mmcaption.errors import ConfigError

    language_dir, vision_dir = backbones
    with pytest.raises(ConfigError, match=r"model.config: model settings \['lora_rank'\] are unknown to this version of mmcaption \(a typo, or a checkpoint"):  # was a TypeError
        MultimodalCaptioner(config={"language_model": str(language_dir), "vision_model": str(vision_dir), "lora_rank": 8})


def test_gradient_accumulation_gives_the_gradient_of_the_batch_it_stands_for(backbones, coco_root, tmp_path):
    # each micro-batch's mean was averaged: the tokens of a short micro-batch weighed more (0.2% off at 8 x 2, 3% at
    # 4 x 4), though the configs say accumulation keeps the global batch when batch_size is lowered
    language_dir, vision_dir = backbones

    def first_moments(batch_size: int, accumulate: int) -> tuple[list[torch.Tensor], float]:
        from lightning.pytorch.loggers import CSVLogger

        dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                               image_processor=str(vision_dir), batch_size=batch_size, num_workers=0, group_by_length=False)
        torch.manual_seed(0)
        module = make_module(backbones, lora_dropout=0.0, compute_dtype="float32")  # bfloat16 rounds gradients at 0.4%
        logs = tmp_path / f"logs-{batch_size}"
        trainer = Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, logger=CSVLogger(logs),
                          log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
        trainer.fit(module, datamodule=dm)
        state = trainer.optimizers[0].state
        with open(logs / "lightning_logs" / "version_0" / "metrics.csv") as file:
            logged = [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]
        return [state[p]["exp_avg"].clone() for p in module.parameters() if p in state], logged[-1]

    whole, loss = first_moments(16, 1)
    for batch_size, accumulate in ((8, 2), (4, 4)):
        parts, logged = first_moments(batch_size, accumulate)
        difference = torch.cat([(a - b).flatten() for a, b in zip(parts, whole)]).norm()
        assert difference / torch.cat([w.flatten() for w in whole]).norm() < 1e-4, (batch_size, accumulate)
        # and the loss logged for the step is the step's, as the batch it stands for has it (was its last micro-batch's)
        assert logged == pytest.approx(loss, rel=1e-5), (batch_size, accumulate)


def test_a_skipped_micro_batch_leaves_the_next_windows_loss_and_gradient_their_own():
    # on_nonfinite_loss skip, accumulate 2: a window's first micro-batch skipped left the last window's counts in the
    # next - its loss logged 6.0 for 2.0, or its gradient scaled by the last window's tokens (a quarter off)
    from mmcaption.model.loss import AccumulatedTokens

    window, parameter = AccumulatedTokens(), torch.nn.Parameter(torch.zeros(1))
    for batch_idx, skipped in ((0, False), (1, True), (2, True), (3, False)):
        window.start(batch_idx, 2)
        if skipped:  # (the step a skipped micro-batch ends is not taken: no rescale)
            continue
        window.divisor(torch.tensor(10.0 if batch_idx else 40.0), 2)
        logged = window.mean(torch.tensor(20.0), torch.tensor(10.0))
    assert float(logged) == 2.0
    parameter.grad = torch.ones(1)
    window.rescale([parameter])
    assert float(parameter.grad) == 1.0  # its own tokens only: 10 over 10


def test_a_validation_setting_leaves_the_training_curve_as_it_is(backbones, coco_root, tmp_path):
    # each evaluation loader drew its seed from the process's generator: captioning val images at each validation (or
    # not) moved the dropout masks of every later training step, and one seed gave two training curves
    from lightning.pytorch.callbacks import Callback

    language_dir, vision_dir = backbones

    class Losses(Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["mean_loss"]))

    def curve(val_caption_images: int) -> list[float]:
        dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                               image_processor=str(vision_dir), batch_size=4, num_workers=0, val_caption_images=val_caption_images)
        torch.manual_seed(0)
        module = make_module(backbones, lora_dropout=0.3, compute_dtype="float32")
        module.generation.update(max_new_tokens=3)
        losses = Losses()
        Trainer(accelerator="cpu", max_steps=6, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[losses],
                default_root_dir=tmp_path).fit(module, datamodule=dm)
        return losses.losses

    assert curve(0) == curve(2)


def test_a_resumed_runs_schedule_counts_the_steps_left_by_the_epochs_accumulation_windows():
    from types import SimpleNamespace

    from mmcaption.step_ends import run_length

    def resumed(step: int, done: int, epoch: int, accumulate: int = 2, per_epoch: int = 5, in_epoch: bool = True):
        progress = SimpleNamespace(started=epoch + in_epoch, completed=epoch)
        return SimpleNamespace(global_step=step, max_epochs=2, max_steps=-1, num_training_batches=per_epoch,
                               accumulate_grad_batches=accumulate, current_epoch=epoch,
                               fit_loop=SimpleNamespace(epoch_progress=SimpleNamespace(current=progress),
                                                        epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(
                                                            current=SimpleNamespace(ready=done)))))

    # 5 batches an epoch in windows of 2: 3 steps an epoch, 6 in all, whereever the run was saved
    assert run_length(resumed(step=1, done=3, epoch=0)) == 6  # at a validation after batch 3, mid-window (was 5)
    assert run_length(resumed(step=2, done=4, epoch=0)) == 6
    assert run_length(resumed(step=3, done=0, epoch=1, in_epoch=False)) == 6  # at the epoch's end
    assert run_length(resumed(step=3, done=0, epoch=1, in_epoch=False, accumulate=1)) == 8  # one step a batch from here
    assert run_length(resumed(step=3, done=5, epoch=0)) == 6  # at the validation on the epoch's last batch (was 7: its
    # last window, of one batch, was stepped too)
    # ... and the progress lines count to it ("training starts at step 300 of 150", then a negative time left)
    from mmcaption.callbacks import PlainProgress

    trainer = resumed(step=3, done=0, epoch=1, in_epoch=False, accumulate=1)
    trainer.ckpt_path, trainer.estimated_stepping_batches = "last.ckpt", 10  # Lightning's: both epochs at one step a batch
    assert PlainProgress()._total(trainer) == 8


def test_a_scripts_own_trainer_is_refused_data_read_otherwise_than_the_model_and_a_spawning_strategy(backbones, coco_root,
                                                                                                     tmp_path):
    # the CLI links the data module's tokenizer, image processor and feature layer to the model's; a script's Trainer
    # trained with another vocabulary's ids, or on cached features of another layer than predict feeds, without a word,
    # and with ddp_spawn it trained, then failed to take the weights back ("220 unexpected key(s)")
    from mmcaption.demo.tiny import save_tiny_backbones
    from mmcaption.errors import ConfigError

    language_dir, vision_dir = backbones
    other_language, _ = save_tiny_backbones(tmp_path / "other", ["zebra quartz violin", "a quiet harbour at dusk"] * 20,
                                            seed=1, lm_hidden_size=64)

    def fit(module, **data):
        settings = dict(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                        image_processor=str(vision_dir), batch_size=4, num_workers=0)
        Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                default_root_dir=tmp_path).fit(module, datamodule=CaptionDataModule(**{**settings, **data}))
        return module

    with pytest.raises(ConfigError, match=rf"the data module's tokenizer '{other_language}' is not the model's "
                                          rf"\('{language_dir}'\): its token ids mean other words"):
        fit(make_module(backbones), tokenizer=str(other_language))
    assert not (tmp_path / "cache").exists()  # refused before preprocessing (hours of tokenising at COCO's scale)
    with pytest.raises(ConfigError, match=r"the data module caches the vision tower's layer -1 and the model reads layer -2"):
        fit(make_module(backbones, vision_feature_layer=-2), cache_image_features=True)
    copy = tmp_path / "copy_of_the_tokenizer"  # the same tokenizer by another name: trains
    copy.mkdir()
    for file in language_dir.iterdir():
        if file.is_file():
            (copy / file.name).write_bytes(file.read_bytes())
    assert fit(make_module(backbones), tokenizer=str(copy)).global_step == 1
    spawning = make_module(backbones)
    spawning.trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    with pytest.raises(ConfigError, match=r"trainer.strategy with start_method spawn is not supported .* use "
                                          r"--trainer.strategy ddp"):
        spawning.setup("fit")


def test_the_step_time_logged_under_gradient_accumulation_is_the_whole_steps(tmp_path):
    # train/step_seconds was the last batch's time alone: a half of each step at accumulate_grad_batches 2, a third at 3,
    # so settings compared by it looked faster than they were
    import csv
    import time

    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.loggers import CSVLogger

    from mmcaption.throughput import TrainingThroughput

    class Slow(BoringModel):
        def training_step(self, batch, batch_idx):
            time.sleep(0.1)
            return super().training_step(batch["x"], batch_idx)

    samples = [{"input_ids": torch.ones(4, dtype=torch.long), "attention_mask": torch.ones(4), "x": torch.randn(32)}] * 12
    trainer = Trainer(accelerator="cpu", max_epochs=1, accumulate_grad_batches=3, log_every_n_steps=1, limit_val_batches=0,
                      logger=CSVLogger(tmp_path), callbacks=[TrainingThroughput(window_size=2)], enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Slow(), train_dataloaders=torch.utils.data.DataLoader(samples, batch_size=2))
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as file:
        logged = [float(row["train/step_seconds"]) for row in csv.DictReader(file) if row.get("train/step_seconds")]
    assert len(logged) == 2 and all(seconds >= 0.3 for seconds in logged), logged  # 3 batches of 0.1 s a step


def test_the_running_counts_and_the_training_time_go_on_after_a_resume(tmp_path):
    # train/samples, train/lengths, train/batches and train/time went back to 0 at a resume: a requeued run's curves
    # were a sawtooth, and "samples seen" was the last resume's
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.loggers import CSVLogger

    from mmcaption.throughput import TrainingThroughput

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch["x"], batch_idx)

    samples = [{"input_ids": torch.ones(4, dtype=torch.long), "attention_mask": torch.ones(4), "x": torch.randn(32)}] * 40
    rows = []
    for steps, resume in ((4, None), (8, tmp_path / "c" / "last.ckpt")):
        trainer = Trainer(accelerator="cpu", max_steps=steps, log_every_n_steps=1, limit_val_batches=0,
                          logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[TrainingThroughput(window_size=2), ModelCheckpoint(tmp_path / "c", save_last=True)])
        trainer.fit(Model(), train_dataloaders=torch.utils.data.DataLoader(samples, batch_size=2), ckpt_path=resume)
        with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as file:
            rows += [row for row in csv.DictReader(file) if row.get("train/samples")]
    assert [float(row["train/samples"]) for row in rows] == [2.0 * step for step in range(1, 9)]
    assert [float(row["train/batches"]) for row in rows] == list(range(1, 9))
    times = [float(row["train/time"]) for row in rows]
    assert times == sorted(times)  # on from the first run's, not from 0


def test_under_ddp_the_running_counts_say_whose_they_are():
    # Lightning logs rank 0's running counts as train/samples and train/lengths: under DDP half the samples trained
    from types import SimpleNamespace

    from lightning.fabric.utilities.throughput import Throughput
    from lightning.pytorch.trainer.states import RunningStage

    from mmcaption.throughput import TrainingThroughput

    logged = {}
    trainer = SimpleNamespace(world_size=2, state=SimpleNamespace(stage=RunningStage.TRAINING), _logger_connector=SimpleNamespace(
        should_update_logs=True, log_metrics=lambda metrics, step: logged.update(metrics)))
    monitor = TrainingThroughput(window_size=2)
    monitor._throughputs[RunningStage.TRAINING] = throughput = Throughput(world_size=2, window_size=2)
    for step in (1, 2):
        throughput.update(time=step, batches=step, samples=4 * step, lengths=40 * step)
    monitor._compute(trainer, 2)
    assert (logged["train/samples"], logged["train/device/samples"], logged["train/device/lengths"]) == (16, 8, 80)
    assert "train/lengths" not in logged and logged["train/samples_per_sec"] == 8.0
    # ... nor a warning in every 2-process fit (hp_metric, the gathered validation loss) or every bf16-mixed one
    import re

    from mmcaption.console import UNACTIONABLE_WARNINGS

    for lightnings in ("It is recommended to use `self.log('hp_metric', ..., sync_dist=True)` when logging on epoch level",
                       "Precision bf16-mixed is not supported by the model summary.  Estimated model size in MB will not be",
                       # every resume saving before its first validation (the monitored key is logged by validation)
                       "`ModelCheckpoint(monitor='val/loss')` could not find the monitored key in the returned metrics: ['epoch', "
                       "'step']. HINT: Did you call `log('val/loss', value)` in the `LightningModule`?"):
        assert any(re.match(pattern, lightnings) for pattern in UNACTIONABLE_WARNINGS), lightnings
    misconfigured = ("`ModelCheckpoint(monitor='val/los')` could not find the monitored key in the returned metrics: ['epoch', "
                     "'step', 'val/loss']. HINT: Did you call `log('val/los', value)` in the `LightningModule`?")
    assert not any(re.match(pattern, misconfigured) for pattern in UNACTIONABLE_WARNINGS)  # with a validation's keys: said


def test_on_an_h200_the_mfu_is_logged_against_its_dense_peak(monkeypatch):
    # Lightning 2.6 does not match the device's own name ("NVIDIA H200"): no train/device/mfu was logged on the one GPU
    # the suite ran on; and its "h200 sxm1" row is the datasheet's sparse figure, which would halve the MFU
    from types import SimpleNamespace

    from lightning.fabric.utilities.throughput import get_available_flops
    from lightning.pytorch.plugins.precision import MixedPrecision
    from lightning.pytorch.trainer.states import RunningStage, TrainerFn

    from mmcaption.throughput import TrainingThroughput, available_flops

    cuda = torch.device("cuda", 0)
    for name, dense in (("NVIDIA H200", 989.4e12), ("NVIDIA H200 NVL", 835.5e12)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert available_flops(cuda, torch.bfloat16) == int(dense)
    with pytest.warns(UserWarning, match="FLOPs not found"):
        assert get_available_flops(cuda, torch.bfloat16) is None  # Lightning's own lookup, for this name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monitor = TrainingThroughput(window_size=2)
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=cuda), precision_plugin=MixedPrecision("bf16-mixed", "cuda"),
                              enable_validation=True, world_size=1, state=SimpleNamespace(stage=RunningStage.TRAINING))
    monitor.setup(trainer, None, TrainerFn.FITTING)
    throughput = monitor._throughputs[RunningStage.TRAINING]
    for step in (1, 2):
        throughput.update(time=step, batches=step, samples=4 * step, flops=494.7e12)  # each step's own
    assert throughput.compute()["device/mfu"] == pytest.approx(0.5)  # half the dense bf16 peak
    assert set(monitor._throughputs) == {RunningStage.TRAINING, RunningStage.VALIDATING}
    # other devices keep Lightning's table
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert available_flops(cuda, torch.bfloat16) == int(989.4e12)


def clipping_norms() -> tuple[dict[str, list], object]:
    """The total gradient norm before clipping (unscaled) and what the optimizer steps with, with the loss scale the
    fused kernel would still divide it by (None: none), recorded by the callback returned."""
    from lightning.pytorch import Callback

    norms: dict[str, list] = {"before": [], "stepped": []}

    def total_norm(optimizer) -> float:
        grads = [p.grad.float() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    class Norms(Callback):
        def on_train_start(self, trainer, module):
            optimizer = trainer.optimizers[0]
            assert optimizer.defaults["fused"]  # the fused kernel, as on a GPU
            optimizer.register_step_post_hook(lambda opt, *_: norms["stepped"].append((total_norm(opt), getattr(opt, "grad_scale", None))))

        def on_before_optimizer_step(self, trainer, module, optimizer):
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            norms["before"].append(total_norm(optimizer) / (1.0 if scaler is None else float(scaler.get_scale())))

    return norms, Norms()


def assert_clipped(norms: dict[str, list], clip: float, steps: int) -> None:
    assert len(norms["stepped"]) == steps, norms
    assert all(norm > 10 * clip for norm in norms["before"]), norms  # the clipping had work to do
    assert all(norm == pytest.approx(clip, rel=0.02) and scale is None for norm, scale in norms["stepped"]), norms


def test_gradients_are_clipped_under_bf16_mixed_with_the_fused_optimizer(backbones, coco_root, tmp_path):
    # configs/caption.yaml's gradient_clip_val 1.0 with bf16-mixed stopped every GPU run at its first step: Lightning's
    # MixedPrecision refuses to clip for torch's fused AdamW ("does not allow for gradient clipping because it performs
    # unscaling of gradients internally"), as if a loss scale were in bf16's gradients
    from lightning.pytorch import Trainer

    from mmcaption.data import CaptionDataModule

    clip = 1e-3
    norms, callback = clipping_norms()
    language_dir, vision_dir = backbones
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                           image_processor=str(vision_dir), batch_size=4, num_workers=0)
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=clip, max_steps=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[callback])
    trainer.fit(make_captioner(backbones, learning_rate=1e-3), datamodule=dm)
    assert_clipped(norms, clip, 2)


def test_under_16_mixed_the_fused_optimizer_clips_the_unscaled_gradients():
    # float16's loss scale is taken out before clipping (GradScaler.unscale_), and the kernel then steps with them as
    # they are: clipped scaled gradients would be unscaled again, 1024 times too small. Phi does not run under float16
    # autocast on a CPU, and Lightning picks bf16-mixed there for precision="16-mixed": a linear model and the plugin
    # as a GPU has it
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.plugins.precision import MixedPrecision

    from mmcaption.gradient_clipping import FusedOptimizerClipping
    from mmcaption.model.optim import adamw

    class Linear(FusedOptimizerClipping, LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(16, 1)

        def training_step(self, batch, batch_idx):
            return (self.layer(batch) ** 2).mean()

        def configure_optimizers(self):
            return adamw(self.parameters(), lr=1e-3)

    clip = 1e-3
    norms, callback = clipping_norms()
    torch.manual_seed(0)
    trainer = Trainer(accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=1024.0))],
                      gradient_clip_val=clip, max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[callback])
    trainer.fit(Linear(), train_dataloaders=torch.utils.data.DataLoader(torch.randn(12, 16), batch_size=4))
    assert_clipped(norms, clip, 3)


def test_a_fits_parameter_summary_counts_4_bit_weights_as_the_values_they_hold(backbones, monkeypatch):
    # Lightning's summary counted a 4-bit weight by its packed storage (eight values to a float32 element on the CPU, four
    # to a bfloat16: the tiny model's 1.2 M parameters said as 546 K, Phi-2's 2.7 billion as under a billion) and
    # showed "Total FLOPs: 0"
    import bitsandbytes as bnb
    from lightning.pytorch.callbacks import ModelSummary

    from mmcaption.parameter_summary import ParameterSummary, parameter_summary
    from mmcaption.run_callbacks import add_run_callbacks

    module = make_captioner(backbones)
    module.configure_model()
    four_bit = sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, bnb.nn.Linear4bit))
    others = sum(p.numel() for p in module.parameters() if getattr(p, "quant_state", None) is None)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    lora = sum(p.numel() for name, p in module.named_parameters() if "lora_" in name)
    assert four_bit > 0 and sum(p.numel() for p in module.parameters()) < four_bit + others  # what Lightning counted
    said = parameter_summary(module)
    assert said.startswith(f"model: {four_bit + others:,} parameters (a 4-bit weight counted as the values it holds): "
                           f"{four_bit:,} frozen 4-bit (language model {four_bit:,}); ")
    assert f"{trainable:,} trainable (" in said and f"LoRA {lora:,}" in said and "cross-attention " in said
    assert "vision tower " in said and said.endswith(" MiB in memory")

    plain = make_captioner(backbones, quantization="none")  # the bf16-LoRA preset: no 4-bit weight to say so of
    plain.configure_model()
    assert parameter_summary(plain).startswith(f"model: {sum(p.numel() for p in plain.parameters()):,} parameters: ")

    # a command's trainer gets it in place of Lightning's summary, which it says as a fit starts; none when turned off
    trainer = Trainer(accelerator="cpu", logger=False)
    add_run_callbacks(trainer)
    assert [type(c) for c in trainer.callbacks if isinstance(c, ModelSummary)] == [ParameterSummary]
    heard = []
    monkeypatch.setattr("mmcaption.parameter_summary.rank_zero_info", heard.append)
    next(c for c in trainer.callbacks if isinstance(c, ParameterSummary)).on_fit_start(trainer, module)
    assert heard == [said]
    # a config's ModelSummary of more layers (2, or -1 for all) gets Lightning's table after it
    table = []
    monkeypatch.setattr(ModelSummary, "on_fit_start", lambda self, trainer, module: table.append(self._max_depth))
    for depth in (1, 2, -1):
        ParameterSummary(max_depth=depth).on_fit_start(trainer, module)
    assert table == [2, -1]
    quiet = Trainer(accelerator="cpu", logger=False, enable_model_summary=False)
    add_run_callbacks(quiet)
    assert not any(isinstance(c, ModelSummary) for c in quiet.callbacks)

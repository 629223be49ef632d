"""Lightning's own tools around a fit with mmcaption's model: its tuners (callbacks, and ``Tuner`` in a script), and the
callbacks that cannot work with it, refused by name in a script's own Trainer as in the CLI's config."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import (
    BatchSizeFinder,
    GradientAccumulationScheduler,
    LearningRateFinder,
    StochasticWeightAveraging,
)
from lightning.pytorch.tuner import Tuner

from mmcaption.callbacks import ResumableStop
from mmcaption.checkpoint import load_checkpoint_file
from mmcaption.data import CaptionDataModule
from mmcaption.errors import ConfigError

from .conftest import make_captioner


def data(backbones, coco_root, tmp_path, batch_size=2):
    language_dir, vision_dir = backbones
    return CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                             image_processor=str(vision_dir), batch_size=batch_size, num_workers=0)


def trainer(tmp_path, callbacks, **settings):
    settings = {"max_steps": 2, "limit_val_batches": 1, **settings}
    return Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=callbacks,
                   **settings)


class WeightsAtTrainStart(Callback):
    def on_train_start(self, trainer, module) -> None:
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items() if k in module.trainable_state_keys()}


def test_a_tuner_starts_from_init_from_and_trains_on_from_its_weights(backbones, coco_root, trained_checkpoint, tmp_path):
    # Lightning's finders save the run's start and restore it after trying rates: the restore counted as a checkpoint's
    # weights, and init_from (the instruct stage's start) was dropped without a word: stage 2 trained from scratch
    stage_one = load_checkpoint_file(trained_checkpoint)["state_dict"]
    for tuner in (LearningRateFinder(num_training_steps=3, update_attr=False), BatchSizeFinder(init_val=2, max_trials=1)):
        seen = WeightsAtTrainStart()
        module = make_captioner(backbones, init_from=str(trained_checkpoint))
        trainer(tmp_path, [tuner, seen]).fit(module, datamodule=data(backbones, coco_root, tmp_path))
        assert seen.state.keys() == stage_one.keys()
        assert all(torch.equal(seen.state[k], stage_one[k]) for k in stage_one), type(tuner).__name__
        assert module.init_source is not None  # and its checkpoints say where they started
    # in a script: Tuner(trainer).lr_find, then the fit
    module, seen = make_captioner(backbones, init_from=str(trained_checkpoint)), WeightsAtTrainStart()
    tuned, datamodule = trainer(tmp_path, [seen]), data(backbones, coco_root, tmp_path)
    Tuner(tuned).lr_find(module, datamodule=datamodule, num_training=3, update_attr=False)
    tuned.fit(module, datamodule=datamodule)
    assert all(torch.equal(seen.state[k], stage_one[k]) for k in stage_one)


def test_a_batch_size_finder_gets_a_schedule_as_long_as_the_run_it_found(backbones, coco_root, tmp_path, capsys):
    # the schedule was planned for the batch before the finder doubled it: it ended 15 steps into 30, at half the peak
    module = make_captioner(backbones, learning_rate=1e-3, warmup_ratio=0.2)
    finder = BatchSizeFinder(init_val=2, max_trials=2, steps_per_trial=1)
    run = trainer(tmp_path, [finder, ResumableStop()], max_steps=-1, max_epochs=1)  # (the CLI's, which told the finder's
    # checkpoint as a resume of other batch settings)
    run.fit(module, datamodule=data(backbones, coco_root, tmp_path))
    assert run.datamodule.batch_size == 4 and run.global_step == 15  # 60 captions, 4 a batch
    assert module.planned_steps == 15 and run.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == 0.0  # decayed to 0
    assert run.ckpt_path is None  # a fresh run: not said to resume the finder's own checkpoint
    err = capsys.readouterr().err
    assert "the checkpoint's" not in err and "resumes with other batch settings" not in err and ".scale_batch_size" not in err


def test_a_learning_rate_finders_rate_is_the_schedules_peak_from_the_first_step(backbones, coco_root, tmp_path):
    # Lightning sets the rate found in the optimizer alone: it held for the first step (at the peak, not warmed up), and
    # the schedule then went on at the config's rate
    module = make_captioner(backbones, learning_rate=1e-4, warmup_ratio=0.5)
    finder = LearningRateFinder(min_lr=1e-3, max_lr=1e-2, num_training_steps=20, early_stop_threshold=None)
    rates = []

    class Rates(Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    run = trainer(tmp_path, [finder, Rates()], max_steps=4)
    run.fit(module, datamodule=data(backbones, coco_root, tmp_path))
    found = module.learning_rate
    assert found != 1e-4 and run.lr_scheduler_configs[0].scheduler.base_lrs == [found, found]
    assert rates == pytest.approx([0.0, found / 2, found, found / 2])  # warm-up over 2 steps to the rate found, then down


def test_a_tuner_cannot_resume_a_run_and_says_so(backbones, coco_root, trained_checkpoint, tmp_path):
    # it restores its own checkpoint of the run's start: the resumed run went back to step 0, warming up again
    module = make_captioner(backbones)
    with pytest.raises(ConfigError) as refused:
        trainer(tmp_path, [LearningRateFinder(num_training_steps=3)], max_steps=8).fit(
            module, datamodule=data(backbones, coco_root, tmp_path), ckpt_path=str(trained_checkpoint))
    assert str(refused.value) == (
        f"trainer.callbacks: LearningRateFinder cannot resume a run ({trained_checkpoint}): it tunes again as the run starts "
        "and puts it back to step 0; resume without it, giving the learning rate (--model.learning_rate) it found")


@pytest.mark.parametrize("callback, said", [
    (StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=1), "StochasticWeightAveraging cannot average this model"),
    (GradientAccumulationScheduler({0: 1, 1: 2}), "GradientAccumulationScheduler changes trainer.accumulate_grad_batches "
                                                  "between epochs"),
])
def test_callbacks_that_cannot_train_this_model_are_refused_in_a_scripts_trainer(backbones, coco_root, tmp_path, callback,
                                                                                  said):
    # the CLI refused SWA by name; a script's own Trainer averaged no weight and swapped the schedule for SWALR. An
    # accumulation schedule left the learning rate at 26% of its peak at the end, and a resume was refused
    from mmcaption.settings_checks import usable_callbacks

    with pytest.raises(ConfigError, match=said):
        usable_callbacks({"callbacks": [callback]}, fit=True)
    module = make_captioner(backbones)
    with pytest.raises(ConfigError, match=said):
        trainer(tmp_path, [callback]).fit(module, datamodule=data(backbones, coco_root, tmp_path))
    assert module.model is None  # before the backbones load

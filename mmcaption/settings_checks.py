"""The trainer's settings against the config's callbacks, checked before a run starts: callbacks the settings turn
off are left out (with a note), a monitor that will never be logged and a callback that cannot work with this model are
refused; and Lightning's own refusals of settings, said on one line (:class:`~mmcaption.errors.ConfigError`)."""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from mmcaption.errors import ConfigError, MMCaptionError, one_line
from mmcaption.lightning_tools import callbacks_problem
from mmcaption.model.backbone_checks import emulated_bfloat16
from mmcaption.slurm import nodes_unlaunched
from mmcaption.terminal import shell_word


def usable_callbacks(trainer_settings: dict[str, Any], fit: bool) -> list[Callback]:
    """The config's callbacks less those the trainer's own settings turn off: a ``LearningRateMonitor``
    when ``logger`` is false (it has nothing to log to, and Lightning stops the run at its first step), a
    ``ModelCheckpoint`` when ``enable_checkpointing`` is false (Lightning refuses the pair) or ``fast_dev_run``
    is set: a quick run without logs or checkpoints needs no edit of the config. In ``fit``, a note says what
    was left out."""
    callbacks = trainer_settings.get("callbacks") or []
    if problem := callbacks_problem(callbacks if isinstance(callbacks, list) else [callbacks]):
        raise ConfigError(problem)
    logger = trainer_settings.get("logger")  # (an empty list of loggers is none either)
    turned_off = [(LearningRateMonitor, f"logger is {'false' if logger is False else '[]'}")] if logger is False or logger == [] else []
    turned_off += [(ModelCheckpoint, "enable_checkpointing is false")] if trainer_settings.get("enable_checkpointing") is False else []
    # Lightning says a fast_dev_run saves nothing, and its ModelCheckpoint still writes last.ckpt at the end
    fast = trainer_settings.get("fast_dev_run")
    turned_off += [(ModelCheckpoint, f"fast_dev_run is {'true' if fast is True else fast}")] if fast else []
    kept = []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        setting = next((said for kind, said in turned_off if isinstance(callback, kind)), None)
        if setting is None and isinstance(callback, LearningRateMonitor) and any(isinstance(c, LearningRateMonitor) for c in kept):
            kept = [c for c in kept if not isinstance(c, LearningRateMonitor)] + [callback]  # the later one's settings
            if fit and rank_zero_only.rank == 0:  # (callbacks+=LearningRateMonitor over the shipped configs' one)
                print("note: trainer.callbacks has two LearningRateMonitors: the later one is used (with both, each rate "
                      "was logged twice)", file=sys.stderr, flush=True)
        elif setting is None:
            kept.append(callback)
        elif fit and rank_zero_only.rank == 0:
            print(f"note: trainer.{setting}: the config's {type(callback).__name__} is left out", file=sys.stderr, flush=True)
    if fit and trainer_settings.get("enable_progress_bar") is False and rank_zero_only.rank == 0:
        print("note: trainer.enable_progress_bar is false, so mmcaption's progress lines are off too (training starts, the "
              "step and loss every 30 s, each validation's metrics, training done). Off a terminal they are plain lines, not "
              "a bar, with the setting left on", file=sys.stderr, flush=True)
    checkpoints_off = any(kind is ModelCheckpoint for kind, _ in turned_off)
    if fit and not checkpoints_off and not any(isinstance(c, ModelCheckpoint) for c in kept) and rank_zero_only.rank == 0:
        print("note: trainer.callbacks has no ModelCheckpoint, so Lightning's default one keeps a single checkpoint, saved at "
              "each validation (at each epoch's end when there is none), and no last.ckpt: a run that stops at max_steps before "
              "its first validation keeps nothing, and --ckpt_path last finds nothing. A callbacks list in a later config file "
              "replaces the earlier one's: write `callbacks+:` there to add to it", file=sys.stderr, flush=True)
    for callback in kept:
        # Left to itself, an EarlyStopping checks at each epoch's end when validation runs there: a max_steps stop
        # mid-epoch, before any validation, then failed the finished run on a metric not yet logged, before the
        # ModelCheckpoint after it had saved. A validation metric is checked when validation ends, as often.
        if (isinstance(callback, EarlyStopping) and str(callback.monitor).startswith("val/")
                and getattr(callback, "_check_on_train_epoch_end", False) is None):
            callback._check_on_train_epoch_end = False
    for callback in kept if fit and rank_zero_only.rank == 0 else []:
        if isinstance(callback, ModelCheckpoint) and not callback.save_last:
            print(f"note: the ModelCheckpoint saving to {callback.dirpath or 'the log folder'} has save_last off: no last.ckpt, so a "
                  "run that stops at max_steps before a validation saves keeps nothing there, and --ckpt_path last finds "
                  "nothing. Add `save_last: true` to its init_args to keep the last step (the shipped configs do)",
                  file=sys.stderr, flush=True)
        if isinstance(callback, ModelCheckpoint) and callback.save_weights_only:  # ~1 GB of Phi-2's 1.5 GB is the optimizer's
            print(f"note: the ModelCheckpoint saving to {callback.dirpath or 'the log folder'} has save_weights_only on: its "
                  "checkpoints hold the trained weights alone, which start a new run (--model.init_from) but cannot resume "
                  "this one (--ckpt_path); a stop by Ctrl-C or a signal still saves one that can", file=sys.stderr, flush=True)
    return kept


# Lightning's plain ValueError / RuntimeError that are about a setting: (words in the message, the setting)
LIGHTNING_SETTING_ERRORS = (("`val_check_interval` (", "trainer.val_check_interval"),
                            ("Early stopping conditioned on metric", "the config's EarlyStopping monitor"),
                            ("requires a GPU accelerator", "trainer.strategy"),
                            ("more than one stateful callback of type", "trainer.callbacks (two alike: give one another "
                             "monitor or mode, or change the config's instead of adding one)"),
                            ("`devices` selected with `CPUAccelerator` should be", "trainer.devices (on the CPU, how many "
                             "processes to run: 1 or more; -1, all of them, counts GPUs)"),
                            ("in your SLURM bash script", "the SLURM job's tasks (#SBATCH --ntasks-per-node, as many as "
                             "--trainer.devices, and the command started with srun)"),
                            ("Received both `precision=", "trainer.precision and trainer.plugins (a precision plugin sets "
                             "the precision itself: give --trainer.precision null with it)"))


# Lightning's refusals that name what mmcaption made, not what the user set: said with what to change
LIGHTNING_ADVICE = (("of the `val_dataloader` but", " (validation has two loaders: the loss's, and the captions generated "
                     "from data.init_args.val_caption_images images at eval_batch_size, which had fewer batches: give "
                     "trainer.limit_val_batches as a number of batches, an int, or caption more images)"),)


def configured_checkpoint_folders(trainer_settings: Any) -> list[Path]:
    """The ``dirpath`` of each ModelCheckpoint in ``trainer.callbacks`` as configured, before they are built (where
    ``--ckpt_path last`` looks)."""
    callbacks = trainer_settings.get("callbacks") or []
    return [Path(c.init_args.dirpath) for c in (callbacks if isinstance(callbacks, list) else [callbacks])
            if _is_model_checkpoint(str(c.get("class_path", ""))) and c.get("init_args", {}).get("dirpath")]


def _is_model_checkpoint(class_path: str) -> bool:
    """Whether ``class_path`` names ModelCheckpoint or a class of its (a project's own ``KeepCheckpoint``)."""
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(found, type) and issubclass(found, ModelCheckpoint)


@contextmanager
def lightning_setting_errors(building: bool = False) -> Iterator[None]:
    """Lightning's refusals of settings (its ``MisconfigurationException``, and the plain errors above) as
    one-line :class:`ConfigError`: building the trainer or running it, they were tracebacks. ``building``: a package
    missing for a setting (``--trainer.precision transformer-engine``) is said too."""
    try:
        yield
    except ModuleNotFoundError as error:
        if not building:
            raise
        raise ConfigError(f"a trainer setting needs a package that is not installed: {one_line(error)}") from error
    except MisconfigurationException as error:  # Lightning's word for settings that cannot work together
        advice = next((words for said, words in LIGHTNING_ADVICE if said in str(error)), "")
        raise ConfigError(one_line(error) + advice) from error
    except (ValueError, RuntimeError, TypeError) as error:  # TypeError: devices -1 on the CPU
        setting = next((key for words, key in LIGHTNING_SETTING_ERRORS if words in str(error)), None)
        if setting is None or isinstance(error, MMCaptionError):
            raise
        raise ConfigError(f"{setting}: {one_line(error)}") from error


def unlogged_monitor(callbacks: list, datamodule: Any) -> str | None:
    """Why a callback's ``monitor`` (ModelCheckpoint's, EarlyStopping's) will never be logged with these settings (a
    typo, too), or ``None``: found now, not at the first validation, thousands of steps in, with no best saved."""
    from mmcaption.evaluation.caption_metrics import CAPTION_METRICS, java_available, spice_available  # noqa: PLC0415 - Java is looked for

    logged = [f"val/{metric}" for metric in ("loss", "perplexity", *CAPTION_METRICS, "answer_exact_match")]
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        name = f"{type(callback).__name__}'s monitor {monitor}"
        # a typo, another case or Lightning's docs' val_loss (training's own curves, epoch and step are left to Lightning)
        if isinstance(monitor, str) and not monitor.startswith(("train/", "gate/", "lr-")) and monitor not in (
                *logged, "epoch", "step"):
            close = "".join(f": did you mean {m}?" for m in difflib.get_close_matches(monitor, logged, n=1, cutoff=0.5))
            return f"{name} is never logged{close or '.'} Validation logs {', '.join(logged)}"
        if monitor in {f"val/{metric}" for metric in CAPTION_METRICS}:
            if getattr(datamodule, "val_caption_images", 0) == 0:  # the instruct stage has none (a pipeline's fit args)
                return (f"{name} is computed only from validation captions: set data.init_args.val_caption_images (images "
                        "captioned at each validation; it is 0), or monitor val/loss")
            if monitor == "val/METEOR" and not java_available() or monitor == "val/SPICE" and not spice_available():
                return (f"{name} is not computed on this machine: METEOR needs Java, SPICE Java and its models "
                        "(see the README's caption metrics); monitor val/CIDEr")
        filename = getattr(callback, "filename", None)  # ModelCheckpoint's {val/CIDEr:.3f}: a folder, or always 0.000
        for field in re.findall(r"\{([^}:]+)", filename or ""):
            if field not in (*logged, "epoch", "step") and not field.startswith(("train/", "gate/", "lr-")):
                close = "".join(f": did you mean {m}?" for m in difflib.get_close_matches(field, logged, n=1, cutoff=0.5))
                return (f"{type(callback).__name__}'s filename {filename!r} names {field}, which is never logged (its "
                        f"value would be written as 0){close or '.'} Validation logs {', '.join(logged)}")
            if "/" in field and getattr(callback, "auto_insert_metric_name", False):
                return (f"{type(callback).__name__}'s filename {filename!r} would write '{field}=' into each name, and its "
                        "'/' makes a folder of it: add auto_insert_metric_name: false and write the name you want "
                        f"(e.g. {{epoch}}-{{step}}-{field.split('/')[-1].lower()}{{{field}:.3f}})")
        better = getattr(callback, "mode", None)  # EarlyStopping and ModelCheckpoint: "min" unless given
        if monitor in {f"val/{metric}" for metric in (*CAPTION_METRICS, "answer_exact_match")} and better == "min":
            return (f"{name} is a score, higher when better, and its mode is min: it would keep the worst checkpoint, or "
                    "stop when the score rises. Set mode: max on it")
        if monitor in ("val/loss", "val/perplexity", "train/loss") and better == "max":  # a CIDEr config's mode, left
            return (f"{name} is a loss, lower when better, and its mode is max: it would keep the worst checkpoint, or "
                    "stop when the loss falls. Set mode: min on it")
        if monitor == "val/answer_exact_match" and getattr(datamodule, "val_answer_questions", 0) == 0:
            return (f"{name} is computed only from answered validation questions: set data.init_args.val_answer_questions "
                    "(it is 0), or monitor val/loss")
    return None


def strategy_problem(strategy: object) -> str | None:
    """Why a trainer strategy cannot run mmcaption: those that start the processes apart from the command and hand the
    trained weights back through it (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) reload the whole model's state, which
    the lean checkpoints refuse after training, and each process takes the predict output's lock the command holds."""
    settings = getattr(strategy, "init_args", None) or (strategy.get("init_args") if isinstance(strategy, dict) else None)
    start = getattr(settings, "start_method", None) or (settings.get("start_method") if isinstance(settings, dict) else None)
    if start in ("spawn", "fork", "forkserver"):  # DDPStrategy(start_method=...) in a config: ddp_spawn by another name
        strategy = f"with start_method {start}"
    if isinstance(strategy, str) and strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook", "with start_method")):
        return (f"trainer.strategy {strategy} is not supported (its processes hand the model back to the command, whose "
                "checkpoints and outputs are the processes' own): use --trainer.strategy ddp, which starts them alike")
    return None


FLOAT16 = "--trainer.precision 16-mixed --model.config.compute_dtype float16"


def autocast_problem(precision: object, computed_dtype: str) -> str | None:
    """Why the trainer's ``precision`` (as Lightning resolved it) cannot run a model computing in ``computed_dtype``
    (``MultimodalConfig.computed_dtype``): float16 autocast (``16-mixed``, what GPUs without bfloat16 use) over a
    language model kept in bfloat16 failed at the first step, "Unexpected floating ScalarType in
    at::autocast::prioritize" (autocast mixes no bfloat16 into float16)."""
    if str(precision) in ("16-mixed", "16") and computed_dtype == "bfloat16":
        return ("trainer.precision 16-mixed computes in float16, and model.config.compute_dtype bfloat16 keeps the language "
                "model in bfloat16: autocast cannot mix the two (the first step failed). Give --model.config.compute_dtype "
                "float16 with it (a GPU without bfloat16: T4, V100), or keep bf16-mixed")
    return None


def emulated_bfloat16_note(trainer: Any, computed_dtype: str) -> str | None:
    """A note where the run computes in bfloat16 on a GPU that has no bfloat16 arithmetic (compute capability below 8:
    T4, V100, Colab's and Kaggle's free GPUs): torch accepts bfloat16 there and emulates it, several times slower,
    without a word; float16 is that GPU's own."""
    if not isinstance(trainer.accelerator, CUDAAccelerator) or not (
            str(trainer.precision).startswith("bf16") or computed_dtype == "bfloat16"):
        return None
    if (gpu := emulated_bfloat16(trainer.strategy.root_device)) is None:
        return None
    uses = [f"trainer.precision {trainer.precision}"] * str(trainer.precision).startswith("bf16") + \
        ["model.config.compute_dtype bfloat16"] * (computed_dtype == "bfloat16")
    return (f"note: {gpu} has no bfloat16 arithmetic, which {' and '.join(uses)} compute in: torch emulates it there, "
            f"several times slower. Its own is float16: {FLOAT16}")


def check_trainer_for_model(trainer: Any, computed_dtype: str) -> None:
    """The built trainer against the model, as its ``setup`` starts (a script's own Trainer too): a strategy that
    starts processes apart (:func:`strategy_problem`; the CLI refuses it by name) and a precision that cannot run it
    are refused, bfloat16 on a GPU that emulates it is said (:func:`emulated_bfloat16_note`)."""
    start = getattr(trainer.strategy, "_start_method", None)  # Trainer(strategy="ddp_spawn")
    if problem := (strategy_problem(f"with start_method {start}") if start in ("spawn", "fork", "forkserver") else None) \
            or autocast_problem(trainer.precision, computed_dtype) or callbacks_problem(getattr(trainer, "callbacks", [])):
        raise ConfigError(problem)
    if (note := emulated_bfloat16_note(trainer, computed_dtype)) and trainer.is_global_zero:
        print(note, file=sys.stderr, flush=True)
    if (note := half_weights_note(trainer)) and trainer.is_global_zero:
        print(note, file=sys.stderr, flush=True)


def half_weights_note(trainer: Any) -> str | None:
    """A note where a fit keeps the weights it trains in 16 bits (``bf16-true``, ``16-true`` cast the whole module): an
    AdamW update smaller than half a step of bfloat16 between two values of a weight is rounded away (after 3 steps of
    warm-up 32% of the trained weights had changed, against all of them under bf16-mixed); bf16-mixed computes in
    bfloat16 all the same, the trained weights in float32."""
    if getattr(getattr(trainer, "state", None), "fn", None) != "fit" or (precision := str(trainer.precision)) not in ("bf16-true", "16-true"):
        return None
    half = "bfloat16" if precision.startswith("bf16") else "float16"
    return (f"note: trainer.precision {precision} keeps the weights this run trains (LoRA, cross-attention, projection) and "
            f"their optimizer state in {half}: an update smaller than {half}'s step between two values of a weight is "
            "rounded away (the warm-up's, a small learning rate's), and the run learns less. "
            f"{'bf16-mixed' if half == 'bfloat16' else '16-mixed'} computes in {half} all the same, with them in float32 "
            "(the configs' setting)")


def trainer_problem(trainer: Any) -> str | None:
    """Why these trainer settings cannot run mmcaption (:func:`strategy_problem`; barebones mode, which refuses the
    logger, checkpoints and progress display every command sets up: Lightning's refusal was a traceback; several nodes
    in a process no launcher started: :func:`~mmcaption.slurm.nodes_unlaunched`)."""
    if trainer.get("barebones"):
        return ("trainer.barebones true: mmcaption's commands log, checkpoint and show their progress, which barebones "
                "mode refuses; for a bare run leave it out (false) and give --trainer.logger false "
                "--trainer.enable_checkpointing false instead")
    return strategy_problem(trainer.get("strategy")) or nodes_unlaunched(trainer.get("num_nodes"), trainer.get("plugins"))


PROMPTS = ("caption_prompt", "system_prompt")  # what a model was trained to be asked with


def ask_as_trained(subcommand: str, data: Any, trained: dict[str, Any], source: str, recorded: bool = True) -> None:
    """A predict's prompts (``data``: its data module's settings) as the model was trained with them (``trained``: its
    checkpoint's data settings, or its export's prompts), where the run leaves them unset (null): the predict configs
    asked every model with the default prompts, whatever it learned. A prompt set to another text than the trained
    one is kept, with a note. validate and test evaluate with their config's data module, as it is given: another prompt
    than the trained one is noted (their metrics were of a prompt the model never saw, unsaid) where ``recorded``: an
    export's prompts include defaults its stage never trained with."""
    settings = getattr(data, "init_args", None) if subcommand == "predict" or recorded and subcommand in ("validate", "test") else None
    for name in PROMPTS:
        if settings is None or name not in settings or not isinstance(trained.get(name), str):
            continue
        if settings[name] is None and subcommand == "predict":
            settings[name] = trained[name]
        elif settings[name] != trained[name] and rank_zero_only.rank == 0:
            then = "as set (null asks as trained)" if subcommand == "predict" else \
                f"as given: --data.init_args.{name} {shell_word(trained[name])} evaluates it as trained"
            print(f"note: {source} was trained with {name} {trained[name]!r}; this {'run' if subcommand == 'predict' else subcommand} "
                  f"asks with {settings[name]!r}, {then}", file=sys.stderr, flush=True)


def under_root_folder(command: Any, typed: list[str], newest: Callable[[list[Path]], Path]) -> list[str]:
    """With ``trainer.default_root_dir`` given, the relative folders the config names for its loggers (``save_dir``) and
    ModelCheckpoints (``dirpath``) go under it, as Lightning puts them when none is named: the shipped configs name them
    (``lightning_logs``, ``checkpoints/<stage>``), so a run given its own root wrote its logs and checkpoints beside every
    other run's, and the root stayed empty. Returns the folders as they now are, for a note. With ``ckpt_path`` last,
    refuses a root that holds no last checkpoint where the folder as named holds one (a run begun before a root was
    given): it would start at step 0; ``newest``: which of its last checkpoints ``--ckpt_path last`` takes there. A
    relative ``model.init_from`` (the instruct configs' ``checkpoints/caption/...``) is the root's when the root holds it:
    the working folder's was another run's caption stage, taken unsaid - unless typed on the command line (``typed``: the
    options given there) and there in the working folder, which is then said. ``command``: a subcommand's settings
    (``trainer``, ``ckpt_path``, ``model``)."""
    trainer_settings, ckpt_path, model_settings = command.trainer, command.get("ckpt_path"), command.get("model")
    root = trainer_settings.get("default_root_dir")
    if not root:
        return []
    moved = []
    for setting, key in (("logger", "save_dir"), ("callbacks", "dirpath")):
        items = trainer_settings.get(setting)
        for item in items if isinstance(items, list) else [items]:
            settings = getattr(item, "init_args", None) if not isinstance(item, bool | type(None)) else None
            if setting == "callbacks" and not _is_model_checkpoint(str(getattr(item, "class_path", "") or "")):
                continue
            folder = settings.get(key) if settings is not None else None
            if not (rooted := root_folder(folder, root)):
                continue
            settings[key] = rooted
            moved.append(rooted)
            if setting == "callbacks" and str(ckpt_path) == "last" and not any(Path(rooted).glob("last*.ckpt")) \
                    and (held := [p for p in Path(str(folder)).glob("last*.ckpt") if p.exists()]):  # (not a link to none)
                raise ConfigError(f"--ckpt_path last looks in {rooted}, under trainer.default_root_dir, which holds no "
                                  f"last checkpoint; {folder} holds a run's: give --ckpt_path {shell_word(newest(held))}")
    start = model_settings.get("init_from") if model_settings is not None else None
    if not start or Path(str(start)).expanduser().is_absolute() or Path(str(start)).resolve().is_relative_to(
            Path(str(root)).expanduser().resolve()):
        return moved
    typed_here = any(option.split("=")[0] == "--model.init_from" for option in typed)
    if (Path(root) / str(start)).exists() and not (typed_here and Path(str(start)).exists()):
        model_settings["init_from"] = str(Path(root) / str(start))
        moved.append(f"model.init_from {model_settings['init_from']}")
    elif Path(str(start)).exists() and rank_zero_only.rank == 0:  # as given: the working folder's, said with the root's
        other = f" (trainer.default_root_dir holds another: {Path(root) / str(start)})" if (Path(root) / str(start)).exists() else \
            f": trainer.default_root_dir {root} holds none"
        print(f"note: model.init_from {start} is read from the working folder{other}", file=sys.stderr, flush=True)
    return moved


def root_folder(folder: Any, root: Any) -> str | None:
    """``folder`` (a logger's save_dir, a checkpoint folder) under ``trainer.default_root_dir`` ``root``, where it is a
    relative folder outside it; ``None`` where it stays as it is."""
    if not folder or not root or Path(str(folder)).expanduser().is_absolute() or \
            Path(str(folder)).resolve().is_relative_to(Path(str(root)).expanduser().resolve()):
        return None
    return str(Path(root) / str(folder))


def optimizer_problem(model: Any, trainer: Any) -> str | None:
    """A training setting no run learns with, said before anything loads: torch refused some once the model had loaded
    (a negative learning rate, a beta of 1.5), and the others were taken without a word (a learning rate of 0, a
    warmup_ratio beyond 1 that lowered the peak, a negative weight decay or clipping value)."""
    rate, decay, warmup = model.get("learning_rate"), model.get("weight_decay"), model.get("warmup_ratio")
    betas, clip = list(model.get("adam_betas") or []), trainer.get("gradient_clip_val")
    if isinstance(rate, int | float) and rate <= 0:
        return f"model.learning_rate {rate}: training moves the weights by it, so it is above 0 (the configs: 2e-4)"
    if isinstance(decay, int | float) and decay < 0:
        return f"model.weight_decay {decay}: a decay is 0 or above (0 in the configs)"
    if isinstance(warmup, int | float) and not 0 <= warmup <= 1:
        return (f"model.warmup_ratio {warmup} is the fraction of the steps spent warming up: give 0 to 1 (beyond, the "
                "learning rate never reached its peak)")
    if not all(isinstance(b, int | float) and 0 <= b < 1 for b in betas):
        return f"model.adam_betas {betas}: each from 0 to below 1 (the configs: [0.9, 0.999])"
    accumulate = trainer.get("accumulate_grad_batches")
    if isinstance(accumulate, int) and not isinstance(accumulate, bool) and accumulate < 1:  # a ZeroDivisionError traceback
        return (f"trainer.accumulate_grad_batches {accumulate}: the batches each optimizer step adds up, 1 or more (1: "
                "a step per batch)")
    if isinstance(clip, int | float) and clip < 0:
        return (f"trainer.gradient_clip_val {clip}: Lightning clips nothing below 0; give the norm to clip at (1.0), or "
                "null for none")
    return untrained_fit_problem(trainer)


def untrained_fit_problem(trainer: Any) -> str | None:
    """A ``fit`` whose trainer settings train no step: Lightning skipped the training, said it in passing and exited 0,
    a run that looked done with nothing learned (``limit_train_batches 0`` given to validate only, or a 0 left over)."""
    limits = [(name, trainer.get(name)) for name in ("max_steps", "max_epochs", "limit_train_batches")]
    zero = [f"trainer.{name} {value}" for name, value in limits
            if isinstance(value, int | float) and not isinstance(value, bool) and value == 0]
    if zero:
        return (f"{', '.join(zero)}: this fit would train nothing and exit as if done; give a number of them above 0 "
                "(-1 lifts max_steps' or max_epochs' limit; one of the two stays finite, the learning-rate schedule's length), "
                "or score a checkpoint with mmcaption validate or test")
    return None

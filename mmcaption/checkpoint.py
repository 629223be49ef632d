"""Checkpoints: files written atomically and read without running code, and the policy of what a checkpoint may be
loaded into (its tensors and structural settings checked against the model).

Lightning ``shutil.move``-s a checkpoint from the system's temp folder into place (a copy across file systems: a kill
during it left a truncated ``last.ckpt``). :class:`AtomicCheckpointIO`, the CLI's, writes beside the target, syncs
and renames over it: a kill or a full disk at any moment leaves the previous checkpoint whole.

Reading goes through :func:`load_checkpoint_file` (``torch.load(weights_only=True)``): tensors and plain containers only,
so a checkpoint from elsewhere cannot run code; a pickled payload is refused with a message that names the file.

Checkpoints hold the trainable tensors only (the frozen 4-bit backbones are reloaded from their source), so Lightning's
non-strict loading would silently ignore a checkpoint of another model: :func:`check_trainable_state` refuses any
difference and names it, and :func:`load_initial_weights` starts a stage from an earlier stage's checkpoint or saved
folder (``model.init_from``)."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.imports import RequirementCache

from mmcaption.errors import MMCaptionError, unexpanded_variable
from mmcaption.evaluation.digests import hash_before_loading, loaded_file
from mmcaption.folders import being_written, umask, writing_run
from mmcaption.model import MultimodalCausalLM, MultimodalConfig, is_pretrained_folder, read_manifest
from mmcaption.model.backbone_weights import backbone_weights, changed_backbones, other_backbones
from mmcaption.model.card import newest_checkpoint
from mmcaption.model.config import absolute_if_local, check_known_settings, settings_diff
from mmcaption.model.structure import assign_trainable_tensors, model_structure
from mmcaption.resources import dangling, disk_full, file_too_large
from mmcaption.terminal import shell_word

MODEL_PREFIX = "model."  # the LightningModule holds the model as ``self.model``


class CheckpointFileError(MMCaptionError, RuntimeError):
    """A checkpoint file that cannot be read (truncated, not a torch file)."""


class UnsafeCheckpointError(CheckpointFileError):
    """A checkpoint holds objects that only unpickling arbitrary code could rebuild."""


class CheckpointNotFoundError(CheckpointFileError, FileNotFoundError):
    """A checkpoint path that names no file."""


class CheckpointMismatchError(MMCaptionError, RuntimeError):
    """A checkpoint whose tensors do not fit the model being built."""


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False, digest: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; refuse pickled code, naming the file, and any file
    that is not a readable checkpoint (truncated, corrupted, another kind of file), whatever error the
    unpickler met in it. ``mmap``: tensors are read from the file only when used (to read its metadata); ``digest``:
    the weights loaded, hashed from the same open file (``loaded_file``: what results and later stages record)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":  # an export, or its weights file, given where a .ckpt goes
        export = path if path.is_dir() else path.parent
        raise (CheckpointNotFoundError if path.is_dir() else CheckpointFileError)(
            f"{path} is {'a folder' if path.is_dir() else 'a safetensors file'}, not a checkpoint file: a checkpoint of mmcaption "
            "fit is a .ckpt file (checkpoints/<stage>/last.ckpt); " + (
                f"{export} is a model mmcaption-export wrote, given whole as --model.init_from {export} (in Python: "
                "Captioner.from_pretrained)" if is_pretrained_folder(export) else
                f"it holds checkpoints of fit: {shell_word(held)} (the newest last*.ckpt)" if (held := newest_checkpoint(path)) else
                "a folder written by mmcaption-export is given as --model.init_from"))
    if not path.is_file():  # a best checkpoint a fit replaced between its choice and its load: said
        raise CheckpointNotFoundError(f"checkpoint not found: {path}{unexpanded_variable(path)}{being_written(path.parent)}")
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):  # a torch file is a zip, or a pickle (older ones)
        raise CheckpointFileError(f"{path}: not a checkpoint - not a file torch.save writes (it starts {head!r}); "
                                  "a checkpoint of mmcaption fit is a .ckpt file (checkpoints/<stage>/last.ckpt)")
    try:
        with path.open("rb") as handle:  # hashed and loaded from one open file: a checkpoint renamed over it is not read
            if digest and not mmap:  # (torch maps a file by its path only)
                hash_before_loading(handle, path)
            checkpoint = torch.load(path if mmap or not digest else handle, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path}: refused - it contains pickled objects other than tensors and plain containers, which "
            f"could run code when loaded. mmcaption checkpoints never do; only load files you trust. ({error})"
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - a corrupted file makes the unpickler fail in many ways
        raise CheckpointFileError(
            f"{path}: not a readable checkpoint (truncated or not a torch file): {type(error).__name__}: {error}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointFileError(f"{path}: not a checkpoint: it holds a {type(checkpoint).__name__}, not a dictionary")
    return checkpoint


def save_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.chmod(temporary, 0o666 & ~umask())  # mkstemp makes the file private; a checkpoint is not
        with os.fdopen(descriptor, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        # torch.save's writer wraps the write's error, which names no file: this one is named
        full = disk_full(error) or file_too_large(error)
        if full is not None and full.filename is None and full.errno is not None:
            raise OSError(full.errno, full.strerror, str(path)) from error
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic local writes and ``weights_only`` reads; for ``trainer``'s evaluations
    (validate, test: on the first process, which writes the results; predict: on each, for its share's) the checkpoint
    hashed as it loads. Remote paths (``s3://``, ...) keep Lightning's own fsspec handling."""

    def __init__(self, trainer: Trainer | None = None) -> None:
        super().__init__()
        self._trainer = weakref.ref(trainer) if trainer is not None else None

    def __getstate__(self) -> dict[str, Any]:  # a spawned process's copy of the trainer: a weak reference is no pickle
        return {**self.__dict__, "_trainer": None}

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomically(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        trainer = self._trainer() if self._trainer is not None else None
        evaluated = trainer is not None and trainer.state.fn != "fit" and (trainer.is_global_zero or trainer.state.fn == "predict")
        return load_checkpoint_file(path, map_location=map_location or "cpu", digest=evaluated)


def install_atomic_checkpoint_io(trainer: Trainer) -> None:
    """Replace Lightning's default checkpoint I/O (also inside an async wrapper) by the atomic one."""
    if type(io := trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO(trainer)
    elif isinstance(io, _WrappingCheckpointIO) and type(io.checkpoint_io) is TorchCheckpointIO:
        io.checkpoint_io = AtomicCheckpointIO(trainer)


def check_trainable_state(
    state_dict: dict[str, torch.Tensor], model: torch.nn.Module, prefix: str = "", settings_diff: list[str] = (),
    source: str = "checkpoint",
) -> None:
    """Refuse a state dict that is not exactly the model's trainable tensors (names and shapes): Lightning's non-strict
    loading would silently ignore such keys; here every difference is named, and so is every structural setting
    (``settings_diff``) in which the checkpoint's model differs. ``source``: how the message names the checkpoint
    (``init_from <path>``: a sweep's other run's was refused unnamed)."""
    expected = {f"{prefix}{name}": p for name, p in model.named_parameters() if p.requires_grad}
    unexpected, missing = sorted(set(state_dict) - set(expected)), sorted(set(expected) - set(state_dict))
    mismatched = [f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
                  for key in sorted(set(state_dict) & set(expected)) if state_dict[key].shape != expected[key].shape]
    problems = list(settings_diff)
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    if missing:
        problems.append(f"{len(missing)} trainable tensor(s) missing, e.g. {missing[:3]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:3]}")
    if problems:
        raise CheckpointMismatchError(f"{source} does not match the model (other backbones, injected layers or LoRA "
                                      "settings?): " + "; ".join(problems))


def check_checkpoint(checkpoint: dict[str, Any], model: MultimodalCausalLM, source: str = "checkpoint") -> None:
    """Refuse a Lightning checkpoint whose trainable tensors or structural settings differ from ``model``'s."""
    differences = settings_diff(checkpoint.get("model_config", {}), model.config_dict())
    check_trainable_state(checkpoint["state_dict"], model, prefix=MODEL_PREFIX, settings_diff=differences, source=source)
    current = getattr(model, "backbone_weights", None) or backbone_weights(model.config)  # a structure only: its files
    if said := changed_backbones(checkpoint.get("backbone_weights"), current, model.config, source, checkpoint.get("model_config")):
        rank_zero_warn(said)


def load_trainable_tensors(checkpoint: dict[str, Any], model: MultimodalCausalLM, source: str = "checkpoint") -> None:
    """Put a Lightning checkpoint's trainable tensors into ``model``, after :func:`check_checkpoint`."""
    check_checkpoint(checkpoint, model, source)
    model.load_state_dict({k.removeprefix(MODEL_PREFIX): v for k, v in checkpoint["state_dict"].items()}, strict=False)


def model_from_checkpoint(
    path: str | Path, device: torch.device | str | None = None, pretrained_weights: bool = True, **backbones: str
) -> tuple[MultimodalCausalLM, dict[str, Any]]:
    """The model a Lightning checkpoint of ``mmcaption fit`` holds (built from the config it stores, with
    ``backbones``' folders where they moved), and the checkpoint itself. Without ``pretrained_weights`` only the
    checkpoint's trained tensors have values (the backbones' weights are never read;
    :func:`mmcaption.model.structure.model_structure`): enough to write them out, not to run the model."""
    checkpoint = load_checkpoint_file(path)
    saved = checkpoint.get("model_config") or checkpoint.get("hyper_parameters", {}).get("config")
    if saved is None:
        raise CheckpointFileError(f"{path}: no model config in it; is it a checkpoint of mmcaption fit?")
    check_known_settings(saved, str(path))
    saved = {**saved, **{name: absolute_if_local(folder) for name, folder in backbones.items()}}  # as training keeps them
    if pretrained_weights:
        model = MultimodalCausalLM.from_config(MultimodalConfig(**saved), device=device, trained=True)
        load_trainable_tensors(checkpoint, model, f"checkpoint {path}")
    else:
        model = model_structure(MultimodalConfig(**saved))
        check_checkpoint(checkpoint, model, f"checkpoint {path}")
        assign_trainable_tensors(model, {k.removeprefix(MODEL_PREFIX): v for k, v in checkpoint["state_dict"].items()})
    return model, checkpoint


def other_backbones_warning(source: Path, saved: dict[str, Any], model: MultimodalCausalLM, fitted: Any, weights: bool) -> None:
    """Warn when the weights of ``source`` (a checkpoint's or an export's) were fitted to other backbone weights than
    ``model``'s (``fitted``: their fingerprints; ``weights``: say it, not done yet), or by name to another backbone."""
    for said in other_backbones(f"init_from {source}", saved, model.config_dict(), fitted, getattr(model, "backbone_weights", {}), weights):
        rank_zero_warn(said)


def other_quantization_warning(source: Path, saved: dict[str, Any], model: MultimodalCausalLM, merged: bool = False) -> None:
    """Say a stage started from weights trained against another quantization of the language model than this run's
    (an nf4 stage 1 continued with ``quantization: none``, unsaid): their LoRA was fitted to the other weights' rounding;
    ``merged``: an export's own language model, LoRA merged in, quantized again (the rounding drowns the change)."""
    if (trained := saved.get("quantization")) and trained != (now := model.config.quantization):
        rank_zero_warn(f"init_from {source} holds its LoRA merged into its unquantized language model, which this run "
                       f"loads in {now}: the rounding drowns much of the trained change (leave --model.config.quantization "
                       "out to compute with it as exported)" if merged else f"init_from {source} was trained against the "
                       f"language model in {trained}; this run loads it in {now}: its LoRA was fitted to the {trained} "
                       f"weights, so its outputs differ slightly from the trained model's (--model.config.quantization "
                       f"{trained} loads it as it was trained)")


def load_initial_weights(model: MultimodalCausalLM, source: str | Path) -> dict[str, Any]:
    """Start ``model`` from the trained weights of an earlier stage: a Lightning checkpoint (its
    trainable tensors, checked) or a folder of ``mmcaption-export``. Returns where they came from, as
    checkpoints of the new stage record it."""
    path = Path(source)
    if path.is_dir():
        manifest = read_manifest(path)
        if differences := settings_diff(manifest["model"], model.config_dict(), saved_name="exported"):
            raise CheckpointMismatchError(f"exported model {path} does not match this model: " + "; ".join(differences))
        model.load_pretrained_weights(path)
        # its own merged language model (unquantized, LoRA inside, as pretrained_config builds it): said only quantized
        merged_in = manifest.get("merged") and Path(model.config.language_model).resolve() == (path / "language_model").resolve()
        saved = {**manifest["model"], **({"language_model": model.config.language_model, "quantization": "none"} if merged_in else {})}
        fitted = {k: v for k, v in (manifest.get("backbone_weights") or {}).items() if not (merged_in and k == "language_model")}
        other_backbones_warning(path, saved, model, fitted, weights=True)
        other_quantization_warning(path, saved, model, merged=bool(merged_in))
        return {"path": str(path.resolve()), "export": manifest["source"]}
    if not path.is_file():
        raise CheckpointNotFoundError(f"init_from checkpoint not found: {path} (train the caption stage first, or point "
                                      "init_from at its checkpoint)")
    checkpoint = load_checkpoint_file(path, digest=True)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointFileError(f"init_from {path}: not a checkpoint of mmcaption fit (it has no state_dict; its keys: "
                                  f"{sorted(map(str, checkpoint))[:8]}); init_from takes one, or a folder of mmcaption-export")
    load_trainable_tensors(checkpoint, model, f"init_from {path}")
    other_backbones_warning(path, checkpoint.get("model_config") or {}, model, checkpoint.get("backbone_weights"), weights=False)
    other_quantization_warning(path, checkpoint.get("model_config") or {}, model)
    step, planned = checkpoint.get("global_step"), checkpoint.get("planned_steps")
    if stopped := checkpoint.get("stopped_by"):  # saved as its run was stopped (Ctrl-C, a preemption); a best one is not
        of = f" of {planned}" if planned else ""
        rank_zero_warn(f"init_from {path} was saved as its run was stopped by {stopped}, at step {step}{of}: these weights "
                       "are of a stage that did not finish (resume that run with --ckpt_path to finish it)")
    elif (step or 0) < (planned or 0) and (run := writing_run(path.parent)):  # a labmate's stage 1, still training
        rank_zero_warn(f"init_from {path} is at step {step} of {planned}, and the fit writing it is still training ({run}): "
                       "these weights are of a stage not finished yet (wait for it to end)")
    base = re.sub(r"-v\d+$", "", path.stem)  # last.ckpt, last-v1.ckpt, ...: one name, each a run of that stage's
    same_name = (p for p in path.parent.glob(f"{base}*{path.suffix}") if re.fullmatch(rf"{re.escape(base)}(-v\d+)?", p.stem))
    later = sorted((p for p in same_name if not dangling(p) and saved_time(p) > saved_time(path, checkpoint)), key=saved_time)
    if later:  # a later run of that stage into the same folder: fit keeps the earlier one's last.ckpt
        try:
            newest = load_checkpoint_file(later[-1], mmap=True)  # read once, without its tensors
        except MMCaptionError:  # (damaged: said where it is loaded)
            newest = {}
        rank_zero_warn(f"init_from {path} (step {step}) is not the newest of its name: {later[-1].name}, of step "
                       f"{newest.get('global_step')}{f' of {planned}' if (planned := newest.get('planned_steps')) else ''}, was saved since by a later run of that stage into the same "
                       f"folder; --model.init_from {shell_word(later[-1])} if that is the run meant")
    return dict(zip(("path", "sha256"), loaded_file(path)), epoch=checkpoint.get("epoch"),
                global_step=checkpoint.get("global_step"), planned_steps=checkpoint.get("planned_steps"))


# Lightning issue #20550 (open; fixes proposed in PRs #21765 and #21770): a stateful training loader's
# saved position is never loaded when configure_optimizers asks for estimated_stepping_batches. Needed
# on the Lightning releases this package allows (pyproject: lightning<2.7). When raising that bound,
# run tests/test_resume.py without this workaround; once a release passes, delete it and its call.
LOADER_POSITION_WORKAROUND = not RequirementCache("lightning>=2.7")


# Lightning issue #19617 (open): a run whose max_steps stopped it at an epoch's last batch, resumed with a larger
# max_steps, counts that epoch's end twice. Same bound and the same way out as LOADER_POSITION_WORKAROUND.
FINISHED_EPOCH_WORKAROUND = not RequirementCache("lightning>=2.7")


def _count_the_finished_epoch_once(fit_loop) -> None:
    """A resume from a checkpoint saved at an epoch's end, under ``max_steps``: Lightning
    (2.6) ends that epoch again and adds it to the epochs processed a second time. The next epoch was then shuffled
    as the one after it (the sampler's order is the seed plus that count), and ``max_epochs`` came an epoch early:
    a run resumed to train longer trained nothing and wrote no checkpoint. Taken back here, before Lightning adds it
    and before the loader is given the next epoch."""
    if FINISHED_EPOCH_WORKAROUND and fit_loop.restarted_on_epoch_end:  # only a max_steps run restarts at an epoch's end
        for counts in (fit_loop.epoch_progress.current, fit_loop.epoch_progress.total):
            counts.processed -= 1


def restore_loader_position(trainer) -> None:
    """Put a resumed run's training loader where the checkpoint left it (call from ``on_train_start``).

    Lightning (2.6) saves the state of a stateful training loader in the checkpoint but, when
    ``configure_optimizers`` asks for ``trainer.estimated_stepping_batches`` (as the LR schedule must),
    builds the loader before the checkpoint is read and never loads that state (Lightning issue
    #20550): the resumed run would restart the epoch. Its first iterator is also created before the
    sampler learns the epoch. This loads the pending state and re-creates the iterator, with the
    epoch set, as the upstream fix does. A no-op when nothing is pending (fresh runs, fixed Lightning). A resume at
    an epoch's end first has that epoch counted once (:func:`_count_the_finished_epoch_once`).
    """
    from lightning.fabric.utilities.data import _set_sampler_epoch

    fit_loop = trainer.fit_loop
    _count_the_finished_epoch_once(fit_loop)
    if not LOADER_POSITION_WORKAROUND:
        return
    progress, loop = fit_loop.epoch_progress.current, fit_loop.epoch_loop
    ended = loop.batch_progress.is_last_batch and progress.processed == progress.started == progress.completed
    # A save at an epoch's last batch's end (a signal's, under max_steps), whose loader position Lightning loaded itself:
    # it closes the epoch as it restarts, then ran no batch (the loader at its end) and closed it again; a fresh one here
    if not getattr(fit_loop, "_combined_loader_states_to_load", None) and not (ended and fit_loop.restarted_mid_epoch):
        return
    # Not restarting: saved once its epoch had ended (max_epochs reached, resumed to train longer); nothing of it is left,
    # and the iterator Lightning made held epoch 0's order, trained again unsaid. Saved at its epoch's last batch, the
    # epoch closed by now (the max_steps save after it, or a save at that batch's end, which Lightning closes on
    # resuming): loading that epoch's end left the next epoch empty. It starts from its
    # first batch, in its own order, counting its batches from 0 (after a save at the batch's end Lightning resets
    # that count itself). A save before the epoch was closed - at a validation's end on the last batch, or inside the
    # epoch's end - loads it: Lightning runs the rest of that epoch first, and finds no batch left.
    if ended or not fit_loop.restarting:
        fit_loop._combined_loader_states_to_load = []
        for loader in fit_loop._combined_loader.flattened:  # a position Lightning loaded already: the epoch's end
            if getattr(loader, "next_iter_state", None) is not None:
                loader.next_iter_state = None
        if fit_loop.restarting and not loop.restarted_on_train_batch_end:
            for counts in (loop.batch_progress, loop.scheduler_progress, loop.automatic_optimization.optim_progress):
                counts.reset_on_run()
    for loader in fit_loop._combined_loader.flattened:
        _set_sampler_epoch(loader, fit_loop.epoch_progress.current.processed)
    fit_loop._load_combined_loader_states()  # (none left to load after an epoch's end)
    iter(fit_loop._data_fetcher)  # Lightning makes no new iterator for a resumed run's first epoch


def saved_time(path: str | Path, checkpoint: dict[str, Any] | None = None) -> float:
    """When a checkpoint was saved: the time it records (``saved_at``, recorded by mmcaption fit), else its file's time
    (a copy's, with cp or rsync without -a: which of two runs' files is newer cannot be told by it). ``checkpoint``: the
    file's contents, when read already."""
    at = checkpoint.get("saved_at") if checkpoint is not None else _recorded(path, "saved_at", None)
    return float(at) if isinstance(at, (int, float)) else Path(path).stat().st_mtime


def _recorded(path: str | Path, key: str, unreadable: Any) -> Any:
    """What a checkpoint records under ``key`` (None when nothing), read without its tensors; ``unreadable`` for a
    damaged or half-written file (said where its weights are loaded)."""
    try:
        return load_checkpoint_file(path, mmap=True).get(key)
    except (MMCaptionError, OSError):  # (one this user may not read: a colleague's in a shared folder)
        return unreadable


def job_of_checkpoint(path: Path) -> str | None:
    """The SLURM job that saved a checkpoint (``ResumableStop`` records it; None: saved outside SLURM, or before); a
    damaged or half-written file is no save of any job's."""
    return _recorded(path, "slurm_job", "unreadable")


def data_settings(path: str | Path) -> dict[str, Any]:
    """The data module's settings a checkpoint was trained with (its prompts), ``{}`` when it records none."""
    return _recorded(path, "datamodule_hyper_parameters", {}) or {}

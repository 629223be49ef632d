"""Checkpoint files: written atomically, read without running code.

Lightning writes a checkpoint through a temporary file in the system's temp folder and then
``shutil.move``-s it into place; when that folder is on another file system the move is a copy,
and a process killed during it leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO`
writes beside the target, syncs, and renames over it (``os.replace`` is atomic on POSIX and
Windows): a kill or a full disk at any moment leaves the previous checkpoint whole, and no
half-written file under the checkpoint's name. The ``mmcaption`` CLI installs it by default.

Reading goes through :func:`load_checkpoint_file` (``torch.load(weights_only=True)``): tensors and
plain containers only, so a checkpoint from elsewhere cannot run code; a pickled payload is refused
with a message that names the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointFileError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, not a torch file)."""


class UnsafeCheckpointError(CheckpointFileError):
    """A checkpoint holds objects that only unpickling arbitrary code could rebuild."""


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; refuse pickled code, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path}: refused - it contains pickled objects other than tensors and plain containers, which "
            f"could run code when loaded. mmcaption checkpoints never do; only load files you trust. ({error})"
        ) from None
    except (EOFError, RuntimeError, OSError) as error:
        raise CheckpointFileError(f"{path}: not a readable checkpoint (truncated or not a torch file): {error}") from None


def save_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes the file private; a checkpoint is not
        with os.fdopen(descriptor, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    """Lightning's checkpoint I/O with atomic local writes and ``weights_only`` reads.

    Remote paths (``s3://``, ...) keep Lightning's own fsspec handling.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomically(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(path, map_location=map_location or "cpu")


def restore_loader_position(trainer) -> None:
    """Put a resumed run's training loader where the checkpoint left it (call from ``on_train_start``).

    Lightning (2.6) saves the state of a stateful training loader in the checkpoint but, when
    ``configure_optimizers`` asks for ``trainer.estimated_stepping_batches`` (as the LR schedule must),
    builds the loader before the checkpoint is read and never loads that state (Lightning issue
    #20550): the resumed run would restart the epoch. Its first iterator is also created before the
    sampler learns the epoch. This loads the pending state and re-creates the iterator, with the
    epoch set, as the upstream fix does. A no-op when nothing is pending (fresh runs, fixed Lightning).
    """
    from lightning.fabric.utilities.data import _set_sampler_epoch

    fit_loop = trainer.fit_loop
    if not (fit_loop.restarting and getattr(fit_loop, "_combined_loader_states_to_load", None)):
        return
    for loader in fit_loop._combined_loader.flattened:
        _set_sampler_epoch(loader, fit_loop.epoch_progress.current.processed)
    fit_loop._load_combined_loader_states()
    iter(fit_loop._data_fetcher)

"""A full disk under the loggers' folder stops the curves, not the training.

TensorBoard writes its events from a thread: when their disk filled, the thread died with its traceback, and
the next write of a step's metrics raised its "No space left on device" in the training loop, without a file
name. Training stopped there, and what it had learnt since the last checkpoint was lost, although the
checkpoints' disk had room. Now the logger's first failed write says, once, which folder is full and that
training goes on; its later writes are dropped. A checkpoint's own save on a full disk still stops the run,
saying so (:func:`~mmcaption.resources.disk_full_message`).
"""

from __future__ import annotations

import functools
import shutil
import sys
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from mmcaption.resources import disk_full

# what Lightning calls on a logger; TensorBoardLogger's ``experiment`` is the SummaryWriter the module also writes to
LOGGER_METHODS = ("log_metrics", "log_hyperparams", "log_graph", "save", "finalize")


class CurvesOnFullDisk(Callback):
    """Guards this run's loggers against a full disk (module docstring)."""

    def __init__(self) -> None:
        self._full: set[int] = set()
        self._hook: Any = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            if not getattr(logger, "_mmcaption_disk_guard", False):
                self._guard(trainer, logger)
        if self._hook is None:  # the writer thread's traceback: its error is said once, by the training loop's write
            self._hook = threading.excepthook
            threading.excepthook = self._thread_error

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # (Lightning calls no teardown after an error)

    def teardown(self, trainer, pl_module, stage: str) -> None:  # the hook held this run, and the next saved it as its own:
        if self._hook is not None:  # each failed (pruned, interrupted) run of a sweep stayed in memory for good
            threading.excepthook, self._hook = self._hook, None

    def _thread_error(self, args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and disk_full(args.exc_value) is not None:
            return
        self._hook(args)

    def _guard(self, trainer, logger: Logger) -> None:
        logger._mmcaption_disk_guard = True
        for name in LOGGER_METHODS:
            if (method := getattr(logger, name, None)) is not None:
                setattr(logger, name, self._guarded(trainer, logger, method))
        if isinstance(logger, TensorBoardLogger):  # the SummaryWriter itself, which the module writes images to
            experiment = type(logger).experiment.fget
            guard = self

            class Guarded(type(logger)):
                @property
                def experiment(self) -> Any:
                    return _Writer(experiment(self), functools.partial(guard._guarded, trainer, self))

            Guarded.__name__, Guarded.__qualname__ = type(logger).__name__, type(logger).__qualname__  # as said in messages
            logger.__class__ = Guarded

    def _guarded(self, trainer, logger: Logger, method):
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if id(logger) in self._full:
                return None
            try:
                return method(*args, **kwargs)
            except Exception as error:
                if disk_full(error) is None:
                    raise
                self._stopped(trainer, logger, error)
                return None

        return guarded

    def _stopped(self, trainer, logger: Logger, error: BaseException) -> None:
        """The first failed write of ``logger``: said once, and its later writes dropped."""
        if id(logger) in self._full:
            return
        self._full.add(id(logger))
        folder = Path(getattr(logger, "log_dir", None) or logger.save_dir or ".")
        free = ""
        with suppress(OSError):
            free = f", {shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free / 2**20:.1f} MB free"
        full = disk_full(error)
        checkpoints = getattr(trainer.checkpoint_callback, "dirpath", None)
        if trainer.is_global_zero:
            print(f"warning: the disk is full under {folder} ({full.strerror or full}{free}): {type(logger).__name__}'s curves "
                  f"stop at step {trainer.global_step} (what was written there is kept), and training goes on"
                  + (f", its checkpoints saved in {checkpoints} as before" if checkpoints else "")
                  + ". Free some space there, or give --trainer.logger.init_args.save_dir a larger disk next time",
                  file=sys.stderr, flush=True)
        with suppress(Exception):  # its thread is gone: closing flushes nothing more
            if isinstance(logger, TensorBoardLogger) and logger._experiment is not None:
                logger._experiment.close()


class _Writer:
    """A SummaryWriter whose methods are ``guarded`` (:meth:`CurvesOnFullDisk._guarded`)."""

    def __init__(self, writer: Any, guarded) -> None:
        self._writer, self._guarded_call = writer, guarded

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._writer, name)
        return self._guarded_call(attribute) if callable(attribute) else attribute

"""What the commands keep quiet: the libraries' console lines and warnings that say nothing a user of
mmcaption can act on (each checked against the versions pinned in pyproject.toml; a new one is worth
reading before it is added here)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from functools import partial, wraps
from pathlib import Path
from typing import Any

from PIL import Image
from transformers.utils import logging as hf_logging

from mmcaption.terminal import draws_bars


class _DropLines(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes`` (after Lightning's ``[rank: N]``)."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not re.sub(r"^\[rank: \d+\] ", "", str(record.msg)).startswith(self.prefixes)


UNACTIONABLE_WARNINGS = (
    re.escape("'set_vital' is deprecated"),  # torchdata 0.11 calls a deprecated torch function at every epoch
    re.escape("`is_gradient_checkpointing` is deprecated"),  # peft asks transformers with the old name
    re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),  # Lightning's pytree helper on newer torch
    r"Found \d+ module\(s\) in eval mode at the start of training",  # the frozen vision tower, on purpose
    r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint',  # said by mmcaption, naming the folder
    # the evaluation metrics are computed from every process's outputs, gathered, and logged once: nothing to sum
    r"It is recommended to use `self\.log\('((val|test)/|hp_metric')",  # hp_metric: the validation loss
    # the real configs' bf16-mixed: the trainable weights the summary sizes are float32, its "using 32 bits" right
    r"Precision [\w-]+-mixed is not supported by the model summary",
    # a save before this run's first validation (a resumed run's, a max_steps end before one): its top-k wait for a
    # validation's score and last.ckpt is saved; its HINT suggested a misconfiguration. A key no validation logs is
    # refused before training, and Lightning raises once a validation ran without it
    r"`ModelCheckpoint\(monitor='[^']*'\)` could not find the monitored key in the returned metrics: \['epoch', 'step'\]\.",
)


PACKAGE = str(Path(__file__).resolve().parent)


@contextlib.contextmanager
def warnings_filtered() -> Iterator[None]:
    """A block without :data:`UNACTIONABLE_WARNINGS`, mmcaption's own warnings shown as their message alone
    (:func:`_format_warning`); the filters and the format as they were after it (``catch_warnings`` keeps the filters,
    not ``warnings.formatwarning``: a notebook's own warnings after a ``main([...])`` lost their file and line)."""
    before = warnings.formatwarning
    with warnings.catch_warnings():
        for message in UNACTIONABLE_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        # Pillow's "could be decompression bomb DOS attack" at 89-179 megapixels (a 108 MP phone's photo): mmcaption decodes
        # an image within its own limit (mmcaption.images.MAX_PIXELS) and refuses one above it by name
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        # jsonargparse's deprecations of what Lightning's CLI calls (add_instantiator, instantiate_classes: 4.49): `python
        # -W error` stopped there
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
        if not getattr(before, "mmcaption", False):  # (a block inside another keeps the outer one's)
            warnings.formatwarning = partial(_format_warning, before)
            warnings.formatwarning.mmcaption = True
        try:
            yield
        finally:
            warnings.formatwarning = before


def _format_warning(others: Callable[..., str], message, category, filename, lineno, line=None) -> str:
    """mmcaption's own warnings as ``UserWarning: <message>``: Python adds the file and the line of source that warned,
    which say nothing to a user (``records.py:280: UserWarning: captions.csv: skipped 2 bad records`` and
    ``rank_zero_warn(f"{self.source}...``); others as before. Only the format: a warning recorded
    (``catch_warnings(record=True)``, ``pytest.warns``) is recorded as ever."""
    if str(filename).startswith(PACKAGE):
        return f"{category.__name__}: {message}\n"
    return others(message, category, filename, lineno, line)  # (Lightning's shows its own without their source line)


def quiet_lightning() -> None:
    """Lightning's console lines that say nothing to a user of mmcaption: an advertisement for a cloud
    logger, the TPU line on machines without TPUs, and its "Received SIGTERM" before mmcaption's own line. The GPU line and everything else stays. Off a
    terminal, also the progress bars of ``datasets`` (the phase lines say what is being built)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLines) for f in logger.filters):
        logger.addFilter(_DropLines("💡 Tip: For seamless cloud logging", "💡 Tip: For seamless cloud uploads", "TPU available: False"))
    signals = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")
    if not any(isinstance(f, _DropLines) for f in signals.filters):  # said by mmcaption's own line, with what was kept
        signals.addFilter(_DropLines("Received SIGTERM", "SLURM auto-requeueing enabled"))  # (its handler is replaced)
    hf_logging.disable_progress_bar()  # a bar per weight file loaded, gone in a second
    if not draws_bars():  # in a log file a bar is one long line of redrawn counts per table built
        import datasets  # here: chat and the app, which quieted() serves, never load it

        datasets.disable_progress_bars()


@contextlib.contextmanager
def bars_put_back(datasets_too: bool = True) -> Iterator[None]:
    """transformers' and (``datasets_too``) datasets' progress bars as they were before the block (:func:`quiet_lightning`
    turns them off): a notebook's own ``from_pretrained`` and ``map`` after a ``run_cli`` showed none for the rest of the
    session. Chat and the app, which never load datasets, leave its bars alone."""
    datasets = importlib.import_module("datasets") if datasets_too else None
    hf_bars, datasets_bars = hf_logging.is_progress_bar_enabled(), datasets and not datasets.are_progress_bars_disabled()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar() if hf_bars else hf_logging.disable_progress_bar()
        if datasets is not None:
            datasets.enable_progress_bars() if datasets_bars else datasets.disable_progress_bars()


@contextlib.contextmanager
def lightning_info_hidden() -> Iterator[None]:
    """Lightning's info lines ("Seed set to 0", "GPU available: ...") belong to the run, not to its check."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def quieted(main: Callable[..., Any]) -> Callable[..., Any]:
    """A console script run without :data:`UNACTIONABLE_WARNINGS` and transformers' loading bars (a bar per
    weight file, gone in a second): ``mmcaption-export``, ``mmcaption chat``, ``mmcaption-app``."""
    @wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with bars_put_back(datasets_too=False), warnings_filtered():  # (a notebook's own from_pretrained shows them)
            hf_logging.disable_progress_bar()
            return main(*args, **kwargs)

    return wrapper


def print_metrics(results: list[dict[str, float]], verbose: bool = True) -> None:
    """``validate``'s and ``test``'s metrics, one row each. Lightning's own table gives every data loader a
    column, and metrics computed at the epoch's end (all of mmcaption's) appear once per loader: the loss
    beside the generation loader that has none."""
    from lightning.pytorch.utilities import rank_zero_only

    merged = {name.split("/dataloader_idx_")[0]: value for result in results for name, value in result.items()}
    if not verbose or not merged or rank_zero_only.rank != 0:
        return
    width = max(len(name) for name in merged)
    print("\n".join([f"{'metric':<{width}}  value"] + [f"{name:<{width}}  {value:.4f}" for name, value in sorted(merged.items())]))

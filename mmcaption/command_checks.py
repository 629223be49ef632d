"""A command of ``mmcaption`` parsed, built and checked as it would be before running, and not run: what the pipeline
and the demo check of the commands they will run before their first stage starts."""

from __future__ import annotations

import warnings

from lightning.pytorch import LightningDataModule

from mmcaption.cli import MMCaptionCLI
from mmcaption.console import bars_put_back, lightning_info_hidden, quiet_lightning, warnings_filtered
from mmcaption.folders import locks_released_after
from mmcaption.module import MultimodalCaptioner
from mmcaption.parser import MMCaptionParser


class _CheckOnlyCLI(MMCaptionCLI):
    """A command parsed, built and checked as it would be before running, and not run."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def check_command(args: list[str], run_checks: bool = True) -> MMCaptionCLI:
    """Check a command of ``mmcaption`` without running it: its settings (typos get the closest valid
    names) and, with ``run_checks``, what the command itself checks before loading anything
    (accelerator, backbones, data files, folders). The pipeline checks its second stage this way
    before the first starts; the demo checks the arguments it passes on before building its data."""
    with bars_put_back(), warnings_filtered(), locks_released_after(), lightning_info_hidden():
        quiet_lightning()
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
        return _CheckOnlyCLI(MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, args=args, run=run_checks,
                             auto_configure_optimizers=False, parser_class=MMCaptionParser,
                             # its tip names `mmcaption fit --help`, not the pipeline's or the demo's own --help
                             parser_kwargs={"prog": "mmcaption" if run_checks else "mmcaption fit"})

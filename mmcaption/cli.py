"""``mmcaption fit | validate | test | predict``: LightningCLI over the captioner and a data module."""

from __future__ import annotations

import sys
import warnings
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from mmcaption.checkpoint import AtomicCheckpointIO
from mmcaption.data.base import PreprocessedDataModule
from mmcaption.data.records import DataError
from mmcaption.data.summary import format_summary, split_summary
from mmcaption.module import MultimodalCaptioner


class MMCaptionCLI(LightningCLI):
    """LightningCLI whose data module follows the model's config, one way.

    The tokenizer, the image processor and the vision features a cache holds must be those of the
    model, so the CLI hands ``model.config.language_model``, ``model.config.vision_model`` and
    ``model.config.vision_feature_layer`` to the data module (``data.init_args.tokenizer``,
    ``image_processor``, ``vision_feature_layer``; a data module without such an argument ignores it)
    instead of asking for them twice; the data module loads them with the model's factory.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.config.language_model", "data.init_args.tokenizer")
        parser.link_arguments("model.config.vision_model", "data.init_args.image_processor")
        parser.link_arguments("model.config.vision_feature_layer", "data.init_args.vision_feature_layer")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        install_atomic_checkpoint_io(trainer)
        return trainer


def install_atomic_checkpoint_io(trainer: Trainer) -> None:
    """Replace Lightning's default checkpoint I/O (also inside an async wrapper) by the atomic one."""
    io = trainer.strategy.checkpoint_io
    if type(io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    elif isinstance(io, _WrappingCheckpointIO) and type(io.checkpoint_io) is TorchCheckpointIO:
        io.checkpoint_io = AtomicCheckpointIO()


def run_cli(args: list[str] | None = None) -> MMCaptionCLI:
    """Run ``mmcaption`` with ``args`` (``sys.argv`` when None) and return the finished CLI."""
    with warnings.catch_warnings():
        # torchdata 0.11 calls a deprecated torch function at every epoch; nothing a user can act on
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        return MMCaptionCLI(
            MultimodalCaptioner,
            LightningDataModule,
            subclass_mode_data=True,
            args=args,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )


class _PrepareCLI(MMCaptionCLI):
    """The same configuration, without a Trainer: preparing data needs no accelerator."""

    def instantiate_trainer(self, **kwargs: Any) -> None:
        return None


def prepare(args: list[str]) -> int:
    """``mmcaption prepare --config ...``: preprocess the configured data module's splits (and its
    feature cache) without loading the language model, and print what each split holds. Returns the
    exit status: 0, or 1 with the data error's message."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)  # argv minus 'prepare'
        cli = _PrepareCLI(MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, args=args, run=False,
                          auto_configure_optimizers=False)
    datamodule = cli.datamodule
    if not isinstance(datamodule, PreprocessedDataModule):
        print(f"error: {type(datamodule).__name__} has nothing to prepare (it reads its input at predict time)", file=sys.stderr)
        return 1
    try:
        datamodule.prepare_data()
        summaries = [split_summary(datamodule, split) for split in dict.fromkeys(datamodule.stage_splits().values())]
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(format_summary(summary) for summary in summaries))
    return 0


def main(args: list[str] | None = None) -> None:
    """The ``mmcaption`` console script: LightningCLI's subcommands, and ``prepare``."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["prepare"]:
        sys.exit(prepare(argv[1:]))
    run_cli(args)


if __name__ == "__main__":
    main()

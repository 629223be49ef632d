"""``mmcaption fit | validate | test | predict``: LightningCLI over the captioner and a data module."""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from mmcaption.checkpoint import AtomicCheckpointIO
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


def main(args: list[str] | None = None) -> None:
    """The ``mmcaption`` console script."""
    run_cli(args)


if __name__ == "__main__":
    main()

"""The whole training in one command: the caption stage, then the instruct stage started from it.

    mmcaption-pipeline --caption configs/caption.yaml --instruct configs/instruct.yaml [fit arguments]

is the same as the two-line recipe

    mmcaption fit --config configs/caption.yaml
    mmcaption fit --config configs/instruct.yaml --model.init_from <the caption stage's best checkpoint>

Each stage writes its checkpoints and logs where its config says (``checkpoints/<stage>/``,
``lightning_logs/<stage>/``). Extra arguments are passed to both stages' ``fit``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from mmcaption.cli import MMCaptionCLI, check_command, run_cli
from mmcaption.errors import user_errors_exit


@dataclass
class StageResult:
    name: str
    cli: MMCaptionCLI
    checkpoint: str


def handoff_checkpoint(cli: MMCaptionCLI) -> str:
    """The checkpoint a finished stage hands on: its best by the monitored metric, else its last."""
    callback = cli.trainer.checkpoint_callback
    if callback is None:
        raise RuntimeError("the stage saved no checkpoint (add a ModelCheckpoint callback to its config)")
    path = callback.best_model_path or callback.last_model_path
    if not path or not Path(path).is_file():
        raise RuntimeError(f"the stage left no checkpoint in {callback.dirpath}")
    return path


def run_pipeline(caption_config: str, instruct_config: str, fit_args: list[str] = (), check: bool = True) -> list[StageResult]:
    """Train both stages. With ``check``, the instruct stage is checked (settings, data files, folders)
    before the caption stage starts: a missing LLaVA file is found in seconds, not after the caption
    stage's hours (its ``init_from``, the caption stage's checkpoint, is not there yet)."""
    if check:
        check_command(["fit", "--config", instruct_config, *fit_args, "--model.init_from", "null"])
    print(f"== stage 1, captions: mmcaption fit --config {caption_config} ==", flush=True)
    caption = run_cli(["fit", "--config", caption_config, *fit_args])
    caption_checkpoint = handoff_checkpoint(caption)
    print(f"== stage 2, instructions: mmcaption fit --config {instruct_config} --model.init_from {caption_checkpoint} ==",
          flush=True)
    instruct = run_cli(["fit", "--config", instruct_config, "--model.init_from", caption_checkpoint, *fit_args])
    return [
        StageResult("caption", caption, caption_checkpoint),
        StageResult("instruct", instruct, handoff_checkpoint(instruct)),
    ]


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caption", default="configs/caption.yaml", help="fit config of the caption stage")
    parser.add_argument("--instruct", default="configs/instruct.yaml", help="fit config of the instruct stage")
    args, fit_args = parser.parse_known_args(argv)
    for stage in run_pipeline(args.caption, args.instruct, fit_args):
        print(f"{stage.name}: checkpoint {stage.checkpoint}, logs {stage.cli.trainer.logger.log_dir}")


if __name__ == "__main__":
    main()

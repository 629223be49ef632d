"""The whole training in one command: the caption stage, then the instruct stage started from it.

    mmcaption-pipeline --caption configs/caption.yaml --instruct configs/instruct.yaml [fit arguments]

is the same as the two-line recipe

    mmcaption fit --config configs/caption.yaml
    mmcaption fit --config configs/instruct.yaml --model.init_from <the caption stage's best checkpoint>

Each stage writes its checkpoints and logs where its config says (``checkpoints/<stage>/``,
``lightning_logs/<stage>/``). Extra arguments are passed to both stages' ``fit``, except ``--ckpt_path``,
which resumes the stage whose checkpoint it is (:func:`run_pipeline`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from mmcaption.checkpoint import load_checkpoint_file
from mmcaption.cli import CHECKPOINT_KEYWORDS, MMCaptionCLI, run_cli
from mmcaption.command_checks import check_command
from mmcaption.errors import (
    ConfigError,
    Interrupted,
    MMCaptionError,
    RunInterrupted,
    act_on_held_stops,
    user_errors_exit,
)
from mmcaption.evaluation.digests import file_sha256
from mmcaption.model.config import STRUCTURAL_SETTINGS
from mmcaption.setting_names import named_log_folders
from mmcaption.terminal import shell_word
from mmcaption.usage import pipeline_parser


@dataclass
class StageResult:
    name: str
    cli: MMCaptionCLI | None  # None: the caption stage a resumed stage 2 started from, trained by an earlier command
    checkpoint: str


def handoff_checkpoint(cli: MMCaptionCLI) -> str:
    """The checkpoint a finished stage hands on: its best by the monitored metric, else its last."""
    callback = cli.trainer.checkpoint_callback
    if callback is None:
        raise RuntimeError("the stage saved no checkpoint (add a ModelCheckpoint callback to its config)")
    folder = Path(callback.dirpath).resolve()
    named = [path for path in (callback.best_model_path, callback.last_model_path) if path]
    # A run resumed in a moved or copied project folder keeps its checkpoint's best_model_path, the old folder's
    # absolute path (Lightning reloads it whatever the dirpath): the file of that name in this stage's folder
    # is the one meant; the old path gave "no checkpoint", or another copy's file without a word.
    for path in named:
        here = folder / Path(path).name
        if here.is_file():
            return str(here)
    elsewhere = f" (the run names {named[0]}, outside it: was the folder moved?)" if named else ""
    raise RuntimeError(f"the stage left no checkpoint in {callback.dirpath}{elsewhere}")


def stage_last(cli: MMCaptionCLI) -> str | None:
    """A finished stage's last checkpoint in its folder (resumed, it ends at once), or None."""
    callback = getattr(getattr(cli, "trainer", None), "checkpoint_callback", None)
    last = Path(callback.dirpath) / Path(callback.last_model_path).name if callback and callback.last_model_path else None
    return str(last) if last is not None and last.is_file() else None


def ckpt_path_taken(fit_args: list[str]) -> tuple[str | None, list[str]]:
    """``--ckpt_path``'s value (None when not given) and the other arguments."""
    rest, path = [], None
    arguments = iter(fit_args)
    for argument in arguments:
        if argument == "--ckpt_path":
            path = next(arguments, None)
        elif argument.startswith("--ckpt_path="):
            path = argument.split("=", 1)[1]
        else:
            rest.append(argument)
    return path, rest


def resumed_stage(fit_args: list[str]) -> tuple[str | None, str | None, list[str], str | None]:
    """``--ckpt_path`` taken out of the fit arguments, with the stage whose checkpoint it is (read from the
    checkpoint; ``None`` for ``last`` and the other keywords, which each stage resolves in its own folder), the
    other arguments, and the ``init_from`` the checkpoint's run started from."""
    path, rest = ckpt_path_taken(fit_args)
    if path is None or path in CHECKPOINT_KEYWORDS or path == "null":
        return (None if path == "null" else path), None, rest, None
    checkpoint = load_checkpoint_file(path, mmap=True)
    stage = checkpoint.get("training_data", {}).get("stage")
    if stage not in ("caption", "instruct"):
        raise ConfigError(f"--ckpt_path {path}: the checkpoint does not say which stage it trained (not written by mmcaption fit?)")
    return path, stage, rest, (checkpoint.get("hyper_parameters") or {}).get("init_from")


@contextmanager
def stage_named(stage: str, flag: str, config: str, defaults: tuple[str, ...]) -> Iterator[None]:
    """A stage's check that refuses its settings says which stage and config it was, before the error (checked before
    stage 1 starts, a refusal of stage 2's config read as the command's own, and a default config, the real model's
    configs/instruct.yaml beside the demo's caption config, went unnamed)."""
    default = f", the default: {flag} names yours" if flag in defaults else ""
    try:
        yield
    except MMCaptionError:  # said next, as the command's error
        print(f"note: refused in {stage} ({flag} {config}{default}):", file=sys.stderr, flush=True)
        raise
    except SystemExit as stop:  # the parser's error, said already (and --print_config's exit 0: no refusal)
        if stop.code not in (0, None):
            print(f"note: the error above came from checking {stage} ({flag} {config}{default})", file=sys.stderr, flush=True)
        raise


def run_pipeline(caption_config: str, instruct_config: str, fit_args: list[str] = (), check: bool = True,
                 stage_args: dict[str, list[str]] | None = None, defaults: tuple[str, ...] = ()) -> list[StageResult]:
    """Train both stages. With ``check``, the instruct stage is checked (settings, data files, folders, and
    that the caption stage's weights fit its model) before the caption stage starts: a missing LLaVA file is found in seconds, not after the caption
    stage's hours (its ``init_from``, the caption stage's checkpoint, is not there yet).

    ``--ckpt_path`` resumes the stage whose checkpoint it is, as the message of an interrupted run says:
    a caption checkpoint resumes the caption stage, then the instruct stage starts from its result; an
    instruct checkpoint resumes the instruct stage (the caption stage is done); ``last`` resumes each stage
    from its own last checkpoint (a finished caption stage ends at once). ``stage_args``: arguments for one
    stage only (``{"caption": [...], "instruct": [...]}``), before ``fit_args``; ``defaults``: the flags
    (``--caption``, ``--instruct``) whose config the user did not give."""
    checkpoint, stage, fit_args, started_from = resumed_stage(list(fit_args))
    caption_args, instruct_args = ((stage_args or {}).get(name, []) for name in ("caption", "instruct"))
    resume = ["--ckpt_path", checkpoint] if checkpoint else []
    # resuming the instruct stage: it started from the caption stage's checkpoint its own checkpoint names (the
    # weights come from the resumed checkpoint; this keeps the setting the run had, when the file is still there)
    init_from = started_from if stage == "instruct" and started_from and Path(started_from).exists() else "null"
    if check:  # as the instruct stage will run: resumed, unless the checkpoint is the caption stage's
        with stage_named("stage 2, instructions", "--instruct", instruct_config, defaults):
            instruct_check = check_command(["fit", "--config", instruct_config, *instruct_args, *fit_args, "--model.init_from",
                                            init_from, *(resume if stage != "caption" else [])])
        if stage != "instruct":  # the caption stage's weights must fit the instruct stage's model
            with stage_named("stage 1, captions", "--caption", caption_config, defaults):
                caption_check = check_command(["--config", caption_config, *caption_args, *fit_args], run_checks=False)
            caption_model, instruct_model = caption_check.model.config, instruct_check.model.config
            differ = [f"{key} {getattr(caption_model, key)!r} in {caption_config}, {getattr(instruct_model, key)!r} in "
                      f"{instruct_config}" for key in STRUCTURAL_SETTINGS if getattr(caption_model, key) != getattr(instruct_model, key)]
            if differ:
                raise ConfigError(f"the caption stage's weights would not fit the instruct stage's model: {'; '.join(differ)}. "
                                  "Give both stages the same model structure")
            if shared := named_log_folders(caption_check.config.trainer) & named_log_folders(instruct_check.config.fit.trainer):
                # stage 1 trained, then stage 2 was refused as "holds a run already", and a resume did not help
                raise ConfigError(f"both stages would log into {sorted(shared)[0]} (a trainer.logger version given to both): "
                                  "give each stage's config a version of its own (or another name), or leave version out")
    if stage == "instruct":
        print(f"== stage 1, captions: done; resuming stage 2 from {checkpoint} ==", flush=True)
        instruct = run_cli(["fit", "--config", instruct_config, *instruct_args, "--model.init_from", init_from, *fit_args,
                            *resume])
        return [*([StageResult("caption", None, init_from)] if init_from != "null" else []),  # what stage 2 started from
                StageResult("instruct", instruct, handoff_checkpoint(instruct))]
    command = ["fit", "--config", caption_config, *caption_args, *fit_args, *resume]  # said whole: copied to run one stage
    print(f"== stage 1, captions: {' '.join(map(shell_word, ['mmcaption', *command]))} ==", flush=True)
    caption = run_cli(command)
    caption_checkpoint = handoff_checkpoint(caption)
    resume = resume if stage is None else []  # a caption checkpoint is the caption stage's only
    # what goes on without training stage 1 again: its last checkpoint (its best, an earlier step, trained it on)
    go_on = f"--ckpt_path {shell_word(stage_last(caption) or caption_checkpoint)}"
    act_on_held_stops(f"stage 1 ended, before stage 2 began; stage 1 is done: run the same command with {go_on} to go on "
                      "without training stage 1 again")
    command = ["fit", "--config", instruct_config, *instruct_args, "--model.init_from", caption_checkpoint, *fit_args, *resume]
    print(f"== stage 2, instructions: {' '.join(map(shell_word, ['mmcaption', *command]))} ==", flush=True)
    callback = getattr(getattr(instruct_check, "trainer", None), "checkpoint_callback", None) if check else None
    folder, started = Path(callback.dirpath) if callback is not None and callback.dirpath else None, time.time()
    try:
        instruct = run_cli(command)
    except Interrupted as stop:  # stopped before stage 2 saved anything (after, its own message says how to resume)
        if isinstance(stop, RunInterrupted):
            raise
        raise Interrupted(stop.signum, f"{stop} in stage 2, before its first checkpoint; stage 1 is done: run the same "
                          f"command with {go_on} to go on without training stage 1 again") from None
    except Exception as error:  # a setting or data of stage 2's refused: the same command trained stage 1 anew
        saved = folder is not None and any(path.exists() and path.stat().st_mtime >= started for path in folder.glob("*.ckpt"))
        if rank_zero_only.rank == 0 and not saved:  # once stage 2 saved, its own message says how to go on from there
            print(f"note: stage 1 is done; once stage 2's problem below is mended, run the same command with {go_on} to go "
                  "on without training stage 1 again", file=sys.stderr, flush=True)
        raise error
    started = getattr(getattr(instruct, "model", None), "init_source", None) if resume and rank_zero_only.rank == 0 else None
    if started and started.get("sha256") and started["sha256"] != file_sha256(caption_checkpoint):
        print(f"note: stage 2 went on from its own checkpoint, whose run started from stage 1's weights at step "
              f"{started.get('global_step')}; {caption_checkpoint} has changed since, and that training does not reach stage 2. "
              "To start stage 2 from it, run it anew: " + " ".join(map(shell_word, [  # with this command's settings
                  "mmcaption", "fit", "--config", instruct_config, *instruct_args, *fit_args, "--model.init_from",
                  caption_checkpoint])), file=sys.stderr, flush=True)
    return [
        StageResult("caption", caption, caption_checkpoint),
        StageResult("instruct", instruct, handoff_checkpoint(instruct)),
    ]


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args, fit_args = pipeline_parser().parse_known_args(argv)
    unset = pipeline_parser()  # which configs were given, abbreviated too (--inst), and which are the defaults
    unset.set_defaults(caption=None, instruct=None)
    given = unset.parse_known_args(argv)[0]
    defaults = tuple(f"--{name}" for name in ("caption", "instruct") if getattr(given, name) is None)
    for stage in run_pipeline(args.caption, args.instruct, fit_args, defaults=defaults):
        if stage.cli is None:  # stage 2 resumed: the summary still names both stages' checkpoints
            print(f"{stage.name}: checkpoint {stage.checkpoint} (trained before; stage 2 started from it)")
            continue
        logs = stage.cli.trainer.logger.log_dir if stage.cli.trainer.logger is not None else None
        print(f"{stage.name}: checkpoint {stage.checkpoint}" + (f", logs {logs}" if logs and Path(logs).is_dir() else ""))


if __name__ == "__main__":
    main()

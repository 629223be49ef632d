"""The offline demo: synthetic shapes, tiny backbones, and both training stages through the real code path.

``mmcaption-demo`` writes (once) under ``demo_data/`` a synthetic captioning set in the official COCO
layout, conversations about the same images in the LLaVA layout, and tiny Phi / CLIP backbones with a
tokenizer in Hugging Face format. It then runs the pipeline - ``configs/demo/caption.yaml``, then
``configs/demo/instruct.yaml`` started from the caption stage's checkpoint - with the same 4-bit
loading, LoRA, cross-attention, data modules and CLI that train the real model. Extra arguments go
to both stages' ``mmcaption fit``.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch import Trainer

from mmcaption.callbacks import format_seconds
from mmcaption.cli import run_cli
from mmcaption.command_checks import check_command
from mmcaption.console import quieted
from mmcaption.data.cache import built_once, discard, is_complete, publish_atomically
from mmcaption.data.predict import MultipleChoiceDataModule
from mmcaption.demo.evaluation import (
    evaluate_answers,
    evaluate_captions,
    evaluate_choices,
    question_attributes,
    render_examples,
    steps_to_reach,
    train_answer_counts,
)
from mmcaption.demo.options import CLIP_PRETRAINING_STEPS, LANGUAGE_PRETRAINING_STEPS, demo_parser
from mmcaption.demo.synthetic import Scene, demo_corpus, write_coco_split, write_llava_split, write_multiple_choice_csv
from mmcaption.demo.tiny import save_tiny_backbones
from mmcaption.errors import OutputExistsError, ResumeError, user_errors_exit
from mmcaption.folders import check_writable
from mmcaption.pipeline import StageResult, ckpt_path_taken, run_pipeline

DEMO_VERSION = 9  # of the backbones: a change rewrites them (and says so)
DEMO_DATA_VERSION = 2  # of the data alone (2: no held-out image is a training image, the scenes placed anew)
DEMO_ENTRIES = ("coco", "llava", "backbones", "choice_val2017.csv", "meta.json", ".written")  # what the demo writes in its root
CACHES = ("coco/preprocessed/", "llava/preprocessed/")  # mmcaption's caches of the demo's data, which go with it


def prepare_demo_assets(
    root: str | Path = "demo_data",
    seed: int = 0,
    train_images: int = 3000,
    val_images: int = 200,
    pretrain_steps: int = LANGUAGE_PRETRAINING_STEPS,
    clip_steps: int = CLIP_PRETRAINING_STEPS,
) -> Path:
    """Write ``root/coco`` (synthetic COCO layout), ``root/llava`` (conversations about the same images)
    and ``root/backbones`` (tiny LM and CLIP) unless they are already there for this seed and size."""
    root = Path(root)
    for name, steps in (("pretrain_steps", pretrain_steps), ("clip_steps", clip_steps)):  # before any earlier data is removed
        if 0 < steps < 4:
            raise ValueError(f"{name} must be 0 (no pretraining) or at least 4, not {steps}")
    settings = {"version": DEMO_VERSION, "data_version": DEMO_DATA_VERSION, "seed": seed, "train_images": train_images,
                "val_images": val_images, "pretrain_steps": pretrain_steps, "clip_steps": clip_steps}
    with built_once(root, f"writing the demo data in {root}"):  # held: what a killed demo left half-written is removed
        return _write_demo_assets(root, settings)


def _write_demo_assets(root: Path, settings: dict) -> Path:
    train_images, val_images, seed = settings["train_images"], settings["val_images"], settings["seed"]
    pretrain_steps, clip_steps = settings["pretrain_steps"], settings["clip_steps"]
    if is_complete(root):
        try:
            written = json.loads((root / "meta.json").read_text())
        except (OSError, ValueError):
            written = None
        if written == settings:
            return root
        demo_data = isinstance(written, dict) and {"version", "seed"} <= set(written) and all(
            (root / name).is_dir() for name in ("coco", "llava", "backbones"))
        if not demo_data:  # a folder of the user's that happens to hold a meta.json: never removed
            raise OutputExistsError(f"{root} exists but is not demo data written by mmcaption; remove it or pick --root")
        others = sorted(entry.name for entry in root.iterdir() if entry.name not in DEMO_ENTRIES) or _unwritten(root)
        if others:  # the user's own files, kept in the demo's folder (predictions beside its photos): never removed with it
            raise OutputExistsError(f"{root} holds demo data written with other settings, and files the demo did not write "
                                    f"({', '.join(others[:5])}): the demo would remove them with its data. Move them out, "
                                    "or pick --root")
        changed = ", ".join(f"{key} {written.get(key)} -> {value}" for key, value in settings.items() if written.get(key) != value)
        backbones = any(written.get(key) != settings[key] for key in ("version", "seed", "pretrain_steps", "clip_steps"))
        print(f"note: {root} holds demo data written with other settings ({changed}): it is written again" + (
              "; its backbones change too, so checkpoints and exports trained on the earlier ones no longer fit them"
              if backbones else ""), file=sys.stderr, flush=True)
        discard(root)  # gone at once: a kill half-way through left a folder the next demo refused as not demo data
    elif root.exists():
        raise OutputExistsError(f"{root} exists but is not demo data written by mmcaption; remove it or pick --root")
    with publish_atomically(root) as staging:
        with phase(f"demo data: {train_images:,} training and {val_images:,} held-out images in the COCO layout"):
            write_coco_split(staging / "coco", "train2017", train_images, seed=seed)
            write_coco_split(staging / "coco", "val2017", val_images, seed=seed, first_image_id=train_images + 1,
                             held_out_from="train2017")
        with phase("demo data: conversations in the LLaVA layout, and a multiple-choice CSV"):
            for split in ("train2017", "val2017"):
                write_llava_split(staging / "llava", staging / "coco", split, seed=seed)
            write_multiple_choice_csv(staging / "choice_val2017.csv", staging / "coco", "val2017", seed=seed)
        with phase(f"demo backbones: a tiny language model ({pretrain_steps} pretraining steps) and a tiny CLIP "
                   f"({clip_steps} contrastive steps), saved in Hugging Face format"):
            save_tiny_backbones(
                staging / "backbones", demo_corpus(seed), seed=seed, pretrain_steps=pretrain_steps, clip_steps=clip_steps
            )
        (staging / "meta.json").write_text(json.dumps(settings))
        (staging / ".written").write_text("\n".join(sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")
                                                           if p.is_file() and p.relative_to(staging).parts[0] != "build")))
    return root


def _unwritten(root: Path) -> list[str]:
    """The files under ``root`` that the demo did not write (by its list of them; data of an earlier release, without
    one: none), mmcaption's caches of its data aside."""
    try:
        written = set((root / ".written").read_text().splitlines())
    except OSError:
        return []
    return sorted(name for path in root.rglob("*") if path.is_file() and (name := path.relative_to(root).as_posix())
                  not in written and name not in DEMO_ENTRIES and not name.startswith(CACHES))


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Say that a long phase starts, and when it is done, how long it took (flushed: a log file shows it
    as it happens)."""
    print(f"{name} ...", flush=True)
    start = time.perf_counter()
    yield
    print(f"{name}: done in {format_seconds(time.perf_counter() - start)}", flush=True)


def scalar_series(log_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of one scalar from the TensorBoard event files in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():  # a run too short to log anything (a resume one step from its end)
        return []
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in events.Scalars(tag)]


def root_arguments(root: Path) -> dict[str, list[str]]:
    """Each stage's paths under ``--root`` (the demo configs name ``demo_data/``, the default)."""
    model = ["--model.config.language_model", str(root / "backbones" / "language_model"),
             "--model.config.vision_model", str(root / "backbones" / "vision_model")]
    return {
        "caption": [*model, "--data.init_args.data_dir", str(root / "coco")],
        "instruct": [*model, "--data.init_args.train_file", str(root / "llava" / "instruct_train2017.json"),
                     "--data.init_args.val_file", str(root / "llava" / "instruct_val2017.json"),
                     "--data.init_args.image_root", str(root / "coco")],
    }


@user_errors_exit
@quieted  # no transformers bars while the tiny backbones are written ("Writing model shards")
def main(argv: list[str] | None = None) -> None:
    """The ``mmcaption-demo`` console script."""
    run_demo(argv)


def run_demo(argv: list[str] | None = None) -> dict:
    """Run the demo with command-line ``argv``; returns the report it printed."""
    parser = demo_parser()
    args, fit_args = parser.parse_known_args(argv)
    for name in ("language_steps", "clip_steps"):
        if 0 < getattr(args, name) < 4:
            parser.error(f"--{name} must be 0 (no pretraining) or at least 4")
    if typo := demo_option_typo(parser, fit_args):
        parser.error(typo)

    # the demo's own configs follow --root; a config of the user's only when --root is given
    paths = root_arguments(Path(args.root))
    stage_args = {name: paths[name] if args.root != parser.get_default("root") or config == parser.get_default(name) else []
                  for name, config in (("caption", args.caption), ("instruct", args.instruct))}
    _, checked = ckpt_path_taken(fit_args)  # --ckpt_path (the pipeline's, which resumes a stage) is no stage's setting
    # a mistyped setting, or a logger the report cannot read, is found now, not after the data is built and trained on
    for name, stage in (("caption", args.caption), ("instruct", args.instruct)):
        settings = check_command(["--config", stage, *stage_args[name], *checked], run_checks=False).config
        loggers = settings.trainer.logger if isinstance(settings.trainer.logger, list) else [settings.trainer.logger]
        if not loggers or not str(getattr(loggers[0], "class_path", "")).endswith(".TensorBoardLogger"):
            parser.error("the demo reads its report's curves from TensorBoard (trained, then a traceback without one, or "
                         "the curve 'not measured' from a CSVLogger): keep the configs' trainer.logger (another logger goes "
                         "beside it: --trainer.logger+=CSVLogger --trainer.logger.save_dir lightning_logs)")
    check_report_folder(Path(args.report))
    start = time.perf_counter()
    root = prepare_demo_assets(args.root, args.seed, args.train_images, args.val_images, args.language_steps, args.clip_steps)
    *stages, instruct = run_pipeline(args.caption, args.instruct, fit_args, stage_args=stage_args)
    caption = caption_stage(stages, args.caption, stage_args["caption"] + checked)
    scratch = None
    if args.scratch_control:  # the control: the same instruct stage without the caption stage's weights
        print("== the control: the instruct stage from scratch, without the caption stage's weights ==", flush=True)
        scratch = run_cli([
            "fit", "--config", args.instruct, *stage_args["instruct"], "--model.init_from", "null",
            "--trainer.enable_checkpointing", "false",
            "--trainer.callbacks", "[]", "--trainer.logger.init_args.name", "demo-instruct-scratch", *checked,
        ])
    training_time = time.perf_counter() - start

    with phase("held-out evaluation: captions, answers and multiple choice, each with its blind control"):
        report = evaluate(root, caption, instruct, scratch, Path(args.report))
    report["wall_time_s"] = time.perf_counter() - start
    report["training_time_s"] = training_time
    (Path(args.report) / "report.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    return report


FIT_TOP_LEVEL = ("--ckpt_path", "--seed_everything", "--config", "--print_config")  # a stage's own undotted options


def demo_option_typo(parser, fit_args: list[str]) -> str | None:
    """An undotted option the demo does not know and neither does ``fit`` (``--pretrain_steps``): the demo's own options
    near it, where ``fit`` would have named only its settings (``--trainer.min_steps``) as what was meant."""
    for arg in fit_args:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or "." in name or name in FIT_TOP_LEVEL:
            continue
        own = [option for action in parser._actions for option in action.option_strings
               if option.startswith("--") and action.help != argparse.SUPPRESS and option != "--help"]
        key = name[2:].replace("-", "_")
        if key in inspect.signature(Trainer).parameters:  # --max_steps: each stage's trainer setting
            return (f"unrecognized arguments: {name}: did you mean --trainer.{key} (each stage's trainer setting)? "
                    "mmcaption-demo --help lists the demo's own options")
        close = difflib.get_close_matches("--" + key, own, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)} (the demo's own options)? " if close else ""
        return (f"unrecognized arguments: {name}: {hint}mmcaption-demo --help lists the demo's options; each stage's "
                "settings are --trainer.*, --model.* and --data.* (mmcaption fit --help)")
    return None


def caption_stage(stages: list[StageResult], config: str, args: list[str]) -> StageResult:
    """The caption stage to evaluate. Stage 2 resumed (``--ckpt_path`` its checkpoint, as its interruption says), stage 1
    was trained by an earlier run: its weights, as stage 2 started from them, loaded without training or logging."""
    if not stages:
        raise ResumeError("the resumed stage 2 does not record the caption checkpoint it started from, or that file is "
                                "gone: the demo's report evaluates both stages; run the demo without --ckpt_path")
    if stages[0].cli is not None:
        return stages[0]
    cli = run_cli(["validate", "--config", config, *args, "--ckpt_path", stages[0].checkpoint, "--trainer.limit_val_batches",
                   "0", "--trainer.logger", "false"])
    return StageResult("caption", cli, stages[0].checkpoint)


REPORT_FILES = ("report.json", "examples.png")


def check_report_folder(folder: Path) -> None:
    """Before anything runs: the report's files may replace an earlier demo report's, never files of the
    user's that bear their names (``--report .`` beside one's own ``report.json``)."""
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"--report {folder} is a file: the report is a folder (report.json, examples.png); pick "
                                "another --report")
    check_writable(folder, "the demo's report (--report)")
    report = folder / "report.json"
    try:
        earlier = json.loads(report.read_text()) if report.is_file() else None
    except (OSError, ValueError):
        earlier = None
    ours = isinstance(earlier, dict) and {"captions", "multiple_choice", "examples_png"} <= set(earlier)
    taken = [folder / name for name in REPORT_FILES if (folder / name).exists()]
    if taken and not ours:
        raise OutputExistsError(f"{', '.join(map(str, taken))}: not an earlier demo report's, and the demo would write over "
                                "it; pick another --report folder")
    if taken:
        print(f"note: the earlier demo report in {folder} is replaced at the end of this run", file=sys.stderr, flush=True)


def evaluate(root: Path, caption: StageResult, instruct: StageResult, scratch, report_dir: Path) -> dict:
    """Held-out evaluation of both stages, with blind controls (see ``mmcaption.demo.evaluation``)."""
    scenes = {image["id"]: Scene(**image["scene"]) for image in
              json.loads((root / "coco" / "annotations" / "captions_val2017.json").read_text())["images"]}
    caption_dm = caption.cli.datamodule
    captions = evaluate_captions(caption.cli.model.tasks, caption_dm.caption_images_loader("val2017", None), scenes)
    png = render_examples(captions.pop("examples"), report_dir / "examples.png")

    instruct_dm = instruct.cli.datamodule
    answers = evaluate_answers(
        instruct.cli.model.tasks, instruct_dm.questions_loader("val", None),
        question_attributes(root / "llava" / "instruct_val2017.json"), train_answer_counts(root / "llava" / "instruct_train2017.json"),
    )
    choice_dm = MultipleChoiceDataModule(
        csv_file=str(root / "choice_val2017.csv"), tokenizer=instruct_dm.tokenizer_name,
        image_processor=instruct_dm.image_processor_name, system_prompt=instruct_dm.template.system,
        batch_size=32, num_workers=0,
    )
    choices = evaluate_choices(instruct.cli.model.tasks, choice_dm)

    # TensorBoard's step of a validation within fit is the optimizer steps done less one (Lightning's): the console's
    # "validation at step 200" was "80% exact match at step 199" here. Said as the steps done
    runs = {"from caption": instruct.cli.trainer, **({"from scratch": scratch.trainer} if scratch is not None else {})}
    curves = {name: [(step + 1, value) for step, value in scalar_series(trainer.logger.log_dir, "val/answer_exact_match")]
              for name, trainer in runs.items()}
    return {
        "captions": captions,
        "answers": answers,
        "multiple_choice": choices,
        "steps_to_80_percent": {name: steps_to_reach(curve, 0.8) for name, curve in curves.items()},
        "last_logged_step": {name: curve[-1][0] if curve else None for name, curve in curves.items()},
        "gates": {stage.name: stage.cli.model.model.gate_values() for stage in (caption, instruct)},
        "checkpoints": {stage.name: stage.checkpoint for stage in (caption, instruct)},
        "logs": {stage.name: stage.cli.trainer.logger.log_dir if stage.cli.trainer.logger else None for stage in (caption, instruct)},
        "examples_png": str(png),
    }


def print_report(report: dict) -> None:
    def pct(value: float) -> str:
        return f"{100 * value:5.1f}%"

    captions, answers, choices = report["captions"], report["answers"], report["multiple_choice"]
    print("\n== mmcaption demo: does the model see? (held-out images) ==")
    print(f"captions ({captions['images']} images): " + ", ".join(f"{k} {v:.3f}" for k, v in captions["metrics"].items()))
    print(f"  {'attribute':<10} {'seeing':>7} {'blind':>7} {'chance':>7}")
    for name, value in captions["accuracy"].items():
        print(f"  {name:<10} {pct(value):>7} {pct(captions['blind'][name]):>7} {pct(captions['chance'][name]):>7}")
    print(f"answers ({answers['questions']} questions, exact match): seeing {pct(answers['exact_match'])}, "
          f"blind {pct(answers['blind'])}, chance {pct(answers['chance'])}")
    print("  by attribute: " + ", ".join(f"{k} {pct(v)}" for k, v in answers["by_attribute"].items()))
    print(f"multiple choice: likelihood {pct(choices['likelihood'])} (blind {pct(choices['likelihood_blind'])}), "
          f"generation {pct(choices['generation'])} (blind {pct(choices['generation_blind'])}), chance {pct(choices['chance'])}")
    for name, step in report["steps_to_80_percent"].items():
        last = report["last_logged_step"][name]
        reached = f"at step {step}" if step is not None else f"not reached by step {last}" if last is not None else \
            "not measured (no validation in this run)"
        print(f"instruct stage {name}: 80% exact match {reached}")
    if "from scratch" not in report["steps_to_80_percent"]:
        print("  (to compare with the same stage from scratch: mmcaption-demo --scratch_control, the whole demo again with "
              "it, ~3 minutes longer)")
    for stage, gates in report["gates"].items():
        print(f"tanh(gate) after {stage}: " + ", ".join(f"layer {i}: {g['attn']:+.3f}" for i, g in gates.items()))
    print(f"wall time {report['wall_time_s']:.0f} s (training {report['training_time_s']:.0f} s)")
    for stage in report["checkpoints"]:
        logs = report["logs"][stage]
        print(f"{stage}: checkpoint {report['checkpoints'][stage]}" + (f", logs {logs}" if logs else " (trained before)"))
    print(f"examples: {report['examples_png']}; report: {Path(report['examples_png']).parent / 'report.json'}")
    roots = sorted({str(Path(log).parent.parent) for log in report["logs"].values() if log})  # <save_dir>/<name>/version_N
    print("TensorBoard: " + "; ".join(f"tensorboard --logdir {root}" for root in roots))  # under --trainer.default_root_dir


if __name__ == "__main__":
    main()

"""The results file of ``mmcaption validate`` and ``test``, and of each of a fit's validations that generates: the
metrics, the predictions they were computed on, and what a reader needs to compare them with another's - the split and
how much of it was scored, the images its data left out, the weights, the generation settings and how each metric was
computed (:mod:`mmcaption.evaluation.report`)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mmcaption.csv_logs import free_numbered, set_retraced_rows_aside
from mmcaption.evaluation.caption_metrics import grouped_caption_scores, metric_setup
from mmcaption.evaluation.report import checkpoint_record, generation_record, write_evaluation
from mmcaption.lightning_tools import tuners_checkpoint

_FILE_STEP = re.compile(r"-step(\d+)(?:-\d+)?\.(?:predictions\.jsonl|results\.json|coco_results\.json)$")  # a fit's validation's
_SAID_FOLDERS: set[Path] = set()  # a fit's validations' folder, said at the first of them
_SAID_CUT: list[tuple[int, int]] = []  # said once a fit (it validates again and again), by what was generated with what


def said_cut(cut: int, generated: int, generation: Any) -> None:
    """Warn (once) when validation or test texts stopped at max_new_tokens before their end: cut mid-sentence, they are
    scored as the model's whole captions or answers (long references, Localized Narratives' or detail answers')."""
    if cut and (generated, generation.max_new_tokens) not in _SAID_CUT:  # a pipeline's second stage is said too
        _SAID_CUT.append((generated, generation.max_new_tokens))
        rank_zero_warn(f"{cut} of {generated} generated texts stopped at max_new_tokens {generation.max_new_tokens} before "
                       "their end, and are scored cut: raise --model.generation.max_new_tokens for whole texts")


def scored_captions(trainer, prefix: str, captions: list) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The caption metrics of ``captions`` (image id, caption, references, file), and those of each domain's images on
    their own when the split's captions file gives its images a ``domain`` (nocaps': in-, near- and out-domain, the
    numbers papers report for it, as its evaluation server scores them)."""
    datamodule, domains = getattr(trainer, "datamodule", None), {}
    if hasattr(datamodule, "image_domains"):
        try:  # (on the first process alone: the others wait for its scores, which an error here would leave them waiting for)
            domains = datamodule.image_domains(datamodule.stage_splits()["test" if prefix == "test" else "val"])
        except (OSError, ValueError) as error:  # the file rewritten as a fit validated: its scores without the domains'
            rank_zero_warn(f"each domain's scores left out: {error}")
    return grouped_caption_scores({i: c for i, c, *_ in captions}, {i: r for i, _, r, _ in captions}, domains)


def domain_metrics(by_domain: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each domain's metrics as logged: ``<domain>/<metric>`` (``test/out-domain/CIDEr``)."""
    return {f"{domain}/{name}": value for domain, scores in by_domain.items() for name, value in scores.items() if name != "images"}


class ResumedAt(Callback):
    """Where a resumed fit's logs go on from: the step it resumed at, for its validations' results (the checkpoint they
    name, ``last.ckpt``, is saved over as the fit goes on). Resumed from one older than what its log folder holds (a kill
    after it, an ``every_n_train_steps`` checkpoint), the logs of the run that no longer exists are set aside: a
    ``CSVLogger``'s rows (:func:`~mmcaption.csv_logs.set_retraced_rows_aside`), and its validations' files after that
    step, moved to ``validations/superseded-<n>/`` (``step20`` was the dead run's, the live one's ``step20-2``, nothing
    said which)."""

    step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.step = trainer.global_step
        if not trainer.ckpt_path or tuners_checkpoint(trainer.ckpt_path):
            return
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "validations"  # (on every process: a broadcast)
        if not trainer.is_global_zero:
            return
        set_retraced_rows_aside(trainer, self.step)
        later = [file for file in folder.iterdir() if file.is_file() and (step := _FILE_STEP.search(file.name))
                 and int(step[1]) > self.step] if folder.is_dir() else []  # (the resumed step's own: the checkpoint's weights)
        if not later:
            return
        aside = free_numbered(folder, "superseded-{}")
        aside.mkdir()
        for file in later:
            os.replace(file, aside / file.name)
        print(f"note: {len(later)} files of validations after step {self.step} in {folder}, written before the run resumed "
              f"from {trainer.ckpt_path}, are moved to {aside.name}/: this run validates those steps again",
              file=sys.stderr, flush=True)


def write_results(trainer, generation: dict[str, Any], folder: Path, prefix: str, metrics: dict[str, float], captions: list,
                  answers: list, cut: int = 0, by_domain: dict[str, dict[str, float]] | None = None) -> None:
    """Write the predictions (``captions``: (image id, caption, references, file); ``answers``: (id, question,
    prediction, answer)) and the results file into ``folder``, and say where; ``cut``: how many of them generation
    stopped at max_new_tokens before their end; ``by_domain``: the metrics of each domain's images (nocaps')."""
    module, datamodule = trainer.lightning_module, getattr(trainer, "datamodule", None)
    split = datamodule.stage_splits()["test" if prefix == "test" else "val"] if hasattr(datamodule, "stage_splits") else None
    settings = dict(getattr(datamodule, "hparams", {}))
    fitting = trainer.state.fn.value == "fit"  # a fit's validation: its texts kept with its scores, a file each step
    # the step of the weights scored, as a fit's checkpoints name it (validate, test: the checkpoint's; none without one)
    step = trainer.global_step if fitting else getattr(module, "loaded_step", None) if trainer.ckpt_path else None
    if fitting and trainer.fast_dev_run:  # (a smoke test: no logs, no checkpoints, and no files in the working folder)
        return
    if fitting:  # (in TensorBoard only four captions were shown, and nothing at all with another logger); no sha256 of
        folder, weights = folder / "validations", {  # a checkpoint resumed from: last.ckpt is rewritten as it trains
            "weights": "in training", "step": trainer.global_step, "epoch": trainer.current_epoch,
            "resumed_from": trainer.ckpt_path and str(trainer.ckpt_path), "init_from": getattr(module, "init_from", None),
            "checkpoints": getattr(trainer.checkpoint_callback, "dirpath", None),  # (runs logged nowhere share one folder)
            **({"resumed_at_step": resumed[0]} if (resumed := [c.step for c in trainer.callbacks if isinstance(c, ResumedAt)])
               and trainer.ckpt_path else {})}
    else:
        weights = checkpoint_record(trainer.ckpt_path, getattr(module, "init_from", None))
        if step is not None:
            weights["step"] = step
    results: dict[str, Any] = {
        "stage": trainer.state.fn.value, "split": split, "metrics": metrics, **({"metrics_by_domain": by_domain} if by_domain else {}),
        "checkpoint": weights, "data": {"module": type(datamodule).__name__, **settings},
    }
    if captions:
        results.update(images=len(captions), references=sum(len(r) for _, _, r, _ in captions), caption_metrics=metric_setup())
    if answers:
        results["questions"] = len(answers)
    if captions or answers:
        results.update(generation=generation_record(generation), cut_at_max_new_tokens=cut)
        if empty := sum(c == "" for _, c, _, _ in captions) + sum(p == "" for _, _, p, _ in answers):  # ended at once
            results["empty"] = empty
    made = _split_record(datamodule, split)
    limits = []
    setting = "limit_test_batches" if prefix == "test" else "limit_val_batches"  # fast_dev_run sets it too
    limit = getattr(trainer, setting)
    if (isinstance(limit, int) or limit != 1.0) and _batches_cut(trainer, prefix):  # part of the split: fewer batches ran
        processes = trainer.world_size  # each process takes that many of its own share: more of the split than one does
        limits.append(f"trainer.{setting} {limit}" + (f" (batches per process, of {processes} processes: up to "
                                                     f"{limit * processes} batches)" if isinstance(limit, int) and processes > 1 else ""))
    side = "test" if prefix == "test" else "val"
    wanted = settings.get(f"{side}_caption_images")  # the first N images, when the split has more
    if captions and wanted and made.get("images", 0) > len(captions) and wanted < made["images"]:
        limits.append(f"data.{side}_caption_images {settings[f'{side}_caption_images']} (of the split's {made['images']:,} "
                      "images; CIDEr's document frequencies come from those scored)")
    asked = settings.get(f"{side}_answer_questions")
    if answers and asked and len(answers) >= asked:  # the first N questions of the split's conversations
        limits.append(f"data.{side}_answer_questions {asked} (the split's first {asked:,} questions)")
    if limits:
        results["limited_by"] = "; ".join(limits)
    if prefix == "test" and split is not None and split == datamodule.stage_splits().get("val"):  # (no test split given)
        results["note"] = ("test scored the split these data settings validate on (no test split of its own): not held "
                           "out from a best checkpoint chosen by their validation")
    if made.get("skipped"):  # records its data left out (on_bad_record skip): a 4,999-image score is not the standard 5,000
        results["left_out_of_split"] = made["skipped"]
    rows = [{"image_id": i, "file_name": f, "caption": c, "references": r} for i, c, r, f in captions]
    rows += [{"id": i, "question": q, "prediction": p, "answer": a} for i, q, p, a in answers]
    # named by that step: validate or test run on several checkpoints wrote val-<split>.*, -2, -3 (which was which
    # only inside each file)
    stem = f"{prefix}-{split or 'split'}" + (f"-step{step}" if step is not None else "")
    try:
        predictions, summary = write_evaluation(folder, stem, rows, results)
    except OSError as error:  # a full disk under the logs stops the curves, not the training (full_log_disk)
        if not fitting:
            raise
        rank_zero_warn(f"step {trainer.global_step}'s validation captions and scores were not written ({error}); training goes on")
        return
    if fitting and folder in _SAID_FOLDERS:
        return
    _SAID_FOLDERS.add(folder)
    limited = f"; {results['limited_by']}: part of the split" if "limited_by" in results else ""
    limited += f"; {results['note']}" if "note" in results else ""
    limited += f"; {results['empty']} generated texts are empty: the model ended them at once" if "empty" in results else ""
    left = (f"; its data left out {sum(made['skipped'].values()):,} bad record(s) ({', '.join(made['skipped'])})"
            if made.get("skipped") else "")
    said = f"predictions: {predictions.name}" if predictions else "the loss alone: nothing generated"
    domains = "".join(f"\n  {domain} ({scores['images']:,} images): " + ", ".join(f"{name} {value:.4f}" for name, value in
                      scores.items() if name != "images") for domain, scores in (by_domain or {}).items())
    each = f" (and each validation's after it, by its step, in {folder})" if fitting else ""
    rank_zero_info(f"{prefix} results: {summary} ({said}{limited}{left}){domains}{each}")


def _split_record(datamodule, split: str | None) -> dict[str, Any]:
    """What preprocessing recorded of ``split`` (its ``meta.json``: images, records skipped), or nothing."""
    folder = getattr(datamodule, "folders", {}).get(split) if split else None
    try:
        return json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8")) if folder else {}
    except (OSError, ValueError):
        return {}


def _batches_cut(trainer, prefix: str) -> bool:
    """Whether ``limit_val_batches`` (``limit_test_batches``) ran fewer batches than the loaders hold (a fit config's
    200, or 1 batch of the whole split: no part of it left out); true when that cannot be told."""
    side = "test" if prefix == "test" else "val"
    loaders, ran = getattr(trainer, f"{side}_dataloaders", None), getattr(trainer, f"num_{side}_batches", None)
    loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
    try:
        return any(done < len(loader) for done, loader in zip(ran, loaders, strict=True))
    except (TypeError, ValueError):  # no loader, or one without a length (an iterable dataset): as the setting says
        return True

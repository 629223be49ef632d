"""``mmcaption predict``'s output: rows written as they come, a summary (accuracies, per category,
CircularEval, VQA accuracy) beside them, and VQA's results file for its evaluation server."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from mmcaption.errors import Interrupted
from mmcaption.evaluation.answers import normalise_answer
from mmcaption.evaluation.report import (
    NAMES_AS_BYTES,
    column_value,
    json_line,
    json_text,
    partial_path,
    prediction_record,
    scores_said,
    server_results_paths,
    software_record,
    started_record,
    starts_with_bom,
    summary_path,
    unused_name,
    vqa_results_path,
    write_whole,
)
from mmcaption.evaluation.spreadsheets import finish_csv
from mmcaption.evaluation.yes_no import YesNoScores
from mmcaption.folders import output_lock
from mmcaption.resources import disk_full, rows_kept_note
from mmcaption.slurm import this_job
from mmcaption.tasks import CUT, NO_OPTION, RESULT_COLUMNS
from mmcaption.terminal import shell_word


class PredictionWriter(BasePredictionWriter):
    """Writes ``mmcaption predict`` results to the data module's ``output`` as they come, batch by
    batch (JSON Lines, or CSV for ``.csv``), into a hidden ``.<name>.partial`` beside it that is renamed
    to ``output`` at the end; at the end, a summary (rows, errors, accuracy when answers were given)
    next to it and on the console.

    Rows with a category (the data module's ``category_columns``, else a ``category`` column) add the
    accuracy per category (``per_category``: ``{name: {correct, answered, accuracy}}``; MMBench's also
    ``per_l2_category``). Rows of MMBench's CircularEval (``circular_index``, ``rotation``) add
    ``circular_accuracy``: the questions right under every rotation, a row without an answer counted wrong;
    the per-category accuracies then count questions so judged (``per_category_over``). Rows scored by
    VQA accuracy add its mean per category too (``vqa_per_answer_type``: VQAv2's yes/no, number, other).
    Questions from VQAv2's official file also give ``<output>.vqa_results.json``, the ``[{"question_id",
    "answer"}]`` its evaluation server takes (test-dev is scored there), each answer normalised as scored.

    Interrupted (Ctrl-C, SIGTERM, an error), the rows done so far are kept under ``output`` with the summary so
    far; when ``output`` held an earlier run's rows (``overwrite``), they stay, and the rows done go to
    ``<stem>.interrupted<suffix>`` instead. The data module's ``check_output`` refuses an output that is one of its inputs, or that exists
    without ``overwrite``, before anything is written.

    On several processes (DDP), each writes its share of the rows to ``<stem>.rank<r><suffix>``; at the end the first
    one puts them together in ``output``, in the input's order, and sums them up as one process would have, and the
    shares go. An interrupted run keeps its shares as they are."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.path = self.partial = None  # the output and its partial file (Path)
        self.handle = self.writer = None
        self.counts: dict[str, float] = {}
        self.late_columns: dict[int, dict[str, Any]] = {}
        self.category_columns: dict[str, str] = {}
        self.categories: dict[str, dict[str, list[int]]] = {}  # summary key -> category -> [correct, answered]
        self.questions: dict[str, tuple[bool, dict[str, str]]] = {}  # CircularEval: index -> (right so far, categories)
        self.vqa_categories: dict[str, dict[str, list[float]]] = {}  # summary key -> category -> [sum of VQA accuracies, rows]
        self.yes_no = YesNoScores()  # POPE's metrics, or MME's score, when every answer key is yes or no
        self.vqa_results: list[dict[str, Any]] | None = None
        self.official, self.replacing, self.encoding = False, False, "utf-8"
        self.first_error: str | None = None
        self.failure: str | None = None  # not one row predicted: the command exits as a user error (a script stops)
        self.submission_ids: list[int] = []
        self.share_rows: list[tuple[int | None, dict[str, Any]]] = []  # a share's rows, with their places in the input
        self.merged_from, self.expected_rows = 0, None
        self.share: dict[str, int] | None = None  # one of several processes' shares: its rank and the processes
        self.asked: Path | None = None  # the output asked for (a share's is beside it)
        self.made_by: dict[str, Any] = {}

    def on_predict_start(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        if getattr(datamodule, "output", None) is None:
            self.path = None
            if hasattr(datamodule, "output"):  # output=None: a script that takes trainer.predict's rows
                rank_zero_info("predict: no output file (data.output is None): the rows are returned, not written")
            return
        self._start(trainer, datamodule.check_output(trainer.world_size, trainer.global_rank), trainer.world_size)

    def _start(self, trainer, output: Path, processes: int) -> None:
        """Start writing ``output``: of ``processes`` processes, this one writes its share there."""
        datamodule = trainer.datamodule
        self.asked = datamodule.output
        output.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.partial = output, partial_path(output)
        self.replacing = output.exists()  # with overwrite: an interrupted run keeps the earlier output
        # A CSV of questions from Excel ("CSV UTF-8", or its "CSV", read as Windows-1252) gets the byte-order mark, ASCII or
        # not: Excel reads UTF-8 without it as the local code page ("cafÃ©"). Any other CSV gets it at its end where its text
        # is not all ASCII ("Été/" in a name, a caption's "café": finish_csv)
        read_as_1252, rows = datamodule.encoding_notes(), getattr(getattr(datamodule, "dataset", None), "rows", None) or []
        excel = read_as_1252 or any(starts_with_bom(f) for f in datamodule.input_files())
        self.encoding = "utf-8-sig" if output.suffix.lower() == ".csv" and excel else "utf-8"
        self.writer = None
        self.late_columns: dict[int, dict[str, Any]] = {}  # CSV row -> its values of columns added after the header
        self.counts = {"rows": 0, "errors": 0, "no_option": 0, "answered": 0, "correct": 0, "unanswered": 0}
        self.first_error = self.failure = None
        self.share_rows, self.merged_from = [], 0
        self.share = {"rank": trainer.global_rank, "processes": processes} if processes > 1 else None
        self.made_by = {**prediction_record(trainer), "software": software_record()}  # in the summary; a resume checks it
        if this_job():  # a requeued SLURM job goes on from what it left (check_output)
            self.made_by["slurm_job"] = this_job()
        self.category_columns = dict(getattr(datamodule, "category_columns", None) or {"per_category": "category"})
        # files of the input left out, and why; tables read as Windows-1252
        self.input_notes = [*(getattr(datamodule, "input_notes", None) or []), *read_as_1252]
        self.categories, self.questions, self.vqa_categories, self.yes_no = {}, {}, {}, YesNoScores()
        # CircularEval: each question's passes in the input, and how many of them are done
        self.passes = Counter(str(r["circular_index"]) for r in rows if isinstance(r, dict) and r.get("circular_index") not in (None, ""))
        self.passes_done: Counter[str] = Counter()
        # VQAv2's official questions (COCO's image-info file: test2017's, nocaps'): the answers (captions) as its evaluation
        # server takes them, written with the whole output (by the first of several processes, once it has put their shares
        # together); a previous run's file goes now - or, when its output is being replaced, once this run has finished
        self.server = "vqa" if getattr(datamodule, "official_vqa", False) else "coco" if getattr(datamodule, "coco_image_ids", False) else None
        official = self.official = self.server is not None
        self.vqa_results = [] if official and processes == 1 else None
        self.submission_ids = datamodule.submission_question_ids() if self.server == "vqa" and processes == 1 else []
        if official and not self.replacing and processes == 1:
            [path.unlink(missing_ok=True) for path in server_results_paths(output)]
        dataset = getattr(datamodule, "dataset", None)  # one row each; several processes each answer a share
        self.expected_rows = len(dataset) if dataset is not None and processes == 1 else None
        # the files last, once the summary has all it needs (a signal during git's status left a hidden empty partial file)
        started_record(output).write_text(json_text(self.made_by), encoding="utf-8")  # a killed run leaves no summary
        self.handle = self.partial.open("w", newline="", encoding=self.encoding, errors=NAMES_AS_BYTES)
        if getattr(datamodule, "done", None):  # resume: the interrupted run's rows come first, and count in the summary
            self._go_on_from(output, datamodule.done)

    def _go_on_from(self, output: Path, done: list[dict[str, Any]]) -> None:
        try:  # the release that made the first rows, when another made them (a resume after an upgrade)
            made_by = json.loads(summary_path(output).read_text(encoding="utf-8")).get("made_by", {})
        except (OSError, ValueError, AttributeError):
            made_by = {}
        earlier = made_by.get("first_rows_software") or made_by.get("software")  # resumed before: the first release
        if earlier and {k: v for k, v in earlier.items() if k != "rows"} != self.made_by["software"]:
            self.made_by["first_rows_software"] = {"rows": earlier.get("rows", len(done)), **earlier}
        self.handle.close()
        shutil.copyfile(output, self.partial)
        self.handle = self.partial.open("a", newline="", encoding=self.encoding, errors=NAMES_AS_BYTES)  # no second mark
        if output.suffix.lower() == ".csv":  # the rows read back have the file's columns, in its order
            self.writer = csv.DictWriter(self.handle, fieldnames=list(done[0]), extrasaction="ignore")
        for row in done:
            self._count(row)
        self.counts["resumed_after"] = len(done)
        self.replacing = False  # stopped again, the rows of both runs are in the partial file: it takes output's place

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        if self.path is None:
            return
        if self.share:  # kept for the first process, which puts the shares together (on another node, maybe)
            places = batch_indices if batch_indices is not None and len(batch_indices) == len(prediction) else [None] * len(prediction)
            self.share_rows.extend(zip(places, prediction))
        self._write(prediction)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._count(row)
            if self.path.suffix.lower() == ".csv":
                if self.writer is None:
                    # the result columns this task writes (a caption: none but error): a later row's own are added at the end
                    columns = [c for c in row if c not in RESULT_COLUMNS] + [c for c in RESULT_COLUMNS if c in row or c == "error"]
                    self.writer = csv.DictWriter(self.handle, fieldnames=columns, extrasaction="ignore")
                    self.writer.writeheader()
                values = {k: json_text(v) if isinstance(v, list) else v for k, v in row.items()}
                late = {k: v for k, v in values.items() if k not in self.writer.fieldnames}
                if late:  # a column the first row did not have: kept, and added to the header at the end
                    self.late_columns[self.counts["rows"] - 1] = late
                self.writer.writerow(values)
            else:
                self.handle.write(json_line(row))
        self.handle.flush()

    def vqa_results_path(self, output: Path) -> Path:
        return vqa_results_path(output, getattr(self, "server", None))

    def _count(self, row: dict[str, Any]) -> None:
        self.counts["rows"] += 1
        for key in [CUT] * (row.get(CUT) not in (None, "", False, "False")) + ["empty"] * (  # (CSV's: "True"); a text the
                row.get("caption", row.get("prediction")) == "" and not row.get("error")):  # model ended at once
            self.counts[key] = self.counts.get(key, 0) + 1
        if self.vqa_results is not None:  # an unanswered question (unreadable image) still needs its entry
            self.vqa_results.append({"image_id": int(row["image_id"]), "caption": row.get("caption") or ""} if self.server == "coco"
                                    else {"question_id": row["question_id"], "answer": normalise_answer(row.get("prediction") or "", official=True)})
        if row.get("error"):  # no image, or (by generation) an answer that names no option: wrong, but predicted
            failed = not str(row["error"]).startswith(NO_OPTION)
            self.counts["errors" if failed else "no_option"] += 1
            self.first_error = self.first_error or (str(row["error"]) if failed else None)
        if row.get("correct") is not None:  # rows with a reference answer; those given none count as wrong
            self.yes_no.add(row)
            self.counts["answered"] += 1
            self.counts["correct"] += int(row["correct"])
            self.counts["unanswered"] += int(row.get("prediction") is None)
        groups = {key: str(value).strip() for key, column in self.category_columns.items()
                  if str(value := column_value(row, column)).strip() and value is not None}
        if row.get("vqa_accuracy") is not None:
            self.counts["vqa_scored"] = self.counts.get("vqa_scored", 0) + 1
            self.counts["vqa_accuracy_sum"] = self.counts.get("vqa_accuracy_sum", 0.0) + row["vqa_accuracy"]
            for key, name in groups.items():  # e.g. VQAv2's answer types: [sum of accuracies, questions]
                sums = self.vqa_categories.setdefault(key, {}).setdefault(name, [0.0, 0])
                sums[0], sums[1] = sums[0] + row["vqa_accuracy"], sums[1] + 1
        if row.get("correct") is None:
            return
        if row.get("circular_index") not in (None, ""):  # a question is right if every rotation of it is
            right, _ = self.questions.get(str(row["circular_index"]), (True, groups))
            self.questions[str(row["circular_index"])] = (right and bool(row["correct"]), groups)
            self.passes_done[str(row["circular_index"])] += 1
        else:
            self._tally(self.categories, groups, bool(row["correct"]))

    @staticmethod
    def _tally(categories: dict[str, dict[str, list[int]]], groups: dict[str, str], right: bool) -> None:
        for key, name in groups.items():
            counts = categories.setdefault(key, {}).setdefault(name, [0, 0])
            counts[0], counts[1] = counts[0] + int(right), counts[1] + 1

    def summary(self) -> dict[str, Any]:
        summary = dict(self.counts, output=str(self.path))
        if self.counts["answered"]:  # rows scored against their answer key
            summary["accuracy"] = self.counts["correct"] / self.counts["answered"]
        else:  # no answer key (captions, questions without answers): "answered": 0 read as nothing answered
            [summary.pop(key) for key in ("answered", "correct", "unanswered")]
        summary.update(self.yes_no.summary(self.counts["answered"]))  # a yes/no set: POPE's numbers, or MME's score
        if self.counts.get("vqa_scored"):
            summary["vqa_accuracy"] = summary.pop("vqa_accuracy_sum") / self.counts["vqa_scored"]
        for key, sums in self.vqa_categories.items():
            summary[f"vqa_{key}"] = {name: {"vqa_accuracy": total / n, "questions": n} for name, (total, n) in sorted(sums.items())}
        categories = self.categories
        # a question is judged once every pass of it is done: a run stopped midway has some half asked
        judged = {key: value for key, value in self.questions.items() if self.passes_done[key] >= self.passes.get(key, 0)}
        if judged:
            right = sum(r for r, _ in judged.values())
            summary.update(circular_questions=len(judged), circular_correct=right, circular_accuracy=right / len(judged))
            categories = {}
            for r, groups in judged.values():
                self._tally(categories, groups, r)
        if len(judged) < len(self.questions):
            summary["circular_unfinished"] = len(self.questions) - len(judged)
        for key in self.category_columns:
            if categories.get(key):
                summary[key] = {name: {"correct": c, "answered": n, "accuracy": c / n} for name, (c, n) in sorted(categories[key].items())}
        if any(key in summary for key in self.category_columns):
            summary["per_category_over"] = "questions, right only if every rotation is (CircularEval)" if self.questions else "rows"
        if self.input_notes:  # what the console said of the input, kept where a batch job's results are read
            summary["input_notes"] = self.input_notes
        summary["made_by"] = self.made_by
        return summary

    def _finish(self, interrupted: BaseException | None = None, stopped: str | None = None, announce: bool = True) -> None:
        """Close the partial file and put it in place (with what was written, when interrupted or ``stopped``
        short of the input's end by a setting); then let another run have the output."""
        if self.path is None:
            return
        lock = output_lock(self.path)  # the data module's check_output took it
        if self.handle is None:  # stopped before the output was begun (or put in place already)
            lock.release()
            return
        try:
            self._put_in_place(interrupted, stopped, announce)
        finally:
            lock.release()

    def _put_in_place(self, interrupted: BaseException | None, stopped: str | None, announce: bool = True) -> None:
        self.handle.close()
        self.handle = None
        started_record(self.path).unlink(missing_ok=True)  # the summary says it now
        summary = self.summary()
        why = stopped or interrupted and (signal.Signals(interrupted.signum).name if isinstance(interrupted, Interrupted)
                                          else type(interrupted).__name__)
        if why and not summary["rows"]:
            self.partial.unlink(missing_ok=True)
            rank_zero_info(f"predict stopped ({why}) before any row was done; {self.path} not written")
            return
        if self.path.suffix.lower() == ".csv":  # the columns later rows added, the mark for a caption's "café" of ASCII input
            finish_csv(self.partial, self.encoding, self.late_columns, RESULT_COLUMNS)
        earlier = ""
        if why and self.replacing:  # the complete output of an earlier run stays
            earlier = f" ({self.path}, from an earlier run, is unchanged)"
            self.path = unused_name(self.path.with_name(f"{self.path.stem}.interrupted{self.path.suffix}"))
        for earlier_record in (summary_path(self.path), *server_results_paths(self.path)):  # an earlier run's, never left
            earlier_record.unlink(missing_ok=True)  # beside these rows (a kill next left both, resume called them complete)
        os.replace(self.partial, self.path)
        summary["output"] = str(self.path)
        if why:  # what resume goes on from
            summary["interrupted"] = why
        if self.merged_from:
            summary["processes"] = self.merged_from
        if self.share:  # what a resume on one device puts together
            summary["share"] = self.share
        write_whole(summary_path(self.path), json_text(summary, indent=2))
        failed = bool(summary["rows"]) and summary["errors"] == summary["rows"]  # no server file of blanks: submissions count
        if self.vqa_results is not None and not why and not failed:
            asked = {entry.get("question_id") for entry in self.vqa_results}  # (COCO's: none to pad, submission_ids empty)
            padding = [{"question_id": q, "answer": ""} for q in self.submission_ids if q not in asked]
            write_whole(self.vqa_results_path(self.path), json.dumps(self.vqa_results + padding))
            self.counts["vqa_results_padded"] = len(padding)
        elif not why and (self.official or self.replacing or failed):  # several processes, other questions in place of an earlier
            [path.unlink(missing_ok=True) for path in server_results_paths(self.path)]  # VQAv2 run's output: none of its results
        message = f"predictions: {summary['rows']} rows -> {self.path}"
        if self.merged_from:
            message += f" (the shares of {self.merged_from} processes, put together)"
        if "resumed_after" in summary:
            message += f" (the first {summary['resumed_after']} from the interrupted run)"
            stem, _, rest = self.path.name.partition(".interrupted")  # (a second interrupted run's: .interrupted-2)
            meant = self.path.with_name(stem + rest.lstrip("-0123456789"))
            if not why and meant != self.path:  # an interrupted --data.overwrite run's rows, completed: where they were going
                beside = f" and {self.vqa_results_path(self.path).name}" if self.vqa_results is not None else ""
                message += f"; complete now: rename it (and its .summary.json{beside}) to {meant.name} to put it in place of the earlier output"
        if why and self.share:  # resume goes on from one output, which these shares are not
            message = (f"predict stopped ({why}); each process keeps the rows it did in its share ({summary['rows']} in "
                       f"{self.path}{earlier}, the first); ")
            message += (f"{self.asked}, from an earlier run, is unchanged: to go on from the shares, move it away and run the "
                        "same command on one device (--trainer.devices 1) with --data.resume true in place of --data.overwrite "
                        "true") if self.asked is not None and self.asked.exists() else (
                        "the same command with --data.resume true on one device (--trainer.devices 1) puts them together "
                        "and goes on from them")
        elif why:
            message = f"predict stopped ({why}); the {summary['rows']} rows done are kept -> {self.path}{earlier}"
            message += (f"; the same command with --data.output {shell_word(self.path)} --data.resume true, in place of --data.overwrite "
                        "true, goes on from them") if earlier else "; the same command with --data.resume true goes on from them"
        message += scores_said(summary, [key for key in self.category_columns if key in summary])
        if self.vqa_results is not None and not why and not failed:
            message += ("\n  captions for an evaluation server - COCO's, nocaps', VizWiz's ([{image_id, caption}]): " if self.server == "coco" else
                        "\n  answers for VQA's evaluation server ([{question_id, answer}], normalised as scored): ") + str(self.vqa_results_path(self.path))
            if self.submission_ids:
                message += f" ({self.counts['vqa_results_padded']} questions not asked here given an empty answer, as the server wants all)"
        if announce:  # the whole output (not one process's share)
            rank_zero_info(message)
            if not why and failed:
                self.failure = (f"not one of the {summary['rows']} rows could be predicted (the first: {self.first_error}); "
                                f"{self.path} holds their errors")

    def on_predict_end(self, trainer, pl_module) -> None:
        if trainer.world_size > 1 and self.path is not None:
            share = self.path
            self._finish(announce=False)  # this process's share, in its own file until the output is whole
            shares: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, self.share_rows)  # the rows themselves: a node may not see another's files
            whole = False
            try:
                if trainer.is_global_zero:
                    self._put_together(trainer, shares)
                    whole = True
            finally:  # the others wait for it, also when it fails; each removes its share once the output is whole
                whole = trainer.strategy.broadcast(whole, src=0)
            if whole:
                share.unlink(missing_ok=True)
                summary_path(share).unlink(missing_ok=True)
            return
        self._end(trainer)

    def _end(self, trainer) -> None:
        # a setting that asks fewer batches than the input has (fast_dev_run, limit_predict_batches): said, and the output
        # is left as an interrupted one, which resume completes; it was written and summed up as the whole input's
        short = self.expected_rows is not None and self.counts["rows"] < self.expected_rows
        setting = (f"trainer.fast_dev_run {trainer.fast_dev_run}" if trainer.fast_dev_run
                   else f"trainer.limit_predict_batches {trainer.limit_predict_batches}")
        self._finish(stopped=f"{setting}: {self.counts['rows']} of {self.expected_rows} rows asked" if short else None)

    def _put_together(self, trainer, shares: list[list[tuple[int | None, dict[str, Any]]]]) -> None:
        """The processes' shares as one output, in the input's order (each row's place, as Lightning's
        sampler gave it), written and summed up as one process would have."""
        rows = [pair for share in shares for pair in share]
        if all(place is not None for place, _ in rows):
            rows.sort(key=lambda pair: pair[0])
        else:
            rank_zero_info(f"note: Lightning gave no row places, so {trainer.datamodule.output} holds the processes' shares one "
                           "after the other, not in the input's order")
        self._start(trainer, trainer.datamodule.check_output(), processes=1)
        self.merged_from = len(shares)
        self._write([row for _, row in rows])
        self._end(trainer)  # as one process: a short input is said, and kept as interrupted

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        writing = self.path is not None and self.handle is not None
        try:
            self._finish(interrupted=exception)
        except OSError as error:  # the disk full: the rows stay in the partial file, which a resume goes on from
            if disk_full(error) is None:
                raise
        if writing:  # a full disk: "run the same command again" was then refused
            rows_kept_note(exception, self.partial, self.path, resumable=not (self.replacing or self.share))

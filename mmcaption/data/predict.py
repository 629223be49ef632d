"""What ``mmcaption predict`` reads: images to caption, or multiple-choice questions: a CSV in the original
scripts' format, MMBench's TSV or ScienceQA's ``problems.json`` (:mod:`mmcaption.data.benchmarks`).

A bad image does not stop a run: its row carries the error into the output and the other rows are predicted. A bad
file (no images found, a CSV without the required columns, a row that does not fit its header, an answer that names no
option) stops it at once with a message that names the file and its line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Subset

from mmcaption.data.base import BackbonesDataModule
from mmcaption.data.benchmarks import (
    ChoiceQuestion,
    EmbeddedImage,
    circular_passes,
    read_mmbench_tsv,
    read_scienceqa,
    scienceqa_image_root,
    sniffed_format,
)
from mmcaption.data.caption_files import captioned_images
from mmcaption.data.choice_csv import read_choice_csv
from mmcaption.data.encodings import windows_1252_note
from mmcaption.data.image_sources import image_paths
from mmcaption.data.mme import mme_root
from mmcaption.data.records import missing_file
from mmcaption.data.resume import (
    check_made_alike,
    complete_rows,
    finished_rows,
    interrupted_rows,
    keep_killed_rows_aside,
    killed_run_advice,
    left_by_job,
    output_exists_advice,
    put_shares_together,
    recover_killed,
    refuse_a_finished_output,
)
from mmcaption.data.vqa_formats import public_image_root, read_aokvqa_choices, read_seedbench
from mmcaption.errors import AlreadyDone, ConfigError, NotWritableError, OutputExistsError
from mmcaption.evaluation.report import partial_path, prediction_record, server_results_paths, summary_path
from mmcaption.file_spellings import is_dir, is_file
from mmcaption.folders import check_names_fit, output_lock
from mmcaption.images import blank_pixels, check_image, load_rgb, local_file, processor_side
from mmcaption.prompts import DEFAULT_SYSTEM, ConversationTemplate, caption_prompt_ids, choice_prompts
from mmcaption.slurm import requeued, this_job
from mmcaption.terminal import shell_word

OUTPUT_SUFFIXES = (".csv", ".jsonl")  # what the prediction writer writes: CSV for .csv, JSON Lines for the rest


class _ImageRows(Dataset):
    """Rows with an image each (a file, or the bytes the questions file carries); an image that cannot be
    read yields the row with its error."""

    def __init__(self, rows: list[dict[str, Any]], image_paths: list[Path | EmbeddedImage], image_processor) -> None:
        self.rows, self.image_paths, self.image_processor = rows, image_paths, image_processor
        self.blank = blank_pixels(image_processor)  # a row whose image cannot be read: batched with the others, not used

    def __len__(self) -> int:
        return len(self.rows)

    def text(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.image_paths[index]
        error, data = None, b""
        if isinstance(path, Path) and not is_file(path):
            error = (f"{path} is a folder, not an image: give the folder itself as --data.images, or list its images"
                     if is_dir(path) else f"image not found: {path}")
        else:
            try:
                data = path.read_bytes() if isinstance(path, Path) else path.data  # embedded, or downloaded
            except OSError as failure:  # a download that failed, said with its URL
                error = str(failure)
            problem = None if error else check_image(data)
            if problem is not None:
                error = f"image {path} cannot be decoded: {problem}"
        pixel_values = self.blank if error else \
            self.image_processor(images=load_rgb(data, processor_side(self.image_processor)), return_tensors="pt")["pixel_values"][0]
        return {"record": self.rows[index], "error": error, "pixel_values": pixel_values, **self.text(index)}


class _CaptionRows(_ImageRows):
    def __init__(self, images: list[tuple[str | dict[str, Any], Path]], image_processor, prompt_ids: list[int]) -> None:
        rows = [row if isinstance(row, dict) else {"image": row} for row, _ in images]  # a name, or a row with its id
        super().__init__(rows, [path for _, path in images], image_processor)
        self.earlier_names = None if any("image_id" in row for row in rows) else [  # (none for a COCO image-info file's
            {"image": str(path)} for _, path in images]  # rows) as earlier releases named them: gone on from
        self.prompt_ids = torch.tensor(prompt_ids)

    def text(self, index: int) -> dict[str, Any]:
        return {"task": "caption", "input_ids": self.prompt_ids}


class _ChoiceRows(_ImageRows):
    def __init__(self, rows, image_paths, image_processor, prompts: list[list[int]], option_ids: list[list[list[int]]],
                 options: list[list[str]], method) -> None:
        super().__init__(rows, image_paths, image_processor)
        self.prompts, self.option_ids, self.options, self.method = prompts, option_ids, options, method

    def text(self, index: int) -> dict[str, Any]:
        return {"task": f"choice-{self.method}", "input_ids": torch.tensor(self.prompts[index]),
                "option_ids": self.option_ids[index], "options": self.options[index]}


class _PredictDataModule(BackbonesDataModule):
    """Shared by all: tokenizer, image processor, the output path the prediction writer uses.

    Args:
        resume: go on from the output an interrupted predict left (Ctrl-C, a job's time limit): its rows are
            kept and not asked again, the others are added. Refused when that output is complete or holds
            another input's rows; with no output yet, predict starts at the first row.
    """

    def __init__(self, output: str | None, batch_size: int, overwrite: bool = False, resume: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        if output is None and resume:
            raise ConfigError("resume goes on from an output: give the output an interrupted predict left")
        # None (a script's): trainer.predict returns the rows, and nothing is written
        self.output = None if output is None else Path(output)
        self.batch_size, self.overwrite, self.resume = batch_size, overwrite, resume
        self.dataset: Dataset | None = None
        self.done: list[dict[str, Any]] = []  # with resume: the rows the interrupted run wrote
        self.finished_before: int | None = None  # a requeued SLURM job's: the rows its finished run wrote

    def input_files(self) -> list[Path]:
        """The files this module reads, which its output must never be."""
        raise NotImplementedError

    def encoding_notes(self) -> list[str]:
        """The notes of the input tables read as Windows-1252 (Excel's plain "CSV"), kept in the output's summary."""
        return [note for file in self.input_files() if (note := windows_1252_note(file))]

    def output_path(self, world_size: int = 1, rank: int = 0) -> Path:
        """Where this process writes: ``output``, or ``<stem>.rank<r><suffix>`` for each of several processes."""
        if world_size > 1:
            return self.output.with_name(f"{self.output.stem}.rank{rank}{self.output.suffix}")
        return self.output

    def check_output(self, world_size: int = 1, rank: int = 0) -> Path | None:
        """The output path, after refusing one that is an input (the same file by another name too: another case on macOS
        or Windows), exists without ``overwrite``, or whose folder cannot be written. Before anything loads, and by the writer."""
        if self.output is None:
            return None
        output = self.output_path(world_size, rank)
        check_names_fit(output)
        for source in self.input_files():
            if source.exists() and (output.resolve() == source.resolve() or output.exists() and output.samefile(source)):
                raise OutputExistsError(f"output {output} is the input {source}: predict never writes over its input; "
                                        "choose another --data.output")
        if output.is_dir():
            raise OutputExistsError(f"output {output} is a folder; --data.output names the file to write")
        if output.suffix.lower() not in OUTPUT_SUFFIXES:  # .tsv, .xlsx, .json, .txt would hold JSON Lines under their name
            why = "to a file, not to the terminal (where its progress and summary go)" if str(self.output) in ("-", "/dev/stdout") \
                else f"and a {output.suffix or 'name without a suffix'} would not be what its name says"
            raise ConfigError(f"output {output}: predict writes rows as a table (.csv, which spreadsheets open) or as JSON "
                              f"Lines (.jsonl, one object per line), {why}; choose another --data.output")
        if self.resume and self.overwrite:
            interrupted = sorted(output.parent.glob(f"{output.stem}.interrupted*{output.suffix}"))
            hint = f"; an interrupted --data.overwrite run kept its rows in {interrupted[-1]}: give it as --data.output" \
                if interrupted else ""
            raise ConfigError(f"--data.resume true goes on from an interrupted output and --data.overwrite true starts it "
                              f"afresh: give one of them{hint}")
        if self.resume and world_size > 1:
            raise ConfigError("resume runs on one device (--trainer.devices 1); it goes on from an interrupted run on "
                              "several processes too, putting their shares together first")
        left = output.exists() or partial_path(output).is_file()
        if left and world_size == 1 and not (self.overwrite or self.resume) and requeued() and left_by_job(output) == this_job():
            # SLURM ran this job's command again (a lost node, scontrol requeue): the same run, which goes on
            self.finished_before = finished_rows(output)  # or had finished: said once the input's rows are known
            if self.finished_before is None:
                rank_zero_info(f"note: SLURM requeued this job (restart {os.environ['SLURM_RESTART_COUNT']}): it goes on from "
                               f"the rows it left in {output if output.exists() else partial_path(output)}")
            self.resume = True
        for written in (output, self.output) if world_size > 1 else (output,):  # several processes: their shares, put
            if written.exists() and not (self.overwrite or self.resume):  # together in output at the end
                raise OutputExistsError(output_exists_advice(written, share=written != self.output))
        beside = [(path, written) for written in {output, self.output} for path in (summary_path(written), *server_results_paths(
                  written)) if path.exists() and not written.exists()]  # (an output there: refused above)
        if beside and not (self.overwrite or self.resume):  # the output moved away, its summary left: was replaced unsaid
            raise OutputExistsError(f"{beside[0][0]} exists without {beside[0][1]}, and this run would write its own there: "
                                    "move it with the output it belongs to, or replace it with --data.overwrite true")
        folder = next((p for p in [output.parent, *output.parent.parents] if p.exists()), Path("."))
        if not folder.is_dir():  # "afile/caps.jsonl": not a question of permissions
            raise NotWritableError(f"cannot write the output {output}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise NotWritableError(f"cannot write the output {output}: {folder} is not writable")
        output_lock(output).acquire()  # held while this run writes it
        if partial_path(output).is_file() and not self.resume:  # the lock is ours: no run writes it
            if not complete_rows(output):  # a run killed before its first row (out of memory at once)
                partial_path(output).unlink()
            elif self.overwrite:  # started afresh, as asked: the killed run's rows kept aside, not written over
                rank_zero_info(keep_killed_rows_aside(output))
            else:
                raise OutputExistsError(killed_run_advice(output, share=world_size > 1))
        if self.resume and world_size == 1 and self.finished_before is None and finished_rows(output) is not None \
                and (rows := self.rows_before_loading()) is not None:  # said before the model loads, not a minute after
            refuse_a_finished_output(output, rows)
        return output

    def rows_before_loading(self) -> list[dict[str, Any]] | None:
        """This input's rows, where they are had cheaply before the model loads (None: not here)."""
        return None

    def predict_dataloader(self) -> DataLoader:
        processes = self.trainer.world_size if self.trainer is not None else 1
        if len(self.dataset) < processes:  # Lightning's sampler asserts, and the other processes hang up
            raise ConfigError(f"{len(self.dataset)} row(s) to predict for {processes} processes, which need one each at "
                              f"least: predict with --trainer.devices {len(self.dataset)}")
        if self.trainer is not None:  # before the loader is made (a requeued job goes on): the CLI checked it, the API not
            self.check_output(processes, self.trainer.global_rank)
        now = prediction_record(self.trainer) if self.resume and self.trainer is not None else None
        if self.resume and processes == 1 and (put_together := put_shares_together(self.output, self.dataset.rows, now)):
            rank_zero_info(f"resume: {put_together}")
        if self.resume and processes == 1 and (recovered := recover_killed(self.output, self.dataset.rows, now)):
            rank_zero_info(f"resume: {recovered}")
        if self.resume and self.output.exists():
            if self.finished_before == len(self.dataset.rows):  # requeued after it finished: the job script goes on
                output_lock(self.output).release()  # nothing written: its lock ends here, with nothing left beside it
                raise AlreadyDone(f"SLURM requeued this job (restart {os.environ.get('SLURM_RESTART_COUNT')}) after this "
                                  f"predict had finished: {self.output} holds its {self.finished_before} rows, kept as they are")
            self.done, to_go = interrupted_rows(self.output, self.dataset.rows, getattr(self.dataset, "earlier_names", None))
            if now is not None:
                check_made_alike(self.output, now)
            rank_zero_info(f"resume: the {len(self.done)} rows of {self.output} are kept; {len(to_go)} to go")
            return self.generation_loader(Subset(self.dataset, to_go), self.batch_size)
        return self.generation_loader(self.dataset, self.batch_size)


class CaptionPredictDataModule(_PredictDataModule):
    """Caption images: ``mmcaption predict`` writes one JSON line per image to ``output``.

    Args:
        images: a folder of images (recursive), a text file listing image paths, one image, or a COCO image-info file
            (``image_info_test2017.json``, nocaps' test set: its images captioned under their ids, and
            ``<output>.coco_results.json`` written for the evaluation server).
        output: the JSON Lines file to write (``{"image": ..., "caption": ...}`` or ``"error"``; ``image`` as the user
            named it: a list's line as written, the image given, or its path in the folder given); None (a script's
            own Trainer): nothing written, ``trainer.predict`` returns the rows.
        caption_prompt: the caption stage's prompt (empty: none; None: the one the model was trained with, which
            ``mmcaption predict`` reads from its checkpoint or export, else none).
        batch_size: images per batch.
        overwrite: replace ``output`` if it exists (by default an existing output is refused).
    """

    def __init__(self, images: str, output: str | None = "predictions/captions.jsonl", caption_prompt: str | None = None,
                 batch_size: int = 16, overwrite: bool = False, **kwargs: Any) -> None:
        super().__init__(output, batch_size, overwrite, **kwargs)
        self.save_hyperparameters()
        self.images, self.caption_prompt = images, "" if caption_prompt is None else caption_prompt
        self.hparams["caption_prompt"] = self.caption_prompt  # what asked it, in the summary
        self.piped: dict[str, bytes] = {}  # an image list piped in, read when checked and kept for setup

    def input_files(self) -> list[Path]:
        return [Path(self.images)] if Path(self.images).is_file() else []

    def check_inputs(self, stage: str = "predict") -> None:
        captioned_images(self.images, None, self.piped)

    def rows_before_loading(self) -> list[dict[str, Any]]:
        return [row for row, _ in captioned_images(self.images, None, self.piped)]

    def setup(self, stage: str) -> None:
        self.input_notes: list[str] = []  # said now, and kept in the output's summary

        def note(text: str) -> None:
            rank_zero_info(text)
            self.input_notes.append(text)
        images = captioned_images(self.images, note, self.piped)  # each row named as the user named it (and its id)
        self.coco_image_ids = any("image_id" in row for row, _ in images)  # a COCO image-info file: COCO results written too
        prompt = caption_prompt_ids(self.tokenizer, self.caption_prompt)
        self.dataset = _CaptionRows(images, self.image_processor, prompt)


FORMATS = {"csv": "multiple-choice CSV", "mmbench": "MMBench TSV", "scienceqa": "ScienceQA problems.json (or parquet file)",
           "aokvqa": "A-OKVQA file (aokvqa_v1p0_<split>.json)", "seedbench": "SEED-Bench file (SEED-Bench.json)"}
FORMAT_CONFIGS = {"csv": "multiple_choice", **{name: name for name in FORMATS if name != "csv"}}  # configs/predict/<name>.yaml


class MultipleChoiceDataModule(_PredictDataModule):
    """Answer multiple-choice questions: a CSV in the original scripts' format (``img_path, Question, A, B,
    C, D`` and optionally ``answer``), MMBench's TSV, ScienceQA's ``problems.json``, A-OKVQA's or SEED-Bench's file;
    ``mmcaption predict`` writes the questions back with the chosen letter and, with answers, reports accuracy, per
    category where the rows have one, and under MMBench's CircularEval with ``circular``.

    Args:
        csv_file: the questions: the CSV, the MMBench TSV, ScienceQA's ``problems.json`` (or one split's
            parquet file of its Hugging Face copy), A-OKVQA's or SEED-Bench's file (see ``format``).
        image_root: folder that ``img_path`` is relative to (default: the CSV's folder); for ScienceQA, the
            folder of ``<split>/<id>/image.png`` (default: ``images`` beside ``problems.json``, else its folder);
            for a parquet file's images that are files' paths (``datasets``' ``to_parquet``), of the relative ones.
        output: the CSV to write: the input columns, ``prediction``, ``correct`` and ``error``; None: nothing written
            (``trainer.predict`` returns the rows).
        method: ``likelihood`` scores each option's text given image and question (robust);
            ``generation`` lists the options and generates a letter (the original scripts' way).
        system_prompt: the instruct stage's system prompt (None: the one the model was trained with, which ``mmcaption
            predict`` reads from its checkpoint or export, else LLaVA's).
        batch_size: questions per batch.
        overwrite: replace ``output`` if it exists (by default an existing output is refused; the input
            CSV itself is always refused).
        format: ``csv`` (the original scripts'), ``mmbench`` (its TSV, base64 images, or a parquet file of its
            Hugging Face copy; accuracy per ``category`` and ``l2-category``), ``scienceqa`` (its IMG
            questions; accuracy per ``subject`` and ``grade``), ``aokvqa`` (its multiple-choice task) or
            ``seedbench`` (``SEED-Bench.json``'s image questions, images in ``SEED-Bench-image/``, or a parquet
            file of its Hugging Face copy; accuracy per question type as ``category``).
        split: ScienceQA only: the split whose questions with an image are read (``null``: every split;
            the mini splits with ``pid_splits.json`` beside ``problems.json``; a parquet file is one split).
        circular: MMBench's CircularEval: a question with N options is asked N times, its options rotated,
            and is right only if every rotation is; the summary adds ``circular_accuracy`` (on several processes,
            once their shares are put together).
    """

    stage_needed = "instruct"

    def __init__(
        self,
        csv_file: str,
        image_root: str | None = None,
        output: str | None = "predictions/answers.csv",
        method: Literal["likelihood", "generation"] = "likelihood",
        system_prompt: str | None = None,
        batch_size: int = 8,
        overwrite: bool = False,
        format: Literal["csv", "mmbench", "scienceqa", "aokvqa", "seedbench"] = "csv",
        split: str | None = "test",
        circular: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(output, batch_size, overwrite, **kwargs)
        self.save_hyperparameters()
        if format not in FORMATS:
            raise ConfigError(f"format {format!r} is not one of {', '.join(FORMATS)}")
        self.csv_file, self.image_root = local_file(Path(csv_file)), image_root and local_file(Path(image_root))
        self.method, self.system_prompt = method, DEFAULT_SYSTEM if system_prompt is None else system_prompt
        self.hparams["system_prompt"] = self.system_prompt  # what asked it, in the summary
        self.format, self.split, self.circular = format, split, circular

    @property
    def category_columns(self) -> dict[str, str]:
        """The summary's per-category accuracies, each with the column of the rows it groups by."""
        if self.format == "mmbench":
            return {"per_category": "category", "per_l2_category": "l2-category"}
        if self.format == "scienceqa":  # as its paper reports: natural, social and language science; G1-6, G7-12; TXT (a text context)
            return {"per_subject": "subject", "per_grades": "grades", "per_grade": "grade", "per_context": "context"}
        return {"per_category": "category"}

    def input_files(self) -> list[Path]:
        return [self.csv_file]

    def check_inputs(self, stage: str = "predict") -> None:
        if self.csv_file.is_dir() and mme_root(self.csv_file):
            raise ConfigError(f"{self.csv_file} is MME's release: yes/no questions, answered with --config configs/predict/questions.yaml --data.questions_file {shell_word(self.csv_file)}")
        if not self.csv_file.is_file():
            raise missing_file(self.csv_file, FORMATS[self.format])

    def read_rows(self) -> list[ChoiceQuestion]:
        """The questions as asked: with ``circular``, each of its rotations."""
        sniffed = sniffed_format(self.csv_file)
        if sniffed is not None and sniffed[0] == "questions":
            raise ConfigError(f"{self.csv_file} {sniffed[1]}: free-form questions, answered with --config "
                              f"configs/predict/questions.yaml --data.questions_file {shell_word(self.csv_file)}, not multiple choice")
        if sniffed is not None and sniffed[0] != self.format:  # the other format's reader would say only what is missing
            raise ConfigError(f"{self.csv_file} {sniffed[1]}, so it reads as {FORMATS[sniffed[0]]}: use --config configs/predict/"
                              f"{FORMAT_CONFIGS[sniffed[0]]}.yaml (or --data.format {sniffed[0]}); data.format is {self.format!r}, {FORMATS[self.format]}")
        readers = {"csv": read_choice_csv, "mmbench": read_mmbench_tsv, "scienceqa": lambda path: read_scienceqa(path, self.split),
                   "aokvqa": read_aokvqa_choices, "seedbench": read_seedbench}
        questions = readers[self.format](self.csv_file)
        return circular_passes(questions) if self.circular else questions

    def setup(self, stage: str) -> None:
        questions = self.read_rows()
        root = self.image_root or self.csv_file.parent
        if self.format == "scienceqa" and self.image_root is None and self.csv_file.suffix.lower() != ".parquet":
            root = scienceqa_image_root(self.csv_file, questions)
        elif self.format in ("aokvqa", "seedbench") and questions and not isinstance(questions[0].image, EmbeddedImage):
            folders = (f"{questions[0].record['split'] or 'val'}2017",) if self.format == "aokvqa" else ("SEED-Bench-image",)
            root = public_image_root(self.csv_file, {"aokvqa": "A-OKVQA", "seedbench": "SEED-Bench"}[self.format],
                                     [str(q.image) for q in questions], folders, self.image_root)
        template = ConversationTemplate(system=self.system_prompt)
        prompts, option_ids = choice_prompts(template, self.tokenizer, [q.question for q in questions],
                                             [q.options for q in questions], self.method)
        # an absolute img_path stays as it is; an MMBench image is the file's own
        files = iter(image_paths([q.image for q in questions if not isinstance(q.image, EmbeddedImage)], root, self.csv_file,
                                 given=self.image_root is not None))
        paths = [q.image if isinstance(q.image, EmbeddedImage) else next(files) for q in questions]
        self.dataset = _ChoiceRows([q.record for q in questions], paths, self.image_processor, prompts, option_ids,
                                   [q.options for q in questions], self.method)

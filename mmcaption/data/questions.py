"""Free-form questions for ``mmcaption predict``: a CSV or JSON Lines file of (image, question[, answer]).

The answers are generated as the instruct stage was taught to answer; with a reference ``answer``, each
row is scored by exact match after the VQA evaluation's normalisation (case, punctuation, articles,
number words), and the run's summary gives the accuracy; with VQAv2-style human ``answers`` (a list),
by the VQA accuracy (``min(#humans who gave it / 3, 1)``), averaged in the summary.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcaption.data.predict import _ImageRows, _PredictDataModule
from mmcaption.data.records import DataError
from mmcaption.prompts import DEFAULT_SYSTEM, ConversationTemplate
from mmcaption.tasks import RESULT_COLUMNS

IMAGE_COLUMNS = ("image", "img_path")  # the second as in the original scripts' multiple-choice CSV


@dataclass
class OpenQuestion:
    """One question of the file: where it is (physical line), the record as written, and what it asks."""

    line: int
    record: dict[str, Any]
    image: str
    question: str
    answer: str | None


def _question(path: Path, line: int, record: dict[str, Any]) -> OpenQuestion:
    """Check one record (keys already lower case) and take its image, question and answer."""
    image = next((str(record[name]).strip() for name in IMAGE_COLUMNS if record.get(name) not in (None, "")), "")
    question = str(record.get("question") or "").strip()
    answer, answers = record.get("answer"), record.get("answers")
    problems = [f"no {what}" for what, value in (("image (column image or img_path)", image), ("question", question)) if not value]
    if answer is not None and not isinstance(answer, str):
        problems.append(f"answer {answer!r} is not a string")
    if answers is not None:  # VQAv2-style: the human answers, as strings or as {"answer": ...} objects
        answers = [a.get("answer") if isinstance(a, dict) else a for a in answers] if isinstance(answers, list) else None
        if not answers or not all(isinstance(a, str) for a in answers):
            problems.append("answers must be a non-empty list of strings or of {\"answer\": ...} objects")
        else:
            record = {**record, "answers": answers}
    if problems:
        raise DataError(f"{path}, line {line}: " + "; ".join(problems))
    kept = {k: v for k, v in record.items() if k not in RESULT_COLUMNS}
    return OpenQuestion(line, kept, image, question, (answer or "").strip() or None)


def read_questions(path: Path) -> list[OpenQuestion]:
    """Questions from a ``.jsonl`` file (one object per line: ``image`` or ``img_path``, ``question``,
    optional ``answer``, or VQAv2-style ``answers``: the human answers) or a ``.csv`` with those columns, in any case, as spreadsheets write it (a
    UTF-8 byte-order mark is accepted). A line that is not JSON, a row whose fields do not fit the
    header, a duplicate column or a record without image or question is refused, naming the file and
    its physical line."""
    if not path.is_file():
        raise DataError(f"questions file not found: {path}")
    questions = []
    try:
        if path.suffix.lower() == ".jsonl":
            for line, text in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}, line {line}: not JSON: {error}") from error
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {line}: a JSON object is needed, not {type(record).__name__}")
                questions.append(_question(path, line, {str(k).lower(): v for k, v in record.items()}))
        elif path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.reader(handle)
                header = [name.strip().lower() for name in next(reader, [])]
                duplicates = sorted({name for name in header if name and header.count(name) > 1})
                if duplicates:
                    raise DataError(f"{path}: column(s) {duplicates} appear more than once in the header")
                start = reader.line_num + 1
                for fields in reader:
                    if any(field.strip() for field in fields):
                        if len(fields) != len(header):
                            raise DataError(f"{path}, line {start}: {len(fields)} fields where the header has {len(header)} "
                                            "(a comma inside a field must be quoted)")
                        questions.append(_question(path, start, {k: v for k, v in zip(header, fields) if k}))
                    start = reader.line_num + 1
        else:
            raise DataError(f"{path}: questions are read from .jsonl or .csv files")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text: {error}") from error
    except csv.Error as error:
        raise DataError(f"{path}: not valid CSV: {error}") from error
    if not questions:
        raise DataError(f"{path} has no questions")
    return questions


class _QuestionRows(_ImageRows):
    def __init__(self, rows, image_paths, image_processor, size, prompts: list[list[int]]) -> None:
        super().__init__(rows, image_paths, image_processor, size)
        self.prompts = prompts

    def text(self, index: int) -> dict[str, Any]:
        return {"task": "answer", "input_ids": torch.tensor(self.prompts[index])}


class QuestionsPredictDataModule(_PredictDataModule):
    """Answer free-form questions about images: ``mmcaption predict`` writes each record with its
    ``prediction`` (and ``correct``, when the file gives an ``answer``) and reports the exact match.

    Args:
        questions_file: a ``.jsonl`` or ``.csv`` file of ``image`` (or ``img_path``), ``question`` and
            optional ``answer`` (VQA-style exact match after normalisation).
        image_root: folder the images are relative to (default: the file's folder).
        output: the file to write (``.jsonl``, or ``.csv``): the input fields, ``prediction``, ``correct``, ``error``.
        system_prompt: the instruct stage's system prompt.
        batch_size: questions per batch.
        overwrite: replace ``output`` if it exists (by default an existing output is refused; the input
            itself is always refused).
    """

    def __init__(
        self,
        questions_file: str,
        image_root: str | None = None,
        output: str = "predictions/answers.jsonl",
        system_prompt: str = DEFAULT_SYSTEM,
        batch_size: int = 8,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(output, batch_size, overwrite, **kwargs)
        self.save_hyperparameters()
        self.questions_file, self.image_root = Path(questions_file), image_root and Path(image_root)
        self.system_prompt = system_prompt

    def input_files(self) -> list[Path]:
        return [self.questions_file]

    def check_inputs(self, stage: str = "predict") -> None:
        if not self.questions_file.is_file():
            raise DataError(f"questions file not found: {self.questions_file}")

    def setup(self, stage: str) -> None:
        questions = read_questions(self.questions_file)
        root = self.image_root or self.questions_file.parent
        template = ConversationTemplate(system=self.system_prompt)
        prompts = [template.prompt(q.question, self.tokenizer) for q in questions]
        paths = [root / q.image for q in questions]  # an absolute img_path stays as it is
        records = [{**q.record, "answer": q.answer} if q.answer else q.record for q in questions]
        self.dataset = _QuestionRows(records, paths, self.image_processor, self.image_size, prompts)

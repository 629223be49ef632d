"""MME's release as its archive unpacks (``MME_Benchmark_release_version/``, or the ``MME_Benchmark/`` inside it): a
folder per category (``existence/``, ``OCR/``, ``artwork/`` ...), each image's two questions in a ``<image>.txt``
beside it, or in ``questions_answers_YN/`` beside ``images/`` (artwork, celebrity, landmark, posters, scene); a line
each: the question (it ends "Please answer yes or no."), a tab, and Yes or No.

Each question becomes a record the questions reader checks (:func:`mmcaption.data.questions.read_question_file`):
``question_id`` ``<category>/<image>`` as MME's other copies name it (lmms-lab's parquet, LLaVA's
``llava_mme.jsonl``), ``category``, ``answer``; a run over them reports MME's own score
(:mod:`mmcaption.evaluation.yes_no`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from mmcaption.data.records import DataError
from mmcaption.evaluation.yes_no import MME_CATEGORY_NAMES as CATEGORIES
from mmcaption.images import IMAGE_SUFFIXES, is_hidden

SPLIT_FOLDERS = ("questions_answers_YN", "images")  # the questions' folder and the images' in five categories


def mme_root(folder: Path) -> Path | None:
    """The folder that holds MME's category folders: ``folder``, or a folder in it or in one of those (the archive's
    ``MME_Benchmark_release_version/MME_Benchmark/``, given from above); None when none does."""
    def below(path: Path) -> list[Path]:
        try:
            return sorted(child for child in path.iterdir() if child.is_dir() and not is_hidden(child))
        except OSError:
            return []
    first = below(folder)
    looked_in = itertools.chain([folder], first, (grandchild for child in first for grandchild in below(child)))
    return next((root for root in looked_in if any((root / name).is_dir() for name in CATEGORIES)), None)


def _places(root: Path, category: str) -> tuple[Path, Path]:
    """Where a category's question files and its images are."""
    place = root / category
    texts, pictures = (place / name for name in SPLIT_FOLDERS)
    return (texts if texts.is_dir() else place), (pictures if pictures.is_dir() else place)


def not_mme(folder: Path) -> DataError:
    return DataError(f"{folder} is a folder: questions are read from one file (.jsonl, .csv, .tsv, .parquet or .json), or "
                     f"from MME's release folder, a folder per category ({', '.join(CATEGORIES[:3])} ...), which it is not")


def mme_questions(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each question of MME's release under ``folder``, as ``(where, record)``: its file and line, and the record, its
    ``image`` relative to ``folder``'s parent (where the questions reader looks by default). A question file that does
    not hold two questions (MME asks two about each image: its acc+ counts both right), a line that is not a question, a
    tab and Yes or No, or a question file without its image, is refused by name; categories not there are said (MME's
    totals then say so too)."""
    root = mme_root(folder)
    if root is None:
        raise not_mme(folder)
    questions, absent = [], []
    for category in CATEGORIES:
        texts, pictures = _places(root, category)
        files = sorted(path for path in texts.glob("*.txt") if not is_hidden(path)) if texts.is_dir() else []
        if not files:
            absent.append(category)
            continue
        images: dict[str, Path] = {}
        for path in sorted(pictures.iterdir()):  # a.jpg before a.png, whichever the disk lists first
            if path.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(path):
                images.setdefault(path.stem, path)
        for text in files:
            if text.stem not in images:
                raise DataError(f"{text}: its image ({text.stem}.jpg or .png) is not in {pictures}")
            try:
                lines = [(number, line) for number, line in enumerate(text.read_text(encoding="utf-8-sig").splitlines(), start=1)
                         if line.strip()]
            except UnicodeDecodeError as error:
                raise DataError(f"{text}: not UTF-8 text (byte {error.start}), as MME's question files are") from None
            if len(lines) != 2:
                raise DataError(f"{text}: {len(lines)} questions; MME asks two about each image (its acc+ counts the images "
                                "whose two are both answered right)")
            for number, line in lines:
                fields = [field.strip() for field in line.split("\t")]
                if len(fields) < 2 or fields[-1].lower() not in ("yes", "no"):
                    raise DataError(f"{text}, line {number}: MME's lines are a question, a tab and Yes or No; it is {line[:100]!r}")
                questions.append((f"{text}, line {number}", {
                    "question_id": f"{category}/{images[text.stem].name}", "image": str(images[text.stem].relative_to(folder.parent)),
                    "question": fields[0], "answer": fields[-1], "category": category}))
    if not questions:
        raise DataError(f"{root} holds MME's category folders, and no question files in them (<image>.txt)")
    if absent:
        rank_zero_info(f"{root}: MME's {', '.join(absent)} not there ({len(CATEGORIES) - len(absent)} of its "
                       f"{len(CATEGORIES)} categories have question files): its totals count the categories asked")
    return questions


def say_where_mmes_answers_are(path: Path, records: list[dict[str, Any]]) -> None:
    """Said of a questions file whose questions are all MME's (each record's ``category`` one of its 14) and carry no
    answer - LLaVA's ``llava_mme.jsonl``, whose answers its own evaluation reads from MME's release -: they are answered,
    not scored; MME's release folder, given instead, asks the same questions and scores them as MME does."""
    if records and not any({"answer", "answers", "label"} & set(record) for record in records) and all(
            str(record.get("category")) in CATEGORIES for record in records):
        rank_zero_info(f"{path}: MME's questions without their answers (as LLaVA's llava_mme.jsonl): answered, not scored. "
                       "MME's answers are in its release folder: --data.questions_file MME_Benchmark_release_version asks "
                       "the same questions and gives MME's score")

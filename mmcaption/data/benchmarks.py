"""Multiple-choice benchmarks in their official files for ``mmcaption predict``: MMBench's TSV, ScienceQA's ``problems.json``
or the Hugging Face copy's parquet files (its IMG subset), and MMBench's CircularEval over any of them.

What they become is the :class:`ChoiceQuestion` the original scripts' CSV becomes too. A bad row (no question, fewer
than two options, an answer that names no option, an image that is not base64) stops the run with a message that names
the file and the row's index; an image that is base64 but no image is the row's ``error`` at predict time.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from mmcaption.data.parquet_rows import ImageFile, image_cell, parquet_columns, parquet_table, read_parquet
from mmcaption.data.records import DataError, escapes_root, missing_file, read_json
from mmcaption.data.tables import read_table_rows, refuse_duplicate_columns, separator_in
from mmcaption.evaluation.answers import LETTERS
from mmcaption.tasks import RESULT_COLUMNS

MMBENCH_REQUIRED = ("index", "question", "A", "B", "image")
CIRCULAR_STRIDE = 1_000_000  # MMBench's TSVs carry the CircularEval passes of question i as rows i + k * 1,000,000
REFERENCE_LENGTH = 64  # an MMBench image field this short names the row whose image it shares, as VLMEvalKit reads it


@dataclass(frozen=True)
class EmbeddedImage:
    """An image carried inside the questions file (MMBench's base64 ``image`` column): its bytes, and
    where it comes from for messages (``<file>, index <i>``)."""

    data: bytes = field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"in {self.source}"


@dataclass
class ChoiceQuestion:
    """One multiple-choice question: where it is, the record as written, and what it asks."""

    line: int  # physical line of the file where the row starts (0 in a JSON file)
    record: dict[str, Any]
    image: str | EmbeddedImage  # a path relative to the image folder, or the image itself
    question: str  # as asked: MMBench's hint or ScienceQA's context comes before it
    options: list[str]
    answer: str | None
    key: str = ""  # the question's identity (MMBench's index, ScienceQA's problem id); "" for the line
    option_keys: tuple[str, ...] = ()  # the record's keys that hold the options (A, B, ...), in order
    # MMBench's TSVs: the question's CircularEval passes as the file has them (rows index + k * 1,000,000), with k
    passes: list[tuple[int, ChoiceQuestion]] = field(default_factory=list)


def absent_cell(value: str) -> bool:
    """An empty cell, or a missing value as pandas and numpy write it (``nan``: MMBench's TSVs' missing option or hint;
    ``NaN``); ``Nan`` or ``NAN`` is an option (a grandmother, the bread) and is kept."""
    return value.strip() in ("", "nan", "NaN")


def option_columns(path: Path, header: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """The option letters a questions file's header has (A, B, ... in order, none left out: a letter is an option's
    place, so B, D without C would score D as the third option) and those columns' names as the header writes them."""
    letters = [letter for letter in LETTERS if any(name.lower() == letter.lower() for name in header)]
    skipped = [letter for letter in LETTERS[: LETTERS.index(letters[-1])] if letter not in letters] if letters else []
    if skipped:
        raise DataError(f"{path}: it has option column(s) {letters} but not {skipped}: options are lettered in order, "
                        f"so add column(s) {skipped}, empty where a question has fewer options")
    return letters, tuple(name for letter in letters for name in header if name.lower() == letter.lower())


def row_options(values: dict[str, str], letters: list[str]) -> tuple[list[str], list[str]]:
    """A row's options (a missing option is empty or NaN; those after the last given are dropped) and, when they are
    not 2 or more without gaps, what is wrong."""
    options = ["" if absent_cell(values[letter.lower()]) else values[letter.lower()] for letter in letters]
    while options and not options[-1]:
        options.pop()
    wrong = len(options) < 2 or not all(options)
    return options, [f"options must be 2 or more, without gaps: {dict(zip(letters, options))}"] if wrong else []


def _grade_band(grade: str) -> str:
    """ScienceQA's grade (``grade1`` .. ``grade12``) as its paper's table groups them: G1-6 or G7-12."""
    number = grade.removeprefix("grade")
    return "" if not number.isdigit() else "G1-6" if int(number) <= 6 else "G7-12"


def _first_line_json(text: bytes) -> bool:
    try:
        json.loads(text.split(b"\n", 1)[0])
    except ValueError:
        return False
    return True


def sniffed_format(path: Path) -> tuple[str, str] | None:
    """The multiple-choice format a file's first bytes show, and what shows it: ``scienceqa`` for a parquet file or a
    JSON object (``seedbench`` for SEED-Bench's), ``mmbench`` for a TSV with MMBench's columns, ``csv`` for the original scripts' header, ``aokvqa`` for
    A-OKVQA's records, ``questions`` for other JSON records (a list, or JSON Lines: free-form questions); else None."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return None
    if head.startswith(b"PAR1"):
        columns = {name.lower() for name in parquet_columns(path)}
        if {name.lower() for name in MMBENCH_REQUIRED} <= columns:
            return "mmbench", "is a parquet file with MMBench's columns"
        if {"choice_a", "data_id"} <= columns:
            return "seedbench", "is a parquet file with SEED-Bench's columns (choice_a ... choice_d, data_id)"
        if {"choices", "options", "choice_a", "a"} & columns:  # ScienceQA's copy; AI2D's and others' options
            return "scienceqa", "is a parquet file with options (choices)"
        if {"question", "text"} & columns:  # lmms-lab's VQAv2, TextVQA, POPE, MME ...
            return "questions", "is a parquet file of questions without options"
        return "scienceqa", "is a parquet file"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] == b"[" or text[:1] == b"{" and b"\n" in text.rstrip() and _first_line_json(text):  # a list, JSON Lines
        return ("aokvqa", "holds A-OKVQA's questions (image_id, choices, correct_choice_idx)") if all(key in head for key in (
            b'"choices"', b'"image_id"', b'"question_id"')) else ("questions", "holds JSON records (a list, or one per line)")
    if text[:1] == b"{" and all(key in head for key in (b'"questions"', b'"choice_a"', b'"data_id"')):
        return "seedbench", "holds SEED-Bench's questions (choice_a ... choice_d, data_id)"
    if text[:1] == b"{":
        return "scienceqa", "is a JSON object"
    line = (head.decode("utf-8-sig", "replace").splitlines() or [""])[0].strip().lower()  # (\r alone: Excel for Mac's)
    if {"index", "question", "a", "b", "image"} <= {name.strip() for name in next(csv.reader([line], delimiter="\t"))}:
        return "mmbench", "has MMBench's tab-separated columns"  # (csv: a header in quotes, as R and QUOTE_ALL write it)
    cells = next(csv.reader([line], delimiter=separator_in(next(csv.reader([line]), []))), [])  # ; as Excel in Europe
    if {"question", "a", "b"} <= (names := {name.strip() for name in cells}) and names & {"img_path", "image"}:
        return "csv", "has the original scripts' columns"  # (image: as the questions files name it, read_choice_csv too)
    return None


IMAGE_COLUMNS = ("image", "img_path")  # a questions file's image column; the second as in the original scripts' CSV


def _decode_image(text: str, images: dict[str, str]) -> bytes | str:
    """The bytes of a base64 ``image`` field (or of the row it names by its index), the file a parquet image names
    (an :class:`ImageFile`), or why there are none."""
    if not isinstance(text, ImageFile) and len(text) <= REFERENCE_LENGTH:
        shared = images.get(text, "")
        if not isinstance(shared, ImageFile) and len(shared) <= REFERENCE_LENGTH:
            return f"image {text!r} is neither base64 image data nor the index of a row that has some"
        text = shared
    if isinstance(text, ImageFile):
        return text
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        return f"image is not base64: {error}"


def read_mmbench_tsv(path: Path) -> list[ChoiceQuestion]:
    """MMBench's questions from its TSV: ``index, question, hint, A, B, C, D`` (and ``E`` ...), ``answer``
    (absent in test splits), ``category``, ``l2-category``, ``image`` (base64 JPEG or PNG, or the index of
    the row whose image it shares) and what else it carries. A hint (neither empty nor NaN) comes before
    the question, ``f"{hint}\\n{question}"``, as LLaVA's MMBench evaluation asks it; missing options are
    empty or NaN. The record keeps every column but the image. The same columns are read from a parquet file
    (the Hugging Face copy, ``lmms-lab/MMBench``: its images as ``datasets`` stores them, bytes or a file's path, see
    :mod:`mmcaption.data.parquet_rows`; rows for lines).

    The official TSVs also carry each question's CircularEval passes, as rows ``index + k * 1,000,000`` (or
    grouped by a ``g_index`` column): they are kept with their question (:attr:`ChoiceQuestion.passes`),
    asked as the file has them with ``circular: true`` (:func:`circular_passes`), left out otherwise, so
    each question is asked once.
    A duplicate index, a row that does not fit the header, an empty question, fewer than two options, a
    gap between options, an answer that names no option or an image that is not base64 is refused with
    the file, the row's index and its line.
    """
    if not path.is_file():
        raise missing_file(path, "MMBench TSV")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a base64 image is one long field
    header, rows = parquet_table(path) if path.suffix.lower() == ".parquet" else read_table_rows(path, "\t")
    refuse_duplicate_columns(path, header)
    folded = [name.lower() for name in header]
    missing = [name for name in MMBENCH_REQUIRED if name.lower() not in folded]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}: an MMBench TSV has {list(MMBENCH_REQUIRED)}, optional "
                        f"hint, C-H, answer, category, l2-category; it has {header[:20]}")
    letters, option_keys = option_columns(path, header)
    entries, lines = [], {}
    for line, fields in rows:
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}, line {line}: {len(fields)} fields where the header has {len(header)} "
                            "(a tab inside a field must be quoted)")
        values = {low: value if isinstance(value, ImageFile) else value.strip() for low, value in zip(folded, fields) if low}
        index = values["index"]
        if not index:
            raise DataError(f"{path}, line {line}: empty index")
        if index in lines:
            raise DataError(f"{path}, index {index} (line {line}): the index appears again (first on line {lines[index]})")
        lines[index] = line
        entries.append((line, values))
    # a pass's question: its g_index where the row has one (VLMEvalKit writes it when indices pass 1e6), else index % 1e6
    group = {}
    for _, values in entries:
        index = values["index"]
        given = values.get("g_index", "").strip()
        group[index] = given if not absent_cell(given) else (
            str(int(index) % CIRCULAR_STRIDE) if index.isdigit() and int(index) >= CIRCULAR_STRIDE else index)
    copies = {i for i, g in group.items() if g != i and g in lines}
    if copies:
        rank_zero_info(f"{path}: {len(copies)} of its rows are the CircularEval passes of others (their g_index, or index + "
                       "k * 1,000,000); with circular: true they are asked as the file has them, otherwise left out (each "
                       "question asked once)")
    images = {values["index"]: values["image"] for _, values in entries}
    questions, passes = [], {}
    for line, values in entries:
        index = values["index"]
        options, wrong = row_options(values, letters)
        problems = ([] if not absent_cell(values["question"]) else ["empty question"]) + wrong
        given = values.get("answer", "")
        answer = None if absent_cell(given) else given.upper()
        if answer is not None and answer not in LETTERS[: len(options)]:
            problems.append(f"answer {given!r} is not one of {', '.join(LETTERS[: len(options)])}")
        image = _decode_image(values["image"], images)
        if isinstance(image, str) and not isinstance(image, ImageFile):
            problems.append(image)
        if problems:
            raise DataError(f"{path}, index {index} (line {line}): " + "; ".join(problems))
        hint = values.get("hint", "")
        question = values["question"] if absent_cell(hint) else f"{hint}\n{values['question']}"
        record = {name: "" if absent_cell(values[low]) else values[low] for name, low in zip(header, folded)
                  if low and low != "image" and low not in RESULT_COLUMNS}
        record = {("answer" if name.lower() == "answer" else name): value for name, value in record.items()}
        record["answer"] = answer or ""
        shown = str(image) if isinstance(image, ImageFile) else EmbeddedImage(image, f"{path}, index {index}")
        asked = ChoiceQuestion(line, record, shown, question, options, answer,
                               key=index, option_keys=option_keys)
        if index in copies:
            passes.setdefault(group[index], []).append(asked)
        else:
            questions.append(asked)
    for question in questions:  # k: the pass's place among its question's rows, in the order of their indices
        ordered = sorted(passes.get(question.key, []), key=lambda p: (len(p.key), p.key))
        question.passes = list(enumerate(ordered, start=1))
    if not questions:
        raise DataError(f"{path} has no questions")
    return questions


SCIENCEQA_SPLITS = ("train", "validation", "val", "test", "minitrain", "minival", "minitest")


def _scienceqa_problems(path: Path, split: str | None) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """The problems of ``split`` as (id, problem), from ``problems.json`` (with ``pid_splits.json`` beside it
    for the splits it defines, e.g. ``minitest``) or from one split's parquet file as the Hugging Face
    copy (``derek-thomas/ScienceQA``) has it; and what was read, for messages."""
    if path.suffix.lower() == ".parquet":
        rows = read_parquet(path).to_pylist()
        # the Hugging Face copy has a file per split, named after it (test-00000-of-00001.parquet; test.parquet, as
        # to_parquet("test.parquet") names one)
        named = path.stem.split("-")[0]
        file_split = named if named in SCIENCEQA_SPLITS else None
        if split is not None and split != file_split:
            raise DataError(f"{path} is {'split ' + repr(file_split) if file_split else 'not named after a split'} (a parquet "
                            f"file of ScienceQA's Hugging Face copy holds one split), not {split!r}: give that split's file, "
                            f"or --data.split {file_split or 'null'}")
        problems = []
        for number, row in enumerate(rows):
            # {"bytes", "path"} as datasets stores an image: its bytes or the file it names; null for a text-only question
            image = image_cell(row.get("image"))
            problems.append((str(number), {**row, "split": file_split or path.stem, "image": image}))
        return problems, f"{path} (split {file_split or path.stem}: one split per parquet file)"
    problems = read_json(path, "ScienceQA problems file")
    if not isinstance(problems, dict) or not all(isinstance(p, dict) for p in problems.values()):
        raise DataError(f"{path}: ScienceQA's problems.json maps each problem id to an object")
    splits = {str(p.get("split")) for p in problems.values()}
    if split is None or split in splits:
        return [(str(pid), p) for pid, p in problems.items() if split is None or p.get("split") == split], f"{path} ({'every split' if split is None else f'split {split}'})"
    listed = path.parent / "pid_splits.json"  # the release's own lists, with the mini splits
    lists = read_json(listed, "pid_splits.json") if listed.is_file() else {}
    if not isinstance(lists, dict):
        raise DataError(f"{listed}: not ScienceQA's pid_splits.json (an object of split -> problem ids)")
    ids = lists.get(split)
    if not isinstance(ids, list):
        raise DataError(f"{path} has no split {split!r} (its splits: {', '.join(sorted(splits))}"
                        f"{'' if listed.is_file() else '; pid_splits.json, which lists the mini splits, is not beside it'})")
    unknown = [str(pid) for pid in ids if str(pid) not in problems]
    if unknown:
        raise DataError(f"{listed} lists problem(s) {', '.join(unknown[:5])} of split {split!r} that {path} does not have")
    return [(str(pid), problems[str(pid)]) for pid in ids], f"{path} (split {split}, as {listed} lists it)"


def read_scienceqa(path: Path, split: str | None = "test") -> list[ChoiceQuestion]:
    """ScienceQA's IMG questions: those with an image, of ``split`` (``None``: every split), from its
    ``problems.json`` (``{"<id>": {"question", "choices", "answer" (the index of the right choice), "hint",
    "image", "split", "subject", ...}}``; a split ``pid_splits.json`` beside it lists, such as ``minitest``,
    works too) or from a parquet file of the Hugging Face copy (``derek-thomas/ScienceQA``: a file per
    split, the image's PNG bytes in its ``image`` column; ``split`` is then the file's). The text-only
    questions are left out, as ScienceQA-IMG is defined, and counted in a note. A non-empty hint (the
    problem's context) comes before the question as ``"Context: {hint}\n{question}"``; the answer index
    becomes a letter. The record keeps ``id``, ``question``, ``hint``, the choices as ``A``, ``B``, ... ,
    ``answer``, ``subject``, ``topic``, ``category``, ``grade``, ``split`` and ``image`` (``<split>/<id>/image.png``,
    relative to the image folder; for a parquet file, ``<file>, row <n>``, or the file its image names: see
    :mod:`mmcaption.data.parquet_rows`).

    A problem without a question, with fewer than two choices or more than eight, with an answer that is
    no choice's index or an image path that leaves the image folder is refused with the file and its id.
    """
    problems, source = _scienceqa_problems(path, split)
    chosen = [(pid, p) for pid, p in problems if p.get("image")]
    if not chosen:
        raise DataError(f"{source} has no problem with an image (of {len(problems)} problems)")
    if len(chosen) < len(problems):
        rank_zero_info(f"{source}: {len(chosen)} of its {len(problems)} questions have an image; the "
                       f"{len(problems) - len(chosen)} text-only ones are left out (ScienceQA-IMG is the image subset)")
    parquet = path.suffix.lower() == ".parquet"
    width = max(len(p["choices"]) if isinstance(p.get("choices"), list) else 0 for _, p in chosen)
    questions = []
    for pid, problem in chosen:
        question, choices, answer = problem.get("question"), problem.get("choices"), problem.get("answer")
        hint = problem.get("hint") or ""
        named = str(problem["image"]) if isinstance(problem["image"], ImageFile) else None  # a path, no bytes
        embedded = parquet and named is None
        where = f"{path}, row {pid}" if parquet else f"{path}, problem {pid}"
        image = where if embedded else named or f"{problem.get('split')}/{pid}/{problem['image']}"
        problems_found = [] if isinstance(question, str) and question.strip() else ["empty question"]
        if not (isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS) and all(isinstance(c, str) and c.strip() for c in choices)):
            problems_found.append(f"choices must be 2 to {len(LETTERS)} non-empty strings: {choices!r}")
        elif answer is not None and (type(answer) is not int or not 0 <= answer < len(choices)):
            problems_found.append(f"answer {answer!r} is not the index of one of its {len(choices)} choices")
        if not isinstance(hint, str) or not problem.get("split") or (not parquet and escapes_root(image)):
            problems_found.append(f"hint must be text, and split and image name a file inside the image folder: {image!r}")
        if embedded and not isinstance(problem["image"], bytes):
            problems_found.append(f"its image column holds neither image bytes nor a file's path but {str(problem['image'])[:80]!r} "
                                  "(the Hugging Face files carry each image's bytes; datasets' to_parquet, its path)")
        if problems_found:
            raise DataError(f"{where}: " + "; ".join(problems_found))
        choices = [c.strip() for c in choices]
        letter = None if answer is None else LETTERS[answer]
        text = f"Context: {hint.strip()}\n{question.strip()}" if hint.strip() else question.strip()
        record = {"id": pid, "question": question.strip(), "hint": hint.strip(),
                  **{LETTERS[i]: choices[i] if i < len(choices) else "" for i in range(width)},
                  "answer": letter or "", **{k: problem.get(k, "") for k in ("subject", "topic", "category", "grade", "split")},
                  "grades": _grade_band(str(problem.get("grade") or "")), "image": image,
                  # its paper's TXT column (a text context) among these image questions; IMG is every one of them
                  "context": "text and image" if hint.strip() else "image only"}
        asked = EmbeddedImage(problem["image"], where) if embedded else image
        questions.append(ChoiceQuestion(0, record, asked, text, choices, letter, key=pid, option_keys=LETTERS[:width]))
    return questions


def scienceqa_image_root(path: Path, questions: list[ChoiceQuestion]) -> Path:
    """Where ScienceQA's ``<split>/<id>/image.png`` are: the ``images`` folder beside ``problems.json`` (the
    official release's ``data/scienceqa/images``), else the folder of ``problems.json`` itself."""
    splits = sorted({str(q.record["split"]) for q in questions})
    candidates = [path.parent / "images", path.parent]
    for folder in candidates:
        if all((folder / split).is_dir() for split in splits):
            return folder
    raise DataError(f"no ScienceQA image folder(s) {', '.join(s + '/' for s in splits)} in {candidates[0]} or {candidates[1]}: "
                    "give the folder that holds them with --data.image_root")


def circular_passes(questions: list[ChoiceQuestion]) -> list[ChoiceQuestion]:
    """MMBench's CircularEval: a question with N options is asked N times, rotated by 0 ... N-1 places (rotation r asks
    the option that was r-th first), the answer letter moved with them. Each record gains ``circular_index`` and
    ``rotation``, holds the options and answer as that pass asks them, and an MMBench row's ``index`` is its own, the
    question's + rotation x 1,000,000, as MMBench's TSVs number passes (its server grades by index). A file with passes
    of its own (:attr:`ChoiceQuestion.passes`) is asked as it has them, as VLMEvalKit does; a question without, once."""
    if any(question.passes for question in questions):
        return [replace(asked, record={**asked.record, "circular_index": question.key, "rotation": rotation}, passes=[])
                for question in questions for rotation, asked in [(0, question), *question.passes]]
    passes = []
    for question in questions:
        count = len(question.options)
        for rotation in range(count):
            options = question.options[rotation:] + question.options[:rotation]
            answer = None if question.answer is None else LETTERS[(LETTERS.index(question.answer) - rotation) % count]
            record = {**question.record, **dict(zip(question.option_keys, options))}
            if answer is not None:
                record["answer"] = answer
            record.update(circular_index=question.key or str(question.line), rotation=rotation)
            index = next((key for key in record if key.lower() == "index"), None)  # MMBench's own, of ASCII digits
            if rotation and index and record[index] == question.key and question.key.isascii() and question.key.isdigit():
                record[index] = str(int(question.key) + rotation * CIRCULAR_STRIDE)
            passes.append(replace(question, record=record, options=options, answer=answer))
    return passes

"""Public VQA benchmarks' own files, read as they are downloaded: TextVQA, GQA and A-OKVQA (open-ended), and
A-OKVQA's and SEED-Bench's multiple choice.

Each names its images by an id, in a folder of its own download; each question becomes the record the questions reader
checks (:func:`mmcaption.data.questions.read_question_file`), its image a file name looked for in those folders:

- TextVQA (``TextVQA_0.5.1_val.json``: ``{"dataset_name": "textvqa", "data": [{"question_id", "image_id", "question",
  "answers": [10 human answers], "set_name"}, ...]}``): ``train_images/<image_id>.jpg`` (train and val),
  ``test_images/`` (test); scored by VQA accuracy as TextVQA's evaluator computes it (every human answer normalised).
- GQA (``testdev_balanced_questions.json``: ``{"<question id>": {"imageId", "question", "answer", "fullAnswer",
  "types": {"structural", "semantic", "detailed"}}, ...}``): ``images/<imageId>.jpg``; scored by exact match, as
  GQA's accuracy is, and per structural type (verify, query, choose, logical, compare) as its evaluation reports it.
- A-OKVQA (``aokvqa_v1p0_val.json``: ``[{"question_id", "image_id", "question", "choices", "correct_choice_idx",
  "direct_answers": [10], "split"}, ...]``): COCO 2017's ``<split>2017/<image_id, 12 digits>.jpg``; its direct-answer
  task, scored against ``direct_answers`` as A-OKVQA's evaluation does (``min(#matches / 3, 1)``, the questions marked
  ``difficult_direct_answer`` answered but not scored; the choices are kept in the output rows, not asked); its multiple-choice task is the multiple-choice module's (``format: aokvqa``,
  :func:`read_aokvqa_choices`).
- SEED-Bench (``SEED-Bench.json``: ``{"question_type": {"Scene Understanding": 1, ...}, "questions": [{"question_id",
  "question", "choice_a" ... "choice_d", "answer", "data_id", "data_type", "question_type_id"}, ...]}``): its image
  questions, ``SEED-Bench-image/<data_id>``, as multiple choice (``format: seedbench``, :func:`read_seedbench`); or a
  parquet file of its Hugging Face copy (``lmms-lab/SEED-Bench``: the same columns, each question's image inside).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from mmcaption.data import tables
from mmcaption.data.benchmarks import IMAGE_COLUMNS, ChoiceQuestion, EmbeddedImage
from mmcaption.data.parquet_rows import ImageFile, image_cell, parquet_columns, read_parquet
from mmcaption.data.records import DataError, escapes_root, read_json
from mmcaption.evaluation.answers import LETTERS
from mmcaption.tasks import RESULT_COLUMNS

IMAGES_LOOKED_FOR = 50


def _sample(values: list[Any]) -> list[dict[str, Any]]:
    return [value for value in values[:5] if isinstance(value, dict)]


# the keys read, in any case (``Question``, ``ANSWER``); the others are the user's, written back as they are (``QuestionID``)
READ_KEYS = {*IMAGE_COLUMNS, "images", "question", "text", "answer", "label", "answers", "answer_type", "category",
             "l2-category", "question_id", "image_id", "question_type", "split", *RESULT_COLUMNS}


def read_name(name: object) -> str:
    return str(name).lower() if str(name).lower() in READ_KEYS else str(name)


def record_keys(path: Path, where: str, record: Any) -> dict[str, Any]:
    """A questions file's ``record`` with the keys read in lower case (:data:`READ_KEYS`), the others as written; two
    keys that are one in any case are refused (one was lost without a word)."""
    if not isinstance(record, dict):
        raise DataError(f"{path}, {where}: a JSON object is needed, not {type(record).__name__}")
    if len(keys := {read_name(k): k for k in record}) < len(record):  # "Answer" and "answer": which is the key?
        twice = next(k for k in record if keys[read_name(k)] != k)
        raise DataError(f"{path}, {where}: keys {twice!r} and {keys[read_name(twice)]!r} are one key in any case: keep one")
    return {read_name(k): v for k, v in record.items()}


def public_vqa_records(path: Path, data: Any) -> tuple[str, list[tuple[str, dict[str, Any]]], tuple[str, ...]] | None:
    """``(benchmark, [(where, record)], image folders)`` of a TextVQA, GQA or A-OKVQA file's content ``data``: each record
    with the keys read in lower case (its others, as GQA's ``fullAnswer``, as written), ``image`` a file name to look for in the image folders (relative to the image root, which
    itself comes last); None for content of another kind. A question without its id, image id or text is refused,
    naming the file and the question."""
    if isinstance(data, dict) and isinstance(data.get("data"), list) and (
            str(data.get("dataset_name", "")).lower() == "textvqa"
            or (sample := _sample(data["data"])) and all({"image_id", "question_id"} <= set(r) for r in sample)
            and not any("image" in r for r in sample)):
        split = str(data.get("dataset_type") or "")
        records = []
        for number, entry in enumerate(data["data"], start=1):
            entry = entry if isinstance(entry, dict) else {}
            qid, image_id = entry.get("question_id"), entry.get("image_id")
            _require(path, number, qid, image_id, entry.get("question"))
            record = {"question_id": qid, "image_id": image_id, "question": entry["question"], "image": f"{image_id}.jpg",
                      **{key: entry[key] for key in ("answers", "set_name") if entry.get(key) is not None},
                      **({"vqa_scoring": "textvqa"} if entry.get("answers") else {})}
            records.append((f"{path}, question {qid}", record))
        folders = ("test_images",) if split == "test" else ("train_images",)  # val's images are in train_images/
        return "TextVQA", records, (*folders, "train_images", "test_images")
    if isinstance(data, dict) and data and (sample := _sample(list(data.values()))) and all(
            "imageid" in {str(key).lower() for key in r} for r in sample):
        records = []
        for number, (qid, entry) in enumerate(data.items(), start=1):
            entry = entry if isinstance(entry, dict) else {}
            _require(path, number, qid, entry.get("imageId"), entry.get("question"))
            types = entry.get("types") if isinstance(entry.get("types"), dict) else {}
            record = {"question_id": qid, "image_id": entry["imageId"], "question": entry["question"],
                      "image": f"{entry['imageId']}.jpg",
                      **{key: entry[key] for key in ("answer", "fullAnswer") if entry.get(key) is not None},
                      **({"category": types["structural"]} if types.get("structural") else {})}
            records.append((f"{path}, question {qid}", record))
        return "GQA", records, ("images",)
    if isinstance(data, list) and (sample := _sample(data)) and all(
            "image_id" in r and ({"direct_answers", "choices"} & set(r)) and "image" not in r for r in sample):
        split = str(sample[0].get("split") or "val")
        records = []
        for number, entry in enumerate(data, start=1):
            entry = entry if isinstance(entry, dict) else {}
            qid, image_id = entry.get("question_id"), entry.get("image_id")
            _require(path, number, qid, image_id, entry.get("question"))
            if type(image_id) is not int:
                raise DataError(f"{path}, question {qid}: image_id {image_id!r} is not a COCO image id (an integer)")
            record = {"question_id": qid, "image_id": image_id, "question": entry["question"],
                      "image": f"{image_id:012d}.jpg",
                      # its direct-answer evaluation leaves the difficult questions out: answered, not scored
                      **({"answers": entry["direct_answers"], "vqa_scoring": "aokvqa"}
                         if entry.get("direct_answers") and not entry.get("difficult_direct_answer") else {}),
                      **{key: entry[key] for key in ("choices", "correct_choice_idx", "difficult_direct_answer")
                         if entry.get(key) is not None}}
            records.append((f"{path}, question {qid}", record))
        return "A-OKVQA", records, (f"{split}2017",)
    return None


def _require(path: Path, number: int, qid: Any, image_id: Any, question: Any) -> None:
    if qid in (None, "") or image_id in (None, "") or not isinstance(question, str) or not question.strip():
        raise DataError(f"{path}, question {number} ({qid!r}): needs its question id, image id and question text")


def public_image_root(path: Path, benchmark: str, images: list[str], folders: tuple[str, ...], image_root: Path | None) -> Path:
    """The folder holding a benchmark's images: the first of ``folders`` under the root (``image_root``, by default the
    questions file's folder), or the root itself, that holds any of the first questions' images (one image missing is
    that question's error, not the whole file's)."""
    root = image_root or path.parent
    candidates = [*dict.fromkeys(root / folder for folder in folders), root]
    looked = list(dict.fromkeys(images))[:IMAGES_LOOKED_FOR]
    for candidate in candidates:
        if any((candidate / image).is_file() for image in looked):
            return candidate
    raise DataError(f"none of the first {len(looked)} images of {path} ({looked[0]}, ...), {benchmark}'s questions, is in "
                    f"{', '.join(map(str, candidates))}: give the folder that holds {benchmark}'s images (or the folder above "
                    "it) with --data.init_args.image_root")


def read_aokvqa_choices(path: Path) -> list[ChoiceQuestion]:
    """A-OKVQA's multiple-choice task: each question with its four ``choices``, asked as the multiple-choice module asks
    (the options listed, or scored by likelihood), the right one's letter from ``correct_choice_idx`` (none in the test
    split); the record keeps ``question_id``, ``image_id``, the choices as ``A``-``D``, ``answer``, ``split`` and the
    image, ``<image_id, 12 digits>.jpg`` in COCO 2017's ``<split>2017/``. A question without its id, image id, text or
    2-8 choices, or whose ``correct_choice_idx`` is no choice's index, is refused naming the file and the question."""
    data = read_json(path, "A-OKVQA file")
    if not (isinstance(data, list) and (sample := _sample(data)) and all("choices" in r and "image_id" in r for r in sample)):
        raise DataError(f"{path}: not A-OKVQA's file (aokvqa_v1p0_<split>.json: a list of questions with question_id, "
                        "image_id, question, choices and correct_choice_idx)")
    questions = []
    for number, entry in enumerate(data, start=1):
        entry = entry if isinstance(entry, dict) else {}
        qid, image_id, choices, right = entry.get("question_id"), entry.get("image_id"), entry.get("choices"), entry.get("correct_choice_idx")
        _require(path, number, qid, image_id, entry.get("question"))
        if type(image_id) is not int:
            raise DataError(f"{path}, question {qid}: image_id {image_id!r} is not a COCO image id (an integer)")
        if not (isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS) and all(isinstance(c, str) and c.strip() for c in choices)):
            raise DataError(f"{path}, question {qid}: choices must be 2 to {len(LETTERS)} non-empty strings: {choices!r}")
        if right is not None and (type(right) is not int or not 0 <= right < len(choices)):
            raise DataError(f"{path}, question {qid}: correct_choice_idx {right!r} is not the index of one of its {len(choices)} choices")
        choices, letter = [c.strip() for c in choices], None if right is None else LETTERS[right]
        record = {"question_id": qid, "image_id": image_id, "question": entry["question"].strip(),
                  **dict(zip(LETTERS, choices)), "answer": letter or "", "split": entry.get("split", ""),
                  "image": f"{image_id:012d}.jpg"}
        questions.append(ChoiceQuestion(0, record, record["image"], record["question"], choices, letter, key=str(qid),
                                        option_keys=LETTERS[:len(choices)]))
    return questions


SEED_DIMENSIONS = ("Scene Understanding", "Instance Identity", "Instance Attributes", "Instance Location", "Instances Counting",
                   "Spatial Relation", "Instance Interaction", "Visual Reasoning", "Text Understanding", "Action Recognition",
                   "Action Prediction", "Procedure Understanding")  # question_type_id 1-12, as SEED-Bench.json names them


_SEED_IMAGE_KINDS = ("image", "single image")  # data_type of a question about one image: SEED-Bench's, SEED-Bench-2's


def _seedbench_entries(path: Path) -> tuple[list[dict[str, Any]], Counter, dict[str, str]]:
    """The image questions of SEED-Bench's JSON or of a parquet file of its Hugging Face copy, how many questions of each
    other ``data_type`` it has (left out), and its question types' names: the file's own, else SEED-Bench's 12 for a file
    of its first release (SEED-Bench-2's, with ``level`` and ``subpart``, numbers its 27 otherwise)."""
    if path.suffix.lower() == ".parquet":  # the rows of questions about one image read alone: a video's frames are many
        first = set(parquet_columns(path))
        kinds = read_parquet(path, columns=["data_type"]).column("data_type").to_pylist() if "data_type" in first else None
        wanted = sorted({kind for kind in kinds if str(kind).lower() in _SEED_IMAGE_KINDS}) if kinds is not None else None
        entries = [] if wanted == [] else read_parquet(path, filters=[("data_type", "in", wanted)] if wanted else None).to_pylist()
        kinds, names = ["image"] * len(entries) if kinds is None else kinds, {}
    else:
        data = read_json(path, "SEED-Bench file")
        listed = data.get("questions") if isinstance(data, dict) else None
        if not (isinstance(listed, list) and (sample := _sample(listed)) and all("choice_a" in r for r in sample)):
            raise DataError(f"{path}: not SEED-Bench's file (SEED-Bench.json: an object whose questions list holds "
                            "question_id, question, choice_a ... choice_d, answer and data_id)")
        types = data.get("question_type") if isinstance(data.get("question_type"), dict) else {}
        names, first = {str(number): str(name) for name, number in types.items()}, set(_sample(listed)[0])
        kinds = [entry.get("data_type", "image") if isinstance(entry, dict) else "not a question" for entry in listed]
        entries = [entry for entry, kind in zip(listed, kinds) if str(kind).lower() in _SEED_IMAGE_KINDS]
    if not names and not {"level", "subpart"} & first:
        names = {str(number): name for number, name in enumerate(SEED_DIMENSIONS, start=1)}
    return entries, Counter(str(kind) for kind in kinds if str(kind).lower() not in _SEED_IMAGE_KINDS), names


def _seedbench_image(path: Path, entry: dict[str, Any], qid: Any) -> str | EmbeddedImage:
    """A question's image: ``data_id``, a file in the image folder; in a parquet file, the image it carries (a list of
    one, as the Hugging Face copy holds a question's images) or the file it names."""
    if path.suffix.lower() != ".parquet":
        image = entry.get("data_id")
        if not isinstance(image, str) or not image or escapes_root(image):
            raise DataError(f"{path}, question {qid}: data_id {image!r} is not an image file inside the image folder")
        return image
    cells = entry.get("image") if isinstance(entry.get("image"), list) else [entry.get("image")]
    cell = image_cell(cells[0]) if len(cells) == 1 else None
    if isinstance(cell, ImageFile):
        return str(cell)
    if not isinstance(cell, bytes):
        raise DataError(f"{path}, question {qid}: its image column holds {len(cells)} item(s) and no image's bytes or file")
    return EmbeddedImage(cell, f"{path}, question {qid}")


def read_seedbench(path: Path) -> list[ChoiceQuestion]:
    """SEED-Bench's image questions from its ``SEED-Bench.json`` or a parquet file of its Hugging Face copy
    (``lmms-lab/SEED-Bench``, each question's image inside), as the multiple-choice module asks them (by likelihood, as
    SEED-Bench's own evaluation ranks the options, or the options listed for a letter): ``choice_a`` ... as the
    options A, B, ..., ``answer`` the right one's letter, the image ``data_id``, a file in ``SEED-Bench-image/``. The
    record keeps ``question_id``, ``question``, the options, ``answer``, ``question_type_id``, ``category`` (the
    question type's name, as ``question_type`` names it: accuracy per category is SEED-Bench's per dimension) and
    ``image``. SEED-Bench-2's questions about one image (``Single Image``) are read alike; its questions of other kinds
    (a video, several images) are left out and counted in a note, by ``data_type``. A question
    without its id, text or 2-8 options, with an answer that names none of them, or whose image leaves the image folder
    is refused naming the file and the question."""
    chosen, others, type_names = _seedbench_entries(path)
    kinds = ", ".join(f"{kind!r} x {count}" for kind, count in others.most_common())
    if not chosen:
        raise DataError(f"{path} has no question about one image (data_type 'image', or SEED-Bench-2's 'Single Image'), "
                        f"which are those read: its questions' data_type is {kinds or 'none'}")
    if others:
        rank_zero_info(f"{path}: {len(chosen)} of its {len(chosen) + others.total()} questions are about one image; the "
                       f"others are left out (data_type {kinds})")
    questions = []
    for number, entry in enumerate(chosen, start=1):
        qid, answer = entry.get("question_id"), entry.get("answer")
        _require(path, number, qid, entry.get("data_id") or entry.get("image"), entry.get("question"))
        choices = [tables.number_text(entry.get(f"choice_{letter.lower()}")) for letter in LETTERS]  # 3 as '3'
        choices = choices[:next((i for i, c in enumerate(choices) if c in (None, "")), len(choices))]
        if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise DataError(f"{path}, question {qid}: choice_a, choice_b ... must be 2 to {len(LETTERS)} non-empty strings: "
                            f"{choices!r}")
        letter = str(answer).strip().upper() if answer not in (None, "") else None
        if letter is not None and letter not in LETTERS[:len(choices)]:
            raise DataError(f"{path}, question {qid}: answer {answer!r} is not the letter of one of its {len(choices)} choices")
        image = _seedbench_image(path, entry, qid)
        choices, kind = [c.strip() for c in choices], entry.get("question_type_id")
        record = {"question_id": qid, "question": entry["question"].strip(), **dict(zip(LETTERS, choices)),
                  "answer": letter or "", "question_type_id": kind, "category": type_names.get(str(kind), str(kind or "")),
                  "image": entry.get("data_id") or str(image)}
        questions.append(ChoiceQuestion(0, record, image, record["question"], choices, letter, key=str(qid),
                                        option_keys=LETTERS[:len(choices)]))
    return questions


class _Bytes(Exception):
    """A parquet cell that holds bytes (an image) somewhere in it."""


def _json_cell(value: Any) -> Any:
    """A parquet cell as JSON holds it (the output is written as JSON Lines or as a CSV of JSON cells): dates, times and
    decimals as their text; :class:`_Bytes` raised for one that holds bytes (a second image, a list of them)."""
    def text(item: Any) -> str:
        if isinstance(item, bytes | bytearray):
            raise _Bytes
        return str(item)
    return json.loads(json.dumps(value, default=text))


def parquet_questions(path: Path) -> list[tuple[str, dict[str, Any], EmbeddedImage | None]]:
    """The rows of a parquet file of questions, as benchmarks' Hugging Face copies hold them (lmms-lab's VQAv2, TextVQA,
    POPE, MME ...: ``question``, each question's image inside its ``image`` (or ``img_path``) column, ``answer`` or
    ``answers``): each ``(where, row, its image)``, the image its bytes, the row's image column then where it is
    (``<file>, row <n>``); a row whose image is a file's path (``datasets``' ``to_parquet`` of images loaded from files)
    keeps it, its image None. Other columns that hold bytes (a second image) are left out of the row, which the output
    writes as JSON; dates and decimals are their text. TextVQA's rows are scored as its evaluator scores them."""
    rows = read_parquet(path).to_pylist()
    if not rows:
        raise DataError(f"{path} has no questions")
    questions = []
    for number, row in enumerate(rows, start=1):
        where, column = f"{path}, row {number}", next((key for key in row if str(key).lower() in IMAGE_COLUMNS), None)
        cell = row.get(column) if column is not None else None
        several = len(cell) if isinstance(cell, list) and len(cell) > 1 else 0  # asked about one image: refused by count
        cell = image_cell(cell[0] if isinstance(cell, list) and len(cell) == 1 else None if several else cell)
        kept = {}
        for key, value in row.items():
            if key != column:
                try:
                    kept[key] = _json_cell(value)
                except _Bytes:
                    continue
        embedded = EmbeddedImage(cell, where) if isinstance(cell, bytes) else None
        image = [where] * several if several else where if embedded else cell
        textvqa = {"ocr_tokens", "flickr_original_url"} & set(kept) and kept.get("answers")  # as its JSON file is scored
        questions.append((where, {**kept, column or "image": image, **({"vqa_scoring": "textvqa"} if textvqa else {})}, embedded))
    return questions


def vqa_image_folder(subtype: str) -> str:
    """The COCO image folder (and file-name part) of a VQAv2 split: ``val2014`` for ``val2014``;
    ``test-dev2015``'s images are ``test2015``'s."""
    return "test2015" if subtype.startswith("test") else subtype

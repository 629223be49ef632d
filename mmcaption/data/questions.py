"""Free-form questions for ``mmcaption predict``: a CSV or JSON Lines file of (image, question[, answer]),
or VQAv2's official files (``v2_OpenEnded_mscoco_<split>_questions.json`` with, to score, its
``v2_mscoco_<split>_annotations.json``), or TextVQA's, GQA's and A-OKVQA's (:mod:`mmcaption.data.vqa_formats`).

The answers are generated as the instruct stage was taught to answer; with a reference ``answer``, each
row is scored by exact match after the VQA evaluation's normalisation (case, punctuation, articles,
number words), and the run's summary gives the accuracy; with VQAv2-style human ``answers`` (a list),
by the VQA accuracy (``min(#humans who gave it / 3, 1)``, as :func:`~mmcaption.evaluation.answers.vqa_accuracy`
computes it), averaged in the summary, per ``answer_type`` (yes/no, number, other) where the records have one (VQAv2's
annotations do), and per knowledge category for OK-VQA's (its annotations' ``question_types``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mmcaption.data import vqa_formats
from mmcaption.data.benchmarks import IMAGE_COLUMNS, EmbeddedImage, absent_cell, sniffed_format
from mmcaption.data.image_sources import coco2017_copy, image_paths
from mmcaption.data.json_values import JsonLines, json_values
from mmcaption.data.mme import mme_questions, mme_root, not_mme, say_where_mmes_answers_are
from mmcaption.data.predict import FORMAT_CONFIGS, FORMATS, _ImageRows, _PredictDataModule
from mmcaption.data.records import DataError, missing_file, not_utf8, read_json, read_json_list, whole_characters
from mmcaption.data.tables import (
    answer_key_columns,
    field_count_problem,
    image_file_of,
    literal_in_cell,
    number_text,
    read_table_rows,
    refuse_duplicate_columns,
    unnamed_kept,
    whole_numbers_read,
)
from mmcaption.data.vqa_formats import parquet_questions, public_image_root, public_vqa_records, vqa_image_folder
from mmcaption.errors import ConfigError
from mmcaption.evaluation.answers import normalise_answer
from mmcaption.images import local_file
from mmcaption.prompts import DEFAULT_SYSTEM, ConversationTemplate
from mmcaption.tasks import RESULT_COLUMNS
from mmcaption.terminal import shell_word


@dataclass
class OpenQuestion:
    """One question of the file: where it is (physical line), the record as written, and what it asks."""

    line: int
    record: dict[str, Any]
    image: str | EmbeddedImage  # a path, or the image itself (a parquet file's)
    question: str
    answer: str | None
    benchmark: tuple[str, tuple[str, ...]] | None = None  # a public benchmark's file: its name, and its image folders


def _question(path: Path, line: int, record: dict[str, Any], where: str | None = None) -> OpenQuestion:
    """Check one record (the keys read in lower case: :func:`~mmcaption.data.vqa_formats.record_keys`) and take its
    image, question and answer; a problem is refused naming ``where`` (by default the file and the line)."""
    image = next((record[name] for name in (*IMAGE_COLUMNS, "images") if record.get(name) not in (None, "", [])), "")
    several = len(image) if isinstance(image, list) and len(image) > 1 else 0  # ShareGPT's "images": [...]
    image = image_file_of(image[0] if isinstance(image, list) else image)  # datasets' to_json: {"bytes", "path"}
    held = isinstance(image, dict)  # datasets' to_csv of images it holds as bytes
    image = "" if held else str(image).strip()
    # "text": LLaVA's own evaluation files (question_id, image, text, category), as its model_vqa.py reads them
    question = str(record.get("question") or record.get("text") or "").strip()
    # "label": POPE's yes/no key (as the multiple-choice reader takes it for an answer key)
    answer, answers = number_text(record.get("answer", record.get("label"))), record.get("answers")
    conversation = "; a conversation (LLaVA's training layout) is scored by mmcaption validate or test with the instruct " \
        "stage's config (its data val_file)" if isinstance(record.get("conversations"), list) else ""
    asked = "question (column question, or text as LLaVA's evaluation files)" + conversation
    problems = [f"no {what}" for what, value in (("image (column image or img_path)", image or held), (asked, question))
                if not value] + [f"{several} images: a question is asked about one image"] * bool(several) + [
        "its image is the image's bytes, written into the file: save the images as files and name their paths"] * held
    if answer is not None and not isinstance(answer, str):
        problems.append(f"answer {answer!r} is not a string or a number")
    if number_text(answers) is None or isinstance(answers, str) and absent_cell(answers):  # pandas' NaN: no human answers
        answers = None
        record = {k: v for k, v in record.items() if k != "answers"}
    if isinstance(answers, str):  # a CSV cell: a JSON list, as ``mmcaption predict`` writes lists, or pandas' ['a', 'b']
        answers = listed if isinstance(listed := literal_in_cell(answers), list) else answers.strip() or None
    if answers is not None:  # VQAv2-style: the human answers, as strings or as {"answer": ...} objects
        answers = [number_text(a.get("answer") if isinstance(a, dict) else a) for a in answers] if isinstance(answers, list) else None
        if not answers or not all(isinstance(a, str) for a in answers):
            problems.append("answers must be a non-empty list of strings (or numbers) or of {\"answer\": ...} objects "
                            "(in a CSV cell: a JSON list, [\"two\", \"2\", ...])")
        else:
            record = {**record, "answers": answers}
    if problems:
        raise DataError(f"{where or f'{path}, line {line}'}: " + "; ".join(problems))
    kept = {k: v for k, v in record.items() if k not in RESULT_COLUMNS}
    answer = None if answer is None or absent_cell(answer) else answer.strip()  # pandas' NaN: no reference answer
    if "answer" in kept:  # the answer the prediction is scored against, as it was read
        kept["answer"] = answer
    return OpenQuestion(line, kept, image, question, answer)


def read_vqa_questions(path: Path, annotations: Path | None = None, data: Any = None) -> list[OpenQuestion]:
    """VQAv2's official questions file (``{"data_subtype": "val2014", "questions": [{"question_id", "image_id",
    "question"}, ...]}``), or OK-VQA's, with its annotations file (``{"annotations": [{"question_id", "image_id", "answers":
    [{"answer", ...}, ...], "answer_type", "question_type", "multiple_choice_answer"}, ...]}``) when given: joined on
    ``question_id``, each question then carries its ten human ``answers``, its ``answer_type`` and, from OK-VQA's
    ``question_types``, its knowledge ``category``. Its image is COCO's ``COCO_<folder>_<image_id, 12 digits>.jpg``.

    A question without ``question_id``, ``image_id`` or text, a question the annotations do not have (or give another
    image), or an annotations file of another split is refused, naming the file and the question. ``data``: the
    questions file's content, when it is read already."""
    data = read_json(path, "questions file") if data is None else data
    if isinstance(data, dict) and isinstance(data.get("annotations"), list) and "questions" not in data:
        raise DataError(f"{path} is VQAv2's annotations file (the human answers), not its questions: give it as --data.init_args."
                        "annotations_file, and the questions (v2_OpenEnded_mscoco_<split>_questions.json) as --data.init_args.questions_file")
    if not (isinstance(data, dict) and isinstance(data.get("questions"), list)):
        raise DataError(f"{path}: a .json questions file is VQAv2's official questions file ({{\"data_subtype\": ..., \"questions\": [{{\"question_id\", "
                        '"image_id", "question"}, ...]}), TextVQA\'s, GQA\'s or A-OKVQA\'s, a list of question objects, or JSON Lines; other questions are read from .jsonl or .csv files')
    subtype = str(data.get("data_subtype") or "")
    if data.get("data_type", "mscoco") != "mscoco" or not subtype:
        raise DataError(f"{path}: VQA questions on COCO images are read (data_type mscoco, a data_subtype such as "
                        f"val2014); this file has data_type {data.get('data_type')!r}, data_subtype {subtype!r}")
    folder = vqa_image_folder(subtype)
    annotated: dict[int, dict[str, Any]] | None = None
    kinds: dict[str, str] = {}  # OK-VQA's knowledge category of each question type ("one": "Vehicles and Transportation")
    if annotations is not None:
        notes = read_json(annotations, "annotations file")
        if isinstance(notes, dict) and isinstance(notes.get("questions"), list):
            raise DataError(f"{annotations} is a questions file, not VQAv2's annotations (v2_mscoco_<split>_annotations.json, "
                            "the human answers): give it as --data.init_args.questions_file")
        if not (isinstance(notes, dict) and isinstance(notes.get("annotations"), list)):
            raise DataError(f"{annotations}: not VQAv2's annotations file ({{\"annotations\": [{{\"question_id\", \"answers\", ...}}, ...]}})")
        if notes.get("data_subtype") not in (None, subtype):
            raise DataError(f"{annotations} annotates {notes['data_subtype']!r}, {path} asks {subtype!r}: give the annotations of the questions' split")
        annotated = {a.get("question_id"): a for a in notes["annotations"] if isinstance(a, dict)}
        kinds = notes["question_types"] if isinstance(notes.get("question_types"), dict) else {}
    questions, missing = [], []
    for number, entry in enumerate(data["questions"], start=1):
        entry = entry if isinstance(entry, dict) else {}
        qid, image_id, text = entry.get("question_id"), entry.get("image_id"), entry.get("question")
        if type(qid) is not int or type(image_id) is not int or not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}, question {number} ({qid!r}): needs an integer question_id and image_id and a question")
        record: dict[str, Any] = {"question_id": qid, "image_id": image_id, "question": text.strip(),
                                  "image": f"COCO_{folder}_{image_id:012d}.jpg"}
        if annotated is not None:
            note = annotated.get(qid)
            if note is None:
                missing.append(qid)
                continue
            if note.get("image_id") != image_id:
                raise DataError(f"{annotations}: question {qid} is about image {note.get('image_id')!r}, {path} says {image_id}")
            if not isinstance(note.get("answers"), list):
                raise DataError(f"{annotations}, question {qid}: no answers (a list of the human answers) to score it by")
            kind = note.get("question_type")
            record.update(answers=note.get("answers"), answer_type=note.get("answer_type"), question_type=kind,
                          multiple_choice_answer=note.get("multiple_choice_answer"),
                          **({"category": str(kinds[kind])} if isinstance(kind, str) and kind in kinds else {}))
        questions.append(_question(path, 0, record, where=f"{annotations if annotated is not None else path}, question {qid}"))
    if missing:
        raise DataError(f"{annotations} has no annotation for {len(missing)} of the {len(data['questions'])} questions of {path} "
                        f"(question_id {', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''}): "
                        "give the annotations of the same split, or no annotations_file to answer without scoring")
    if not questions:
        raise DataError(f"{path} has no questions")
    return questions


VQA_IMAGES_LOOKED_FOR = 50


def vqa_image_root(path: Path, questions: list[OpenQuestion], image_root: Path | None) -> Path:
    """Where a VQAv2 file's COCO images are: ``<root>/<folder>`` (``val2014/`` as COCO's zip unpacks), or
    ``<root>`` itself; the root is ``image_root``, by default the questions file's folder. The folder holding
    any of the first images is taken (one image missing is that question's error, not the whole file's). With none
    there, COCO 2017's copies of the photos under the root are read (:func:`coco2017_copy`)."""
    root = image_root or path.parent
    folder = questions[0].image.split("_")[1]
    candidates = [root / folder, root]
    images = list(dict.fromkeys(question.image for question in questions))[:VQA_IMAGES_LOOKED_FOR]
    for candidate in candidates:
        if any((candidate / image).is_file() for image in images):
            return candidate
    ids = list(dict.fromkeys(question.record["image_id"] for question in questions))
    if any(coco2017_copy(root, image_id) for image_id in ids[:VQA_IMAGES_LOOKED_FOR]):  # only COCO 2017's download
        copies = {image_id: coco2017_copy(root, image_id) for image_id in ids}
        for question in questions:
            question.image = copies[question.record["image_id"]] or question.image
        return root
    raise DataError(f"none of the first {len(images)} questions' images ({images[0]}, ...) is in {candidates[0]} or in "
                    f"{candidates[1]}, nor in COCO 2017's train2017/ or val2017/ there (the same photos): give the "
                    "folder that holds COCO's images with --data.image_root")


def read_question_file(path: Path, annotations: Path | None = None) -> tuple[list[OpenQuestion], bool]:
    """Questions from a ``.jsonl`` file (one object per line: ``image`` or ``img_path``, ``question``,
    optional ``answer``, or VQAv2-style ``answers``: the human answers; JSON Lines named ``.json``, as POPE's label
    files are, and a ``.json`` list of such objects too) or a ``.csv`` with those columns, in any case, as spreadsheets write it (a
    UTF-8 byte-order mark is accepted; ``answers`` as a JSON list in its cell), or VQAv2's official
    ``.json`` files (:func:`read_vqa_questions`; ``annotations`` goes with them only). A line that is
    not JSON, a row whose fields do not fit the header, a duplicate column or a record without image or
    question is refused, naming the file and its physical line. Returns the questions, and whether the file is VQAv2's
    official questions file. A folder is MME's release (:func:`~mmcaption.data.mme.mme_questions`)."""
    if path.is_dir():
        return [_question(path, 0, record, where) for where, record in mme_questions(path)], False
    if not path.is_file():
        raise missing_file(path, "questions file")
    if path.suffix.lower() == ".parquet":  # a benchmark's Hugging Face copy: each question's image inside
        asked = [(_question(path, 0, vqa_formats.record_keys(path, where, record), where), image) for where, record, image in parquet_questions(path)]
        return [replace(question, image=image or question.image) for question, image in asked], False
    if path.suffix.lower() == ".json":
        data = read_json_list(path, "questions file")  # an object, a list, or JSON Lines (POPE's files, named .json)
        if isinstance(data, dict) and not isinstance(data.get("questions"), list) and {"question", "text"} & {
                str(key).lower() for key in data}:
            data = [data]  # one question alone: a POPE file of one line
        if (public := public_vqa_records(path, data)) is not None:  # TextVQA, GQA, A-OKVQA
            if annotations is not None or not public[1]:
                raise DataError(f"{path} has no questions (a {public[0]} file)" if not public[1] else f"annotations_file "
                                f"{annotations} goes with VQAv2's questions file: {path}, a {public[0]} file, holds its own answers")
            return [replace(_question(path, 0, record, where), benchmark=public[::2]) for where, record in public[1]], False
        if not (isinstance(data, list) and annotations is None):
            return read_vqa_questions(path, annotations, data), True
        places = [data.place(n) if isinstance(data, JsonLines) else f"record {n + 1}" for n in range(len(data))]  # its line
        questions = [_question(path, number, vqa_formats.record_keys(path, place, record), where=f"{path}, {place}")
                     for number, (place, record) in enumerate(zip(places, data), start=1)]
        if not questions:
            raise DataError(f"{path} has no questions")
        return questions, False
    if annotations is not None:
        raise DataError(f"annotations_file {annotations} goes with VQAv2's official questions file (.json), not with {path}: "
                        "a .jsonl or .csv carries its answers in its own answer or answers column")
    questions = []
    try:
        if path.suffix.lower() == ".jsonl":
            whole = whole_characters(path, path.read_text(encoding="utf-8-sig"))
            for line, text in enumerate(whole.split("\n"), start=1):  # at \n only: U+2028 is in-line
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    if (values := json_values(whole)) is None:  # else jq's records, each over several lines
                        raise DataError(f"{path}, line {line}: not JSON: {error}") from error
                    questions = [_question(path, line, vqa_formats.record_keys(path, f"line {line}", record)) for record, line in zip(*values)]
                    break
                questions.append(_question(path, line, vqa_formats.record_keys(path, f"line {line}", record)))
        elif path.suffix.lower() in (".csv", ".tsv"):  # a .tsv: a spreadsheet's tab-separated save
            header, rows = read_table_rows(path, "\t" if path.suffix.lower() == ".tsv" else None)
            refuse_duplicate_columns(path, header)
            header = [vqa_formats.read_name(name) for name in header]
            if not {"question", "text"} & set(header) or not any(name in header for name in IMAGE_COLUMNS):
                raise DataError(f"{path}: the header needs the columns image (or img_path) and question (or text), and it has "
                                f"{header}")
            unnamed = unnamed_kept(path, header, rows)  # pandas' index, the user's key to the rows: kept
            whole_numbers_read(path, header, rows, ("answer", "label"))  # pandas' 3.0 for 3
            for line, fields in rows:
                if any(field.strip() for field in fields):
                    if problem := field_count_problem(path, line, fields, header):
                        raise problem
                    questions.append(_question(path, line, {k: v for i, (k, v) in enumerate(zip(header, fields))
                                                            if k or i in unnamed}))
        else:
            raise DataError(f"{path}: questions are read from .jsonl, .csv, .tsv, .parquet or .json files (VQAv2's official questions, "
                            "a list of question objects, or JSON Lines)")
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    if not questions:
        raise DataError(f"{path} has no questions")
    if not any(q.answer or "answers" in q.record for q in questions) and (keys := answer_key_columns(list(questions[0].record))):
        rank_zero_info(f"{path}: no 'answer', so no accuracy; {keys[0]!r} is kept as it is, not read as the answer: name it 'answer' if it is one")
    say_where_mmes_answers_are(path, [q.record for q in questions])
    if unread := next(((q.line, a) for q in questions for a in q.record.get("answers") or () if len(q.record["answers"]) > 1
                       and a != normalise_answer(a, official=True)), None):  # as vqaEval.py scores them: as written
        rank_zero_warn(f"{path}: human answers are scored as VQAv2's evaluation scores them, as written when they agree (case, number words, articles "
                       f"kept): {unread[1]!r} (line {unread[0]}) never matches a prediction, which is normalised "
                       f"({normalise_answer(unread[1], official=True)!r}); write them as VQAv2's are, lower case with digits, no articles")
    return questions, False


def read_questions(path: Path, annotations: Path | None = None) -> list[OpenQuestion]:
    """The questions of a file, as :func:`read_question_file` reads them."""
    return read_question_file(path, annotations)[0]


class _QuestionRows(_ImageRows):
    def __init__(self, rows, image_paths, image_processor, prompts: list[list[int]]) -> None:
        super().__init__(rows, image_paths, image_processor)
        self.prompts = prompts

    def text(self, index: int) -> dict[str, Any]:
        return {"task": "answer", "input_ids": torch.tensor(self.prompts[index])}


class QuestionsPredictDataModule(_PredictDataModule):
    """Answer free-form questions about images: ``mmcaption predict`` writes each record with its
    ``prediction`` (and ``correct``, when the file gives an ``answer``) and reports the exact match.

    Args:
        questions_file: a ``.jsonl``, ``.csv``, ``.tsv`` or ``.parquet`` (images inside) file of ``image`` (or ``img_path``),
            ``question`` and optional ``answer`` (VQA-style exact match after normalisation) or ``answers`` (the human
            answers: VQA accuracy); or VQAv2's official questions ``.json``; or MME's release folder.
        annotations_file: with VQAv2's questions file, its annotations file (the human answers and
            answer types, to score); without it, the questions are answered and not scored.
        submission_questions_file: for VQAv2's test-dev, test2015's questions file: VQA's evaluation
            server wants every test2015 question answered, so the results file gives the ones not asked
            an empty answer.
        image_root: folder the images are relative to (default: the file's folder; for VQAv2, the folder
            that holds ``val2014/`` or the images themselves).
        output: the file to write (``.jsonl``, or ``.csv``): the input fields, ``prediction``, ``correct``, ``error``;
            None: nothing written (``trainer.predict`` returns the rows).
        system_prompt: the instruct stage's system prompt (None: the one the model was trained with, which ``mmcaption
            predict`` reads from its checkpoint or export, else LLaVA's).
        batch_size: questions per batch.
        overwrite: replace ``output`` if it exists (by default an existing output is refused; the input
            itself is always refused).
    """

    stage_needed = "instruct"

    def __init__(
        self,
        questions_file: str,
        annotations_file: str | None = None,
        submission_questions_file: str | None = None,
        image_root: str | None = None,
        output: str | None = "predictions/answers.jsonl",
        system_prompt: str | None = None,
        batch_size: int = 8,
        overwrite: bool = False,
        instruction: str | None = None,
        **kwargs: Any,
    ) -> None:
        """``instruction``: a line asked after each question, as LLaVA-1.5's evaluation asks VQAv2's with
        "Answer the question using a single word or phrase." (scored against short human answers, a sentence
        gets no credit); None asks the questions as written."""
        super().__init__(output, batch_size, overwrite, **kwargs)
        self.save_hyperparameters()
        self.questions_file, self.image_root = local_file(Path(questions_file)), image_root and local_file(Path(image_root))
        self.annotations_file = annotations_file and Path(annotations_file)
        # VQAv2's official questions file: predict also writes the answers as its evaluation server takes them
        self.official_vqa = False  # VQAv2's official questions file: known once it is read (setup)
        self.submission_questions_file = submission_questions_file and Path(submission_questions_file)
        if self.submission_questions_file and self.questions_file.suffix.lower() != ".json":
            raise ConfigError("submission_questions_file goes with VQAv2's official questions file (.json), which "
                              f"questions_file {self.questions_file} is not")
        self.system_prompt = DEFAULT_SYSTEM if system_prompt is None else system_prompt
        self.hparams["system_prompt"] = self.system_prompt  # what asked it, in the summary
        self.instruction = instruction and instruction.strip()
        self._submission_ids: list[int] | None = None

    def submission_question_ids(self) -> list[int]:
        """The question ids the evaluation server's results file must hold: those of
        ``submission_questions_file`` (every test2015 question for test-dev), else none beyond the asked."""
        if self.submission_questions_file is None:
            return []
        if self._submission_ids is None:
            self._submission_ids = [q.record["question_id"] for q in read_vqa_questions(self.submission_questions_file)]
        return self._submission_ids

    # the summary's accuracies per category, and per answer type (VQAv2's yes/no, number, other) as VQA's evaluation reports them
    category_columns = {"per_category": "category", "per_answer_type": "answer_type"}

    def input_files(self) -> list[Path]:
        extra = [p for p in (self.annotations_file, self.submission_questions_file) if p]
        return [self.questions_file, *extra]  # MME's release: its folder (its question files' digest in the summary)

    def check_inputs(self, stage: str = "predict") -> None:
        if not self.questions_file.is_file() and mme_root(self.questions_file) is None:  # MME's release is a folder
            raise not_mme(self.questions_file) if self.questions_file.is_dir() else missing_file(self.questions_file, "questions file")
        sniffed = sniffed_format(self.questions_file)
        if sniffed is not None and (sniffed[0] in ("csv", "mmbench", "seedbench") or "with options" in sniffed[1]):
            raise ConfigError(f"{self.questions_file} {sniffed[1]}: it holds multiple-choice questions ({FORMATS[sniffed[0]]}), whose options free-form "
                              f"answering would drop, comparing the answers with letters; use --config configs/predict/{FORMAT_CONFIGS[sniffed[0]]}.yaml --data.csv_file {shell_word(self.questions_file)}")
        for name, file in (("annotations", self.annotations_file), ("submission questions", self.submission_questions_file)):
            if file and not file.is_file():
                raise missing_file(file, f"{name} file")

    def setup(self, stage: str) -> None:
        questions, self.official_vqa = read_question_file(self.questions_file, self.annotations_file)
        if self.official_vqa and self.submission_questions_file is not None:  # refused now, not by the server after the run
            known = set(self.submission_question_ids())
            if lacking := [q.record["question_id"] for q in questions if q.record["question_id"] not in known]:
                raise DataError(f"submission_questions_file {self.submission_questions_file} lacks {len(lacking):,} of the "
                                f"{len(questions):,} questions of {self.questions_file} (question_id {lacking[0]}): the server "
                                "wants a results file of the split that holds them (test-dev's: "
                                "v2_OpenEnded_mscoco_test2015_questions.json)")
        root = self.image_root or self.questions_file.parent
        if self.official_vqa:
            root = vqa_image_root(self.questions_file, questions, self.image_root)
        elif benchmark := questions[0].benchmark:
            root = public_image_root(self.questions_file, benchmark[0], [q.image for q in questions], benchmark[1], self.image_root)
        template = ConversationTemplate(system=self.system_prompt)
        asked = [f"{q.question}\n{self.instruction}" if self.instruction else q.question for q in questions]
        prompts = [template.prompt(question, self.tokenizer) for question in asked]
        files = iter(image_paths([q.image for q in questions if not isinstance(q.image, EmbeddedImage)], root,
                                 self.questions_file, given=self.image_root is not None))  # an absolute one stays as it is
        paths = [q.image if isinstance(q.image, EmbeddedImage) else next(files) for q in questions]
        records = [{**q.record, "answer": q.answer} if q.answer else q.record for q in questions]
        self.dataset = _QuestionRows(records, paths, self.image_processor, prompts)

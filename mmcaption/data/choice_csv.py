"""The original scripts' multiple-choice CSV, as spreadsheets write it: ``img_path, Question, A, B`` (and
``C`` ... ``H``, optional ``answer``)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mmcaption.data.benchmarks import (
    IMAGE_COLUMNS,
    ChoiceQuestion,
    absent_cell,
    option_columns,
    row_options,
)
from mmcaption.data.records import DataError, missing_file
from mmcaption.data.tables import (
    answer_key_columns,
    field_count_problem,
    image_file_of,
    read_table_rows,
    refuse_duplicate_columns,
    unnamed_kept,
)
from mmcaption.evaluation.answers import LETTERS, own_letters_dropped
from mmcaption.tasks import RESULT_COLUMNS

REQUIRED_COLUMNS = ("img_path", "Question", "A", "B")
_LETTER_ANSWER = re.compile(r"\(?([A-Ha-h])[).:]?")  # B, b, B), (B), B., B: as answer keys are written


def read_choice_csv(path: Path) -> list[ChoiceQuestion]:
    """Read a multiple-choice CSV as spreadsheets write it, refusing what would be read wrong.

    Columns are matched without regard to case, and the image's may be named ``image``, as in questions files;
    a UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted. An answer may be written as the letter
    (``B``, ``b``, ``B)``, ``(B)``, ``B.``) or as the text of its option; the letter it names is what the
    prediction is scored against, and what the output's ``answer`` column holds. A ``nan`` cell (pandas' NaN
    written as text) is an empty one. A duplicate column, a row whose
    number of fields differs from the header's (an unquoted comma shifts the question into the options),
    an empty question, fewer than two options, a gap between options or an answer that names no option
    is refused with the file and the physical line; a file in another encoding is refused saying so. One separated by
    semicolons (Excel's "CSV" in many countries) or tabs (a ``.tsv``) is read as such.
    """
    if not path.is_file():
        raise missing_file(path, "multiple-choice CSV")
    header, rows = read_table_rows(path)  # one separated by tabs too
    refuse_duplicate_columns(path, header)
    folded = [name.lower() for name in header]  # columns without a name: pandas' index kept, trailing cells left out
    unnamed = unnamed_kept(path, header, rows)
    earlier = [name for name, low in zip(header, folded) if low in RESULT_COLUMNS]
    if earlier and "prediction" not in folded:  # the user's own column, which the output's would replace
        raise DataError(f"{path}: column(s) {earlier} have the names predict writes its results under, and the file is not "
                        "an earlier predict's output (it has no 'prediction' column); if one holds the answer key, name it "
                        "'answer', otherwise rename it so that the output keeps it")
    if earlier:
        rank_zero_info(f"{path}: columns {earlier} are an earlier predict's results; they are not read, and are replaced")
    column = {low: i for i, low in enumerate(folded)}
    keys = answer_key_columns(header)
    if keys and "answer" not in column:
        rank_zero_info(f"{path}: no 'answer' column, so no accuracy; column {keys[0]!r} is kept as it is, not read as the "
                       "answer key: name it 'answer' if it is one")
    image = next((name for name in ("img_path", *IMAGE_COLUMNS) if name in column), "img_path")  # the questions files' names too
    missing = [name for name in REQUIRED_COLUMNS if (image if name == "img_path" else name.lower()) not in column]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)}, then optional C-H and "
                        f"'answer'; it has {header}")
    letters, option_keys = option_columns(path, header)
    beyond = [name for name, low in zip(header, folded) if len(low) == 1 and "i" <= low <= "z"]
    if beyond and LETTERS[-1].lower() in column:  # options I, J, ... after H: left out, they made the questions easier
        raise DataError(f"{path}: column(s) {beyond} follow option {LETTERS[-1]}, and a question has at most "
                        f"{len(LETTERS)} options ({', '.join(LETTERS)})")
    questions, ambiguous, repeated, lettered = [], [], [], []
    for line, fields in rows:
        if not any(field.strip() for field in fields):
            continue  # a blank line
        if problem := field_count_problem(path, line, fields, header):
            raise problem
        values = {low: field.strip() for low, field in zip(folded, fields)}
        options, wrong = row_options(values, letters)
        problems = [f"empty {name}" for name, key in (("img_path", image), ("Question", "question")) if not values[key]] + wrong
        held = image_file_of(values[image])  # datasets' to_csv of an image column: {'bytes': None, 'path': 'a.png'}
        values[image] = "" if isinstance(held, dict) else held
        if isinstance(held, dict):
            problems.append(f"its {image} is the image's bytes, written into the file: save the images as files and name "
                            "their paths")
        given = "" if absent_cell(values.get("answer", "")) else values["answer"]
        answer = _answer_letter(given, options)  # "A. red" as the option is written, or "red" as the model is asked it:
        if (bare := own_letters_dropped(options)) is not None:
            lettered.append((line, options[0]))
            options, answer = bare, answer if answer is not None else _answer_letter(given, bare)
        texts = [_folded(option) for option in options]
        if same := [letter for letter, option in zip(LETTERS, options) if options.count(option) > 1]:
            repeated.append((line, same, options[LETTERS.index(same[0])]))
        if answer and _folded(given) in texts and texts.index(_folded(given)) != LETTERS.index(answer):
            ambiguous.append((line, given, answer, LETTERS[texts.index(_folded(given))], options))  # "b" among d, c, b, a
        if answer is None:
            problems.append(f"answer {values['answer']!r} is neither one of {', '.join(LETTERS[: len(options)])} nor an option's text")
        if problems:
            raise DataError(f"{path}, line {line}: " + "; ".join(problems))
        # the cells as the file has them, for the output to give back (the question and options are read stripped)
        record = {("answer" if low == "answer" else name): field for column, (name, low, field) in enumerate(
                  zip(header, folded, fields)) if (low or column in unnamed) and low not in RESULT_COLUMNS}
        if "answer" in record:  # the letter it names, which the prediction is scored against: (C), c, C. or white -> C
            record["answer"] = answer
        questions.append(ChoiceQuestion(line, record, values[image], values["question"], options, answer or None,
                                        option_keys=option_keys))
    if not questions:
        raise DataError(f"{path} has no questions")
    if lettered:
        rank_zero_info(f"{path}: the options of {len(lettered)} question(s) are written with their letters (line "
                       f"{lettered[0][0]}: {lettered[0][1]!r}), which the prompt gives them itself; asked without them")
    if ambiguous:
        line, given, answer, other, options = ambiguous[0]
        rank_zero_warn(f"{path}: {len(ambiguous)} answer(s) are both an option's letter and another option's text, and are "
                       f"read as the letter (line {line}: {given!r} is read as option {answer}, "
                       f"{options[LETTERS.index(answer)]!r}, not as option {other}, {options[LETTERS.index(other)]!r}); "
                       "check that the answer key means letters")
    if repeated:  # the first of equal options wins: a question whose answer is the other was scored wrong, unsaid
        line, same, text = repeated[0]
        rank_zero_warn(f"{path}: {len(repeated)} question(s) list the same option more than once, which no model can tell "
                       f"apart (line {line}: options {', '.join(same)} are {text!r}); the first of them is chosen whenever "
                       "any is likeliest, and an answer key naming another counts as wrong")
    return questions


def _answer_letter(answer: str, options: list[str]) -> str | None:
    """The letter an answer cell names ("" for none given, None for none of the options)."""
    if not answer:
        return ""
    letter = _LETTER_ANSWER.fullmatch(answer)
    if letter and letter.group(1).upper() in LETTERS[: len(options)]:
        return letter.group(1).upper()
    texts = [_folded(option) for option in options]
    return LETTERS[texts.index(_folded(answer))] if _folded(answer) in texts else None


def _folded(text: str) -> str:
    """Text as an answer key's and an option's compare: in any case and Unicode form (an accent typed as its own mark)."""
    return unicodedata.normalize("NFKC", text).casefold()

"""The Python API's inputs as callers give them: one item or a batch of many kinds (lists, pandas, arrays,
generators), the questions paired with their images, options from a DataFrame, texts checked, and the caller's line
named by a warning."""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmcaption.errors import ConfigError
from mmcaption.evaluation.answers import LETTERS, own_letters_dropped


def option_rows(sheet: Any) -> list[list]:
    """A DataFrame's option columns (``A``, ``B``, ... when it has them: a benchmark sheet's question and answer are
    not options), a row each, a row's empty cells (fewer options than columns) left out."""
    lettered = [column for column in sheet.columns if str(column).strip().upper() in LETTERS]
    frame = sheet[lettered] if lettered else sheet  # a column at a time: a row of an int and a float column (pandas' reading
    rows = zip(*(frame.iloc[:, i].tolist() for i in range(frame.shape[1])))  # of a gap among numbers) was all floats
    return [[as_text(cell) for cell in row if not _empty(cell)] for row in rows]


def _empty(cell: Any) -> bool:
    """A sheet's empty cell as pandas reads it: None, NaN, pandas' NA (a nullable column's gap) or NaT, blank text."""
    return (cell is None or isinstance(cell, float) and math.isnan(cell) or isinstance(cell, str) and not cell.strip()
            or type(cell).__name__ in ("NAType", "NaTType"))


def as_text(option: Any) -> Any:
    """A number among the options (a counting question's 1, 2, 3, as pandas reads a sheet's) as the text the sheet
    holds: 2.0, a whole number in a column pandas made float for a gap in it, is "2", as the CSV's cell and the CLI read it;
    a true/false column's cells (a spreadsheet's TRUE, FALSE) are "True", "False"."""
    if isinstance(option, bool | np.bool_):
        return str(bool(option))
    if isinstance(option, numbers.Real) and not isinstance(option, bool) and math.isfinite(option):
        return str(int(option)) if float(option).is_integer() else str(option)
    return option


def as_batch(value: object) -> list | None:
    """``value`` as a list when it is a batch - a list, a tuple, a pandas Series, a 1-D array of paths or texts, a 4-D
    array or tensor of images, a generator - or ``None`` when it is one item (a path, bytes, an image, a 2-D or 3-D
    array)."""
    if isinstance(value, list | tuple):
        return list(value)
    if one_image(value) or value is None:
        return None
    if isinstance(value, np.ndarray | torch.Tensor):
        return list(value) if value.ndim == 4 else value.tolist() if value.ndim == 1 else None
    if hasattr(value, "tolist") and hasattr(value, "__len__") and not hasattr(value, "columns"):  # pandas' Series, Index
        return list(value.tolist())  # and arrays (pandas 3's text column's .values is an ArrowStringArray)
    if isinstance(value, Iterator | Sequence):  # a generator; a Hugging Face dataset's column
        return list(value)
    return None


def one_image(value: object) -> bool:
    """A path, an image's bytes, an open file (a BytesIO of a download), a PIL image: one image, though iterable."""
    return isinstance(value, str | bytes | bytearray | memoryview | Path | Image.Image) or hasattr(value, "read")


def callers_level() -> int:
    """The ``stacklevel`` of a warning that names the line calling the API (its frames, and torch's ``no_grad``, left
    out): a fixed level named a line inside, and Python shows a warning once per line, so the second question's
    same options went unsaid."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("mmcaption.", "torch.")):
        frame, level = frame.f_back, level + 1
    return level


def caption_needs_images(images: list) -> None:
    if any(image is None for image in images):  # a caption of no image would be made up from the prompt alone
        raise ConfigError("caption needs an image for each item; None is for text-only questions (answer, choose, chat)")


def pair_questions(images, questions) -> tuple[bool, list, list[str]]:
    """(whether a batch was given, the images, the questions): one of each; a batch of images and as many questions;
    or a batch of images and one question asked of each."""
    image_batch, question_batch = as_batch(images), as_batch(questions)
    if question_batch is None and image_batch is not None:
        question_batch = [questions] * len(image_batch)
    if question_batch is None:
        many, images, questions = False, [images], [questions]
    else:
        many, questions = True, question_batch
        if image_batch is None or len(image_batch) != len(questions):
            given = "one image" if image_batch is None else f"{len(image_batch)} images"
            several = len(questions) != 1
            raise ConfigError(f"{len(questions)} question{'s' * several} in a list need{'s' * (not several)} a list of as many images "
                              f"({given} given; None for a text-only question)")
        images = image_batch
    check_texts("question", questions)
    return many, images, questions


def checked_batch_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ConfigError(f"batch_size is a whole number of images of at least 1, not {size!r}")
    return int(size)


def check_errors(errors: object) -> None:
    """``errors`` is a list (anything with ``append``) the images ``skip_unreadable`` skips are added to: a typo's value
    was an AttributeError once an image was skipped."""
    if errors is not None and not callable(getattr(errors, "append", None)):
        raise ConfigError(f"errors is a list that each skipped image's (index, reason) is added to, not {errors!r}")


def check_texts(what: str, texts: list) -> None:
    """Questions and options are text that says something: an empty one would leave the model to make it up."""
    empty = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if empty:
        raise ConfigError(f"{what} {empty[0]} is {texts[empty[0]]!r}: each {what} is a non-empty string")
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # bytes a terminal or file decoded with surrogateescape
            raise ConfigError(f"{what} {i} is not text: {text!r} holds bytes that are not UTF-8 ({error.reason} at "
                             f"character {error.start})") from None


def per_question_options(options: Any, questions: list[str], many: bool) -> list[list[str]]:
    """The options of each question: one list for them all, a list per question, a 2-D array or a DataFrame's option
    columns a row each; each option checked, and options of the same text said (once a call, their questions
    counted)."""
    given = option_rows(options) if hasattr(options, "columns") else (  # a DataFrame's option columns: a row each
        options.tolist() if isinstance(options, np.ndarray) and options.ndim == 2 else as_batch(options))
    if given is None:
        shown = repr(options) if len(repr(options)) <= 80 else type(options).__name__  # not a whole array's dump
        raise ConfigError(f"options is a list of the options' texts (or, with many questions, a list of them, a 2-D "
                         f"array or a DataFrame of a row each), not {shown}")
    given = [as_text(o) for o in given]
    nested = [as_batch(o) for o in given]
    if not many or all(isinstance(o, str) for o in given):  # one option list, for each question if there are many
        option_lists = [given] * len(questions)
    elif len(given) != len(questions) or any(o is None for o in nested):
        raise ConfigError(f"choose with {len(questions)} questions needs a list of options per question, or one list of "
                         "options for all of them")
    else:
        option_lists = [[as_text(o) for o in opts] for opts in nested]
    repeated: dict[tuple[str, ...], list[str]] = {}  # the same option twice: said once a call, its questions counted
    lettered: list[tuple[str, list[str]]] = []  # "A. red", "B. blue": asked without their letters, said once a call
    for index, (question, opts) in enumerate(zip(questions, option_lists)):
        check_texts("option", opts)  # then stripped, as predict reads a sheet's cells: "  white circle " lost to "circle"
        opts = option_lists[index] = [option.strip() for option in opts]
        if (bare := own_letters_dropped(opts)) is not None:
            lettered.append((question, opts))
            opts = option_lists[index] = bare
        for text in dict.fromkeys(option for option in opts if opts.count(option) > 1):  # equal scores: the first wins
            repeated.setdefault((text, *(letter for letter, option in zip(LETTERS, opts) if option == text)), []).append(question)
    if lettered:
        (question, opts), more = lettered[0], len(lettered) - 1
        warnings.warn(f"{question!r}" + (f" and {more} other questions" if more else "") + f": options {opts[0]!r} ... are "
                      "written with their letters, which the prompt gives them itself; asked without them", stacklevel=callers_level())
    for (text, *same), asked in repeated.items():
        where = f"{asked[0]!r}" + (f" and {len(asked) - 1} other questions" if len(asked) > 1 else "")
        warnings.warn(f"{where}: options {', '.join(same)} are the same text ({text!r}): no model can tell them apart, and "
                      f"{same[0]} is chosen whenever any of them is likeliest", stacklevel=callers_level())
    return option_lists

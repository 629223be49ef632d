"""What a dataset's caption column holds, read as captions: a string (several captions split at the separator, or a
JSON list as a CSV cell holds one, ``["a dog.", "a dog on grass."]``, as Flickr30k's CSV has them, or Python's, as pandas'
``to_csv`` writes a column of lists, ``['a dog.', "a dog's ball."]``), a list of strings,
objects whose text is named by a dotted setting (``sentences.raw``: HuggingFaceM4/COCO's ``{raw, tokens, ...}``,
Karpathy's ``[{raw, tokens}, ...]``), or several columns (Flickr8k's ``caption_0`` ... ``caption_4``)."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from mmcaption.data.conversation_fields import ROLES, text_of
from mmcaption.data.records import BadRecords, DataError
from mmcaption.data.tables import literal_in_cell

# blanks around a caption, invisible ones too, as text copied from a web page brings them: zero-width spaces and
# joiners, word joiners, byte order marks (str.strip keeps them: a caption of one zero-width space was trained on)
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
# what a scraped caption keeps of its page: character references (&amp; &#39;) and line or style tags
_HTML = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);|</?(?:br|p|b|i|u|em|strong|span|div|a|sup|sub)\b[^<>]*>",
                   re.IGNORECASE)
HTML_NOTE = "captions holding HTML (a character reference such as &amp; or a tag such as <br>), trained on as written"


# one of those characters at a caption's edge, as UTF-8 or as the escape json.dump writes by default: after or before a
# quote, a table's separator or a line's end (inside a word they are kept: Persian's ZWNJ, an emoji's ZWJ)
_CHARACTER = rb"(?:\xe2\x80[\x8b-\x8d]|\xe2\x81\xa0|\xef\xbb\xbf|\\u200[bcdBCD]|\\u2060|\\u[fF][eE][fF][fF])"
_ANY = re.compile(_CHARACTER)
_AT_AN_EDGE = re.compile(rb"(?m)(?:^|[\"\t,;|\r\n])[ \t]*" + _CHARACTER + rb"|" + _CHARACTER + rb"[ \t]*(?:[\"\t,;|\r\n]|$)")


def invisible_characters_in(file: Path) -> bool:
    """Whether a caption file holds a character :func:`caption_text` removes and earlier releases kept (a cache they
    built from it is built again; that of any other file stays valid)."""
    data = file.read_bytes()
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # none of them anywhere: no search at each edge (5 s, of 0.5,
    return _ANY.search(data, start) is not None and _AT_AN_EDGE.search(data, start) is not None  # on COCO's train captions)


_MARKED = re.compile(rb'"is_(?:rejected|precanned)"\s*:\s*true')  # VizWiz-Captions' marked captions


def marked_captions_in(file: Path) -> bool:
    """Whether a COCO captions file marks captions rejected or precanned (VizWiz-Captions'), which the COCO reader leaves
    out and earlier releases read (a cache they built from it is built again)."""
    return _MARKED.search(file.read_bytes()) is not None


# a cell that may hold Python's list of captions, as pandas' to_csv writes a column of lists: ['a dog.', "a dog's ball."]
_PYTHON_LIST = re.compile(rb"\[[ \t]*'|'[ \t]*\]")


def python_lists_in(file: Path) -> bool:
    """Whether a caption table may hold Python's lists, which :func:`texts_of` reads as the captions they list and
    earlier releases read as one caption (a cache they built from it is built again)."""
    return _PYTHON_LIST.search(file.read_bytes()) is not None


def caption_text(text: str) -> str:
    """A caption without the blanks around it, invisible ones included."""
    while (stripped := text.strip().strip(INVISIBLE)) != text:  # (a regular expression took seconds over long blanks)
        text = stripped
    return text


def html_in(text: str) -> str | None:
    """The first piece of HTML in a caption (``&amp;``, ``<br>``), or ``None``: a ``&word;`` HTML does not know is text."""
    return next((m.group() for m in _HTML.finditer(text) if m.group().startswith("<") or html.unescape(m.group()) != m.group()), None)


def note_html(records: BadRecords, text: str, where: str) -> None:
    """Count a caption that holds HTML, naming the first (the model learns to write ``&amp;`` as it reads it)."""
    if (found := html_in(text)) is not None:
        records.note(HTML_NOTE, example=f"{where}: {found!r} in {text[:60]!r}")


def caption_settings(setting: str | list[str]) -> list[str]:
    """The caption columns a setting names: one, or several."""
    return [setting] if isinstance(setting, str) else list(setting)


def column_and_key(name: str, columns: list[str]) -> tuple[str, str | None]:
    """The column a caption setting reads and the key of the text in its objects: a column of that very name first
    (``caption.1``, as pandas names a second ``caption``), else ``sentences.raw`` as the ``raw`` of ``sentences``."""
    if name in columns or "." not in name:
        return name, None
    column, key = name.split(".", 1)
    return (column, key) if column in columns else (name, None)


SPLIT_NOTE = ("cells split into several captions at hub_caption_separator (a line each, by default; an empty text, '', "
              "reads each cell as one caption)")


def _described(value: Any, column: str) -> str | None:
    """The answer of a conversation of one request and its answer (LLaVA-Pretrain's ``blip_laion_cc_sbu_558k.json``:
    ``<image>`` and "Render a clear and concise summary of the photo.", then the caption; ``from``/``value`` or
    ``role``/``content`` turns), which is the image's caption; None for anything else. A conversation of questions and
    answers is refused: its answers are not captions (an instruct file, for the instruct stage)."""
    if not (isinstance(value, list) and value and all(isinstance(turn, dict) and ("from" in turn or "role" in turn)
                                                      for turn in value)):
        return None
    roles = [ROLES.get(str(turn.get("from", turn.get("role"))).lower()) for turn in value]
    turns = [(role, text_of(turn.get("value", turn.get("content")))) for role, turn in zip(roles, value, strict=True)
             if role != "system"]  # its own system prompt
    if [role for role, _ in turns] == ["human", "gpt"] and isinstance(turns[1][1], str):
        return turns[1][1]
    raise DataError(f"its {column!r} holds conversations of {len(turns)} turns, questions and their answers, not captions: "
                    "train it as the instruct stage (configs/instruct.yaml, --data.init_args.train_file); a caption table's "
                    "conversations are each one request and its answer, as LLaVA-Pretrain's")


def texts_of(value: Any, key: str | None, separator: str | None, column: str, split: list[int] | None = None) -> list[str]:
    """The captions one cell holds (see the module); objects without a ``key`` named are refused with their keys.
    ``separator`` None or empty: a string is one caption. A string split into several is counted in ``split``."""
    if key is not None:
        value = value.get(key) if isinstance(value, dict) else (
            [item.get(key) for item in value if isinstance(item, dict)] if isinstance(value, list) else None)
    elif (answers := _described(value, column)) is not None:  # LLaVA-Pretrain's conversations: the answer is the caption
        value = answers
    elif isinstance(value, dict) or isinstance(value, list) and any(isinstance(item, dict) for item in value):
        keys = list(value if isinstance(value, dict) else next(item for item in value if isinstance(item, dict)))
        text = next((k for k in ("raw", "caption", "text", "sentence") if k in keys), keys[0] if keys else "raw")
        raise DataError(f"its {column!r} holds objects with the keys {keys[:8]}, not text: name the key of the text in "
                        f"hub_caption_column, e.g. {column}.{text}")
    if isinstance(value, str) and value.strip().startswith("["):  # JSON's list, or Python's, as pandas' to_csv writes it
        listed = literal_in_cell(value)
        if isinstance(listed, list) and listed and all(isinstance(text, str) for text in listed):
            value = listed
    texts = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    parts = []
    for text in (text for text in texts if isinstance(text, str)):  # each text (a list's items too) split at separator
        pieces = [caption_text(part) for part in (text.split(separator) if separator else [text]) if caption_text(part)]
        if split is not None and len(pieces) > 1:
            split.append(len(pieces))
        parts += pieces
    return parts


def read_otherwise_now_in(file: Path, hub: bool, looked_at) -> list[str]:
    """How this release reads a caption file (or a folder's tables) otherwise than earlier ones did
    (:func:`invisible_characters_in`; a hub table's cells, :func:`python_lists_in`): its cache is not one they built,
    nor a run's place in it. ``looked_at(key, look)``: the data module's answer, looked for once."""
    tables = [file] if file.is_file() else [p for p in [*file.glob("*"), *file.glob("*/metadata.*")] if p.is_file() and
                                             p.suffix.lower() in (".csv", ".tsv", ".json", ".jsonl")] if file.is_dir() else []
    looks = {"invisible": ("invisible characters around them removed", invisible_characters_in),
             **({"python lists": ("Python's lists in a cell read as the captions they list", python_lists_in)} if hub else
                {"marked": ("captions marked rejected or precanned left out", marked_captions_in)})}
    return [why for key, (why, look) in looks.items()
            if any(looked_at((key, table), lambda t=table, look=look: look(t)) for table in tables)]


def whole_number(value: object) -> int | None:
    """A whole number as a table's cell holds it - an int, a float of one (pandas' column of ints with a gap), its text
    (a CSV's, every cell read as text) - within int64's range; else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else None

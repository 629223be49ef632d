"""The text encoding of a CSV or TSV table: UTF-8 (with or without Excel's byte-order mark), or Windows-1252, the code
page Excel's plain "CSV" is saved in on Windows across Western Europe and the Americas.

A spreadsheet user's "Save As > CSV" writes ``café`` as the single byte 0xE9, which UTF-8 cannot read. Such a table is
read as Windows-1252 and said in a note that shows the words read so, since no reader can tell code pages apart with
certainty: a table whose text Windows-1252 cannot hold, or would turn into words of accented letters alone (Russian
saved as Windows-1251, Greek, Chinese: ``Êîøêà`` for ``Кошка``), is refused as before, with how to save it as UTF-8.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from mmcaption.data.records import DataError, not_utf8

UTF8 = "utf-8-sig"  # a byte-order mark (Excel's "CSV UTF-8") is read past
WINDOWS_1252 = "cp1252"
ASCII = "ascii"
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters
_LAST_WORD = re.compile(r"[^\W\d_]+\Z")


def table_encoding(path: Path, reader: str | None = None) -> str:
    """``"ascii"`` for a table of ASCII text alone, ``"utf-8-sig"`` for a UTF-8 table, ``"cp1252"`` for one a Western
    Windows spreadsheet saved (said once in a note, with its first words that are not ASCII as read); anything else is
    refused naming the line and the byte. ``reader``: what reads the file where it can read UTF-8 only (a Windows-1252
    one is refused saying so)."""
    stamp = path.stat()
    key = (str(path), stamp.st_size, stamp.st_mtime_ns)
    encoding, note = _encoding(*key)
    if note and reader:
        raise DataError(f"{path} is not UTF-8 (Windows-1252, as Excel's plain \"CSV\" saves it), and {reader} reads "
                        "UTF-8 only: save it from the spreadsheet as \"CSV UTF-8\"")
    if note and key not in _SAID:
        _SAID.add(key)
        rank_zero_warn(note)
    return encoding


_SAID: set[tuple[str, int, int]] = set()  # the files whose note was said


def windows_1252_note(path: Path) -> str | None:
    """The note of a CSV or TSV table read as Windows-1252, found when it was read (a file read since is read again);
    None for any other file."""
    if path.suffix.lower() not in (".csv", ".tsv"):
        return None
    try:
        stamp = path.stat()
        return _encoding(str(path), stamp.st_size, stamp.st_mtime_ns)[1]
    except (OSError, DataError):  # gone since, or one the readers refuse
        return None


def one_encoding(files: list[Path]) -> str:
    """The one encoding the ``files`` of a dataset are read in (``datasets`` reads them all alike): tables of ASCII text
    alone go with either; UTF-8 text beside Windows-1252 text is refused naming a file of each."""
    found = {file: table_encoding(file) for file in files}
    if {UTF8, WINDOWS_1252} <= set(found.values()):
        utf8 = next(file for file, encoding in found.items() if encoding == UTF8)
        local = next(file for file, encoding in found.items() if encoding == WINDOWS_1252)
        raise DataError(f"{local} is Windows-1252 text (Excel's plain \"CSV\") and {utf8} is UTF-8: the tables of one "
                        f"dataset are read in one encoding; save {local} as \"CSV UTF-8\"")
    return WINDOWS_1252 if WINDOWS_1252 in found.values() else UTF8


# The letters beyond ASCII of the languages Windows-1252 is for, but Icelandic's ð, ý and þ: the bytes of Turkish's ı
# and ş, of Czech's ý, read as Windows-1252 (Icelandic tables are refused, as all were before); and the letters that
# are words alone ("à", "é", "ó")
_LATIN = frozenset("ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜßàáâãäåæçèéêëìíîïñòóôõöøùúûüÿŒœŠšŽžŸ")
_ALONE = frozenset("àáâèéêìíòóôùúÀÁÂÈÉÊÌÍÒÓÔÙÚ")


def _western(word: str) -> bool:
    """Whether ``word``, read as Windows-1252, is one of a language Windows-1252 is for: its letters beyond ASCII are
    Latin ones, and a word of them alone is a single accented vowel ("café", "où", "Straße", "à"). Another code page's
    text read so is runs of them ("Êîøêà" for Russian "Кошка") or odd signs alone (Japanese's "Œ", "ª")."""
    return all(c.isascii() or c in _LATIN for c in word) and (any(c.isascii() for c in word) or word in _ALONE)


def _decodes(path: str, encoding: str) -> Iterator[str]:
    """The text of the file ``path`` in ``encoding``, a megabyte at a time (a caption table can be gigabytes)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


@functools.lru_cache(maxsize=16)
def _encoding(path: str, *stamp: int) -> tuple[str, str | None]:
    """The encoding of the file ``path`` as it is (``stamp``: its size and time), found once, with the note to say."""
    with open(path, "rb") as handle:  # ASCII text alone reads the same in both
        ascii_only = all(chunk.isascii() for chunk in iter(lambda: handle.read(1 << 20), b""))
    if ascii_only:
        return ASCII, None
    try:
        for _ in _decodes(path, UTF8):
            pass
        return UTF8, None
    except UnicodeDecodeError:
        pass
    said = ", ".join(f"'{word}' (line {at})" for word, at in western_words(Path(path)).items()) or "its typographic marks"
    return WINDOWS_1252, (f"{path} is not UTF-8: read as Windows-1252, the code page of Excel's plain \"CSV\" in Western "
                          f"Europe and the Americas ({said}); if those words read wrong, save it from the spreadsheet as "
                          "\"CSV UTF-8\"")


def western_words(path: Path, table: bool = True) -> dict[str, int]:
    """The first few words beyond ASCII of a file that is not UTF-8 but Windows-1252 text in a language it is for, with
    their lines; any other file is refused (:func:`~mmcaption.data.records.not_utf8`, said of a table or a text file)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    # UTF-16 (Excel's "Unicode Text") and a Mac's lines ended by \r alone (Excel for Mac's "CSV": Mac Roman) are
    # refused as before, saying which they are
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or (b"\r" in head and b"\n" not in head):
        raise not_utf8(path, table)
    shown: dict[str, int] = {}  # the first words that are not ASCII, with their lines
    line, rest = 1, ""
    try:
        for text in _decodes(str(path), WINDOWS_1252):
            text, rest = rest + text, ""
            if cut := _LAST_WORD.search(text):  # a word the chunk may end inside: read with the next chunk
                text, rest = text[: cut.start()], cut.group()
            for match in _WORD.finditer(text):
                word = match.group()
                if not word.isascii():
                    if not _western(word):
                        raise not_utf8(path, table)
                    if len(shown) < 3 and word not in shown:
                        shown[word] = line + text.count("\n", 0, match.start())
            line += text.count("\n")
    except UnicodeDecodeError:  # one of the five bytes Windows-1252 leaves unused: another code page
        raise not_utf8(path, table) from None
    return shown

"""Bad-record policy shared by the loaders: raise with a message that names the record, or skip
and count when the user asked for that. Nothing is dropped silently."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath
from typing import Literal

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mmcaption.data.json_values import JsonLines, json_values, pandas_records
from mmcaption.errors import MMCaptionError
from mmcaption.file_spellings import existing_spelling, is_file
from mmcaption.images import IMAGE_SUFFIXES, image_format

OnBadRecord = Literal["error", "skip"]


class DataError(MMCaptionError, ValueError):
    """Input data that cannot be used, with a message that names the file or record."""


class Uncaptioned(DataError):
    """A split none of whose images has a caption (a benchmark's test split): ``mmcaption prepare`` leaves it out."""


class NothingUsable(DataError):
    """Every record of a split was bad (skipped under ``on_bad_record: skip``): nothing is left to write."""


def packed_file(path: Path, data: bytes | None = None) -> str | None:
    """What a binary file given where text was asked for is, with what to do about it (a spreadsheet's workbook, an
    archive); ``None`` for anything else. ``data``: its bytes when read, else its first bytes are (a zip's names: its end)."""
    if data is None:
        with contextlib.suppress(OSError), path.open("rb") as handle:
            data = handle.read(8)
    save = "not a text table: save it from the spreadsheet as CSV UTF-8 (File > Save As > CSV UTF-8)"
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):  # the Office 97-2003 container
        return f"{path} is an Excel 97-2003 workbook (or another Office file), {save}"
    if data.startswith(b"PK\x03\x04"):
        with contextlib.suppress(zipfile.BadZipFile, OSError):
            with zipfile.ZipFile(path if len(data) <= 8 else io.BytesIO(data)) as archive:
                names = archive.namelist()
            if any(name.startswith("xl/") for name in names) or "content.xml" in names:  # Excel's, or LibreOffice's
                return f"{path} is a spreadsheet workbook, {save}"
        return f"{path} is a zip archive: unpack it first (unzip -q {path} -d <folder>) and give what it holds"
    if data.startswith(b"\x1f\x8b"):
        return f"{path} is a gzip archive: unpack it first (tar -xzf {path}, or gunzip) and give what it holds"
    return None


def not_utf8(path: Path, table: bool = True) -> DataError:
    """A text file that is not UTF-8, named with the line and the byte: most often a spreadsheet saved in
    Windows' local code page (Excel's plain "CSV"), which UTF-8 cannot read back as written; a JSON file (``table``
    false) written by Windows PowerShell 5 (UTF-16) or a Windows program's default encoding."""
    data = path.read_bytes()
    image = image_format(data)
    if image is not None:  # a photo given where a table was asked for: not an encoding problem
        return DataError(f"{path} is an image ({image}), not a text file")
    if packed := packed_file(path, data):
        return DataError(packed)
    saved_as = ('as Excel\'s "Unicode Text" saves it', 'save it as "CSV UTF-8" (or UTF-8 in any editor)') if table else (
        "as Windows PowerShell 5's > and Out-File write it", "write it as UTF-8 (Out-File -Encoding utf8; Python: "
        "open(..., 'w', encoding='utf-8'))")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # Excel's "Unicode Text", Notepad's "Unicode"
        return DataError(f"{path} is UTF-16 text ({saved_as[0]}), not UTF-8; {saved_as[1]}")
    start = data.startswith(b"\xef\xbb\xbf") * 3
    try:
        data[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        start += error.start
    # lines end in \n, \r\n, or (a Mac's) \r alone: counted without copying the text
    line = data.count(b"\n", 0, start) + data.count(b"\r", 0, start) - data.count(b"\r\n", 0, start) + 1
    mac = b"\r" in data and b"\n" not in data
    local = (" Mac Roman, as Excel for Mac's \"CSV (Macintosh)\" writes it" if mac and table else
             " Windows' local code page" + (', as Excel\'s plain "CSV" writes it' if table else ""))
    return DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[start]:02x} at {start}), likely{local}; {saved_as[1]}")


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
SKIP = "set on_bad_record to skip (--data.init_args.on_bad_record skip)"  # its whole path: --on_bad_record is refused


def archive_hint(path: Path) -> str:
    """For a file or folder that does not exist: the downloaded archive that would hold it, when one lies in the deepest
    folder above it that exists (COCO's ``train2017.zip`` beside a missing ``train2017/``, ``annotations_trainval2017.zip``
    beside a missing ``annotations/``), with the command that unpacks it there; else ``""``."""
    folder = next((p for p in path.parents if p.is_dir()), None)
    if folder is None or path.exists():
        return ""
    missing = path.relative_to(folder).parts[0] if path.is_relative_to(folder) else path.name
    archives = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(missing)
                      and p.name.lower().endswith(ARCHIVE_SUFFIXES))
    if not archives:
        return ""
    archive = archives[0]
    command = f"unzip -q {archive} -d {folder}" if archive.name.lower().endswith(".zip") else f"tar -xf {archive} -C {folder}"
    return f" {archive} is there, not unpacked: {command}"


def missing_file(path: Path, what: str) -> DataError:
    """``what`` (a file) not found at ``path``: a folder given in its place said so, and the archive it is in, if beside it."""
    if path.is_dir():
        return DataError(f"{path} is a folder: the {what} is one file")
    return DataError(f"{what} not found: {path}{archive_hint(path)}")


# half of a character written as two escapes (an emoji's \ud83d without its \ude00): what a tool that cut a text mid-emoji
# writes; json reads it into a text no tokenizer or table takes (a bare TypeError deep in the tokenizer)
_LONE_SURROGATE = re.compile(r"\\(?<!\\\\)u(?:[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})|"
                             r"(?<!\\u[dD][89abAB][0-9a-fA-F]{2}\\u)[dD][c-fC-F][0-9a-fA-F]{2})")  # from its backslash: fast


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_HIGH_HALF, _LOW_HALF = re.compile(r"\\u[dD][89abAB]"), re.compile(r"\\u[dD][c-fC-F]")
_SURROGATE_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F]")


def whole_characters(path: Path, text: str) -> str:
    """The JSON ``text`` of ``path`` without the halves of characters cut in two (:data:`_LONE_SURROGATE`), which are
    removed with a warning that counts them and names the first's line."""
    if not _SURROGATE_ESCAPE.search(text):  # 50x faster than the search below; and a file of whole emoji written as
        return text  # escapes (json.dump's default) has as many halves of each kind as pairs
    pairs = len(_SURROGATE_PAIR.findall(text))
    if len(_HIGH_HALF.findall(text)) == pairs == len(_LOW_HALF.findall(text)) or not (found := _LONE_SURROGATE.search(text)):
        return text
    halves = list(_LONE_SURROGATE.finditer(text, found.start()))
    count = len(halves)
    rank_zero_warn(f"{path}: {count} half character(s) removed, such as {found.group()} (line {text.count(chr(10), 0, found.start()) + 1}):"
                   " a text cut in the middle of an emoji by the tool that wrote it leaves half of it, which no text holds")
    pieces, start = [], 0
    for half in halves:
        pieces.append(text[start:half.start()])
        start = half.end()
    return "".join(pieces) + text[start:]


# NaN read as null: Python's json.dump of a dataframe's empty cell (a text-only conversation's "image": NaN, "not a path")
NAN_AS_NULL = {"parse_constant": lambda name: None if name == "NaN" else float(name)}


def read_json(path: Path, what: str) -> object:
    """A JSON file the user gave (a UTF-8 byte-order mark accepted); a missing file or one that is not JSON
    is refused naming it and ``what`` it should be (and the archive it is still in, if it is beside it)."""
    if not path.is_file():
        raise missing_file(path, what)
    try:
        return json.loads(whole_characters(path, path.read_text(encoding="utf-8-sig")), **NAN_AS_NULL)
    except UnicodeDecodeError:
        raise not_utf8(path, table=False) from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from error


def read_json_list(path: Path, what: str) -> object:
    """A JSON file as :func:`read_json` reads it, or JSON Lines (one record per line, as many datasets ship conversations)
    as the list of its records (:class:`JsonLines`: each one's line too); a line that is not JSON is refused by number."""
    if path.suffix.lower() != ".jsonl":
        try:
            data = read_json(path, what)
            return records if (records := pandas_records(data)) is not None else data  # pandas' to_json(), its columns
        except DataError as error:
            cause = error.__cause__
            # a list with something after it (a stray bracket, two files joined) is no JSON Lines: its own error says where
            if not isinstance(cause, json.JSONDecodeError) or not cause.msg.startswith("Extra data") or cause.doc.lstrip().startswith("["):
                raise
    elif not path.is_file():
        return read_json(path, what)  # its message, with the archive hint
    records = JsonLines()
    try:
        text = whole_characters(path, path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise not_utf8(path, table=False) from None
    if text.lstrip().startswith("[") and not text.lstrip().startswith("[]"):  # a JSON list named .jsonl
        with contextlib.suppress(json.JSONDecodeError):
            if isinstance(listed := json.loads(text, **NAN_AS_NULL), list):
                return listed
    records.lines = []
    # lines end at "\n" only: U+2028 and the like may stand raw inside a JSON string
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                records.append(json.loads(line, **NAN_AS_NULL))
            except json.JSONDecodeError as error:
                if (values := json_values(text, **NAN_AS_NULL)) is not None:  # jq's records, each over several lines
                    records[:], records.lines = values
                    return records
                raise DataError(f"{path}, line {number}: not valid JSON Lines (one JSON record per line): {error}") from None
            records.lines.append(number)
    return records


def _subfolders(folder: Path) -> list[Path]:
    """The folders in ``folder``, none where it cannot be read (a hint looking around is no reason to fail)."""
    try:
        return sorted(entry for entry in folder.iterdir() if entry.is_dir())
    except OSError:
        return []


def escapes_root(relative: str) -> bool:
    """Whether a record's image path is read from outside its image folder (absolute, or climbing out with
    ``..``), as LLaVA's and some labelling tools' files write them: read as written, followed by the cache."""
    path = Path(relative.replace("\\", "/") if os.sep == "/" else relative)  # a Windows exporter's ..\\photos too
    return path.is_absolute() or bool(PureWindowsPath(relative).drive) or ".." in path.parts


def may_name_unsigned_images(file: Path, key: bytes) -> bool:
    """A cheap look at ``file``'s raw bytes: whether a ``key`` of its JSON may hold an image path that its folder's
    signature does not follow (:func:`unsigned_images`). Only then is the file parsed for them: the official COCO and
    LLaVA files have none (LLaVA-Instruct-150k's 229 MB take 0.27 s to look at)."""
    unsigned = rb'"(?:/|\\\\|[A-Za-z]:|(?i:file:)|[^"]*\.\.|(?![^"]*' + _IMAGE_SUFFIX + rb'")[^"]+")'  # (absolute, .., no suffix)
    return re.search(key + unsigned, file.read_bytes()) is not None


_IMAGE_SUFFIX = rb"(?i:" + b"|".join(re.escape(suffix.encode()) for suffix in sorted(IMAGE_SUFFIXES)) + rb")"


def unsigned_images(names: Iterable[str | None], root: Path) -> list[tuple[str, str | None]]:
    """The image paths among ``names`` that ``root``'s signature (of its files with an image's suffix) does not follow:
    outside ``root`` (absolute, or climbing out with ``..``), or without an image's suffix (a scraper's ``img1``),
    ``(path as written, where it is or None)`` each, for a cache to follow them too (``files_signature``)."""
    unsigned = sorted({n for n in names if n and (escapes_root(n) or Path(n).suffix.lower() not in IMAGE_SUFFIXES)})
    return [(name, str(path) if is_file(path := root / existing_spelling(root, name)) else None) for name in unsigned]


def _firsts(messages: list[str]) -> str:
    """The first three of ``messages``, and "..." when there are more."""
    return "; ".join(messages[:3]) + ("; ..." if len(messages) > 3 else "")


class BadRecords:
    """Collects bad records under ``on_bad_record="skip"``; raises on the first one otherwise.

    Args:
        source: the file or dataset the records come from, named in every message.
        on_bad_record: ``"error"`` raises :class:`DataError`; ``"skip"`` counts and goes on.
    """

    def __init__(self, source: str | Path, on_bad_record: OnBadRecord = "error") -> None:
        if on_bad_record not in ("error", "skip"):
            raise DataError(f"on_bad_record must be 'error' or 'skip', not {on_bad_record!r}")
        self.source = str(source)
        self.on_bad_record = on_bad_record
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.notes: Counter[str] = Counter()
        self.note_examples: dict[str, str] = {}  # the first record of each kind noted, as messages name it
        self.said_only: set[str] = set()  # kinds noted that ask nothing of the user: an information line, not a warning
        self.deferred: dict[str, list[str]] = {}  # under "error": bad records found in a long pass, reported at its end
        self._finding_all = False  # within all_found_first: bad records kept, refused together at its end

    def bad(self, kind: str, message: str) -> None:
        """Report one bad record of ``kind`` (e.g. ``"missing image"``)."""
        if self.on_bad_record == "error" and self._finding_all:
            self.deferred.setdefault(kind, []).append(message)
            return
        if self.on_bad_record == "error":
            raise DataError(
                f"{self.source}: {message}. Fix the record, or {SKIP} to skip such records and have them counted."
            )
        self.counts[kind] += 1
        self.examples.setdefault(kind, message)

    def all_at_once(self, kind: str, messages: list[str], summary: str, fix: str, every: bool = False) -> None:
        """Report every bad record of ``kind`` found by one check: all in one message (their count and the
        first three) when ``on_bad_record`` is ``error``, so one run shows them all; each counted under ``skip``.
        ``every``: no record passed the check, so skipping them is no way out, and the message does not offer it."""
        if not messages:
            return
        if self.on_bad_record == "error" or every:
            way = "" if every else f", or {SKIP} to skip them and have them counted"
            raise DataError(f"{self.source}: {summary} (first: {_firsts(messages)}). {fix}{way}.")
        for message in messages:
            self.bad(kind, message)

    def defer(self, kind: str, message: str) -> None:
        """A bad record found during a long pass (decoding every image): under ``error`` it is kept and
        :meth:`raise_deferred` reports all of them at the pass's end, instead of one per run."""
        if self.on_bad_record == "error":
            self.deferred.setdefault(kind, []).append(message)
        else:
            self.bad(kind, message)

    @contextmanager
    def all_found_first(self, then_refuse: bool = True) -> Iterator[None]:
        """Under ``error``, the bad records reported within are kept and refused together as it ends (or, ``then_refuse``
        false, by :meth:`raise_deferred` later, with what is found after), not one per run (a conversation file with 200
        bad records scattered through it took 200 runs to get through)."""
        self._finding_all = True
        try:
            yield
        finally:
            self._finding_all = False
        if then_refuse:
            self.raise_deferred()

    def raise_deferred(self) -> None:
        """Refuse the bad records kept (:meth:`defer`, :meth:`all_found_first`): each kind counted, the first of each
        named, every kind in one message (one kind a run took a run per kind, each after the whole pass)."""
        deferred, self.deferred = self.deferred, {}
        found = sum(map(len, deferred.values()))
        if found == 1:
            self.bad(*next((kind, messages[0]) for kind, messages in deferred.items()))
        elif len(deferred) == 1:
            (kind, messages), = deferred.items()
            self.all_at_once(kind, messages, f"{len(messages):,} x {kind}", "Fix or remove them")
        elif deferred:
            kinds = "; ".join(f"{len(messages):,} x {kind} (first: {_firsts(messages)})" for kind, messages in deferred.items())
            raise DataError(f"{self.source}: {found:,} bad records of {len(deferred)} kinds: {kinds}. Fix or remove them, "
                            f"or {SKIP} to skip them and have them counted.")

    def missing_images(self, missing: list[tuple[str, Path]], total: int, what: str, root: Path) -> None:
        """Report the records whose image file does not exist (``missing``: record name and image path, of ``total``
        records, ``what`` they are in the message, ``"referenced images are"``, looked for under ``root``): all at once
        with their count under ``error``, each counted under ``skip``. None of them found at all is refused even under
        ``skip``: that is a wrong image folder, not a few bad records. The bad records kept before
        (:meth:`raise_deferred`) are refused first, or, when a few images are missing, with them in one message: the
        missing images were a second run's news, after the records were mended."""
        together = bool(self.deferred) and 0 < len(missing) < total  # (kept under "error" only)
        if not together and not (missing and len(missing) == total):  # a wrong image folder is said first, the others
            self.raise_deferred()  # counted with it: it was a second run's news, once they were mended
        if not missing:
            return
        name, path = missing[0]
        relative = path.relative_to(root) if path.is_relative_to(root) else path
        # the folder given a level or two too high (data for data/coco/train2017) or too deep: where the image is; of
        # a few records missing, the record's path is what to fix (another folder would lose the images found)
        below = _subfolders(root)[:200]
        below += sorted(sub for folder in below[:50] for sub in _subfolders(folder))[:200]
        there = next((folder for folder in [*list(root.parents)[:3], *below] if (folder / relative).is_file()), None)
        hint = "" if there is None else f" {relative} is under {there}: " + (
            "is that the image folder?" if len(missing) == total else
            f"the other images are found, so it is that record's path to fix ({os.path.relpath(there / relative, root)})")
        # LLaVA-1.5's ocr_vqa download: 140031996.png where the file says .jpg, for each of them said and counted
        renamed = other_suffixes([path for _, path in missing])
        if not hint and path in renamed:
            hint = f" {renamed[path]} is there, the same name with another suffix: rename it to {path.name}."
        if len(renamed) > (path in renamed):
            hint += (f" {len(renamed)} of the {len(missing)} are there under another suffix (ocr_vqa's .png and .gif for "
                     ".jpg): rename them to the names the file gives.")
        first = f"first: {name}, its image {relative} looked for as {path}"
        if (self.on_bad_record == "error" and not together) or len(missing) == total:
            raise DataError(
                f"{self.source}: {len(missing)} of {total} {what} missing under {root} ({first}).{hint} Fix the image "
                "folder" + (f", or {SKIP} to skip them and have them counted." if len(missing) < total else ".")
                + (archive_hint(root) if len(missing) == total else "") + "".join(
                    f" Besides, {len(messages):,} x {kind} (first: {messages[0]})." for kind, messages in self.deferred.items()))
        with self.all_found_first() if together else contextlib.nullcontext():
            for name, path in missing:
                if path in renamed:
                    self.bad("missing image, there under another suffix",
                             f"{path} ({name}) does not exist, {renamed[path]} does: rename it to {path.name}")
                else:
                    self.bad("missing image", f"{path} ({name}) does not exist")

    def note(self, kind: str, count: int = 1, example: str | None = None, warn: bool = True) -> None:
        """Count something done to a usable record that the user should hear of (truncation), with the first one to name;
        ``warn``: False for what asks nothing of them (a table's usual layout), said as information."""
        self.notes[kind] += count
        if not warn:
            self.said_only.add(kind)
        if example is not None:
            self.note_examples.setdefault(kind, example)

    def summary(self) -> dict[str, int]:
        return dict(self.counts)

    def warn_if_any(self) -> None:
        for kind, n in self.notes.items():
            (rank_zero_info if kind in self.said_only else rank_zero_warn)(f"{self.source}: {n} x {kind}" + (f" (first: {self.note_examples[kind]})" if kind in self.note_examples else ""))
        if self.counts:
            details = "; ".join(f"{n} x {kind} (first: {self.examples[kind]})" for kind, n in self.counts.items())
            rank_zero_warn(f"{self.source}: skipped {sum(self.counts.values())} bad records: {details}")


def other_suffixes(paths: list[Path]) -> dict[Path, str]:
    """Each of ``paths`` (missing files) whose folder holds a file of its stem and another suffix, with that file's name."""
    found, listed = {}, {}
    for path in paths:
        if path.parent not in listed:
            try:
                names = sorted(entry.name for entry in os.scandir(path.parent) if entry.is_file())
            except OSError:  # no such folder, or not one
                names = []
            listed[path.parent] = {}
            for entry in names:
                listed[path.parent].setdefault(Path(entry).stem, entry)
        if (other := listed[path.parent].get(path.stem)) is not None and other != path.name:
            found[path] = other
    return found

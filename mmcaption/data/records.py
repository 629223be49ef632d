"""Bad-record policy shared by the loaders: raise with a message that names the record, or skip
and count when the user asked for that. Nothing is dropped silently."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from lightning.pytorch.utilities import rank_zero_warn

from mmcaption.errors import MMCaptionError

OnBadRecord = Literal["error", "skip"]


class DataError(MMCaptionError, ValueError):
    """Input data that cannot be used, with a message that names the file or record."""


def escapes_root(relative: str) -> bool:
    """Whether a record's image path would be read from outside its image folder (absolute, or
    climbing out with ``..``): a dataset file must not make the loader read elsewhere on the disk."""
    path = Path(relative)
    return path.is_absolute() or bool(path.drive) or ".." in path.parts


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

    def bad(self, kind: str, message: str) -> None:
        """Report one bad record of ``kind`` (e.g. ``"missing image"``)."""
        if self.on_bad_record == "error":
            raise DataError(
                f"{self.source}: {message}. Fix the record, or set on_bad_record: skip to skip such records "
                "and have them counted."
            )
        self.counts[kind] += 1
        self.examples.setdefault(kind, message)

    def missing_images(self, missing: list[tuple[str, Path]], total: int, what: str, root: Path) -> None:
        """Report records whose image file does not exist: all at once with their count when
        ``on_bad_record`` is ``error``, each counted when it is ``skip``.

        Args:
            missing: ``(record name, image path)`` of each such record.
            total: how many records there are, for the count in the message.
            what: how the records read in the message, e.g. ``"referenced images are"``.
            root: the folder the images were looked for in.
        """
        if not missing:
            return
        if self.on_bad_record == "error":
            name, path = missing[0]
            raise DataError(
                f"{self.source}: {len(missing)} of {total} {what} missing under {root} (first: {path.name}, {name}). "
                "Fix the image folder, or set on_bad_record: skip to skip them and have them counted."
            )
        for name, path in missing:
            self.bad("missing image", f"{path} ({name}) does not exist")

    def note(self, kind: str, count: int = 1) -> None:
        """Count something done to a usable record that the user should hear of (e.g. truncation)."""
        self.notes[kind] += count

    def summary(self) -> dict[str, int]:
        return dict(self.counts)

    def warn_if_any(self) -> None:
        for kind, n in self.notes.items():
            rank_zero_warn(f"{self.source}: {n} x {kind}")
        if self.counts:
            details = "; ".join(f"{n} x {kind} (first: {self.examples[kind]})" for kind, n in self.counts.items())
            rank_zero_warn(f"{self.source}: skipped {sum(self.counts.values())} bad records: {details}")

"""Which of an input's rows an interrupted ``mmcaption predict``'s output holds: its first ones, or (images added among
those done since, a camera's sync; rows taken out of it by hand) some of them in another order."""

from __future__ import annotations

import sys
from pathlib import Path, PurePath
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from mmcaption.errors import OutputExistsError


def rows_to_go(written: list[dict[str, Any]], rows: list[dict[str, Any]], output: Path | str,
               also: list[dict[str, Any]] | None = None, folder: str | None = None, say: bool = True) -> list[int]:
    """The places in this input's ``rows`` of those the rows ``written`` to ``output`` do not hold: those after them,
    when they are its first rows (:func:`check_first_rows`, which refuses what is neither); else, when each is one of its
    rows (photos added to the folder among those done since; rows taken out of the output by hand), the others in the
    input's order, said (``say``): the output holds them after its own, and is not in the input's order."""
    try:
        check_first_rows(written, rows, output, also, folder)
        return list(range(len(written), len(rows)))
    except OutputExistsError:
        held = _places(written, rows, also)
        if held is None:
            raise
    to_go = [place for place in range(len(rows)) if place not in held]
    if to_go and say:
        first = rows[to_go[0]]
        named = first.get("image") or next((v for v in first.values() if isinstance(v, str)), "")
        rank_zero_only(print)(
            f"note: resume: the {len(written)} rows of {output} are this input's but not its first {len(written)} (images "
            f"added among those done since, or rows taken out of it): the {len(to_go)} others (first: row {to_go[0] + 1}, "
            f"{named}) are predicted after them, so its rows are not in the input's order", file=sys.stderr, flush=True)
    return to_go


def _places(written: list[dict[str, Any]], rows: list[dict[str, Any]], also: list[dict[str, Any]] | None) -> set[int] | None:
    """The places in ``rows`` of the rows ``written``, each matched to a row of its own by the text it was asked with
    (the image's name; the question, its id, ...: as written, as an earlier release wrote it, or stripped); None when
    one is none of them."""
    places: dict[tuple, list[int]] = {}
    for place, record in enumerate(rows):
        earlier = also[place] if also else {}
        texts = sorted((key, value) for key, value in record.items() if isinstance(value, str))
        for values in {tuple(texts), tuple((k, str(earlier.get(k, v))) for k, v in texts), tuple((k, v.strip()) for k, v in texts)}:
            places.setdefault(values, []).append(place)
    keys = {tuple(sorted(k for k, v in record.items() if isinstance(v, str))) for record in rows}
    held: set[int] = set()
    for row in written:
        found = next((place for names in keys for place in places.get(tuple((k, str(row.get(k))) for k in names), [])
                      if place not in held), None)
        if found is None:
            return None
        held.add(found)
    return held


def check_first_rows(written: list[dict[str, Any]], rows: list[dict[str, Any]], output: Path | str,
                     also: list[dict[str, Any]] | None = None, folder: str | None = None) -> None:
    """Refuse rows ``written`` to ``output`` that are not the first of this input's ``rows`` (compared as written, or as
    an earlier release wrote them: ``also``, a row's other accepted values; ``folder``: the first run's working one)."""
    for number, (row, record) in enumerate(zip(written, rows), start=1):
        earlier = also[number - 1] if also else {}
        differs = next((key for key, value in record.items() if isinstance(value, str)
                        and str(row.get(key, value)) not in (value, earlier.get(key, value), value.strip())), None)
        if differs is not None:  # rows taken out of it (by hand): its row is one further on in the input
            later = next((place for place, other in enumerate(rows[number:], start=number + 1) if all(
                str(row.get(key, value)) == value for key, value in other.items() if isinstance(value, str))), None)
            moved = differs == "image" and isinstance(output, Path) and PurePath(str(row.get("image"))).name == PurePath(
                record["image"]).name and not any((place / str(row.get("image"))).exists() for place in run_folders(output, folder))
            gone = differs == "image" and not later and not moved and _deleted_since(number, written, rows, also)
            why = (f"its row {number} is this input's row {later} (rows taken out of it, or added to the input): keep only its "
                   f"first {number - 1} rows to resume after them, or" if later and number > 1 else
                   "the images moved, or renamed their folder? A link from the folder its rows name to where they are now "
                   "(ln -s) resumes it, its rows kept; or" if moved else  # (was only: overwrite the hours of rows done)
                   f"that image is in this input no more (taken out of it since?): delete its row {number} from {output} to "
                   "resume, the others kept, or" if gone else
                   "it is the output of another input, or of this one before it changed;")
            raise OutputExistsError(f"resume: row {number} of {output} has {differs} {row.get(differs)!r} where this input's "
                                    f"row {number} has {record[differs]!r}: {why} replace it with --data.overwrite true")


def _deleted_since(number: int, written: list[dict[str, Any]], rows: list[dict[str, Any]],
                   also: list[dict[str, Any]] | None) -> bool:
    """Whether an output's row ``number`` names a photo deleted from the input since (that row alone to take out): none of
    this input's, and the output's next row is this input's row ``number`` (or it is the output's last, after others)."""
    record, earlier = rows[number - 1], also[number - 1] if also else {}
    realigned = number == len(written) > 1 or (
        number < len(written) and str(written[number].get("image")) in (record["image"], earlier.get("image")))
    return realigned and str(written[number - 1].get("image")) not in {str(r.get("image")) for r in (*rows, *(also or ()))}


def run_folders(output: Path, folder: str | None) -> list[Path]:
    """Where an output's relative image names were written from: the first run's working ``folder``, else the output's or above."""
    return [*([Path(folder)] if folder else []), Path(output).resolve().parent, *Path(output).resolve().parents]

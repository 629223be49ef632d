"""Going on from an interrupted ``mmcaption predict``: the rows its output holds, read back as they were written, after
checking that they are rows of the input asked again (:mod:`~mmcaption.data.resume_rows`) - or, from a run on several
processes, the rows of their shares, put together first; or from a killed run's partial file."""

from __future__ import annotations

import contextlib
import csv
import glob
import itertools
import json
import os
import sys
from pathlib import Path, PurePath
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from mmcaption.data.resume_rows import rows_to_go, run_folders
from mmcaption.errors import OutputExistsError
from mmcaption.evaluation.report import (
    NAMES_AS_BYTES,
    appended_inputs,
    ascii_only,
    json_line,
    partial_path,
    read_output_rows,
    record_differences,
    started_record,
    starts_with_bom,
    summary_path,
    unused_name,
)


def interrupted_rows(output: Path, rows: list[dict[str, Any]],
                     also: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows an interrupted predict wrote to ``output``, and the places of this input's ``rows`` still to predict
    (:func:`~mmcaption.data.resume_rows.rows_to_go`), refusing an output that was not interrupted (no summary, or one
    that says the run finished) or whose rows are not of ``rows`` (another input, or the same one changed since;
    ``also``: each row's values as an earlier release wrote them)."""
    refuse_a_finished_output(output, rows)
    try:
        written = read_output_rows(output)
    except (ValueError, csv.Error) as error:  # a line cut short by a copy, or edited by hand: was a JSONDecodeError traceback
        raise OutputExistsError(f"resume: {output} cannot be read back: {error}; mend that line (or delete it and the rows "
                                "after it, which are predicted again), or replace it with --data.overwrite true") from None
    working = ((_summary(output) or {}).get("made_by") or {}).get("working_folder")
    if respelled := named_as_written(written, rows, output, working):
        rank_zero_only(print)(respelled, file=sys.stderr, flush=True)
    to_go = rows_to_go(written, rows, output, also, working)
    if len(written) == len(rows):
        raise OutputExistsError(f"resume: {output} holds all {len(rows)} rows of this input: the run stopped after its last row, so "
                                "only its summary's totals are missing; --data.overwrite true predicts it again to make them")
    if len(written) > len(rows):
        raise OutputExistsError(f"resume: {output} holds {len(written)} rows, more than the {len(rows)} this input has: "
                                "it is the output of another input")
    return written, to_go


def refuse_a_finished_output(output: Path, rows: list[dict[str, Any]]) -> None:
    """Refuse to resume ``output`` unless an interrupted predict wrote it (its summary says so), saying how this input's
    ``rows`` differ from it. Also said before the model loads (:meth:`check_output`): a minute at Phi-2's size."""
    summary = summary_path(output)
    if not summary.is_file():
        raise OutputExistsError(f"resume: {output} has no {summary.name} beside it, so it is not the output of an "
                                "interrupted predict; choose another --data.output, or replace it with --data.overwrite true")
    said = json.loads(summary.read_text(encoding="utf-8"))
    if not said.get("interrupted"):
        before = said.get("rows") or 0
        grown = "" if len(rows) == before else (
            f"; this input has {len(rows)} rows now: resume goes on with an interrupted run, so {_new_ones(output, rows)}, "
            "or predict all again with --data.overwrite true" if len(rows) > before else
            f"; this input has {len(rows)} rows: another input, or this one shortened since (--data.overwrite true predicts "
            "it again)")
        raise OutputExistsError(f"resume: {output} is complete ({said.get('rows')} rows; its summary does not say it was "
                                f"interrupted): nothing to go on with{grown}")


def _new_ones(output: Path, rows: list[dict[str, Any]]) -> str:
    """What to do with the rows of an input that a finished ``output`` does not hold: the images added to a folder since
    (named; a folder's new photos sort among the old ones), put in a list of their own."""
    try:
        written = {str(row.get("image")) for row in read_output_rows(output)}
    except (OSError, ValueError):
        written = set()
    new = [row["image"] for row in rows if "image" in row and row["image"] not in written]
    if not written or not new:
        return "give the new ones their own --data.output"
    return (f"to caption the {len(new)} image{'s' * (len(new) > 1)} not in it ({', '.join(map(str, new[:3]))}"
            f"{', ...' * (len(new) > 3)}), list {'them' if len(new) > 1 else 'it'} in a text file, one per line, and predict "
            "that (--data.images <list>) into its own --data.output")


def named_as_written(written: list[dict[str, Any]], rows: list[dict[str, Any]], output: Path, folder: str | None) -> str | None:
    """A resume that names the images' folder otherwise (run from another folder: ``data/many`` where the first run had
    ``../data/many``, or its absolute path): when this input's first image is the file the output's first row names, seen
    from the first run's working ``folder`` (or, moved since or unrecorded, the output's folder or one above), this input's rows are named
    as the output's, so that the rows to come are written alike. Returns the note that says so; None: named alike, or not
    the same files (refused by :func:`~mmcaption.data.resume_rows.check_first_rows`)."""
    then, now = (str(r[0].get("image") or "") if r and isinstance(r[0], dict) else "" for r in (written, rows))
    if not then or not now or then == now:
        return None
    then_parts, now_parts = PurePath(then).parts, PurePath(now).parts
    common = next((n for n in range(min(len(then_parts), len(now_parts))) if then_parts[-1 - n] != now_parts[-1 - n]),
                  min(len(then_parts), len(now_parts)))
    then_folder, now_folder = then_parts[:len(then_parts) - common], now_parts[:len(now_parts) - common]
    if not common or not any(_same_file(place / then, Path(now)) for place in run_folders(output, folder)):
        return None
    names = [PurePath(str(row.get("image") or "")).parts for row in rows]
    if any(parts[:len(now_folder)] != now_folder or len(parts) <= len(now_folder) for parts in names):
        return None  # not all in that folder: named as they are
    for row, parts in zip(rows, names):
        row["image"] = str(PurePath(*then_folder, *parts[len(now_folder):]))
    return (f"note: resume: this run names the images from another folder than the run that wrote {output.name} (its row 1: "
            f"{then}; this input's: {now}): the same files, and the rows to come name them as its rows do")


def _same_file(one: Path, other: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(one, other)
    return False


def check_made_alike(output: Path, now: dict[str, Any], earlier: dict[str, Any] | None = None) -> None:
    """Refuse to go on from ``output`` when its rows were predicted by other weights or settings than ``now``
    (:func:`~mmcaption.evaluation.report.prediction_record`): the two runs' rows would make one accuracy of two models.
    An output of a version that did not record them is gone on from; an input only added to at its end since (a question
    appended after the interruption) is gone on with, said. ``earlier``: its summary's record, when it has no summary."""
    earlier = earlier if earlier is not None else json.loads(summary_path(output).read_text(encoding="utf-8")).get("made_by")
    differences = record_differences(earlier, now) if earlier else []
    if not differences and earlier and (grown := appended_inputs(earlier, now)) and rank_zero_only.rank == 0:
        print(f"note: resume: {', '.join(grown)} had rows added at its end since {output}'s were written: they are "
              "predicted after the others", file=sys.stderr, flush=True)
    if differences:
        raise OutputExistsError(f"resume: the rows of {output} came from other weights or settings - {'; '.join(differences)}: "
                                "with this run's they would be one result of two; go on with the same --ckpt_path and "
                                "settings, or replace it with --data.overwrite true")
    if (now.get("generation") or {}).get("do_sample") and rank_zero_only.rank == 0:  # the generator's state is not kept
        print(f"note: resume: the rows after {output}'s are sampled anew from seed {now['generation'].get('seed')}, not "
              "as the uninterrupted run would have drawn them (the same settings, other draws)", file=sys.stderr, flush=True)


def output_exists_advice(output: Path, share: bool = False) -> str:
    """What to do about an existing ``output``: an interrupted run's (its summary says so) is gone on from with
    ``--data.resume true``, which ``--data.overwrite true`` would throw away - unless it is one ``share`` of several
    processes' output, which resume does not go on from."""
    try:
        interrupted = json.loads(summary_path(output).read_text(encoding="utf-8")).get("interrupted")
    except (OSError, ValueError, AttributeError):
        interrupted = None
    if interrupted and share:
        return (f"output {output} exists, one process's share of a run on several processes that was interrupted "
                f"({interrupted}): go on from the shares with --data.resume true on one device (--trainer.devices 1), "
                "predict them again with --data.overwrite true, or choose another --data.output")
    if interrupted:
        return (f"output {output} exists, left by an interrupted run ({interrupted}): go on from it with "
                "--data.resume true, choose another --data.output, or replace it with --data.overwrite true")
    return f"output {output} exists; choose another --data.output, or replace it with --data.overwrite true"


def killed_run_advice(output: Path, share: bool = False) -> str:
    """What to do about the partial file a killed predict left beside ``output`` (SIGKILL, the out-of-memory killer, a
    lost node), which a run starting afresh would write over."""
    partial = partial_path(output)
    if share:
        return (f"{partial} holds the rows one process of a killed run on several processes wrote: a resume does not go on "
                f"from them; move it away to keep them, or predict them again with --data.overwrite true, which keeps them "
                f"aside as {killed_name(output).name}")
    return (f"{partial} holds the rows a run wrote before it ended without finishing its output (killed: SIGKILL, out of "
            "memory, a lost node; or a full disk): go on from them with --data.resume true, or start afresh with "
            f"--data.overwrite true, which keeps them aside as {killed_name(output).name}")


def killed_name(output: Path) -> Path:
    """Where the complete rows of a killed run's partial file are kept aside: ``<stem>.killed<suffix>``, or ``-2``..."""
    return unused_name(output.with_name(f"{output.stem}.killed{output.suffix}"))


def keep_killed_rows_aside(output: Path) -> str:
    """Before a ``--data.overwrite`` run starts ``output`` afresh: the complete rows of the partial file a killed run
    left (the same command run again after the out-of-memory killer: its rows were written over without a word) go to
    :func:`killed_name`, a row the kill cut left out. Returns the note that says so."""
    partial, aside = partial_path(output), killed_name(output)
    data = partial.read_bytes()
    end = _rows_end(data, output.suffix.lower() == ".csv")
    aside.write_bytes(data[:end])
    partial.unlink()
    started_record(output).unlink(missing_ok=True)
    return (f"note: {partial.name}, left by a run that did not end (killed, out of memory or disk space), held complete rows: "
            f"kept as {aside}; this run starts {output.name} afresh, as --data.overwrite asks")


def _rows_end(data: bytes, csv_rows: bool) -> int:
    """Where the complete rows of a killed run's partial file end: each row ends its line, and in a CSV a line break
    inside a quoted cell (an answer of two lines) ends no row; what follows is a row the kill cut."""
    end = data.rfind(b"\n") + 1
    while csv_rows and end and data[:end].count(b'"') % 2:  # the last line break outside quotes
        end = data.rfind(b"\n", 0, end - 1) + 1
    return end


def complete_rows(output: Path) -> bool:
    """Whether the partial file a killed run left beside ``output`` holds a complete row (in a CSV, beyond its header)."""
    try:
        with partial_path(output).open("rb") as handle:
            head = handle.read(1 << 20)
    except OSError:
        return False
    csv_rows = output.suffix.lower() == ".csv"
    return _rows_end(head, csv_rows) > (head.find(b"\n") + 1 if csv_rows else 0)


def finished_rows(output: Path) -> int | None:
    """The rows of ``output`` when the run that wrote it finished (its summary says so) with rows that are not all
    errors (a run that could predict none failed), else None."""
    said = _summary(output)
    if not output.is_file() or said is None or said.get("interrupted"):
        return None
    return said.get("rows") if (said.get("errors") or 0) < (said.get("rows") or 0) else None


def _summary(output: Path) -> dict[str, Any] | None:
    """What ``output``'s summary says, None where it has none that reads."""
    try:
        said = json.loads(summary_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return said if isinstance(said, dict) else None


def left_by_job(output: Path) -> str | None:
    """The SLURM job that left ``output`` interrupted, or its partial file killed (what it recorded when it started;
    None: not a SLURM job's, or nothing left)."""
    for record in (summary_path(output), started_record(output)):
        try:
            said = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        said = said.get("made_by", said) if record == summary_path(output) and isinstance(said, dict) else said
        if isinstance(said, dict) and said.get("slurm_job"):
            return str(said["slurm_job"])
    return None


def put_shares_together(output: Path, rows: list[dict[str, Any]], now: dict[str, Any] | None) -> str | None:
    """Before a resume on one process: a run on several processes that was interrupted left each one's share of
    ``output`` (``<stem>.rank<r><suffix>``, rows r, r + N, ..., its summary naming its rank and N; a process
    stopped before its first row left none) and no ``output``. Once checked to be rows of this input's
    ``rows`` (:func:`~mmcaption.data.resume_rows.rows_to_go`), predicted as ``now`` would, they become ``output``: its rows in the input's order up to the first
    that no share holds (those after it are predicted again), with a summary saying what made them and that the
    run was interrupted; the shares go. Returns what was done, for a note; ``None`` when there are no shares."""
    if output.exists():
        return None
    shares: dict[int, tuple[Path, dict[str, Any]]] = {}
    for path in output.parent.glob(f"{glob.escape(output.stem)}.rank*{glob.escape(output.suffix)}"):
        try:
            said = json.loads(summary_path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(said, dict) and isinstance(said.get("share"), dict):
            shares[said["share"]["rank"]] = (path, said)
    if not shares:
        return None
    processes = {said["share"]["processes"] for _, said in shares.values()}
    if len(processes) > 1:
        raise OutputExistsError(f"resume: the shares of {output} ({', '.join(sorted(p.name for p, _ in shares.values()))}) "
                                "come from runs on different numbers of processes; remove those of the older run")
    (count,) = processes
    parts = [read_output_rows(shares[rank][0]) if rank in shares else [] for rank in range(count)]
    done = []
    for place in itertools.count():
        part = parts[place % count]
        if place // count >= len(part):
            break
        done.append(part[place // count])
    _, said = next(iter(shares.values()))
    if respelled := named_as_written(done, rows, output, (said.get("made_by") or {}).get("working_folder")):
        print(respelled, file=sys.stderr, flush=True)
    in_order = rows_to_go(done, rows, f"the shares of {output}", say=False) == list(range(len(done), len(rows)))
    if now is not None:
        check_made_alike(output, now, said.get("made_by") or {})
    partial = partial_path(output)
    if output.suffix.lower() == ".csv":
        columns = list(dict.fromkeys(key for part in parts for row in part for key in row))
        # Excel's byte-order mark, if a share has it or a row's text is not ASCII (each share decided by its own rows)
        encoding = "utf-8-sig" if any(starts_with_bom(path) for path, _ in shares.values()) or not ascii_only(done) else "utf-8"
        with partial.open("w", newline="", encoding=encoding, errors=NAMES_AS_BYTES) as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(done)
    else:
        partial.write_text("".join(json_line(row) for row in done), encoding="utf-8")
    summary_path(output).write_text(json.dumps({"rows": len(done), "output": str(output), "made_by": said.get("made_by"),
                                                "interrupted": said.get("interrupted") or "put together from shares"}))
    partial.replace(output)
    for path, _ in shares.values():
        path.unlink()
        summary_path(path).unlink(missing_ok=True)
    later = sum(map(len, parts)) - len(done)
    return (f"the shares of {count} processes put together in {output}: {len(done)} rows"
            + (" in the input's order" if in_order else " of this input (the resume's note says which rows are to go)")
            + (f" ({later} done after the first row that no share holds are predicted again)" if later else ""))


def recover_killed(output: Path, rows: list[dict[str, Any]], now: dict[str, Any] | None) -> str | None:
    """Before a resume: a run killed outright (SIGKILL, the out-of-memory killer, a scheduler's hard kill, a power
    cut) left no ``output``, only its partial file, whose complete rows are kept. Once checked to be rows of this
    input's ``rows`` (:func:`~mmcaption.data.resume_rows.rows_to_go`), made as ``now`` would make them (the record the run wrote when it started), they become
    ``output``, with a summary saying the run was killed; a row cut by the kill is predicted again. Returns what
    was done, for a note; ``None`` when there is no such file."""
    partial, record = partial_path(output), started_record(output)
    if not partial.is_file():
        return None
    before = 0  # a killed resume: its partial file begins with the interrupted output's rows, and goes on past them
    if output.exists():
        said = _summary(output)
        if said is None or not said.get("interrupted"):
            return None
        earlier = read_output_rows(output)
        before = len(earlier)
    data = partial.read_bytes()
    end = _rows_end(data, output.suffix.lower() == ".csv")
    kept = output.with_name(f".{output.stem}.recovered{output.suffix}")  # read back as the output's kind of file
    kept.write_bytes(data[:end])
    try:
        done = read_output_rows(kept)
    except (ValueError, csv.Error) as error:
        kept.unlink(missing_ok=True)
        raise OutputExistsError(f"resume: {partial}, left by a run that did not end, cannot be read back ({error}): predict it "
                                "again with --data.overwrite true") from None
    try:
        made_by = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    except (OSError, ValueError):
        made_by = None
    if before and done and done[:before] != earlier:  # a killed --data.overwrite run's rows, not a resume's: kept aside
        aside = unused_name(output.with_name(f"{output.stem}.killed{output.suffix}"))
        kept.replace(aside)
        partial.unlink()
        record.unlink(missing_ok=True)
        return (f"{partial.name}, which a run that did not end left, does not go on from {output.name} (a --data.overwrite run's?): "
                f"its {len(done)} complete rows are kept as {aside.name}; going on from {output.name}")
    if len(done) <= before:  # killed before it added a row: the output is what there is
        kept.unlink()
        return None if before else f"{partial}, left by a run that did not end, holds no complete row: starting at the first row"
    try:  # refused: the partial file stays as it was, and nothing beside it
        respelled = named_as_written(done, rows, output, (made_by or {}).get("working_folder"))
        rows_to_go(done, rows, partial, say=False)  # (a killed resume's: this input's, maybe not its first; said after)
        if now is not None and made_by:
            check_made_alike(output, now, made_by)
    except BaseException:
        kept.unlink(missing_ok=True)
        raise
    if respelled:
        print(respelled, file=sys.stderr, flush=True)
    summary_path(output).write_text(json.dumps({"rows": len(done), "output": str(output), "made_by": made_by,
                                                "interrupted": "killed (no summary written)"}), encoding="utf-8")
    kept.replace(output)
    partial.unlink()
    record.unlink(missing_ok=True)
    cut = len(data) - end
    return (f"{output}: the {len(done)} complete rows of {partial.name}, which a run that did not end left (killed, out of memory or disk space), "
            "are kept" + (f" ({len(done) - before} more than the output held: that run was a resume)" if before else "")
            + (f" ({cut} bytes of a row it was writing are left out)" if cut else ""))

"""What an evaluation leaves behind: its predictions, and a results file that says how its numbers were made.

``<stem>.predictions.jsonl`` holds one line per image (its id, the generated caption, the references)
or per question; ``<stem>.results.json`` the metric values with what they depend on - the tokenizer and
the metrics run or skipped (and why), the generation settings, the checkpoint (path and sha256), the
split and its size. Captions are also written as a COCO results file, ``<stem>.coco_results.json``
(``[{"image_id", "caption"}]``, what pycocotools' ``COCO.loadRes``, coco-caption's ``COCOEvalCap`` and
COCO's evaluation server take). No file is ever written over: a name that exists gets a ``-2``, ``-3`` ...
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime
import functools
import hashlib
import itertools
import json
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from mmcaption.evaluation.digests import file_sha256, input_record, loaded_file
from mmcaption.evaluation.yes_no import mme_said

# the generation settings a results file (and a predict output's summary) records
GENERATION_RECORDED = ("max_new_tokens", "min_new_tokens", "num_beams", "do_sample", "temperature", "top_p",
                       "length_penalty", "repetition_penalty", "no_repeat_ngram_size")
# the predict data settings that change the rows' predictions (the input itself is checked row by row)
PREDICTION_SETTINGS = ("caption_prompt", "system_prompt", "instruction", "method", "circular", "format", "split")
# the libraries whose versions a results file records: they compute the model, its 4-bit weights and its generation
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "lightning", "tokenizers")


def column_value(row: dict[str, Any], column: str) -> Any:
    """A row's cell of ``column`` in whatever case its file writes the name (lmms-lab's MMBench has ``L2-category``)."""
    if column in row:
        return row[column]
    return next((value for name, value in row.items() if name.lower() == column), None)


def write_whole(path: Path, text: str) -> None:
    """``text`` into ``path``, written beside it and renamed: a kill leaves the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def summary_path(output: Path) -> Path:
    """Where ``mmcaption predict`` writes the summary of ``output``'s rows (counts, accuracies, whether it stopped)."""
    return output.with_name(output.name + ".summary.json")


def vqa_results_path(output: Path, server: str | None = "vqa") -> Path:
    """Where ``mmcaption predict`` writes the results file an evaluation server takes for ``output``'s rows: VQAv2's for
    its official questions' answers, COCO's (``coco``) for the captions of a COCO image-info file's images."""
    return output.with_name(f"{output.name}.{server or 'vqa'}_results.json")


def server_results_paths(output: Path) -> list[Path]:
    """:func:`vqa_results_path` of either kind: an earlier run's goes with its output, whatever this run writes."""
    return [vqa_results_path(output, server) for server in ("vqa", "coco")]


def partial_path(output: Path) -> Path:
    """The hidden file a running predict writes ``output``'s rows to, renamed to ``output`` when the run ends."""
    return output.with_name(f".{output.name}.partial")


def started_record(output: Path) -> Path:
    """Beside the partial file while a run writes it: what makes its rows (a killed run leaves no summary)."""
    return output.with_name(f".{output.name}.partial.made_by.json")


# result columns a CSV holds as text: read back as the values the rows had ("" is a value left out)
_CSV_VALUES = {"correct": {"True": True, "False": False}.get, "vqa_accuracy": float,
               "question_id": lambda text: int(text) if text.isdigit() and str(int(text)) == text else text}  # VQAv2's: numbers


# A file name that is not UTF-8 (a Windows archive's "caf\xe9.jpg" unzipped on Linux) is held by Python with its
# bytes escaped (os.fsdecode): a CSV keeps those bytes, as the disk has them, and reads them back the same
NAMES_AS_BYTES = "surrogateescape"


def json_text(value: Any, **settings: Any) -> str:
    """``value`` as JSON that people read: text as it is (``grep café`` finds it, 颜色识别 reads as itself), only a name
    that is not UTF-8 escaped (``"\\udce9"``: valid JSON, read back as the same name), not the whole file."""
    return json.dumps(value, ensure_ascii=False, **settings).encode("utf-8", "backslashreplace").decode("utf-8")


def json_line(row: dict[str, Any]) -> str:
    """A row as one line of JSON Lines (:func:`json_text`)."""
    return json_text(row) + "\n"


def read_output_rows(output: Path) -> list[dict[str, Any]]:
    """The rows of a ``mmcaption predict`` output (JSON Lines, or CSV), read back as they were written."""
    if output.suffix.lower() != ".csv":
        # lines end at \n only: a row's text may hold U+2028 or \x85 as written (splitlines() breaks there too)
        rows = []
        for number, line in enumerate(output.read_text(encoding="utf-8").split("\n"), start=1):
            try:
                rows += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as error:  # (a ValueError, as csv's errors are caught with it)
                raise ValueError(f"line {number} is not a JSON row ({error.msg.removesuffix(' at')} at column {error.colno})") from None
        return rows
    with output.open(newline="", encoding="utf-8-sig", errors=NAMES_AS_BYTES) as handle:
        return [_from_csv(row) for row in csv.DictReader(handle)]


def ascii_only(value: Any) -> bool:
    """Whether every text in ``value`` (rows: dicts, lists, strings) is ASCII, which any program reads alike."""
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, dict):
        return all(ascii_only(k) and ascii_only(v) for k, v in value.items())
    return all(ascii_only(v) for v in value) if isinstance(value, (list, tuple)) else True


def starts_with_bom(path: Path) -> bool:
    """Whether ``path`` is a file that starts with UTF-8's byte-order mark, as Excel's "CSV UTF-8" does."""
    try:
        with path.open("rb") as handle:
            return handle.read(3) == codecs.BOM_UTF8
    except OSError:  # a folder, or nothing there
        return False


def _from_csv(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row with its result columns as the values they were written from. An empty prediction is none only
    beside an error (a row with no answer always has one): the model may have generated nothing."""
    values: dict[str, Any] = dict(row)
    for key, convert in _CSV_VALUES.items():
        if key in row:
            values[key] = convert(row[key]) if row[key] != "" else None
    if "error" in row:  # no key added: the rows' keys are the file's columns, which the resumed run writes on with
        values["error"] = row["error"] or None
    if row.get("prediction") == "" and values.get("error"):
        values["prediction"] = None
    return values


_SUFFIXES = (".predictions.jsonl", ".results.json", ".coco_results.json")


def _free_stem(folder: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3`` ... : the first whose files do not exist yet."""
    candidate, n = stem, 1
    while any((folder / f"{candidate}{suffix}").exists() for suffix in _SUFFIXES):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


# generate() settings that say how it returns what it makes, or what the model's tokenizer gives, not what is made
_NOT_RECORDED = {"transformers_version", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                 "return_dict_in_generate", "output_scores", "output_logits", "output_attentions", "output_hidden_states",
                 "use_cache", "cache_implementation", "cache_config", "compile_config"}


@functools.lru_cache(maxsize=1)
def _default_generation() -> dict[str, Any]:
    from transformers import GenerationConfig  # transformers' own defaults

    return GenerationConfig().to_dict()


def generation_record(generation: dict[str, Any]) -> dict[str, Any]:
    """The generation settings that change what is generated, and with sampling the run's seed (``seed_everything``):
    two runs of other seeds sample other texts, which a resume would have put together as one output."""
    recorded = {k: generation[k] for k in GENERATION_RECORDED if generation.get(k) is not None}
    defaults = _default_generation()  # and any other setting given (early_stopping, top_k, a beam search's groups)
    recorded |= {k: v for k, v in generation.items() if k not in recorded and k not in _NOT_RECORDED and not k.startswith("_")
                 and k in defaults and v != defaults[k]}
    if recorded.get("do_sample") and os.environ.get("PL_GLOBAL_SEED", "").lstrip("-").isdigit():
        recorded["seed"] = int(os.environ["PL_GLOBAL_SEED"])
    return recorded


def prediction_record(trainer) -> dict[str, Any]:
    """What made a predict output's rows: the weights (:func:`checkpoint_record`), the data settings that
    change predictions, and the generation settings."""
    module, datamodule = trainer.lightning_module, trainer.datamodule
    settings = dict(getattr(datamodule, "hparams", {}))
    if settings.get("format") != "scienceqa":  # the multiple-choice module's split is ScienceQA's (an MMBench run said "test")
        settings.pop("split", None)
    generation = module.tasks.generation.to_dict()
    try:
        inputs = [Path(p) for p in datamodule.input_files() if p is not None]
    except (AttributeError, NotImplementedError):  # a data module of the user's own
        inputs = []
    return {"checkpoint": checkpoint_record(trainer.ckpt_path, getattr(module, "init_from", None)),
            "settings": {k: settings[k] for k in PREDICTION_SETTINGS if k in settings},
            "generation": generation_record(generation),
            # the files questioned (a benchmark's TSV, a questions file and its annotations): which, and which version
            "inputs": [input_record(p) for p in inputs if p.exists()],
            "working_folder": str(Path.cwd())}  # what images named from it are: a resume run elsewhere names them otherwise


def record_differences(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How two :func:`prediction_record` differ, one phrase each (a checkpoint by its sha256 when both have one; an input
    file only added to at its end is not a difference: :func:`appended_inputs`)."""
    differences = []
    then_weights, now_weights = earlier.get("checkpoint", {}), now.get("checkpoint", {})
    if then_weights.get("sha256") and now_weights.get("sha256"):  # the same file, wherever it lies now
        same = then_weights["sha256"] == now_weights["sha256"]
    else:
        same = then_weights == now_weights
    if not same:
        then_name, now_name = (w.get("path") or w.get("init_from") or "the model's own weights" for w in (then_weights, now_weights))
        differences.append(f"the weights ({then_name} then, {now_name} now)")
    then_inputs, now_inputs = ({i["path"]: i["sha256"] for i in r.get("inputs", [])} for r in (earlier, now))
    if then_inputs and now_inputs and sorted(then_inputs.values()) != sorted(now_inputs.values()) and \
            not (len(then_inputs) == len(now_inputs) and len(appended_inputs(earlier, now)) == len(set(then_inputs.values()) - set(now_inputs.values()))):
        differences.append(f"the input files ({', '.join(then_inputs)} then; {', '.join(now_inputs)} now, edited or other)")
    for group in ("settings", "generation"):
        before, after = earlier.get(group, {}), now.get(group, {})
        for setting in sorted(set(before) | set(after)):
            if group == "generation" and setting not in (*GENERATION_RECORDED, "seed") and not (setting in before and setting in after):
                continue  # a setting recorded only when given: an earlier release's record lacks it (gone on from, as before)
            if setting == "split" and "scienceqa" not in (before.get("format"), after.get("format")):
                continue  # an earlier release recorded ScienceQA's split of other formats' runs too
            if before.get(setting) != after.get(setting):
                differences.append(f"{setting} ({before.get(setting)!r} then, {after.get(setting)!r} now)")
    return differences


def appended_inputs(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The input files of ``now`` that are ``earlier``'s with rows added at their end since (their first bytes hash as
    the whole file did, its size recorded: a question appended after an interruption), by path."""
    now_hashes = {i.get("sha256") for i in now.get("inputs", [])}
    grown = []
    for then in earlier.get("inputs", []):
        size = then.get("bytes")
        if then.get("sha256") in now_hashes or not isinstance(size, int):
            continue
        for path in (Path(i["path"]) for i in now.get("inputs", []) if Path(i["path"]).name == Path(then["path"]).name):
            if path.is_file() and path.stat().st_size > size and _first_bytes_sha256(path, size) == then["sha256"]:
                grown.append(str(path))
                break
    return grown


def _first_bytes_sha256(path: Path, size: int) -> str:
    digest, left = hashlib.sha256(), size
    with path.open("rb") as handle:
        while left and (block := handle.read(min(left, 1 << 20))):
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def checkpoint_record(path: str | Path | None, init_from: str | None = None) -> dict[str, Any]:
    """The weights evaluated: a checkpoint file's path and sha256 (or the folder it was initialised from)."""
    if path is not None and (loaded := loaded_file(path)):
        return {"path": loaded[0], "sha256": loaded[1]}
    if init_from is not None:
        source = Path(init_from)
        if not source.is_dir() and (loaded := loaded_file(source)):
            return {"init_from": loaded[0], "sha256": loaded[1]}
        manifest = source / "mmcaption.json"
        return {"init_from": str(init_from), **({"manifest_sha256": file_sha256(manifest)} if manifest.is_file() else {})}
    return {"path": None, "note": "the model's own weights (no checkpoint was given)"}


def write_evaluation(
    folder: str | Path, stem: str, rows: list[dict[str, Any]], results: dict[str, Any],
) -> tuple[Path | None, Path]:
    """Write ``rows`` to ``<stem>.predictions.jsonl`` (none without rows: the loss alone was measured), their captions
    to ``<stem>.coco_results.json``, and ``results`` (with the time and mmcaption's version added, and those files
    named) to ``<stem>.results.json`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    given = stem
    while True:  # the name taken at once: two validates ending together in one folder chose the same free name, and
        stem = _free_stem(folder, given)  # the second's result was lost to a FileExistsError traceback
        summary = folder / f"{stem}.results.json"
        with contextlib.suppress(FileExistsError):
            summary.touch(exist_ok=False)
            break
    made: list[Path] = []
    try:
        return _write_evaluation(folder, stem, summary, rows, results, made)
    except BaseException:  # a full disk: no file cut short is left under its final name (one was uploaded as results)
        for path in (summary, *made):
            path.unlink(missing_ok=True)  # the name taken, given back
        raise


def _write_evaluation(folder: Path, stem: str, summary: Path, rows: list[dict[str, Any]], results: dict[str, Any],
                      made: list[Path]) -> tuple[Path | None, Path]:
    predictions = folder / f"{stem}.predictions.jsonl" if rows else None
    with open(predictions, "x", encoding="utf-8") if predictions else contextlib.nullcontext() as handle:
        made += [predictions] if predictions else []  # (once it is this run's: an "x" open of another's file fails)
        for row in rows:
            handle.write(json_text(row, default=str) + "\n")
    captions = [{"image_id": row["image_id"], "caption": row["caption"]} for row in rows if "caption" in row]
    if captions:
        coco_results = folder / f"{stem}.coco_results.json"
        with open(coco_results, "x", encoding="utf-8") as handle:
            made.append(coco_results)
            json.dump(captions, handle)
        results = {**results, "coco_results": coco_results.name}
    results = {**results, **({"predictions": predictions.name} if predictions else {}), "mmcaption": _version("mmcaption"),
               "software": software_record(),
               "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with open(summary, "w", encoding="utf-8") as handle:  # the file taken for this run's name
        handle.write(json_text(results, indent=2, default=str) + "\n")
    return predictions, summary


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def software_record() -> dict[str, Any]:
    """The code that made the numbers: run from a git checkout, mmcaption's commit and whether its tracked files
    differ from it (an installed version number says neither); and the versions of :data:`LIBRARIES`."""
    record: dict[str, Any] = {}
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        try:
            git = ["git", "-C", str(checkout)]
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=True)
            changes = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                                     timeout=30, check=True)
            record.update(commit=commit.stdout.strip(), uncommitted_changes=bool(changes.stdout.strip()))
        except (OSError, subprocess.SubprocessError):  # no git, or it refuses the folder (another user's checkout)
            pass
    versions = {name: _version(name) for name in LIBRARIES}
    versions["torch"] = torch.__version__  # with its build: "2.13.0+cu130" where the package's metadata says "2.13.0"
    return {**record, **versions}


def scores_said(summary: dict[str, Any], category_keys: list[str]) -> str:
    """What a predict summary scored, as its closing message says it: errors, accuracy, the VQA accuracy, POPE's
    numbers, CircularEval, and the accuracy per category (``category_keys``, the summary's ``per_...`` tables)."""
    said = ""
    if summary["errors"]:
        said += f"; {summary['errors']} could not be predicted (see their 'error' field)"
    if summary["no_option"]:
        said += f"; {summary['no_option']} generated answers named no option (their 'generated' field)"
    if summary.get("cut_at_max_new_tokens"):  # a caption cut mid-sentence reads as a finished one
        said += (f"; {summary['cut_at_max_new_tokens']} stopped at max_new_tokens before their end (their "
                 "'cut_at_max_new_tokens' field): raise --model.generation.max_new_tokens for whole texts")
    if summary.get("empty"):  # (an instruct checkpoint asked for captions, a model trained a few steps: rows to open)
        said += f"; {summary['empty']} generated texts are empty: the model ended them at once"
    if "accuracy" in summary:
        said += f"; accuracy {summary['accuracy']:.3f} ({summary['correct']}/{summary['answered']}"
        said += f", {summary['unanswered']} without an answer, counted wrong)" if summary["unanswered"] else ")"
    if "pope" in summary:  # its answers read as POPE's evaluation reads them, not matched exactly
        pope = summary["pope"]
        said += (f"; POPE (yes/no; answers read as its evaluation reads them): accuracy {pope['accuracy']:.3f}, precision "
                 f"{pope['precision']:.3f}, recall {pope['recall']:.3f}, F1 {pope['f1']:.3f}, yes {pope['yes_ratio']:.0%}")
    said += mme_said(summary["mme"]) if "mme" in summary else ""  # MME's own score, answers read as its evaluation does
    if "vqa_accuracy" in summary:
        said += f"; VQA accuracy {summary['vqa_accuracy']:.3f} over {summary['vqa_scored']} questions"
        for key in (key for key in summary if key.startswith("vqa_per_")):
            accuracies = ", ".join(f"{name} {s['vqa_accuracy']:.3f} ({s['questions']})" for name, s in summary[key].items())
            said += f"\n  VQA accuracy {key.removeprefix('vqa_').replace('_', ' ')}: {accuracies}"
    if "circular_accuracy" in summary:
        said += (f"; CircularEval accuracy {summary['circular_accuracy']:.3f} ({summary['circular_correct']}/"
                 f"{summary['circular_questions']} questions right under every rotation)")
    if "circular_unfinished" in summary:
        said += f"; {summary['circular_unfinished']} questions not yet asked in every rotation, not judged"
    for key in category_keys:
        accuracies = ", ".join(f"{name} {s['accuracy']:.3f} ({s['correct']}/{s['answered']})" for name, s in summary[key].items())
        said += f"\n  accuracy {key.replace('_', ' ')} (over {summary['per_category_over'].split(',')[0]}): {accuracies}"
    return said


def unused_name(path: Path) -> Path:
    """``path``, or ``<stem>-2<suffix>``, ``-3``, ... the first that does not exist."""
    candidates = (path.with_name(f"{path.stem}-{n}{path.suffix}") for n in itertools.count(2))
    return path if not path.exists() else next(p for p in candidates if not p.exists())

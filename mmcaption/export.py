"""``mmcaption-export``: a checkpoint of ``mmcaption fit`` to a folder a user can share.

    mmcaption-export checkpoints/instruct/last.ckpt exported/mmcaption-phi2 [--merge] [--overwrite]

The folder's format belongs to the model (:meth:`mmcaption.model.MultimodalCausalLM.save_pretrained`):
a PEFT adapter, ``multimodal.safetensors``, ``mmcaption.json`` (the config that rebuilds it), the
tokenizer and image processor, a model card, and with ``--merge`` the language model with LoRA merged
in. ``Captioner.from_pretrained`` and ``model.init_from`` read it back.

A folder that exists with something in it is refused unless ``--overwrite`` is given. The export is
written to a hidden sibling folder and renamed into place when complete: an interrupted export leaves
the destination as it was, and a replaced export keeps nothing of its old files; what the export does not write (a
Hub clone's ``.git``) stays.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import is_offline_mode, snapshot_download

from mmcaption.checkpoint import load_checkpoint_file, model_from_checkpoint
from mmcaption.console import quieted
from mmcaption.errors import ConfigError, MMCaptionError, OutputExistsError, user_errors_exit
from mmcaption.evaluation.digests import file_sha256
from mmcaption.evaluation.report import unused_name, write_whole
from mmcaption.folders import (
    FolderLock,
    as_umask_allows,
    check_new_folder,
    locks_released_after,
    replace_folder,
    staging_folder,
)
from mmcaption.generation_settings import saved_generation
from mmcaption.model.backbone_weights import weights_fingerprint
from mmcaption.model.backbones import load_tokenizer
from mmcaption.model.card import (
    CONFIG_FILE,
    DATA_SETTINGS,
    hub_license,
    merged_into_other_weights,
    model_card,
    read_manifest,
)
from mmcaption.prompts import DEFAULT_SYSTEM, ConversationTemplate
from mmcaption.resources import disk_full
from mmcaption.usage import backbones_given, export_parser


def epochs_completed(checkpoint: dict[str, Any]) -> int | None:
    """The epochs a checkpoint's run went through. ``epoch`` is the one in progress: a validation's save at the
    last batch of an epoch (the usual best checkpoint) comes before Lightning closes it, and counted one short."""
    epoch = checkpoint.get("epoch")
    loops = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    progress = (loops.get("epoch_progress") or {}).get("total") or {}
    batches = ((loops.get("epoch_loop.batch_progress") or {}).get("current") or {}).get("completed")
    data = checkpoint.get("training_data") or {}
    if not (progress and batches and data.get("samples") and data.get("batch_size")):
        return epoch
    per_epoch = data["samples"] // (data["batch_size"] * (data.get("devices") or 1))  # the fewest an epoch has
    open_epoch_done = progress.get("started", 0) > progress.get("completed", 0) and batches >= max(per_epoch, 1)
    return progress.get("completed", 0) + int(open_epoch_done)


def training_summary(checkpoint: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """What a checkpoint records of its training, for the model card: the stage, the epochs completed,
    the data settings, and the best value of each monitored validation metric (``metrics_of``: the file it was
    measured for, when that is not this checkpoint ``path`` - a last.ckpt exported after a worse validation)."""
    data = checkpoint.get("datamodule_hyper_parameters", {})
    metrics, metrics_of = {}, {}
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            metrics[state["monitor"]] = float(state["best_model_score"])
            best = Path(state.get("best_model_path") or "")
            if path is not None and best.name and not _same_save(best, Path(path), checkpoint):
                metrics_of[state["monitor"]] = best.name
    return {
        **({"metrics_of": metrics_of} if metrics_of else {}),
        # what its run said it trained (mmcaption fit records it), else its data module's settings say
        "stage": (checkpoint.get("training_data") or {}).get("stage") or (
            "instruct" if "Instruct" in str(data.get("_class_path", "")) or "val_answer_questions" in data else
            "caption" if data.get("_class_path") or "val_caption_images" in data else None),
        "epochs": epochs_completed(checkpoint),
        "data": {k: data[k] for k in DATA_SETTINGS if data.get(k) not in (None, "")},
        "metrics": metrics,
        **({"run": checkpoint["run"]} if isinstance(checkpoint.get("run"), dict) else {}),  # mmcaption fit records it
    }


def _same_save(best: Path, path: Path, checkpoint: dict[str, Any]) -> bool:
    """Whether the run's best checkpoint is this one's save: the same file (a last.ckpt link), or a file at the same
    step (last.ckpt written at the validation that was the best); by name when the best is not there to read."""
    if not best.is_file():
        return best.name == path.name
    try:
        return (path.exists() and best.samefile(path)
                or load_checkpoint_file(best, mmap=True).get("global_step") == checkpoint.get("global_step"))
    except (OSError, MMCaptionError):
        return best.name == path.name


def copy_backbone(name: str, target: Path) -> str:
    """Copy a backbone's files (a local folder, or a Hub id's snapshot in the Hugging Face cache) to
    ``target``; returns ``target``'s path relative to the export folder."""
    source = Path(name).expanduser()
    if not source.is_dir():
        try:
            source = Path(snapshot_download(name, local_files_only=is_offline_mode()))
        except Exception as error:  # noqa: BLE001 - the hub's many errors all mean the same here
            raise ConfigError(f"cannot copy the backbone {name!r} into the export: {error}") from error
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))  # a cache's symlinks are copied as files
    return str(target.relative_to(target.parent.parent))


def export_checkpoint(checkpoint_path: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False,
                      license: str | None = None, include_backbones: bool = False, **backbones: str) -> Path:
    """Write the model of a Lightning checkpoint, with the prompts and generation settings it was
    trained and validated with, to the folder ``out`` (refused when it holds anything, unless ``overwrite``).
    ``license`` is the Hub license id the model card declares for what was trained (None: none declared, said). With
    ``include_backbones`` the language model and the vision tower are copied into ``backbones/`` and the
    folder loads from them: it works with nothing else, offline. ``backbones``: ``language_model`` / ``vision_model``
    folders where they are now, when they moved since training (the export records these)."""
    out = check_new_folder(out, overwrite, "export folder", "--overwrite", keep=(checkpoint_path,),
                           marker=None if overwrite else CONFIG_FILE, ignored=HUB_CLONE)  # with it: checked below, keep first
    with locks_released_after():  # the lock file goes with the export
        lock = FolderLock(out.parent, f".{out.name}.lock", what=f"export folder {out}", advice="give this export another folder")
        lock.acquire()
        if lock.path in FolderLock.held():  # held (Windows has no flock): no live export into it owns what is there
            _recover_interrupted(out)
        return _export(checkpoint_path, out, merge, overwrite, license, include_backbones, backbones)


def _export(checkpoint_path: str | Path, out: Path, merge: bool, overwrite: bool, license: str | None, include_backbones: bool,
            backbones: dict[str, str]) -> Path:
    model, checkpoint = model_from_checkpoint(checkpoint_path, pretrained_weights=False, **backbones)  # the trained tensors suffice
    # again, now that the backbones' folders are known, and with --overwrite only over an earlier export (the check
    # above refuses before the checkpoint is read)
    local_backbones = [name for name in (model.config.language_model, model.config.vision_model) if Path(name).exists()]
    check_new_folder(out, overwrite, "export folder", "--overwrite", keep=(checkpoint_path, *local_backbones), marker=CONFIG_FILE,
                     ignored=HUB_CLONE)
    # its list of files and card hash tell the user's files from the export's: unread, --overwrite would take a
    # hand-edited card and files put into tokenizer/ for the export's
    earlier = read_manifest(out, for_use=False) if (out / CONFIG_FILE).is_file() else None
    hparams = checkpoint.get("hyper_parameters", {})
    data = checkpoint.get("datamodule_hyper_parameters", {})
    prompts = {"caption_prompt": data.get("caption_prompt", ""), "system_prompt": data.get("system_prompt", DEFAULT_SYSTEM)}
    license, unknown = hub_license(license)
    source = {"checkpoint": str(Path(checkpoint_path).resolve()), "global_step": checkpoint.get("global_step"),
              "init_from": checkpoint.get("init_from"), "license": license,
              "training": training_summary(checkpoint, checkpoint_path)}
    if unknown:
        print(f"warning: {unknown}", file=sys.stderr)
    elif not license:  # the default was apache-2.0, mmcaption's code's, declared for weights trained on LLaVA-Instruct too
        data = (source["training"] or {}).get("data") or {}
        named = next((f" ({data[key]})" for key in ("train_file", "hub_dataset", "data_dir") if data.get(key)), "")
        print("note: the model card declares no license: --license <id> declares one, a Hub license id (mit, apache-2.0, "
              f"cc-by-nc-4.0, other, ...) that the backbones' licenses and the training data's terms{named} allow",
              file=sys.stderr)
    tokenizer = load_tokenizer(model.config.language_model)
    # the instruct stage's layout, for apply_chat_template (and the Hub's chat widgets)
    tokenizer.chat_template = ConversationTemplate(system=prompts["system_prompt"]).chat_template()
    staging, kept = staging_folder(out), []
    record = staging.with_name(staging.name + KEPT)  # the user's files moved into it, should the export be killed
    try:
        generation = saved_generation(hparams.get("generation") or {}, str(checkpoint_path))
        model.save_pretrained(staging, tokenizer, prompts, generation, source, merge=merge)
        if include_backbones:
            manifest = json.loads((staging / CONFIG_FILE).read_text())
            manifest["backbones"] = {name: copy_backbone(getattr(model.config, name), staging / "backbones" / name)
                                     for name in ("language_model", "vision_model")}
            (staging / CONFIG_FILE).write_text(json.dumps(manifest, indent=2))
            (staging / "README.md").write_text(model_card(manifest), encoding="utf-8")  # it now says they are inside
        manifest = json.loads((staging / CONFIG_FILE).read_text())  # the files it writes: what a later --overwrite replaces
        manifest["backbone_weights"] = checkpoint.get("backbone_weights") or {}  # those its tensors were fitted to
        if merge:  # the base weights the LoRA was folded into: other weights than those trained on are said in the card
            manifest["merged_base_weights"] = weights_fingerprint(model.config.language_model)
            (staging / "README.md").write_text(model_card(manifest), encoding="utf-8")
        manifest["files"] = sorted({CONFIG_FILE, *(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())})
        manifest["card_sha256"] = file_sha256(staging / "README.md")  # edited since, kept
        (staging / CONFIG_FILE).write_text(json.dumps(manifest, indent=2))
        as_umask_allows(staging)
        if not overwrite and out.is_dir() and any(p.name not in HUB_CLONE for p in out.iterdir()):  # another export came:
            raise OutputExistsError(f"export folder {out} was written by something else while this export ran (two "
                                    "exports into one folder?); it is left as it is. Give another folder, or --overwrite")
        kept = _keep_what_the_export_does_not_write(out, staging, kept, record, earlier)
        edited_card = _keep_an_edited_card(out, staging, earlier)
    except BaseException as error:
        kept_back(kept, staging, out, record)
        if (full := disk_full(error)) is not None and not full.filename:  # safetensors' error names no file: the folder
            raise OSError(errno.ENOSPC, full.strerror, str(out)) from error
        raise
    if kept:
        print(f"note: kept in {out} what the export does not write: {', '.join(kept)}", file=sys.stderr)
    if edited_card:
        print(f"note: {out / 'README.md'} differs from the card that was exported: kept as {edited_card} beside the new "
              "model card (README.md), to carry your edits over", file=sys.stderr)
    replace_folder(staging, out)
    record.unlink(missing_ok=True)
    return out


def kept_back(kept: list[str], staging: Path, out: Path, record: Path) -> None:
    """An export that failed (Ctrl-C, a full disk): what was moved over put back (a Hub clone's .git is not lost), and its
    staging folder removed."""
    for name in kept:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)
    record.unlink(missing_ok=True)


HUB_CLONE = (".git", ".gitattributes", ".gitignore")  # a new Hub repository's clone: exported into, these kept
KEPT = ".kept.json"  # beside an export's staging folder: the names of the user's files moved into it


def _recover_interrupted(out: Path) -> None:
    """Put right what an export killed half-way (SIGKILL, a power cut) left beside ``out``: the earlier export moved
    aside but not replaced is put back, the user's files moved into the new one's staging folder (a Hub clone's
    ``.git``) go back into ``out``, and the hidden folders go, each said (they stayed unsaid, GBs, the user's files
    inside)."""
    stem = glob.escape(out.name)
    for old in sorted(out.parent.glob(f".{stem}.old-*")):
        if not out.exists() and (old / out.name).is_dir():
            os.replace(old / out.name, out)
            print(f"note: {out} put back: an export killed while replacing it had moved it aside", file=sys.stderr)
        shutil.rmtree(old, ignore_errors=True)
    for staging in sorted(p for p in out.parent.glob(f".{stem}.partial-*") if not p.name.endswith(KEPT)):
        record = staging.with_name(staging.name + KEPT)
        try:
            names = json.loads(record.read_text()) if record.exists() else []  # none: killed before it moved a file
        except (OSError, ValueError):
            print(f"note: kept {staging}, left by an export that was killed: it may hold files of yours moved there from "
                  f"{out}; look, then remove it", file=sys.stderr)
            continue
        back = [name for name in names if (staging / name).exists() and out.is_dir() and not (out / name).exists()]
        for name in back:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out / name)
        if stranded := [name for name in names if (staging / name).exists()]:  # no place for them in out: never deleted
            print(f"note: kept {staging}, left by an export that was killed: it holds {', '.join(stranded)} of yours",
                  file=sys.stderr)
            continue
        shutil.rmtree(staging, ignore_errors=True)
        record.unlink(missing_ok=True)
        print(f"note: removed {staging}, left by an export that was killed" + (f"; {', '.join(back)} moved back into {out}"
              if back else ""), file=sys.stderr)
    for record in out.parent.glob(f".{stem}.partial-*{KEPT}"):  # its export finished, the record not yet removed
        record.unlink(missing_ok=True)


def _keep_an_edited_card(out: Path, staging: Path, manifest: dict[str, Any] | None) -> str | None:
    """An earlier export's model card edited by hand since (a description, the Hub's metadata added): copied into the new
    export as ``README.edited.md``, where ``--overwrite`` wrote the new card over it. Told by the hash the export
    recorded in its ``manifest``, or, for an export that recorded none, by the card that manifest makes. Returns the
    copy's name."""
    card = out / "README.md"
    if manifest is None or not card.is_file() or card.is_symlink():  # a link's target is no card of the folder's: copied
        return None  # in, a file from outside it (a Hub clone's link to ~/.ssh/...) went up with the next upload
    recorded = manifest.get("card_sha256")
    try:  # (line ends as Windows writes them aside; a card of an earlier release's template differs from today's too)
        edited = file_sha256(card) != recorded if recorded else \
            card.read_bytes().decode("utf-8").replace("\r\n", "\n") != model_card(manifest)
    except (UnicodeDecodeError, KeyError, TypeError, ValueError):  # a card no export wrote
        edited = True
    if not edited:
        return None
    aside = unused_name(staging / "README.edited.md")
    shutil.copyfile(card, aside)
    return aside.name + ("" if recorded else " (an earlier release's export, which recorded no hash of its card: edited by "
                                             "hand, or written from an earlier template)")


def _keep_what_the_export_does_not_write(out: Path, staging: Path, kept: list[str], record: Path,
                                         manifest: dict[str, Any] | None) -> list[str]:
    """Move what an earlier export's folder holds besides an export's own files (a Hub clone's ``.git`` and
    ``.gitattributes``, examples added beside the model, a file put into its ``tokenizer/``) into the new folder:
    ``--overwrite`` replaces the export, not them. An earlier export's own files (a merged ``language_model/`` this one
    does not write) go. ``manifest``: the earlier export's, read before (None: none there)."""
    if not out.is_dir():
        return []
    own = {entry.name for entry in staging.iterdir()} | {"language_model", "backbones"}  # those of every kind of export
    names = [entry.name for entry in out.iterdir() if entry.name not in own]
    # inside its folders (tokenizer/, backbones/), what the earlier export did not write: an export records its files
    # (an earlier release's export recorded none: its folders are taken as its own)
    files = (manifest or {}).get("files")
    written = set(files) if isinstance(files, list) else None
    if written is not None:
        names += [rel for entry in out.iterdir() if entry.name in own and entry.is_dir() and not entry.is_symlink()
                  for p in entry.rglob("*") if (p.is_symlink() or not p.is_dir())  # a linked folder: kept as the link
                  and (rel := p.relative_to(out).as_posix()) not in written
                  and not (staging / rel).exists()]
    for name in sorted(names):
        write_whole(record, json.dumps([*kept, name]))  # before the move: a kill between the two loses nothing
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(out / name, staging / name)
        kept.append(name)  # one by one: what was moved is put back if the export fails before it is in place
    return kept


@user_errors_exit
@quieted
def main(argv: list[str] | None = None) -> None:
    """The ``mmcaption-export`` console script."""
    args = export_parser().parse_args(argv)
    out = export_checkpoint(args.checkpoint, args.out, args.merge, args.overwrite, args.license, args.include_backbones,
                            **backbones_given(args))
    print(f"exported to {out}")
    manifest = json.loads((out / CONFIG_FILE).read_text()) if args.merge else {}
    if merged_into_other_weights(manifest):  # said in the card too; here, as it is asked for
        print(f"warning: the LoRA was merged into {manifest['base_language_model']} as it is now, whose weights are not "
              f"those {args.checkpoint} was trained against (their fingerprints differ): {out / 'language_model'} is not "
              "the trained model, unless they are the same weights saved again in another format. Its adapter/ on the "
              "language model it was trained with is; merge with that one (--language_model)", file=sys.stderr)
    model = manifest.get("model", {})
    if model.get("quantization", "none") != "none":  # said in the card too; here, as it is asked for
        print(f"note: the LoRA weights, trained against {model['quantization']} weights, are merged into the unquantized "
              "ones, which the merged model computes with: its outputs differ slightly from the trained model's (an export "
              "without --merge reproduces them)", file=sys.stderr)


if __name__ == "__main__":
    main()

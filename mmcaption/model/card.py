"""The model card (``README.md``) written into every saved model folder."""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCardData, try_to_load_from_cache

from mmcaption.errors import ConfigError, NotAModelFolderError
from mmcaption.model.config import check_known_settings
from mmcaption.terminal import shell_word

if TYPE_CHECKING:
    from peft import PeftModel

CONFIG_FILE = "mmcaption.json"  # a saved folder's manifest: model config, prompts, generation, provenance
FOLDER_FORMAT = 1  # of the manifest and the folder: raised where a release changes them (an earlier reader refuses it)
DATA_SETTINGS = ("data_dir", "source", "hub_dataset", "train_split", "train_file", "val_file", "image_root", "val_image_root",
                 "max_length", "batch_size")


def hub_ids(*names: str) -> list[str] | None:
    """The names that are Hub model ids (``owner/name``), not local folders: what ``base_model`` may list."""
    ids = [name for name in names if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists()]
    return ids or None


# the Hub's license ids (huggingface.co/docs/hub/repositories-licenses): a card whose license is none of them is refused
# by the Hub's metadata check on upload (``MIT``, SPDX's ``CC-BY-NC-4.0``)
HUB_LICENSES = (
    "apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m "
    "afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 "
    "cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 "
    "cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 "
    "cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl "
    "lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense "
    "zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other").split()


def hub_license(given: str | None) -> tuple[str | None, str | None]:
    """The license id the card declares (the Hub's ids are lower case: ``MIT`` and SPDX's ``CC-BY-NC-4.0`` were written as
    given, and the Hub refuses the upload of such a card), and a warning when it is none of the Hub's ids."""
    if not given or not given.strip():
        return None, None
    written = given.strip().lower()
    if written in HUB_LICENSES:
        return written, None
    near = difflib.get_close_matches(written.replace(" ", "-"), HUB_LICENSES, n=3, cutoff=0.6)
    return written, (f"--license {given!r} is not one of the Hub's license ids that this release knows "
                     f"({'close: ' + ', '.join(near) + '; ' if near else ''}the list: "
                     "huggingface.co/docs/hub/repositories-licenses): the Hub refuses to upload a model card whose license it "
                     "does not know. Give its id, or `other` for a license of its own (then add its name, `license_name`, "
                     "to the card's metadata, and its text to the folder)")


def home_written(value: Any) -> Any:
    """``value`` with each absolute path under the home folder written from ``~`` (in lists and dicts too), as the model
    card shows it: the card is the page a shared folder shows on the Hub, and it named ``/home/<user>/...`` where only
    relative paths had been typed. (``mmcaption.json`` and the adapter's config keep the paths loading needs, as
    transformers and PEFT keep theirs: another user's ``~`` is another folder.)"""
    home = str(Path.home())
    if isinstance(value, str):
        return "~" + value[len(home):] if len(home) > 1 and value.startswith(home + os.sep) else value
    if isinstance(value, dict):
        return {key: home_written(item) for key, item in value.items()}
    if isinstance(value, list):
        return [home_written(item) for item in value]
    return value


DATA_FILE = re.compile(r"\.(jsonl?|csv|tsv|txt|parquet|arrow|zip|tar(\.gz)?|xlsx)$", re.IGNORECASE)  # no Hub id's end


def card_metadata(manifest: dict[str, Any]) -> str:
    """The card's Hub metadata (YAML front matter, by ``huggingface_hub.ModelCardData``). Backbones
    given as local folders are left out of ``base_model``, which names Hub models only."""
    model, source = manifest["model"], manifest["source"]
    data = source.get("training", {}).get("data", {})
    return ModelCardData(
        license=source.get("license"),
        base_model=hub_ids(manifest["base_language_model"], model["vision_model"]),
        datasets=hub_ids(data["hub_dataset"]) if isinstance(data.get("hub_dataset"), str)  # a local folder's or file's: not
        and not DATA_FILE.search(data["hub_dataset"]) else None,
        library_name="mmcaption",  # the folder loads with mmcaption: PEFT's snippet would look for an adapter at its root
        pipeline_tag="image-text-to-text",
        tags=["mmcaption", "image-captioning", *(["visual-question-answering"] if not caption_stage(manifest) else []),
              "lora", "gated-cross-attention",
              *(["4-bit", model["quantization"]] if model["quantization"] != "none" else [])],
    ).to_yaml()


def training_section(source: dict[str, Any]) -> str:
    """How the exported checkpoint was trained and what it measured, from what the checkpoint records."""
    training = source.get("training")
    if not training:
        return ""
    stage = f"{training['stage']} stage: " if training.get("stage") else ""
    lines = [f"- {stage}{source.get('global_step')} optimizer steps, {training['epochs']} epoch(s) "
             f"completed, from `{source.get('checkpoint')}`"]
    start = source.get("init_from")
    if start:
        lines.append(f"- started from the trained weights of `{start.get('path')}` (its step {start.get('global_step')})")
    run = training.get("run") or {}
    if run:  # the run that saved it, as the checkpoint records it
        trainer = {k: v for k, v in (run.get("trainer") or {}).items() if v is not None}
        lines.append("- run: " + ", ".join([*([f"logs `{run['log_dir']}`"] if run.get("log_dir") else []),
                                            *([f"seed {run['seed']}"] if run.get("seed") is not None else []),
                                            *([f"learning rate {run['learning_rate']}"] if run.get("learning_rate") else []),
                                            *(f"{k} {v}" for k, v in trainer.items())]))
    data = training.get("data", {})
    if data:
        lines.append("- data: " + ", ".join(f"{k} `{v}`" for k, v in data.items()))
    for name, value in training.get("metrics", {}).items():
        of = training.get("metrics_of", {}).get(name)
        lines.append(f"- {name}: {value:.4f} (the checkpoint callback's best; measured on the validation split" + (
            f", for the run's `{of}`, not this model's checkpoint)" if of else ")"))
    return "\n## Training\n\n" + "\n".join(lines) + "\n"


def caption_stage(manifest: dict[str, Any]) -> bool:
    """Whether a saved folder holds a caption-stage model, which was never taught the instruct stage's conversations."""
    return ((manifest.get("source") or {}).get("training") or {}).get("stage") == "caption"


def backbones_needed(manifest: dict[str, Any]) -> str:
    """What the folder needs besides itself to load: the backbones it names, unless it carries them (``backbones/``)."""
    if manifest.get("backbones"):
        return "The language model and the vision tower are in `backbones/`: the folder loads with nothing else, offline."
    needed = [f"the vision tower `{manifest['model']['vision_model']}`"]
    if not manifest["merged"]:
        needed.insert(0, f"the language model `{manifest['base_language_model']}`")
    return (f"Loading it needs {' and '.join(needed)} as well: a Hub id downloads (offline: from the Hugging Face cache), a "
            "local folder must be where it was at training, or be given where it is now "
            "(`Captioner.from_pretrained(folder, language_model=..., vision_model=...)`).")


def merged_into_other_weights(manifest: dict[str, Any]) -> bool:
    """Whether a merged folder's LoRA was folded into other base weights than those it was trained against (the base
    changed on disk since, or another one given at export): both fingerprints known, and different."""
    trained = (manifest.get("backbone_weights") or {}).get("language_model")
    merged = manifest.get("merged_base_weights")
    return bool(manifest.get("merged") and trained and merged and trained != merged)


def model_card(manifest: dict[str, Any]) -> str:
    """A short card from a saved folder's manifest: what it is made of and how to use it (paths under the home folder
    from ``~``: :func:`home_written`)."""
    manifest = home_written(manifest)
    model = manifest["model"]
    adapter = "The LoRA adapter is in `adapter/` (a PEFT folder)."
    if manifest["merged"]:
        adapter = "The LoRA adapter is merged into `language_model/`"
        if model["quantization"] != "none":
            adapter += (
                f", folded into the base model's original {model['compute_dtype']} weights although it was trained"
                f" against their {model['quantization']} quantization: the merged model computes with the"
                " unquantized weights, so its outputs differ slightly from the trained model's"
                " (`adapter/` with the quantized base reproduces them exactly)"
            )
        adapter += "."
        if merged_into_other_weights(manifest):
            adapter += (f" The base weights it was merged into (fingerprint {manifest['merged_base_weights']}) are not those"
                        f" it was trained against ({manifest['backbone_weights']['language_model']}): `language_model/` is"
                        " not the trained model, unless they are the same weights saved again in another format; `adapter/`"
                        " on the language model it was trained with is.")
    return f"""---
{card_metadata(manifest)}
---

# mmcaption model

{"A captioning model (the caption stage; not instruction-tuned: it was not taught to answer questions or chat)"
 if caption_stage(manifest) else "A captioning and visual question answering model"} trained with mmcaption: the language model
`{manifest['base_language_model']}` ({model['quantization'] + " during training" if model['quantization'] != "none"
                                      else "not quantized"}), the frozen vision tower
`{model['vision_model']}`, gated cross-attention after decoder layers {model['cross_attention_layers']},
and LoRA (r={model['lora_r']}, alpha={model['lora_alpha']}) on {', '.join(model['lora_target_modules'])}.
{adapter}

```python
from mmcaption import Captioner
captioner = Captioner.from_pretrained("path/to/this/folder")
print(captioner.caption("photo.jpg"))
```

{backbones_needed(manifest)}

Exported from `{manifest['source'].get('checkpoint')}` (step {manifest['source'].get('global_step')}).
{training_section(manifest['source'])}
{license_line(manifest['source'])}
"""


def license_line(source: dict[str, Any]) -> str:
    """What the card says of licenses: the weights' (``--license``), and the backbones' and the data's own."""
    if source.get("license"):
        return (f"This model is declared `{source['license']}`; the language model, the vision tower and the training data "
                "keep their own licenses.")
    return ("No license is declared for this model (`mmcaption-export --license`); the language model, the vision tower and "
            "the training data keep their own licenses, which its use must respect.")


def is_pretrained_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :meth:`MultimodalCausalLM.save_pretrained`."""
    return (Path(path) / CONFIG_FILE).is_file()


def near_names(path: Path) -> str:
    """What a mistyped ``path``'s folder holds that is near its name (``exported/instrct``: "; did you mean
    exported/instruct?"), or nothing."""
    near = _close_folders(path.parent, path.name)
    return f"; did you mean {' or '.join(str(path.parent / name) for name in near)}?" if near else ""


def _close_folders(parent: Path, name: str, n: int = 3) -> list[str]:
    try:
        names = [entry.name for entry in parent.iterdir() if entry.is_dir()] if parent.is_dir() else []
    except OSError:
        return []
    return difflib.get_close_matches(name, names, n=n)


HUB_ID = re.compile(r"[\w-][\w.-]*/[\w.-]+")  # owner/name


def mistyped_folder(name: str, marker: str) -> str | None:
    """The folder here that ``name`` (``owner/name``, a Hub id's shape) nearly names, when the Hugging Face cache holds
    no such repository (its ``marker`` file): ``exported/instrct`` beside ``exported/instruct`` was asked of the hub,
    24 seconds of retries offline before it failed. A Hub id whose owner is also a folder here stays a Hub id."""
    owner, _, rest = name.partition("/")
    try:
        if not rest or "/" in rest or isinstance(try_to_load_from_cache(name, marker), str):
            return None
    except ValueError:  # not a Hub id's shape ('$HOME/x', 'my models/phi-2'): a traceback from the hub's check
        pass
    near = _close_folders(Path(owner), rest, n=1)
    return f"{owner}/{near[0]}" if near else None


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of fit's to name for a folder of them given where a model or a checkpoint file was wanted: the
    newest ``last*.ckpt`` (a re-run into the folder writes ``last-v1.ckpt``), else the newest other (a best one of a
    ``val/loss`` name is a level down)."""
    held = [p for p in (*folder.glob("*.ckpt"), *folder.glob("*/*.ckpt")) if p.is_file()]
    return min(held, key=lambda path: (not path.name.startswith("last"), -path.stat().st_mtime), default=None)


def read_manifest(folder: str | Path, for_use: bool = True) -> dict[str, Any]:
    """The ``mmcaption.json`` of a saved folder: model config, prompts, generation, provenance; ``for_use``: refused where a
    newer release wrote it (another folder format, model settings this release lacks)."""
    if not is_pretrained_folder(folder):
        path = Path(folder)  # a checkpoint, or a checkpoints folder of fit's (its last.ckpt first): the command that exports it
        checkpoint = newest_checkpoint(path) if path.is_dir() else path if path.is_file() and path.suffix == ".ckpt" else None
        export = f"; a checkpoint of mmcaption fit becomes one with: mmcaption-export {shell_word(checkpoint)} <new folder>" \
            if checkpoint else ""
        if checkpoint and path.is_dir():  # --model.init_from takes the checkpoint itself
            export += f" (or give {shell_word(checkpoint)} itself where a checkpoint is taken: --ckpt_path, --model.init_from)"
        what = ("a file, not a folder" + (": give the folder it is in" if path.name == CONFIG_FILE else "")
                if path.is_file() and not checkpoint else f"no {CONFIG_FILE}" if path.exists() else "no such folder")
        raise NotAModelFolderError(f"{folder} is not a saved mmcaption model folder ({what}){export}"
                                   f"{'' if path.exists() else near_names(path)}")
    path = Path(folder) / CONFIG_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:  # edited by hand (a stray comma, a path fixed after a move)
        where = f" at line {error.lineno}, column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        raise ConfigError(f"{path} is not valid JSON{where} ({getattr(error, 'msg', error)}): mend it (edited by hand?), or "
                          "export the checkpoint again (mmcaption-export <checkpoint> <folder>)") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path} holds a JSON {type(manifest).__name__}, not the object mmcaption-export writes: export the "
                          "checkpoint again (mmcaption-export <checkpoint> <folder>)")
    if not for_use:  # (an export over it reads what it holds, to replace it)
        return manifest
    written = manifest.get("format", FOLDER_FORMAT)  # a newer release's folder was read as this one's, its new settings left out
    if not isinstance(written, int) or written < 1:
        raise ConfigError(f"{path} says format {written!r}, which no release of mmcaption writes (edited by hand?): mend it, or "
                          "export the checkpoint again (mmcaption-export <checkpoint> <folder>)")
    if written > FOLDER_FORMAT:
        raise ConfigError(f"{path} is of folder format {written}, which a newer release of mmcaption writes (this one reads "
                          f"format {FOLDER_FORMAT} and before): upgrade mmcaption (pip install -U mmcaption) to use it")
    if isinstance(manifest.get("model"), dict):
        check_known_settings(manifest["model"], str(path), "written by a newer version of mmcaption, or edited by hand")
    if problem := manifest_problem(manifest):  # a stranger's folder, or one edited by hand: tracebacks deep in loading
        raise ConfigError(f"{path}: {problem} (edited by hand?): mend it, or export the checkpoint again (mmcaption-export "
                          "<checkpoint> <folder>)")
    return manifest


def _of(kinds: tuple, items: tuple = ()) -> Any:
    """A check of a value's JSON kind: one of ``kinds`` (an int is no bool), or a list of ``items``."""
    def fits(value: Any) -> bool:
        if isinstance(value, list) and items:
            return all(isinstance(item, items) and not isinstance(item, bool) for item in value)
        return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
    return fits


TEXT, WHOLE, NUMBER = _of((str,)), _of((int,)), _of((int, float))
MANIFEST_KINDS = {"model": ("an object", _of((dict,))), "merged": ("true or false", _of((bool,))),
                  "base_language_model": ("a name", TEXT), "prompts": ("an object", _of((dict,))),
                  "generation": ("an object", _of((dict,))), "source": ("an object", _of((dict,))),
                  "backbones": ("an object", _of((dict,))), "backbone_weights": ("an object", _of((dict,)))}
SETTING_KINDS = {"language_model": ("a name", TEXT), "vision_model": ("a name", TEXT), "quantization": ("a name", TEXT),
                 "compute_dtype": ("a name", TEXT), "cross_attention_layers": ("a list of whole numbers", _of((), (int,))),
                 "cross_attention_heads": ("a whole number or null", _of((int, type(None)))),
                 "cross_attention_ffn_mult": ("a whole number", WHOLE), "lora_r": ("a whole number", WHOLE),
                 "lora_alpha": ("a number", NUMBER), "lora_dropout": ("a number", NUMBER),
                 "vision_feature_layer": ("a whole number or a list of them", lambda v: WHOLE(v) or _of((), (int,))(v)),
                 "lora_target_modules": ("a list of names", _of((), (str,))),
                 "gradient_checkpointing": ("true or false", _of((bool,)))}


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What in a manifest is not of the kind ``mmcaption-export`` writes, or None."""
    for key in ("model", "merged"):
        if key not in manifest:
            return f"it has no {key!r}"
    for table, kinds in ((manifest, MANIFEST_KINDS), (manifest["model"], SETTING_KINDS)):
        for key, (what, fits) in kinds.items():
            if isinstance(table, dict) and key in table and not fits(table[key]):
                return f"{key} is {json.dumps(table[key])[:60]}, where it is {what}"
    backbones = manifest.get("backbones") or {}
    if wrong := [f"{key}: {json.dumps(value)[:40]}" for key, value in backbones.items()
                 if key not in ("language_model", "vision_model") or not isinstance(value, str)]:
        return f"backbones holds {', '.join(wrong)}, where it names the language_model and vision_model folders in it"
    return None


ADAPTER_README = """# LoRA adapter of an mmcaption model

The LoRA adapter (PEFT) of the language model of the mmcaption model in the folder above, which loads with
`mmcaption.Captioner.from_pretrained(<that folder>)`. On its own, `peft.PeftModel.from_pretrained(<its base language
model>, <this folder>)` gives the language model with the adapter, without the vision tower and the cross-attention.
"""


def save_adapter(language_model: PeftModel, folder: Path) -> None:
    """The LoRA adapter as PEFT saves it, its target modules sorted: PEFT writes them from a set, in an order that changes
    from one process to the next, and two exports of one checkpoint differed."""
    language_model.save_pretrained(folder)
    # PEFT's README is a blank card template whose metadata names the base model's local path and PEFT as the loader
    (folder / "README.md").write_text(ADAPTER_README, encoding="utf-8")
    settings = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if isinstance(settings.get("target_modules"), list):
        settings["target_modules"] = sorted(settings["target_modules"])
    (folder / "adapter_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8")

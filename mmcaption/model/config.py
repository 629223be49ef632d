"""The model's settings: one dataclass, declared and documented here only.

The LightningModule takes it whole (``model.config.*`` in YAML, ``--model.config.lora_r 16`` on the
command line), checkpoints store it (``model_config``), exported folders write it (``mmcaption.json``),
and :meth:`~mmcaption.model.MultimodalCausalLM.from_config` builds the model from it.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from mmcaption.errors import ConfigError
from mmcaption.model.backbone_weights import backbone_folder

Quantization = Literal["nf4", "fp4", "int8", "none"]
DType = Literal["bfloat16", "float16", "float32"]


@dataclass
class MultimodalConfig:
    """Everything needed to rebuild the model around its pretrained backbones.

    Attributes:
        language_model: ``from_pretrained`` name or folder of the causal language model (and its tokenizer).
        vision_model: ``from_pretrained`` name or folder of the CLIP model (full or vision-only) and its
            image processor; frozen.
        quantization: how the language model's weights are stored: nf4, fp4, int8 or none (bf16 LoRA).
        compute_dtype: dtype of the quantized matmuls (and of the whole LM without quantization).
        cross_attention_layers: decoder layers wrapped with gated cross-attention (negative: from the end).
        cross_attention_heads: heads of each cross-attention block (null: the language model's).
        cross_attention_ffn_mult: width multiplier of a Flamingo-style gated feed-forward after each
            block (0: none).
        vision_feature_layer: hidden state of the vision tower used as image tokens (-1: the last, -2:
            the penultimate, as LLaVA); a list (``[-2, -1]``) concatenates several along the width.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        lora_dropout: dropout on the LoRA input.
        lora_target_modules: names of the language model's linear layers that get LoRA adapters.
        gradient_checkpointing: recompute the language model's activations in backward (less memory,
            ~30% slower).
    """

    language_model: str = "microsoft/phi-2"
    vision_model: str = "openai/clip-vit-base-patch32"
    quantization: Quantization = "nf4"
    compute_dtype: DType = "bfloat16"
    cross_attention_layers: list[int] = field(default_factory=lambda: [-4, -3, -2, -1])
    cross_attention_heads: int | None = None
    cross_attention_ffn_mult: int = 0
    vision_feature_layer: int | list[int] = -1
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "dense"])
    gradient_checkpointing: bool = False

    @property
    def computed_dtype(self) -> DType:
        """What the language model computes in: ``compute_dtype``, but float32 in int8 (LLM.int8 has no compute dtype: its
        weights load in float32 whatever ``compute_dtype`` says)."""
        return "float32" if self.quantization == "int8" else self.compute_dtype

    def with_absolute_paths(self) -> MultimodalConfig:
        """The same config with backbone folders that exist from here made absolute (hub ids kept), so
        that a checkpoint or export storing it loads from any working directory."""
        return replace(self, language_model=absolute_if_local(self.language_model),
                       vision_model=absolute_if_local(self.vision_model))


def absolute_if_local(name: str) -> str:
    """``name`` as an absolute path when it names an existing file or folder, else unchanged (a hub id). Links on the
    way are kept, not followed: a user who reaches the backbones through a link re-points it when they move (their
    target was stored, and the moved backbones were looked for where the link had pointed). A ``..`` is kept only after
    a link, where it is the link target's parent: ``../models/phi`` given in ``proj`` was stored as ``proj/../models/phi``,
    which no longer led anywhere once ``proj`` was renamed, the backbones unmoved."""
    path = Path(name).expanduser()
    if not path.exists():
        return name
    absolute = path.absolute()
    normal = Path(os.path.normpath(absolute))
    return str(normal if normal.exists() and normal.resolve() == absolute.resolve() else absolute)


PATH_SETTINGS = ("config.language_model", "config.vision_model", "init_from")


def _real(name: str) -> str:
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def same_setting(key: str, given: Any, saved: Any) -> bool:
    """Whether a setting given equals the checkpoint's (a relative folder equals its absolute path; a tuple, the list a
    saved config.yaml gives back)."""
    if key in PATH_SETTINGS and isinstance(given, str) and isinstance(saved, str):  # by a link or its target alike
        return _real(given) == _real(saved)
    if isinstance(given, tuple | list) and isinstance(saved, tuple | list):
        return len(given) == len(saved) and all(same_setting(key, a, b) for a, b in zip(given, saved))
    return given == saved


def flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"config": {"lora_r": 8}}`` -> ``{"config.lora_r": 8}`` (the model's config only; other dicts,
    like ``generation``, are one setting)."""
    flat = {}
    for key, value in settings.items():
        if key == "config" and isinstance(value, dict) and not prefix:
            flat.update(flat_settings(value, "config."))
        else:
            flat[prefix + key] = value
    return flat


def nested_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """What :func:`flat_settings` flattened, nested again."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("config."):
            nested.setdefault("config", {})[key.removeprefix("config.")] = value
        else:
            nested[key] = value
    return nested


# Settings that change what a trained tensor means: weights trained with others do not fit.
STRUCTURAL_SETTINGS = (
    "cross_attention_layers",
    "cross_attention_heads",
    "cross_attention_ffn_mult",
    "vision_feature_layer",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
)


# the module's settings only training reads: a test's or a predict's own value of them is no change worth a note
TRAINING_ONLY = ("learning_rate", "weight_decay", "warmup_ratio", "adam_betas", "on_nonfinite_loss")


def merged_settings(saved: dict[str, Any], given: dict[str, Any], written: set[str] | None, defaults: dict[str, Any],
                    saved_name: str = "checkpoint", typed: set[str] | None = None) -> tuple[dict[str, Any], list[str], list[str]]:
    """Flat model settings a checkpoint or an export (``saved``) gives, with those the user set (``written``, or where
    unknown, ``given`` values other than the ``defaults``) in their place: (the settings, notes on each one the user's
    value replaced, the structural ones that differ - the trained tensors would not fit them). A note on a setting
    written in a config file but not on the command line (``typed``, where known) gives the option that keeps the
    saved value: a run started with ``--model.learning_rate 0.3`` and resumed with the README's short command took
    its config's 0.003, a note saying "the settings you gave"."""
    merged, notes, refused = dict(saved), [], []
    for key, value in given.items():
        unset = key not in written if written is not None else value == defaults.get(key)
        if unset or key not in merged or same_setting(key, value, merged[key]) or key == "init_from":
            continue  # not set by the user, unknown to the checkpoint, the same, or unused (its weights are replaced)
        if key == "config.cross_attention_layers":  # an export holds them resolved ([28, ..., 31] for [-4, ..., -1]): compared
            count = decoder_layer_count(merged.get("config.language_model"))  # resolved, where the language model's config
            if count and sorted(i % count for i in value) != sorted(i % count for i in merged[key]):  # says how many layers:
                refused.append(f"{key}: {saved_name} {merged[key]!r}, given {value!r} (of {count} layers) "  # not minutes on
                               f"({as_option(key, merged[key])} gives the {saved_name}'s)")  # (the loaded model refuses it)
            merged[key] = value
            continue
        if key.removeprefix("config.") in STRUCTURAL_SETTINGS:
            refused.append(f"{key}: {saved_name} {merged[key]!r}, given {value!r} ({as_option(key, merged[key])} gives the "
                           f"{saved_name}'s)")
        else:
            for shown, now, was in _changes(key, value, merged[key]):
                typed_here = typed is None or any(t == shown or t.startswith(shown + ".") or shown.startswith(t + ".") for t in typed)
                # a path of the machine or folder it was trained in, not there now: no option to keep it
                gone = isinstance(was, str) and was.startswith(("/", ".", "~")) and not Path(was).expanduser().exists()
                keep = "" if typed_here or was is _UNSET else "; not there now" if gone else \
                    f"; your config's, not the command line's: {model_option(shown, was)} keeps it"
                notes.append(f"{shown} {now!r} ({saved_name}: {'not set' if was is _UNSET else repr(was)}{keep})")
            merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged[key], dict) else value
    return merged, notes, refused


_UNSET = object()


def _changes(key: str, value: Any, saved: Any) -> list[tuple[str, Any, Any]]:
    """``(setting, given, saved)`` for each value a given setting changes: of a dict (``generation``), each key given
    that differs - the keys given replace the saved dict's, the others stay (``--model.generation.max_new_tokens 10``
    on a checkpoint trained with beam search had replaced the whole dict: greedy captions, not said)."""
    if not (isinstance(value, dict) and isinstance(saved, dict)):
        return [(key, value, saved)]
    return [(f"{key}.{k}", v, saved.get(k, _UNSET)) for k, v in value.items() if saved.get(k, _UNSET) != v]


def unread_init_from(source: str, given: dict[str, Any], saved: dict[str, Any], typed: set[str] | None, subcommand: str) -> str | None:
    """The note on a ``--model.init_from`` typed beside ``--ckpt_path`` (``source``): the checkpoint's weights replace
    those it would give, so it is not read (a config's init_from, the stage before's, is not said; nor the run's own)."""
    start = given.get("init_from")
    if not start or typed is None or "init_from" not in typed or (
            saved.get("init_from") and Path(str(start)).expanduser().resolve() == Path(str(saved["init_from"])).expanduser().resolve()):
        return None
    then = "that run goes on from its weights; to start a new run from" if subcommand == "fit" else f"to {subcommand} the weights of"
    return f"note: --model.init_from {start} is not read: the weights are {source}'s ({then} {start}, leave --ckpt_path out)"


def settings_diff(saved: dict, current: dict, saved_name: str = "checkpoint") -> list[str]:
    """``"lora_r: checkpoint 4, model 8 (--model.config.lora_r 4 gives the checkpoint's)"`` for each structural setting
    in which two configs differ: the setting that fits, as a run of a shipped config (lora_r 8) cannot drop it."""
    return [
        f"{key}: {saved_name} {saved[key]!r}, model {current.get(key)!r} ({as_option(key, saved[key])} gives the {saved_name}'s)"
        for key in STRUCTURAL_SETTINGS
        if key in saved and not same_setting(key, current.get(key), saved[key])
    ]


def as_option(key: str, value: Any) -> str:
    """A model setting as the command line gives it: ``--model.config.lora_r 4``, a list quoted for the shell."""
    written = value if isinstance(value, str) else json.dumps(list(value) if isinstance(value, tuple) else value)  # null
    return f"--model.{key if key.startswith('config.') else 'config.' + key} {shlex.quote(written)}"


def decoder_layer_count(language_model: str | None) -> int | None:
    """``num_hidden_layers`` from the language model's config.json, a local folder's or a hub model's already downloaded
    (None: neither, or unreadable): a structural change of the injected layers is refused before the model loads."""
    folder = backbone_folder(language_model) if language_model else None
    try:
        return int(json.loads((folder / "config.json").read_text())["num_hidden_layers"]) if folder is not None else None
    except (TypeError, OSError, ValueError, KeyError):  # no config.json, or not a model's: not counted
        return None


def model_option(key: str, value: Any) -> str:
    """Any flat model setting as the command line gives it: ``--model.learning_rate 0.3``, ``--model.config.lora_r 4``."""
    return as_option(key, value) if key.startswith("config.") else as_option(key, value).replace("--model.config.", "--model.", 1)


# Lightning's precisions that cast the whole module, and the dtype they cast it to
CASTING_PRECISIONS = {"bf16-true": "bfloat16", "16-true": "float16", "64-true": "float64", "64": "float64"}


def precision_problem(precision: object, quantization: str, compute_dtype: str) -> str | None:
    """Why ``trainer.precision`` cannot run this model, or ``None``. A ``*-true`` precision casts every weight,
    and 4-bit weights are packed bytes stored in ``compute_dtype``: cast to another dtype they are scrambled (a
    bf16 store read as float16 computed garbage without a word; a float32 one failed in a reshape)."""
    cast = CASTING_PRECISIONS.get(str(precision))
    if quantization not in ("nf4", "fp4") or cast is None or cast == compute_dtype:
        return None
    instead = f", or keep {precision} with model.config.compute_dtype {cast} to predict (to train, it rounds away updates of " \
        "the weights it trains, kept in 16 bits too)" if cast in ("bfloat16", "float16") else ""
    return (f"trainer.precision {precision} casts every weight to {cast}, the {quantization} weights' packed bytes too (stored "
            f"as model.config.compute_dtype {compute_dtype}): they would be scrambled. Use bf16-mixed (as the real configs) or "
            f"32-true{instead}")


def check_known_settings(saved: dict[str, Any], source: str, why: str = "saved by another version of mmcaption: install "
                         "that version to use it") -> None:
    """Refuse a saved model config (a checkpoint's, another version of mmcaption's) with settings this version lacks: its
    model cannot be rebuilt as it was (and the CLI would blame an option the user never typed)."""
    unknown = sorted(set(saved) - {setting.name for setting in fields(MultimodalConfig)})
    if unknown:
        raise ConfigError(f"{source}: model settings {unknown} are unknown to this version of mmcaption ({why})")

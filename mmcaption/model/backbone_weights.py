"""Which backbone weights a model's trained tensors were fitted to.

Checkpoints and exports keep LoRA, projection and cross-attention only; the backbones are loaded again from where the
config names them. If the files there have changed since (a folder written again, as the demo's backbones are when
its settings or version change; another revision of a hub model), the trained tensors load without a word onto
weights of the same shapes and make nonsense. A fingerprint of the weight files, kept beside the trained tensors,
lets a load say so.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache

SAMPLE = 1 << 20  # bytes read from each end of a weight file: its header and the first and last tensors' values
BACKBONES = {"language_model": "language model", "vision_model": "vision tower"}


def backbone_folder(name: str) -> Path | None:
    """A backbone's local folder, or its hub snapshot in the Hugging Face cache; None where neither is found."""
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return path
    try:
        cached = try_to_load_from_cache(str(name), "config.json")
    except Exception:  # noqa: BLE001 - not a hub id (a path that does not exist): nothing to fingerprint
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def weights_fingerprint(name: str) -> str | None:
    """A fingerprint of the weight files ``from_pretrained`` reads in a backbone's folder (safetensors, else PyTorch's
    pickles): each file's name and size, and its first and last MiB. A second from_pretrained of other weights of the
    same shapes differs in the values there. None where the folder or its weights are not found."""
    folder = backbone_folder(name)
    if folder is None:
        return None
    files = sorted(folder.glob("*.safetensors")) or sorted([*folder.glob("*.bin"), *folder.glob("*.pt"), *folder.glob("*.pth")])
    if not files:
        return None
    digest = hashlib.sha256()
    try:
        for file in files:
            size = file.stat().st_size
            digest.update(f"{file.name}\0{size}\0".encode())
            with file.open("rb") as handle:
                digest.update(handle.read(SAMPLE))
                if size > SAMPLE:
                    handle.seek(max(SAMPLE, size - SAMPLE))
                    digest.update(handle.read(SAMPLE))
    except OSError:
        return None
    return digest.hexdigest()[:16]


def backbone_weights(config: Any) -> dict[str, str]:
    """The fingerprints of ``config``'s language model and vision tower (a MultimodalConfig or its dict), those found."""
    names = config if isinstance(config, dict) else vars(config)
    found = {key: weights_fingerprint(names[key]) for key in BACKBONES if names.get(key)}
    return {key: value for key, value in found.items() if value}


def other_backbones(source: str, saved: dict[str, Any], current: dict[str, Any], fitted: Any = None,
                    loaded: dict[str, str] | None = None) -> list[str]:
    """What to say of each backbone that ``source``'s weights were trained with (``saved``, its config) and that differs
    by folder or hub name from ``current``'s: of the same shapes, the weights load without a word; and, with the
    fingerprints of the weights they were fitted to (``fitted``) and of those ``loaded``, of changed weights."""
    said = [f"{source} was trained with {key} {saved[key]}, and this run's is {current.get(key)}: its weights (projection, "
            "cross-attention, LoRA) were fitted to that one's features; unless it is the same model moved, train the caption "
            "stage with this one" for key in BACKBONES
            if saved.get(key) and Path(str(saved[key])).name.lower() != Path(str(current.get(key))).name.lower()]
    changed = changed_backbones(fitted, loaded or {}, saved, current, source) if not said else None
    return said + ([changed] if changed else [])


def changed_backbones(fitted: Any, loaded: dict[str, str], saved: Any, current: Any, source: str) -> str | None:
    """What to say when the backbone weights ``source`` (a checkpoint, an export) was trained on (``fitted``, as
    :func:`backbone_weights` gave them then) are not those ``loaded`` now from a backbone of the same name (``saved``
    and ``current``: the configs, or their dicts); None when they are, when the names differ (said by
    :func:`other_backbones`), or when either side does not know (a checkpoint written before fingerprints were kept,
    a backbone not found)."""
    if not isinstance(fitted, dict):
        return None
    saved, current = (c if isinstance(c, dict) else vars(c) for c in (saved or {}, current))
    changed = [key for key in BACKBONES if fitted.get(key) and loaded.get(key) and fitted[key] != loaded[key]
               and Path(str(saved.get(key, current.get(key)))).name.lower() == Path(str(current.get(key))).name.lower()]
    if not changed:
        return None
    which = " and ".join(f"the {BACKBONES[key]} {current.get(key)}" for key in changed)
    return (f"{source} was trained with {which}, whose weight files have changed since (written again, as the demo "
            "writes its backbones again when its settings change, or another revision downloaded): its LoRA, projection "
            "and cross-attention were fitted to the earlier weights, so what it makes now is likely nonsense. Put back the "
            "backbone it was trained with, or train again with this one (the same weights only saved again in another "
            "format would also be said so)")

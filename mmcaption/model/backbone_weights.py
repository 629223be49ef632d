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

SAMPLE = 1 << 20  # bytes read from a weight file's start: its header (names, shapes, offsets) and the first values
WINDOWS, WINDOW = 256, 4096  # and 256 pieces of 4 KiB spread over the rest: Phi-2's 5 GB, one every 20 MB (each layer
# ~160 MB): 2 MiB read a file, so every load can afford it
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
    pickles): each file's name and size, its first MiB and 256 pieces of 4 KiB spread evenly over the rest. Other weights
    of the same shapes (another pretraining, a fine-tune of whole layers) differ there; a change confined to values
    between the pieces (a few rows of one matrix) is not seen: a sample, not a hash of every byte, so that a 5 GB
    backbone costs 2 MiB of reading at every load. None where the folder or its weights are not found."""
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
                rest = size - SAMPLE
                for piece in range(WINDOWS if rest > 0 else 0):
                    handle.seek(SAMPLE + rest * piece // WINDOWS)
                    digest.update(handle.read(WINDOW))
    except OSError:
        return None
    return digest.hexdigest()[:16]


def backbone_weights(config: Any) -> dict[str, str]:
    """The fingerprints of ``config``'s language model and vision tower (a MultimodalConfig or its dict), those found."""
    names = config if isinstance(config, dict) else vars(config)
    found = {key: weights_fingerprint(names[key]) for key in BACKBONES if names.get(key)}
    return {key: value for key, value in found.items() if value}


def other_backbones(source: str, saved: dict[str, Any], current: dict[str, Any], fitted: Any = None,
                    loaded: dict[str, str] | None = None, weights: bool = True) -> list[str]:
    """What to say of ``source``'s weights (trained with the backbones of its config, ``saved``) loaded on ``current``'s:
    for a backbone whose weights both sides fingerprinted (``fitted``, kept with them; ``loaded``, now), whether they
    differ (with ``weights``; :func:`changed_backbones`), whatever the folders are called; for another, whether its
    folder or hub name differs (by name only: of the same shapes, other weights load without a word)."""
    known = {key for key in BACKBONES if isinstance(fitted, dict) and fitted.get(key) and (loaded or {}).get(key)}
    said = [f"{source} was trained with {key} {saved[key]}, and this run's is {current.get(key)}: its weights (projection, "
            "cross-attention, LoRA) were fitted to that one's features; unless it is the same model moved, train the caption "
            "stage with this one" for key in BACKBONES if key not in known
            if saved.get(key) and Path(str(saved[key])).name.lower() != Path(str(current.get(key))).name.lower()]
    changed = changed_backbones(fitted, loaded or {}, current, source, saved) if weights else None
    return said + ([changed] if changed else [])


def changed_backbones(fitted: Any, loaded: dict[str, str], current: Any, source: str, saved: Any = None) -> str | None:
    """What to say when the backbone weights ``source`` (a checkpoint, an export) was fitted to (``fitted``, as
    :func:`backbone_weights` gave them then) are not those ``loaded`` now, wherever they were loaded from (``current``:
    the config, or its dict; ``saved``: the config it was trained with, named where it differs); None when they are
    the same, or when either side does not know (a checkpoint written before fingerprints were kept, a backbone not
    found)."""
    if not isinstance(fitted, dict):
        return None
    current, saved = (c if isinstance(c, dict) else vars(c) for c in (current, saved or {}))
    changed = [key for key in BACKBONES if fitted.get(key) and loaded.get(key) and fitted[key] != loaded[key]]
    if not changed:
        return None
    which = " and ".join(f"the {BACKBONES[key]} {current.get(key)}" + (
        f" (it was trained with {saved[key]})" if saved.get(key) and str(saved[key]) != str(current.get(key)) else "")
        for key in changed)
    return (f"{source} was fitted to other weights than those of {which}, loaded now: the fingerprint of the weight files "
            "it keeps differs (a folder written again, as the demo writes its backbones again when its settings change; a "
            "copy of other weights; another revision downloaded). Its LoRA, projection and cross-attention fit the earlier "
            "weights, so what it makes now is likely nonsense. Put back the backbone it was trained with, or train again "
            "with this one (the same weights only saved again in another format would also be said so)")

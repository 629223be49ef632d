"""Images, read one way everywhere: preprocessing for training, ``predict`` and the Python API.

Every path decodes with :func:`load_rgb`: EXIF orientation applied (phones store a photo sideways and
say so in its EXIF), 16/32-bit images scaled to 8 bits rather than clipped to white, every other mode
(grayscale, palette, RGBA, CMYK) converted to RGB. So a photo reaches the model the way a person sees it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = bytes | str | Path | Image.Image | np.ndarray
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def check_image(data: bytes) -> str | None:
    """``None`` if ``data`` decodes to an image, else why it does not (truncated, corrupt, not an
    image, or so large that PIL refuses it as a decompression bomb)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def load_rgb(source: ImageSource) -> Image.Image:
    """An upright 8-bit RGB image from bytes, a file path, a PIL image or an array (``HxW`` or ``HxWxC``,
    uint8, or floats in [0, 1]): EXIF orientation applied, 16/32-bit integer images scaled to 8 bits
    rather than clipped to white, any other mode converted."""
    if isinstance(source, np.ndarray):
        array = source
        if array.dtype.kind == "f":
            array = (array.clip(0.0, 1.0) * 255.0).round()
        elif array.dtype.kind in "iu" and array.dtype.itemsize > 1:  # 16/32-bit: scaled, as 16-bit files are
            peak = 65535.0 if array.dtype.itemsize == 2 or array.max() > 255 else 255.0
            array = (array.astype(np.float64) * (255.0 / peak)).clip(0, 255)  # as _to_rgb scales 16-bit files
        return _to_rgb(Image.fromarray(array.astype(np.uint8)))
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source))
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return _to_rgb(ImageOps.exif_transpose(image))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray((values * (255.0 / peak)).clip(0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def shrink_image(data: bytes, shortest_side: int, quality: int = 95) -> bytes:
    """``data`` re-encoded as JPEG with its shorter side ``shortest_side`` (bicubic, as CLIP's processor
    resizes), or unchanged when it is no larger than that: what the model sees, at a fraction of
    the bytes of a full-size photo. The re-encoded image is upright (EXIF orientation applied before
    resizing, since the new file carries no EXIF)."""
    with Image.open(io.BytesIO(data)) as image:
        if min(image.size) <= shortest_side:  # the shorter side does not depend on the orientation
            return data
    upright = load_rgb(data)
    width, height = upright.size
    scale = shortest_side / min(width, height)
    size = (max(shortest_side, round(width * scale)), max(shortest_side, round(height * scale)))
    out = io.BytesIO()
    upright.resize(size, Image.Resampling.BICUBIC).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def blank_pixels(image_processor) -> torch.Tensor:
    """What a text-only sample carries where an image would be: zeros of the processor's output shape."""
    return torch.zeros_like(image_processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")["pixel_values"][0])

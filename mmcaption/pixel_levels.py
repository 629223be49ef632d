"""Pixels of any depth as the 8-bit RGB a model's image processor takes: arrays as NumPy, PIL, OpenCV and torch hold
images, and images of more than 8 bits (16/32-bit integers, floating point) scaled from the range their values use,
not clipped; transparent pixels seen on white; colours of another colour space than sRGB seen as a colour-managed viewer
shows them."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageCms

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def array_image(array: np.ndarray) -> Image.Image:
    """An RGB image from an array as NumPy, PIL and OpenCV hold images: ``HxW`` or ``HxWxC`` with 1, 3 or 4 channels
    (4: transparency, seen on white); uint8; booleans; floats in [0, 1] or 0-255 (as ``astype(float32)`` leaves a
    photo), with the overshoot of a bicubic resize clipped; 16/32-bit integers scaled from the bit depth they use, as
    such files are (:func:`_integer_levels`). A ``3xHxW`` or ``4xHxW`` array (torch's layout: a tensor is turned by
    ``load_rgb``) is refused: it is also a stack of 3 or 4 greyscale images, and 3 frames read as one image's colours,
    a stack as one caption (``1xHxW`` is one greyscale image either way)."""
    if array.ndim == 3 and channels_first(array.shape, (3, 4)):  # 1 x H x W: one greyscale image, however it is read
        raise ValueError(
            f"an image array of shape {tuple(array.shape)} is one image with its channels first (torch's layout) or "
            f"{array.shape[0]} greyscale images: give one image as HxWxC (np.moveaxis(array, 0, -1)) or a torch tensor, "
            "and greyscale images as a list or an N x H x W x 1 array")
    if array.ndim == 3 and channels_first(array.shape):
        array = array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise ValueError(f"an image array is HxW or HxWxC with 1, 3 or 4 channels (a torch tensor also CxHxW); this one "
                         f"has shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        if not np.isfinite(array).any():  # a failed computation's output (a 0/0), captioned as a black picture
            raise ValueError(f"an image array of floats holds no number: all its {array.size} values are NaN or infinite")
        values = np.nan_to_num(array.astype(np.float64))
        low, high = values.min(), values.max()
        # a normalized image spans about -2 to 2.6 (CLIP's, ImageNet's mean and std): refused, where a file's is read
        if not (low >= -0.25 and high <= 1.25) and low < (-64 if high > 16 else -0.25):
            raise ValueError(f"an image array of floats is in [0, 1] or 0-255; this one spans {low:.3g} to {high:.3g} (one "
                             "normalized for a model?): give the image before normalization")
        array = _float_levels(values)
    elif array.dtype.kind in "iu" and array.dtype.itemsize > 1:  # 16/32-bit: scaled, as 16-bit files are
        array = _integer_levels(array.astype(np.float64))
    elif array.dtype.kind not in "iu":
        raise ValueError(f"an image array holds numbers; this one holds {array.dtype}")
    return to_rgb(Image.fromarray(array.astype(np.uint8)))


def channels_first(shape: tuple[int, ...], counts: tuple[int, ...] = (1, 3, 4)) -> bool:
    """A 3-D shape laid out as ``CxHxW`` (``counts`` channels first, and no such count last)."""
    return shape[0] in counts and shape[-1] not in (1, 3, 4)


BIT_DEPTHS = (255, 1023, 4095, 16383, 65535)  # 8, 10, 12, 14 and 16 bits: cameras', microscopes' and scanners' sensors


def _integer_levels(values: np.ndarray, extrema: tuple[float, float] | None = None) -> np.ndarray:
    """Integer pixels (16 or 32 bits) as 0-255, scaled from the bit depth they use: the smallest of 8, 10, 12, 14 and 16
    bits that holds their largest value. A 12-bit microscope's or camera's image in a 16-bit file fills the range,
    where scaling from 16 bits left it 16 grey levels, near black; values of 0-255 (a photo's ``astype(np.uint16)``,
    a label image) stay as they are. Signed values below zero are scaled from their own range. ``extrema``: the range of
    the image these values were reduced from (a block's mean is below the image's largest value)."""
    low, high = extrema or (float(values.min(initial=0)), float(values.max(initial=0)))
    if low < 0:
        return ((values - low) * (255.0 / max(high - low, 1.0))).round()
    peak = next((depth for depth in BIT_DEPTHS if high <= depth), high)  # 32-bit values beyond 16 bits: their largest
    return (values * (255.0 / peak)).clip(0, 255).round()


def _float_levels(values: np.ndarray, extrema: tuple[float, float] | None = None) -> np.ndarray:
    """Floating-point pixels as 0-255: [0, 1], or 0-255 as they are, either with the overshoot of a bicubic resize past
    its ends (up to a tenth or so) clipped; values beyond 255 (a height map's metres, reflectance x 10,000) scaled from
    their largest, and below zero from their own range, where clipping left them flat white or black. ``extrema`` as
    :func:`_integer_levels` takes it."""
    low, high = extrema or (float(values.min(initial=0)), float(values.max(initial=0)))
    if low >= -0.25 and high <= 1.25:
        return (values * 255.0).clip(0, 255).round()
    if low >= (-64 if high > 16 else -0.25) and high <= 280:  # 0-255: a dark frame's too (no value above 16), whose
        return values.clip(0, 255).round()  # undershoot a resize leaves is as small
    low = min(low, 0.0) if low >= -64 else low
    return ((values - low) * (255.0 / max(high - low, 1e-12))).clip(0, 255).round()


def levels(image: Image.Image) -> tuple[float, float] | None:
    """The range of an image's values that :func:`to_rgb` scales from (its integer or floating-point ones), taken before
    it is made smaller: the same picture reaches the model at the same brightness whatever its size."""
    if image.mode in ("I;16L", "I;16B", "I;16N"):  # 16-bit in a stated byte order (a big-endian TIFF from ImageJ or a
        values = np.asarray(image)  # scientific camera): Pillow's getextrema refuses them, and such a file was refused
        return float(values.min(initial=0)), float(values.max(initial=0))
    return tuple(map(float, image.getextrema())) if image.mode == "F" or image.mode.startswith("I") else None


@functools.lru_cache(maxsize=16)  # a camera's or a phone's photos share their profile
def _to_srgb(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from an image's embedded colour profile to sRGB, or ``None``: sRGB already, or a profile that
    cannot be read (or not of the image's mode: an RGB one on a greyscale image), the pixels then taken as they are."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if "srgb" in ImageCms.getProfileDescription(source).lower().replace(" ", ""):  # "sRGB IEC61966-2.1", "sRGB built-in"
            return None
        return ImageCms.buildTransform(source, _SRGB, mode, "RGBA" if mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def as_srgb(image: Image.Image) -> Image.Image:
    """``image`` in sRGB, what CLIP was trained on and a browser shows: an embedded colour profile other than sRGB's
    (Adobe RGB from Photoshop or a camera, Display P3 from a phone, a printer's CMYK) converted; its pixels as they are
    looked duller or shifted. Without such a profile, ``image`` itself."""
    profile = image.info.get("icc_profile")
    if profile and (image.mode in ("P", "PA") or "transparency" in image.info):  # a palette's colours, and a transparent
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")  # colour as alpha
    if profile and image.mode in ("RGB", "RGBA", "CMYK", "L") and (transform := _to_srgb(bytes(profile), image.mode)):
        image = ImageCms.applyTransform(image, transform)
        image.info.pop("icc_profile", None)  # sRGB now: not converted a second time
    return image


def to_rgb(image: Image.Image, extrema: tuple[float, float] | None = None, srgb: bool = True) -> Image.Image:
    """``image`` as 8-bit RGB (``extrema``: :func:`levels` of the image it was made smaller from), in sRGB
    (:func:`as_srgb`) unless ``srgb`` is false (its profile kept in ``info``, to convert once made smaller)."""
    srgb = srgb or image.mode not in ("RGB", "RGBA", "P", "PA")  # a CMYK or grey profile fits no RGB image: now
    profile = None if srgb else image.info.get("icc_profile")
    rgb = _eight_bit_rgb(as_srgb(image) if srgb else image, extrema)
    if profile:
        rgb.info["icc_profile"] = profile
    return rgb


def _eight_bit_rgb(image: Image.Image, extrema: tuple[float, float] | None) -> Image.Image:
    if image.mode == "F":  # 32-bit floating point (TIFF): scaled as arrays of floats are
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        return Image.fromarray(_float_levels(values, extrema).astype(np.uint8)).convert("RGB")
    if image.mode.startswith("I"):
        return Image.fromarray(_integer_levels(np.asarray(image, dtype=np.float64), extrema).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        # On white, as a page shows it: dropping the alpha leaves what transparent pixels happen to hold,
        # black in most PNGs, so a black logo or diagram on a transparent background became a black square.
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")  # (Pillow: no La to RGBA)
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")

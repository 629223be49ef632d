"""Images, read one way everywhere: preprocessing for training, ``predict`` and the Python API.

Every path decodes with :func:`load_rgb`: EXIF orientation applied (phones store a photo sideways and
say so in its EXIF), 16/32-bit and floating-point images scaled to 8 bits rather than clipped, every
other mode (grayscale, palette, RGBA, CMYK) converted to RGB. So a photo reaches the model the way a
person sees it. iPhones' HEIC photos are read too (``pillow-heif``), and a photo of up to
:data:`MAX_PIXELS` pixels (a 200-megapixel phone's is 16320 x 12240) decodes, where Pillow's own guard
against decompression bombs stops at 179 megapixels.
"""

from __future__ import annotations

import base64
import binascii
import errno
import http.client
import io
import math
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError, features
from pillow_heif import register_heif_opener

from mmcaption.file_kinds import kind_of_file
from mmcaption.file_spellings import existing_spelling
from mmcaption.pixel_levels import array_image, as_srgb, channels_first, levels, to_rgb

register_heif_opener()  # .heic/.heif: what iPhones save by default

ImageSource = bytes | str | Path | Image.Image | np.ndarray | torch.Tensor
# what cameras, phones, scanners and the web save; a folder's other files are not images
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif",
                  *([".avif"] if features.check("avif") else [])}  # AVIF: Pillow 11.3 and later
# the largest image decoded: above every camera's and phone's photos (200 MP phones, 400 MP pixel-shift
# modes), below what would take tens of gigabytes of memory (a gigapixel is 3 GB as RGB)
MAX_PIXELS = 1_000_000_000
# the longest strip read: an image processor scales an image's short side up to the model's size (224 pixels), and a
# 104-byte 8000 x 1 PNG became 1.8 million x 224 pixels, 4.5 GB of memory (10000 x 50 panoramas are read)
MAX_ASPECT = 500
_LIMIT_LOCK = threading.RLock()
PILLOW_LIMIT = 1024 * 1024 * 1024 // 4 // 3  # Pillow's own Image.MAX_IMAGE_PIXELS, refused at twice that
# formats whose decoding never reads Pillow's limit (a GIF's frames and a TIFF's tiles do): decoded outside the lock, so
# that threads shrinking photos while a split is preprocessed decode them at once
_LIMIT_READ_AT_OPEN_ONLY = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "HEIF", "AVIF"}
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# folders systems keep beside the user's photos: a Synology NAS's thumbnails of each photo (@eaDir/IMG_0001.JPG/
# SYNOPHOTO_THUMB_XL.jpg) and recycle bin, Windows' recycle bin and restore points on a drive, a Mac zip's metadata
SYSTEM_FOLDERS = {"@eadir", "#recycle", "#snapshot", "$recycle.bin", "system volume information", "__macosx"}


def is_hidden(path: Path) -> bool:
    """A hidden or system file or folder (``.DS_Store``, macOS's ``._IMG_0001.JPG`` copies of a photo's metadata,
    ``.thumbnails/``, :data:`SYSTEM_FOLDERS`): never an image of the user's."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FOLDERS


@contextmanager
def opened(data: bytes) -> Iterator[Image.Image]:
    """``data`` opened with Pillow, refused (as a ``DecompressionBombError``) above :data:`MAX_PIXELS` and
    :data:`MAX_ASPECT`; an empty file says so. Pillow reads its limit from a module global, which every thread of the
    process shares: it is opened under the process's own limit, untouched. Only an image Pillow refuses at its default
    limit (above 179 megapixels: a panorama, a scan) is opened again with mmcaption's, raised under a lock for that
    image alone; a limit the process set itself (a web service's) is never raised."""
    if not data:
        raise UnidentifiedImageError("the file is empty (0 bytes)")
    with ExitStack() as stack:
        try:
            image = stack.enter_context(Image.open(io.BytesIO(data)))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # (a warning: raised as an error)
            image = stack.enter_context(_above_pillows_limit(data, error))
        check_size(image)
        yield image


@contextmanager
def _above_pillows_limit(data: bytes, refusal: Exception) -> Iterator[Image.Image]:
    """An image above Pillow's default limit opened with mmcaption's (:data:`MAX_PIXELS`, checked here): under a lock,
    while opening and, for formats Pillow checks again while decoding (a TIFF's tiles, a GIF's frames), the whole block;
    Pillow's setting is put back after. Loosened for the process while it is open, hence only for such an image, and
    never to None (Pillow reads it twice, and a thread that read None, then a number, took a photo for no image);
    ``refusal``, Pillow's, raised when the limit is one the program set itself."""
    _LIMIT_LOCK.acquire()
    locked = True
    default = Image.MAX_IMAGE_PIXELS  # the program's setting (another thread's raised one is put back under the lock)
    if default != PILLOW_LIMIT:
        _LIMIT_LOCK.release()
        raise refusal
    Image.MAX_IMAGE_PIXELS = 2**62  # the size is checked here, with its own message
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_size(image)
            if image.format in _LIMIT_READ_AT_OPEN_ONLY:  # other threads may open theirs while this one decodes
                Image.MAX_IMAGE_PIXELS, locked = default, False
                _LIMIT_LOCK.release()
            else:
                Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # what decoding checks (a TIFF's tiles): no more than the image
            yield image
    finally:
        if locked:
            Image.MAX_IMAGE_PIXELS = default
            _LIMIT_LOCK.release()


def check_size(image: Image.Image) -> None:
    """Refuse an image above :data:`MAX_PIXELS`, or a strip longer than :data:`MAX_ASPECT` times its width, by its
    size (read from its header, before it is decoded)."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise Image.DecompressionBombError(
            f"{width} x {height} = {width * height:,} pixels, above the {MAX_PIXELS:,} mmcaption decodes "
            "(mmcaption.images.MAX_PIXELS)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        scaled = max(width, height) / min(width, height) * 224 ** 2 * 12  # bytes, as 3 channels of floats
        raise Image.DecompressionBombError(
            f"{width} x {height} pixels, a strip longer than {MAX_ASPECT} times its width: scaled for the vision "
            f"model (its short side to the model's size: CLIP ViT-B/32's 224 pixels) it would take {scaled / 2 ** 30:.1f} GB or more; crop it "
            "nearer to a square (mmcaption.images.MAX_ASPECT)")


def _sized(image: Image.Image) -> Image.Image:
    """An image in memory checked as a file is (an 8000 x 1 strip: gigabytes once scaled), a ``ValueError`` of the caller's."""
    try:
        check_size(image)
    except Image.DecompressionBombError as error:
        raise ValueError(str(error)) from None
    return image


def check_image(data: bytes) -> str | None:
    """``None`` if ``data`` decodes to an image, else why it does not (empty, truncated, corrupt, not an
    image, or above :data:`MAX_PIXELS`)."""
    try:
        with opened(data) as image:
            image.load()
    except DECODE_ERRORS as error:
        if isinstance(error, UnidentifiedImageError) and data:
            return f"not an image Pillow can read ({kind_of_file(data)})"
        return f"{type(error).__name__}: {error}"
    return None


def image_format(data: bytes) -> str | None:
    """The format Pillow recognises ``data`` as (``"JPEG"``, ``"PNG"``, ...), or ``None`` if it is no image."""
    try:
        with opened(data) as image:
            return image.format
    except DECODE_ERRORS:
        return None


def processor_side(image_processor) -> int | None:
    """The shorter side an image processor resizes images to (CLIP's ``shortest_edge``, else its height and width)."""
    size = getattr(image_processor, "size", None) or {}
    return int(size.get("shortest_edge") or min(size.get("height", 0), size.get("width", 0))) or None


def _smaller(image: Image.Image, shortest_side: int | None) -> Image.Image:
    """``image`` made smaller by a whole factor (Pillow's ``reduce``: each k x k block's mean) while its shorter side
    stays at least twice ``shortest_side``, the size the model's processor then resizes it to; as it is otherwise."""
    factor = min(image.size) // (2 * shortest_side) if shortest_side else 0
    if factor < 2:
        return image
    if image.mode in REDUCIBLE_AS:  # a mode reduce does not take (1-bit, a palette, 16-bit): the nearest it takes first,
        image = image.convert(REDUCIBLE_AS[image.mode])  # not 8-bit RGB through floats (16-bit: 8 bytes a pixel)
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    try:
        return image.reduce(factor)
    except ValueError:  # any other mode reduce does not take: made 8-bit RGB first, at full size
        return to_rgb(image, srgb=False).reduce(factor)  # (its colour profile applied once, made smaller)


REDUCIBLE_AS = {"1": "L", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}  # what reduce takes, the values kept


# how images' base64 text starts: JPEG ("/9j/", which reads as an absolute path), PNG, GIF, WebP
BASE64_STARTS = ("/9j/", "iVBORw0KGgo", "R0lGOD", "UklGR")


def load_rgb(source: ImageSource, shortest_side: int | None = None, srgb: bool = True) -> Image.Image:
    """An upright 8-bit RGB image from bytes, a file opened ``'rb'``, a file path, an ``http(s)://`` or ``data:`` URL, a PIL
    image, an array or a tensor (see :func:`array_image`): EXIF orientation applied, 16/32-bit integer and floating-point images
    scaled to 8 bits rather than clipped, transparent pixels on white, any other mode converted. With ``shortest_side``
    (the model's input size), a large image is decoded and converted smaller (:func:`_smaller`; a JPEG at a fraction of
    its size): a 200-megapixel photo, or a 20000 x 20000 PNG of a few hundred KB, took 3-6 GB on its way to a model
    that sees 224 pixels. ``srgb`` false: a colour profile is not applied, but kept in ``info`` (:func:`as_srgb`)."""
    if isinstance(source, torch.Tensor):
        if source.ndim == 3 and channels_first(source.shape):  # CxHxW: torch's layout
            source = source.movedim(0, -1)
        source = source.detach().cpu().float().numpy() if source.is_floating_point() else source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return _sized(array_image(source))
    if isinstance(source, Image.Image):
        if 0 in source.size:  # an empty crop (a detector's box of no width): Pillow's scaling divides by it
            raise ValueError(f"the image is {source.size[0]} x {source.size[1]} pixels: nothing to see")
        _sized(source)
        turned = upright(source)
        return to_rgb(_smaller(turned, shortest_side), levels(turned), srgb)
    if hasattr(source, "read"):  # an open file, a BytesIO of a download: read from where it is, and put back there
        if isinstance(source, io.TextIOBase):  # a file opened 'r': its read() fails on an image's bytes
            raise TypeError("an image file must be opened in binary mode: open(path, 'rb')")
        start = source.tell() if getattr(source, "seekable", lambda: False)() else None  # (captioned, then asked about)
        source, handle = source.read(), source
        if start is not None:
            handle.seek(start)
        if isinstance(source, str):
            raise TypeError("an image file must be opened in binary mode: open(path, 'rb')")
    if isinstance(source, str) and source[:5].lower() == "data:":  # a data: URL, as a web page or a notebook embeds one
        source = data_url_bytes(source)
    if isinstance(source, str):  # a file:// URI was looked for as a relative path: "file:/..." not found
        source = file_uri_path(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), "the image's bytes"
    elif isinstance(source, str | Path):
        if isinstance(source, str) and not source.strip():
            raise ValueError("an empty text is no image path")
        if isinstance(source, str) and not is_url(source) and (  # no file's path (a signed URL's may be this long), or
                len(source) > 4096 or max(map(len, re.split(r"[/\\]", source))) > 255  # a JPEG's base64 ("/9j/...", an
                or source.startswith(BASE64_STARTS) and not Path(source).exists()):  # absolute path to look for)
            raise ValueError(f"an image path of {len(source):,} characters ({source[:24]}...) is no path: an image as base64 "
                             "text goes as a data: URL ('data:image/jpeg;base64,' + text), or as base64.b64decode(text)")
        path = None if is_url(source) else local_file(Path(source).expanduser())  # a notebook's "~/..."
        if path is not None and path.is_dir():  # where predict takes a folder, the API takes its images
            raise IsADirectoryError(errno.EISDIR, "a folder, not an image: give its images (a list of their paths), or "
                                    "caption it with mmcaption predict --data.images FOLDER", str(source))
        data = fetch(source) if path is None else path.read_bytes()
        name = f"image {source}"
    else:
        raise TypeError(f"an image is a path, an http(s):// URL, bytes, a file opened 'rb', a PIL image, an array or a tensor, "
                        f"not {type(source).__name__}")
    try:
        with opened(data) as image:
            if shortest_side and image.format == "JPEG":  # decoded at 1/2, 1/4 or 1/8 of its size, still at least 2x it
                scale = 2 * shortest_side / min(image.size)
                image.draft(image.mode, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            image = upright(image, name)
            return to_rgb(_smaller(image, shortest_side), levels(image), srgb)
    except MemoryError:  # a small PNG that declares a huge image: this image's error, not the run's end
        raise UnidentifiedImageError(f"{name} cannot be decoded: it needs more memory than there is") from None
    except DECODE_ERRORS as error:  # the file named, not Pillow's "<_io.BytesIO object at 0x...>"; an OSError as Pillow's are
        why = check_image(data) or f"{type(error).__name__}: {error}"
        raise UnidentifiedImageError(f"{name} cannot be decoded: {why}") from None


_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def upright(image: Image.Image, name: str = "an image") -> Image.Image:
    """``image`` turned as its EXIF (or XMP) orientation says, as a phone's photo stored sideways is shown; itself, not a
    copy, when it needs no turn. Pillow's ``exif_transpose`` also writes the EXIF back without the orientation, and a
    camera's EXIF it cannot write (a text under a tag of numbers) raised a ``TypeError`` that no check had seen: the
    picture is turned here, and an EXIF that cannot be read at all leaves it as stored, with a warning naming it."""
    image.load()
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as error:  # noqa: BLE001 - a metadata block cut short or garbled fails in any of Pillow's parsers
        warnings.warn(f"{name}: its EXIF cannot be read ({type(error).__name__}: {error}), so its orientation is not "
                      "known; it is used as stored", stacklevel=2)
        return image
    turn = _TURNS.get(orientation) if isinstance(orientation, int) else None
    return image if turn is None else image.transpose(turn)


def data_url_bytes(url: str) -> bytes:
    """The bytes a ``data:`` URL holds (``data:image/jpeg;base64,...``)."""
    header, comma, payload = url.partition(",")
    try:
        if not comma:
            raise ValueError("no comma before its data")
        return base64.b64decode(payload, validate=True) if header.lower().endswith(";base64") else unquote_to_bytes(payload)
    except (ValueError, binascii.Error) as error:
        raise ValueError(f"a data: URL that cannot be read ({url[:40]}...): {error}") from None


def local_file(path: Path) -> Path:
    """``path`` as typed, else as :func:`existing_spelling` finds it (the other Unicode form, another case)."""
    if path.exists():
        return path
    root = Path(path.anchor) if path.is_absolute() else Path(".")
    return root / existing_spelling(root, str(path.relative_to(root)) if path.is_absolute() else str(path))


FETCH_TIMEOUT_S = 60
FETCH_MAX_BYTES = 256 << 20  # a 200-megapixel phone's JPEG is about 60 MB


def file_uri_path(source: str) -> str:
    """The path a ``file://`` URI names (a browser's or a file manager's copied address: ``file:///home/me/a%20b.jpg``),
    or ``source`` as it is."""
    if source[:7].lower() != "file://":
        return source
    return urllib.request.url2pathname(urllib.parse.urlsplit(source).path)


def is_url(source: object) -> bool:
    """An ``http(s)://`` address given where an image is expected."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class RemoteImage:
    """An image a list or questions file gives as an ``http(s)://`` URL: downloaded when its row is read
    (a failure is that row's ``error``, as an unreadable file's is)."""

    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def data(self) -> bytes:
        """The image's bytes, downloaded now (as :class:`~mmcaption.data.benchmarks.EmbeddedImage` holds its own)."""
        return fetch(self.url)


def is_inline_image(text: str) -> bool:
    """Whether ``text``, where a file's path is expected, is the image itself: a ``data:`` URL, or a JPEG's, PNG's, GIF's
    or WebP's base64 text (a dataframe's export of its images, MMBench's TSVs)."""
    return text[:5].lower() == "data:" or (len(text) > 64 and text.startswith(BASE64_STARTS)
                                           and _BASE64_TEXT.fullmatch(text) is not None)


_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/\r\n]+={0,2}\s*")  # (in lines, as some exports wrap it)


@dataclass(frozen=True)
class InlineImage:
    """An image a list, a table or a questions file holds in its cell (:func:`is_inline_image`): decoded when its row
    is read (a failure is that row's ``error``, as an unreadable file's is)."""

    text: str = field(repr=False)

    def __str__(self) -> str:
        kind = "a data: URL" if self.text[:5].lower() == "data:" else "base64 text"
        return f"the image in the file ({kind} of {len(self.text):,} characters: {self.text[:16]}...)"

    @property
    def data(self) -> bytes:
        try:
            return data_url_bytes(self.text) if self.text[:5].lower() == "data:" else base64.b64decode(
                "".join(self.text.split()), validate=True)
        except (ValueError, binascii.Error) as error:
            raise OSError(f"{self} cannot be read: {error}") from None


def fetch(url: str) -> bytes:
    """The bytes at an ``http(s)://`` URL given as an image (the Python API's ``caption("https://...")``);
    a failure names the URL and why (status, or the network's error)."""
    # a space or an accent in it, as a browser takes them (a CMS's "hero image.jpg"), quoted as a browser sends them:
    # http.client refused the URL, and the run stopped there
    quoted = urllib.parse.quote(url, safe=":/?#[]@!$&'()*+,;=%~")
    request = urllib.request.Request(quoted, headers={"User-Agent": "mmcaption"})  # some hosts refuse Python's default
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read(FETCH_MAX_BYTES + 1)  # a reply of gigabytes (a wrong URL, a hostile list) is not held
    except urllib.error.HTTPError as error:
        raise OSError(f"image {url} could not be downloaded: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException, ValueError) as error:
        raise OSError(f"image {url} could not be downloaded: {getattr(error, 'reason', error)}") from None
    if len(data) > FETCH_MAX_BYTES:
        raise OSError(f"image {url} could not be downloaded: it is larger than {FETCH_MAX_BYTES >> 20} MB, more than any "
                      "photo; download it yourself and give its file")
    return data


def shrink_image(data: bytes, shortest_side: int, quality: int = 95) -> bytes:
    """``data`` re-encoded as JPEG with its shorter side ``shortest_side`` (bicubic, as CLIP's processor
    resizes), or unchanged when it is no larger than that: what the model sees, at a fraction of
    the bytes of a full-size photo. The re-encoded image is upright (EXIF orientation applied before
    resizing, since the new file carries no EXIF)."""
    with opened(data) as image:
        if min(image.size) <= shortest_side:  # the shorter side does not depend on the orientation
            return data
    upright = load_rgb(data, srgb=False)  # its colour profile applied once smaller (a phone's 12 MP: 2.6x the time)
    width, height = upright.size
    scale = shortest_side / min(width, height)
    size = (max(shortest_side, round(width * scale)), max(shortest_side, round(height * scale)))
    out = io.BytesIO()
    as_srgb(upright.resize(size, Image.Resampling.BICUBIC)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def blank_pixels(image_processor) -> torch.Tensor:
    """What a text-only sample carries where an image would be: zeros of the processor's output shape."""
    return torch.zeros_like(image_processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")["pixel_values"][0])

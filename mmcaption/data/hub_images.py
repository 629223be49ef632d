"""Where the images a dataset's rows hold are: the bytes of an ``Image`` feature, or a file the row names, relative to
the dataset's own folder (or to where the command runs), found as Windows and macOS find names; and the image files
a split names, for the cache to follow."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import os
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pyarrow as pa
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from mmcaption.data.records import DataError, existing_spelling
from mmcaption.data.tables import text_table_kind
from mmcaption.file_spellings import home_expanded, is_file
from mmcaption.images import IMAGE_SUFFIXES, InlineImage, is_hidden, is_inline_image, is_url
from mmcaption.pixel_levels import array_image, channels_first


class RowImages:
    """The image side of :class:`~mmcaption.data.hub.HubCaptions` (``dataset``, ``image_column``, ``load``, the folder
    given ``_given`` and its own files ``_files``)."""

    @functools.cached_property
    def _folders(self) -> list[Path]:
        """The local folders image paths in its rows may be relative to: the folder given (when the one table in it is
        read), and the one the dataset's files are in."""
        path = Path(self.dataset)
        own = path if path.is_dir() else path.parent if path.is_file() else None
        above = self._above
        folders = [folder for folder in dict.fromkeys((self._given, own)) if folder is not None and folder != above]
        return folders + [above] * (above is not None)  # the last: the one a bare name is looked for under

    @functools.cached_property
    def _above(self) -> Path | None:
        """Flickr's token file in a folder of text files beside the photos' (Flickr8k's download: ``Flickr8k_text/``
        beside ``Flicker8k_Dataset/``): the folder above, under which its photos' bare names are looked for."""
        path = Path(self.dataset)
        if not path.is_file() or text_table_kind(path) != "token":
            return None
        below = itertools.islice(path.parent.rglob("*"), 100_000)  # (its own Images/ folder: looked for there, as before)
        return None if any(f.suffix.lower() in IMAGE_SUFFIXES for f in below) else path.parent.parent

    @staticmethod
    def _named(value) -> str | None:
        """The path a row's image names (a string, or an undecoded Image feature's path), if it names one."""
        value = value.get("path") if isinstance(value, dict) else value
        return value if isinstance(value, str) and value else None

    @staticmethod
    def _cell_kind(value) -> str | None:
        """What a cell that names no file holds instead: "images" (a list of them), "array" (numbers), or None."""
        if isinstance(value, list | tuple) and value and isinstance(value[0], dict | bytes | str | Image.Image):
            return "images"
        return "array" if _array(value) is not None else None

    def _described(self, value) -> str:
        name = self._named(value)
        if self._cell_kind(value) == "images":  # the_cauldron's (one of them is read)
            return (f"a list of {len(value)} images, where a row has one image (give each image a row of its own, with its "
                    "captions)")
        if (pixels := _array(value)) is not None:  # a normalized image's numbers: was "empty ... fix their paths"
            try:
                _cell_image(pixels)
            except ValueError as error:  # (an array that is an image's pixels is read: not described)
                return f"an array of {' x '.join(map(str, pixels.shape))} numbers: {error}"
        if name is None:
            return "empty"
        if is_inline_image(name):
            return f"{InlineImage(name)}, which cannot be read as an image"
        if is_url(name):  # a Conceptual-Captions-style table: predict reads URLs, training reads files
            return (f"{name!r}, a URL: training reads images from files; download them first (img2dataset does it for "
                    "such tables) and give the table the files' paths")
        written = PureWindowsPath(name) if "\\" in name or PureWindowsPath(name).drive else PurePosixPath(name)
        # a folder down (a bare name; its table's paths are not from there), in any case as Windows and macOS find it
        elsewhere = self._files_named.get(_folded(written.name))
        suffixed = self._files_by_stem.get(_folded(written.name), []) if not written.suffix else []  # a product id: SKU1000
        if elsewhere is not None and self._folders:  # another machine's folder (C:\Users\...), or a photo's bare name
            relative = [Path(os.path.relpath(file, self._folders[0])).as_posix() for file in elsewhere[:3]]
            beside = (f"; {' and '.join(map(str, elsewhere[:3]))}{' ...' * (len(elsewhere) > 3)} "
                      f"{'has' if len(elsewhere) == 1 else 'have'} that name{', not that folder' * written.is_absolute()}: "
                      f"write the path relative to {self._folders[0]} ({' or '.join(relative)})")
        elif suffixed:
            beside = f"; {suffixed[0]} is there: write the names with their suffix ({suffixed[0].name})"
        else:
            beside = ""
        return (f"{name!r}, not a file (looked for from " + "".join(f"{folder} and from " for folder in self._folders)
                + f"the current folder){beside}")

    @functools.cached_property
    def _files_named(self) -> dict[str, list[Path]]:
        """The dataset folder's own files by name, for a message."""
        return _grouped(self._nearby_files, "name")

    @functools.cached_property
    def _files_by_stem(self) -> dict[str, list[Path]]:
        """The dataset folder's own files by name without its suffix, for a message."""
        return _grouped(self._nearby_files, "stem")

    @functools.cached_property
    def _nearby_files(self) -> list[Path]:
        """The dataset folder's own files, or those under a table's folder (the first 100,000: a table in a home folder),
        for a message."""
        if (getattr(self, "_files", None) and self._folders[-1] != self._above) or not self._folders:
            return list(getattr(self, "_files", []))
        return list(itertools.islice((p for p in self._folders[-1].rglob("*") if p.is_file()), 100_000))

    def _note_unlisted(self, data, records) -> None:
        """An imagefolder's photos that its metadata file does not list: datasets leaves them out without a word."""
        if not Path(self.dataset).is_dir() or not any(Path(self.dataset).glob("**/metadata.*")):
            return
        column = data.data.column(self.image_column)
        if not pa.types.is_struct(column.type):
            return
        # each as it is found: a metadata file's IMG_0001.jpg names the camera's IMG_0001.JPG, which is not left out
        listed = {Path(self._found(path) or path) for chunk in column.chunks for path in chunk.field("path").to_pylist() if path}
        unlisted = sorted(file for folder in {path.parent for path in listed} for file in folder.iterdir()
                          if file.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(file) and file not in listed)
        if unlisted:
            records.note(f"images beside the listed ones that the metadata file does not list, left out (first: {unlisted[0]})",
                         len(unlisted))

    def _image_bytes(self, value) -> bytes | None:
        if isinstance(value, dict) and value.get("bytes"):  # an Image feature, undecoded
            return value["bytes"]
        if isinstance(value, bytes):
            return value
        if isinstance(value, list | tuple) and len(value) == 1 and self._cell_kind(value) == "images":  # one image, listed
            return self._image_bytes(value[0])  # (the_cauldron's rows)
        if isinstance(value, Image.Image):  # decoded by datasets (an image in a list is)
            return _png(value.convert("RGBA" if "A" in value.getbands() else "RGB"))
        if (pixels := _array(value)) is not None:  # an Array3D column of pixels (as MNIST's and CIFAR's copies hold them):
            with contextlib.suppress(ValueError):  # read as the Python API reads an array (0-255, [0, 1], 16-bit, ...)
                return _png(_cell_image(pixels))
            return None
        name = self._named(value)
        if name is not None and is_inline_image(name):  # a dataframe's export of its images: decoded, its row's own
            with contextlib.suppress(OSError):
                return InlineImage(name).data
            return None
        path = self._found(name)
        return None if path is None else Path(path).read_bytes()

    def _found(self, value: object) -> str | None:
        """Where the image file a row names is: relative to the dataset's own folder, as its files write paths
        (first: a photo of the same name where the command runs is another photo), or from where the command
        runs; a Windows path's backslashes and macOS's decomposed accents read too. ``None`` if neither."""
        if not isinstance(value, str) or not value:
            return None
        named = dict.fromkeys(home_expanded(name) for name in (value, value.strip()))  # (a space typed after it; ~/)
        places = [place for name in named
                  for place in [*(folder / existing_spelling(folder, name) for folder in [*self._beside_tables(), *self._folders]),
                                Path(existing_spelling(Path("."), name))]]
        return next((str(path) for path in places if is_file(path)), None) or self._found_below(value.strip())

    def _beside_tables(self) -> list[Path]:
        """The one folder below the dataset's that holds the tables of the split being read (``train/captions.csv`` and
        ``validation/captions.csv``, each beside its photos), where the names its rows give are looked for first: from the
        dataset's folder, photos of the same names in both were refused as ambiguous (and a name in one alone found there
        by a search of the whole folder)."""
        # (as load found them: a folder of other files, photos with their caption files, has no tables to look at)
        files = (self.__dict__.get("_table_splits") or (None, {}))[1].get(getattr(self, "_split_now", None), [])
        folders = {Path(file).parent for file in files}
        return list(folders) if len(folders) == 1 and not folders & set(self._folders) else []

    def _found_below(self, name: str) -> str | None:
        """A bare file name that is not beside the table: the one file of that name (as Windows and macOS find names)
        among the dataset folder's own files, as Flickr30k's CSV names the photos in ``flickr30k-images/`` beside it and
        Kaggle's Flickr8k ``captions.txt`` those in ``Images/``; said once, with where the first was found."""
        if name and PureWindowsPath(name).name != name:
            return self._found_in_subfolder(name)
        found = self._files_named.get(_folded(name)) if name else None
        if not found or len(found) != 1:  # none, or several: which one is meant is the user's to write
            return None
        if not self.__dict__.get("_said_below"):
            self._said_below = True
            rank_zero_info(f"{self.dataset}: its rows name images by their file name alone, and they are not beside it: each "
                           f"is read from the one file of its name under {self._folders[-1]} (first: {name!r} is "
                           f"{os.path.relpath(found[0], self._folders[-1])})")
        return str(found[0])

    def _found_in_subfolder(self, name: str) -> str | None:
        """A relative path that is not from the table's folder but from one folder under it: LLaVA-Pretrain's
        ``00000/000000.jpg`` with its images unpacked into ``images/`` beside the file. The first is the one file at that
        path under a folder one or two levels down (said once); the rest are looked for in the same folder, not searched
        for (558,128 images)."""
        written = PurePosixPath(name.replace("\\", "/"))
        if written.is_absolute() or ".." in written.parts or PureWindowsPath(name).drive or not self._folders:
            return None
        if (found := self._found_in_images_folder(written)) is not None:
            return found
        if (under := self.__dict__.get("_subfolder")) is not None:
            return str(path) if is_file(path := under / existing_spelling(under, written.as_posix())) else None
        # looked for in the folders one and two levels under the table's, not among its files (the first 100,000 alone),
        # for the first few paths not found (a table of many missing images is not searched for each)
        self._subfolder_looks = self.__dict__.get("_subfolder_looks", 0) + 1
        if self._subfolder_looks > 3:
            return None
        found = [path for folder in _subfolders(self._folders[-1]) if is_file(path := folder / written.as_posix())]
        if len(found) != 1:  # none, or several: which one is meant is the user's to write
            return None
        self._subfolder = Path(*found[0].parts[:-len(written.parts)])
        rank_zero_info(f"{self.dataset}: its rows name images by paths that are not from its folder but from {self._subfolder}: "
                       f"each is read from there (first: {name!r} is {found[0]})")
        return str(found[0])

    def _found_in_images_folder(self, written: PurePosixPath) -> str | None:
        """TextCaps' ``train/011e7e629fb9ae7b.jpg`` with its photos in ``train_images/`` beside the file, as TextVQA's
        download unpacks them: a path whose first folder is not there, read from the ``_images`` folder of its name (said
        once)."""
        first, rest = written.parts[0], written.parts[1:]
        folder = next((folder / f"{first}_images" for folder in self._folders if not (folder / first).is_dir()
                       and (folder / f"{first}_images").is_dir()), None) if rest else None
        if folder is None or not is_file(path := folder / existing_spelling(folder, PurePosixPath(*rest).as_posix())):
            return None
        if not self.__dict__.setdefault("_said_images_folder", set()) & {first}:
            self._said_images_folder.add(first)
            rank_zero_info(f"{self.dataset}: its rows' {first}/ photos are read from {folder}, as TextVQA's download names "
                           f"that folder (first: {written.as_posix()!r} is {path})")
        return str(path)

    def image_files(self, split: str) -> list[tuple[str, str | None]]:
        """The image files the rows of ``split`` name, when they hold paths rather than the images' bytes:
        ``(path as written, where it was found or None)`` each, for the cache to follow (a replaced photo
        makes a new one). Read from the Arrow table, so an image column of bytes is not read."""
        data, _ = self.load(split)
        if self.image_column not in data.column_names:
            return []
        column = data.data.column(self.image_column)
        if pa.types.is_struct(column.type):  # an Image feature: {bytes, path}, bytes null where a file is named
            fields = [column.type.field(i).name for i in range(column.type.num_fields)]
            if not {"bytes", "path"} <= set(fields):
                pandas = " (pandas' to_json() writes a column per key unless given orient='records', lines=True)" \
                    if fields and all(name.isdigit() for name in fields) else ""
                raise DataError(f"{self.dataset}: its {self.image_column!r} column holds objects with the keys "
                                f"{fields[:5]}{'...' if len(fields) > 5 else ''}, not images or image paths{pandas}")
            names = [path for chunk in column.chunks
                     for path, named in zip(chunk.field("path").to_pylist(), chunk.field("bytes").is_null().to_pylist()) if named]
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            names = column.to_pylist()
        else:
            return []
        return [(name, self._found(name)) for name in dict.fromkeys(n for n in names if isinstance(n, str) and n)
                if not is_inline_image(name)]  # an image in its cell: the table's own signature follows it


def _subfolders(folder: Path, most: int = 5_000) -> list[Path]:
    """The folders one and two levels under ``folder`` (hidden ones left out), the first ``most`` of them."""
    def under(parent: Path) -> list[Path]:
        with contextlib.suppress(OSError):
            return sorted(entry for entry in parent.iterdir() if entry.is_dir() and not is_hidden(entry))
        return []

    first = under(folder)
    return list(itertools.islice(itertools.chain(first, (sub for entry in first for sub in under(entry))), most))


def _grouped(files: list[Path], part: str) -> dict[str, list[Path]]:
    """``files`` by their ``part`` (``name``, ``stem``; :func:`_folded`), each in the order found."""
    grouped: dict[str, list[Path]] = {}
    for file in files:
        grouped.setdefault(_folded(getattr(file, part)), []).append(file)
    return grouped


def _folded(name: str) -> str:
    """A file name as Windows and macOS match it: in any case and Unicode form."""
    return unicodedata.normalize("NFC", name).casefold()


def _array(value) -> np.ndarray | None:
    """A cell of rows of numbers (datasets' Array2D and Array3D, or nested lists) as an array; None for anything else."""
    if not isinstance(value, list | np.ndarray) or not len(value) or not isinstance(value[0], list | np.ndarray):
        return None
    with contextlib.suppress(ValueError, TypeError):  # rows of other lengths, or not numbers
        array = np.asarray(value)
        return array if array.dtype.kind in "buif" else None
    return None


def _cell_image(pixels: np.ndarray) -> Image.Image:
    """A cell's pixels as the Python API reads an array (:func:`~mmcaption.pixel_levels.array_image`), ``3xHxW`` and
    ``4xHxW`` read with their channels first (torch's layout, as some CIFAR copies store it): a row holds one image, so
    they are not a stack of greyscale images, as they may be given to the API."""
    return array_image(np.moveaxis(pixels, 0, -1) if pixels.ndim == 3 and channels_first(pixels.shape, (3, 4)) else pixels)


def _png(image: Image.Image) -> bytes:
    """An image as a PNG file's bytes, as a file would store it."""
    picture = io.BytesIO()
    image.save(picture, format="PNG")
    return picture.getvalue()

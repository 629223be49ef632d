"""Files as users have them, for predict and training: iPhones' HEIC photos, 200-megapixel phone photos,
folders a Mac or Windows has been in, image lists saved by Notepad, paths relative to the wrong folder."""

import csv
import io
import json
import os
import shutil
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mmcaption import images
from mmcaption.data import CaptionDataModule, CaptionPredictDataModule, DataError, MultipleChoiceDataModule
from mmcaption.data.cache import folder_signature
from mmcaption.data.caption_cells import SPLIT_NOTE
from mmcaption.data.choice_csv import read_choice_csv
from mmcaption.data.hub import HubCaptions
from mmcaption.data.image_sources import find_images
from mmcaption.data.questions import read_questions
from mmcaption.data.records import BadRecords
from mmcaption.images import check_image, load_rgb, shrink_image

from .test_images import is_upright, upright_picture


def jpeg(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_photos_above_pillows_own_limit_decode_and_pillow_keeps_its_setting(monkeypatch):
    # a 200-megapixel phone's photo (16320 x 12240) is above Pillow's 179-megapixel refusal; scaled down here:
    # with Pillow's limit at 10,000 pixels a 200 x 150 photo stands for it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(images, "PILLOW_LIMIT", 10_000)  # standing for Pillow's default
    data = jpeg(upright_picture(200, 150))
    with pytest.raises(Image.DecompressionBombError):  # what Pillow alone does
        Image.open(io.BytesIO(data))
    assert check_image(data) is None and is_upright(load_rgb(data)) and load_rgb(data).size == (200, 150)
    scan = io.BytesIO()  # a scanner's TIFF: Pillow checks its limit again while decoding the strips
    upright_picture(200, 150).save(scan, format="TIFF")
    assert check_image(scan.getvalue()) is None and is_upright(load_rgb(scan.getvalue()))
    assert Image.MAX_IMAGE_PIXELS == 10_000  # the user's own Pillow setting is untouched
    monkeypatch.setattr(images, "MAX_PIXELS", 20_000)  # above mmcaption's limit: refused with the size
    assert check_image(data) == "DecompressionBombError: 200 x 150 = 30,000 pixels, above the 20,000 mmcaption decodes " \
                                "(mmcaption.images.MAX_PIXELS)"


def test_a_limit_the_process_set_is_never_loosened_for_its_other_threads(monkeypatch):
    # a web service sets its own limit and decodes uploads in threads beside a captioner: every image mmcaption opened
    # set Pillow's process-wide limit to None while it did (3,000 of a host thread's bombs got through in 30 s)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    seen = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: seen.append(Image.MAX_IMAGE_PIXELS) or real_open(*args, **kwargs))
    scan = io.BytesIO()  # a TIFF: Pillow reads its limit again while decoding its strips
    upright_picture(60, 40).save(scan, format="TIFF")
    for data in (jpeg(upright_picture(60, 40)), scan.getvalue()):
        with images.opened(data) as image:
            assert Image.MAX_IMAGE_PIXELS == 10_000  # what another thread reads while this image decodes
            image.load()
    assert seen == [10_000, 10_000]
    assert check_image(jpeg(upright_picture(200, 150))).startswith("DecompressionBombError: Image size (30000 pixels) "
                                                                   "exceeds limit of 20000 pixels")  # the process's own
    assert Image.MAX_IMAGE_PIXELS == 10_000


def test_images_above_pillows_limit_opened_in_threads_leave_the_others_photos_readable(monkeypatch):
    # the limit was raised to None while a large image opened: Pillow reads it twice, and a thread that read None, then
    # a number, took an ordinary photo for no image (43 of them beside a 225-megapixel scan); a warning raised as an
    # error (warnings-as-errors) was a traceback for a photo mmcaption reads
    import threading
    import warnings

    monkeypatch.setattr(images, "PILLOW_LIMIT", 4_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000)
    photo, scan = jpeg(upright_picture(40, 30)), jpeg(upright_picture(200, 150))  # 1,200 and 30,000 pixels
    failures = []

    def check(data, times):
        for _ in range(times):
            if (problem := check_image(data)) is not None:
                failures.append(problem)

    threads = [threading.Thread(target=check, args=(scan, 300))] + [threading.Thread(target=check, args=(photo, 300))
                                                                    for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and Image.MAX_IMAGE_PIXELS == 4_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_image(jpeg(upright_picture(80, 60))) is None  # 4,800 pixels: Pillow warns, mmcaption reads it


def test_a_thin_strip_is_refused_before_the_processor_scales_it_up():
    strip = io.BytesIO()  # 104 bytes that took 4.5 GB once CLIP's processor scaled the short side up to 224 pixels
    Image.new("RGB", (8000, 1)).save(strip, format="PNG")
    assert check_image(strip.getvalue()).startswith("DecompressionBombError: 8000 x 1 pixels, a strip longer than 500 times "
                                                     "its width: scaled for the vision model")
    panorama = io.BytesIO()  # a long panorama is read
    Image.new("RGB", (10000, 50)).save(panorama, format="PNG")
    assert check_image(panorama.getvalue()) is None


def test_a_signed_url_of_hundreds_of_characters_is_fetched_not_taken_for_base64(monkeypatch):
    data = jpeg(Image.new("RGB", (32, 32), "red"))
    monkeypatch.setattr(images, "fetch", lambda url: data)  # a presigned S3 URL: its token is one long segment
    signed = "https://bucket.s3.amazonaws.com/photo.jpg?X-Amz-Security-Token=" + "A" * 900
    assert load_rgb(signed).size == (32, 32)  # was "an image path of 966 characters ... is no path"


def test_heic_photos_are_read_and_found():
    from pillow_heif import register_heif_opener

    register_heif_opener()
    out = io.BytesIO()
    upright_picture(64, 48).save(out, format="HEIF", quality=95)
    assert check_image(out.getvalue()) is None and is_upright(load_rgb(out.getvalue()))
    assert {".heic", ".heif"} <= images.IMAGE_SUFFIXES


def test_empty_files_and_other_files_say_what_they_are(tmp_path):
    assert check_image(b"") == "UnidentifiedImageError: the file is empty (0 bytes)"
    # what it is, not what it holds: its first bytes put a reply's contents (a metadata service's key) in a results file
    assert check_image(b"this is not an image\n") == "not an image Pillow can read (text)"
    assert check_image(b"\n<!DOCTYPE html><html>Access denied") == "not an image Pillow can read (a web page (HTML))"
    assert check_image(b'<?xml version="1.0"?>\n<!-- Illustrator -->\n<svg xmlns="http://www.w3.org/2000/svg"/>') == (
        "not an image Pillow can read (an SVG drawing (vectors, no pixels): convert it to PNG first)")  # was "(text)"
    assert check_image(b"AKIA-SECRET-\x00\x01") == "not an image Pillow can read (its first bytes are 41 4b 49 41)"
    assert check_image(("图片说明，" * 60).encode()) == "not an image Pillow can read (text)"  # cut in a character
    assert check_image(b"a.jpg\ta caption\r\n") == "not an image Pillow can read (text)"
    notes = tmp_path / "README.md"  # given to the Python API as an image: named, not "<_io.BytesIO object at 0x...>"
    notes.write_text("this is not an image\n")
    with pytest.raises(OSError, match=rf"image {notes} cannot be decoded: not an image Pillow can read"):
        load_rgb(notes)


def test_floating_point_tiffs_are_scaled_not_black(tmp_path):
    path = tmp_path / "scan.tif"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F").save(path)
    assert np.asarray(load_rgb(path))[0, 0].tolist() == [128, 128, 128]


def adobe_rgb_profile(grey: bool = False) -> bytes:
    """Adobe RGB (1998) as an ICC profile (matrix and gamma, D50-adapted colorants), as Photoshop and cameras embed it;
    ``grey``: a greyscale one of gamma 1.0 (Photoshop's "Gray Gamma" kind)."""
    import struct

    def number(x):
        return struct.pack(">i", round(x * 65536))

    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + number(x) + number(y) + number(z)

    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round((1.0 if grey else 2.19921875) * 256)) + b"\0\0"
    name = b"Gray Gamma 1.0\0" if grey else b"Adobe RGB (1998)\0"
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(name)) + name + b"\0" * 78), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            *([(b"kTRC", curve)] if grey else [(b"rXYZ", xyz(0.6097, 0.3111, 0.0195)), (b"gXYZ", xyz(0.2053, 0.6257, 0.0609)),
                                              (b"bXYZ", xyz(0.1492, 0.0632, 0.7446)), (b"rTRC", curve), (b"gTRC", curve),
                                              (b"bTRC", curve)]),
            (b"cprt", b"text\0\0\0\0none\0")]
    table, data = b"", b""
    for signature, body in tags:
        data += b"\0" * (-(132 + 12 * len(tags) + len(data)) % 4)
        table += signature + struct.pack(">II", 132 + 12 * len(tags) + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + table + data
    header = (struct.pack(">I", 128 + len(body)) + b"none" + bytes([2, 0x10, 0, 0]) + (b"mntrGRAYXYZ " if grey else b"mntrRGB XYZ ")
              + b"\0" * 12 + b"acspAPPL"
              + b"\0" * 24 + struct.pack(">I", 0) + number(0.9642) + number(1.0) + number(0.8249) + b"\0" * 44)
    return header + body


def test_colours_of_another_colour_space_reach_the_model_as_a_viewer_shows_them(tmp_path):
    # Photoshop's and cameras' Adobe RGB (a phone's Display P3 likewise) was taken as sRGB: duller than people see it
    from PIL import ImageCms

    profile = adobe_rgb_profile()
    picture = Image.new("RGB", (64, 32), (200, 0, 0))
    picture.paste((120, 160, 100), (32, 0, 64, 32))
    for suffix in ("jpg", "png"):
        picture.save(tmp_path / f"adobe.{suffix}", icc_profile=profile, **({"quality": 98} if suffix == "jpg" else {}))
        with Image.open(tmp_path / f"adobe.{suffix}") as opened_file:  # a colour-managed viewer's sRGB, by LittleCMS
            shown = ImageCms.profileToProfile(opened_file, ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                              ImageCms.createProfile("sRGB"), outputMode="RGB")
        seen = load_rgb(tmp_path / f"adobe.{suffix}")
        for place in ((8, 16), (48, 16)):
            assert seen.getpixel(place) == shown.getpixel(place), (suffix, place)
        assert seen.getpixel((8, 16))[0] > 225  # 200 in Adobe RGB is about 234 in sRGB (was 200)
    # a transparent colour (PNG's tRNS) stays on white, and a palette's colours are converted at any size
    keyed = Image.new("RGB", (40, 40), (200, 0, 0))
    keyed.paste((0, 0, 0), (0, 20, 40, 40))
    keyed.save(tmp_path / "keyed.png", transparency=(0, 0, 0), icc_profile=profile)
    assert load_rgb(tmp_path / "keyed.png").getpixel((5, 30)) == (255, 255, 255)  # was black: the conversion dropped it
    palette = Image.new("RGB", (40, 40), (200, 0, 0)).convert("P")
    for size in (40, 1000):
        palette.resize((size, size)).save(tmp_path / "palette.png", icc_profile=profile)
        assert load_rgb(tmp_path / "palette.png", shortest_side=224).getpixel((5, 5))[0] > 225, size  # 40 px: as sRGB
    # the cache's smaller copy: converted once made smaller (at a phone photo's full size it took 2.6x the time), and once
    Image.new("RGB", (1200, 900), (200, 0, 0)).save(tmp_path / "big.jpg", icc_profile=profile, quality=98)
    shrunk = Image.open(io.BytesIO(shrink_image((tmp_path / "big.jpg").read_bytes(), 224)))
    assert shrunk.size == (299, 224) and 225 < shrunk.getpixel((5, 5))[0] and shrunk.getpixel((5, 5))[1] < 8
    # a greyscale photo with its own profile (a CMYK one likewise): no RGB profile fits its RGB copy, so converted first
    Image.new("L", (1200, 900), 100).save(tmp_path / "grey.jpg", icc_profile=adobe_rgb_profile(grey=True), quality=98)
    seen = load_rgb(tmp_path / "grey.jpg").getpixel((5, 5))
    assert seen[0] > 150 and Image.open(io.BytesIO(shrink_image((tmp_path / "grey.jpg").read_bytes(), 224))).getpixel((5, 5)) == seen
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for embedded in (srgb, b"not a profile" * 8):  # sRGB as it is, a damaged profile taken as sRGB
        picture.save(tmp_path / "plain.png", icc_profile=embedded)
        assert load_rgb(tmp_path / "plain.png").getpixel((8, 16)) == (200, 0, 0)


def test_transparent_images_are_seen_on_white_not_black(tmp_path):
    # a black disc on a transparent background, as PNG exports of logos and diagrams are: transparent pixels hold 0
    pixels = np.zeros((40, 40, 4), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    pixels[(yy - 20) ** 2 + (xx - 20) ** 2 < 100, 3] = 255
    Image.fromarray(pixels, "RGBA").save(tmp_path / "logo.png")
    palette = Image.fromarray(pixels[..., 3] // 255, "L").convert("P")  # index 0 transparent, index 1 black
    palette.putpalette([0, 0, 0, 0, 0, 0])
    palette.save(tmp_path / "logo-palette.png", transparency=0)
    half = pixels.copy()
    half[..., 3] = np.maximum(half[..., 3], 128)  # half-transparent black around the disc: grey
    Image.fromarray(half, "RGBA").save(tmp_path / "logo-half.png")
    for name, corner in (("logo.png", 255), ("logo-palette.png", 255), ("logo-half.png", 127)):
        image = np.asarray(load_rgb(tmp_path / name))
        assert image.shape == (40, 40, 3) and (image[20, 20] == 0).all(), name  # the disc stays black
        assert (abs(image[0, 0].astype(int) - corner) <= 1).all(), (name, image[0, 0])  # the background is not black
    grey = Image.fromarray(half[..., 3], "L").convert("LA")  # greys with alpha; La, its premultiplied form, was Pillow's
    grey.putalpha(Image.fromarray(half[..., 3]))                # "conversion from La to L not supported"
    for mode in ("LA", "La"):
        assert np.array_equal(np.asarray(load_rgb(grey.convert(mode))), np.asarray(load_rgb(grey))), mode
    opaque = Image.fromarray(np.full((8, 8, 3), 7, np.uint8))  # an image without transparency is unchanged
    assert (np.asarray(load_rgb(opaque)) == 7).all()


def test_a_folder_leaves_out_hidden_files_and_says_what_else_it_left_out(tmp_path):
    folder = tmp_path / "photos"
    (folder / "2024" / ".thumbnails").mkdir(parents=True)
    photo = jpeg(upright_picture(32, 32))
    for name in ("IMG_0001.JPG", "download.jfif", "2024/IMG_0002.jpe", "2024/.thumbnails/IMG_0002.jpg", "._IMG_0001.JPG"):
        (folder / name).write_bytes(photo if not name.startswith("._") else b"\x00\x05\x16\x07AppleDouble")
    (folder / "notes.txt").write_text("holiday")
    (folder / "clip.mov").write_bytes(b"\x00" * 16)
    (folder / ".DS_Store").write_bytes(b"\x00" * 16)
    # a Synology share's thumbnails of each photo, a Windows drive's recycle bin: captioned as photos, 4 rows a photo
    for name in ("@eaDir/IMG_0001.JPG/SYNOPHOTO_THUMB_XL.jpg", "$RECYCLE.BIN/S-1-5-21/$RABC123.jpg",
                 "System Volume Information/x.jpg", "__MACOSX/2024/IMG_0002.jpe"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(photo)
    notes = []
    found = find_images(str(folder), note=notes.append)
    assert [p.relative_to(folder).as_posix() for p in found] == ["2024/IMG_0002.jpe", "IMG_0001.JPG", "download.jfif"]
    assert len(notes) == 1 and notes[0].startswith(f"{folder}: 2 files left out, not images by their names (")
    assert "1 x .txt" in notes[0] and "1 x .mov" in notes[0]


def test_a_folder_follows_linked_folders_once_and_names_links_to_nothing(tmp_path):
    shared = tmp_path / "shared" / "val2017"
    shared.mkdir(parents=True)
    (shared / "a.jpg").write_bytes(jpeg(upright_picture(32, 32)))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "b.jpg").write_bytes(jpeg(upright_picture(32, 32)))
    (folder / "val2017").symlink_to(shared, target_is_directory=True)  # a dataset linked in, as people share them
    (folder / "again").symlink_to(folder, target_is_directory=True)  # a link back up: not a loop
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    notes = []
    found = find_images(str(folder), note=notes.append)
    assert [p.relative_to(folder).as_posix() for p in found] == ["b.jpg", "val2017/a.jpg"]  # the linked folder is read (was left out)
    assert notes == [f"{folder}: 1 link left out that points to nothing (the first: {folder / 'gone.jpg'})"]


def test_the_preprocessing_cache_sees_images_added_to_a_linked_folder(tmp_path):
    # LLaVA-1.5's mixes are one image root with coco/, gqa/ ... linked in: an image added there was never
    # preprocessed ("reusing ... built with 1 bad records skipped")
    gqa = tmp_path / "downloads" / "gqa"
    gqa.mkdir(parents=True)
    (gqa / "1.jpg").write_bytes(jpeg(upright_picture(32, 32)))
    root = tmp_path / "images"
    root.mkdir()
    (root / "gqa").symlink_to(gqa, target_is_directory=True)
    (root / "again").symlink_to(root, target_is_directory=True)  # a link back up: read once, not forever
    (root / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")  # a link to nothing: no image, no error
    before = folder_signature(root)
    assert before["files"] == 1
    (gqa / "2.jpg").write_bytes(jpeg(upright_picture(32, 32)))  # the rest of a partial download
    after = folder_signature(root)
    assert after["files"] == 2 and after["sha256"] != before["sha256"]


def test_a_pattern_given_as_the_dataset_names_the_folder_to_give(tmp_path, monkeypatch):
    # hub_dataset: data/train-*.parquet was taken for a hub id: "Repo id must use alphanumeric chars ..."
    (tmp_path / "data").mkdir()
    for index in range(2):
        (tmp_path / "data" / f"train-0000{index}-of-00002.parquet").write_bytes(b"PAR1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"hub_dataset data/train-\*\.parquet is a pattern of files, and a dataset is a hub id, "
                                        r"a folder or one file: it matches 2 file\(s\) in data; give that folder, whose "
                                        r"tables are read as splits by their names"):
        HubCaptions("data/train-*.parquet", "image", "caption")
    with pytest.raises(DataError, match=r"hub_dataset photos/\*\.csv is a pattern .*: it matches nothing from "):
        HubCaptions("photos/*.csv", "image", "caption")


def test_a_pattern_no_shell_expanded_names_its_images(tmp_path, monkeypatch):
    # images: photos/*.jpg in a config, or quoted on the command line: "image source not found: photos/*.jpg"
    photos = tmp_path / "photos"
    (photos / "day2").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "IMG_0001.JPG", "day2/c.jpg", ".hidden.jpg"):
        (photos / name).write_bytes(jpeg(upright_picture(32, 32)))
    (photos / "notes.txt").write_text("holiday")
    monkeypatch.chdir(tmp_path)
    said: list[str] = []
    assert find_images("photos/*.jpg", note=said.append) == [Path("photos/a.jpg"), Path("photos/b.jpg")]
    assert said == ["photos/*.jpg: 1 images that it matches only in another case are left out, as a shell leaves them (the "
                    "first: photos/IMG_0001.JPG); a pattern of either case takes them too (photos/*.[jJ][pP][gG])"]
    assert find_images("photos/**/*.jpg", note=None) == [Path("photos/a.jpg"), Path("photos/b.jpg"), Path("photos/day2/c.jpg")]
    said.clear()
    assert find_images("photos/*", note=said.append) == [Path("photos/IMG_0001.JPG"), Path("photos/a.jpg"), Path("photos/b.jpg")]
    assert said == ["photos/*: 1 files it matches left out, not images by their names (1 x .txt)"]
    # an iPhone's IMG_*.JPG asked for as *.jpg, none in that case: matched in any case, as Windows and macOS match names
    (photos / "a.jpg").unlink()
    (photos / "b.jpg").unlink()
    assert find_images("photos/*.jpg", note=None) == [Path("photos/IMG_0001.JPG")]
    with pytest.raises(DataError, match=r"no image matches the pattern photos/\*\.txt \(looked for from .*; it matches 1 x "
                                        r"\.txt\); images are "):
        find_images("photos/*.txt")


def test_an_image_list_as_windows_saves_it(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    for name in ("a.jpg", "b c.jpg"):
        (tmp_path / "photos" / name).write_bytes(jpeg(upright_picture(32, 32)))
    listing = tmp_path / "list.txt"  # Notepad: a byte-order mark, CRLF; Explorer's "Copy as path" quotes; backslashes
    listing.write_bytes("\ufeffphotos\\a.jpg\r\n\"photos/b c.jpg\"\r\n\r\n".encode())
    assert find_images(str(listing)) == [tmp_path / "photos" / "a.jpg", tmp_path / "photos" / "b c.jpg"]

    latin = tmp_path / "latin.txt"
    latin.write_bytes("photos/caf\xe9.jpg\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"latin.txt, line 1: not UTF-8 text \(byte 0xe9 at 10\), likely Windows' local code page"):
        find_images(str(latin))

    nowhere = tmp_path / "nowhere.txt"
    nowhere.write_text("a.jpg\nb.jpg\n")  # relative to the working directory, not to the list
    with pytest.raises(DataError, match=r"none of the 2 images of .*nowhere.txt was found: the first, 'a.jpg', was looked for at "):
        find_images(str(nowhere))

    elsewhere = tmp_path / "elsewhere"  # a Notepad list relative to the working directory, backslashes and all
    elsewhere.mkdir()
    (elsewhere / "list.txt").write_text("photos\\a.jpg\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"looked for at .*elsewhere/photos/a.jpg.*; photos/a.jpg is there relative to the working directory"):
        find_images(str(elsewhere / "list.txt"))

    # an accented name unzipped on a Mac is decomposed on disk (e + a combining accent); the list has it composed
    (tmp_path / "photos" / unicodedata.normalize("NFD", "café.jpg")).write_bytes(jpeg(upright_picture(32, 32)))
    accented = tmp_path / "accented.txt"
    accented.write_text(unicodedata.normalize("NFC", "photos/café.jpg\n"))
    found = find_images(str(accented))
    assert len(found) == 1 and found[0].is_file() and found[0].name == unicodedata.normalize("NFD", "café.jpg")

    (tmp_path / "photos" / "~1.jpg").write_bytes(jpeg(upright_picture(32, 32)))  # a name that starts with ~: no home
    (tmp_path / "tilde.txt").write_text("photos/~1.jpg\n")
    assert find_images(str(tmp_path / "tilde.txt")) == [tmp_path / "photos" / "~1.jpg"]
    home = tmp_path / "home"  # a list written by hand, its paths from the home folder as a shell reads them
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "a.jpg").write_bytes(jpeg(upright_picture(32, 32)))
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "mine.txt").write_text("~/photos/a.jpg\n")
    assert find_images(str(tmp_path / "mine.txt")) == [home / "photos" / "a.jpg"]

    unnamed = tmp_path / "photo_from_a_browser"  # an image without a suffix, given as the one image
    unnamed.write_bytes(jpeg(upright_picture(32, 32)))
    assert find_images(str(unnamed)) == [unnamed]


def test_an_image_list_piped_in_is_read_once_and_its_paths_are_from_here(backbones, image_folder, monkeypatch):
    # `ls *.jpg | mmcaption predict --data.images /dev/stdin`: the list was read twice (checked, then used) and
    # found empty the second time ("image list /dev/stdin is empty"); relative paths were looked for under /dev/fd/
    monkeypatch.chdir(image_folder.parent)

    def piped(text: str) -> CaptionPredictDataModule:
        read, write = os.pipe()
        os.write(write, text.encode())
        os.close(write)
        os.dup2(read, 99)  # the same /dev/fd/ name for both runs, as /dev/stdin is
        os.close(read)
        return CaptionPredictDataModule(images="/dev/fd/99", output="captions.jsonl", batch_size=2)

    first = piped(f"{image_folder.name}/img0.png\n{image_folder / 'img1.png'}\n")
    try:
        assert find_images("-", piped={"/dev/stdin": f"{image_folder.name}/img0.png\n".encode()}) == [
            Path(image_folder.name) / "img0.png"]  # `-` is the standard input, as other tools read it
        from mmcaption.data.predict import _CaptionRows
        from mmcaption.model.backbones import load_image_processor

        listed = _CaptionRows([(image_folder.name, image_folder)], load_image_processor(str(backbones[1])), [])  # a folder on a list's line
        assert listed[0]["error"] == f"{image_folder} is a folder, not an image: give the folder itself as --data.images, or list its images"
        first.check_inputs()
        assert find_images("/dev/fd/99", piped=first.piped) == [Path(image_folder.name) / "img0.png", image_folder / "img1.png"]
        # a second run in the same process (a notebook, a pipeline) reads its own list, not the first run's
        second = piped(f"{image_folder.name}/img2.png\n")
        assert find_images("/dev/fd/99", piped=second.piped) == [Path(image_folder.name) / "img2.png"]
    finally:
        os.close(99)


def test_questions_whose_images_are_all_elsewhere_are_refused_with_the_folder(backbones, tmp_path, monkeypatch):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg(upright_picture(32, 32)))
    (tmp_path / "mc").mkdir()
    csv_file = tmp_path / "mc" / "questions.csv"  # img_path relative to the working directory, not to the CSV
    csv_file.write_text("img_path,Question,A,B,answer\nimages/a.jpg,What colour?,red,blue,A\nimages/a.jpg,Which side?,left,right,B\n")
    monkeypatch.chdir(tmp_path)
    dm = MultipleChoiceDataModule(csv_file=str(csv_file), tokenizer=str(backbones[0]), image_processor=str(backbones[1]))
    with pytest.raises(DataError, match=r"none of the 2 images of .*questions.csv was found: the first, 'images/a.jpg', was looked "
                                        r"for at .*mc/images/a.jpg. Images are relative to .*mc \(the file's folder, unless "
                                        r"--data.image_root gives their folder\); images/a.jpg is there relative to the working directory"):
        dm.setup("predict")
    windows = tmp_path / "windows.csv"  # backslashes, as a spreadsheet on Windows writes relative paths
    windows.write_text("img_path,Question,A,B\nimages\\a.jpg,What colour?,red,blue\n")
    dm = MultipleChoiceDataModule(csv_file=str(windows), tokenizer=str(backbones[0]), image_processor=str(backbones[1]))
    dm.setup("predict")
    assert dm.dataset[0]["error"] is None


def test_question_files_take_number_answers_and_read_a_semicolon_table(tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(json.dumps({"image": "a.jpg", "question": "How many?", "answer": 2}) + "\n"
                     + json.dumps({"image": "a.jpg", "question": "How many?", "answers": [2, "two", 2.0]}) + "\n")
    first, second = read_questions(jsonl)
    assert first.answer == "2" and second.record["answers"] == ["2", "two", "2"]
    # a key of its own as written (camelCase, as GQA's and most exports' are: it came back "questionid"); two keys that
    # are one in any case refused, naming both (the first was lost without a word, and the answer scored was the last)
    jsonl.write_text(json.dumps({"Image": "a.jpg", "Question": "How many?", "questionId": "Q-17", "id": 1, "ID": "a"}) + "\n")
    [question] = read_questions(jsonl)
    assert question.record == {"image": "a.jpg", "question": "How many?", "questionId": "Q-17", "id": 1, "ID": "a"}
    jsonl.write_text(json.dumps({"image": "a.jpg", "question": "How many?", "Answer": "white", "answer": "yellow"}) + "\n")
    with pytest.raises(DataError, match=r"q.jsonl, line 1: keys 'Answer' and 'answer' are one key in any case: keep one"):
        read_questions(jsonl)
    jsonl.write_text(json.dumps({"image": "a.jpg", "question": "Is it?", "answer": True}) + "\n")
    with pytest.raises(DataError, match=r"q.jsonl, line 1: answer True is not a string or a number"):
        read_questions(jsonl)
    semicolons = tmp_path / "q.csv"  # Excel's "CSV" where the comma is the decimal mark (most of Europe): read as it is
    semicolons.write_text("image;question;answer\na.jpg;How many, then?;2,5\n")
    [question] = read_questions(semicolons)
    assert (question.question, question.answer) == ("How many, then?", "2,5")
    tabs = tmp_path / "q.tsv"  # a spreadsheet's tab-separated save (it was refused by its name)
    tabs.write_text("image\tquestion\tanswer\na.jpg\tHow many, then?\t2\n")
    [question] = read_questions(tabs)
    assert (question.question, question.answer) == ("How many, then?", "2")
    semicolons.write_text("image;question;answer\na.jpg;How many; then?;2\n")
    with pytest.raises(DataError, match=r"q.csv, line 2: 4 fields where the header has 3 \(a semicolon inside a field must be quoted\)"):
        read_questions(semicolons)


def test_coco_images_without_a_caption_are_counted_not_dropped_silently(backbones, coco_root, tmp_path, monkeypatch):
    coco = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    annotations = coco / "annotations" / "captions_train2017.json"
    content = json.loads(annotations.read_text())
    uncaptioned = {entry["id"] for entry in content["images"][:2]}
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] not in uncaptioned]
    annotations.write_text(json.dumps(content))
    warned = []
    monkeypatch.setattr("mmcaption.data.records.rank_zero_warn", warned.append)
    dm = CaptionDataModule(data_dir=str(coco), tokenizer=str(backbones[0]), image_processor=str(backbones[1]),
                           num_workers=0, batch_size=2)
    dm.prepare_data()
    first = min(uncaptioned)
    assert any(f"2 x images without a caption left out (first: image id {first}," in message for message in warned), warned
    # ... and one whose file is not there either: left out as well (it stopped preprocessing, "1 of 13 referenced images
    # are missing ... set on_bad_record: skip")
    content["images"].append({"id": 777, "file_name": "000000000777.jpg", "width": 64, "height": 64})
    annotations.write_text(json.dumps(content))
    warned.clear()
    dm.prepare_data()
    assert any("3 x images without a caption left out" in message for message in warned), warned
    content["images"].pop()
    # a split with no caption at all (a test split whose references are held back): it read "nothing usable is left (bad
    # records: none)" once every image had been read, and nothing said how to caption them
    content["annotations"] = []
    annotations.write_text(json.dumps(content))
    # (named for the setting that gave it: it said "validate on a split with captions (val_split)" of a training split)
    with pytest.raises(DataError, match=rf"captions_train2017\.json: none of its {len(content['images'])} images has a caption "
                                        r"\(a test split whose references are held back, as COCO's test2017\): training learns "
                                        r"from them, so give --data.init_args.train_split a split with captions\. To caption "
                                        r"these images: mmcaption predict --config "
                                        r"<the stage's config> --config configs/predict/captions.yaml --ckpt_path <checkpoint> "
                                        r"--data.images \S+captions_train2017\.json \(its images, found in \S+train2017 or "
                                        r"beside it, each captioned under its image id"):
        dm.prepare_data()
    # COCO's own test2017 download: image_info_test2017.json, no 'annotations' at all (it said "has no 'images' and
    # 'annotations' lists: is it a COCO captions file?"), given as the captions file or found beside the missing one
    info = {key: content[key] for key in ("images",)}
    annotations.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"captions_train2017\.json has no 'annotations' list: none of its \d+ images has a caption "
                                        r"\(a test split"):
        dm.prepare_data()
    annotations.rename(annotations.with_name("image_info_train2017.json"))
    with pytest.raises(DataError, match=r"image_info_train2017\.json: none of its images has a caption \(a test split.*"
                                        r"--data.images \S+image_info_train2017\.json \(its images, found in \S+coco/train2017 "):
        dm.prepare_data()
    # such a file given to test: test_split named, as scored
    held_back = coco / "annotations" / "image_info_test2017.json"
    shutil.copy(annotations.with_name("image_info_train2017.json"), held_back)
    tested = CaptionDataModule(data_dir=str(coco), tokenizer=str(backbones[0]), image_processor=str(backbones[1]),
                               test_split=str(held_back))
    tested.trainer = SimpleNamespace(state=SimpleNamespace(fn=SimpleNamespace(value="test")))  # mmcaption test's
    with pytest.raises(DataError, match=r"image_info_test2017\.json has no 'annotations' list: none of its \d+ images has a caption \(a test split whose "
                                        r"references are held back, as COCO's test2017\): validation and test score captions "
                                        r"against them, so give --data.init_args.test_split a split with captions"):
        tested.prepare_data()
    # val_split and test_split both naming it: test names test_split, the one it reads (val_split named, the user
    # mended it and test still read the held-back split)
    both = CaptionDataModule(data_dir=str(coco), tokenizer=str(backbones[0]), image_processor=str(backbones[1]),
                             val_split=str(held_back), test_split=str(held_back))
    both.trainer = tested.trainer
    with pytest.raises(DataError, match=r"so give --data.init_args.test_split a split with captions"):
        both.prepare_data()
    # BLIP's Karpathy list and Karpathy's dataset_coco.json given as COCO's captions file: named, with what reads them
    annotations.with_name("image_info_train2017.json").unlink()
    annotations.write_text(json.dumps([{"caption": "a cat", "image": "train2017/x.jpg", "image_id": "coco_1"}]))
    with pytest.raises(DataError, match=r"is it a COCO captions file\? It is a list of records \(the first has \['caption', 'image', "
                                        r"'image_id'\]\): read it as a table with --data.init_args.source hub"):
        dm.prepare_data()
    annotations.write_text(json.dumps({"images": [{"filepath": "train2014", "filename": "x.jpg", "split": "train", "cocoid": 1,
                                                   "sentences": [{"raw": "a cat"}]}], "dataset": "coco"}))
    with pytest.raises(DataError, match=r"It is Karpathy's split file .*configs/caption_karpathy.yaml"):
        dm.prepare_data()


def test_answers_to_questions_saved_by_excel_open_in_excel(backbones, trained_checkpoint, image_folder, tmp_path):
    import codecs
    import csv

    from mmcaption.module import MultimodalCaptioner

    from .test_predict_export import QUESTIONS, choice_data, predictor, write_csv

    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    plain = write_csv(tmp_path / "plain.csv", QUESTIONS[:2])
    excel = tmp_path / "excel.csv"  # Excel's "CSV UTF-8": a byte-order mark, then UTF-8
    excel.write_bytes(codecs.BOM_UTF8 + plain.read_bytes().replace(b"What colour is it?", "De quelle couleur est le café ?".encode()))
    windows = tmp_path / "windows.csv"  # Excel's plain "CSV" on Windows: Windows-1252 (was refused, "not UTF-8 text")
    windows.write_bytes(plain.read_bytes().replace(b"What colour is it?", "De quelle couleur est le café ?".encode("cp1252")))
    for questions in (plain, excel, windows):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, tmp_path / f"answers-{questions.name}"))
    # Excel reads a CSV without the mark in the local code page ("cafÃ©"): the answers to a spreadsheet's questions get it
    for name in ("answers-excel.csv", "answers-windows.csv"):
        answers = (tmp_path / name).read_bytes()
        assert answers.startswith(codecs.BOM_UTF8) and answers.count(codecs.BOM_UTF8) == 1
        with (tmp_path / name).open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        assert rows[0]["Question"] == "De quelle couleur est le café ?" and rows[0]["prediction"] in "ABCD"
    assert not (tmp_path / "answers-plain.csv").read_bytes().startswith(codecs.BOM_UTF8)  # nothing added unasked
    # the note that the questions were read as Windows-1252, with the words read so, is kept where a batch job's results
    # are read (it was said on the console alone)
    notes = {name: json.loads((tmp_path / f"answers-{name}.csv.summary.json").read_text()).get("input_notes", [])
             for name in ("plain", "excel", "windows")}
    assert notes["plain"] == notes["excel"] == []
    assert len(notes["windows"]) == 1 and notes["windows"][0].startswith(f"{windows} is not UTF-8: read as Windows-1252")
    assert "('café' (line 2))" in notes["windows"][0]


def test_a_csv_of_captions_for_photos_named_beyond_ascii_opens_in_excel(backbones, trained_checkpoint, image_folder, tmp_path):
    import codecs
    import csv
    import shutil

    from mmcaption.module import MultimodalCaptioner

    from .test_predict_export import caption_data, predictor

    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    holiday = tmp_path / "Vacances été"  # a phone's album: no spreadsheet read, yet the CSV is opened in Excel
    shutil.copytree(image_folder, holiday)
    (holiday / "img0.png").rename(holiday / "crème brûlée.png")
    for folder, name in ((holiday, "holiday.csv"), (image_folder, "plain.csv"), (holiday, "holiday.jsonl")):
        predictor(tmp_path).predict(module, datamodule=caption_data(backbones, folder, tmp_path / name))
    written = (tmp_path / "holiday.csv").read_bytes()
    assert written.startswith(codecs.BOM_UTF8) and written.count(codecs.BOM_UTF8) == 1  # Excel reads it as UTF-8
    with (tmp_path / "holiday.csv").open(newline="", encoding="utf-8-sig") as handle:
        assert str(holiday / "crème brûlée.png") in {row["image"] for row in csv.DictReader(handle)}
    assert not (tmp_path / "plain.csv").read_bytes().startswith(codecs.BOM_UTF8)  # ASCII alone: nothing added
    assert not (tmp_path / "holiday.jsonl").read_bytes().startswith(codecs.BOM_UTF8)  # JSON Lines is never marked
    # photos named in ASCII, a caption beyond it (a model that writes French): the mark was decided by the input alone
    predict = module.predict_step
    module.predict_step = lambda *args: [{**row, "caption": "un café"} for row in predict(*args)]
    predictor(tmp_path).predict(module, datamodule=caption_data(backbones, image_folder, tmp_path / "french.csv"))
    written = (tmp_path / "french.csv").read_bytes()
    assert written.startswith(codecs.BOM_UTF8) and written.count(codecs.BOM_UTF8) == 1
    with (tmp_path / "french.csv").open(newline="", encoding="utf-8-sig") as handle:
        assert [row["caption"] for row in csv.DictReader(handle)] == ["un café"] * 3


def test_a_csv_output_is_marked_for_excel_by_its_whole_text_and_kept_whole_where_the_disk_fills(tmp_path, monkeypatch):
    # the mark was decided by the rows this run wrote: a resumed run whose rows left were ASCII (a killed run's rows taken
    # over, or put together from shares) ended unmarked with "café" in it; and it was added by rewriting the only copy
    import codecs
    import errno

    from mmcaption.evaluation.spreadsheets import finish_csv

    rows = "image,caption\r\na.png,un café\r\nb.png,a square\r\n".encode()
    partial = tmp_path / ".out.csv.partial"
    partial.write_bytes(rows)

    def disk_full(path, data):
        with open(path, "wb") as handle:
            handle.write(data[:20])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patched:
        patched.setattr(Path, "write_bytes", disk_full)
        with pytest.raises(OSError):
            finish_csv(partial, "utf-8", {}, ("error",))
    assert partial.read_bytes() == rows and [p.name for p in tmp_path.iterdir()] == [partial.name]  # whole, no debris
    finish_csv(partial, "utf-8", {}, ("error",))
    assert partial.read_bytes() == codecs.BOM_UTF8 + rows
    finish_csv(partial, "utf-8", {1: {"note": "late"}}, ("error",))  # rewritten for a late column: still marked, once
    assert partial.read_bytes().count(codecs.BOM_UTF8) == 1 and partial.read_bytes().startswith(codecs.BOM_UTF8)
    plain = tmp_path / "plain.csv"
    plain.write_bytes(b"image,caption\r\na.png,a square\r\n")
    finish_csv(plain, "utf-8", {}, ("error",))
    assert plain.read_bytes() == b"image,caption\r\na.png,a square\r\n"  # ASCII: nothing added


def test_coco_downloaded_but_not_unpacked_is_named_with_the_command_that_unpacks_it(backbones, coco_root, tmp_path):
    import shlex
    import subprocess

    data = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    for folder, kind in (("annotations", "zip"), ("train2017", "gztar")):  # as downloaded from cocodataset.org (or re-packed)
        name = "annotations_trainval2017" if folder == "annotations" else folder
        shutil.make_archive(str(data / name), kind, root_dir=data, base_dir=folder)
        shutil.rmtree(data / folder)
    lm, vision = backbones

    def prepare():
        CaptionDataModule(data_dir=str(data), tokenizer=str(lm), image_processor=str(vision), batch_size=4,
                          num_workers=0).prepare_data()

    for archive, command in (("annotations_trainval2017.zip", "unzip -q"), ("train2017.tar.gz", "tar -xf")):
        with pytest.raises(DataError, match=rf"{archive} is there, not unpacked: {command} ") as error:
            prepare()
        # the command given unpacks it where the data module looks
        given = str(error.value).split("not unpacked: ")[1]
        if given.startswith("unzip"):  # unzip may be missing here: Python's, with the same archive and folder
            _, _, source, _, target = shlex.split(given)
            shutil.unpack_archive(source, target)
        else:
            subprocess.run(shlex.split(given), check=True)
    prepare()  # both unpacked as told: the data is complete


@pytest.fixture
def web_server(tmp_path):
    """A web server on this machine (no network) serving ``tmp_path/web``: yields its base URL."""
    import functools
    import http.server
    import threading

    (tmp_path / "web").mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "web"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_images_given_as_urls_are_downloaded_and_a_failure_names_the_url(web_server, tmp_path, monkeypatch):
    import socket

    upright_picture(48, 32).save(tmp_path / "web" / "photo.png")
    (tmp_path / "web" / "page.html").write_text("<html>not an image</html>")
    image = load_rgb(f"{web_server}/photo.png")  # what Captioner.caption("https://...") reads
    assert image.size == (48, 32) and is_upright(image)
    with pytest.raises(OSError, match=rf"image {web_server}/missing.jpg could not be downloaded: HTTP 404"):
        load_rgb(f"{web_server}/missing.jpg")
    with pytest.raises(OSError, match=rf"image {web_server}/page.html cannot be decoded: .*not an image Pillow can read "
                                      r"\(a web page \(HTML\)\)"):
        load_rgb(f"{web_server}/page.html")
    # a reply of gigabytes (a wrong URL, a hostile list) was held whole in memory: read no further than any photo's size
    (tmp_path / "web" / "huge.jpg").write_bytes(b"\0" * (3 << 20))
    monkeypatch.setattr(images, "FETCH_MAX_BYTES", 2 << 20)
    with pytest.raises(OSError, match=rf"image {web_server}/huge.jpg could not be downloaded: it is larger than 2 MB"):
        load_rgb(f"{web_server}/huge.jpg")
    monkeypatch.undo()
    # a space and an accent, as a CMS's export writes them and a browser takes them: the run stopped on http.client's
    # InvalidURL (an error no row caught); quoted as a browser sends them, they are read
    upright_picture(48, 32).save(tmp_path / "web" / "hero image café.png")
    assert load_rgb(f"{web_server}/hero image café.png").size == (48, 32)
    assert load_rgb(f"{web_server}/hero%20image%20caf%C3%A9.png").size == (48, 32)  # quoted already: as it is
    with pytest.raises(OSError, match="could not be downloaded"):  # a control character: this image's error only
        load_rgb(f"{web_server}/photo.png\x00")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(OSError, match=rf"image http://127.0.0.1:{port}/photo.png could not be downloaded: .*refused"):
        load_rgb(f"http://127.0.0.1:{port}/photo.png")

    # mmcaption chat --image, as the Python API: a URL is downloaded (it was 'image not found: http:/...'), a folder named
    from mmcaption.chat import read_image
    from mmcaption.errors import ConfigError

    assert read_image(f"{web_server}/photo.png") == (tmp_path / "web" / "photo.png").read_bytes()
    with pytest.raises(ConfigError, match=rf"image {web_server}/missing.jpg could not be downloaded: HTTP 404"):
        read_image(f"{web_server}/missing.jpg")
    with pytest.raises(ConfigError, match=rf"image {tmp_path / 'web'} is a folder; chat talks about one image"):
        read_image(str(tmp_path / "web"))


def test_predict_reads_image_urls_in_lists_and_questions_files(backbones, trained_checkpoint, image_folder, web_server, tmp_path):
    from mmcaption.module import MultimodalCaptioner

    from .test_predict_export import QUESTIONS, caption_data, choice_data, predictor, write_csv

    for name in ("img0.png", "img1.png"):
        shutil.copy(image_folder / name, tmp_path / "web" / name)
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    images = tmp_path / "images.txt"  # a spreadsheet's column of image addresses, pasted into a list
    images.write_text(f"{web_server}/img0.png\n{web_server}/gone.png\n{image_folder / 'img1.png'}\n")
    predictor(tmp_path).predict(module, datamodule=caption_data(backbones, images, tmp_path / "captions.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == [f"{web_server}/img0.png", f"{web_server}/gone.png", str(image_folder / "img1.png")]
    assert rows[0]["error"] is None and "caption" in rows[0] and rows[2]["error"] is None
    assert rows[1]["error"] == f"image {web_server}/gone.png could not be downloaded: HTTP 404 File not found"

    # the original scripts' CSV with an image's URL: the same scores as with the file itself
    import csv

    by_url = write_csv(tmp_path / "by_url.csv", [dict(QUESTIONS[0], img_path=f"{web_server}/img0.png")])
    by_file = write_csv(tmp_path / "by_file.csv", [QUESTIONS[0]])
    scores = []
    for questions in (by_url, by_file):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, tmp_path / f"answers-{questions.name}"))
        with (tmp_path / f"answers-{questions.name}").open(newline="") as handle:
            [row] = list(csv.DictReader(handle))
        assert row["error"] == "" and row["prediction"] in "ABCD" and row["prediction"]
        scores.append(row["scores"])
    assert scores[0] == scores[1]


def test_a_multiple_choice_sheet_as_people_write_it(tmp_path):
    sheet = tmp_path / "quiz.csv"
    sheet.write_text("Image,Question,A,B,C,D,Answer\n"  # `image`, as the questions files name it
                     "a.png,What colour?,red,blue,green,white,c)\n"
                     "a.png,What colour?,red,blue,green,white,(B)\n"
                     "a.png,What colour?,red,blue,green,white,D.\n"
                     "a.png,What shape?,circle,Square,triangle,diamond,square\n"  # the option's text
                     "a.png,What shape?,circle,square,triangle,diamond,\n", encoding="utf-8")
    questions = read_choice_csv(sheet)
    assert [q.answer for q in questions] == ["C", "B", "D", "B", None] and questions[0].image == "a.png"
    # the key typed on a Mac (its accent a mark of its own) names the option written with the accented letter
    sheet.write_text("img_path,Question,A,B,C,answer\na.png,Màu gì?,đỏ,xanh,vàng,"
                     + unicodedata.normalize("NFD", "Vàng") + "\n", encoding="utf-8")
    assert [q.answer for q in read_choice_csv(sheet)] == ["C"]  # was "is neither one of A, B, C nor an option's text"

    sheet.write_text("img_path,Question,A,B,answer\na.png,What colour?,red,blue,purple\n")
    with pytest.raises(DataError, match=r"line 2: answer 'purple' is neither one of A, B nor an option's text"):
        read_choice_csv(sheet)
    sheet.write_text("img_path;Question;A;B;answer\na.png;What colour, then?;red;blue, dark;B\n")  # Excel where ',' is the decimal mark
    [question] = read_choice_csv(sheet)  # was refused: "save it comma-separated"
    assert (question.question, question.options, question.answer) == ("What colour, then?", ["red", "blue, dark"], "B")
    for name in ("quiz.tsv", "quiz.csv"):  # a .tsv, or a spreadsheet's tab-separated save
        (tmp_path / name).write_text("img_path\tQuestion\tA\tB\tanswer\na.png\tWhat colour, then?\tred\tblue, dark\tB\n")
        [question] = read_choice_csv(tmp_path / name)
        assert (question.question, question.options, question.answer) == ("What colour, then?", ["red", "blue, dark"], "B")
    sheet.write_text("img_path,Question,A,B,answer\na.png,What colour?,red,A\n")
    with pytest.raises(DataError, match=r"line 2: 4 fields where the header has 5 \(a field is missing\)"):
        read_choice_csv(sheet)
    sheet.write_bytes("img_path,Question,A,B\na.png,What colour?,red,blue\nb.png,Quelle couleur ?,rouge,bleu clair\n"
                      "c.png,Quel café ?,noir,crème\n".encode("cp1252"))  # Excel's plain "CSV": Windows-1252 (was refused)
    with pytest.warns(UserWarning, match=r"quiz\.csv is not UTF-8: read as Windows-1252, .*\('café' \(line 4\), 'crème' \(line 4\)\)"):
        questions = read_choice_csv(sheet)
    assert [(q.question, q.options) for q in questions][2] == ("Quel café ?", ["noir", "crème"])
    sheet.write_bytes("img_path,Question,A,B\na.png,\u041a\u0430\u043a\u043e\u0433\u043e \u0446\u0432\u0435\u0442\u0430?,"
                      "red,blue\n".encode("cp1251"))  # Russian's code page: not to be read as Windows-1252
    with pytest.raises(DataError, match=r'quiz\.csv, line 2: not UTF-8 text \(byte 0xca .*save it as "CSV UTF-8"'):
        read_choice_csv(sheet)
    sheet.write_bytes("img_path\tQuestion\tA\tB\na.png\tWhat colour?\tred\tblue\n".encode("utf-16"))  # "Unicode Text"
    with pytest.raises(DataError, match=r'quiz\.csv is UTF-16 text \(as Excel\'s "Unicode Text" saves it\), not UTF-8; save it as '
                                        r'"CSV UTF-8"'):  # was "likely Windows' local code page", at line 1
        read_choice_csv(sheet)


def test_a_sheets_own_columns_are_not_taken_for_results_and_no_option_is_left_out(tmp_path, monkeypatch):
    sheet = tmp_path / "quiz.csv"
    sheet.write_text("img_path,Question,A,B,C,D,correct\na.png,What colour?,red,blue,green,white,C\n")  # the user's key
    with pytest.raises(DataError, match=r"quiz.csv: column\(s\) \['correct'\] have the names predict writes its results under, "
                                        r"and the file is not an earlier predict's output .* name it 'answer'"):
        read_choice_csv(sheet)  # the output's own 'correct' column replaced it, and the note called it earlier results
    notes = []
    monkeypatch.setattr("mmcaption.data.choice_csv.rank_zero_info", notes.append)
    sheet.write_text("img_path,Question,A,B,C,D,label\na.png,What colour?,red,blue,green,white,C\n")
    [question] = read_choice_csv(sheet)
    assert question.answer is None and question.record["label"] == "C"  # kept in the output, as it is
    assert notes == [f"{sheet}: no 'answer' column, so no accuracy; column 'label' is kept as it is, not read as the answer "
                     "key: name it 'answer' if it is one"]
    sheet.write_text("img_path,Question,A,B,C,D,E,F,G,H,I,J,answer\na.png,Which?,1,2,3,4,5,6,7,8,9,10,B\n")
    with pytest.raises(DataError, match=r"column\(s\) \['I', 'J'\] follow option H, and a question has at most 8 options"):
        read_choice_csv(sheet)  # options I and J were never offered: an easier question, scored as the real one
    warned = []
    monkeypatch.setattr("mmcaption.data.choice_csv.rank_zero_warn", warned.append)
    sheet.write_text("img_path,Question,A,B,C,D,answer\na.png,Which vitamin?,Vitamin A,C,B12,D,C\n"
                     "a.png,Which letter?,d,c,b,a,b\na.png,What colour?,red,blue,green,white,B\n")
    assert [q.answer for q in read_choice_csv(sheet)] == ["C", "B", "B"]
    assert warned == [f"{sheet}: 2 answer(s) are both an option's letter and another option's text, and are read as the letter "
                      "(line 2: 'C' is read as option C, 'B12', not as option B, 'C'); check that the answer key means letters"]
    warned.clear()  # the same option twice (a copy-paste in the sheet): scored wrong when the key named the second, unsaid
    sheet.write_text("img_path,Question,A,B,C,D,answer\na.png,What colour?,red,blue,green,white,B\n"
                     "a.png,What shape?,white circle,white circle ,yellow diamond,White Circle,B\n")
    assert [q.options for q in read_choice_csv(sheet)][1] == ["white circle", "white circle", "yellow diamond", "White Circle"]
    assert warned == [f"{sheet}: 1 question(s) list the same option more than once, which no model can tell apart (line 3: "
                      "options A, B are 'white circle'); the first of them is chosen whenever any is likeliest, and an answer "
                      "key naming another counts as wrong"]
    # options written with their letters, as exam sheets are: asked without them (the prompt letters them), the answer
    # key read as the letter, the option as written or its text; the output gives the cells back as the file has them
    sheet.write_text("img_path,Question,A,B,C,D,answer\na.png,What colour?,A. red,B. blue,C. green,D. white,B. blue\n"
                     "a.png,What shape?,(A) circle,(B) square,(C) star,(D) ring,star\n")
    notes.clear()
    assert [(q.options, q.answer, q.record["A"]) for q in read_choice_csv(sheet)] == [
        (["red", "blue", "green", "white"], "B", "A. red"), (["circle", "square", "star", "ring"], "C", "(A) circle")]
    assert notes == [f"{sheet}: the options of 2 question(s) are written with their letters (line 2: 'A. red'), which the "
                     "prompt gives them itself; asked without them"]


def test_answer_keys_as_people_write_them_are_scored_by_the_letter_they_name(backbones, trained_checkpoint, image_folder, tmp_path):
    import csv

    import torch

    from mmcaption.module import MultimodalCaptioner

    from .test_predict_export import choice_data, predictor, write_csv

    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    planted = module.tokenizer(" blue", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():  # the model always picks the option "blue"
        module.model.language_model.get_base_model().lm_head.bias[planted] += 30.0
    written = ["(b)", "D.", "Blue", "b)", "B"]  # blue's letter as answer keys are written, or its text; C/D as pandas' NaN
    rows = [{"img_path": "images/img0.png", "Question": "What colour?", "A": "red", "B": "blue", "C": "green", "D": "white"},
            {"img_path": "images/img1.png", "Question": "What colour?", "A": "red", "B": "green", "C": "white", "D": "blue"},
            {"img_path": "images/img2.png", "Question": "What colour?", "A": "blue", "B": "red", "C": "nan", "D": "nan"},
            {"img_path": "images/img0.png", "Question": "What colour?", "A": "white", "B": "blue", "C": "red", "D": "green"},
            {"img_path": "images/img1.png", "Question": "What colour?", "A": "red", "B": "blue", "C": "NaN", "D": "NaN"}]
    output = tmp_path / "answers.csv"
    sheet = write_csv(tmp_path / "q.csv", [{**row, "answer": key} for row, key in zip(rows, written)])
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, sheet, output))
    with output.open() as handle:
        answered = list(csv.DictReader(handle))
    assert [r["prediction"] for r in answered] == ["B", "D", "A", "B", "B"]  # 2 options where pandas wrote NaN
    assert [len(json.loads(r["scores"])) for r in answered] == [4, 4, 2, 4, 2]  # JSON, without -Infinity for options not there
    assert [r["answer"] for r in answered] == ["B", "D", "A", "B", "B"] and all(r["correct"] == "True" for r in answered)
    assert json.loads(output.with_name("answers.csv.summary.json").read_text())["accuracy"] == 1.0


def test_unlabelled_questions_from_pandas_have_no_reference_answer(tmp_path):
    jsonl = tmp_path / "q.jsonl"  # json.dumps of a DataFrame's records writes a missing value as NaN
    jsonl.write_text(json.dumps({"image": "a.jpg", "question": "How many?", "answer": float("nan")}) + "\n"
                     + json.dumps({"image": "a.jpg", "question": "How many?", "answer": "two"}) + "\n")
    sheet = tmp_path / "q.csv"
    sheet.write_text("image,question,answer\na.jpg,How many?,nan\na.jpg,How many?,two\n")
    for path in (jsonl, sheet):
        unlabelled, labelled = read_questions(path)
        assert (unlabelled.answer, unlabelled.record["answer"]) == (None, None)  # scored nowhere, not against "nan"
        assert (labelled.answer, labelled.record["answer"]) == ("two", "two")
    jsonl.write_text(json.dumps({"image": "a.jpg", "question": "How many?", "answers": float("nan")}) + "\n")
    sheet.write_text("image,question,answers\na.jpg,How many?,nan\n")
    for path in (jsonl, sheet):  # no human answers: not refused as a list that is not one
        (unlabelled,) = read_questions(path)
        assert "answers" not in unlabelled.record and unlabelled.answer is None


def test_image_arrays_and_tensors_in_every_layout_people_hold_them_are_the_same_picture():
    import numpy as np
    import torch

    from mmcaption.images import load_rgb

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    photo[0, :2] = [[255, 255, 255], [0, 0, 0]]  # the picture's own ends, for the overshoot of a resize past them
    expected = np.asarray(load_rgb(photo))
    same = {
        "floats in 0-255, as astype(float32) leaves a photo": photo.astype(np.float32),  # was clipped to 1: all white
        "floats in [0, 1]": photo / 255.0,
        "a torch tensor, CxHxW in [0, 1] as torchvision's to_tensor gives": torch.from_numpy(photo.transpose(2, 0, 1) / 255.0).float(),
        "a uint8 torch tensor, HxWxC": torch.from_numpy(photo),
        # a bicubic resize of [0, 1] floats overshoots both ends: was read as 0-255, a black picture
        "floats in [0, 1] a resize took a little past both ends": np.where(photo == 255, 1.09, np.where(photo == 0, -0.04,
                                                                                                         photo / 255.0)),
        "floats in 0-255 a resize took a little past both ends": np.where(photo == 0, -9.0, photo.astype(float)),
        "uint16, as astype(np.uint16) leaves a photo": photo.astype(np.uint16),  # was read as 16-bit: black
        "int16": photo.astype(np.int16),
    }
    for what, image in same.items():
        assert np.abs(np.asarray(load_rgb(image)).astype(int) - expected).max() <= 1, what
    grey = rng.integers(0, 256, (6, 5, 1), dtype=np.uint8)  # HxWx1 was "Cannot handle this data type"
    assert (np.asarray(load_rgb(grey)) == np.repeat(grey, 3, axis=2)).all()
    mask = rng.random((6, 5)) > 0.5  # a boolean mask: white where True, not 0/1 levels (near black)
    assert (np.asarray(load_rgb(mask))[..., 0] == np.where(mask, 255, 0)).all()
    with pytest.raises(ValueError, match=r"an image array is HxW or HxWxC with 1, 3 or 4 channels \(a torch tensor also "
                                         r"CxHxW\); this one has shape \(2, 6, 5, 3\)"):
        load_rgb(np.stack([photo, photo]))
    # a NumPy array of 3 or 4 first is also that many greyscale frames: 3 read as one image's colours, a stack as one
    # caption (a string where a list was looked for); refused by name, where a torch tensor's CxHxW is its own layout
    frames = rng.integers(0, 256, (3, 6, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"shape \(3, 6, 5\) is one image with its channels first \(torch's layout\) or 3 "
                                         r"greyscale images: give one image as HxWxC \(np.moveaxis\(array, 0, -1\)\)"):
        load_rgb(frames)
    assert (np.asarray(load_rgb(frames[:1]))[..., 0] == frames[0]).all()  # 1 x H x W: one greyscale image either way
    with pytest.raises(ValueError, match=r"spans -2.* \(one normalized for a model\?\)"):  # was clipped: a dark image
        load_rgb((torch.from_numpy(photo.transpose(2, 0, 1) / 255.0).float() - 0.5) / 0.25)
    night = np.full((6, 5, 3), 9.0)  # a dark frame in 0-255 floats: no value above 16, still 0-255
    assert np.asarray(load_rgb(night)).max() == 9
    imagenet = (photo / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    with pytest.raises(ValueError, match=r"spans -2.* to 2.* \(one normalized for a model\?\)"):
        load_rgb(imagenet)
    failed = np.full((6, 5, 3), np.nan, dtype=np.float32)  # a 0/0 upstream: was captioned as a black picture
    with pytest.raises(ValueError, match=r"an image array of floats holds no number: all its 90 values are NaN or infinite"):
        load_rgb(failed)
    with pytest.raises(ValueError, match=r"holds no number"):
        load_rgb(torch.full((3, 6, 5), float("inf")))
    failed[0, 0] = 1.0  # a few missing pixels (a masked region) are read as black, the rest as they are
    assert np.asarray(load_rgb(failed))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(TypeError, match="an image is a path, an http.* or a tensor, not int"):
        load_rgb(7)


def test_a_caption_cell_of_several_lines_is_said_to_be_read_as_several_captions_and_can_be_read_whole(tmp_path):
    # Localized-Narratives-style paragraphs in a spreadsheet's cell: "kept 71 captions of 9 images" from 10 rows, each
    # paragraph trained as a caption of its own with its own end, and nothing said
    for index in range(2):
        (tmp_path / f"p{index}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (90 * index, 20, 20))))
    table = tmp_path / "captions.csv"
    table.write_text('image,caption\np0.jpg,"In this picture I can see a dog.\nIn the background there is grass.\n\nIt is sunny."\n'
                     'p1.jpg,a cat on a mat\n')

    def read(**settings):
        seen = BadRecords(str(table), "skip")
        rows = list(HubCaptions(str(table), "image", "caption", **settings).records("train", seen))
        return [[c for _, c in captions] for *_, captions in rows], seen

    captions, seen = read()
    assert captions == [["In this picture I can see a dog.", "In the background there is grass.", "It is sunny."],
                        ["a cat on a mat"]]
    assert [(kind, n) for kind, n in seen.notes.items() if kind.startswith(SPLIT_NOTE)] == [
        (SPLIT_NOTE + " (first: line 2, 3 captions)", 1)]
    # a list cell's items are split too, and counted as such (a JSON list of paragraphs)
    table.write_text('image,caption\np0.jpg,"[""One dog.\\nOn grass."", ""a dog""]"\np1.jpg,a cat on a mat\n')
    captions, seen = read()
    assert captions == [["One dog.", "On grass.", "a dog"], ["a cat on a mat"]]
    assert [n for kind, n in seen.notes.items() if kind.startswith(SPLIT_NOTE)] == [1]
    table.write_text('image,caption\np0.jpg,"In this picture I can see a dog.\nIn the background there is grass.\n\nIt is sunny."\n'
                     'p1.jpg,a cat on a mat\n')
    for whole in (None, ""):  # "" was a bare "ValueError: empty separator" traceback
        captions, seen = read(caption_separator=whole)
        assert captions == [["In this picture I can see a dog.\nIn the background there is grass.\n\nIt is sunny."],
                            ["a cat on a mat"]]
        assert not seen.notes


def test_a_spreadsheet_of_photos_and_captions_reads_as_a_spreadsheet_user_writes_it(tmp_path, monkeypatch):
    # a folder of one's own photos and a CSV of captions beside them (source: hub, hub_dataset: captions.csv)
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    mine = [jpeg(upright_picture(32, 32)), jpeg(Image.new("RGB", (32, 32), (200, 30, 30)))]
    (photos / "IMG_001.JPG").write_bytes(mine[0])
    (photos / "2024" / "IMG_002.JPG").write_bytes(mine[1])
    elsewhere = tmp_path / "elsewhere"  # where the command runs: another IMG_001.JPG (phones all name them so)
    elsewhere.mkdir()
    (elsewhere / "IMG_001.JPG").write_bytes(jpeg(Image.new("RGB", (32, 32), (0, 0, 255))))
    monkeypatch.chdir(elsewhere)
    table = photos / "captions.csv"
    rows = ["image,caption", "IMG_001.JPG,a sunny street", "IMG_001.JPG,NA", "2024\\IMG_002.JPG,\"a red wall, close\"",
            ",", "", "IMG_009.JPG,gone", "IMG_003.JPG,also gone"]
    table.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))  # Excel's "CSV UTF-8"

    def read(on_bad_record="skip"):
        seen = BadRecords(str(table), on_bad_record)
        return list(HubCaptions(str(table), "image", "caption").records("train", seen)), seen

    read_rows, seen = read()
    # the photo beside the CSV, not the one where the command runs; a Windows path; "NA" is a caption, not pandas' NaN
    assert [(image.source, [c for _, c in captions]) for _, _, image, captions in read_rows] == [
        (mine[0], ["a sunny street", "NA"]), (mine[1], ["a red wall, close"])]
    assert [name for _, name, _, _ in read_rows] == ["IMG_001.JPG", "2024\\IMG_002.JPG"]  # as the table names them
    assert seen.notes["empty rows (no image, no caption) left out"] == 2  # a cleared row (","), a blank line
    assert seen.counts == {"missing image": 2}
    with pytest.raises(DataError, match=r"2 of 7 rows name no image that is there \(first: line 7: its 'image' is 'IMG_009\.JPG', "
                                        r"not a file .*; line 8: "):  # both at once, by the spreadsheet's line numbers
        read("error")
    # held out from the one table: each note and each bad row counted once, on its side, not by both sides' reports
    sides = [BadRecords(str(table), "skip") for _ in range(2)]
    for name, seen in zip(("train.rest", "train.heldout"), sides):
        list(HubCaptions(str(table), "image", "caption", val_fraction=0.5).records(name, seen))
    assert sum(s.notes["empty rows (no image, no caption) left out"] for s in sides) == 2
    assert sum(s.notes["rows that repeat an earlier row's image: their captions go with that image"] for s in sides) == 1
    assert sum(s.counts["missing image"] for s in sides) == 2

    # Excel's plain "CSV" on Windows, where the comma is the decimal mark: semicolons, and Windows-1252 (was refused, "not
    # UTF-8 text ... save it as CSV UTF-8"): read as it is, said with the words read so
    table.write_bytes("image;caption\r\nIMG_001.JPG;a caf\xe9 on the stra\xdfe \u2013 \u201cnice\u201d\r\n".encode("cp1252"))
    with pytest.warns(UserWarning, match=r"captions\.csv is not UTF-8: read as Windows-1252, the code page of Excel's plain "
                                         r"\"CSV\" .*\('café' \(line 2\), 'straße' \(line 2\)\); if those words read wrong"):
        read_rows, _ = read()
    assert [[c for _, c in captions] for *_, captions in read_rows] == [["a café on the straße – “nice”"]]
    # Russian saved in its code page (Windows-1251) reads as words of accented letters alone in Windows-1252: refused
    table.write_bytes("image;caption\r\nIMG_001.JPG;\u043a\u043e\u0448\u043a\u0430\r\n".encode("cp1251"))
    with pytest.raises(DataError, match=r"captions\.csv, line 2: not UTF-8 text \(byte 0xea at 27\).*save it as \"CSV UTF-8\""):
        read()
    # saved as "CSV UTF-8" where the comma is the decimal mark: semicolons, and a comma inside a caption (it was refused,
    # "save it comma-separated"; before that, pandas failed on the caption's line and the advice was to quote it)
    table.write_bytes("\ufeffimage;caption\r\nIMG_001.JPG;a street\r\n2024\\IMG_002.JPG;a dog, asleep\r\n".encode("utf-8"))
    read_rows, seen = read()
    assert [(image.source, [c for _, c in captions]) for _, _, image, captions in read_rows] == [
        (mine[0], ["a street"]), (mine[1], ["a dog, asleep"])]


def test_tables_that_do_not_read_name_the_file_line_and_cause_and_every_bad_photo_at_once(backbones, tmp_path):
    # each ended in datasets' traceback (DatasetGenerationError), or named no file ("SplitsNotFoundError"),
    # or a KeyError; a photo that does not decode was named one per run, by its row alone
    import pandas as pd

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(4):
        (photos / f"IMG_{index}.JPG").write_bytes(jpeg(Image.new("RGB", (32, 32), (60 * index, 30, 30))))

    def read(dataset, on_bad_record="error"):
        return list(HubCaptions(str(dataset), "image", "caption").records("train", BadRecords(str(dataset), on_bad_record)))

    table = photos / "captions.csv"
    table.write_text("image,caption\nIMG_0.JPG,a street\nIMG_1.JPG,a red wall, close up\n")  # a comma, unquoted
    with pytest.raises(DataError, match=r"captions\.csv: cannot be read as a dataset: ParserError: .*Expected 2 fields in line 3, "
                                        r"saw 3; a caption with a comma \(or a quote\) must be in quotes"):
        read(table)
    lines = photos / "captions.jsonl"
    lines.write_text('{"image": "IMG_0.JPG", "caption": "a"}\n{"image": "IMG_1.JPG", "caption": "b"},\n')
    with pytest.raises(DataError, match=r"captions\.jsonl, line 2: not valid JSON Lines"):
        read(lines)
    lines.unlink()
    pd.DataFrame({"image": ["IMG_0.JPG", "IMG_1.JPG"], "caption": ["a", "b"]}).to_json(photos / "pandas.json")  # its default
    # (it was refused, saying to write it with orient='records'): read as its rows, as the records layout reads
    assert [name for name, _ in HubCaptions(str(photos / "pandas.json"), "image", "caption").image_files("train")] == [
        "IMG_0.JPG", "IMG_1.JPG"]
    (photos / "pandas.json").unlink()
    # a folder of tables, and an imagefolder whose metadata.csv Excel saved in Windows' code page: the file named
    table.unlink()  # (a table that names no split beside split-named ones is refused)
    table = photos / "train.csv"
    table.write_text("image,caption\nIMG_0.JPG,a street\n")
    (photos / "test.csv").write_bytes("image,caption\nIMG_1.JPG,a caf\xe9\n".encode("cp1252"))
    with pytest.warns(UserWarning, match=r"test\.csv is not UTF-8: read as Windows-1252"):  # beside ASCII alone: read
        assert [[c for _, c in captions] for *_, captions in HubCaptions(str(photos), "image", "caption").records(
            "test", BadRecords("test.csv"))] == [["a café"]]
    shards = [photos / f"test-0000{k}-of-00002.csv" for k in range(2)]  # a split of two tables: one UTF-8, one not
    shards[0].write_bytes("image,caption\nIMG_2.JPG,a caf\xe9\n".encode("cp1252"))
    shards[1].write_text("image,caption\nIMG_3.JPG,a street \u2013 wet\n", encoding="utf-8")
    (photos / "test.csv").unlink()
    with pytest.raises(DataError, match=r"photos/test-00000-of-00002\.csv is Windows-1252 text \(Excel's plain \"CSV\"\) and "
                                        r".*test-00001-of-00002\.csv is UTF-8: the tables of one dataset are read in one encoding"):
        list(HubCaptions(str(photos), "image", "caption").records("test", BadRecords("photos")))
    for shard in shards:
        shard.unlink()
    (photos / "test.csv").write_bytes("image,caption\nIMG_1.JPG,\u4e00\u53ea\u72d7\n".encode("gbk"))  # Chinese's code page
    with pytest.raises(DataError, match=r"photos/test\.csv, line 2: not UTF-8 text"):
        read(photos)
    (photos / "test.csv").write_text("image,caption\nIMG_1.JPG,NA\n")  # read as one CSV is: "NA" is a caption, not pandas' NaN
    tested = HubCaptions(str(photos), "image", "caption").records("test", BadRecords("test.csv"))
    assert [(name, [c for _, c in captions]) for _, name, _, captions in tested] == [("IMG_1.JPG", ["NA"])]
    # the folder's tables saved where the comma is the decimal mark: read at semicolons; one at commas among them is named
    (photos / "train.csv").write_text("image;caption\nIMG_0.JPG;a street, wet\n")
    (photos / "test.csv").write_text("image;caption\nIMG_1.JPG;a door, red\n")
    tested = HubCaptions(str(photos), "image", "caption").records("test", BadRecords("test.csv"))
    assert [(name, [c for _, c in captions]) for _, name, _, captions in tested] == [("IMG_1.JPG", ["a door, red"])]
    (photos / "test.csv").write_text("image,caption\nIMG_1.JPG,a door\n")
    with pytest.raises(DataError, match=r"is separated by (commas|semicolons), and .* by (semicolons|commas): the tables of one "
                                        r"dataset are read with one separator"):
        list(HubCaptions(str(photos), "image", "caption").records("test", BadRecords("test.csv")))
    for name in ("train.csv", "test.csv"):  # (the first is table's)
        (photos / name).unlink()
    # a folder's split in several tables: a bad row is named by its table and line, as a spreadsheet numbers it (was "row 3")
    (photos / "train-00000-of-00002.csv").write_text("image,caption\nIMG_0.JPG,a street\nIMG_1.JPG,a wall\n")
    (photos / "train-00001-of-00002.csv").write_text("image,caption\nIMG_2.JPG,a door\nIMG_9.JPG,a car\n")
    with pytest.raises(DataError, match=r"train-00001-of-00002\.csv, line 3: its 'image' is 'IMG_9\.JPG'"):
        list(HubCaptions(str(photos), "image", "caption").records("train", BadRecords("photos")))
    for name in ("train-00000-of-00002.csv", "train-00001-of-00002.csv"):
        (photos / name).unlink()
    # JSON Lines as an editor numbers its lines, a blank one included (was "row 2 (key 2)", counted from 0)
    jsonl_rows = ['{"image": "IMG_0.JPG", "caption": "a street"}', "", '{"image": "IMG_1.JPG", "caption": "a wall"}',
                  '{"image": "IMG_9.JPG", "caption": "a car"}']
    (photos / "captions.jsonl").write_text("\n".join(jsonl_rows) + "\n")
    with pytest.raises(DataError, match=r"line 4: its 'image' is 'IMG_9\.JPG'"):
        list(HubCaptions(str(photos / "captions.jsonl"), "image", "caption").records("train", BadRecords("captions.jsonl")))
    (photos / "captions.jsonl").rename(photos / "train-00001-of-00002.jsonl")
    (photos / "train-00000-of-00002.jsonl").write_text(jsonl_rows[0] + "\n")
    with pytest.raises(DataError, match=r"train-00001-of-00002\.jsonl, line 4: its 'image' is 'IMG_9\.JPG'"):
        list(HubCaptions(str(photos), "image", "caption").records("train", BadRecords("photos")))
    for name in ("train-00000-of-00002.jsonl", "train-00001-of-00002.jsonl"):
        (photos / name).unlink()
    (photos / "metadata.csv").write_bytes("file_name,caption\nIMG_0.JPG,a caf\xe9\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"photos/metadata\.csv is not UTF-8 \(Windows-1252, as Excel's plain \"CSV\" saves it\), "
                                        r"and datasets' image folder reads UTF-8 only: save it from the spreadsheet as"):
        list(HubCaptions(str(photos)).records("train", BadRecords("photos")))
    (photos / "metadata.csv").write_text("file_name;caption\nIMG_0.JPG;a street\n")  # datasets reads it at commas only
    with pytest.raises(DataError, match=r"photos/metadata\.csv: an image folder's metadata\.csv is read at commas, and this one is "
                                        r"separated by semicolons: save it comma-separated"):
        list(HubCaptions(str(photos)).records("train", BadRecords("photos")))
    (photos / "metadata.csv").unlink()
    # two photos that do not decode: both named, with their paths, in one run
    (photos / "IMG_1.JPG").write_bytes(b"junk")
    (photos / "IMG_3.JPG").write_bytes(b"")
    table.write_text("image,caption\n" + "".join(f"IMG_{index}.JPG,photo {index}\n" for index in range(4)))
    dm = CaptionDataModule(data_dir=str(tmp_path / "data"), source="hub", hub_dataset=str(table), hub_image_column="image",
                           hub_caption_column="caption", hub_val_fraction=0, val_split="train",
                           tokenizer=str(backbones[0]), image_processor=str(backbones[1]), num_workers=0, batch_size=2)
    with pytest.raises(DataError, match=r"2 x unreadable image \(first: line 3: its image 'IMG_1\.JPG' cannot be decoded: .*; "
                                        r"line 5: its image 'IMG_3\.JPG' cannot be decoded"):
        dm.prepare_data()


def private(monkeypatch, *folders: Path) -> None:
    """``folders`` as another user's private ones look to this one (tests may run as root, whom permissions do not stop)."""
    scandir, stat = os.scandir, Path.stat
    refused = {str(folder) for folder in folders}

    def listed(path="."):
        if os.fspath(path) in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    def looked_at(path, *args, **kwargs):
        if str(path.parent) in refused:
            raise PermissionError(13, "Permission denied", str(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", listed)
    monkeypatch.setattr(Path, "stat", looked_at)


def test_a_folder_that_cannot_be_read_is_said_not_passed_over(tmp_path, monkeypatch):
    # a teammate's private subfolder: predict captioned the rest and never said 3 photos were left out; training was
    # refused naming a "state.json" the user never had, with advice about the cache folder
    folder = tmp_path / "scans"
    (folder / "private").mkdir(parents=True)
    photo = jpeg(upright_picture(32, 32))
    for name in ("a.jpg", "b.jpg", "private/c.jpg", "private/d.jpg"):
        (folder / name).write_bytes(photo)
        (folder / name).with_suffix(".txt").write_text("a cell")
    private(monkeypatch, folder / "private")
    notes = []
    assert [p.name for p in find_images(str(folder), note=notes.append)] == ["a.jpg", "b.jpg"]
    said = f"{folder}: 1 folder could not be read (permission denied, the first: {folder / 'private'}): the images in it are left out"
    assert notes[-1] == said
    infos = []
    monkeypatch.setattr("mmcaption.data.folder_layouts.rank_zero_info", infos.append)
    from mmcaption.data.folder_layouts import user_files

    assert sorted(p.name for p in user_files(folder, None)) == ["a.jpg", "a.txt", "b.jpg", "b.txt"]
    assert infos == [said]
    private(monkeypatch, folder)
    with pytest.raises(DataError, match=f"folder {folder} cannot be read \\(permission denied\\)"):
        find_images(str(folder))
    with pytest.raises(DataError, match=f"folder {folder} cannot be read \\(permission denied\\)"):
        user_files(folder, None)
    with pytest.raises(DataError, match=f"folder {folder} cannot be read \\(permission denied\\)"):  # as training reads it
        HubCaptions(str(folder))  # (was "permission denied: .../dataset_dict.json", a file the user never had)


def test_each_side_of_a_held_out_split_notes_its_own_rows(tmp_path):
    # a single split held out by image: the photos the metadata file does not list were noted on the 1-image validation
    # side alone (the training side said "skipped none"), and a note's example was a row of the other side
    from mmcaption.data.table_rows import HELD_OUT, REST

    listed = tmp_path / "listed"
    listed.mkdir()
    for index in range(12):
        (listed / f"img{index:02d}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (20 * index, 30, 30))))
    (listed / "metadata.csv").write_text("file_name,caption\n" + "".join(f"img{i:02d}.jpg,a square {i}\n" for i in range(7)))
    notes = {}
    for side in (REST, HELD_OUT):
        notes[side] = BadRecords(str(listed))
        list(HubCaptions(str(listed), "image", "caption", val_fraction=0.3).records("train" + side, notes[side]))
    assert dict(notes[REST].notes) == {"images beside the listed ones that the metadata file does not list, left out "
                                       f"(first: {listed / 'img07.jpg'})": 5}
    assert not notes[HELD_OUT].notes
    texts = tmp_path / "texts"  # each photo with a .txt of two captions, a cell split in two
    texts.mkdir()
    for index in range(10):
        (texts / f"p{index}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (25 * index, 90, 30))))
        (texts / f"p{index}.txt").write_text(f"a square {index}\nanother square {index}\n")
    for side in (REST, HELD_OUT):
        seen = BadRecords(str(texts))
        names = [name for _, name, _, _ in HubCaptions(str(texts), val_fraction=0.2).records("train" + side, seen)]
        [(note, count)] = seen.notes.items()
        assert count == len(names) and f"(key {names[0]})" in note  # its own first row, not the other side's


def test_photos_an_imagefolders_metadata_does_not_list_are_counted(tmp_path):
    # datasets' imagefolder leaves out a photo its metadata.csv has no line for; the summary said "skipped none"
    for index in range(4):
        (tmp_path / f"IMG_{index}.JPG").write_bytes(jpeg(Image.new("RGB", (32, 32), (60 * index, 30, 30))))
    (tmp_path / "metadata.csv").write_text("file_name,caption\nIMG_0.JPG,a street\nIMG_2.JPG,a wall\n")
    seen = BadRecords(str(tmp_path))
    assert len(list(HubCaptions(str(tmp_path), "image", "caption").records("train", seen))) == 2
    assert dict(seen.notes) == {"images beside the listed ones that the metadata file does not list, left out "
                                f"(first: {tmp_path / 'IMG_1.JPG'})": 2}
    # a line naming a photo in another case (a sheet typed on Windows): the photo is used, and not counted left out
    (tmp_path / "metadata.csv").write_text("file_name,caption\nimg_0.jpg,a street\nIMG_1.JPG,a door\nIMG_2.JPG,a wall\n"
                                           "IMG_3.JPG,a car\n")
    seen = BadRecords(str(tmp_path))
    assert len(list(HubCaptions(str(tmp_path), "image", "caption").records("train", seen))) == 4
    assert not seen.notes


def test_a_catalogs_paths_from_another_machine_or_without_a_suffix_get_advice_that_finds_the_photo(tmp_path):
    # "run from <folder>" was said of an absolute path, which no working folder changes, and a product id without its
    # ".jpg" was not said to have a photo of that name beside it
    folder = tmp_path / "catalog"
    folder.mkdir()
    for sku in ("SKU1000", "SKU1001"):
        (folder / f"{sku}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (200, 30, 30))))
    table = folder / "products.csv"
    table.write_text("image,caption\nC:\\Users\\anna\\Desktop\\Katalog\\Bilder\\SKU1000.jpg,a red mug\nSKU1001,a red lamp\n")
    with pytest.raises(DataError) as refused:
        list(HubCaptions(str(table), "image", "caption").records("train", BadRecords(str(table))))
    said = str(refused.value)
    assert (f"{folder / 'SKU1000.jpg'} has that name, not that folder: write the path relative to {folder} (SKU1000.jpg)"
            in said and "run from" not in said)
    assert "its 'image' is 'SKU1001', not a file" in said
    assert f"{folder / 'SKU1001.jpg'} is there: write the names with their suffix (SKU1001.jpg)" in said


def test_a_table_without_the_configs_column_names_is_told_its_own(tmp_path):
    # a catalog's export (id,image,price,caption) with the caption config's defaults (jpg, txt): the columns were listed,
    # not which settings would read them
    table = tmp_path / "products.csv"
    table.write_text("id,Image,price,Caption\n1,a.jpg,\"3,50\",a red mug\n")
    with pytest.raises(DataError, match=r"has no column\(s\) \['jpg', 'txt'\] .*; its columns by their names: "
                                        r"--data\.init_args\.hub_image_column Image --data\.init_args\.hub_caption_column Caption$"):
        list(HubCaptions(str(table)).records("train", BadRecords(str(table))))
    studio = tmp_path / "project-1-at-2026-11-30.json"  # Label Studio's JSON export: the image and texts nested in each task
    studio.write_text(json.dumps([{"id": 1, "data": {"image": "/data/upload/1/a.jpg"}, "annotations": [
        {"result": [{"value": {"text": ["a red mug"]}, "from_name": "caption", "type": "textarea"}]}], "predictions": []}]))
    with pytest.raises(DataError, match=r"it is a Label Studio export \(tasks with 'data' and 'annotations'\): export the "
                                        r"project as CSV or JSON-MIN instead"):
        list(HubCaptions(str(studio)).records("train", BadRecords(str(studio))))
    # a photo's captions a column each (caption_1 ... caption_3, as a spreadsheet or Flickr8k's copies have them): the
    # list of them is named (was nothing about captions)
    table.write_text("image,Caption 1,caption_2,caption3\na.jpg,a red mug,a mug,red\n")
    with pytest.raises(DataError, match=r"has no column\(s\) \['caption'\] .*; its columns by their names: "
                                        r"--data\.init_args\.hub_caption_column '\[Caption 1, caption_2, caption3\]'$"):
        list(HubCaptions(str(table), "image", "caption").records("train", BadRecords(str(table))))
    table.write_text("id,sku,price\n1,a,3\n")  # nothing to guess from: the columns alone, as before
    with pytest.raises(DataError, match=r"its columns are \['id', 'sku', 'price'\]$"):
        list(HubCaptions(str(table)).records("train", BadRecords(str(table))))


def test_a_radiologists_dicom_scans_are_named_for_what_they_are(tmp_path):
    # case0.dcm + case0.txt was read by datasets as a text dataset ("has no column(s) ['jpg', 'txt']; its columns are
    # ['text']", the scans never named), and a table naming the scans said "its first bytes are 00 00 00 00"
    scan = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\0" * 64  # the preamble, then the magic
    folder = tmp_path / "scans"
    folder.mkdir()
    for case in range(3):
        (folder / f"case{case}.dcm").write_bytes(scan)
        (folder / f"case{case}.txt").write_text("no acute findings")
    with pytest.raises(DataError, match=rf"{folder}: its caption \.txt files are beside 3 files that are not images by their "
                                        r"names \(\.dcm; case0\.dcm: not an image Pillow can read \(a DICOM file: "
                                        r"convert it to PNG first"):
        HubCaptions(str(folder)).load("train")
    # a table with its text export beside it (Excel's "Text (Tab delimited)"), a licence: read as before, not refused
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "products.csv").write_text("image,caption\n../scans/a.png,a red mug\n")
    (tables / "products.txt").write_text("image\tcaption\n../scans/a.png\ta red mug\n")
    (tables / "LICENSE").write_text("CC BY 4.0")
    (tables / "LICENSE.txt").write_text("CC BY 4.0")
    from mmcaption.data.folder_layouts import folder_layout

    assert folder_layout(tables, sorted(tables.iterdir()), ("image", "caption")) == (None, None)
    # a table naming them: each row's error (training's, predict's) says what the file is
    assert check_image(scan) == ("not an image Pillow can read (a DICOM file: convert it to PNG first (pydicom reads it, "
                                 "with its window applied))")


def test_popes_label_is_the_answer_a_question_is_scored_against(tmp_path):
    # POPE's files ({"question_id", "image", "text", "label": "yes"}) ran unscored, the label unread, without a word
    pope = tmp_path / "pope.jsonl"
    pope.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}) + "\n")
    (question,) = read_questions(pope)
    assert (question.question, question.answer) == ("Is there a dog in the image?", "yes")


def test_popes_label_files_as_downloaded_are_json_lines_named_json(tmp_path):
    # coco_pope_random.json is JSON Lines under a .json name (LLaVA reads it line by line): it was "not valid JSON"
    rows = [{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
             "label": "yes"},
            {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dog in the image?", "label": "no"}]
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [(q.question, q.answer) for q in read_questions(pope)] == [(r["text"], r["label"]) for r in rows]
    pope.write_text("\n" + json.dumps(rows[0]) + "\n")  # one question (after a blank line): was "not VQAv2's official file"
    assert [(q.question, q.answer) for q in read_questions(pope)] == [(rows[0]["text"], "yes")]
    # one list of the same objects, as a script's json.dump writes it
    listed = tmp_path / "questions.json"
    listed.write_text(json.dumps(rows, indent=2))
    assert [(q.image, q.answer) for q in read_questions(listed)] == [(r["image"], r["label"]) for r in rows]
    listed.write_text(json.dumps([rows[0], {"image": "a.jpg"}]))
    with pytest.raises(DataError, match=r"questions.json, record 2: no question"):
        read_questions(listed)


def test_a_sheet_made_on_windows_or_macos_finds_its_photos_on_linux(tmp_path, monkeypatch):
    # Windows and macOS find a file whatever the case and Unicode form a sheet writes; Linux did not: "not a file"
    folder = tmp_path / unicodedata.normalize("NFD", "Fotos für Tests")  # a folder macOS wrote, decomposed
    folder.mkdir()
    for name, colour in (("café rouge.JPG", "red"), ("IMG_0002.JPG", "blue")):
        Image.new("RGB", (16, 16), colour).save(folder / unicodedata.normalize("NFC", name), format="JPEG")
    table = tmp_path / "captions.csv"
    table.write_text(" Image ,Caption \n"  # headed as people type them: were "has no column(s) ['caption', 'image']"
                     "Fotos für Tests/CAFÉ ROUGE.jpg ,a red wall\n"  # another case, a space typed after it
                     "fotos für tests/img_0002.jpg,a blue wall\n", encoding="utf-8")
    seen = BadRecords(str(table), "error")
    rows = list(HubCaptions(str(table), "image", "caption").records("train", seen))
    assert [(name, [c for _, c in captions]) for _, name, _, captions in rows] == [
        ("Fotos für Tests/CAFÉ ROUGE.jpg ", ["a red wall"]), ("fotos für tests/img_0002.jpg", ["a blue wall"])]
    assert [load_rgb(image.source).getpixel((8, 8))[0] > 200 for _, _, image, _ in rows] == [True, False]

    # the Python API and chat, given a name typed in the other form and case
    monkeypatch.chdir(tmp_path)
    typed = unicodedata.normalize("NFC", "fotos für tests/Café Rouge.jpg")
    assert load_rgb(typed).getpixel((8, 8))[0] > 200  # was FileNotFoundError
    from mmcaption.chat import read_image

    assert check_image(read_image(typed)) is None  # was "image not found"
    uri = (folder / unicodedata.normalize("NFC", "café rouge.JPG")).as_uri()  # chat's /image with a file manager's copy
    assert read_image(uri) == read_image(typed)  # was "image not found: file:/..."
    (found,) = find_images(typed)  # predict --data.images with one photo: was "image source not found"
    assert found.is_file() and found.samefile(folder / unicodedata.normalize("NFC", "café rouge.JPG"))


def test_photos_captions_written_by_a_windows_program_are_read_with_one_note_for_all(tmp_path):
    # photo1.jpg + photo1.txt written on Windows (a captioning script's open(..., "w"): Windows-1252) was refused
    # ("not UTF-8 text"), though a CSV in that code page is read: each file is read, all of them said in one note
    folder = tmp_path / "captioned"
    folder.mkdir()
    texts = {"photo0": "un café à Paris", "photo1": "a plain caption", "photo2": "eine Straße\r\nzweite Zeile"}
    for index, (name, text) in enumerate(texts.items()):
        (folder / f"{name}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (70 * index, 20, 20))))
        (folder / f"{name}.txt").write_bytes(text.encode("utf-8" if name == "photo1" else "cp1252"))
    hub = HubCaptions(str(folder))
    with pytest.warns(UserWarning) as said:
        read = {side: [(name, [c for _, c in texts]) for _, name, _, texts in hub.records(side, BadRecords(str(folder)))]
                for side in ("train.rest", "train.heldout")}  # the two sides of a held-out split: one note
    assert sorted(row for rows in read.values() for row in rows) == [
        ("photo0.jpg", ["un café à Paris"]), ("photo1.jpg", ["a plain caption"]), ("photo2.jpg", ["eine Straße", "zweite Zeile"])]
    notes = [str(warning.message) for warning in said if "UTF-8" in str(warning.message)]
    assert notes == [f"2 caption file(s) beside the photos are not UTF-8: read as Windows-1252, as Windows programs write "
                     f"text by default (the first, {folder / 'photo0.txt'}: 'café' (line 1), 'à' (line 1)); if those words "
                     "read wrong, save them as UTF-8"]
    # Russian in its own code page (Windows-1251) would read as words of accented letters alone: refused, named
    (folder / "photo1.txt").write_bytes("красный квадрат".encode("cp1251"))
    with pytest.raises(DataError, match=r"photo1\.txt, line 1: not UTF-8 text \(byte 0xea at 0\), likely Windows' local code "
                                        r"page; write it as UTF-8"):
        list(HubCaptions(str(folder)).records("train", BadRecords(str(folder))))


def test_photos_captioned_in_caption_files_as_kohya_writes_them_are_read_and_their_tags_left_out(tmp_path, monkeypatch):
    # photo1.jpg + photo1.caption (kohya's sd-scripts' captions) were left out: the photos "have no column(s) ['jpg', 'txt']"
    folder = tmp_path / "kohya"
    folder.mkdir()
    for index in range(3):
        (folder / f"photo{index}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (70 * index, 20, 20))))
        (folder / f"photo{index}.caption").write_text(f"a photo of a dog {index}")
    said: list[str] = []
    monkeypatch.setattr("mmcaption.data.folder_layouts.rank_zero_info", said.append)

    def read() -> list[tuple[str, list[str]]]:
        hub = HubCaptions(str(folder))
        return sorted((name, [c for _, c in texts]) for split in ("train.rest", "train.heldout")
                      for _, name, _, texts in hub.records(split, BadRecords(str(folder))))

    assert read() == [(f"photo{i}.jpg", [f"a photo of a dog {i}"]) for i in range(3)]
    assert said == [f"{folder}: 3 photos, each captioned by the .caption file of its name beside it (columns 'jpg' and 'txt'; "
                    "several lines: several captions; a photo without one is refused)"]
    # its taggers' tags in .txt beside them: the captions are read, the tags left out, and said so
    for index in range(3):
        (folder / f"photo{index}.txt").write_text("dog, grass, outdoors")
    said.clear()
    assert read() == [(f"photo{i}.jpg", [f"a photo of a dog {i}"]) for i in range(3)]
    assert said[0] == (f"{folder}: its photos have .caption files beside them and .txt files too: the .caption files are read "
                       "as their captions, the 3 .txt files left out (kohya's sd-scripts write captions in .caption files and "
                       "tags in .txt files)")
    # one stray .caption beside photos captioned in .txt files: the .txt captions are read, not one photo's caption alone
    for index in (1, 2):
        (folder / f"photo{index}.caption").unlink()
        (folder / f"photo{index}.txt").write_text(f"a dog {index}")
    said.clear()
    assert read() == [("photo0.jpg", ["dog, grass, outdoors"]), ("photo1.jpg", ["a dog 1"]), ("photo2.jpg", ["a dog 2"])]
    assert said[0].endswith("the .txt files are read as their captions, the 1 .caption files left out (kohya's sd-scripts "
                            "write captions in .caption files and tags in .txt files)")


def test_a_json_map_of_each_photos_captions_is_their_table_and_a_workbook_beside_them_is_named(tmp_path):
    # {"photo0.jpg": "a caption", ...}, as captioning scripts save their output, beside the photos was taken for a record
    # about something and left out (the photos "have no column(s) ['caption']"); given itself, or with a list of captions
    # each, its file names were read as columns
    folder = tmp_path / "captioned"
    folder.mkdir()
    for index in range(3):
        (folder / f"photo{index}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (70 * index, 20, 20))))
    maps = {"one": {f"photo{i}.jpg": f"a photo {i}" for i in range(3)},
            "several": {"photo0.jpg": ["a photo 0", "the first"], "photo1.jpg": "a photo 1", "photo2.jpg": ["a photo 2"]},
            "records": {f"photo{i}.jpg": {"caption": f"a photo {i}", "tags": "red"} for i in range(3)}}
    expected = {"one": [[f"a photo {i}"] for i in range(3)], "several": [["a photo 0", "the first"], ["a photo 1"], ["a photo 2"]],
                "records": [[f"a photo {i}"] for i in range(3)]}
    for kind, mapping in maps.items():
        (folder / "captions.json").write_text(json.dumps(mapping, indent=2))
        for dataset in (folder, folder / "captions.json"):
            hub = HubCaptions(str(dataset))  # the columns as the settings' defaults name them (jpg, txt): the map's own
            rows = [(name, [c for _, c in texts]) for split in ("train.rest", "train.heldout")
                    for _, name, _, texts in hub.records(split, BadRecords(str(dataset)))]
            assert sorted(rows) == [(f"photo{i}.jpg", expected[kind][i]) for i in range(3)], (kind, dataset)
    # a captioner's map kept beside photos that have their own caption files: those are read, the map left out and said
    # (it was taken for a second table: "holds photos with caption files beside them and a table")
    (folder / "captions.json").write_text(json.dumps({f"photo{i}.jpg": {"tags": "red"} if i == 0 else {"caption": f"map {i}"}
                                                      for i in range(3)}))
    for index in range(3):
        (folder / f"photo{index}.txt").write_text(f"own {index}")
    rows = [(name, [c for _, c in texts]) for split in ("train.rest", "train.heldout")
            for _, name, _, texts in HubCaptions(str(folder)).records(split, BadRecords(str(folder)))]
    assert sorted(rows) == [(f"photo{i}.jpg", [f"own {i}"]) for i in range(3)]
    for index in range(3):
        (folder / f"photo{index}.txt").unlink()
    # read alone, a map whose first record has no caption keeps the others' (the columns were the first record's alone)
    seen = BadRecords(str(folder), "skip")
    rows = [(name, [c for _, c in texts]) for split in ("train.rest", "train.heldout")
            for _, name, _, texts in HubCaptions(str(folder)).records(split, seen)]
    assert sorted(rows) == [("photo1.jpg", ["map 1"]), ("photo2.jpg", ["map 2"])] and sum(seen.counts.values()) == 1
    # the map named metadata.json (no image folder's metadata file), or in a folder of its own: read; two maps as a
    # folder's splits are refused naming one (datasets read neither, with a message about its json reader)
    (folder / "captions.json").write_text(json.dumps({f"photo{i}.jpg": f"map {i}" for i in range(3)}))
    (folder / "captions.json").rename(folder / "metadata.json")
    rows = [name for split in ("train.rest", "train.heldout")
            for _, name, _, _ in HubCaptions(str(folder)).records(split, BadRecords(str(folder)))]
    assert sorted(rows) == [f"photo{i}.jpg" for i in range(3)]
    (folder / "notes").mkdir()
    (folder / "metadata.json").rename(folder / "notes" / "captions.json")
    (folder / "notes" / "captions.json").write_text(json.dumps({f"../photo{i}.jpg": f"map {i}" for i in range(3)}))
    rows = [name for split in ("train.rest", "train.heldout")
            for _, name, _, _ in HubCaptions(str(folder / "notes")).records(split, BadRecords(str(folder)))]
    assert sorted(rows) == [f"../photo{i}.jpg" for i in range(3)]
    (folder / "notes" / "captions.json").rename(folder / "train.json")
    (folder / "train.json").write_text(json.dumps({"photo0.jpg": "a", "photo1.jpg": "b"}))
    (folder / "test.json").write_text(json.dumps({"photo2.jpg": "c"}))
    with pytest.raises(DataError, match=r"captioned holds 2 tables, and test\.json is a map of the photos' captions, which is "
                                        r"read alone: give it as hub_dataset"):
        HubCaptions(str(folder)).split_names()
    (folder / "test.json").unlink()
    (folder / "train.json").rename(folder / "captions.json")
    # the captions in a workbook beside the photos (Excel's own file): named, where it was left out without a word and the
    # photos said to "have no column(s) ['jpg', 'txt']"
    (folder / "captions.json").rename(folder / "captions.xlsx")
    with pytest.raises(DataError, match=r"captioned holds photos and a spreadsheet workbook, captions\.xlsx, which is not "
                                        r"read: save it beside them as CSV UTF-8 \(File > Save As > CSV UTF-8\)"):
        HubCaptions(str(folder))
    # an album's record of itself beside the photos is still not taken for their captions
    (folder / "captions.xlsx").rename(folder / "album.json")
    (folder / "album.json").write_text(json.dumps({"title": "Holidays", "cover": "photo0.jpg"}))
    with pytest.raises(DataError, match=r"has no column\(s\) \['jpg', 'txt'\] .*; its columns are \['image'\]"):
        list(HubCaptions(str(folder)).records("train.rest", BadRecords(str(folder))))


def test_own_photo_layouts_read_or_say_how_to_make_them_readable(tmp_path, capsys, monkeypatch):
    import datasets

    def photos(folder: Path, count: int = 3) -> Path:
        folder.mkdir(parents=True)
        for index in range(count):
            (folder / f"photo{index}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (70 * index, 20, 20))))
        return folder

    # photos in images/ and captions.csv beside them, the folder given: datasets read it as an image folder without
    # captions and raised ValueError ("doesn't have a 'keep_default_na' key"); the one table is the dataset
    project = tmp_path / "mydata"
    photos(project / "images")
    (project / "captions.csv").write_text("image,caption\n" + "".join(f"images/photo{i}.jpg,photo {i}\n" for i in range(3)))
    rows = list(HubCaptions(str(project), "image", "caption").records("train", BadRecords("mydata")))
    assert [(name, [c for _, c in captions]) for _, name, _, captions in rows] == [(f"images/photo{i}.jpg", [f"photo {i}"])
                                                                                   for i in range(3)]
    # the table in a subfolder of the folder given, its paths relative to that folder (or to its own)
    (project / "annotations").mkdir()
    (project / "captions.csv").rename(project / "annotations" / "captions.csv")
    rows = list(HubCaptions(str(project), "image", "caption").records("train", BadRecords("mydata")))
    assert [name for _, name, _, _ in rows] == [f"images/photo{i}.jpg" for i in range(3)]
    # photo1.jpg + photo1.txt (several lines: several captions), which datasets reads as a text or an image folder
    # ("has no column(s) ['jpg', 'txt']"): each photo with its captions, as the webdataset layout's jpg and txt
    sidecars = photos(tmp_path / "sidecars")
    for index in range(3):
        (sidecars / f"photo{index}.txt").write_text(f"photo {index}" + ("\nanother caption" if index == 1 else ""))
    rows = list(HubCaptions(str(sidecars)).records("train", BadRecords("sidecars")))
    assert [(name, [c for _, c in captions]) for _, name, _, captions in rows] == [
        ("photo0.jpg", ["photo 0"]), ("photo1.jpg", ["photo 1", "another caption"]), ("photo2.jpg", ["photo 2"])]
    # a photo and its caption named in another case or Unicode form (a camera's IMG_0003.JPG, a caption typed as
    # img_0003.txt; macOS's decomposed Café.jpg, the caption composed): "row 0 has no caption", or read as a text dataset
    (sidecars / "photo0.jpg").rename(sidecars / "IMG_0003.JPG")
    (sidecars / "photo0.txt").rename(sidecars / "img_0003.txt")
    (sidecars / "photo1.jpg").rename(sidecars / unicodedata.normalize("NFD", "Café.jpg"))
    (sidecars / "photo1.txt").rename(sidecars / unicodedata.normalize("NFC", "Café.txt"))
    rows = list(HubCaptions(str(sidecars)).records("train", BadRecords("sidecars")))
    assert sorted(c for _, _, _, captions in rows for _, c in captions) == ["another caption", "photo 0", "photo 1", "photo 2"]
    pairs = tmp_path / "pairs"  # two photos that differ in case only: each its own caption, never one for both
    pairs.mkdir()
    for name, caption in (("Dog", "a red square"), ("dog", "a blue square")):
        (pairs / f"{name}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (200 if name == "Dog" else 0, 0, 0))))
        (pairs / f"{name}.txt").write_text(caption)
    assert sorted(c for *_, captions in HubCaptions(str(pairs)).records("train", BadRecords("pairs")) for _, c in captions) == [
        "a blue square", "a red square"]
    (sidecars / "photo2.txt").unlink()  # a photo without its caption file: named, not dropped without a word
    seen = BadRecords("sidecars", "skip")
    said = []
    monkeypatch.setattr("mmcaption.data.folder_layouts.rank_zero_info", said.append)
    assert len(list(HubCaptions(str(sidecars)).records("train", seen))) == 2
    assert seen.counts == {"empty caption": 1} and "photo2.jpg" in seen.examples["empty caption"]
    # under error, every photo without a caption at once, not one per run
    (sidecars / "img_0003.txt").rename(sidecars / "img_0003.bak")
    with pytest.raises(DataError, match=r"sidecars: 2 of its images have no caption \(first: .*IMG_0003.*; .*photo2.*\)"):
        list(HubCaptions(str(sidecars)).records("train", BadRecords("sidecars")))
    (sidecars / "img_0003.bak").rename(sidecars / "img_0003.txt")
    # and counted as the folder is listed: 3,000 such photos of a webdataset's folder were found one by one as read
    assert any(line.endswith("a photo without one is refused, or left out with --data.init_args.on_bad_record skip: 1 has "
                             "none, the first "
                             "photo2.jpg)") for line in said), said
    # a DatasetDict with train and dev: dev is the validation split (was "has one split", dev never used)
    table = {"image": [str(project / "images" / f"photo{i}.jpg") for i in range(3)], "caption": ["a", "b", "c"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table), "dev": datasets.Dataset.from_dict(table)}).save_to_disk(
        tmp_path / "saved")
    assert HubCaptions(str(tmp_path / "saved"), "image", "caption").stage_splits(None, None, None) == {
        "train": "train", "val": "dev", "test": "dev"}
    # image URLs, as Conceptual Captions' tables give them: training reads files, and says how to get them
    urls = tmp_path / "urls.csv"
    urls.write_text("image,caption\nhttps://example.invalid/0.jpg,a street\n")
    for on_bad_record in ("error", "skip"):  # no row has an image: skipping them is no way out, and is not offered
        with pytest.raises(DataError, match=r"'https://example\.invalid/0\.jpg', a URL: training reads images from files; "
                                            r"download them first \(img2dataset") as refused:
            list(HubCaptions(str(urls), "image", "caption").records("train", BadRecords("urls.csv", on_bad_record)))
        assert "on_bad_record" not in str(refused.value)
    tsv = tmp_path / "cc.tsv"
    tsv.write_text("a street\thttps://example.invalid/0.jpg\n")
    with pytest.raises(DataError, match=r"cc\.tsv: .*a \.tsv without a header line \(as Conceptual Captions' image URLs "
                                        r"come\) is not read: give it a header line naming its columns \(image<TAB>caption\)"):
        HubCaptions(str(tsv), "image", "caption").load("train")
    # the same sheet saved tab-separated with its header is read as its CSV is (it was refused, "save it as .csv")
    headed = tmp_path / "sheet.tsv"
    headed.write_text(f"image\tcaption\n{project / 'images' / 'photo0.jpg'}\ta street, at night\n")
    assert [captions for *_, captions in HubCaptions(str(headed), "image", "caption").records("train", BadRecords("sheet"))] \
        == [[(0, "a street, at night")]]
    # a JSON Lines file saved in Windows' code page: named, as a CSV is (was UnicodeDecodeError in datasets' traceback)
    local = tmp_path / "local.jsonl"
    local.write_bytes(json.dumps({"image": str(project / "images" / "photo0.jpg"), "caption": "caf\xe9"},
                                 ensure_ascii=False).encode("cp1252") + b"\n")
    with pytest.raises(DataError, match=r"local\.jsonl.*not UTF-8"):
        list(HubCaptions(str(local), "image", "caption").records("train", BadRecords("local.jsonl")))


def test_a_folder_of_captioned_photos_reads_again_with_the_cache_and_outputs_inside_it(backbones, tmp_path):
    def folder(name: str, count: int = 4) -> Path:
        photos = tmp_path / name
        photos.mkdir()
        for index in range(count):
            (photos / f"{index:09d}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (60 * index, 20, 20))))
            (photos / f"{index:09d}.txt").write_text(f"photo {index}")
        return photos

    # the cache in the photos' own folder (data_dir there): the second run read its files as the dataset's tables
    photos = folder("photos")
    for _ in range(2):
        data = CaptionDataModule(source="hub", hub_dataset=str(photos), data_dir=str(photos), tokenizer=str(backbones[0]),
                                 image_processor=str(backbones[1]), batch_size=2, num_workers=0, hub_val_fraction=0.3)
        data.prepare_data()
        data.setup("fit")
        assert sum(len(data.datasets[data.stage_splits()[side]].images) for side in ("train", "val")) == 4
    # a folder of tables, train.csv and validation.csv, with the cache in it: datasets took the cache's
    # preprocessed/train-<key>/meta.json for the train split (a ValueError traceback before validation was prepared)
    tables = folder("tables", count=6)
    for text in tables.glob("*.txt"):
        text.unlink()
    for split, rows in (("train", range(4)), ("validation", range(4, 6))):
        (tables / f"{split}.csv").write_text("image,caption\n" + "".join(f"{i:09d}.jpg,photo {i}\n" for i in rows))
    for _ in range(2):
        data = CaptionDataModule(source="hub", hub_dataset=str(tables), data_dir=str(tables), tokenizer=str(backbones[0]),
                                 image_processor=str(backbones[1]), batch_size=2, num_workers=0, hub_image_column="image",
                                 hub_caption_column="caption")
        data.prepare_data()
        data.setup("fit")
        assert data.stage_splits() == {"train": "train", "val": "validation", "test": "validation"}
        assert {split: len(data.datasets[split].images) for split in ("train", "validation")} == {"train": 4, "validation": 2}
    # a folder of the user's that happens to be named preprocessed is theirs (only the cache given is left out)
    mine = folder("mine")
    (mine / "preprocessed").mkdir()
    (mine / "preprocessed" / "extra.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (20, 200, 20))))
    (mine / "preprocessed" / "extra.txt").write_text("a green photo")
    assert len(list(HubCaptions(str(mine), cache_dir=str(tmp_path / "cache")).records("train", BadRecords("mine")))) == 5
    # an unpacked webdataset shard: photo.jpg, photo.txt and photo.json each (img2dataset's metadata), and the shard's
    # statistics: read as the photos and their captions (the .json files were taken for tables)
    shard = folder("00000")
    for index in range(4):
        (shard / f"{index:09d}.json").write_text(json.dumps({"url": "https://example.invalid", "key": f"{index:09d}"}))
    (shard / "00000_stats.json").write_text(json.dumps({"count": 4}))
    assert len(list(HubCaptions(str(shard)).records("train", BadRecords("shard")))) == 4
    # captions predict wrote into the photos' folder are its output, not the user's captions (it trained on them)
    (shard / "captions.jsonl").write_text(json.dumps({"image": "000000000.jpg", "caption": "a guess"}) + "\n")
    (shard / "captions.jsonl.summary.json").write_text(json.dumps({"rows": 1}))
    rows = list(HubCaptions(str(shard)).records("train", BadRecords("shard")))
    assert [c for _, _, _, captions in rows for _, c in captions] == [f"photo {i}" for i in range(4)]
    # a table of the user's beside captioned photos: which captions are meant is asked, not guessed
    (shard / "mine.csv").write_text("image,caption\n000000000.jpg,a red photo\n")
    with pytest.raises(DataError, match=r"00000 holds photos with caption files beside them \(\d+\.txt\) and a table \(mine\.csv\)"):
        HubCaptions(str(shard))


def test_caption_tables_as_spreadsheets_fill_them_read_every_cell_as_text(tmp_path):
    folder = tmp_path / "sheet"
    folder.mkdir()
    for index in range(4):
        (folder / f"{index}").write_bytes(jpeg(Image.new("RGB", (32, 32), (60 * index, 90, 20))))  # files named by number
    # more than 10,000 rows, a spare rating column empty near the end: datasets typed it by the first 10,000 rows and
    # refused the whole table (ArrowInvalid: Failed to parse string: '' as a scalar of type int64)
    rows = [f"{i % 4},a shape {i},{i % 5}" if i < 10005 else f"{i % 4},a shape {i}," for i in range(10010)]
    (folder / "big.csv").write_text("image,caption,rating\n" + "\n".join(rows) + "\n")
    read = list(HubCaptions(str(folder / "big.csv"), "image", "caption").records("train", BadRecords("big.csv")))
    assert [name for _, name, _, _ in read] == ["0", "1", "2", "3"]  # was "its 'image' is empty": 0-3 read as numbers
    assert sum(len(captions) for *_, captions in read) == 10010
    # captions of digits are captions (they were numbers, so "no caption")
    (folder / "years.csv").write_text("image,caption\n0,1984\n1,2001\n")
    read = list(HubCaptions(str(folder / "years.csv"), "image", "caption").records("train", BadRecords("years.csv")))
    assert [[c for _, c in captions] for *_, captions in read] == [["1984"], ["2001"]]
    # several caption columns: pandas read the second as caption.1, and its captions were left out without a word
    (folder / "several.csv").write_text("image,caption,Caption\n0,a red photo,a photo in red\n")
    with pytest.raises(DataError, match=r"several\.csv: column\(s\) \['Caption', 'caption'\] appear more than once in the "
                                        r"header; several captions of a photo go one row each, or in one cell"):
        list(HubCaptions(str(folder / "several.csv"), "image", "caption").records("train", BadRecords("several.csv")))


def test_a_users_own_tables_are_read_through_mmcaptions_cache_not_the_shared_datasets_cache(tmp_path, monkeypatch):
    # a cluster's HF_DATASETS_CACHE, shared and read-only: a run whose own cache was complete failed there ("permission
    # denied: .../_tmp_..._csv_default-....lock"), and the advice to set data.init_args.cache_dir did not help
    import datasets

    shared = tmp_path / "shared-hf-cache"
    shared.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", shared)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "p0.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), "red")))
    (folder / "train.csv").write_text("image,caption\np0.jpg,a red photo\n")
    (folder / "validation.csv").write_text("image,caption\np0.jpg,a red photo\n")
    for dataset in (folder, folder / "train.csv"):  # a folder of tables, and one table
        captions = HubCaptions(str(dataset), "image", "caption", cache_dir=str(tmp_path / "mine"))
        assert len(list(captions.records("train", BadRecords("photos")))) == 1
    assert not any(shared.iterdir()) and any((tmp_path / "mine" / "datasets").iterdir())


def test_a_folder_of_photos_and_two_tables_reads_both_and_says_so(tmp_path, monkeypatch):
    # a browser's second download beside the first: datasets read the folder as an image folder with CSV options and
    # raised ValueError ("doesn't have a 'keep_default_na' key")
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        (folder / f"p{index}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (80 * index, 20, 20))))
    (folder / "captions.csv").write_text("image,caption\np0.jpg,a black photo\np1.jpg,a dark red photo\n")
    (folder / "captions (1).csv").write_text("image,caption\np2.jpg,a red photo\n")
    said: list[str] = []
    monkeypatch.setattr("mmcaption.data.hub.rank_zero_info", said.append)
    read = list(HubCaptions(str(folder), "image", "caption").records("train", BadRecords("photos")))
    assert sorted((name, [c for _, c in captions]) for _, name, _, captions in read) == [
        ("p0.jpg", ["a black photo"]), ("p1.jpg", ["a dark red photo"]), ("p2.jpg", ["a red photo"])]
    assert any("its tables are read as split train: captions (1).csv, captions.csv" in line for line in said), said


def test_a_table_among_split_named_ones_that_names_no_split_is_refused_not_dropped(tmp_path):
    # train.csv (one's own photos), coco_captions.csv (COCO's captions, joined by hand) and validation.csv: datasets read
    # train.csv alone as the training split, and every COCO caption was dropped without a word
    folder = tmp_path / "captions"
    folder.mkdir()
    for index in range(2):
        (folder / f"p{index}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (90 * index, 20, 20))))
    (folder / "train.csv").write_text("image,caption\np0.jpg,a black photo\n")
    (folder / "coco_captions.csv").write_text("image,caption\np1.jpg,a red photo\n")
    (folder / "validation.csv").write_text("image,caption\np0.jpg,a black photo\n")
    with pytest.raises(DataError, match=r"captions: coco_captions\.csv would not be read: its tables are read as splits by "
                                        r"their names \(train, validation\), and it names none\. Name each as its split's"):
        list(HubCaptions(str(folder), "image", "caption").records("train", BadRecords("captions")))
    (folder / "coco_captions.csv").rename(folder / "train-coco.csv")  # as it says: both train
    read = list(HubCaptions(str(folder), "image", "caption").records("train", BadRecords("captions")))
    assert sorted(name for _, name, _, _ in read) == ["p0.jpg", "p1.jpg"]


def test_a_questions_row_short_of_fields_is_said_to_miss_one(tmp_path):
    sheet = tmp_path / "questions.csv"  # the message blamed an unquoted comma, which makes a row longer
    sheet.write_text("image,question,answer,notes\na.png,What colour?,red,bright\nb.png,What shape?,round\n")
    with pytest.raises(DataError, match=r"questions\.csv, line 3: 3 fields where the header has 4 \(a field is missing\)"):
        read_questions(sheet)


def test_phone_exports_linked_albums_and_image_folders_read_with_the_cache_inside(tmp_path):
    def photos(folder: Path, first: int, count: int = 2) -> list[str]:
        folder.mkdir(parents=True)
        for index in range(first, first + count):
            (folder / f"IMG_{index:04d}.JPG").write_bytes(jpeg(Image.new("RGB", (32, 32), (35 * index, 20, 20))))
        return [f"IMG_{index:04d}.JPG" for index in range(first, first + count)]

    # Google Takeout: IMG_0001.JPG.json beside each photo and an album's metadata.json (one object) were taken for
    # tables, and the user's captions.csv was not read ("has no column(s) ['caption']")
    takeout = tmp_path / "takeout"
    names = photos(takeout / "Photos from 2024", 0)
    for name in names:
        (takeout / "Photos from 2024" / f"{name}.json").write_text(json.dumps({"title": name, "photoTakenTime": {"timestamp": "1"}}))
    (takeout / "Photos from 2024" / "metadata.json").write_text(json.dumps({"title": "Photos from 2024", "access": "protected"}))
    (takeout / "captions.csv").write_text("image,caption\n" + "".join(f"Photos from 2024/{n},photo {n}\n" for n in names))
    read = list(HubCaptions(str(takeout), "image", "caption").records("train", BadRecords("takeout")))
    assert [name for _, name, _, _ in read] == [f"Photos from 2024/{n}" for n in names]
    # an album linked into the folder of captioned photos: its photos were left out without a word
    album = tmp_path / "album"
    for name in photos(album, 5):
        (album / name).with_suffix(".txt").write_text(f"a linked photo {name}")
    side = tmp_path / "side"
    for name in photos(side, 0):
        (side / name).with_suffix(".txt").write_text(f"photo {name}")
    (side / "linked").symlink_to(album, target_is_directory=True)
    read = list(HubCaptions(str(side)).records("train", BadRecords("side")))
    assert sorted(name for _, name, _, _ in read) == ["IMG_0000.JPG", "IMG_0001.JPG", "linked/IMG_0005.JPG", "linked/IMG_0006.JPG"]
    # datasets' image folder (photos and metadata.csv) with the cache in it (data_dir there): the held-out split read the
    # cache's files as the dataset's (CastError), and every later run failed at once
    folder = tmp_path / "imagefolder"
    names = photos(folder, 0, count=4)
    (folder / "metadata.csv").write_text("file_name,caption\n" + "".join(f"{n},photo {n}\n" for n in names))
    for _ in range(2):
        captions = HubCaptions(str(folder), "image", "caption", val_fraction=0.3, cache_dir=str(folder / "preprocessed"))
        sides = captions.stage_splits(None, None, None)
        counts = []
        for side_split in (sides["train"], sides["val"]):
            rows = list(captions.records(side_split, BadRecords("imagefolder")))
            counts.append(len(rows))
            (folder / "preprocessed" / side_split).mkdir(parents=True, exist_ok=True)  # the cache a run writes
            (folder / "preprocessed" / side_split / "meta.json").write_text(json.dumps({"split": side_split, "image_size": 64}))
        assert sum(counts) == 4 and min(counts) >= 1


def test_workbooks_archives_and_mac_spreadsheets_are_named_for_what_they_are(tmp_path, image_folder):
    import zipfile

    workbook = tmp_path / "questions.xlsx"  # an Excel workbook is a zip of XML files
    with zipfile.ZipFile(workbook, "w") as packed:
        packed.writestr("xl/workbook.xml", "<workbook/>")
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        packed.writestr("photos/a.jpg", jpeg(Image.new("RGB", (32, 32))))
    # each was "not UTF-8 text (byte 0x81 at 12), likely Windows' local code page"
    with pytest.raises(DataError, match=r"questions\.xlsx is a spreadsheet workbook, not a text table: save it from the "
                                        r"spreadsheet as CSV UTF-8"):
        read_choice_csv(workbook)
    with pytest.raises(DataError, match=r"questions\.xlsx is a spreadsheet workbook"):
        HubCaptions(str(workbook), "image", "caption").load("train")
    with pytest.raises(DataError, match=r"photos\.zip is a zip archive: unpack it first \(unzip -q .*photos\.zip -d <folder>\)"):
        find_images(archive)
    # Excel for Mac's "CSV (Macintosh)": Mac Roman, lines ending in \r alone (said to be line 1, and Windows')
    mac = tmp_path / "mac.csv"
    mac.write_bytes("img_path,Question,A,B\ra.png,Which?,café,naïve\r".encode("mac_roman"))
    with pytest.raises(DataError, match=r"mac\.csv, line 2: not UTF-8 text \(byte 0x8e at \d+\), likely Mac Roman, as Excel "
                                        r"for Mac's \"CSV \(Macintosh\)\" writes it; save it as \"CSV UTF-8\""):
        read_choice_csv(mac)
    # a one-column list of images saved from a spreadsheet: its header was predicted as an image ("image not found")
    listed = tmp_path / "list.csv"
    names = sorted(p.name for p in image_folder.iterdir())[:2]
    listed.write_text("image\n" + "".join(f"{image_folder / name}\n" for name in names), encoding="utf-8-sig")
    said: list[str] = []
    assert [p.name for p in find_images(listed, note=said.append)] == names
    assert any("its first line 'image' names the column, not an image: left out" in line for line in said), said
    listed.write_text("url\n" + "".join(f"{image_folder / name}\n" for name in names))  # pandas' to_csv of a CMS's url column
    assert [p.name for p in find_images(listed)] == names  # was a row of its own: "image not found: url"
    # a list written by hand with a comment line (as shell scripts' lists have them): it was an image, "image not found"
    listed.with_suffix(".txt").write_text("# my photos\n" + "".join(f"{image_folder / name}\n" for name in names) + "#end\n")
    said.clear()
    assert [p.name for p in find_images(listed.with_suffix(".txt"), note=said.append)] == names
    assert any("2 line(s) beginning with # read as comments, left out (first: '# my photos')" in line for line in said), said


def test_local_folders_split_as_datasets_splits_them_among_the_users_own_files(tmp_path):
    import tarfile

    def photos(folder: Path, first: int, count: int = 2) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(first, first + count):
            (folder / f"p{index}.jpg").write_bytes(jpeg(Image.new("RGB", (32, 32), (30 * index, 20, 20))))
        return [f"p{index}.jpg" for index in range(first, first + count)]

    def metadata(folder: Path, names: list[str], captions: list[str] | None = None) -> None:
        (folder / "metadata.csv").write_text("file_name,caption\n" + "".join(
            f"{name},{caption}\n" for name, caption in zip(names, captions or [f"photo {n}" for n in names])))

    # an image folder whose train/ is linked in: the train split was dropped, and the test photos trained on
    linked = tmp_path / "linked"
    metadata(tmp_path / "album", photos(tmp_path / "album", 0))
    metadata(linked / "test", photos(linked / "test", 2))
    (linked / "train").symlink_to(tmp_path / "album", target_is_directory=True)
    assert HubCaptions(str(linked), "image", "caption").stage_splits(None, None, None) == {
        "train": "train", "val": "test", "test": "test"}
    # captions of digits in an image folder's metadata.csv are captions (were numbers: "has no caption")
    years = tmp_path / "years"
    metadata(years, photos(years, 0, 4), ["1984", "2001", "2002", "1999"])
    read = list(HubCaptions(str(years), "image", "caption").records("train.rest", BadRecords("years")))
    assert read and all(captions[0][1] in ("1984", "2001", "2002", "1999") for *_, captions in read)
    # webdataset shards beside their sizes.json: the shards are the dataset (sizes.json was read as its one table)
    shards = tmp_path / "shards"
    shards.mkdir()
    for shard in range(2):
        with tarfile.open(shards / f"train-{shard:04d}.tar", "w") as tar:
            for index in range(3):
                for suffix, data in ((".jpg", jpeg(Image.new("RGB", (32, 32), (40 * index + shard, 9, 9)))),
                                     (".txt", f"photo {shard} {index}".encode())):
                    info = tarfile.TarInfo(f"{shard}{index:03d}{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (shards / "sizes.json").write_text(json.dumps({"train-0000.tar": 3, "train-0001.tar": 3}))
    assert len(list(HubCaptions(str(shards)).records("train", BadRecords("shards")))) == 6
    # a Takeout album's metadata.json beside the user's train.csv and validation.csv: not an image folder's metadata
    takeout = tmp_path / "takeout [2024]"  # and a folder name with a glob's brackets (a traceback: "Couldn't resolve")
    names = photos(takeout / "Photos from 2024", 0, 4)
    (takeout / "Photos from 2024" / "metadata.json").write_text(json.dumps({"title": "Photos from 2024"}))
    for split, rows in (("train", names[:3]), ("validation", names[3:])):
        (takeout / f"{split}.csv").write_text("image,caption\n" + "".join(f"Photos from 2024/{n},photo {n}\n" for n in rows))
    captions = HubCaptions(str(takeout), "image", "caption")
    assert captions.stage_splits(None, None, None) == {"train": "train", "val": "validation", "test": "validation"}
    assert len(list(captions.records("train", BadRecords("takeout")))) == 3
    # tables of one dataset with other columns: named (datasets failed on a column, naming no file)
    (takeout / "validation.csv").write_text("image,caption,notes\nPhotos from 2024/p3.jpg,photo,x\n")
    with pytest.raises(DataError, match=r"validation\.csv has the columns \['image', 'caption', 'notes'\], and .*train\.csv has "
                                        r"\['image', 'caption'\]: the tables of one dataset have the same columns"):
        list(HubCaptions(str(takeout), "image", "caption").records("train", BadRecords("takeout")))


def test_hub_datasets_as_published_read_their_captions_and_their_cards_splits(tmp_path):
    # as the hub's caption datasets lay them out: captions inside objects (HuggingFaceM4/COCO's sentences {raw, tokens},
    # Karpathy-style [{raw, tokens}]), one column per caption (jxie/flickr8k), a CSV cell holding a JSON list
    # (nlphuji/flickr30k's raw CSV); and a folder whose README.md names its splits and configurations
    import pyarrow as pa
    import pyarrow.parquet as pq

    photos = [jpeg(upright_picture(24 + i, 24)) for i in range(4)]
    image = [{"bytes": data, "path": f"{i}.jpg"} for i, data in enumerate(photos)]

    def captions_of(dataset, column, split="train"):
        rows = HubCaptions(str(dataset), "image", column).records(split, BadRecords(str(dataset)))
        return [[text for _, text in captions] for *_, captions in rows]

    struct = tmp_path / "m4coco.parquet"
    pq.write_table(pa.table({"image": image, "sentences": [{"raw": [f"a dog {i}.", f"the dog {i}."], "tokens": [["a"], ["the"]]}
                                                            for i in range(4)]}), struct)
    assert captions_of(struct, "sentences.raw")[0] == ["a dog 0.", "the dog 0."]
    with pytest.raises(DataError, match=r"its 'sentences' holds objects with the keys \['raw', 'tokens'\], not text: name the key "
                                        r"of the text in hub_caption_column, e.g. sentences\.raw"):
        captions_of(struct, "sentences")  # was "row 0 has no caption"
    listed = tmp_path / "karpathy.parquet"
    pq.write_table(pa.table({"image": image, "sentences": [[{"raw": f"a cat {i}.", "tokens": ["a"]}, {"raw": f"one cat {i}.", "tokens": ["one"]}]
                                                            for i in range(4)]}), listed)
    assert captions_of(listed, "sentences.raw")[1] == ["a cat 1.", "one cat 1."]
    columns = tmp_path / "flickr8k.parquet"
    pq.write_table(pa.table({"image": image, **{f"caption_{k}": [f"caption {k} of {i}" for i in range(4)] for k in range(3)}}), columns)
    assert captions_of(columns, ["caption_0", "caption_1", "caption_2"])[2] == ["caption 0 of 2", "caption 1 of 2", "caption 2 of 2"]
    flickr = tmp_path / "flickr30k"  # flickr_annotations_30k.csv: raw is a JSON list of the five captions
    flickr.mkdir()
    for i, data in enumerate(photos):
        (flickr / f"{1000 + i}.jpg").write_bytes(data)
    with (flickr / "flickr_annotations_30k.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["raw", "sentids", "split", "image", "img_id"])
        for i in range(4):
            writer.writerow([json.dumps([f"Two dogs, {i}, play.", f"Dogs {i} run."]), "[1, 2]", "test", f"{1000 + i}.jpg", i])
    # (its split column says test for every row: a split of its own, scored whole)
    assert captions_of(flickr / "flickr_annotations_30k.csv", "raw", "test")[0] == ["Two dogs, 0, play.", "Dogs 0 run."]  # was one

    carded = tmp_path / "carded"  # its card names the splits: the held-out file was read as training data
    (carded / "shards").mkdir(parents=True)
    for name, rows in (("part-0", range(3)), ("heldout-0", range(3, 4))):
        pq.write_table(pa.table({"image": [image[i] for i in rows], "caption": [f"photo {i}" for i in rows]}),
                       carded / "shards" / f"{name}.parquet")
    (carded / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: "
                                      "shards/part-*.parquet\n  - split: validation\n    path: shards/heldout-*.parquet\n---\n# A card\n")
    assert HubCaptions(str(carded), "image", "caption").stage_splits(None, None, None) == {
        "train": "train", "val": "validation", "test": "validation"}
    assert captions_of(carded, "caption", "validation") == [["photo 3"]]
    sheets = tmp_path / "sheets"  # a card over CSV tables: read as mmcaption reads tables (every cell text: "NA" a caption)
    sheets.mkdir()
    for name, rows in (("train", range(3)), ("heldout", range(3, 4))):
        (sheets / f"{name}.csv").write_text("file,caption\n" + "".join(f"{i}.jpg,{'NA' if i == 1 else f'photo {i}'}\n" for i in rows))
    for i in range(4):
        (sheets / f"{i}.jpg").write_bytes(photos[i])
    (sheets / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: "
                                      "train.csv\n  - split: validation\n    path: heldout.csv\n---\n")
    carded_sheets = HubCaptions(str(sheets), "file", "caption", cache_dir=str(sheets / "cache"))
    assert [[t for _, t in c] for *_, c in carded_sheets.records("train", BadRecords("sheets"))] == [["photo 0"], ["NA"], ["photo 2"]]
    assert (sheets / "cache" / "datasets").is_dir()  # in mmcaption's cache, not a cluster's shared (often read-only) one
    two = tmp_path / "two-years"  # two configurations: named by hub_config, and asked for when none is
    for year in ("2014", "2017"):
        (two / year).mkdir(parents=True)
        pq.write_table(pa.table({"image": image, "caption": [f"{year} photo {i}" for i in range(4)]}), two / year / "train.parquet")
    (two / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: '{year}'\n  data_files:\n  - split: train\n    path: {year}/train.parquet\n" for year in ("2014", "2017")) + "---\n")
    with pytest.raises(DataError, match=r"set data.init_args.hub_config to the one to read"):
        HubCaptions(str(two), "image", "caption").split_names()
    chosen = HubCaptions(str(two), "image", "caption", config="2017")
    assert [[text for _, text in c] for *_, c in chosen.records("train", BadRecords(str(two)))][0] == ["2017 photo 0"]


def test_a_hub_dataset_whose_test_split_has_no_captions_says_what_to_validate_on(tmp_path, monkeypatch):
    # lmms-lab/COCO-Caption2017: 'val' with captions and a 'test' without (its references kept private). test was taken
    # to validate on ("row 0 has no caption. Fix the record"), and val_split val, as train_split, trained and validated on
    # the same images without a word
    import pyarrow as pa
    import pyarrow.parquet as pq

    infos = []
    monkeypatch.setattr("mmcaption.data.stage_splits.rank_zero_info", infos.append)
    root = tmp_path / "coco2017"
    (root / "data").mkdir(parents=True)
    image = [{"bytes": jpeg(upright_picture(24 + i, 24)), "path": f"{i}.jpg"} for i in range(6)]
    pq.write_table(pa.table({"image": image, "answer": [[f"photo {i}."] for i in range(6)]}), root / "data" / "val-00000-of-00001.parquet")
    pq.write_table(pa.table({"image": image, "answer": pa.array([[] for _ in range(6)], pa.list_(pa.string()))}),
                   root / "data" / "test-00000-of-00001.parquet")
    hub = HubCaptions(str(root), "image", "answer", val_fraction=0.3)
    splits = hub.stage_splits("val", None, None)
    assert splits["val"] == "test"
    with pytest.raises(DataError, match=r"none of its 6 images has a caption \(a benchmark's test split keeps its references to "
                                        r"itself\): validate on a split with captions \(val_split\), or give val_split the "
                                        r"training split's name to hold out hub_val_fraction of it"):
        list(hub.records(splits["val"], BadRecords(f"{root} [test]")))
    assert hub.stage_splits("val", "val", None) == {"train": "val.rest", "val": "val.heldout", "test": "val.heldout"}
    assert any("val_split 'val', its training split: 30.0% of the images of 'val' are held out" in line for line in infos)
    rest, held = ({i for i, *_ in hub.records(f"val{side}", BadRecords(str(root)))} for side in (".rest", ".heldout"))
    assert rest and held and not rest & held


def test_a_hub_dataset_downloaded_with_hf_download_is_read_offline_by_its_id(tmp_path, monkeypatch):
    # `hf download lmms-lab/COCO-Caption2017 --repo-type dataset`, as the README downloads LLaVA: offline, datasets knows
    # only its own cache of what it loaded, and the id was "Couldn't reach ... on the Hub (OfflineModeIsEnabled)"
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "datasets--someone--captions"
    snapshot = repo / "snapshots" / ("0" * 40)
    (snapshot / "data").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    image = [{"bytes": jpeg(upright_picture(24 + i, 24)), "path": f"{i}.jpg"} for i in range(4)]
    pq.write_table(pa.table({"image": image, "caption": [f"photo {i}." for i in range(4)]}), snapshot / "data" / "train-00000-of-00001.parquet")
    hub = HubCaptions("someone/captions", "image", "caption")
    assert hub.dataset == str(snapshot) and hub.split_names() == ["train"]
    assert [c for *_, c in hub.records("train.rest", BadRecords("someone/captions"))]
    assert HubCaptions("someone/other", "image", "caption").dataset == "someone/other"  # not downloaded: as given


def test_img2datasets_output_folders_read_as_it_writes_them(tmp_path, monkeypatch):
    # img2dataset's output, as it writes it: its record of each shard (00000.parquet: URL, status, error) was read as the
    # table of the photos - the webdataset shards beside it passed over, the files layout refused with advice that led
    # to its URLs - and the downloads that failed were not counted
    import tarfile

    import datasets

    infos = []
    monkeypatch.setattr("mmcaption.data.folder_layouts.rank_zero_info", infos.append)
    samples = [(f"{i:09d}", jpeg(Image.new("RGB", (32, 32), (40 * i, 9, 9))) if i < 4 else None, f"photo {i}") for i in range(6)]

    def shard_record(folder: Path) -> None:
        datasets.Dataset.from_dict({
            "url": [f"https://example.invalid/{key}.jpg" for key, _, _ in samples], "caption": [c for *_, c in samples],
            "key": [key for key, _, _ in samples], "status": ["success" if data else "failed_to_download" for _, data, _ in samples],
            "error_message": [None if data else "HTTP Error 404: Not Found" for _, data, _ in samples]}).to_parquet(folder / "00000.parquet")
        (folder / "00000_stats.json").write_text(json.dumps({"count": 6, "successes": 4, "failed_to_download": 2}))

    files = tmp_path / "files"  # --output_format files
    (files / "00000").mkdir(parents=True)
    for key, data, caption in samples:  # a sample that failed is only in the shard's record
        if data:
            (files / "00000" / f"{key}.jpg").write_bytes(data)
            (files / "00000" / f"{key}.txt").write_text(caption)
            (files / "00000" / f"{key}.json").write_text(json.dumps({"key": key, "status": "success"}))
    shard_record(files)
    read = list(HubCaptions(str(files)).records("train", BadRecords("files")))
    assert sorted((name, captions[0][1]) for _, name, _, captions in read) == [(f"00000/{i:09d}.jpg", f"photo {i}") for i in range(4)]
    failed = ("2 of the 6 samples img2dataset listed are not in its shards, their download failed (2 x failed_to_download: "
              "HTTP Error 404: Not Found): left out")
    assert f"{files}: {failed}" in infos, infos
    (files / "00000" / "000000000.jpg").unlink()  # a photo deleted: its caption is not passed over without a word
    HubCaptions(str(files))
    assert f"{files}: 1 caption file(s) without a photo of the same name, left out (the first: {files / '00000' / '000000000.txt'})" in infos

    shards = tmp_path / "webdataset"  # --output_format webdataset
    shards.mkdir()
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for key, data, caption in samples:
            for suffix, content in ((".jpg", data), (".txt", caption.encode())):
                if data:
                    info = tarfile.TarInfo(f"{key}{suffix}")
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
    shard_record(shards)
    read = list(HubCaptions(str(shards), cache_dir=str(tmp_path / "cache")).records("train", BadRecords("webdataset")))
    assert sorted(captions[0][1] for *_, captions in read) == [f"photo {i}" for i in range(4)]
    assert f"{shards}: {failed}" in infos
    with pytest.raises(DataError, match=r"00000\.parquet is img2dataset's record of the shard beside it \(each sample's URL, "
                                        r"status and error\), not its photos: give the folder of its output"):
        HubCaptions(str(shards / "00000.parquet"))  # where "give the table itself" led

    tsv = tmp_path / "cc"  # Conceptual Captions' TSV in its folder: its first caption was taken for a column's name
    tsv.mkdir()
    (tsv / "Train_GCC-training.tsv").write_text("a dog on a beach\thttp://example.invalid/1.jpg\n")
    with pytest.raises(DataError, match=r"Train_GCC-training\.tsv: a \.tsv without a header line \(as Conceptual Captions' "
                                        r"image URLs come\) is not read: give it a header line"):
        HubCaptions(str(tsv))
    (files / "labels.tsv").write_text("id\tname\n1\tcat\n")  # a stray table beside the data is no reason to refuse it
    assert len(list(HubCaptions(str(files)).records("train", BadRecords("files")))) == 3


def test_unicode_line_separators_inside_rows_and_image_lists_in_windows_encodings(tmp_path):
    from mmcaption.data.questions import read_question_file
    from mmcaption.evaluation.report import json_line, read_output_rows

    # U+2028 (LINE SEPARATOR) and \x85 inside a cell, written as they are: a resume read the output back broken at them
    # (a bare JSONDecodeError; the rows done could not be gone on from), and a questions file with one was refused
    output = tmp_path / "answers.jsonl"
    output.write_text(json_line({"question": "質問\u2028二行目", "note": "a\x85b"}) + json_line({"question": "q2"}), encoding="utf-8")
    assert read_output_rows(output) == [{"question": "質問\u2028二行目", "note": "a\x85b"}, {"question": "q2"}]
    asked = tmp_path / "questions.jsonl"
    asked.write_text(json.dumps({"image": "a.jpg", "question": "One\u2028two"}, ensure_ascii=False) + "\r\n"
                     + json.dumps({"image": "b.jpg", "question": "Three?"}) + "\n", encoding="utf-8")
    assert [q.question for q in read_question_file(asked)[0]] == ["One\u2028two", "Three?"]
    # an image list saved by PowerShell 5 (UTF-16) or in Windows' code page: said as such, with the line, as other files are
    for encoding, said in (("utf-16", r"list_utf-16\.txt is UTF-16 text \(as Windows PowerShell 5's > and Out-File write it\)"),
                           ("cp1252", r"list_cp1252\.txt, line 2: not UTF-8 text \(byte 0xe9 at 9\), likely Windows' local code page")):
        listed = tmp_path / f"list_{encoding}.txt"
        listed.write_bytes("a.jpg\ncafé.jpg\n".encode(encoding))
        with pytest.raises(DataError, match=said):
            find_images(str(listed))
    pdf = tmp_path / "photos.pdf"  # no text at all: not said to be a list in another encoding
    pdf.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Length 5 /Filter /FlateDecode >>\nstream\n\x78\x9c\x03\x00\x01")
    with pytest.raises(DataError, match=r"photos\.pdf is a PDF; images are given as a folder of them, one image, or a text "
                                        r"file with one image path per line$"):
        find_images(str(pdf))
    # one whose first lines are text was read as a list of images ("the first, '%PDF-1.4', was looked for at ..."), a
    # video was "neither an image nor a list ... (byte 13 is ...)", an SVG a list of one image, its XML line
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    video, drawing = tmp_path / "clip.mp4", tmp_path / "logo.svg"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom\x8e\x9f" + bytes(range(256)))
    drawing.write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"></svg>\n')
    for given, said in ((pdf, "a PDF"), (video, r"a video \(mp42\), not a photo"),
                        (drawing, r"an SVG drawing \(vectors, no pixels\): convert it to PNG first")):
        with pytest.raises(DataError, match=rf"{given.name} is {said}; images are given as a folder of them"):
            find_images(str(given))
    # and a list with an old Mac's line ends (\r alone) still reads line by line
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    mac = tmp_path / "mac.txt"
    mac.write_bytes(b"a.jpg\rb.jpg\r")
    assert find_images(str(mac)) == [tmp_path / "a.jpg", tmp_path / "b.jpg"]


def test_half_an_emoji_cut_off_by_the_tool_that_wrote_the_file_is_removed_with_a_warning(tmp_path):
    from mmcaption.data.questions import read_question_file
    from mmcaption.data.records import read_json, read_json_list

    # JavaScript tools cut strings mid-emoji: "\ud83d" alone. It reached the tokenizer as a text no tokenizer takes (a
    # bare TypeError, ~70 lines naming no file); a whole emoji, and a literal backslash-u in a text, are kept
    captions = tmp_path / "captions.json"
    captions.write_text('[{"caption": "a cat \\ud83d"}, {"caption": "a dog \\ud83d\\ude00"}, {"caption": "C:\\\\udemo"}]')
    with pytest.warns(UserWarning, match=r"captions\.json: 1 half character\(s\) removed, such as \\ud83d \(line 1\)"):
        assert read_json(captions, "captions") == [{"caption": "a cat "}, {"caption": "a dog \U0001F600"}, {"caption": "C:\\udemo"}]
    lines = tmp_path / "conversations.jsonl"
    lines.write_text('{"q": "fine"}\n{"q": "cut \\ude00 here"}\n')
    with pytest.warns(UserWarning, match=r"1 half character\(s\) removed, such as \\ude00 \(line 2\)"):
        assert list(read_json_list(lines, "conversations")) == [{"q": "fine"}, {"q": "cut  here"}]
    asked = tmp_path / "questions.jsonl"
    asked.write_text('{"image": "a.jpg", "question": "What is it? \\ud83d"}\n')
    with pytest.warns(UserWarning, match=r"questions\.jsonl: 1 half character"):
        assert read_question_file(asked)[0][0].question == "What is it?"


def test_an_image_path_copied_with_windows_invisible_marks_is_found(tmp_path):
    from mmcaption.data.image_sources import image_paths

    # Windows' Properties dialog copies a path with U+202A (LEFT-TO-RIGHT EMBEDDING) in front: the row was "image not
    # found" for a path that looks right; a right-to-left page's U+200F and a zero-width space after it alike
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    paths = image_paths(["\u202aphoto.jpg", "\u200fphoto.jpg\u200b", "photo.jpg"], tmp_path, tmp_path / "q.csv")
    assert paths == [tmp_path / "photo.jpg"] * 3


def test_questions_files_pandas_and_datasets_wrote_read_their_lists_numbers_and_images(tmp_path):
    # pandas' to_csv writes a column of lists as Python spells them (['2', "it's 2"]: refused as not a JSON list), a
    # column of whole numbers with a missing value as 3.0 (scored against the model's "3" as wrong); datasets' to_json
    # and to_csv write an image column's file as {"bytes": null, "path": ...} (refused as an image not found, its
    # spelling of the object as the file name)
    import datasets
    import pandas as pd

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    pd.DataFrame({"image": ["a.png", "a.png", "a.png"], "question": ["How many?", "Which?", "What colour?"],
                  "answer": [3, 12, None], "answers": [["2", "it's 2"], ["two"], ["red", "red"]]}).to_csv(
        tmp_path / "pandas.csv", index=False)
    assert "3.0," in (tmp_path / "pandas.csv").read_text() and "['2', \"\"it's 2\"\"]" in (tmp_path / "pandas.csv").read_text()
    with pytest.warns(UserWarning, match=r"pandas\.csv: column 'answer' holds its numbers as pandas writes a column of whole "
                                         r"numbers with a missing value \(3\.0\): 2 of them read as whole numbers"):
        asked = read_questions(tmp_path / "pandas.csv")
    assert [q.answer for q in asked] == ["3", "12", None]
    assert [q.record["answers"] for q in asked] == [["2", "it's 2"], ["two"], ["red", "red"]]
    decimals = tmp_path / "decimals.csv"  # a column with text in it is text: its 3.0 is what the file says
    decimals.write_text("image,question,answer\na.png,Which version?,3.0\na.png,What colour?,red\n")
    assert [q.answer for q in read_questions(decimals)] == ["3.0", "red"]

    table = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png"), "a.png"], "question": ["What colour?"] * 2,
                                        "answer": ["red", "red"]}).cast_column("image", datasets.Image())
    table.to_json(str(tmp_path / "datasets.jsonl"))
    table.to_csv(str(tmp_path / "datasets.csv"), index=False)
    for name in ("datasets.jsonl", "datasets.csv"):
        assert "'bytes'" in (tmp_path / name).read_text() or '"bytes":null' in (tmp_path / name).read_text()
        assert [q.image for q in read_questions(tmp_path / name)] == [str(tmp_path / "a.png"), "a.png"], name
    held = tmp_path / "held.csv"  # images held as bytes in the table: refused, saying what to do
    held.write_text("image,question\n\"{'bytes': b'\\x89PNG', 'path': None}\",What colour?\n")
    with pytest.raises(DataError, match=r"held\.csv, line 2: its image is the image's bytes, written into the file: save the "
                                        r"images as files and name their paths"):
        read_questions(held)
    # the original scripts' multiple-choice CSV, made with datasets from an image column, alike
    choices = datasets.Dataset.from_dict({"img_path": ["a.png"], "Question": ["Which colour?"], "A": ["red"], "B": ["blue"],
                                          "answer": ["A"]}).cast_column("img_path", datasets.Image())
    choices.to_csv(str(tmp_path / "choices.csv"), index=False)
    assert read_choice_csv(tmp_path / "choices.csv")[0].image == "a.png"


def test_an_answer_key_headed_as_a_sheet_heads_it_is_said_not_to_be_scored(tmp_path, monkeypatch):
    # "Correct Answer", "GT-Answer" (a sheet's headings), a questions file's gt_answer: no accuracy, without a word (the
    # note came for correct_answer alone, and the questions reader had none)
    said = []
    monkeypatch.setattr("mmcaption.data.choice_csv.rank_zero_info", said.append)
    monkeypatch.setattr("mmcaption.data.questions.rank_zero_info", said.append)
    for heading in ("Correct Answer", "GT-Answer"):
        (tmp_path / "mc.csv").write_text(f"img_path,Question,A,B,{heading}\na.jpg,Which?,x,y,B\n")
        assert [q.answer for q in read_choice_csv(tmp_path / "mc.csv")] == [None]
        assert said.pop() == (f"{tmp_path / 'mc.csv'}: no 'answer' column, so no accuracy; column {heading!r} is kept as it "
                              "is, not read as the answer key: name it 'answer' if it is one")
    (tmp_path / "q.jsonl").write_text('{"image": "a.jpg", "question": "Which?", "gt_answer": "yes"}\n')
    assert [q.answer for q in read_questions(tmp_path / "q.jsonl")] == [None]
    assert said == [f"{tmp_path / 'q.jsonl'}: no 'answer', so no accuracy; 'gt_answer' is kept as it is, not read as the "
                    "answer: name it 'answer' if it is one"]
    (tmp_path / "a.jsonl").write_text('{"image": "a.jpg", "question": "Which?", "answer": "yes", "gt_answer": "yes"}\n')
    read_questions(tmp_path / "a.jsonl")
    assert len(said) == 1  # with an answer, nothing to say


def test_records_jq_wrote_over_several_lines_each_are_read_with_the_line_each_starts_on(tmp_path):
    # `jq '.[] | select(...)' in.json > out.jsonl` pretty-prints each record: refused as "line 1: not JSON" (questions)
    # and "not valid JSON Lines" (conversations), where the caption reader (datasets) read it
    from mmcaption.data.llava import read_llava

    questions = tmp_path / "q.jsonl"
    questions.write_text('{\n  "image": "a.jpg",\n  "question": "Q1?"\n}\n{\n  "image": "b.jpg",\n  "question": "Q2?",\n'
                         '  "answer": "yes"\n}\n')
    asked = read_questions(questions)
    assert [(q.line, q.image, q.question, q.answer) for q in asked] == [(1, "a.jpg", "Q1?", None), (5, "b.jpg", "Q2?", "yes")]
    conversations = tmp_path / "c.json"
    record = {"id": "1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    conversations.write_text("".join(json.dumps({**record, "id": str(n)}, indent=2) + "\n" for n in range(3)))
    assert [c.id for c in read_llava(conversations, tmp_path, BadRecords(conversations))] == ["0", "1", "2"]
    # a record cut short is still refused with its line
    questions.write_text('{"image": "a.jpg", "question": "Q1?"}\n{"image": "b.jpg", "quest\n')
    with pytest.raises(DataError, match=r"q\.jsonl, line 2: not JSON"):
        read_questions(questions)


def test_human_answers_that_never_match_a_prediction_are_warned_of(tmp_path):
    # ten humans' "Yes" (as written, as VQAv2's evaluation keeps agreeing answers) scored a right "yes" 0, without a word
    from mmcaption.evaluation.answers import vqa_accuracy

    questions = tmp_path / "mine.jsonl"
    questions.write_text(json.dumps({"image": "a.jpg", "question": "Is it red?", "answers": ["yes"] * 10}) + "\n" +
                         json.dumps({"image": "a.jpg", "question": "Is it blue?", "answers": ["No"] * 10}) + "\n")
    assert vqa_accuracy("no", ["No"] * 10) == 0.0  # why it is said
    with pytest.warns(UserWarning, match=r"mine\.jsonl: human answers are scored as VQAv2's evaluation scores them, as written "
                                         r"when they agree .*: 'No' \(line 2\) never matches a prediction, which is normalised "
                                         r"\('no'\); write them as VQAv2's are, lower case with digits, no articles"):
        read_questions(questions)
    questions.write_text(json.dumps({"image": "a.jpg", "question": "How many?", "answers": ["2"] * 9 + ["3"]}) + "\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # answers written as VQAv2's: nothing to say
        read_questions(questions)


def test_questions_and_conversations_pandas_saved_in_its_other_json_layouts_are_read_as_records(tmp_path):
    # df.to_json("q.json") keeps a column each ({"image": {"0": ...}}): refused as "its image is the image's bytes ...;
    # answer {'0': 'yes', '1': 'Bob'} is not a string", a column's values taken for one record's
    import pandas as pd

    from mmcaption.data.llava import read_llava

    table = pd.DataFrame({"image": ["a.jpg", "b.jpg"], "question": ["What?", "Who?"], "answer": ["yes", "Bob"]})
    for orient in (None, "split", "table"):
        path = tmp_path / f"q-{orient}.json"
        table.to_json(path, **({"orient": orient} if orient else {}))
        assert [(q.image, q.question, q.answer) for q in read_questions(path)] == [
            ("a.jpg", "What?", "yes"), ("b.jpg", "Who?", "Bob")], orient
    turns = [{"from": "human", "value": "What is a dog?"}, {"from": "gpt", "value": "An animal."}]
    conversations = tmp_path / "c.json"
    pd.DataFrame({"id": ["7", "8"], "conversations": [turns, turns]}).to_json(conversations)
    assert [c.id for c in read_llava(conversations, tmp_path, BadRecords(conversations))] == ["7", "8"]


def test_a_column_of_pixel_arrays_is_read_and_one_of_several_images_a_row_is_refused_saying_so(tmp_path):
    # an Array3D column of pixels (as MNIST's and CIFAR's copies hold them) and the_cauldron's lists of images: both were
    # "its 'image' is empty ... Fix their paths (relative to the dataset's folder)"
    import datasets

    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 12, 3), dtype=np.uint8)
    captions = [f"a picture of {n} things" for n in range(4)]
    kinds = {"arrays": datasets.Array3D((16, 12, 3), "uint8"), "grey": datasets.Array2D((16, 12), "uint8"),
             "whole": datasets.Array3D((16, 12, 3), "float32"), "fractions": datasets.Array3D((16, 12, 3), "float32"),
             "normalized": datasets.Array3D((16, 12, 3), "float32"), "channels first": datasets.Array3D((3, 16, 12), "uint8"),
             "one": datasets.Sequence(datasets.Image()), "two": datasets.Sequence(datasets.Image())}
    normalized = (pixels / 255.0 - 0.45) / 0.22  # as a model's processor leaves them: about -2 to 2.5
    normalized[:, 0, 0] = 2.6
    cells = {"arrays": list(pixels), "grey": list(pixels[..., 0]), "whole": list(pixels.astype(np.float32)),
             "fractions": list(pixels / 255.0), "normalized": list(normalized), "channels first": list(np.moveaxis(pixels, -1, 1)), "one": [[Image.fromarray(p)] for p in pixels],
             "two": [[Image.fromarray(p), Image.fromarray(p)] for p in pixels]}
    for name, kind in kinds.items():
        features = datasets.Features({"image": kind, "caption": datasets.Value("string")})
        datasets.Dataset.from_dict({"image": cells[name], "caption": captions}, features=features).save_to_disk(str(tmp_path / name))
    grey = np.repeat(pixels[..., :1], 3, axis=-1)  # a grey image is stored as RGB, as the Python API reads an array
    for name, expected in (("arrays", pixels), ("grey", grey), ("whole", pixels), ("fractions", pixels), ("one", pixels),
                           ("channels first", pixels)):  # torch's layout, as some CIFAR copies store it: a row holds one image
        rows = list(HubCaptions(str(tmp_path / name), "image", "caption").records("train", BadRecords(name)))
        assert [caption for *_, pairs in rows for _, caption in pairs] == captions, name
        # each row's own pixels, stored as their PNG (fractions of 1 were refused as "not whole numbers")
        assert all(np.array_equal(np.asarray(Image.open(io.BytesIO(row[2].source))), expected[i]) for i, row in enumerate(rows))
    with pytest.raises(DataError, match=r"4 of 4 rows hold no image that can be read \(first: row 0 \(key 0\): its 'image' is an "
                                        r"array of 16 x 12 x 3 numbers: an image array of floats is in \[0, 1\] or 0-255; this "
                                        r"one spans -2.05 to 2.6 \(one normalized for a model\?\): give the image before "
                                        r"normalization; row 1 .*Give each row one image"):
        list(HubCaptions(str(tmp_path / "normalized"), "image", "caption").records("train", BadRecords("normalized")))
    with pytest.raises(DataError, match=r"its 'image' is a list of 2 images, where a row has one image \(give each image a "
                                        r"row of its own, with its captions\)"):
        list(HubCaptions(str(tmp_path / "two"), "image", "caption").records("train", BadRecords("two")))

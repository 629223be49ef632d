"""Photos as phones and their exports leave them: Hugging Face's image folder with a metadata table, an album's copies
of one photo under other names, a spreadsheet of bare names over the phone's subfolders, the files beside the photos
(a Live Photo's movie, a Mac's '._' copies, a damaged HEIC), a folder trained on and then captioned, and new photos
added to a folder already captioned."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from mmcaption.data.hub import HubCaptions
from mmcaption.data.image_sources import named_images
from mmcaption.data.records import BadRecords, DataError
from mmcaption.data.resume import interrupted_rows
from mmcaption.errors import OutputExistsError
from mmcaption.evaluation.report import summary_path
from mmcaption.images import check_image


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_an_image_folders_bad_rows_are_named_by_its_metadata_tables_line_and_hidden_files_are_not_unlisted_photos(tmp_path):
    # a metadata.csv's unreadable photo was "row 2 (key 2)": in the spreadsheet, row 2 is another, good photo; and the
    # note of photos the table does not list counted (and named first) a phone's trashed and a Mac's '._' files
    folder = tmp_path / "photos"
    (folder / "iPhone").mkdir(parents=True)
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        (folder / "iPhone" / f"IMG_000{i}.JPG").write_bytes(jpeg(colour))
    (folder / "iPhone" / "IMG_0003.JPG").write_bytes(jpeg((90, 90, 90))[:300])  # cut short in a transfer
    (folder / "iPhone" / "._IMG_0000.JPG").write_bytes(b"\x00\x05\x16\x07" + bytes(200))
    (folder / "iPhone" / ".trashed-1700000000-IMG_0009.JPG").write_bytes(jpeg((1, 2, 3)))
    (folder / "iPhone" / "IMG_0007.JPG").write_bytes(jpeg((9, 9, 9)))  # new since the table was written
    (folder / "metadata.csv").write_text("file_name,text\niPhone/IMG_0002.JPG,a blue wall\niPhone/IMG_0000.JPG,a red door\n"
                                         "iPhone/IMG_0003.JPG,a grey sky\niPhone/IMG_0001.JPG,a green field\n")
    seen = BadRecords(str(folder), "error")
    hub = HubCaptions(str(folder), "image", "text")
    rows = list(hub.records("train", seen))
    assert dict(seen.notes) == {"images beside the listed ones that the metadata file does not list, left out "
                                f"(first: {folder / 'iPhone' / 'IMG_0007.JPG'})": 1}
    problems = [(image, check_image(image.source)) for _, _, image, _ in rows]
    said = [image.blame(problem)[0] for image, problem in problems if problem is not None]
    assert len(said) == 1 and said[0].startswith("metadata.csv, line 4: its image "), said  # the spreadsheet's line 4


def test_one_photo_under_several_names_is_said_with_an_example(tmp_path):
    # an album's copy (photo(1).jpg), a Takeout export's duplicate: "rows that repeat an earlier row's image", though no
    # row repeats a name, and evaluation's predictions name the first file only
    folder = tmp_path / "takeout"
    folder.mkdir()
    same = jpeg((120, 30, 30))
    for name in ("beach.jpg", "beach(1).jpg", "IMG_0006.JPG"):
        (folder / name).write_bytes(same)
    (folder / "other.jpg").write_bytes(jpeg((0, 0, 0)))
    table = folder / "captions.csv"
    table.write_text("image,caption\nbeach.jpg,a beach\nbeach(1).jpg,sand and sea\nIMG_0006.JPG,a shore\nother.jpg,night\n")
    seen = BadRecords(str(table))
    rows = list(HubCaptions(str(table), "image", "caption").records("train", seen))
    assert [(name, [c for _, c in captions]) for _, name, _, captions in rows] == [
        ("beach.jpg", ["a beach", "sand and sea", "a shore"]), ("other.jpg", ["night"])]
    assert dict(seen.notes) == {"rows whose image is the same file as an earlier row's under another name: their captions "
                                "go with that image, which evaluation and predictions name by the earlier row's name "
                                "(first: 'beach(1).jpg' is 'beach.jpg')": 2}


def test_bare_names_over_a_phones_subfolders_are_found_where_one_file_has_the_name_else_get_the_paths_to_write(tmp_path):
    # a sheet of the photos' names alone: "run from photos/iPhone" fixed one subfolder of several, and a name typed in
    # another case got no hint at all. A name that one file below the sheet has is that file (read, and said); a name
    # that two have (phones all count IMG_0001 up) is the user's to write, and both paths are given
    folder = tmp_path / "photos"
    for sub, name in (("iPhone", "IMG_0001.JPG"), ("Android", "PXL_20260101_1.jpg"), ("Camera", "IMG_0001.JPG")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / name).write_bytes(jpeg((10, 200, 10)))
    table = folder / "captions.csv"
    table.write_text("image,caption\nIMG_0001.JPG,a field\npxl_20260101_1.JPG,a tree\n")
    with pytest.raises(DataError) as refused:
        list(HubCaptions(str(table), "image", "caption").records("train", BadRecords(str(table), "error")))
    said = str(refused.value)
    assert said.startswith(f"{table}: 1 of 2 rows name no image that is there"), said
    assert re.search(r"have that name: write the path relative to .* \((iPhone/IMG_0001\.JPG or Camera/IMG_0001\.JPG|"
                     r"Camera/IMG_0001\.JPG or iPhone/IMG_0001\.JPG)\)", said), said
    assert "run from" not in said
    records = BadRecords(str(table), "skip")
    read = list(HubCaptions(str(table), "image", "caption").records("train", records))
    assert [(name, image.source) for _, name, image, _ in read] == [
        ("pxl_20260101_1.JPG", (folder / "Android" / "PXL_20260101_1.jpg").read_bytes())]


def test_files_beside_phone_photos_are_said_for_what_they_are():
    # a Live Photo's movie was "a video, or a HEIF photo"; a Mac's '._' copy showed its first bytes; a damaged HEIC was
    # "not an image Pillow can read", as if HEIC were not read at all
    movie = b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  " + bytes(64)
    assert check_image(movie) == ("not an image Pillow can read (a video (qt: QuickTime, as a Live Photo is beside its "
                                  "photo), not a photo)")
    assert check_image(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(64)).endswith("(a video (mp42), not a photo)")
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    assert check_image(heic) == ("not an image Pillow can read (a HEIF photo (heic) that cannot be decoded: damaged, or "
                                 "cut short (copy it again from the phone))")
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)
    assert check_image(apple_double) == ("not an image Pillow can read (a macOS metadata file (AppleDouble, a '._' copy), "
                                         "not the photo)")


def test_a_folder_trained_on_and_then_captioned_leaves_its_preprocessed_data_out_of_the_files_counted(tmp_path):
    # training with data_dir on the photos' folder put its cache there; predict on the folder then said "35 files left
    # out (21 x .json, 7 x .arrow, 3 x .lock, ...)", burying the photos' own movies and sidecars
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "IMG_0001.JPG").write_bytes(jpeg((5, 5, 200)))
    (folder / "IMG_0001.MOV").write_bytes(b"\x00\x00\x00\x14ftypqt  " + bytes(32))
    split = folder / "preprocessed" / "train.rest-0123456789abcdef"
    (split / "images").mkdir(parents=True)
    (split / "meta.json").write_text("{}")
    (split / "images" / "data-00000-of-00001.arrow").write_bytes(b"x")
    (folder / "preprocessed" / "datasets").mkdir()
    (folder / "preprocessed" / "datasets" / "x.lock").write_text("")
    notes: list[str] = []
    images = named_images(str(folder), note=notes.append)
    assert [name for name, _ in images] == [str(folder / "IMG_0001.JPG")]
    assert notes[0].startswith(f"{folder}: 1 files left out, not images by their names (1 x .mov)")
    assert notes[1] == f"{folder}: mmcaption's preprocessed data left out ({folder / 'preprocessed'}), not photos"
    # a cache_dir given as the photos' own folder: its split folders are left out, not the photos beside them
    (folder / "trips").mkdir()
    (folder / "trips" / "IMG_0002.JPG").write_bytes(jpeg((5, 200, 5)))
    split.rename(folder / "train.rest-0123456789abcdef")
    images = named_images(str(folder), note=None)
    assert [name for name, _ in images] == [str(folder / "IMG_0001.JPG"), str(folder / "trips" / "IMG_0002.JPG")]


def test_resuming_a_finished_folders_output_after_new_photos_names_them_and_advice_that_works_for_a_folder(tmp_path):
    # "give the new ones their own --data.output": a folder's new output captions all of it again
    output = tmp_path / "captions.jsonl"
    output.write_text("".join(json.dumps({"image": f"photos/IMG_000{i}.JPG", "caption": "a photo"}) + "\n" for i in (1, 3)))
    summary_path(output).write_text(json.dumps({"rows": 2, "errors": 0, "interrupted": False}))
    rows = [{"image": f"photos/IMG_000{i}.JPG"} for i in (1, 2, 3)]
    with pytest.raises(OutputExistsError, match=r"this input has 3 rows now: resume goes on with an interrupted run, so to "
                                                 r"caption the 1 image not in it \(photos/IMG_0002\.JPG\), list it in a text "
                                                 r"file, one per line, and predict that \(--data\.images <list>\) into its own "
                                                 r"--data\.output, or predict all again with --data\.overwrite true"):
        interrupted_rows(output, rows)


def test_a_folder_of_only_hidden_photos_says_they_were_left_out(tmp_path):
    # photos under hidden names (a sync tool's .IMG_9999.JPG, a viewer's .thumbnails/): "no images found", as if none
    folder = tmp_path / "phone"
    (folder / ".thumbnails").mkdir(parents=True)
    (folder / ".IMG_9999.JPG").write_bytes(jpeg((200, 0, 0)))
    (folder / ".thumbnails" / "x.JPG").write_bytes(jpeg((0, 200, 0)))
    with pytest.raises(DataError, match=r"found in folder .*phone; hidden files and folders \(\.IMG_9999\.JPG, \.thumbnails\) "
                                        r"are left out, as the system's own: rename those that are photos"):
        named_images(str(folder))
    (folder / "IMG_0001.JPG").write_bytes(jpeg((0, 0, 200)))
    assert [name for name, _ in named_images(str(folder))] == [str(folder / "IMG_0001.JPG")]  # hidden ones still left out

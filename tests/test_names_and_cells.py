"""Names and cells as real files have them: photos saved as base64 text in a dataframe's export, a zip from Windows
unpacked with its names in another code page, scraped images without a suffix, paths from the home folder, a
ShareGPT-style list of one image."""

import base64
import csv
import io
import json
import shutil

import pytest
import torch
from PIL import Image

from mmcaption.data import DataError, MultipleChoiceDataModule, QuestionsPredictDataModule
from mmcaption.data.hub import HubCaptions
from mmcaption.data.image_sources import find_images
from mmcaption.data.questions import read_questions
from mmcaption.data.records import BadRecords

from .test_data_coco import coco_copy, edit_annotations, make_datamodule  # noqa: F401 - coco_copy: a fixture


def png_bytes(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_rows(path, *rows) -> None:
    """A CSV as pandas' to_csv writes it: a data: URL's comma quoted."""
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_images_held_in_their_cells_as_base64_or_data_urls_are_read_where_paths_are(backbones, tmp_path):
    # a dataframe's export of its photos (df.to_csv with the images as base64): "File name too long" and a traceback
    # that printed the whole image; a data: URL, which the Python API reads, was "image not found: mc/data:image/..."
    (tmp_path / "red.png").write_bytes(png_bytes("red"))
    text = base64.b64encode(png_bytes("red")).decode()
    url = "data:image/png;base64," + base64.b64encode(png_bytes("red")).decode()
    sheet = tmp_path / "mc.csv"
    write_rows(sheet, ["img_path", "Question", "A", "B"],
               *([cell, "What colour?", "red", "blue"] for cell in ("red.png", text, url, "x" * 300, "iVBORw0KGgo" + "A" * 90)))
    dm = MultipleChoiceDataModule(csv_file=str(sheet), tokenizer=str(backbones[0]), image_processor=str(backbones[1]))
    dm.setup("predict")
    rows = [dm.dataset[i] for i in range(5)]
    assert [row["error"] for row in rows[:3]] == [None, None, None]
    assert torch.equal(rows[1]["pixel_values"], rows[0]["pixel_values"])
    assert torch.equal(rows[2]["pixel_values"], rows[0]["pixel_values"])
    assert rows[3]["error"] == f"image not found: {tmp_path / ('x' * 300)}"  # a name no file can have: not found
    assert rows[4]["error"].startswith("the image in the file (base64 text of 101 characters: iVBORw0KGgoAAAAA...)")

    questions = tmp_path / "q.jsonl"  # a questions file, as pandas' to_json(orient="records", lines=True) writes it
    questions.write_text(json.dumps({"image": text, "question": "What colour?"}) + "\n")
    dm = QuestionsPredictDataModule(questions_file=str(questions), tokenizer=str(backbones[0]), image_processor=str(backbones[1]))
    dm.setup("predict")
    assert dm.dataset[0]["error"] is None and torch.equal(dm.dataset[0]["pixel_values"], rows[0]["pixel_values"])
    from mmcaption.images import InlineImage

    listed = tmp_path / "list.txt"
    listed.write_text(url + "\n")
    assert find_images(str(listed)) == [InlineImage(url)]

    table = tmp_path / "captions.csv"  # training: a table of photos as base64 and their captions
    table.write_text(f"image,caption\n{text},a red square\nred.png,a red picture\n{'y' * 300},a long name\n")
    with pytest.raises(DataError, match=r"line 4: its 'image' is 'y{300}', not a file"):
        list(HubCaptions(str(table), "image", "caption").records("train", BadRecords(str(table))))
    write_rows(table, ["image", "caption"], [text, "a red square"], [url, "a red picture"])
    [(_, name, image, captions)] = list(HubCaptions(str(table), "image", "caption").records("train", BadRecords(str(table))))
    assert name == text and image.source == png_bytes("red") and [c for _, c in captions] == ["a red square", "a red picture"]


def test_a_caption_tables_paths_from_the_home_folder_are_found_as_the_predict_readers_find_them(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "pics").mkdir(parents=True)
    (home / "pics" / "t1.jpg").write_bytes(png_bytes("blue"))
    monkeypatch.setenv("HOME", str(home))
    table = tmp_path / "captions.csv"
    table.write_text("image,caption\n~/pics/t1.jpg,a blue square\n~\\pics\\t1.jpg,a blue picture\n")  # was "not a file"
    [(_, _, image, captions)] = list(HubCaptions(str(table), "image", "caption").records("train", BadRecords(str(table))))
    assert image.source == png_bytes("blue") and len(captions) == 2
    listed = tmp_path / "list.txt"  # a Windows user's ~\: was "Could not determine home directory" and a traceback
    listed.write_text("~\\pics\\t1.jpg\n")
    assert find_images(str(listed)) == [home / "pics" / "t1.jpg"]


def test_file_names_of_another_code_page_are_signed_and_a_captioned_one_is_named(backbones, coco_copy, tmp_path):  # noqa: F811
    # a zip made on Windows, unpacked on Linux: its names are bytes of code page 437/850 (café.jpg as caf\x82.jpg); one
    # anywhere in the image folder stopped preprocessing with "UnicodeEncodeError: ... surrogates not allowed"
    stray = bytes(coco_copy / "train2017") + b"/caf\x82.jpg"
    shutil.copy(coco_copy / "train2017" / "000000000001.jpg", stray)
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    dm.setup("fit")
    assert len(next(iter(dm.train_dataloader()))["input_ids"]) == 4
    assert make_datamodule(backbones, coco_copy).split_folder("train2017") == dm.split_folder("train2017")  # reused

    folder = tmp_path / "my photos"  # photos with a caption .txt each: the photo itself goes into the table
    folder.mkdir()
    for stem, colour in ((b"red", "red"), (b"caf\x82", "blue")):
        with open(bytes(folder) + b"/" + stem + b".png", "wb") as photo:
            photo.write(png_bytes(colour))
        with open(bytes(folder) + b"/" + stem + b".txt", "w") as caption:
            caption.write(f"a {colour} square\n")
    with pytest.raises(DataError, match=r"1 photo name\(s\) are not UTF-8 text \(the first: caf\\x82.png\).*unzip -O cp437.*"
                                        r"--notest '.*/my photos'\)$"):
        list(HubCaptions(str(folder), "image", "caption").records("train", BadRecords(str(folder))))


def test_an_image_without_a_suffix_replaced_makes_a_new_cache(backbones, coco_copy):  # noqa: F811
    # scraped images saved without a suffix (img1): the folder's signature followed only files with an image's suffix,
    # so a replaced img1 kept the cache of its old pixels without a word
    images = coco_copy / "train2017"
    (images / "000000000001.jpg").rename(images / "img1")

    def renamed(content):
        for image in content["images"]:
            image["file_name"] = "img1" if image["file_name"] == "000000000001.jpg" else image["file_name"]

    edit_annotations(coco_copy, "train2017", renamed)
    first = make_datamodule(backbones, coco_copy)
    first.prepare_data()
    shutil.copy(images / "000000000002.jpg", images / "img1")
    again = make_datamodule(backbones, coco_copy)
    again.prepare_data()
    assert again.split_folder("train2017") != first.split_folder("train2017")


def test_a_questions_image_given_as_a_list_of_one_is_read_and_of_several_is_refused(tmp_path):
    questions = tmp_path / "q.jsonl"  # ShareGPT's "images": [...], LLaVA-1.5's list of one
    questions.write_text(json.dumps({"image": ["imgs/a.jpg"], "question": "What is it?"}) + "\n"
                         + json.dumps({"images": ["imgs/b.jpg"], "question": "What is it?"}) + "\n")
    assert [q.image for q in read_questions(questions)] == ["imgs/a.jpg", "imgs/b.jpg"]  # was "['imgs/a.jpg']"
    questions.write_text(json.dumps({"images": ["a.jpg", "b.jpg"], "question": "Which differs?"}) + "\n")
    with pytest.raises(DataError, match=r"q.jsonl, line 1: 2 images: a question is asked about one image"):
        read_questions(questions)


def test_images_without_a_suffix_are_followed_in_every_layout_a_conversation_file_names_them(tmp_path):
    # datasets' to_json writes an image as {"bytes": null, "path": ...}, Qwen-style messages as {"type": "image", "path":
    # ...}: their images without a suffix were not followed; a text-only record's "image": "" was parsed for nothing
    from mmcaption.data.llava import llava_unsigned_images

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "img4").write_bytes(png_bytes("red"))
    conversations = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A square."}]
    file = tmp_path / "conversations.json"
    for image in ({"bytes": None, "path": "imgs/img4"}, "imgs/img4"):
        file.write_text(json.dumps([{"id": "1", "image": image, "conversations": conversations}]))
        assert llava_unsigned_images(file, tmp_path) == [("imgs/img4", str(tmp_path / "imgs" / "img4"))], image
    file.write_text(json.dumps([{"id": "1", "image": "", "conversations": conversations[1:]},
                                {"id": "2", "image": "imgs/a.jpg", "conversations": conversations}]))
    assert llava_unsigned_images(file, tmp_path) == []

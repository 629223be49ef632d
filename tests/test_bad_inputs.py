"""The bad-input catalogue: every kind is converted correctly, or refused with a message naming
the file or record, or skipped and counted when the user asks - never a bare traceback."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmcaption import images
from mmcaption.data import CaptionDataModule, DataError, MultipleChoiceDataModule

TARGET = "000000000004.jpg"  # the image each case replaces


def make_dm(backbones, root, **kwargs):
    return CaptionDataModule(data_dir=str(root), tokenizer=str(backbones[0]), image_processor=str(backbones[1]),
                             batch_size=60, num_workers=0, **kwargs)


@pytest.fixture
def coco(coco_root, tmp_path) -> Path:
    return Path(shutil.copytree(coco_root, tmp_path / "coco"))


def save(image: Image.Image, path: Path, **kwargs) -> None:
    image.save(path, format=kwargs.pop("format", "PNG"), **kwargs)


CONVERTED = {
    "grayscale": lambda p: save(Image.new("L", (64, 64), 200), p),
    "palette": lambda p: save(Image.new("RGB", (64, 64), (200, 30, 30)).convert("P"), p),
    "rgba": lambda p: save(Image.new("RGBA", (64, 64), (200, 30, 30, 128)), p),
    "cmyk jpeg": lambda p: save(Image.new("CMYK", (64, 64), (0, 200, 200, 0)), p, format="JPEG"),
    "16-bit png": lambda p: save(Image.fromarray((np.arange(4096).reshape(64, 64) * 16).astype(np.uint16)), p),
    "huge image": lambda p: save(Image.new("RGB", (4000, 3000), (30, 200, 30)), p, format="JPEG"),
    "one pixel": lambda p: save(Image.new("RGB", (1, 1), (30, 30, 200)), p),
}


@pytest.mark.parametrize("kind", CONVERTED)
def test_unusual_but_valid_images_are_converted_to_rgb_at_the_model_size(backbones, coco, kind):
    CONVERTED[kind](coco / "train2017" / TARGET)
    dm = make_dm(backbones, coco)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (60, 3, 64, 64)
    assert torch.isfinite(batch["pixel_values"]).all()


REFUSED = {
    "truncated jpeg": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]),
    "corrupt jpeg": lambda p: p.write_bytes(p.read_bytes()[:200] + b"\x00" * 50 + b"garbage" * 20),
    "zero-byte file": lambda p: p.write_bytes(b""),
    "text with an image extension": lambda p: p.write_text("this is not an image\n"),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_broken_images_are_named_or_skipped_and_counted(backbones, coco, kind):
    REFUSED[kind](coco / "train2017" / TARGET)
    with pytest.raises(DataError, match=rf"{TARGET} \(image id 4\) cannot be decoded"):
        make_dm(backbones, coco).prepare_data()
    dm = make_dm(backbones, coco, on_bad_record="skip")
    with pytest.warns(UserWarning, match="1 x unreadable image"):
        dm.prepare_data()
    assert json.loads((dm.split_folder("train2017") / "meta.json").read_text())["skipped"] == {"unreadable image": 1}


def test_decompression_bomb_is_refused_by_name(backbones, coco, monkeypatch):
    save(Image.new("RGB", (400, 400)), coco / "train2017" / TARGET)
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)  # 400 x 400 is then over the limit
    with pytest.raises(DataError, match=rf"{TARGET} .*DecompressionBombError: 400 x 400 = 160,000 pixels, above the 100,000"):
        make_dm(backbones, coco).prepare_data()


def edit(root: Path, change) -> None:
    path = root / "annotations" / "captions_train2017.json"
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["annotations"][2].update(caption=42), r"annotation id 3: 'caption' is not a string"),
        # (text that spells an integer, "4", is read as it: tests/test_data_coco.py)
        (lambda c: c["annotations"][2].update(image_id="four"), r"annotations\[2\] needs an integer 'image_id' \(image_id "
                                                                r"'four' is text that spells no integer"),
        (lambda c: c["images"][1].update(id=None), r"images\[1\] needs an integer 'id'"),
        (lambda c: c["images"].append(dict(c["images"][0])), r"repeats image id 1"),
        (lambda c: c["annotations"][0].update(image_id=999), r"refers to image id 999"),
        # COCO's image_info_test2017.json has no annotations: a held-back split, not "no 'images' and 'annotations' lists"
        (lambda c: c.pop("annotations"), r"has no 'annotations' list: none of its 12 images has a caption \(a test split"),
        (lambda c: c.update(images={}), r"no 'images' and 'annotations' lists"),
        # a path outside the image folder is read as written (labelling tools write absolute ones): named when it is no image
        (lambda c: c["images"][1].update(file_name="../photos/000000000100.jpg"), r"missing under .*photos/000000000100\.jpg"),
        (lambda c: c["images"][1].update(file_name="/etc/hostname"), r"/etc/hostname \(image id 2\) cannot be decoded"),
    ],
    ids=["caption not a string", "image id not an integer", "image without id", "duplicate image id",
         "unknown image id", "held-back split", "not a captions file", "file_name climbs out to nothing", "file_name absolute to no image"],
)
def test_wrong_field_types_and_structure_are_named(backbones, coco, change, message):
    edit(coco, change)
    with pytest.raises(DataError, match=message):
        make_dm(backbones, coco).prepare_data()


def test_non_utf8_annotation_file_and_csv_are_named(backbones, coco, tmp_path):
    (coco / "annotations" / "captions_train2017.json").write_bytes('{"images": [], "caption": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"captions_train2017\.json, line 1: not UTF-8 text \(byte 0xe9 at 30\), likely Windows' "
                                        r"local code page; write it as UTF-8"):
        make_dm(backbones, coco).prepare_data()
    # JSON Lines as Windows PowerShell 5's > writes it, and in Windows' code page: were UnicodeDecodeError tracebacks
    from mmcaption.data.records import read_json_list

    conversations = tmp_path / "llava.jsonl"
    conversations.write_bytes('{"id": "1", "conversations": []}\n'.encode("utf-16"))
    with pytest.raises(DataError, match=r"llava\.jsonl is UTF-16 text \(as Windows PowerShell 5's > and Out-File write it\), "
                                        r"not UTF-8; write it as UTF-8 \(Out-File -Encoding utf8"):
        read_json_list(conversations, "LLaVA conversation file")
    conversations.write_bytes('{"id": "1"}\n{"id": "caf\xe9"}\n'.encode("cp1252"))
    with pytest.raises(DataError, match=r"llava\.jsonl, line 2: not UTF-8 text \(byte 0xe9 at 23\)"):
        read_json_list(conversations, "LLaVA conversation file")
    csv_file = tmp_path / "q.csv"
    # Greek in its code page (Windows-1253); French in Windows-1252 is read (tests/test_users_files.py)
    csv_file.write_bytes("img_path,Question,A,B,C,D\nx.png,\u03a4\u03b9 \u03c7\u03c1\u03ce\u03bc\u03b1;,a,b,c,d\n".encode("cp1253"))
    dm = MultipleChoiceDataModule(csv_file=str(csv_file), tokenizer=str(backbones[0]), image_processor=str(backbones[1]))
    with pytest.raises(DataError, match=r"q\.csv, line 2: not UTF-8 text \(byte 0xd4"):
        dm.setup("predict")

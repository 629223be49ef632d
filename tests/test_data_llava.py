import json
import shutil
from pathlib import Path

import pytest

from mmcaption.collate import IGNORE_INDEX
from mmcaption.data import DataError, InstructDataModule
from mmcaption.demo.synthetic import write_llava_split


@pytest.fixture
def llava(coco_root, tmp_path) -> tuple[Path, Path]:
    """(train file, image root): synthetic conversations about the synthetic COCO train images."""
    image_root = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    train = write_llava_split(tmp_path / "llava", image_root, "train2017", seed=0)
    write_llava_split(tmp_path / "llava", image_root, "val2017", seed=0)
    return train, image_root


def make_datamodule(backbones, llava, **kwargs) -> InstructDataModule:
    train, image_root = llava
    language_dir, vision_dir = backbones
    defaults = dict(
        train_file=str(train), val_file=str(train.with_name("instruct_val2017.json")), image_root=str(image_root),
        tokenizer=str(language_dir), image_processor=str(vision_dir), batch_size=4, num_workers=0, max_length=256,
    )
    return InstructDataModule(**{**defaults, **kwargs})


def edit(path: Path, change) -> None:
    records = json.loads(path.read_text())
    change(records)
    path.write_text(json.dumps(records))


def test_conversations_are_preprocessed_whole_with_images_stored_once(backbones, llava):
    dm = make_datamodule(backbones, llava)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.datasets["train"]
    meta = json.loads((train.folder / "meta.json").read_text())
    assert meta["images"] == 12 and meta["rows"] == 12 and meta["skipped"] == {}
    records = json.loads(llava[0].read_text())
    first = train.rows[0]
    assert first["turns"] == len(records[0]["conversations"]) // 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    supervised = (batch["labels"] != IGNORE_INDEX).sum(1)
    assert (supervised > 0).all()
    assert ((batch["labels"] == IGNORE_INDEX) | (batch["labels"] == batch["input_ids"])).all()
    assert "<image>" not in dm.tokenizer.decode(batch["input_ids"][0])


def test_hash_split_of_one_file_is_disjoint_and_stable(backbones, llava):
    dm = make_datamodule(backbones, llava, val_file=None, val_fraction=0.3)
    dm.prepare_data()
    dm.setup("fit")
    train_ids = set(dm.datasets["train"].rows["id"])
    val_ids = set(dm.datasets["val"].rows["id"])
    assert train_ids and val_ids and not train_ids & val_ids
    assert len(train_ids | val_ids) == 12


def test_template_that_leaves_nothing_to_learn_fails_at_start(backbones, llava):
    with pytest.raises(DataError, match=r"id train2017-1: the first question needs \d+ tokens.*max_length=12"):
        make_datamodule(backbones, llava, max_length=12).prepare_data()
    with pytest.raises(DataError, match="nothing usable is left.*too long"):
        make_datamodule(backbones, llava, max_length=12, on_bad_record="skip").prepare_data()


BAD_RECORDS = {
    "turns do not alternate": (lambda r: r["conversations"].insert(1, {"from": "human", "value": "Again?"}),
                               r"turn 1 is from 'human', expected 'gpt'"),
    "empty turn": (lambda r: r["conversations"][1].update(value="  "), r"turn 1 \(gpt\) is empty"),
    "no assistant turn": (lambda r: r.update(conversations=r["conversations"][:1]), "has no assistant answer"),
    "image path escapes root": (lambda r: r.update(image="../../etc/passwd"), r"escapes the image root"),
    "absolute image path": (lambda r: r.update(image="/etc/hostname"), r"escapes the image root"),
    "missing image": (lambda r: r.update(image="train2017/nope.jpg"), r"1 of 12 conversations refer to images missing.*nope\.jpg"),
}


@pytest.mark.parametrize("kind", BAD_RECORDS)
def test_bad_record_is_named_or_skipped_and_counted(backbones, llava, kind):
    change, message = BAD_RECORDS[kind]
    edit(llava[0], lambda records: change(records[3]))
    with pytest.raises(DataError, match=message) as error:
        make_datamodule(backbones, llava).prepare_data()
    assert "instruct_train2017.json" in str(error.value)
    if kind != "missing image":
        assert "id train2017-4" in str(error.value)

    dm = make_datamodule(backbones, llava, on_bad_record="skip")
    with pytest.warns(UserWarning, match="skipped 1 bad records"):
        dm.prepare_data()
    dm.setup("fit")
    meta = json.loads((dm.datasets["train"].folder / "meta.json").read_text())
    assert sum(meta["skipped"].values()) == 1 and meta["rows"] == 11


def test_unreadable_image_and_duplicate_id(backbones, llava):
    train, image_root = llava
    (image_root / "train2017" / "000000000002.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"id train2017-2: .*000000000002\.jpg cannot be decoded"):
        make_datamodule(backbones, llava).prepare_data()
    edit(train, lambda records: records.append(dict(records[5])))
    dm = make_datamodule(backbones, llava, on_bad_record="skip")
    dm.prepare_data()
    dm.setup("fit")
    meta = json.loads((dm.datasets["train"].folder / "meta.json").read_text())
    assert meta["skipped"] == {"duplicate id": 1, "unreadable image": 1}


def test_malformed_json_and_missing_file_are_named(backbones, llava):
    llava[0].write_text("[{")
    with pytest.raises(DataError, match=r"instruct_train2017\.json is not valid JSON"):
        make_datamodule(backbones, llava).prepare_data()
    with pytest.raises(DataError, match=r"LLaVA conversation file not found: .*nope\.json"):
        make_datamodule(backbones, llava, train_file=str(llava[0].with_name("nope.json"))).prepare_data()

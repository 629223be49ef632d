import json
import re
import shutil
import unicodedata
import warnings
from pathlib import Path

import pytest

from mmcaption.collate import IGNORE_INDEX
from mmcaption.data import DataError, InstructDataModule
from mmcaption.data.llava import in_split, read_llava, split_key
from mmcaption.data.records import BadRecords
from mmcaption.demo.synthetic import write_llava_split
from mmcaption.errors import ConfigError


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


def test_conversations_in_json_lines_read_as_the_json_list(backbones, llava, tmp_path):
    records = json.loads(llava[0].read_text())
    lines = tmp_path / "instruct_train2017.jsonl"  # one record per line, as many datasets ship conversations
    lines.write_text("\n".join(json.dumps(record) for record in records) + "\n\n")
    dm = make_datamodule(backbones, llava, train_file=str(lines))
    dm.prepare_data()
    dm.setup("fit")
    assert list(dm.datasets["train"].rows["id"]) == [record["id"] for record in records]
    lines.write_text(json.dumps(records[0]) + "\n" + json.dumps(records[1])[:-1] + "\n")
    with pytest.raises(DataError, match=r"instruct_train2017\.jsonl, line 2: not valid JSON Lines"):
        make_datamodule(backbones, llava, train_file=str(lines)).prepare_data()
    # one record, and a line separator (U+2028) raw inside a string, as ensure_ascii=False writes it
    records[0]["conversations"][1]["value"] += "\u2028"
    lines.write_text(json.dumps(records[0], ensure_ascii=False) + "\n", encoding="utf-8")
    assert [c.id for c in read_llava(lines, llava[1], BadRecords(str(lines)))] == [records[0]["id"]]
    # a bad record of JSON Lines is named by its line, as an editor numbers it (was "record 1": counted from 0, blank
    # lines left out)
    broken = json.loads(json.dumps(records[1]))
    broken["conversations"][0]["from"] = "model"
    lines.write_text("\n" + json.dumps(records[0]) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(DataError, match=rf"instruct_train2017\.jsonl: line 3 \(id {broken['id']}\): turn 0 is from 'model'"):
        read_llava(lines, llava[1], BadRecords(str(lines)))
    # the JSON list saved under a .jsonl name: read as the list (was "line 1: not valid JSON Lines")
    lines.write_text(json.dumps(records[:3], indent=2))
    assert [c.id for c in read_llava(lines, llava[1], BadRecords(str(lines)))] == [r["id"] for r in records[:3]]


def test_validating_on_the_training_file_or_a_part_of_it_is_warned_of(backbones, llava, tmp_path):
    with pytest.warns(UserWarning, match=r"val_file is train_file .*: validation measures the training conversations"):
        make_datamodule(backbones, llava, val_file=str(llava[0].parent / "." / llava[0].name))
    # a val_file that is a part of train_file (LLaVA-Instruct's detail_23k.json given with llava_instruct_150k.json,
    # which holds it) was validated on without a word: val/loss, which picks the best checkpoint, measured training data
    part = tmp_path / "detail_23k.json"
    part.write_text(json.dumps(json.loads(llava[0].read_text())[:5]))
    dm = make_datamodule(backbones, llava, val_file=str(part))
    dm.prepare_data()
    with pytest.warns(UserWarning, match=rf"^5 of the 5 images of val_file {part} \(100%\) are in train_file {llava[0]} too "
                                         r"\(first: train2017/\d+\.jpg\): validation measures pictures trained on"):
        dm.setup("fit")
    # the same photos spelled otherwise (./train2017/..., as another tool writes paths): told by their content
    spelled = tmp_path / "spelled.json"
    spelled.write_text(json.dumps([{**r, "image": "./" + r["image"]} for r in json.loads(llava[0].read_text())[:5]]))
    dm = make_datamodule(backbones, llava, val_file=str(spelled))
    dm.prepare_data()
    with pytest.warns(UserWarning, match=rf"^5 of the 5 images of val_file {spelled} \(100%\) are in train_file {llava[0]} too"):
        dm.setup("fit")
    dm = make_datamodule(backbones, llava)  # validated on other images (val2017's): nothing said
    dm.prepare_data()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        dm.setup("fit")
    assert not [w for w in said if "are in train_file" in str(w.message)]


def test_a_small_file_holds_out_one_id_where_the_fraction_holds_out_none(backbones, llava, monkeypatch):
    # 12 records at 1%: the hash puts none on the val side. A first try on a sample of a large file was refused
    # ("raise val_fraction, or give val_file"); the id nearest to the val side is now held out, on both sides alike
    records = json.loads(llava[0].read_text())
    sides = {side: read_llava(llava[0], llava[1], BadRecords("f"), side, 0.01) for side in ("train", "val")}
    held = {c.id for c in sides["val"]}
    assert len(held) == 1 and held.isdisjoint(c.id for c in sides["train"])
    assert sorted(c.id for side in sides.values() for c in side) == sorted(r["id"] for r in records)
    dm = make_datamodule(backbones, llava, val_file=None, val_fraction=0.01)
    said = []
    monkeypatch.setattr("mmcaption.data.llava.rank_zero_info", said.append)
    dm.prepare_data()
    image = next(r["image"] for r in records if r["id"] in held)  # held out by its image (ids may name other images)
    assert any(f"the hash holds none of its 12 records out for validation; the conversations of image {image!r} are "
               "held out instead" in message for message in said), said
    dm.setup("fit")
    assert list(dm.datasets["val"].rows["id"]) == sorted(held) and len(dm.datasets["train"]) == len(records) - 1
    # where the hash holds some out (30% of 12 records), its choice stands
    at_30 = [c.id for c in read_llava(llava[0], llava[1], BadRecords("f"), "val", 0.3)]
    assert at_30 == [r["id"] for i, r in enumerate(records) if in_split(split_key(r, i), 0.3, "val")] and 0 < len(at_30) < 12


def test_a_small_files_one_held_out_conversation_is_one_whose_image_is_there(backbones, llava):
    # under on_bad_record: skip, the one id held out of a small file was the broken record's: validation was left
    # nothing, and the run refused ("1 of 1 conversations refer to images missing ... Fix the image folder")
    train, image_root = llava
    records = json.loads(train.read_text())
    nearest = {c.id for c in read_llava(train, image_root, BadRecords("f"), "val", 0.01)}
    (image_root / next(r["image"] for r in records if r["id"] in nearest)).unlink()
    dm = make_datamodule(backbones, llava, val_file=None, val_fraction=0.01, on_bad_record="skip")
    dm.prepare_data()
    dm.setup("fit")
    held = set(dm.datasets["val"].rows["id"])
    assert len(held) == 1 and held != nearest and len(dm.datasets["train"]) == len(records) - 2  # the broken one skipped

    # what is known only once written (a question too long for max_length): said as validation's, with what to change
    edit(train, lambda rs: [r["conversations"][0].update(value="<image>\n" + "Why? " * 400) for r in rs if r["id"] in held])
    with pytest.raises(DataError, match=r"nothing usable is left \(bad records: \{'too long': 1\}\); they are the "
                                        r"conversations held out for validation \(val_fraction 0\.01\): give val_file, or "
                                        r"raise val_fraction"):
        make_datamodule(backbones, llava, val_file=None, val_fraction=0.01, on_bad_record="skip").prepare_data()


def test_template_that_leaves_nothing_to_learn_fails_at_start(backbones, llava):
    with pytest.raises(DataError, match=r"record 0 \(id train2017-1\): the first question needs \d+ tokens.*max_length=12"):
        make_datamodule(backbones, llava, max_length=12).prepare_data()
    with pytest.raises(DataError, match="nothing usable is left.*too long"):
        make_datamodule(backbones, llava, max_length=12, on_bad_record="skip").prepare_data()


BAD_RECORDS = {
    "turns do not alternate": (lambda r: r["conversations"].insert(1, {"from": "human", "value": "Again?"}),
                               r"turn 1 is from 'human', expected 'gpt'"),
    # Gemini's files name the assistant 'model': it read as a broken alternation, naming no role it knows
    "unknown role": (lambda r: r["conversations"][1].update({"from": "model"}),
                     r"turn 1 is from 'model', expected 'gpt': a role mmcaption does not read \(the roles are human, user, "
                     r"gpt, assistant, system, developer\); rename it"),
    "empty turn": (lambda r: r["conversations"][1].update(value="  "), r"turn 1 \(gpt\) is empty"),
    # an answer of invisible characters alone (a zero-width space, a byte-order mark) was trained on, unsaid
    "invisible turn": (lambda r: r["conversations"][1].update(value="\u200b\ufeff "), r"turn 1 \(gpt\) is empty"),
    "no assistant turn": (lambda r: r.update(conversations=r["conversations"][:1]), "has no assistant answer"),
    # a path outside image_root is read as written, as LLaVA's loader reads it: a file there that is no image is named
    "absolute path to no image": (lambda r: r.update(image="/etc/hostname"), r"record 3 \(id train2017-4\): /etc/hostname cannot be decoded"),
    "missing image": (lambda r: r.update(image="train2017/nope.jpg"), r"1 of 12 conversations refer to images missing.*nope\.jpg"),
    # ShareGPT-style 'images' with two: one image per conversation is what trains
    "several images": (lambda r: r.update(images=[r.pop("image")] * 2), r"has 2 images: a conversation is trained with one"),
    # an image under a key no reader knows: the '<image>' it asks about was trained as a text-only conversation
    "<image> without an image": (lambda r: r.update(notes=r.pop("image")), r"asks about an <image> but names none"),
    # and one under a key other tools name images by, said as such (with or without an '<image>' in the question)
    "image under another key": (lambda r: r.update(picture=r.pop("image")), r"its image is under 'picture', not read \(the "
                                r"conversation would be trained as text alone\): name an image 'image'"),
    # OpenAI's vision fine-tuning layout: was "needs 'from' and a string 'value'", which it has in another form
    "image_url part": (lambda r: r["conversations"][0].update(value=[
        {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]),
        r"turn 0 has an 'image_url' part \(OpenAI's fine-tuning layout\), which is not downloaded: name the image in 'image'"),
    # images written into the file (Qwen2-VL's layout allows data: and http(s):, some exports put base64 in 'image'):
    # a bare "File name too long" traceback under skip too, or "missing image" quoting the whole base64
    "image as a data URI": (lambda r: r.update(image="data:image/jpeg;base64," + "A" * 5000),
                            r"its image is inline data \(a data: URI\), which is not read: save the image as a file"),
    "image as base64": (lambda r: r.update(image="/9j/4AAQ" + "SkZJ/Rg8A" * 600),  # a '/' every few characters, as real
                        r"its image is an image's bytes in base64, not a path"),    # base64 has: no name over 255
    "image as a web address": (lambda r: r.update(image="http://images.cocodataset.org/train2017/000000000004.jpg"),
                               r"its image is a web address \(http://images\.cocodataset\.org/train2017/.*\), not downloaded"),
    # a conversation written for Qwen-VL: trained as text-only, its placeholder and the file's name as words
    "another model's image placeholder": (lambda r: (r.pop("image"), r["conversations"][0].update(
        value="Picture 1: <img>000000033471.jpg</img>\nWhat is it?")),
        r"places its image as '<img>000000033471\.jpg</img>', another model's placeholder"),
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
    skipped = "unreadable image" if kind == "absolute path to no image" else "image not a file" if kind.startswith("image as") \
        else "empty turn" if kind == "invisible turn" else kind

    dm = make_datamodule(backbones, llava, on_bad_record="skip")
    with pytest.warns(UserWarning, match="skipped 1 bad records"):
        dm.prepare_data()
    dm.setup("fit")
    meta = json.loads((dm.datasets["train"].folder / "meta.json").read_text())
    assert meta["skipped"] == {skipped: 1} and meta["rows"] == 11


def test_images_outside_the_root_train_and_their_content_is_followed(backbones, llava, tmp_path):
    # a file of one's own with absolute paths (as scripts write them, and LLaVA's loader reads them) was refused:
    # "escapes the image root"
    train, image_root = llava
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    for name in ("000000000002.jpg", "000000000003.jpg"):
        shutil.copy(image_root / "train2017" / name, elsewhere / name)
    edit(train, lambda records: [records[1].update(image=str(elsewhere / "000000000002.jpg")),
                                 records[2].update(image="../photos/000000000003.jpg")])
    dm = make_datamodule(backbones, llava)
    dm.prepare_data()
    dm.setup("fit")
    first = dm.datasets["train"].folder
    assert json.loads((first / "meta.json").read_text())["rows"] == 12
    # replaced under the same name, outside the image folder: a new cache, not the old image's
    shutil.copy(image_root / "train2017" / "000000000005.jpg", elsewhere / "000000000002.jpg")
    again = make_datamodule(backbones, llava)
    again.prepare_data()
    again.setup("fit")
    assert again.datasets["train"].folder != first
    # gone: named with the path as written
    (elsewhere / "000000000003.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 12 conversations refer to images missing.*photos/000000000003\.jpg"):
        make_datamodule(backbones, llava).prepare_data()
    # inside image_root without an image's suffix (a scraper's img4): replaced, a new cache too (it kept the old pixels)
    shutil.copy(image_root / "train2017" / "000000000005.jpg", elsewhere / "000000000003.jpg")
    (image_root / "train2017" / "000000000004.jpg").rename(image_root / "train2017" / "img4")
    edit(train, lambda records: [r.update(image="train2017/img4") for r in records if r["image"].endswith("000000000004.jpg")])
    before = make_datamodule(backbones, llava)
    before.prepare_data()
    shutil.copy(image_root / "train2017" / "000000000006.jpg", image_root / "train2017" / "img4")
    after = make_datamodule(backbones, llava)
    assert after.split_folder("train") != before.split_folder("train")


def test_unreadable_image_is_named_or_skipped(backbones, llava):
    train, image_root = llava
    (image_root / "train2017" / "000000000002.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"record 1 \(id train2017-2\): .*000000000002\.jpg cannot be decoded"):
        make_datamodule(backbones, llava).prepare_data()
    dm = make_datamodule(backbones, llava, on_bad_record="skip")
    dm.prepare_data()
    dm.setup("fit")
    meta = json.loads((dm.datasets["train"].folder / "meta.json").read_text())
    assert meta["skipped"] == {"unreadable image": 1} and meta["rows"] == 11


def test_every_bad_record_of_a_kind_is_named_in_one_run_and_long_questions_before_any_image_is_read(backbones, llava, monkeypatch):
    train, image_root = llava
    for name in ("000000000002.jpg", "000000000004.jpg"):
        (image_root / "train2017" / name).write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"2 x unreadable image \(first: record 1 \(id train2017-2\): .*000000000002\.jpg cannot be decoded.*; "
                                        r"record 3 \(id train2017-4\): .*000000000004\.jpg cannot be decoded"):
        make_datamodule(backbones, llava).prepare_data()

    # bad records scattered through the file, of several kinds: all refused in one run (a run each, one after another)
    for name in ("000000000002.jpg", "000000000004.jpg"):
        shutil.copy(image_root / "train2017" / "000000000001.jpg", image_root / "train2017" / name)
    original = train.read_text()

    def scatter(records):
        del records[2]["conversations"]
        del records[8]["conversations"]
        records[5]["conversations"][1]["value"] = ""

    edit(train, scatter)
    with pytest.raises(DataError, match=r"instruct_train2017\.json: 3 bad records of 2 kinds: 2 x malformed record \(first: record 2 "
                                        r"\(id train2017-3\) has no 'conversations' \(or 'messages'\) list, nor a 'question' and its 'answer'; "
                                        r"record 8 .*\); 1 x empty turn "
                                        r"\(first: record 5 \(id train2017-6\): turn 1 \(gpt\) is empty\)\. Fix or remove them, or set "
                                        r"on_bad_record to skip \(--data.init_args.on_bad_record skip\)"):
        make_datamodule(backbones, llava).prepare_data()
    # and a missing image with them (LLaVA-1.5's mix often lacks some): it was the next run's news
    moved, aside = image_root / "train2017" / "000000000010.jpg", image_root.parent / "aside.jpg"
    moved.rename(aside)
    with pytest.raises(DataError, match=r"instruct_train2017\.json: 4 bad records of 3 kinds: .*; 1 x missing image \(first: \S+"
                                        r"000000000010\.jpg \(record 9 \(id train2017-10\)\) does not exist\)\. Fix or remove them"):
        make_datamodule(backbones, llava).prepare_data()
    aside.rename(moved)
    train.write_text(original)

    # none of the images decodes: still named, not "nothing usable is left"
    for path in (image_root / "train2017").glob("*.jpg"):
        path.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"12 x unreadable image \(first: record 0 \(id train2017-1\): "):
        make_datamodule(backbones, llava).prepare_data()

    # questions too long for max_length: all named, and found before the images are decoded
    edit(train, lambda records: [r["conversations"][0].update(value="<image>\n" + "What is it? " * 200) for r in records[5:7]])
    decoded = []
    monkeypatch.setattr("mmcaption.data.image_pass.check_image", lambda data: decoded.append(data))
    with pytest.raises(DataError, match=r"2 of 12 conversations do not fit max_length=256 \(first: record 5 \(id train2017-6\): the first "
                                        r"question needs \d+ tokens.*; record 6 \(id train2017-7\): .*\. Raise max_length, or "
                                        r"shorten them, or set on_bad_record to skip \(--data.init_args.on_bad_record skip\)"):
        make_datamodule(backbones, llava).prepare_data()
    assert decoded == []
    # all of them too long: skipping them is no way out, and not offered (followed, it led to "nothing usable is left")
    with pytest.raises(DataError, match=r"12 of 12 conversations do not fit max_length=20 .*Raise max_length, or shorten "
                                        r"them\.$"):
        make_datamodule(backbones, llava, max_length=20).prepare_data()


def test_conversations_as_llava_trains_them_an_opening_answer_and_a_last_question_without_answer_dropped(backbones, llava):
    train, _ = llava

    def change(records):
        records[0]["conversations"].insert(0, {"from": "gpt", "value": "Hello, ask me about the image."})
        records[1]["conversations"].append({"from": "human", "value": "And then?"})

    edit(train, change)
    dm = make_datamodule(backbones, llava)
    with pytest.warns(UserWarning) as warned:
        dm.prepare_data()
    said = " ".join(str(w.message) for w in warned)
    assert "1 x conversations that open with an assistant turn" in said and "1 x conversations that end with an unanswered question" in said
    dm.setup("fit")
    rows = dm.datasets["train"].rows
    records = json.loads(train.read_text())
    kept = {row["id"]: row for row in rows}
    assert kept[records[0]["id"]]["questions"][0] == records[0]["conversations"][1]["value"].replace("<image>", "").strip()
    assert kept[records[1]["id"]]["turns"] == (len(records[1]["conversations"]) - 1) // 2
    notes = json.loads((dm.datasets["train"].folder / "meta.json").read_text())["notes"]
    assert sum(n for kind, n in notes.items() if "assistant turn" in kind or "unanswered question" in kind) == 2


def test_images_two_folders_down_are_found_and_one_records_wrong_path_is_the_records_to_fix(backbones, llava):
    train, image_root = llava  # images in <image_root>/train2017/, named there by bare file names
    records = json.loads(train.read_text())
    edit(train, lambda rs: [r.update(image=r["image"].split("/")[-1]) for r in rs])
    top = image_root.parent  # two levels above them: the folder below was looked in only one level down
    with pytest.raises(DataError, match=rf"000000000001\.jpg is under {re.escape(str(image_root / 'train2017'))}: is that "
                                        r"the image folder\?"):
        make_datamodule(backbones, (train, top)).prepare_data()
    # one record of many with another prefix: the image folder suggested for it lost every other image
    edit(train, lambda rs: [r.update(image=("coco/train2017/" if i == 0 else "train2017/") + r["image"]) for i, r in enumerate(rs)])
    with pytest.raises(DataError, match=r"1 of 12 conversations refer to images missing .*coco/train2017/000000000001\.jpg is "
                                        rf"under {re.escape(str(top))}: the other images are found, so it is that record's "
                                        r"path to fix \(train2017/000000000001\.jpg\)"):
        make_datamodule(backbones, (train, image_root)).prepare_data()
    assert len(records) == 12


def test_a_wrong_image_folder_is_named_with_the_path_tried_and_where_the_images_are(backbones, llava):
    train, image_root = llava
    # LLaVA-1.5's mix names images from the folder above COCO's (coco/train2017/...): pointing image_root lower misses them all
    edit(train, lambda records: [r.update(image="coco/" + r["image"]) for r in records])
    nested = image_root.parent / "data"
    (nested).mkdir()
    image_root.rename(nested / "coco")
    for policy in ("error", "skip"):  # none found at all: refused even under skip, whatever the text-only records
        with pytest.raises(DataError, match=r"12 of 12 conversations refer to images missing under .*data/coco \(first: record 0 \(id train2017-1\), "
                                            r"its image coco/train2017/000000000001\.jpg looked for as .*data/coco/coco/train2017/"
                                            r"000000000001\.jpg\)\. coco/train2017/000000000001\.jpg is under .*data: is that the image folder\?"):
            make_datamodule(backbones, (train, nested / "coco"), on_bad_record=policy).prepare_data()
    # and a record bad otherwise too (turns out of order): the wrong folder was a second run's news, once it was mended
    records = json.loads(train.read_text())
    records[3]["conversations"][1]["from"] = "human"
    turned = train.with_name("turned.json")
    turned.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"11 of 11 conversations refer to images missing under .*is that the image folder\? "
                                        r"Fix the image folder\. Besides, 1 x turns do not alternate \(first: record 3 "):
        make_datamodule(backbones, (turned, nested / "coco")).prepare_data()
    # one level too high (the caption stage's data_dir, data/ for data/coco/...): the folder below is named
    with pytest.raises(DataError, match=rf"looked for as {re.escape(str(nested.parent))}/coco/train2017/000000000001\.jpg\)\. "
                                        rf"coco/train2017/000000000001\.jpg is under {re.escape(str(nested))}: is that the image folder\?"):
        make_datamodule(backbones, (train, nested.parent)).prepare_data()
    # the image there under another suffix (LLaVA-1.5's ocr_vqa download leaves 140031996.png where the file says .jpg)
    first = nested / "coco" / "train2017" / "000000000001.jpg"
    first.rename(first.with_suffix(".png"))
    with pytest.raises(DataError, match=r"looked for as .*000000000001\.jpg\)\. 000000000001\.png is there, the same name with "
                                        r"another suffix: rename it to 000000000001\.jpg"):
        make_datamodule(backbones, (train, nested)).prepare_data()
    # every such image counted, not only the first (the user renamed one, ran again, met the next); under skip each
    # is counted apart from the images that are not there at all (were all plain "missing image")
    second = first.with_name("000000000002.jpg")
    second.rename(second.with_suffix(".gif"))
    (nested / "coco" / "train2017" / "000000000003.jpg").unlink()
    with pytest.raises(DataError, match=r"3 of 12 conversations .* rename it to 000000000001\.jpg\. 2 of the 3 are there under "
                                        r"another suffix \(ocr_vqa's \.png and \.gif for \.jpg\): rename them"):
        make_datamodule(backbones, (train, nested)).prepare_data()
    edit(train.with_name("instruct_val2017.json"), lambda records: [r.update(image="coco/" + r["image"]) for r in records])
    dm = make_datamodule(backbones, (train, nested), on_bad_record="skip")
    with pytest.warns(UserWarning, match=r"2 x missing image, there under another suffix \(first: .*000000000001\.jpg \(record 0 "
                                         r"\(id train2017-1\)\) does not exist, 000000000001\.png does: rename it to 000000000001\.jpg\)"):
        dm.prepare_data()
    dm.setup("fit")
    meta = json.loads((dm.datasets["train"].folder / "meta.json").read_text())
    assert meta["skipped"] == {"missing image, there under another suffix": 2, "missing image": 1}


def test_repeated_ids_are_separate_conversations_as_in_llava_instruct_150k(backbones, llava):
    """LLaVA-Instruct-150k merges three subsets (conversation, detail, complex reasoning) keyed by the
    COCO image id: one id carries several conversations about one image."""
    train, _ = llava
    records = json.loads(train.read_text())
    merged = []
    for opener in ("", "Describe it. ", "Think about it. "):
        for record in records:
            turns = [dict(turn) for turn in record["conversations"]]
            turns[0]["value"] = opener + turns[0]["value"]
            merged.append({"id": record["id"], "image": record["image"], "conversations": turns})
    merged.append(json.loads(json.dumps(merged[4])))  # the same record twice: a real duplicate
    train.write_text(json.dumps(merged))

    dm = make_datamodule(backbones, llava, val_file=None, val_fraction=0.3)  # on_bad_record: error
    dm.prepare_data()
    dm.setup("fit")
    sides = {name: dm.datasets[name] for name in ("train", "val")}
    assert sum(len(d.rows) for d in sides.values()) == 3 * len(records)  # every conversation kept, once
    ids = {name: d.rows["id"] for name, d in sides.items()}
    assert not set(ids["train"]) & set(ids["val"])  # an image's conversations stay on one side
    metas = {name: json.loads((d.folder / "meta.json").read_text()) for name, d in sides.items()}
    for name, meta in metas.items():
        assert meta["images"] == len(set(ids[name])) and meta["rows"] == len(ids[name]) == 3 * meta["images"]
        assert meta["skipped"] == {}
    duplicates = [n for meta in metas.values() for kind, n in meta["notes"].items() if kind.startswith("duplicate records")]
    assert duplicates == [1]  # skipped and counted once, on its side of the split
    # a record that goes wrong is named by its place too: its id names 3 records (was "id train2017-2" alone)
    merged[len(records) + 1]["image"] = "train2017/missing.jpg"
    train.write_text(json.dumps(merged))
    with pytest.raises(DataError, match=rf"\(first: record {len(records) + 1} \(id {merged[1]['id']}\), its image train2017/missing"):
        make_datamodule(backbones, llava, val_file=None, val_fraction=0.3).prepare_data()


def test_sharegpt_and_openai_style_records_read_as_llavas(llava, tmp_path):
    """Files written by people's own scripts and common tools: 'images' lists and 'messages' of role /
    content (LLaMA-Factory, OpenAI), a system turn, a question that is the image alone, a null id,
    Windows paths and macOS's decomposed accents."""
    _, image_root = llava
    accented = image_root / "train2017" / unicodedata.normalize("NFD", "café.jpg")
    shutil.copy(image_root / "train2017" / "000000000003.jpg", accented)
    records = [
        {"id": "a", "images": ["train2017/000000000001.jpg"], "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "<image>What colour is it?"}, {"role": "assistant", "content": "Yellow."}]},
        {"id": None, "image": "train2017\\000000000002.jpg", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A yellow diamond on the top."}]},
        {"image": ["train2017/" + unicodedata.normalize("NFC", "café.jpg")], "conversations": [
            {"from": "human", "value": "<image>\nCompare <image> with it."}, {"from": "gpt", "value": "The same."}]},
        {"id": "text", "images": [], "messages": [{"role": "user", "content": "Say red."}, {"role": "assistant", "content": "red"}]},
        # LLaMA-Factory's "system" column beside the turns: dropped without a word before
        {"id": "pirate", "system": "You are a pirate.", "conversations": [{"from": "human", "value": "Hi."},
                                                                          {"from": "gpt", "value": "Arr."}]},
        # datasets' to_json of records of both layouts: the other layout's keys null beside these (its image was lost,
        # its turns "no 'conversations' (or 'messages') list")
        {"id": "both", "image": None, "images": ["train2017/000000000004.jpg"], "conversations": None, "messages": [
            {"role": "user", "content": "<image>What shape?"}, {"role": "assistant", "content": "A circle."}]},
    ]
    file = tmp_path / "mine.json"
    file.write_text(json.dumps(records))
    records_seen = BadRecords(str(file))
    conversations = read_llava(file, image_root, records_seen)
    assert [(c.id, c.image, c.turns) for c in conversations] == [
        ("a", "train2017/000000000001.jpg", [("What colour is it?", "Yellow.")]),
        ("#1", "train2017/000000000002.jpg", [("", "A yellow diamond on the top.")]),  # null id: as if missing
        ("#2", "train2017/" + accented.name, [("Compare with it.", "The same.")]),
        ("text", None, [("Say red.", "red")]),
        ("pirate", None, [("Hi.", "Arr.")]),
        ("both", "train2017/000000000004.jpg", [("What shape?", "A circle.")]),
    ]
    assert {kind.split(":")[0].split(" (")[0]: n for kind, n in records_seen.notes.items()} == {
        "conversations with a system turn of their own": 2, "conversations with several <image> placeholders for their one image": 1}


def test_a_list_with_something_after_it_is_named_where_it_ends(llava, tmp_path):
    # a stray bracket, or two files joined with cat: the error pointed at line 1 as "not valid JSON Lines"
    records = json.loads(llava[0].read_text())
    joined = tmp_path / "joined.json"
    first = json.dumps(records[:2], indent=1) + "\n"
    joined.write_text(first + json.dumps(records[2:4], indent=1) + "\n")
    with pytest.raises(DataError, match=rf"joined\.json is not valid JSON: Extra data: line {first.count(chr(10)) + 1} column 1"):
        read_llava(joined, llava[1], BadRecords(str(joined)))


def test_one_id_for_every_record_is_named_when_the_split_puts_them_all_on_one_side(backbones, llava):
    edit(llava[0], lambda records: [r.update(id=None if i % 2 else "same") for i, r in enumerate(records)])
    assert len({c.id for c in read_llava(llava[0], llava[1], BadRecords("f"))}) == 7  # null ids are the records' places
    edit(llava[0], lambda records: [r.update(id="same") for r in records])
    make_datamodule(backbones, llava, val_file=None, val_fraction=0.3).prepare_data()  # held out by image: both sides have some
    image = json.loads(llava[0].read_text())[0]["image"]
    edit(llava[0], lambda records: [r.update(image=image) for r in records])
    with pytest.raises(DataError, match=r"none of its 12 usable records falls on the (val|train) side \(a record's side is a hash of "
                                        rf"its image, .*all of them are about the image '{image}', and a picture's "
                                        r"conversations stay on one side: give val_file"):
        make_datamodule(backbones, llava, val_file=None, val_fraction=0.3).prepare_data()
    def text_only(records):  # held out by id
        for record in records:
            del record["image"]
            for turn in record["conversations"]:
                turn["value"] = turn["value"].replace("<image>", "").strip()
    edit(llava[0], text_only)
    with pytest.raises(DataError, match=r"all of them have the id 'same': give each record its own id \(or none\), or give val_file"):
        make_datamodule(backbones, llava, val_file=None, val_fraction=0.3).prepare_data()


def test_malformed_json_and_missing_file_are_named(backbones, llava):
    llava[0].write_text("[{")
    with pytest.raises(DataError, match=r"instruct_train2017\.json is not valid JSON"):
        make_datamodule(backbones, llava).prepare_data()
    with pytest.raises(DataError, match=r"LLaVA conversation file not found: .*nope\.json"):
        make_datamodule(backbones, llava, train_file=str(llava[0].with_name("nope.json"))).prepare_data()


def test_truncation_counts_every_cut_exactly(backbones, llava):
    train, _ = llava
    records = json.loads(train.read_text())
    short = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]
    long_answer = "a red circle on the left and a blue square on the right of it, " * 4
    later = [{"from": "human", "value": "Describe the picture."}, {"from": "gpt", "value": long_answer}]
    cut = [{"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": long_answer}]
    train.write_text(json.dumps([
        {"id": "fits", "image": records[0]["image"], "conversations": short},
        {"id": "dropped", "image": records[1]["image"], "conversations": short + later},
        {"id": "cut", "image": records[2]["image"], "conversations": cut},
    ]))
    probe = make_datamodule(backbones, llava)
    fits = len(probe.template.encode([("What colour is it?", "red")], probe.tokenizer, 10_000).input_ids)
    dm = make_datamodule(backbones, llava, max_length=fits + 4)
    dm.prepare_data()
    # said at every fit, as cut captions are: a run on a cache built earlier said nothing of the turns never trained on
    with pytest.warns(UserWarning, match=r"split train: 1 of 4 question-answer turns \(25\.0%\) do not fit max_length"):
        dm.setup("fit")
    train_rows = dm.datasets["train"].rows
    meta = json.loads((dm.datasets["train"].folder / "meta.json").read_text())
    assert meta["rows"] == len(train_rows) == 3 and meta["skipped"] == {}
    assert meta["notes"] == {
        "conversations with later turns dropped whole to fit max_length": 1,
        "first answers cut to fit max_length (kept, without their end-of-text token)": 1,
    }
    # which record each happened to, as prepare's summary says it (it gave counts alone)
    assert meta["note_examples"] == {"conversations with later turns dropped whole to fit max_length": "record 1 (id dropped)",
                                     "first answers cut to fit max_length (kept, without their end-of-text token)": "record 2 (id cut)"}
    rows = {row["id"]: row for row in train_rows}
    assert rows["dropped"]["turns"] == 1 and rows["dropped"]["turns_dropped"] == 1
    assert rows["cut"]["labels"][-1] != dm.tokenizer.eos_token_id and len(rows["cut"]["input_ids"]) == fits + 4
    assert rows["fits"]["labels"][-1] == dm.tokenizer.eos_token_id
    # prepare's summary counts turns too: "1 conversation with turns dropped (33%)" said nothing of how many answers
    # went untrained (a 30-turn conversation keeping 3 is one conversation)
    from mmcaption.data.summary import format_summary, split_summary

    summary = split_summary(dm, dm.stage_splits()["train"])
    assert summary["turns"] == {"kept": 3, "dropped": 1}
    assert "  turns       3 of 4 question-answer turns kept, 1 dropped to max_length (25.0%)" in format_summary(summary)


def test_text_only_conversations_train_beside_image_ones(backbones, llava):
    """LLaVA-1.5's mixed file has tens of thousands of records without an image."""
    train, _ = llava
    records = json.loads(train.read_text())
    text_only = [{"id": f"text-{i}", "conversations": [{"from": "human", "value": f"Say {word}."}, {"from": "gpt", "value": word}]}
                 for i, word in enumerate(["red", "blue", "green"])]
    text_only[1]["image"] = None
    train.write_text(json.dumps(records + text_only))
    val = train.with_name("instruct_val2017.json")
    val.write_text(json.dumps(text_only))  # a split with no image at all
    dm = make_datamodule(backbones, llava)
    dm.prepare_data()
    dm.setup("fit")
    meta = json.loads((dm.datasets["train"].folder / "meta.json").read_text())
    assert meta["rows"] == len(records) + 3 and meta["images"] == len(records) and meta["skipped"] == {}
    assert meta["notes"] == {"text-only conversations (no image: the cross-attention is skipped for them)": 3}
    rows = dm.datasets["train"].rows
    text_rows = [i for i, index in enumerate(rows["image_index"]) if index == -1]
    assert sorted(rows[i]["id"] for i in text_rows) == ["text-0", "text-1", "text-2"]
    mixed = dm.datasets["train"].__getitems__([0, *text_rows])
    assert [bool(s["image_mask"]) for s in mixed] == [True, False, False, False]
    assert mixed[0]["pixel_values"].abs().sum() > 0 and all(s["pixel_values"].abs().sum() == 0 for s in mixed[1:])
    assert len(dm.datasets["val"].images) == 0 and len(dm.datasets["val"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("cache_image_features", [False, True])
def test_a_mixed_batch_trains_and_text_only_questions_are_answered(backbones, llava, tmp_path, cache_image_features):
    from lightning.pytorch import Trainer

    from .conftest import make_captioner

    train, _ = llava
    records = json.loads(train.read_text())
    text_only = [{"id": f"text-{i}", "conversations": [{"from": "human", "value": "Say red."}, {"from": "gpt", "value": "red"}]}
                 for i in range(6)]
    train.write_text(json.dumps(records[:6] + text_only))
    train.with_name("instruct_val2017.json").write_text(json.dumps(records[6:8] + text_only[:2]))
    dm = make_datamodule(backbones, llava, val_answer_questions=None, batch_size=4, cache_image_features=cache_image_features)
    module = make_captioner(backbones, learning_rate=1e-2, generation={"max_new_tokens": 4})
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert 0.0 <= metrics["val/answer_exact_match"] <= 1.0  # image and text-only questions were answered


def test_mmcaption_test_on_conversations_answers_their_questions_and_writes_each_with_its_question(backbones, llava, tmp_path):
    from lightning.pytorch import Trainer

    from .conftest import make_captioner

    train, _ = llava
    val = json.loads(train.with_name("instruct_val2017.json").read_text())
    dm = make_datamodule(backbones, llava, test_answer_questions=3)
    module = make_captioner(backbones, generation={"max_new_tokens": 3})
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path / "run", enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.test(module, datamodule=dm, verbose=False)[0]

    folder = Path(trainer.log_dir)
    results = json.loads((folder / "test-val.results.json").read_text())
    rows = [json.loads(line) for line in (folder / "test-val.predictions.jsonl").read_text().splitlines()]
    asked = [(r["id"], t["value"].replace("<image>", "").strip()) for r in val for t in r["conversations"] if t["from"] == "human"]
    assert [(row["id"], row["question"]) for row in rows] == asked[:3]  # which question each answer is to
    assert all(isinstance(row["prediction"], str) and row["answer"] for row in rows)
    assert results["questions"] == 3 and results["metrics"]["answer_exact_match"] == pytest.approx(logged["test/answer_exact_match"])

    # the first 3 of the split's questions: said, as a part of the split is (it was not, beside a whole split's numbers)
    assert len(asked) > 3 and results["limited_by"] == "data.test_answer_questions 3 (the split's first 3 questions)"
    # a LLaVA file has no test split: test scores the one validation chose the best checkpoint by, said (it was not)
    assert results["note"] == ("test scored the split these data settings validate on (no test split of its own): not "
                               "held out from a best checkpoint chosen by their validation")
    loss_only = Trainer(accelerator="cpu", default_root_dir=tmp_path / "loss", enable_progress_bar=False, enable_model_summary=False,
                        limit_test_batches=1)
    logged = loss_only.test(module, datamodule=make_datamodule(backbones, llava, test_answer_questions=0, eval_batch_size=1),
                            verbose=False)[0]  # (one batch of 1: the split's other conversations left out)
    assert "test/loss" in logged and "test/answer_exact_match" not in logged
    # a part of the split says so: the results of one batch read as the whole split's
    assert json.loads((Path(loss_only.log_dir) / "test-val.results.json").read_text())["limited_by"] == "trainer.limit_test_batches 1"


def test_records_without_ids_repeated_are_duplicates_kept_once_on_one_side(backbones, llava):
    # a file concatenated twice (or two exports merged), its records without ids: by their places, the copies fell
    # on both sides of the split - the same conversation trained on and validated - and none was a duplicate
    train, _ = llava
    records = [{k: v for k, v in record.items() if k != "id"} for record in json.loads(train.read_text())]
    train.write_text(json.dumps(records + records))

    dm = make_datamodule(backbones, llava, val_file=None, val_fraction=0.5)
    dm.prepare_data()
    dm.setup("fit")
    sides = {name: dm.datasets[name] for name in ("train", "val")}
    assert sum(len(d.rows) for d in sides.values()) == len(records)  # each conversation once
    metas = [json.loads((d.folder / "meta.json").read_text()) for d in sides.values()]
    duplicates = sum(n for meta in metas for kind, n in meta["notes"].items() if kind.startswith("duplicate records"))
    assert duplicates == len(records)  # each copy counted once, on the side it would have gone to


def test_records_without_ids_are_held_out_by_image_so_no_picture_is_trained_on_and_validated(llava):
    # ShareGPT-style files (LLaMA-Factory's) have no ids and several conversations per image: held out by their
    # places, the same pictures were trained on and validated
    train, image_root = llava
    records = json.loads(train.read_text())
    asked = [{"messages": [{"role": "user", "content": f"<image>Question {k}?"}, {"role": "assistant", "content": f"answer {k}"}],
              "images": [record["image"]]} for k in range(4) for record in records]
    train.write_text(json.dumps(asked))
    sides = {side: read_llava(train, image_root, BadRecords("f"), side, 0.3) for side in ("train", "val")}
    images = {side: {c.image for c in conversations} for side, conversations in sides.items()}
    assert images["val"] and images["train"] and images["train"].isdisjoint(images["val"])
    assert sum(len(c) for c in sides.values()) == len(asked)
    assert all(len([c for c in sides["val"] if c.image == image]) == 4 for image in images["val"])  # all four of each


def test_trl_content_parts_read_as_text_and_the_image_part_as_its_placeholder(llava, tmp_path):
    # TRL's and Hugging Face's chat datasets (llava-instruct-mix-vsft) write each turn's content as a list of parts:
    # refused as "needs 'role' and 'content'" though both were there
    _, image_root = llava
    records = [
        {"id": "trl", "images": ["train2017/000000000001.jpg"], "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What colour is it?\n"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Yellow."}]},
            {"role": "user", "content": [{"type": "text", "text": "And its shape?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A diamond."}]}]},
        {"id": "url", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.jpg"}}]},
                                   {"role": "assistant", "content": "x"}]},
        # transformers' messages (and Qwen2-VL's, with "image") name the image in its part: was "names none"
        {"id": "part", "messages": [
            {"role": "user", "content": [{"type": "image", "path": "train2017/000000000002.jpg"}, {"type": "text", "text": "Which?"}]},
            {"role": "assistant", "content": "A diamond."}]},
        {"id": "qwen", "messages": [
            {"role": "user", "content": [{"type": "image", "image": "train2017/000000000003.jpg"}, {"type": "text", "text": "Which?"}]},
            {"role": "assistant", "content": "A circle."}]},
    ]
    file = tmp_path / "trl.json"
    file.write_text(json.dumps(records))
    seen = BadRecords(str(file), "skip")
    conversations = read_llava(file, image_root, seen)
    assert [(c.id, c.image, c.turns) for c in conversations] == [
        ("trl", "train2017/000000000001.jpg", [("What colour is it?", "Yellow."), ("And its shape?", "A diamond.")]),
        ("part", "train2017/000000000002.jpg", [("Which?", "A diamond.")]),
        ("qwen", "train2017/000000000003.jpg", [("Which?", "A circle.")])]
    assert seen.counts == {"image_url part": 1}  # refused, now with what to write in its place
    assert "put an {'type': 'image'} part (or <image>) where the image_url part was" in seen.examples["image_url part"]


def test_a_bad_record_is_counted_once_on_its_side_not_in_both_splits(backbones, llava, monkeypatch):
    # a record that cannot be used was reported by the train split and again by the val split: 2 bad records in a
    # file of 1, and kept + skipped came to more records than the file has
    train, _ = llava
    edit(train, lambda records: records.extend([
        {"id": "bad-turns", "image": records[0]["image"], "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "bad-empty", "image": records[0]["image"], "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": " "}]}]))
    dm = make_datamodule(backbones, llava, val_file=None, val_fraction=0.5, on_bad_record="skip")
    dm.prepare_data()
    dm.setup("fit")
    metas = [json.loads((dm.datasets[side].folder / "meta.json").read_text()) for side in ("train", "val")]
    assert sum(sum(meta["skipped"].values()) for meta in metas) == 2
    assert sum(meta["rows"] for meta in metas) + 2 == len(json.loads(train.read_text()))


def test_a_datasets_folder_or_parquet_as_the_conversation_file_is_named_as_such(backbones, llava, tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "train.parquet").write_bytes(b"PAR1\x00\x00PAR1")
    with pytest.raises(DataError, match=r"saved is a folder: the instruct stage reads conversations from a JSON or JSON Lines file"):
        make_datamodule(backbones, llava, train_file=str(tmp_path / "saved")).prepare_data()
    with pytest.raises(DataError, match=r"train\.parquet is a parquet file: .*Dataset\.to_json"):
        make_datamodule(backbones, llava, train_file=str(tmp_path / "train.parquet")).prepare_data()


def test_an_empty_answer_after_the_first_cuts_the_conversation_there_not_the_record(llava, tmp_path):
    # a real file's long conversation with one empty answer in its fourth turn was refused whole - and, with the
    # default on_bad_record, stopped preprocessing - though its first three turns were whole
    _, image_root = llava
    turns = [("What colour is it?", "Red."), ("And its shape?", "A circle."), ("Where is it?", "Left."), ("How many?", " ")]
    record = {"id": "long", "image": "train2017/000000000001.jpg", "conversations": [
        turn for question, answer in turns for turn in ({"from": "human", "value": question}, {"from": "gpt", "value": answer})]}
    first_empty = {"id": "first", "image": "train2017/000000000001.jpg", "conversations": [
        {"from": "human", "value": "What?"}, {"from": "gpt", "value": ""}, {"from": "human", "value": "And?"},
        {"from": "gpt", "value": "Red."}]}
    file = tmp_path / "mine.json"
    file.write_text(json.dumps([record, first_empty]))
    seen = BadRecords(str(file), "skip")
    conversations = read_llava(file, image_root, seen)
    assert [(c.id, c.turns) for c in conversations] == [("long", turns[:3])]
    assert seen.notes == {"conversations cut at an empty turn (after the first answer): the turns before it kept": 1}
    assert seen.counts == {"empty turn": 1}  # an empty first answer leaves nothing whole: refused, as before


def test_the_image_folder_is_walked_once_per_prepare_data_not_at_each_place_that_asks(backbones, llava, monkeypatch):
    # at COCO's 118k images each walk took 5-10 s: a cached fit walked the same folder six times before its first step
    from mmcaption.data import base

    walked = []
    monkeypatch.setattr(base, "folder_signature", lambda folder, exclude=None: walked.append(folder) or {"files": len(walked)})
    dm = make_datamodule(backbones, llava)  # train and val read the same image_root
    dm.prepare_data()
    dm.setup("fit")
    assert walked == [llava[1]]
    first = dm.split_folder("train")
    dm.prepare_data()  # a later prepare_data looks again: images added since are not missed
    assert walked == [llava[1]] * 2 and dm.split_folder("train") != first


def test_chat_files_as_todays_tools_write_them_read_or_are_refused_naming_the_field(llava, tmp_path):
    """An image under a key this reader does not read trained the whole file as text alone; OpenAI's weight-0 answers
    (not to train on) were trained; datasets' to_json of an Image column, Qwen2-VL's file:// URIs and OpenAI's developer
    turns were refused with messages that named another key, or the image folder."""
    _, image_root = llava
    image = str(image_root / "train2017" / "000000000001.jpg")
    ask = [{"role": "user", "content": "What colour is it?"}, {"role": "assistant", "content": "Yellow."}]
    read = [
        {"id": "to_json", "images": [{"bytes": None, "path": image}], "messages": ask},
        {"id": "qwen", "messages": [{"role": "user", "content": [{"type": "image", "image": "file://" + image},
                                                                 {"type": "text", "text": "What colour is it?"}]},
                                    {"role": "assistant", "content": "Yellow."}]},
        {"id": "developer", "image": image, "messages": [{"role": "developer", "content": "Be brief."}, *ask]},
    ]
    refused = [
        ({"id": "key", "image_path": "train2017/000000000001.jpg", "messages": ask},
         "its image is under 'image_path', not read (the conversation would be trained as text alone): name an image 'image'"),
        ({"id": "video", "video": "videos/v0.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
                                                                     {"from": "gpt", "value": "A dog runs."}]},
         "its video is under 'video', a video, which is not read"),
        ({"id": "weight", "image": image, "messages": [ask[0], {"role": "assistant", "content": "Wrong.", "weight": 0},
                                                       {"role": "user", "content": "Again?"}, ask[1]]},
         "turn 1 has weight 0 (an answer not to train on), which is not read"),
        ({"id": "answer", "image": image, "messages": [ask[0], {"role": "assistant", "content": "Here <image> it is."}]},
         "turn 1 (an answer) holds <image> (or an image part): the image goes with a question"),
        ({"id": "bytes", "images": [{"bytes": "iVBORw0KGgo=", "path": None}], "messages": ask},
         "its 'images' is not a path (its bytes in the file, as datasets writes an Image column: save the images as files)"),
        ({"id": "inline", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                                                                    {"type": "text", "text": "What?"}]}, ask[1]]},
         "which is inline (a data: URL) and not read: save the image as a file"),
        ({"id": "middle", "image": image, "messages": [*ask, {"role": "system", "content": "Now in French."}, *ask]},
         "turn 2 is from 'system', expected 'human' (a system turn is read first only: fold it into the next question"),
    ]
    file = tmp_path / "chat.json"
    file.write_text(json.dumps(read))
    conversations = read_llava(file, image_root, BadRecords(str(file)))
    assert [(c.id, c.image, c.turns) for c in conversations] == [
        ("to_json", image, [("What colour is it?", "Yellow.")]), ("qwen", image, [("What colour is it?", "Yellow.")]),
        ("developer", image, [("What colour is it?", "Yellow.")])]
    for record, message in refused:
        one = tmp_path / f"{record['id']}.json"
        one.write_text(json.dumps([*read, record]))
        seen = BadRecords(str(one), "skip")
        assert len(read_llava(one, image_root, seen)) == 3
        [said] = seen.examples.values()
        assert f"(id {record['id']})" in said and message in said, (record["id"], said)
    # a file the earlier reader read otherwise builds its cache again (its earlier cache trained these as text alone)
    from mmcaption.data.conversation_fields import read_otherwise_now

    assert read_otherwise_now(tmp_path / "key.json") and not read_otherwise_now(llava[0])


def test_code_that_names_an_image_type_is_text_not_the_placeholder(llava, tmp_path):
    # LLaVA-1.5's mix holds ShareGPT's code conversations: List<Image> was read as the image placeholder, so a text-only
    # record was refused ("holds <image> ... the image goes with a question") and an image record's question lost it
    _, image_root = llava
    code = "Use `List<Image> images = new List<Image>();` and add to it."
    records = [
        {"id": "sg1", "model": "", "conversations": [{"from": "human", "value": "How do I keep pictures in C#?"},
                                                     {"from": "gpt", "value": code}]},
        {"id": "sg2", "conversations": [{"from": "human", "value": "What does `List<Image>` mean in C#?"},
                                        {"from": "gpt", "value": "A list of images."}]},
        {"id": "img", "image": "train2017/000000000001.jpg", "conversations": [
            {"from": "human", "value": "<image>\nIn C#, what does List<Image> mean?"}, {"from": "gpt", "value": "A list."}]},
        {"id": "end", "image": "train2017/000000000002.jpg", "conversations": [
            {"from": "human", "value": "What colour is it?\n<Image>"}, {"from": "gpt", "value": "Red."}]},  # the original scripts' case
    ]
    # nor an XML element (an RSS feed's <image><url>...</url></image>): a text-only record was refused as an answer
    # holding <image> or a question about an image it names none of, and an image record's question lost the tag
    rss = '```xml\n<rss version="2.0"><channel>\n  <image>\n    <url>https://example.com/logo.png</url>\n  </image>\n</channel></rss>\n```'
    records += [
        {"id": "rss_a", "model": "", "conversations": [{"from": "human", "value": "Write an RSS feed with a logo."},
                                                       {"from": "gpt", "value": rss}]},
        {"id": "rss_q", "conversations": [{"from": "human", "value": f"Why does it fail?\n{rss}"}, {"from": "gpt", "value": "No title."}]},
        {"id": "tag", "image": "train2017/000000000001.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWrite its tag, like <image>photo</image>."}, {"from": "gpt", "value": "<image>square</image>"}]},
        # but LLaVA's own placeholder, at the start (or end) of a turn, is one whatever follows it
        {"id": "lead", "image": "train2017/000000000002.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat does </image> close?"}, {"from": "gpt", "value": "A tag."}]},
    ]
    file = tmp_path / "mix.json"
    file.write_text(json.dumps(records))
    seen = BadRecords(str(file), "error")
    conversations = read_llava(file, image_root, seen)
    assert [(c.id, c.turns) for c in conversations] == [
        ("sg1", [("How do I keep pictures in C#?", code)]), ("sg2", [("What does `List<Image>` mean in C#?", "A list of images.")]),
        ("img", [("In C#, what does List<Image> mean?", "A list.")]), ("end", [("What colour is it?", "Red.")]),
        ("rss_a", [("Write an RSS feed with a logo.", rss)]), ("rss_q", [(f"Why does it fail?\n{rss}", "No title.")]),
        ("tag", [("Write its tag, like <image>photo</image>.", "<image>square</image>")]),
        ("lead", [("What does </image> close?", "A tag.")])]
    assert not seen.counts and not seen.notes
    from mmcaption.data.conversation_fields import read_otherwise_now

    assert read_otherwise_now(file)  # a cache an earlier release built of it (the tag cut out) is built again


def test_one_picture_spelled_several_ways_is_on_one_side(llava):
    # a file merged from several tools names one photo ./x.jpg, x.jpg, with a Windows path's backslashes, or with a
    # decomposed accent (macOS): its side was a hash of the path as written, so the same picture was trained on and
    # validated; and such a file's cache, built when it was split that way, is not reused
    from mmcaption.data.llava import untidy_image_paths

    file, image_root = llava
    assert not untidy_image_paths(file)  # LLaVA's own spelling: its cache as it was
    (image_root / "sub").mkdir()
    (image_root / "sub" / "café.png").write_bytes((image_root / json.loads(file.read_text())[0]["image"]).read_bytes())
    spellings = ["sub/café.png", "./sub/café.png", "sub\\café.png", "sub//café.png", "sub/./café.png",
                 unicodedata.normalize("NFD", "sub/café.png")]
    edit(file, lambda records: [r.update(image=spelling) for r, spelling in zip(records, spellings)])
    assert untidy_image_paths(file)
    for fraction in (0.2, 0.5, 0.8):
        sides = {side: read_llava(file, image_root, BadRecords("f"), side, fraction) for side in ("train", "val")}
        with_it = [side for side, conversations in sides.items() if any("caf" in str(c.image) for c in conversations)]
        assert len(with_it) == 1, (fraction, with_it)
        assert sum("caf" in str(c.image) for c in sides[with_it[0]]) == len(spellings)
    # each found in the file as JSON writes it (\u escapes, or UTF-8 as written), kana and Hangul as macOS decomposes them
    others = [unicodedata.normalize("NFD", "写真/が.jpg"), unicodedata.normalize("NFD", "사진/한.jpg")]
    for spelling in [*spellings[1:], *others]:
        edit(file, lambda records, spelling=spelling: [r.update(image="sub/café.png" if i else spelling)
                                                       for i, r in enumerate(records)])
        assert untidy_image_paths(file), spelling
        file.write_text(json.dumps(json.loads(file.read_text()), ensure_ascii=False))
        assert untidy_image_paths(file), spelling
    for tidy in ("sub/café.png", "https://example.com/photos/a.jpg", "写真/が.jpg"):  # a URL's // is its own
        edit(file, lambda records, tidy=tidy: [r.update(image=tidy) for r in records])
        assert not untidy_image_paths(file), tidy


def test_one_picture_under_several_ids_is_on_one_side(llava):
    # LLaVA-1.5's mix talks about one COCO photo under several subsets' ids (llava_instruct's, VQAv2's, ...): held out by
    # id, the same picture was trained on and validated, with no word
    file, image_root = llava
    image = json.loads(file.read_text())[0]["image"]
    edit(file, lambda records: [r.update(id=f"subset-{i}", image=image) for i, r in enumerate(records[:6])])
    for fraction in (0.2, 0.5, 0.8):
        sides = {side: read_llava(file, image_root, BadRecords("f"), side, fraction) for side in ("train", "val")}
        with_it = [side for side, conversations in sides.items() if any(c.image == image for c in conversations)]
        assert len(with_it) == 1, (fraction, with_it)
        assert sum(c.image == image for c in sides[with_it[0]]) == 6


def test_a_table_of_questions_and_answers_trains_as_conversations_of_one_turn(backbones, llava, tmp_path):
    # a VQA sheet (image,question,answer) or JSON of such records as train_file: "is not valid JSON" and "has no
    # 'conversations' (or 'messages') list"; the original scripts' multiple-choice CSV trains with its options listed
    # and its letter as the answer, as LLaVA-1.5 trains multiple choice
    _, image_root = llava
    sheet = tmp_path / "vqa.csv"
    sheet.write_text("image,Question,Answer\ntrain2017/000000000001.jpg,What colour is it?,yellow\n"
                     "train2017/000000000002.jpg,\"Where is it, then?\",on the top\n")
    assert [(c.image, c.turns, c.place) for c in read_llava(sheet, image_root, BadRecords(str(sheet)))] == [
        ("train2017/000000000001.jpg", [("What colour is it?", "yellow")], "line 2"),
        ("train2017/000000000002.jpg", [("Where is it, then?", "on the top")], "line 3")]
    alpaca = tmp_path / "vqa.json"
    alpaca.write_text(json.dumps([{"image": "train2017/000000000003.jpg", "instruction": "Describe it.", "output": "A shape."},
                                  {"image": "train2017/000000000004.jpg", "instruction": "Which is it?", "input": "red or blue",
                                   "output": "red"}]))
    assert [c.turns for c in read_llava(alpaca, image_root, BadRecords(str(alpaca)))] == [
        [("Describe it.", "A shape.")], [("Which is it?\nred or blue", "red")]]  # Alpaca's input, with its instruction
    choices = tmp_path / "choices.csv"
    choices.write_text("img_path,Question,A,B,C,D,answer\ntrain2017/000000000001.jpg,What colour?,red,yellow,blue,green,B\n"
                       "train2017/000000000002.jpg,What shape?,circle,square,diamond,triangle,diamond\n"
                       "train2017/000000000003.jpg,Which?,red,blue,green,white,E\n")
    seen = BadRecords(str(choices), "skip")
    read = read_llava(choices, image_root, seen)
    assert [(c.image, c.turns) for c in read] == [
        ("train2017/000000000001.jpg", [("What colour?\nA. red\nB. yellow\nC. blue\nD. green\nAnswer with the option's letter "
                                         "from the given choices directly.", "B")]),
        ("train2017/000000000002.jpg", [("What shape?\nA. circle\nB. square\nC. diamond\nD. triangle\nAnswer with the "
                                         "option's letter from the given choices directly.", "C")])]
    assert seen.examples["multiple-choice answer"] == ("line 4 (id #2): its answer 'E' is neither one of A, B, C, D nor an "
                                                       "option's text")
    # options with a gap (A, B, D): D's text would have been asked as C; a sheet without an image column (image_id) would
    # have trained its questions without their images; a number as an answer is its text
    gap = tmp_path / "gap.csv"
    gap.write_text("image,question,A,B,C,D,answer\ntrain2017/000000000001.jpg,Which?,red,blue,,green,C\n")
    seen = BadRecords(str(gap), "skip")
    assert read_llava(gap, image_root, seen) == [] and seen.examples["multiple-choice options"] == (
        "line 2 (id #0): its options are A, B, D, with a gap: give them from A on")
    ids = tmp_path / "ids.csv"
    ids.write_text("question_id,image_id,question,answer\n1,9,Why?,because\n")
    with pytest.raises(DataError, match=r"ids\.csv has no image column \(image, images, img, img_path, image_path, file_name, "
                                        r"\.\.\.; its columns are \['question_id', 'image_id', 'question', 'answer'\]\)"):
        read_llava(ids, image_root, BadRecords(str(ids)))
    alpaca.write_text(json.dumps([{"image": "train2017/000000000003.jpg", "question": "How many?", "answer": 2}]))
    assert [c.turns for c in read_llava(alpaca, image_root, BadRecords(str(alpaca)))] == [[("How many?", "2")]]
    # its image named as a VQA table names it (image_path): read, and held out by it, as a sheet's is (was "its image is
    # under 'image_path', not read")
    named = tmp_path / "named.json"
    named.write_text(json.dumps([{"image_path": "train2017/000000000004.jpg", "Question": "Which?", "Answer": "red"}]))
    assert [(c.image, c.side) for c in read_llava(named, image_root, BadRecords(str(named)))] == [
        ("train2017/000000000004.jpg", "image train2017/000000000004.jpg")]
    # VQAv2-style human answers (its ten, as objects, or a sheet's JSON list): trained with the one most of them give
    named.write_text(json.dumps([{"image": "train2017/000000000004.jpg", "question": "Is it red?",
                                  "answers": [{"answer": "no"}, {"answer": "yes"}, {"answer": "yes"}]}]))
    assert [c.turns for c in read_llava(named, image_root, BadRecords(str(named)))] == [[("Is it red?", "yes")]]
    listed = tmp_path / "listed.csv"
    listed.write_text('image,question,answers\ntrain2017/000000000001.jpg,How many?,"[""2"", ""two"", ""2""]"\n')
    assert [c.turns for c in read_llava(listed, image_root, BadRecords(str(listed)))] == [[("How many?", "2")]]
    # VQAv2's official files or a COCO captions file given for conversations: said what they are ("is not a JSON list")
    official = tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json"
    official.write_text(json.dumps({"data_subtype": "train2014", "questions": [{"image_id": 1, "question": "Why?", "question_id": 10}]}))
    with pytest.raises(DataError, match=r"is not a JSON list of conversations: it is VQAv2's questions file \(its answers are "
                                        r"in the annotations file\); the instruct stage trains on conversations"):
        read_llava(official, image_root, BadRecords(str(official)))
    official.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match=r"it is a COCO captions file, which trains the caption stage"):
        read_llava(official, image_root, BadRecords(str(official)))
    dm = make_datamodule(backbones, llava, train_file=str(sheet), val_file=str(choices), on_bad_record="skip")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"].rows) == 2 and len(dm.datasets["val"].rows) == 2
    batch = next(iter(dm.train_dataloader()))
    answers = [dm.tokenizer.decode(ids[labels != IGNORE_INDEX]) for ids, labels in zip(batch["input_ids"], batch["labels"])]
    assert sorted(answer.strip().removesuffix(dm.tokenizer.eos_token).strip() for answer in answers) == ["on the top", "yellow"]
    # a JSON file of such records, which earlier releases refused or skipped (on_bad_record: skip), is not the cache they
    # built; LLaVA's own files keep theirs
    asked = make_datamodule(backbones, llava, train_file=str(alpaca))
    assert asked.split_inputs("train")["questions"] == "as conversations"
    assert "questions" not in make_datamodule(backbones, llava).split_inputs("train")


def test_llava_instruct_images_named_as_coco_2017_are_read_from_a_coco_2014_download(backbones, llava, tmp_path, monkeypatch):
    # LLaVA-Instruct-150k names COCO 2017's photos by id (000000215677.jpg); a user with COCO 2014's download (for
    # Karpathy's splits) has the same photos as train2014/COCO_train2014_000000215677.jpg or in val2014/: every record
    # was "missing" its image, and the refusal said "Fix the image folder"
    said = []  # what it tells the user, caught where it is said: Lightning's logger may not propagate to pytest's
    monkeypatch.setattr("mmcaption.data.image_sources.rank_zero_info", said.append)
    train, coco = llava
    records = json.loads(train.read_text())
    for record in records:
        record["image"] = Path(record["image"]).name  # as LLaVA's file names them, relative to train2017/
    bare = tmp_path / "llava_instruct_150k.json"
    bare.write_text(json.dumps(records))
    download = tmp_path / "coco2014"
    names = sorted({record["image"] for record in records})
    for number, name in enumerate(names):
        split = "val" if number == 0 else "train"  # 2017's train photos are 2014's train photos and most of its val ones
        (download / f"{split}2014").mkdir(parents=True, exist_ok=True)
        shutil.copy(coco / "train2017" / name, download / f"{split}2014" / f"COCO_{split}2014_{name}")

    dm = make_datamodule(backbones, (bare, download), val_file=None, val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    sides = [dm.datasets[side] for side in ("train", "val")]
    assert sum(len(side.rows) for side in sides) == len(records)
    assert sum(len(side.images) for side in sides) == len(names)  # each photo once, val2014's too
    assert any(f"its images are named as COCO 2017 names them ({names[0]}, ...) and are not in {download}; read from COCO "
               f"2014's copies of the same photos there (val2014/COCO_val2014_{names[0]}, ..." in note for note in said)

    # given train2014/ itself, the photo in val2014/ is missing, and where it is is said with the refusal
    with pytest.raises(DataError, match=r"1 of \d+ conversations refer to images missing"):
        make_datamodule(backbones, (bare, download / "train2014"), val_file=None, val_fraction=0.2,
                        cache_dir=str(tmp_path / "cache2")).prepare_data()
    assert any("COCO 2017's train photos are in 2014's train2014/ and val2014/: give the folder above it, which holds both, "
               "as image_root" in note for note in said)
    shutil.rmtree(download / "val2014")  # a download with its train2014/ alone: said where the others would be
    with pytest.raises(DataError, match=r"1 of \d+ conversations refer to images missing"):
        make_datamodule(backbones, (bare, download), val_file=None, val_fraction=0.2, cache_dir=str(tmp_path / "cache3")).prepare_data()
    assert any(f"train2014/ and val2014/: {download} has no val2014/" in note for note in said)


def test_a_folder_or_a_pattern_of_conversation_files_given_as_train_file_is_told_to_give_one(backbones, llava, tmp_path):
    # LLaVA-Instruct-150k comes as five files: its folder was "a folder: ... write one with datasets' Dataset.to_json",
    # and data/llava/*.json (quoted, as a config writes it) "LLaVA conversation file not found"
    folder = tmp_path / "LLaVA-Instruct-150K"
    folder.mkdir()
    for name in ("conversation_58k.json", "detail_23k.json", "llava_instruct_150k.json"):
        shutil.copy(llava[0], folder / name)
    for given, said in ((folder, "is a folder holding 3 files"), (folder / "*.json", r"is a pattern of file names matching 3 files")):
        with pytest.raises(DataError, match=rf"{re.escape(str(given))} {said} \(conversation_58k\.json, detail_23k\.json, "
                                            r"llava_instruct_150k\.json\), where one conversation file is read: give one, or "
                                            r"join them into one \(jq -s add a\.json b\.json > all\.json;"):
            make_datamodule(backbones, llava, train_file=str(given), val_file=None).prepare_data()
    from mmcaption.data.conversation_fields import one_file_wanted

    named = folder / "llava_v1_5_mix665k[clean].json"  # a file's own name with a pattern's marks: the file
    shutil.copy(llava[0], named)
    assert one_file_wanted(named) is None and one_file_wanted(llava[0]) is None


def test_a_val_file_beside_photos_of_its_own_reads_them_from_val_image_root(backbones, llava, tmp_path):
    # train/ and val/ each with photos named 0.jpg, 1.jpg, ... (a dataset's own split folders): val_file's images were
    # read from image_root, the training photos of the same names, said only as pictures trained on
    train, image_root = llava
    mine = tmp_path / "mine"
    for split, source in (("train", train), ("val", train.with_name("instruct_val2017.json"))):
        (mine / split).mkdir(parents=True)
        records = json.loads(source.read_text())
        for number, record in enumerate(records):
            shutil.copy(image_root / record["image"], mine / split / f"{number}.jpg")
            record["image"] = f"{number}.jpg"
        (mine / f"{split}.json").write_text(json.dumps(records))
    settings = dict(train_file=str(mine / "train.json"), val_file=str(mine / "val.json"), image_root=str(mine / "train"))
    dm = make_datamodule(backbones, llava, **settings, val_image_root=str(mine / "val"))
    dm.prepare_data()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        dm.setup("fit")
    assert not [w for w in said if "are in train_file" in str(w.message)]
    val_meta = json.loads((dm.datasets["val"].folder / "meta.json").read_text())
    assert Path(val_meta["image_root"]) == mine / "val" and dm.datasets["val"].rows.num_rows == len(json.loads((mine / "val.json").read_text()))
    assert Path(json.loads((dm.datasets["train"].folder / "meta.json").read_text())["image_root"]) == mine / "train"
    dm = make_datamodule(backbones, llava, **settings)  # forgotten: the training photos of those names, said with the fix
    dm.prepare_data()
    with pytest.warns(UserWarning, match=r"are in train_file .* unless --data.init_args.val_image_root names the folder of its "
                                         r"own photos"):
        dm.setup("fit")
    shutil.copytree(mine / "train", mine / "copies")  # given, a folder of the training photos' copies: said without it
    dm = make_datamodule(backbones, llava, **settings, val_image_root=str(mine / "copies"))
    dm.prepare_data()
    with pytest.warns(UserWarning, match=r"are in train_file") as said:
        dm.setup("fit")
    assert not [w for w in said if "val_image_root" in str(w.message)]
    # without it, a val photo image_root lacks is refused saying which setting reads them
    (mine / "val" / "extra.jpg").write_bytes((mine / "val" / "0.jpg").read_bytes())
    (mine / "val.json").write_text(json.dumps([{**record, "image": "extra.jpg"} for record in json.loads((mine / "val.json").read_text())]))
    with pytest.raises(DataError, match=r"missing under .*train.* val_file's images are read from image_root unless "
                                        r"--data.init_args.val_image_root names their own folder"):
        make_datamodule(backbones, llava, **settings).prepare_data()
    with pytest.raises(ConfigError, match=r"val_image_root .* is val_file's image folder: give val_file, or leave it null"):
        make_datamodule(backbones, llava, val_file=None, val_image_root=str(mine / "val"))

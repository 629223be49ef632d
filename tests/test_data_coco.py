import json
import os
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from mmcaption.collate import IGNORE_INDEX
from mmcaption.data import CaptionDataModule, DataError
from mmcaption.data.cache import IMAGE_HASHES
from mmcaption.demo.synthetic import write_coco_split
from mmcaption.errors import ConfigError


@pytest.fixture
def coco_copy(coco_root, tmp_path) -> Path:
    """A private copy of the synthetic COCO set that a test may damage."""
    return Path(shutil.copytree(coco_root, tmp_path / "coco"))


def make_datamodule(backbones, data_dir, **kwargs) -> CaptionDataModule:
    language_dir, vision_dir = backbones
    defaults = dict(tokenizer=str(language_dir), image_processor=str(vision_dir), batch_size=4, num_workers=0)
    return CaptionDataModule(data_dir=str(data_dir), **{**defaults, **kwargs})


def edit_annotations(root: Path, split: str, edit) -> None:
    path = root / "annotations" / f"captions_{split}.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_captions_longer_than_max_length_are_said_to_be_cut_when_training_reads_them(backbones, coco_copy):
    # report-length captions (a radiology set's 500 words) were cut at max_length and learned to end there without a
    # word: only `mmcaption prepare` counted them
    def lengthen(content):
        for annotation in content["annotations"][:30]:
            annotation["caption"] = " ".join([annotation["caption"]] * 20)
    edit_annotations(coco_copy, "train2017", lengthen)
    dm = make_datamodule(backbones, coco_copy, max_length=32)
    dm.prepare_data()
    with pytest.warns(UserWarning, match=r"split train2017: 30 of 60 captions \(50\.0%\) are longer than max_length 32 allows "
                                         r"\(30 caption tokens\): they are cut there \(training learns them to end there\)\. The longest has "
                                         r"\d+ tokens, 99% have \d+ or fewer: raise --data\.init_args\.max_length"):
        dm.setup("fit")
    with warnings.catch_warnings():  # room for all of them: nothing to say
        warnings.simplefilter("error")
        make_datamodule(backbones, coco_copy, max_length=1024).setup("fit")


def test_preprocessing_stores_each_image_once_and_tokenizes_every_caption(backbones, coco_copy, capfd):
    shown = datasets.is_progress_bar_enabled()  # off after a command run off a terminal in this process
    datasets.enable_progress_bars()
    try:
        dm = make_datamodule(backbones, coco_copy)
        dm.prepare_data()
    finally:
        if not shown:
            datasets.disable_progress_bars()
    bars = capfd.readouterr().err  # each pass's bar names its split and what it stores (all four said "train")
    assert all(f"Generating {name} split: " in bars for name in
               ("train2017.images", "train2017.captions", "val2017.images", "val2017.captions"))
    folder = dm.split_folder("train2017")
    images = datasets.load_from_disk(str(folder / "images"))
    captions = datasets.load_from_disk(str(folder / "captions"))
    assert len(images) == 12 and len(captions) == 60
    source = json.loads((coco_copy / "annotations" / "captions_train2017.json").read_text())
    first = source["annotations"][0]
    row = captions[0]
    assert row["caption"] == first["caption"]
    assert row["token_ids"] == dm.tokenizer(first["caption"], add_special_tokens=False)["input_ids"]
    assert images[row["image_index"]]["image"] == (coco_copy / "train2017" / "000000000001.jpg").read_bytes()
    assert json.loads((folder / "meta.json").read_text())["skipped"] == {}


def test_repeated_annotations_are_skipped_and_counted_and_a_reused_id_is_noted(backbones, coco_copy, monkeypatch):
    def repeat(content):  # a file merged twice (three annotations again), and one id given to another caption, twice
        content["annotations"] += [dict(a) for a in content["annotations"][:3]]
        content["annotations"] += [{**content["annotations"][5], "caption": "Another caption entirely."}] * 2
    edit_annotations(coco_copy, "train2017", repeat)
    warned = []
    monkeypatch.setattr("mmcaption.data.records.rank_zero_warn", warned.append)
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    captions = datasets.load_from_disk(str(dm.split_folder("train2017") / "captions"))
    assert len(captions) == 61  # 60 + the reused id's new caption; the three repeats were kept twice
    assert any("4 x duplicate annotations skipped (same id, image and caption as an earlier one)" in w for w in warned), warned
    assert any("1 x annotation ids given to more than one caption (each caption kept)" in w for w in warned), warned


def test_annotation_ids_that_are_strings_as_labelling_tools_write_them_train(backbones, coco_copy):
    # "ann-1" or a UUID (CVAT, Label Studio): the int64 caption_id column ended in datasets' traceback
    edit_annotations(coco_copy, "train2017", lambda content: [a.update(id=f"ann-{a['id']}") for a in content["annotations"]])
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    captions = datasets.load_from_disk(str(dm.split_folder("train2017") / "captions"))
    assert len(captions) == 60 and list(captions["caption_id"]) == list(range(60))  # by their places


def test_file_names_that_start_with_the_split_folder_are_found(backbones, coco_copy):
    def prefix(content):  # "train2017/000000000001.jpg", as some COCO-format exporters write file_name; on Windows
        for index, image in enumerate(content["images"]):  # with backslashes (were "missing" on Linux)
            image["file_name"] = f"train2017{'/' if index % 2 else chr(92)}{image['file_name']}"
    edit_annotations(coco_copy, "train2017", prefix)
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()  # was "12 of 12 referenced images are missing", looked for under train2017/train2017/
    assert len(datasets.load_from_disk(str(dm.split_folder("train2017") / "images"))) == 12

    def windows(content):  # exported on a Windows machine, its absolute paths, the photos copied over with the file
        for image in content["images"]:
            name = image["file_name"].replace("/", chr(92)).split(chr(92))[-1]
            image["file_name"] = f"C:\\Users\\Jürgen\\Bilder\\coco\\train2017\\{name}"
    edit_annotations(coco_copy, "train2017", windows)
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()  # was "12 of 12 referenced images are missing", looked for as train2017/C:/Users/...
    assert len(datasets.load_from_disk(str(dm.split_folder("train2017") / "images"))) == 12
    # a path of another folder than the image folder's name, whose photo was not copied over: not taken for the one of
    # the same name here (a camera's IMG_0001.JPG of another year)
    from mmcaption.file_spellings import existing_spelling

    assert existing_spelling(coco_copy / "train2017", "C:\\Photos\\2023\\000000000001.jpg") != "000000000001.jpg"


def test_absolute_file_names_as_labelling_tools_write_them_train_and_their_content_is_followed(backbones, coco_copy, tmp_path):
    # a COCO export with the photos' absolute paths (Label Studio's "/data/upload/...", a script's own) was refused:
    # "file_name ... escapes the image folder"
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    shutil.move(coco_copy / "train2017" / "000000000002.jpg", elsewhere / "two.jpg")
    shutil.move(coco_copy / "train2017" / "000000000003.jpg", elsewhere / "three.jpg")

    def absolute(content):
        content["images"][1]["file_name"] = str(elsewhere / "two.jpg")
        content["images"][2]["file_name"] = "../../photos/three.jpg"  # climbing out of coco/train2017/
    edit_annotations(coco_copy, "train2017", absolute)
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    first = dm.split_folder("train2017")
    images = datasets.load_from_disk(str(first / "images"))
    assert len(images) == 12 and str(elsewhere / "two.jpg") in images["file_name"]
    # replaced under the same name, outside the image folder: a new cache, not the old photo's
    shutil.copy(coco_copy / "train2017" / "000000000005.jpg", elsewhere / "two.jpg")
    again = make_datamodule(backbones, coco_copy)
    again.prepare_data()
    assert again.split_folder("train2017") != first
    # gone: named with the path as written
    (elsewhere / "three.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 12 referenced images are missing.*photos/three\.jpg"):
        make_datamodule(backbones, coco_copy).prepare_data()
    # a Windows exporter's ..\\ and drive letters leave the folder too: their photos are followed as well
    from mmcaption.data.records import unsigned_images

    shutil.copy(coco_copy / "train2017" / "000000000005.jpg", elsewhere / "three.jpg")
    found = unsigned_images(["..\\..\\photos\\three.jpg", "C:\\photos\\x.jpg", "000000000005.jpg"], coco_copy / "train2017")
    assert found == [("..\\..\\photos\\three.jpg", str(coco_copy / "train2017" / "../../photos/three.jpg")),
                     ("C:\\photos\\x.jpg", None)]


def test_large_images_are_stored_at_the_model_size_and_give_the_same_pixels(backbones, coco_copy):
    import random

    from mmcaption.demo.synthetic import Scene, draw_scene
    from mmcaption.images import load_rgb

    big = draw_scene(Scene("red", "circle", "left"), 640, random.Random(0)).resize((640, 480))
    big.save(coco_copy / "train2017" / "000000000002.jpg", quality=95)
    original = (coco_copy / "train2017" / "000000000002.jpg").read_bytes()
    shrunk, kept = make_datamodule(backbones, coco_copy), make_datamodule(backbones, coco_copy, resize_images=False)
    for dm in (shrunk, kept):
        dm.prepare_data()
    stored = {}
    for name, dm in (("shrunk", shrunk), ("kept", kept)):
        images = datasets.load_from_disk(str(dm.split_folder("train2017") / "images"))
        stored[name] = next(row["image"] for row in images if row["file_name"] == "000000000002.jpg")
    assert stored["kept"] == original
    side = shrunk.image_processor.size["shortest_edge"]
    assert load_rgb(stored["shrunk"]).size == (round(640 * side / 480), side) and len(stored["shrunk"]) < len(original) / 4
    pixels = [shrunk.image_processor(images=load_rgb(data), return_tensors="pt")["pixel_values"] for data in stored.values()]
    assert (pixels[0] - pixels[1]).abs().mean() < 0.05  # what the model sees hardly changes
    # small images are stored as they are
    assert datasets.load_from_disk(str(shrunk.split_folder("train2017") / "images"))[0]["image"] == (
        coco_copy / "train2017" / "000000000001.jpg").read_bytes()


def test_photos_are_checked_and_shrunk_by_a_pool_of_threads_into_the_same_split_as_one_thread_writes(
        backbones, coco_copy, tmp_path, monkeypatch):
    # one core checked and shrank COCO's 118k photos in ~30 minutes; the pool must keep their order, bytes and captions,
    # and name the photos that cannot be decoded in the annotation file's order, as one thread does
    import random

    from mmcaption.data import image_pass
    from mmcaption.demo.synthetic import Scene, draw_scene
    from mmcaption.images import load_rgb

    photos = sorted((coco_copy / "train2017").glob("*.jpg"))
    for index, path in enumerate(photos):
        scene = Scene(["red", "blue", "green"][index % 3], "circle", "left")
        draw_scene(scene, 320, random.Random(index)).resize((320, 240 + index)).save(path, quality=90)
    broken = [photos[4], photos[8]]
    for path in broken:
        path.write_bytes(path.read_bytes()[:300])
    named = rf"{broken[0].name} \(image id 5\) cannot be decoded.*{broken[1].name} \(image id 9\) cannot be decoded"
    tables = {}
    for threads in (1, 4):
        monkeypatch.setattr(image_pass, "preprocessing_threads", lambda threads=threads: threads)
        with pytest.raises(DataError, match=rf"2 x unreadable image \(first: .*{named}"):
            make_datamodule(backbones, coco_copy, cache_dir=str(tmp_path / f"refused-{threads}")).prepare_data()
        dm = make_datamodule(backbones, coco_copy, cache_dir=str(tmp_path / f"cache-{threads}"), on_bad_record="skip")
        with pytest.warns(UserWarning, match=rf"2 x unreadable image \(first: .*{broken[0].name} \(image id 5\)"):
            dm.prepare_data()
        folder = dm.split_folder("train2017")
        tables[threads] = [datasets.load_from_disk(str(folder / table)).to_dict() for table in ("images", "captions")]
    assert tables[4] == tables[1]
    side = dm.image_processor.size["shortest_edge"]
    assert [min(load_rgb(image).size) for image in tables[4][0]["image"]] == [side] * 10  # each one shrunk, by the pool
    assert tables[4][0]["file_name"] == sorted({path.name for path in photos} - {path.name for path in broken})
    assert sorted(set(tables[4][1]["image_index"])) == list(range(10))  # captions point at the images kept


def test_batches_are_padded_per_batch_and_masked(backbones, coco_copy):
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == lengths.max()  # padded to the longest in the batch, no more
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    eos = dm.tokenizer.eos_token_id
    for ids, labels, length in zip(batch["input_ids"], batch["labels"], lengths):
        assert labels[0] == IGNORE_INDEX  # <bos> is context, not a target
        assert ids[length - 1] == eos and labels[length - 1] == eos  # end of text is supervised
        assert (labels[length:] == IGNORE_INDEX).all()  # padding is not
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"].shape[0] == 4


def test_preprocessed_split_is_reused_and_rebuilt_when_its_input_changes(backbones, coco_copy):
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    folder = dm.split_folder("train2017")
    stamp = (folder / "meta.json").stat().st_mtime_ns
    make_datamodule(backbones, coco_copy).prepare_data()
    assert (folder / "meta.json").stat().st_mtime_ns == stamp

    edit_annotations(coco_copy, "train2017", lambda c: c["annotations"].pop())
    dm2 = make_datamodule(backbones, coco_copy)
    assert dm2.split_folder("train2017") != folder
    dm2.prepare_data()
    assert json.loads((dm2.split_folder("train2017") / "meta.json").read_text())["rows"] == 59


def test_a_disk_without_file_locks_still_preprocesses(backbones, coco_copy, monkeypatch):
    """NFS without lockd or Lustre without -o flock refuse flock: the build goes on unlocked."""
    import errno

    import mmcaption.data.cache as cache

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(cache, "_flock", no_locks)
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train2017"]) > 0
    assert [p.name for p in dm.cache_dir.iterdir() if p.name.startswith(".")] == []


def test_interrupted_preprocessing_leaves_nothing_that_looks_complete(backbones, coco_copy, monkeypatch):
    from mmcaption.data import image_pass

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    dm = make_datamodule(backbones, coco_copy)
    for reads in ("check_image", "load_rgb"):  # Ctrl-C while the pass reads an image (load_rgb: one stored as it is)
        monkeypatch.setattr(image_pass, reads, explode)
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    assert not dm.split_folder("train2017").exists()
    assert [p.name for p in dm.cache_dir.iterdir()] == [IMAGE_HASHES]  # only the images' hashes, no split
    monkeypatch.undo()
    dm.prepare_data()
    assert (dm.split_folder("train2017") / "meta.json").is_file()


def test_missing_annotation_file_names_it(backbones, tmp_path):
    with pytest.raises(DataError, match=r"captions_train2017\.json"):
        make_datamodule(backbones, tmp_path).prepare_data()


def test_a_coco_2014_download_is_named_with_the_settings_that_read_it(backbones, coco_copy):
    for split in ("train", "val"):  # captions_train2014.json and train2014/, where the configs name 2017's
        (coco_copy / "annotations" / f"captions_{split}2017.json").rename(coco_copy / "annotations" / f"captions_{split}2014.json")
        (coco_copy / f"{split}2017").rename(coco_copy / f"{split}2014")
    with pytest.raises(DataError) as error:
        make_datamodule(backbones, coco_copy).prepare_data()
    assert re.search(r"captions_train2017\.json .*holds the captions of train2014, val2014: to train on them, "
                     r"--data\.init_args\.train_split train2014 --data\.init_args\.val_split val2014", str(error.value))
    make_datamodule(backbones, coco_copy, train_split="train2014", val_split="val2014").prepare_data()  # as it says


def test_missing_images_are_counted_and_skipped_only_on_request(backbones, coco_copy):
    (coco_copy / "train2017" / "000000000002.jpg").unlink()
    (coco_copy / "train2017" / "000000000005.jpg").unlink()
    with pytest.raises(DataError, match=r"2 of 12 referenced images are missing.*000000000002\.jpg"):
        make_datamodule(backbones, coco_copy).prepare_data()

    dm = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    with pytest.warns(UserWarning, match="skipped 2 bad records"):
        dm.prepare_data()
    meta = json.loads((dm.split_folder("train2017") / "meta.json").read_text())
    assert meta["skipped"] == {"missing image": 2}
    assert meta["images"] == 10 and meta["rows"] == 50


def test_unreadable_image_is_named(backbones, coco_copy):
    (coco_copy / "train2017" / "000000000003.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"000000000003\.jpg \(image id 3\) cannot be decoded"):
        make_datamodule(backbones, coco_copy).prepare_data()
    dm = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    with pytest.warns(UserWarning, match="1 x unreadable image"):
        dm.prepare_data()


def test_an_image_pillow_decodes_but_cannot_convert_is_named_by_the_image_pass(backbones, coco_copy, monkeypatch):
    # a photo whose EXIF Pillow could not write back passed the pass's decode-only check, then stopped the features'
    # pass or training with a bare TypeError naming no file; any such failure is now the record's, named at once
    from PIL import Image

    import mmcaption.images

    Image.open(coco_copy / "train2017" / "000000000003.jpg").convert("L").save(coco_copy / "train2017" / "000000000003.jpg")
    real = mmcaption.images.levels

    def levels(image):
        if image.mode == "L":
            raise TypeError("bad operand type for abs(): 'str'")
        return real(image)

    monkeypatch.setattr(mmcaption.images, "levels", levels)
    with pytest.raises(DataError, match=r"000000000003\.jpg \(image id 3\) cannot be decoded: TypeError: bad operand type"):
        make_datamodule(backbones, coco_copy).prepare_data()
    dm = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    with pytest.warns(UserWarning, match="1 x unreadable image"):
        dm.prepare_data()
    dm.setup("fit")
    assert 3 not in set(dm.datasets["train2017"].images["image_id"]) and len(list(dm.train_dataloader())) > 0


def test_a_data_module_is_freed_once_its_run_is_done_with_it(backbones, coco_root):
    # a cache on its method kept every data module (and its trainer, model and optimizer) for the process's life: a sweep
    # of trials in one process grew by a model each
    import gc
    import weakref

    dm = make_datamodule(backbones, coco_root)
    assert dm.stage_splits()["val"] == "val2017"
    gone = weakref.ref(dm)
    del dm
    gc.collect()
    assert gone() is None


def test_a_max_length_with_no_room_for_a_caption_is_refused_when_the_data_is_set_up(backbones, coco_root, tmp_path):
    # was a warning of captions "cut to -1 tokens", then a refusal at the first batch, once the model had loaded
    dm = make_datamodule(backbones, coco_root, cache_dir=str(tmp_path / "cache"), max_length=2)
    dm.prepare_data()
    with pytest.raises(ConfigError, match=r"data.init_args.max_length 2 leaves no room for a caption after the 0-token "
                                          r"prompt and the start and end tokens: give at least 3"):
        dm.setup("fit")


def test_a_tracking_pixel_among_the_images_is_said(backbones, coco_copy):
    from PIL import Image

    # a web crawl's 1x1 placeholders were trained on (and captioned) without a word
    Image.new("RGB", (1, 1), (255, 255, 255)).save(coco_copy / "train2017" / "000000000003.jpg", format="PNG")
    with pytest.warns(UserWarning, match=r"1 x images smaller than 8 pixels on a side \(a web page's tracking pixel or "
                                         r"spacer\?\), trained on \(first: 000000000003\.jpg\)"):
        make_datamodule(backbones, coco_copy).prepare_data()


def test_empty_captions_are_named_all_at_once_invisible_ones_too(backbones, coco_copy):
    # a crowd-sourced file's blanks: one per run was said, and a zero-width space copied from a page was a caption
    def blank(content):
        for index, text in ((7, "   "), (9, "\u200b"), (11, "\ufeff \u2060")):
            content["annotations"][index]["caption"] = text
        content["annotations"][12]["caption"] = "\u200ba dog &amp; a cat<br>\u200b"
        same = next(a for a in content["annotations"][13:] if a["image_id"] == content["annotations"][13]["image_id"] and a is not content["annotations"][13])
        same["caption"] = content["annotations"][13]["caption"] + " "  # one caption twice for one image: said, both kept

    edit_annotations(coco_copy, "val2017", blank)
    ids = [entry["id"] for entry in json.loads((coco_copy / "annotations" / "captions_val2017.json").read_text())["annotations"]]
    with pytest.raises(DataError, match=rf"captions_val2017\.json: 3 x empty caption \(first: annotation id {ids[7]} .*; "
                                        rf"annotation id {ids[9]} .*; annotation id {ids[11]} "):
        make_datamodule(backbones, coco_copy).prepare_data()
    dm = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    with pytest.warns(UserWarning) as warned:
        dm.prepare_data()
    said = [str(w.message) for w in warned]
    assert any("skipped 3 bad records: 3 x empty caption" in line for line in said), said

    assert any("1 x captions that repeat an earlier caption of their image word for word (each kept) (first: annotation id"
               in line for line in said), said
    # the page's markup is trained on as written (unescaping could change a caption that means it), and said
    assert any(f"1 x captions holding HTML (a character reference such as &amp; or a tag such as <br>), trained on as "
               f"written (first: annotation id {ids[12]}: '&amp;' in" in line for line in said), said
    captions = datasets.load_from_disk(str(dm.split_folder("val2017") / "captions"))["caption"]
    assert "a dog &amp; a cat<br>" in captions and not any(c.strip(" \u200b\ufeff\u2060") != c or not c for c in captions)
    # an earlier release kept those characters: its cache of this file is not this release's (that of any other file is),
    # nor that of a file holding them only inside words (an emoji's joiner, Persian's ZWNJ), whose captions read the same
    import mmcaption.data.caption_cells as modules  # where the data module's signature looks for them
    from mmcaption.data.caption_cells import invisible_characters_in

    inside = coco_copy / "inside.json"
    inside.write_text(json.dumps({"annotations": [{"caption": "a family 👨\u200d👩\u200d👧 on a beach"},
                                                  {"caption": "او کتاب می\u200cخواند"}]}))
    assert not invisible_characters_in(inside)

    earlier = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modules, "invisible_characters_in", lambda file: False)
        assert earlier.split_folder("val2017") != dm.split_folder("val2017")
        assert earlier.split_folder("train2017") == dm.split_folder("train2017")


def test_bad_annotations_of_several_kinds_are_refused_together(backbones, coco_copy):
    # one pass found every kind, and a run said one of them: a file with four kinds took four runs
    def spoil(content):
        content["annotations"][3]["caption"] = ""
        content["annotations"][5]["image_id"] = 987654
        content["images"].append(dict(content["images"][0]))

    edit_annotations(coco_copy, "val2017", spoil)
    with pytest.raises(DataError, match=r"captions_val2017\.json: 3 bad records of 3 kinds: 1 x duplicate image id \(first: images\[\d+\] "
                                        r"repeats image id \d+\); 1 x empty caption \(first: annotation id .*\); 1 x unknown image "
                                        r"id \(first: annotation id .* refers to image id 987654, which is not in 'images'\)\. Fix or "
                                        r"remove them, or set on_bad_record to skip \(--data.init_args.on_bad_record skip\)"):
        make_datamodule(backbones, coco_copy).prepare_data()
    # and its missing images with them: they were a second run's news, found only once the annotations were mended
    image_file = next((coco_copy / "val2017").iterdir())
    image_file.unlink()
    with pytest.raises(DataError, match=r"captions_val2017\.json: 4 bad records of 4 kinds: .*; 1 x unknown image id \(first: "
                                        r".*\); 1 x missing image \(first: \S+" + re.escape(image_file.name) + r" \(image id \d+\) "
                                        r"does not exist\)\. Fix or remove them"):
        make_datamodule(backbones, coco_copy).prepare_data()
    # under skip, all of them counted, the rest prepared
    skipping = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    with pytest.warns(UserWarning, match="skipped 4 bad records"):
        skipping.prepare_data()
    meta = json.loads((skipping.split_folder("val2017") / "meta.json").read_text())
    assert meta["skipped"] == {"duplicate image id": 1, "empty caption": 1, "unknown image id": 1, "missing image": 1}


def test_a_table_of_captions_given_as_a_split_says_how_a_table_is_read(backbones, coco_copy):
    # it was looked for as annotations/captions_mine/captions.csv.json, and data_dir (which was right) was said to be
    # COCO's annotations folder, with the folder above it to give
    with pytest.raises(DataError) as refused:
        make_datamodule(backbones, coco_copy, val_split="mine/captions.csv")
    assert str(refused.value) == (
        "val_split mine/captions.csv: a split is named (val2017) or given as a COCO captions file (.json); a table of captions "
        "is read as a dataset: --data.init_args.source hub --data.init_args.hub_dataset mine/captions.csv (its columns: "
        "hub_image_column, hub_caption_column)")


def test_one_image_id_given_to_two_images_skips_both_with_their_captions(backbones, coco_copy):
    # two files merged by hand, each numbering its images from 1: under skip the second image was left out and its
    # captions were trained on as the first image's (its 5 captions and the other's 1, "skipped 1 x duplicate image id")
    from mmcaption.data.cache import load_table

    def merged(content):
        first = content["images"][0]
        other = next(image for image in content["images"][1:] if image["file_name"] != first["file_name"])
        content["images"].append({"id": first["id"], "file_name": other["file_name"]})
        content["annotations"].append({"id": 999, "image_id": first["id"], "caption": "a photo of my own"})

    edit_annotations(coco_copy, "val2017", merged)
    with pytest.raises(DataError, match=r"1 x duplicate image id \(first: images\[4\] repeats image id (\d+)\); 6 x caption of "
                                        r"an image id given to two images \(which one it describes cannot be told\) \(first: "
                                        r"annotation id \d+ of image id \1; "):
        make_datamodule(backbones, coco_copy).prepare_data()
    skipping = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    with pytest.warns(UserWarning, match="skipped 7 bad records"):
        skipping.prepare_data()
    folder = skipping.split_folder("val2017")
    assert json.loads((folder / "meta.json").read_text())["images"] == 3  # of 4: neither image with that id
    assert "a photo of my own" not in [row["caption"] for row in load_table(folder / "captions")]


def test_a_folder_of_tables_each_beside_its_own_photos_reads_each_splits_photos(backbones, tmp_path):
    # train/captions.csv and validation/captions.csv, each naming 0.jpg, 1.jpg, ... beside it (a split's folder): looked
    # for from the dataset's folder, the names in both were refused as ambiguous ("write the path relative to ds")
    import csv
    import io

    from PIL import Image

    from mmcaption.data.cache import load_table

    for split, colour in (("train", (200, 30, 30)), ("validation", (30, 30, 200))):
        (tmp_path / "ds" / split).mkdir(parents=True)
        with open(tmp_path / "ds" / split / "captions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "caption"])
            for number in range(4):
                Image.new("RGB", (32 + 8 * number, 32), colour).save(tmp_path / "ds" / split / f"{number}.jpg")
                writer.writerow([f"{number}.jpg", f"a {split} photo {number}"])
    dm = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(tmp_path / "ds"),
                         hub_image_column="image", hub_caption_column="caption")
    dm.prepare_data()
    for split, blue in (("train", False), ("validation", True)):
        folder = dm.split_folder(split)
        assert json.loads((folder / "meta.json").read_text())["images"] == 4
        pixel = Image.open(io.BytesIO(load_table(folder / "images")[0]["image"])).convert("RGB").getpixel((4, 4))
        assert (pixel[2] > pixel[0]) == blue, (split, pixel)


def test_one_image_listed_twice_spelled_two_ways_is_one_image_with_its_captions(backbones, coco_copy):
    # files merged by hand, one writing ./x.jpg, the other the absolute path: the same file, taken for two images, and
    # skipped with its captions
    from mmcaption.data.cache import load_table

    def merged(content):
        first = content["images"][0]
        content["images"].append({"id": first["id"], "file_name": "./" + first["file_name"]})
        content["images"].append({"id": first["id"], "file_name": str(coco_copy / "val2017" / first["file_name"])})
        content["annotations"].append({"id": 999, "image_id": first["id"], "caption": "a photo of my own"})

    edit_annotations(coco_copy, "val2017", merged)
    skipping = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    with pytest.warns(UserWarning, match="skipped 2 bad records"):
        skipping.prepare_data()
    folder = skipping.split_folder("val2017")
    assert json.loads((folder / "meta.json").read_text())["skipped"] == {"duplicate image id": 2}
    assert json.loads((folder / "meta.json").read_text())["images"] == 4
    assert "a photo of my own" in [row["caption"] for row in load_table(folder / "captions")]


def test_image_ids_written_as_text_are_read_as_the_integers_they_spell_and_others_are_refused_saying_why(backbones, coco_copy):
    # a converter that took its ids from file names ("000000000001"), or a spreadsheet's text column: every record was
    # refused as malformed ("needs an integer 'id'"), 18,000 of them for the demo's 3,000 images
    def as_text(content):
        for image in content["images"]:
            image["id"] = f"{image['id']:012d}"
        for annotation in content["annotations"]:
            annotation["image_id"] = f"{annotation['image_id']:012d}"

    edit_annotations(coco_copy, "val2017", as_text)
    dm = make_datamodule(backbones, coco_copy)
    with pytest.warns(UserWarning, match=r"captions_val2017\.json: 24 x ids written as text, read as the integers they spell "
                                         r"\(first: images\[0\]: '000000000100'\)"):
        dm.prepare_data()
    images = datasets.load_from_disk(str(dm.split_folder("val2017") / "images"))
    assert sorted(images["image_id"]) == [100, 101, 102, 103]  # as the integer ids gave them
    assert len(datasets.load_from_disk(str(dm.split_folder("val2017") / "captions"))) == 20

    def named(content):
        content["images"][0]["id"] = "IMG_0001"

    edit_annotations(coco_copy, "train2017", named)
    with pytest.raises(DataError, match=r"images\[0\] needs an integer 'id' and a 'file_name' \(id 'IMG_0001' is text that "
                                        r"spells no integer: COCO's ids are integers; number the images"):
        make_datamodule(backbones, coco_copy).prepare_data()


def test_malformed_json_names_the_file(backbones, coco_copy):
    (coco_copy / "annotations" / "captions_train2017.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"captions_train2017\.json is not valid JSON"):
        make_datamodule(backbones, coco_copy).prepare_data()


def test_hub_layout_with_jpg_and_newline_separated_txt(backbones, coco_root, tmp_path):
    """The original scripts' source: a `datasets` dataset with `jpg` images and all captions of an image in `txt`."""
    content = json.loads((coco_root / "annotations" / "captions_train2017.json").read_text())
    by_image = {}
    for annotation in content["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["caption"])
    rows = {
        "jpg": [str(coco_root / "train2017" / image["file_name"]) for image in content["images"]],
        "txt": ["\n".join(by_image[image["id"]]) + "\n" for image in content["images"]],
        "__key__": [image["file_name"] for image in content["images"]],
    }
    hub = tmp_path / "hub"
    split = datasets.Dataset.from_dict(rows).cast_column("jpg", datasets.Image())
    split = split.cast_column("jpg", datasets.Image())  # embed bytes as the hub copy does
    datasets.DatasetDict({"train": split, "test": split.select(range(4))}).save_to_disk(str(hub))

    dm = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(hub), train_split="train", val_split="test")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 60 and len(dm.datasets["test"]) == 20
    item = dm.datasets["train"][0]
    assert torch.is_tensor(item["pixel_values"]) and item["labels"][-1] == dm.tokenizer.eos_token_id


def test_a_partial_download_completed_later_is_used_and_a_skip_is_reported_again(backbones, coco_copy, tmp_path):
    images = coco_copy / "train2017"
    held_back = tmp_path / "later"
    held_back.mkdir()
    for name in ("000000000003.jpg", "000000000007.jpg"):
        shutil.move(images / name, held_back / name)
    partial = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    with pytest.warns(UserWarning, match="skipped 2 bad records"):
        partial.prepare_data()
    partial_folder = partial.split_folder("train2017")
    assert json.loads((partial_folder / "meta.json").read_text())["images"] == 10
    # the next run reuses it, and says again that records were skipped
    with pytest.warns(UserWarning, match=r"reusing .* built with 2 bad records skipped"):
        make_datamodule(backbones, coco_copy, on_bad_record="skip").prepare_data()

    for path in held_back.iterdir():  # the download finishes
        shutil.move(path, images / path.name)
    complete = make_datamodule(backbones, coco_copy, on_bad_record="skip")
    complete.prepare_data()
    folder = complete.split_folder("train2017")
    assert folder != partial_folder and json.loads((folder / "meta.json").read_text())["images"] == 12


def test_an_annotation_edited_with_its_size_and_time_kept_is_noticed(backbones, coco_copy):
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    before = dm.split_folder("train2017")
    path = coco_copy / "annotations" / "captions_train2017.json"
    stat = path.stat()
    text = path.read_text()
    first = json.loads(text)["annotations"][0]["caption"]
    edited = first[:-1] + ("x" if first[-1] != "x" else "y")  # same length
    path.write_text(text.replace(json.dumps(first), json.dumps(edited), 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or rsync -a leave it
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    again = make_datamodule(backbones, coco_copy)
    again.prepare_data()
    assert again.split_folder("train2017") != before
    again.setup("fit")
    assert edited in again.datasets["train2017"].rows["caption"]


def test_images_copied_anew_keep_their_cache_and_one_replaced_at_its_size_and_time_does_not(backbones, coco_copy, tmp_path):
    # a SLURM job that copies its data to the node's scratch disk at each start (cp -r), a download on a new machine,
    # or touch: every image's time changed, so the cache was rebuilt and the requeued job refused to resume, told that
    # it "was trained on other data"
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    before = dm.split_folder("train2017")
    built = (before / "meta.json").stat().st_mtime_ns
    for image in (coco_copy / "train2017").glob("*.jpg"):
        image.write_bytes(image.read_bytes())  # as cp without -p leaves them: the same bytes, new times
    again = make_datamodule(backbones, coco_copy)
    again.prepare_data()
    assert again.split_folder("train2017") == before and (before / "meta.json").stat().st_mtime_ns == built

    path = coco_copy / "train2017" / "000000000002.jpg"  # another picture of the same size, its time put back
    stat = path.stat()
    other = bytearray((coco_copy / "train2017" / "000000000001.jpg").read_bytes()[: stat.st_size])
    path.write_bytes(bytes(other.ljust(stat.st_size, b"\0")))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or rsync -a leave it
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert make_datamodule(backbones, coco_copy).split_folder("train2017") != before


def test_a_split_prepared_again_after_its_data_was_edited_names_the_old_preprocessed_folder(backbones, coco_copy, capsys):
    # a caption fixed by hand in the annotation file: the split is built anew beside the old one, which stayed (COCO's
    # train2017: gigabytes) without a word
    make_datamodule(backbones, coco_copy).prepare_data()
    annotations = coco_copy / "annotations" / "captions_train2017.json"
    content = json.loads(annotations.read_text())
    content["annotations"][0]["caption"] = "A red circle, fixed by hand."
    annotations.write_text(json.dumps(content))
    dm = make_datamodule(backbones, coco_copy)
    other = dm.cache_dir / "train2017-0123456789abcdef"  # another dataset's split of that name, in a shared cache_dir
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"source": "llava"}))
    capsys.readouterr()
    dm.prepare_data()
    err = capsys.readouterr().err
    new = dm.split_folder("train2017")
    old = [p for p in new.parent.iterdir() if p.name.startswith("train2017-") and p not in (new, other)]
    assert len(old) == 1, old
    assert re.search(rf"note: {re.escape(str(new.parent))} holds 1 other preprocessed folder of split train2017, built from "
                     rf"other inputs or settings \({old[0].name}; [\d.]+ MB\): remove it unless a run of those inputs and settings "
                     r"still reads it", err), err
    assert "val2017" not in err.split("note:")[-1]  # the other split, unchanged, is reused: nothing said of it
    make_datamodule(backbones, coco_copy).prepare_data()  # reused: said when built only
    assert "other preprocessed folder" not in capsys.readouterr().err


def test_a_build_killed_outright_is_removed_by_the_next_build_of_its_split_under_other_settings(backbones, coco_copy, capsys):
    # the out-of-memory killer ended a build; the run again with a lower max_length builds another key, and the killed
    # build's hidden staging folder (gigabytes of a large set's images) stayed for good: only its own key's next build
    # removed it
    import fcntl

    dm = make_datamodule(backbones, coco_copy, max_length=40)
    cache = dm.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    killed, running = cache / ".train2017-0123456789abcdef.k1ll3d00.partial", cache / ".train2017-fedcba9876543210.l1v3.partial"
    for leftover in (killed, running):
        (leftover / "build").mkdir(parents=True)
        (leftover / "build" / "images.arrow").write_bytes(b"\0" * 2**20)
    lock = os.open(cache / ".train2017-fedcba9876543210.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # a build of that key running now, in another process
    try:
        dm.prepare_data()
    finally:
        os.close(lock)
    err = capsys.readouterr().err
    assert f"note: removed {killed} (1.0 MB), the unfinished build of train2017-0123456789abcdef by a process that was killed" in err
    assert not killed.exists() and running.is_dir() and str(running) not in err  # a live build's is its own
    assert not (cache / ".train2017-0123456789abcdef.lock").exists()


def test_a_damaged_cache_is_rebuilt_with_a_note(backbones, coco_copy, monkeypatch):
    dm = make_datamodule(backbones, coco_copy)
    dm.prepare_data()
    folder = dm.split_folder("train2017")
    arrow = next((folder / "captions").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])  # a disk that filled up, a bad copy
    again = make_datamodule(backbones, coco_copy)
    with pytest.warns(UserWarning, match=r"is damaged \(captions cannot be read .*\); rebuilding it"):
        again.prepare_data()
    again.setup("fit")
    assert len(again.datasets["train2017"]) == 60
    (folder / "images" / "state.json").unlink()  # a file missing
    with pytest.warns(UserWarning, match=r"is damaged \(images cannot be read"):
        make_datamodule(backbones, coco_copy).prepare_data()
    # a removal killed half-way (the damaged split's, or the user's rm -rf stopped by Ctrl-C) left the folder without
    # its meta.json: every later run built the split again, then failed to put it there ("Directory not empty")
    (folder / "meta.json").unlink()
    shutil.rmtree(folder / "images")
    assert (folder / "captions").is_dir()
    again = make_datamodule(backbones, coco_copy)
    again.prepare_data()
    again.setup("fit")
    assert len(again.datasets["train2017"]) == 60 and (folder / "meta.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".partial")]
    # on a read-only mount it cannot be rebuilt there: said with the setting to change, the damaged split left as it
    # is (three chained tracebacks from its removal before)
    import mmcaption.data.base
    from mmcaption.errors import NotWritableError

    def read_only(path, what):
        raise NotWritableError(f"cannot write {what} to {path}: Read-only file system")

    arrow = next((folder / "captions").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    monkeypatch.setattr(mmcaption.data.base, "check_writable", read_only)
    with pytest.warns(UserWarning, match="is damaged"), pytest.raises(NotWritableError, match=r"Read-only file system; set "
                                                                                           r"data.init_args.cache_dir"):
        make_datamodule(backbones, coco_copy).prepare_data()
    assert (folder / "meta.json").is_file()


def caption_rows(coco_root: Path, image_column: str = "jpg", caption_column: str = "txt", as_list: bool = False) -> dict:
    content = json.loads((coco_root / "annotations" / "captions_train2017.json").read_text())
    by_image = {}
    for annotation in content["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["caption"])
    return {
        image_column: [(coco_root / "train2017" / image["file_name"]).read_bytes() for image in content["images"]],
        caption_column: [by_image[image["id"]] if as_list else "\n".join(by_image[image["id"]]) for image in content["images"]],
    }


def test_a_local_parquet_copy_uses_its_own_split_names(backbones, coco_root, tmp_path):
    """A hub dataset downloaded as parquet files: `train` and `test` splits, found without configuring names."""
    features = datasets.Features({"jpg": datasets.Image(), "txt": datasets.Value("string")})
    table = datasets.Dataset.from_dict(caption_rows(coco_root), features=features)
    (tmp_path / "parquet" / "data").mkdir(parents=True)
    table.select(range(8)).to_parquet(str(tmp_path / "parquet" / "data" / "train-00000-of-00001.parquet"))
    table.select(range(8, 12)).to_parquet(str(tmp_path / "parquet" / "data" / "test-00000-of-00001.parquet"))
    dm = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(tmp_path / "parquet"))
    assert dm.stage_splits() == {"train": "train", "val": "test", "test": "test"}
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 40 and len(dm.datasets["test"]) == 20
    # its cache beside it, not in a data/coco/preprocessed/ made in the working folder (the default data_dir, which
    # nothing else here names: a user's own table's splits were cached in a COCO folder)
    assert dm.cache_dir == tmp_path / "preprocessed" and dm.datasets["train"].folder.parent == tmp_path / "preprocessed"
    assert not (tmp_path / "unused").exists()

    wrong = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(tmp_path / "parquet"),
                            train_split="train2017")
    with pytest.raises(DataError, match=r"has splits \['train', 'test'\], not 'train2017'"):
        wrong.prepare_data()


def test_mmcaption_test_scores_a_datasets_own_test_split_not_its_validation_split(backbones, coco_root, tmp_path):
    # a train/validation/test download (Flickr8k's split lists, a hub copy's three parquet files): `mmcaption test`
    # scored the validation split, which fit had chosen checkpoints on, unless test_split was set
    features = datasets.Features({"jpg": datasets.Image(), "txt": datasets.Value("string")})
    table = datasets.Dataset.from_dict(caption_rows(coco_root), features=features)
    (tmp_path / "parquet" / "data").mkdir(parents=True)
    for name, rows in (("train", range(6)), ("validation", range(6, 9)), ("test", range(9, 12))):
        table.select(rows).to_parquet(str(tmp_path / "parquet" / "data" / f"{name}-00000-of-00001.parquet"))
    dm = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(tmp_path / "parquet"))
    assert dm.stage_splits() == {"train": "train", "val": "validation", "test": "test"}
    dm.prepare_data()
    dm.setup("test")
    scored = set(dm.datasets["test"].rows["caption"])
    assert scored == {c for text in table.select(range(9, 12))["txt"] for c in text.split("\n")}  # not validation's
    asked = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(tmp_path / "parquet"),
                            test_split="validation")  # as asked, still
    assert asked.stage_splits()["test"] == "validation"


def test_a_single_split_dataset_holds_out_a_share_not_the_same_rows(backbones, tmp_path):
    """Flickr30k-style columns (`image`, a list of captions) in one split: validation is held out from it."""
    write_coco_split(tmp_path / "many", "train2017", 48, seed=5)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string")),
                                  "__key__": datasets.Value("string")})
    rows = caption_rows(tmp_path / "many", "image", "caption", as_list=True)  # 48 images
    rows["__key__"] = [f"img{i}" for i in range(48)]
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "one"))
    dm = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(tmp_path / "one"),
                         hub_image_column="image", hub_caption_column="caption", hub_val_fraction=0.25)
    splits = dm.stage_splits()
    assert splits["train"] != splits["val"]
    dm.prepare_data()
    dm.setup("fit")
    train, val = (json.loads((dm.datasets[splits[side]].folder / "meta.json").read_text())["images"] for side in ("train", "val"))
    assert train + val == 48 and 4 <= val <= 20  # disjoint sides of the one split, about a quarter held out
    keys = {side: set(dm.datasets[splits[side]].images["file_name"]) for side in ("train", "val")}
    assert not keys["train"] & keys["val"]


def test_a_copy_of_coco_with_a_row_per_caption_is_read_as_images_with_all_their_captions(backbones, coco_root, tmp_path, monkeypatch):
    """Many hub copies of COCO have one row per caption (`image`, `caption`). Read row by row, each image was five
    images with one reference each (CIDEr against one caption), and with one split held out by row the same image
    was trained on and validated. Rows of one image are one image now, on one side, with every caption."""
    rows = caption_rows(coco_root, "image", "caption", as_list=True)  # 12 images, 5 captions each
    per_caption = {"image": [], "caption": []}
    for image, captions in zip(rows["image"], rows["caption"]):
        per_caption["image"] += [image] * len(captions)
        per_caption["caption"] += captions
    per_caption["caption"][7] = "\u200bthe dog&#39;s ball\u200b"  # as scraped: a page's markup, a zero-width space
    per_caption["image"] += per_caption["image"][:2]  # the first two rows again (a file joined twice, say)
    per_caption["caption"] += per_caption["caption"][:2]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    table = datasets.Dataset.from_dict(per_caption, features=features).shuffle(seed=0)  # an image's rows apart
    table.to_parquet(str(tmp_path / "coco_captions.parquet"))  # one file, as some copies download
    warned, said = [], []
    monkeypatch.setattr("mmcaption.data.records.rank_zero_warn", warned.append)
    monkeypatch.setattr("mmcaption.data.records.rank_zero_info", said.append)
    dm = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(tmp_path / "coco_captions.parquet"),
                         hub_image_column="image", hub_caption_column="caption", hub_val_fraction=0.3)
    splits = dm.stage_splits()
    dm.prepare_data()
    dm.setup("fit")
    sides = {side: dm.datasets[splits[side]] for side in ("train", "val")}
    images = {side: list(data.images["image"]) for side, data in sides.items()}
    assert len(images["train"]) + len(images["val"]) == 12 and images["val"]  # each image once, on one side
    assert not set(images["train"]) & set(images["val"])
    for data in sides.values():  # every image with its five captions, each once
        captions = datasets.load_from_disk(str(data.folder / "captions")).to_pandas()
        per_image = captions.groupby("image_index")["caption"].agg(list)
        assert len(per_image) == len(data.images) and all(len(c) == 5 == len(set(c)) for c in per_image), per_image
    # said, not warned of: the usual layout of such tables (Flickr30k's CSV too), and nothing to act on
    assert any("rows that repeat an earlier row's image: their captions go with that image" in line for line in said), said
    assert not any("rows that repeat an earlier row's image: their" in w for w in warned), warned
    # the two rows again are said to be that (it was "captions skipped", and "without a caption of their own" of a row
    # that had one)
    assert any("2 x rows that repeat an earlier row, its image and its captions: left out" in w for w in warned), warned
    assert not any("captions skipped" in w or "without a caption" in w for w in warned), warned
    assert any("1 x captions holding HTML (a character reference such as &amp; or a tag such as <br>), trained on as written "
               "(first: row " in w and "'&#39;' in 'the dog&#39;s ball')" in w for w in warned), warned
    kept = [c for data in sides.values() for c in datasets.load_from_disk(str(data.folder / "captions"))["caption"]]
    assert "the dog&#39;s ball" in kept  # the invisible space around it left out


def test_a_caption_table_pandas_wrote_from_lists_reads_each_listed_caption(backbones, coco_root, tmp_path):
    # pandas' to_csv writes a column of lists as Python spells them, ['A dog.', "A dog's ball."]: each cell was trained as
    # one caption, brackets and quotes included, without a word
    import pandas as pd

    content = json.loads((coco_root / "annotations" / "captions_train2017.json").read_text())
    by_image = {}
    for annotation in content["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["caption"])
    lists = [[*by_image[image["id"]][:2], f"The dog's ball {n}."] for n, image in enumerate(content["images"])]
    table = tmp_path / "captions.csv"
    pd.DataFrame({"file_name": [str(coco_root / "train2017" / image["file_name"]) for image in content["images"]],
                  "captions": lists}).to_csv(table, index=False)
    assert "['" in table.read_text() and '""The dog\'s ball 0.""' in table.read_text()  # as pandas writes them
    dm = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(table), hub_image_column="file_name",
                         hub_caption_column="captions", hub_val_fraction=0.25)
    splits = dm.stage_splits()
    dm.prepare_data()
    dm.setup("fit")
    read = [c for side in ("train", "val") for c in datasets.load_from_disk(str(dm.datasets[splits[side]].folder / "captions"))["caption"]]
    assert sorted(read) == sorted(c for captions in lists for c in captions)  # 36 captions, none with a bracket
    # an earlier release read those cells as one caption each: its cache of this file is not this release's
    import mmcaption.data.caption_cells as modules  # where the data module's signature looks for them

    earlier = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(table), hub_image_column="file_name",
                              hub_caption_column="captions", hub_val_fraction=0.25)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modules, "python_lists_in", lambda file: False)
        assert earlier.split_folder(splits["train"]) != dm.split_folder(splits["train"])
    json_cells = tmp_path / "json_cells.csv"  # a JSON list in a cell (Flickr30k's CSV): read as before, its cache kept
    pd.DataFrame({"file_name": ["a.jpg"], "captions": [json.dumps(["A dog.", "A dog's ball."])]}).to_csv(json_cells, index=False)
    assert not modules.python_lists_in(json_cells)


def test_image_paths_relative_to_the_dataset_are_found_and_a_held_out_side_left_empty_says_which_setting(backbones, coco_root, tmp_path):
    # a parquet file whose image column holds paths as its own folder writes them: looked for from where the command
    # ran, and refused as "row 0 (key 0) has no image", the dataset named twice and the path tried not at all
    folder = tmp_path / "mine"
    shutil.copytree(coco_root / "train2017", folder / "images")
    rows = caption_rows(coco_root, "file_name", "caption", as_list=True)
    rows["file_name"] = [f"images/{path.name}" for path in sorted((coco_root / "train2017").glob("*.jpg"))]
    datasets.Dataset.from_dict(rows).to_parquet(str(folder / "train.parquet"))
    settings = dict(source="hub", hub_dataset=str(folder / "train.parquet"), hub_image_column="file_name",
                    hub_caption_column="caption")
    dm = make_datamodule(backbones, tmp_path / "unused", hub_val_fraction=0.5, **settings)
    dm.prepare_data()
    dm.setup("fit")
    assert sum(len(dm.datasets[dm.stage_splits()[side]].images) for side in ("train", "val")) == 12
    # a photo the file names replaced by another: the cache followed only the parquet file, and kept the old photo
    before = dm.split_folder(dm.stage_splits()["train"])
    shutil.copy(folder / "images" / "000000000003.jpg", folder / "images" / "000000000002.jpg")
    again = make_datamodule(backbones, tmp_path / "unused", hub_val_fraction=0.5, **settings)
    assert again.split_folder(again.stage_splits()["train"]) != before

    (folder / "images" / "000000000001.jpg").unlink()  # named with the others not there, all in one message
    (folder / "images" / "000000000004.jpg").unlink()
    with pytest.raises(DataError, match=r"train\.parquet \[train\.(rest|heldout)\]: 2 of 12 rows name no image that is there "
                                        r"\(first: row 0 \(key 0\): its 'file_name' is 'images/000000000001\.jpg', not a file "
                                        rf"\(looked for from {re.escape(str(folder))} and from the current folder\); row 3 "):
        make_datamodule(backbones, tmp_path / "unused2", hub_val_fraction=0.5, **settings).prepare_data()
    # a small set that the hash holds nothing of: the first image by the hash is held out, not refused
    small = make_datamodule(backbones, tmp_path / "unused3", hub_val_fraction=0.001, on_bad_record="skip", **settings)
    small.prepare_data()
    small.setup("fit")
    # 12 rows: 2 images not there, and photo 2 is now photo 3 (one image): 9 images, one of them held out
    assert [len(small.datasets[small.stage_splits()[side]].images) for side in ("train", "val")] == [8, 1]
    shutil.rmtree(folder / "images")  # no image found at all: that is said, not the held-out share
    # (every row: named as when refused, without on_bad_record: skip offered, which would leave nothing)
    with pytest.raises(DataError, match=r"train\.parquet \[train\.(rest|heldout)\]: 12 of 12 rows name no image that is there "
                                        r"\(first: row 0 .*\)\. Fix their paths \(relative to the dataset's folder\) or remove the "
                                        r"rows\.$"):
        make_datamodule(backbones, tmp_path / "unused4", hub_val_fraction=0.5, on_bad_record="skip", **settings).prepare_data()


def test_test_and_validate_preprocess_only_the_split_they_read(backbones, coco_copy):
    # `mmcaption test` on Karpathy's test split preprocessed (and cached the features of) his 113,287 training images
    # first: hours, for 5,000 images scored
    dm = make_datamodule(backbones, coco_copy)
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.TESTING))
    dm.prepare_data()
    assert (dm.split_folder("val2017") / "meta.json").is_file() and not dm.split_folder("train2017").exists()
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    dm.prepare_data()
    assert dm.split_folder("train2017").exists()


# The code that builds caches, as of each PREPROCESSING_VERSION (its logic: docstrings, comments and the wording of
# messages left out). A change to it that changes what a cache holds needs a new version, else an upgrade reads the
# earlier release's cache as its own (it did: records this release refuses, or half of them, trained without a word).
CACHE_CODE = {7: "0167b6a36862a984", 8: "46272462e1d3c9a3", 9: "b6148f1a7bd58c85"}


def cache_code_digest() -> str:
    import ast
    import hashlib
    import importlib.util

    from mmcaption.data.base import CACHE_BUILDERS

    def logic(node) -> str:  # the same on every Python: no strings, no empty fields (3.13's ast.dump leaves them out)
        if isinstance(node, list):
            return "[" + ",".join(logic(item) for item in node if not (isinstance(item, ast.Expr) and is_text(item.value))) + "]"
        if not isinstance(node, ast.AST):
            return "" if isinstance(node, str) else repr(node)
        fields = (f"{field}={logic(value)}" for field, value in ast.iter_fields(node) if value not in (None, []))
        return f"{type(node).__name__}({','.join(fields)})"

    def is_text(node) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str)

    digest = hashlib.sha256()
    for name in CACHE_BUILDERS:
        tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text(encoding="utf-8"))
        digest.update(f"{name}\n{logic(tree)}\n".encode())
    return digest.hexdigest()[:16]


def test_a_cache_built_by_an_earlier_release_is_not_read_as_this_ones(backbones, coco_root, monkeypatch):
    from mmcaption.data import base

    dm = make_datamodule(backbones, coco_root)
    current = dm.split_folder("train2017")
    monkeypatch.setattr(base, "PREPROCESSING_VERSION", base.PREPROCESSING_VERSION - 1)
    assert make_datamodule(backbones, coco_root).split_folder("train2017") != current  # another folder: built anew
    monkeypatch.undo()
    digest = cache_code_digest()
    assert CACHE_CODE.get(base.PREPROCESSING_VERSION) == digest, (
        f"the code that builds caches ({', '.join(base.CACHE_BUILDERS)}) changed since PREPROCESSING_VERSION "
        f"{base.PREPROCESSING_VERSION} was recorded: if a cache it builds now differs (the rows kept, their text, tokens or "
        f"images), raise PREPROCESSING_VERSION in mmcaption/data/base.py and say why there; either way, record "
        f"{{{base.PREPROCESSING_VERSION}: {digest!r}}} in CACHE_CODE (tests/test_data_coco.py)")


def test_a_data_folder_typed_in_the_other_unicode_form_than_a_mac_wrote_it_is_found(backbones, coco_root, tmp_path):
    # copied from a Mac, "Bilder München" is decomposed on disk; typed (YAML, the command line) it is composed: the
    # annotation file was "not found" in a folder that looks the same
    import unicodedata

    on_disk = tmp_path / unicodedata.normalize("NFD", "Bilder München")
    shutil.copytree(coco_root, on_disk)
    typed = tmp_path / unicodedata.normalize("NFC", "Bilder München")
    assert not typed.exists()
    dm = make_datamodule(backbones, typed)
    dm.prepare_data()
    assert len(datasets.load_from_disk(str(dm.split_folder("train2017") / "images"))) == 12


def test_coco_2017_captions_are_trained_on_with_a_coco_2014_download_of_the_photos(backbones, coco_root, tmp_path, monkeypatch):
    # captions_train2017.json beside COCO 2014's train2014/ and val2014/ (the download Karpathy's splits need): the same
    # photos under COCO 2014's names. Every image was "missing under data/coco/train2017" ("Fix the image folder")
    from PIL import Image

    root = tmp_path / "coco"
    shutil.copytree(coco_root / "annotations", root / "annotations")
    for split, copies in (("train2017", "train2014"), ("val2017", "val2014")):
        for number, photo in enumerate(sorted((coco_root / split).iterdir())):
            folder = "val2014" if split == "train2017" and number == 0 else copies  # 2017's train photos: 2014's train and val
            (root / folder).mkdir(exist_ok=True)
            shutil.copy(photo, root / folder / f"COCO_{folder}_{photo.name}")
    said = []  # caught where it is said: Lightning's logger may not propagate to pytest's
    monkeypatch.setattr("mmcaption.data.image_sources.rank_zero_info", said.append)
    data = make_datamodule(backbones, root, cache_dir=str(tmp_path / "cache"))
    data.check_inputs("fit")
    data.prepare_data()
    data.setup("fit")
    expected = make_datamodule(backbones, coco_root, cache_dir=str(tmp_path / "cache_2017"))
    expected.prepare_data()
    expected.setup("fit")
    for split in ("train2017", "val2017"):  # the same images and captions as from COCO 2017's own folders
        ours, theirs = data.datasets[split], expected.datasets[split]
        assert len(ours) == len(theirs)
        assert ours.images["image"] == theirs.images["image"] and ours.images["image_id"] == theirs.images["image_id"]
    first = sorted((coco_root / "train2017").iterdir())[0].name
    assert any(f"read from COCO 2014's copies of the same photos there (val2014/COCO_val2014_{first}, ...; 12 of 12 found)" in note
               for note in said)

    # a photo replaced in COCO 2014's folders makes a new cache, as one replaced in train2017/ does
    before = {split: data.split_folder(split) for split in ("train2017", "val2017")}
    Image.new("RGB", (64, 64), "white").save(root / "train2014" / f"COCO_train2014_{sorted((coco_root / 'train2017').iterdir())[1].name}")
    Image.new("RGB", (64, 64), "white").save(root / "val2014" / f"COCO_val2014_{sorted((coco_root / 'val2017').iterdir())[0].name}")
    again = make_datamodule(backbones, root, cache_dir=str(tmp_path / "cache"))
    assert all(again.split_folder(split) != before[split] for split in before)
    # an empty train2017/ (an unzip not done) is no COCO 2017 download: the photos are read from COCO 2014's all the same
    (root / "train2017").mkdir()
    unzipping = make_datamodule(backbones, root, cache_dir=str(tmp_path / "cache"))
    unzipping.check_inputs("fit")
    unzipping.prepare_data()
    unzipping.setup("fit")
    assert len(unzipping.datasets["train2017"]) == len(expected.datasets["train2017"])
    # a COCO 2017 download with COCO 2014's beside it signs its caches as before: its caches stay its own
    both = Path(shutil.copytree(coco_root, tmp_path / "both"))
    shutil.copytree(root / "train2014", both / "train2014")
    assert (make_datamodule(backbones, both, cache_dir=str(tmp_path / "c1")).split_inputs("train2017").keys()
            == make_datamodule(backbones, coco_root, cache_dir=str(tmp_path / "c2")).split_inputs("train2017").keys())
    # a photo missing from COCO 2014's folders is named as it was looked for there, not by its 2017 name beside them
    lost = sorted((coco_root / "val2017").iterdir())[1].name
    (root / "val2014" / f"COCO_val2014_{lost}").unlink()
    with pytest.raises(DataError, match=rf"1 of 4 referenced images are missing .* looked for as {re.escape(str(root))}/val2014/COCO_val2014_{lost}"):
        make_datamodule(backbones, root, cache_dir=str(tmp_path / "lost")).prepare_data()
    # without val2014/ (where val2017's photos are, and some of train2017's), the folder lacking is named at the start
    shutil.rmtree(root / "val2014")
    with pytest.raises(DataError, match=r"COCO image folder \(COCO 2014's train2014/ is beside it, but val2017's photos are "
                                        r"also in its val2014/, which is not\) not found: .*val2017"):
        make_datamodule(backbones, root, cache_dir=str(tmp_path / "cache")).check_inputs("validate")
    # without COCO 2014's folders either, the image folder is named as missing, as before
    shutil.rmtree(root / "train2014")
    (root / "train2017").rmdir()
    with pytest.raises(DataError, match=r"COCO image folder not found: .*train2017"):
        make_datamodule(backbones, root, cache_dir=str(tmp_path / "cache")).check_inputs("fit")


def test_preprocessing_stopped_half_way_goes_on_from_the_images_done(backbones, coco_copy, tmp_path, monkeypatch, capsys):
    # COCO's image pass is half an hour of one core: Ctrl-C, docker stop or a dropped SSH connection in it (or a broken
    # photo refused at its end, then mended) started every image over. The images done are kept; the next build, of
    # these inputs or mended ones, reads only the others and writes the split a straight build writes
    from PIL import Image

    from mmcaption.data import image_pass
    from mmcaption.data.cache import load_table

    for large in sorted((coco_copy / "train2017").iterdir())[:2]:  # larger than the processor's side: kept shrunk
        Image.open(large).convert("RGB").resize((160, 128)).save(large)
    whole = make_datamodule(backbones, coco_copy, cache_dir=str(tmp_path / "whole"))
    expected = load_table(whole.preprocess("train2017") / "images")[:]
    prepared, stop_at = [], [7]

    def prepare(image, image_size):
        prepared.append(image)
        if len(prepared) in stop_at:
            raise KeyboardInterrupt
        return original(image, image_size)

    original = image_pass._prepared
    monkeypatch.setattr(image_pass, "_prepared", prepare)
    data = make_datamodule(backbones, coco_copy, cache_dir=str(tmp_path / "cache"))
    with monkeypatch.context() as chunks, pytest.raises(KeyboardInterrupt):
        chunks.setattr(image_pass, "CHECKED_IMAGES", 2)  # kept two at a time as they are done (a kill loses one at most)
        data.preprocess("train2017")
    assert not (data.split_folder("train2017") / "meta.json").exists()
    kept = int(re.search(r"note: (\d+) images of split train2017 read, checked and shrunk are kept in (\S+) \([\d.]+ MB\): "
                         "the next run goes on from them", capsys.readouterr().err)[1])
    assert 6 <= kept <= 11  # those before the one stopped at, and those the pool had read ahead (as its threads went)
    chunks = sorted((tmp_path / "cache").glob(".train2017.checked-images-*/chunk-*.arrow"))
    assert len(chunks) == -(-kept // 2)  # two images a chunk here (the first two in the first)
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])  # one a power cut left cut short: its two read again
    prepared.clear()
    stop_at.clear()
    said = []
    monkeypatch.setattr("mmcaption.data.split_build.rank_zero_info", said.append)
    folder = make_datamodule(backbones, coco_copy, cache_dir=str(tmp_path / "cache")).preprocess("train2017")
    assert len(prepared) == 12 - kept + 2  # only the images not done read again
    assert any(f"{kept - 2} images a stopped run read, checked and shrank are kept" in line for line in said)
    assert load_table(folder / "images")[:] == expected  # the split a straight build writes
    assert not list((tmp_path / "cache").glob(".train2017.checked-images-*"))  # removed once the split is built
    # a photo that cannot be decoded is refused at the pass's end; the user mends it: only it is read again
    broken = sorted((coco_copy / "train2017").iterdir())[3]
    photo = broken.read_bytes()
    broken.write_bytes(b"not a photo")
    prepared.clear()
    with pytest.raises(DataError, match=re.escape(broken.name)):
        make_datamodule(backbones, coco_copy, cache_dir=str(tmp_path / "mended")).preprocess("train2017")
    assert len(prepared) == 12 and "note: 12 images of split train2017 read, checked and shrunk are kept" in capsys.readouterr().err
    # a build at another image size meanwhile (the broken photo skipped) says what the stopped one kept, gigabytes at COCO's
    with pytest.warns(UserWarning, match="skipped 1 bad records: 1 x unreadable image"):
        make_datamodule(backbones, coco_copy, cache_dir=str(tmp_path / "mended"), resize_images=False,
                        on_bad_record="skip").preprocess("train2017")
    assert re.search(r"note: \S+/\.train2017\.checked-images-\d+-\w+ holds images of split train2017 \([\d.]+ MB\) that a "
                     r"stopped build read, checked and shrank \(at another image size", capsys.readouterr().err)
    broken.write_bytes(photo)
    prepared.clear()
    folder = make_datamodule(backbones, coco_copy, cache_dir=str(tmp_path / "mended")).preprocess("train2017")
    assert prepared == [prepared[0]] and prepared[0].source == broken
    assert load_table(folder / "images")[:] == expected

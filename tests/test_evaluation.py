"""Evaluations users can compare: Karpathy's splits of COCO 2014, ``mmcaption test`` scoring captions as the
COCO caption evaluation does, and a results file that says how each number was made."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from PIL import Image
from pycocotools.coco import COCO

from mmcaption.checkpoint import install_atomic_checkpoint_io
from mmcaption.data import CaptionDataModule
from mmcaption.data.cache import load_table
from mmcaption.data.records import DataError
from mmcaption.evaluation import caption_metrics
from mmcaption.evaluation.report import write_evaluation

from .conftest import REPO, make_captioner

# Karpathy's dataset_coco.json as released: split per image, COCO 2014 folders and names, sentences
# with raw text and tokens, sentids/imgid/cocoid.
SPLITS = {1: "train", 2: "restval", 3: "train", 4: "restval", 5: "train", 6: "train", 100: "val", 101: "val",
          102: "test", 103: "test"}


def karpathy_root(coco_root: Path, target: Path, splits: dict[int, str] = SPLITS) -> Path:
    """COCO 2014's layout (train2014/COCO_train2014_*.jpg, val2014/COCO_val2014_*.jpg) and Karpathy's
    dataset_coco.json, made from the synthetic set's images and captions."""
    images = []
    for split_name in ("train2017", "val2017"):
        content = json.loads((coco_root / "annotations" / f"captions_{split_name}.json").read_text())
        captions = {}
        for annotation in content["annotations"]:
            captions.setdefault(annotation["image_id"], []).append((annotation["id"], annotation["caption"]))
        for image in content["images"]:
            if image["id"] not in splits:
                continue
            folder = "train2014" if splits[image["id"]] in ("train", "restval") else "val2014"
            name = f"COCO_{folder}_{image['id']:012d}.jpg"
            (target / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(coco_root / split_name / image["file_name"], target / folder / name)
            sentences = [{"tokens": text.lower().rstrip(".").split(), "raw": text, "imgid": len(images), "sentid": sid}
                         for sid, text in captions[image["id"]]]
            images.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": name,
                           "imgid": len(images), "split": splits[image["id"]], "sentences": sentences, "cocoid": image["id"]})
    (target / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return target


def karpathy_datamodule(backbones, root: Path, **settings) -> CaptionDataModule:
    language_dir, vision_dir = backbones
    return CaptionDataModule(data_dir=str(root), source="karpathy", tokenizer=str(language_dir), image_processor=str(vision_dir),
                             **{"batch_size": 4, "eval_batch_size": 4, "num_workers": 0, **settings})


def test_karpathy_splits_train_on_train_and_restval_validate_on_val_test_on_test(backbones, coco_root, tmp_path):
    root = karpathy_root(coco_root, tmp_path / "coco2014")
    dm = karpathy_datamodule(backbones, root)
    assert dm.stage_splits() == {"train": "train", "val": "val", "test": "test"}
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    image_ids = {split: set(dm.datasets[split].images["image_id"]) for split in ("train", "val", "test")}
    assert image_ids == {"train": {1, 2, 3, 4, 5, 6}, "val": {100, 101}, "test": {102, 103}}
    assert len(dm.datasets["train"]) == 6 * 5  # every sentence of train and restval is a training caption
    references = {row["image_id"]: row["references"] for row in dm.caption_images_loader("test", None).dataset}
    karpathy = {image["cocoid"]: [s["raw"] for s in image["sentences"]] for image in json.loads((root / "dataset_coco.json").read_text())["images"]}
    assert references == {102: karpathy[102], 103: karpathy[103]}  # keyed by cocoid, an integer as COCO has it


def test_karpathy_splits_read_with_the_coco_2017_images_the_same_photos(backbones, coco_root, tmp_path):
    # only COCO 2017's download (as the README's caption stage fetches): train2017/ and val2017/ hold 2014's photos, named
    # by their id alone; every image was "missing" and the split refused
    root = karpathy_root(coco_root, tmp_path / "coco2014")
    (root / "train2017").mkdir()
    (root / "val2017").mkdir()
    for folder, target in (("train2014", "train2017"), ("val2014", "val2017")):
        for image in sorted((root / folder).iterdir()):
            image_id = int(image.stem.rsplit("_", 1)[1])
            image.rename(root / (target if image_id % 2 else "val2017") / f"{image_id:012d}.jpg")  # 2017 re-split them
        (root / folder).rmdir()
    dm = karpathy_datamodule(backbones, root)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    image_ids = {split: set(dm.datasets[split].images["image_id"]) for split in ("train", "val", "test")}
    assert image_ids == {"train": {1, 2, 3, 4, 5, 6}, "val": {100, 101}, "test": {102, 103}}
    assert len(dm.datasets["train"]) == 6 * 5


def test_karpathy_file_problems_are_named(backbones, coco_root, tmp_path):
    root = karpathy_root(coco_root, tmp_path / "coco2014")
    (root / "val2014" / "COCO_val2014_000000000102.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 2 images of Karpathy's test split are missing.*COCO_val2014_000000000102"):
        karpathy_datamodule(backbones, root).prepare_data()
    with pytest.raises(DataError, match=r"Karpathy split file \(dataset_coco.json\) not found: .*elsewhere.json.*train2014"):
        karpathy_datamodule(backbones, root, karpathy_file=str(root / "elsewhere.json")).check_inputs("test")
    # Flickr30k's file in the same format: no cocoid or filepath, its images in one folder; named by their imgid
    content = json.loads((root / "dataset_coco.json").read_text())
    flickr = root / "flickr30k-images"
    flickr.mkdir()
    for entry in content["images"]:
        folder = entry.pop("filepath")
        del entry["cocoid"]
        if (root / folder / entry["filename"]).is_file():
            shutil.copy(root / folder / entry["filename"], flickr / entry["filename"])
    (root / "dataset_flickr30k.json").write_text(json.dumps({**content, "dataset": "flickr30k"}))
    (root / "dataset_coco.json").unlink()  # the Flickr file beside the images, karpathy_file not set: it is named
    with pytest.raises(DataError, match=r"Karpathy split file not found: .*dataset_coco\.json \(dataset_flickr30k\.json is "
                                        r"beside it: --data\.init_args\.karpathy_file .*dataset_flickr30k\.json\)"):
        karpathy_datamodule(backbones, root).prepare_data()
    with pytest.raises(DataError, match=r"1 of 2 images of Karpathy's test split are missing.*first: imgid \d+, its image "
                                        r"COCO_val2014_000000000102"):
        karpathy_datamodule(backbones, flickr, karpathy_file=str(root / "dataset_flickr30k.json")).prepare_data()


@pytest.mark.slow
def nocaps_layout(coco_root: Path, target: Path, ids: tuple[int, ...] = (0, 7, 4499),
                  domains: tuple[str, ...] = ("in-domain", "near-domain", "near-domain")) -> Path:
    """nocaps' validation download: ``nocaps_val_4500_captions.json`` as released (licenses, info, each image's
    ``open_images_id``, file name and ``domain``, ``annotations`` of ``image_id``, ``id``, ``caption``), its photos in
    ``val/`` beside it."""
    content = json.loads((coco_root / "annotations" / "captions_val2017.json").read_text())
    (target / "val").mkdir(parents=True)
    images, annotations = [], []
    for nocaps_id, image, domain in zip(ids, content["images"], domains):
        name = f"{nocaps_id:04x}ea2087020901.jpg"
        shutil.copy(coco_root / "val2017" / image["file_name"], target / "val" / name)
        images.append({"id": nocaps_id, "open_images_id": name[:-4], "height": 64, "width": 64, "license": 0,
                       "coco_url": f"https://s3.amazonaws.com/nocaps/val/{name}", "file_name": name,
                       "date_captured": "2018-11-06 11:04:33", "domain": domain})
        annotations += [{"image_id": nocaps_id, "id": len(annotations) + n, "caption": caption} for n, caption in
                        enumerate(a["caption"] for a in content["annotations"] if a["image_id"] == image["id"])]
    file = target / "nocaps_val_4500_captions.json"
    file.write_text(json.dumps({"licenses": [], "info": {"url": "http://nocaps.org", "version": "0.1"}, "images": images,
                                "annotations": annotations}))
    return file


def test_mmcaption_test_scores_nocaps_validation_file_where_it_lies_with_its_own_image_ids(backbones, coco_root,
                                                                                           trained_checkpoint, tmp_path):
    # nocaps' file was refused unless linked into <data_dir>/annotations/captions_<split>.json with its photos linked
    # as <data_dir>/<split>/; given as the test split by its path, it is scored where it lies, its photos found in val/
    # beside it, and its COCO results carry nocaps' own image ids, as nocaps' evaluation server takes them
    nocaps = nocaps_layout(coco_root, tmp_path / "nocaps")
    language_dir, vision_dir = backbones
    dm = CaptionDataModule(data_dir=str(coco_root), test_split=str(nocaps), cache_dir=str(tmp_path / "cache"),
                           tokenizer=str(language_dir), image_processor=str(vision_dir), batch_size=4, num_workers=0)
    module = make_captioner(backbones, generation={"max_new_tokens": 6, "min_new_tokens": 2})
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path / "run", enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.test(module, datamodule=dm, ckpt_path=str(trained_checkpoint))[0]
    folder = Path(trainer.log_dir)
    results = json.loads((folder / "test-nocaps_val_4500_captions-step4.results.json").read_text())
    assert results["split"] == "nocaps_val_4500_captions" and results["images"] == 3 and results["references"] == 15
    assert results["metrics"]["CIDEr"] == pytest.approx(logged["test/CIDEr"])
    submitted = json.loads((folder / "test-nocaps_val_4500_captions-step4.coco_results.json").read_text())
    assert [row["image_id"] for row in submitted] == [0, 7, 4499] and all(row["caption"] for row in submitted)
    predictions = [json.loads(line) for line in (folder / "test-nocaps_val_4500_captions-step4.predictions.jsonl").read_text().splitlines()]
    assert [row["file_name"] for row in predictions] == ["0000ea2087020901.jpg", "0007ea2087020901.jpg", "1193ea2087020901.jpg"]
    assert not (coco_root / "annotations" / "captions_nocaps_val_4500_captions.json").exists()  # nothing written beside COCO's
    # each of its domains scored on its own, as nocaps' evaluation server scores them and papers report them: in-domain
    # (image 0), near-domain (7 and 4499), each domain's CIDEr from its own images' document frequencies
    by_domain = results["metrics_by_domain"]
    assert list(by_domain) == ["in-domain", "near-domain"] and [s["images"] for s in by_domain.values()] == [1, 2]
    near = [row for row in predictions if row["image_id"] in (7, 4499)]
    own = caption_metrics.caption_scores({r["image_id"]: r["caption"] for r in near}, {r["image_id"]: r["references"] for r in near})
    assert by_domain["near-domain"] == {**own, "images": 2}
    assert logged["test/near-domain/CIDEr"] == pytest.approx(own["CIDEr"]) and "test/in-domain/BLEU-4" in logged
    assert dm.image_domains("val2017") == {}  # COCO's own file: no domains, nothing more in its results
    content = json.loads(nocaps.read_text())  # ids written as text read as the reader reads them; another tool's 'domain'
    content["images"][1]["id"], content["images"][2]["domain"] = "0007", "flickr.com"  # (a website) is no group
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "ids.json").write_text(json.dumps(content))
    texts = CaptionDataModule(data_dir=str(coco_root), test_split=str(tmp_path / "texts" / "ids.json"))
    assert texts.image_domains("ids") == {0: "in-domain", 7: "near-domain"}

    # its photos beside the file itself, or in data_dir, are found there too; nowhere, the places looked in are named
    beside = tmp_path / "beside"
    shutil.copytree(tmp_path / "nocaps", beside)
    for photo in (beside / "val").iterdir():
        photo.rename(beside / photo.name)
    (beside / "val").rmdir()
    settings = {"cache_dir": str(tmp_path / "cache"), "tokenizer": str(language_dir), "image_processor": str(vision_dir),
                "batch_size": 4, "num_workers": 0}
    for data_dir, split_file in ((coco_root, beside / "nocaps_val_4500_captions.json"),
                                 (tmp_path / "nocaps" / "val", tmp_path / "elsewhere" / "nocaps_val_4500_captions.json")):
        split_file.parent.mkdir(exist_ok=True)
        if not split_file.exists():
            shutil.copy(nocaps, split_file)
        found = CaptionDataModule(data_dir=str(data_dir), val_split=str(split_file), **settings)
        found.check_inputs("validate")
        assert sorted(load_table(found.preprocess("nocaps_val_4500_captions") / "images")["file_name"]) == sorted(
            p.name for p in (tmp_path / "nocaps" / "val").iterdir())
    (tmp_path / "elsewhere" / "nocaps_val_4500_captions.json").rename(tmp_path / "elsewhere" / "lonely.json")
    nowhere = CaptionDataModule(data_dir=str(tmp_path / "no_such_root"), test_split=str(tmp_path / "elsewhere" / "lonely.json"),
                                **settings)
    with pytest.raises(DataError, match=r"lonely\.json: none of its first images \(0000ea2087020901\.jpg, \.\.\.\) is in "
                                        r".*: put the photos in a folder beside the file"):
        nowhere.check_inputs("test")
    # after training on Karpathy's splits (configs/caption_karpathy.yaml), as papers report nocaps: its other splits his
    karpathy = karpathy_datamodule(backbones, karpathy_root(coco_root, tmp_path / "coco2014"), test_split=str(nocaps),
                                   cache_dir=str(tmp_path / "cache"))
    assert karpathy.stage_splits() == {"train": "train", "val": "val", "test": "nocaps_val_4500_captions"}
    karpathy.check_inputs("test")
    assert sorted(load_table(karpathy.preprocess("nocaps_val_4500_captions") / "images")["file_name"]) == sorted(
        p.name for p in (tmp_path / "nocaps" / "val").iterdir())
    assert len(load_table(karpathy.preprocess("val") / "images")) == 2  # his val, from his file
    # a .json split that is not there is named as such, before anything loads, by the stage that reads it (a config
    # whose train_split file is on another machine still tests here)
    gone = CaptionDataModule(data_dir=str(coco_root), train_split=str(tmp_path / "gone" / "mine.json"), test_split=str(nocaps),
                             **settings)
    gone.check_inputs("test")
    with pytest.raises(DataError, match=r"COCO captions file \(a split given by its path, read from the current folder when "
                                        r"relative: \S+gone/mine\.json\) not found: \S+gone/mine\.json"):
        gone.check_inputs("fit")
    # two files of one name, or a file named as a split given by name, are refused: one would be read for both (another
    # root's captions_val2017.json as the test split was fit's validation split too)
    (tmp_path / "other" / "annotations").mkdir(parents=True)
    shutil.copy(nocaps, tmp_path / "other" / nocaps.name)
    with pytest.raises(DataError, match=r"would both be called 'nocaps_val_4500_captions'"):
        CaptionDataModule(data_dir=str(coco_root), val_split=str(nocaps), test_split=str(tmp_path / "other" / nocaps.name),
                          **settings).check_inputs("test")
    shutil.copy(coco_root / "annotations" / "captions_val2017.json", tmp_path / "other" / "annotations")
    with pytest.raises(DataError, match=r"the split file \S+other/annotations/captions_val2017\.json would be called 'val2017', "
                                        r"as the split val2017 read from \S+coco\d*/annotations/captions_val2017\.json is"):
        CaptionDataModule(data_dir=str(coco_root), test_split=str(tmp_path / "other" / "annotations" / "captions_val2017.json"),
                          **settings).check_inputs("fit")
    own = CaptionDataModule(data_dir=str(coco_root), test_split=str(coco_root / "annotations" / "captions_val2017.json"), **settings)
    assert own.input_paths(own.stage_splits()["test"])[1][0] == coco_root / "val2017"  # COCO's own, by its path: as named
    # the cache follows the split file's own photos, not every file of the folder they lie in (a Downloads folder)
    key = CaptionDataModule(data_dir=str(coco_root), test_split=str(beside / nocaps.name), **settings).split_folder(
        "nocaps_val_4500_captions")
    (beside / "holiday").mkdir()
    shutil.copy(beside / "0000ea2087020901.jpg", beside / "holiday" / "unrelated.jpg")
    fresh = dict(data_dir=str(coco_root), test_split=str(beside / nocaps.name), **settings)
    assert CaptionDataModule(**fresh).split_folder("nocaps_val_4500_captions") == key
    Image.new("RGB", (64, 64), (1, 2, 3)).save(beside / "1193ea2087020901.jpg")  # one of its photos replaced
    assert CaptionDataModule(**fresh).split_folder("nocaps_val_4500_captions") != key
    # scored alone, data_dir left as the config has it and not there: the cache beside the file, no data/coco/ made
    alone = CaptionDataModule(data_dir=str(tmp_path / "data" / "coco"), test_split=str(nocaps), tokenizer=str(language_dir),
                              image_processor=str(vision_dir), num_workers=0)
    assert alone.cache_dir == nocaps.parent / "preprocessed"
    alone.check_inputs("test")
    assert len(load_table(alone.preprocess("nocaps_val_4500_captions") / "images")) == 3
    assert not (tmp_path / "data").exists() and (nocaps.parent / "preprocessed").is_dir()


def test_nocaps_and_coco_test_images_are_captioned_for_their_evaluation_servers_under_their_image_ids(
        backbones, coco_root, trained_checkpoint, tmp_path):
    # a test split's image-info file (nocaps_test_image_info.json, COCO's image_info_test2017.json: no captions) given
    # to predict was refused as "JSON (a predict output?), not an image list", and its photo folder captioned instead
    # gave rows by file name only, where the servers take [{image_id, caption}] under the file's ids (nocaps' photos are
    # named by Open Images ids, no number to read from the name)
    from mmcaption.data import CaptionPredictDataModule
    from mmcaption.data.caption_files import captioned_images
    from mmcaption.module import MultimodalCaptioner

    nocaps = nocaps_layout(coco_root, tmp_path / "nocaps")
    info = nocaps.with_name("nocaps_test_image_info.json")
    content = json.loads(nocaps.read_text())
    del content["annotations"]
    info.write_text(json.dumps(content))
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    module.generation.update(min_new_tokens=2, max_new_tokens=5)

    def run(output: Path, **settings) -> list[dict]:
        data = CaptionPredictDataModule(images=str(info), output=str(output), tokenizer=str(backbones[0]),
                                        image_processor=str(backbones[1]), batch_size=2, num_workers=0, **settings)
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=tmp_path).predict(module, datamodule=data)
        return [json.loads(line) for line in output.read_text().splitlines()]

    rows = run(tmp_path / "caps.jsonl")
    assert [(row["image"], row["image_id"]) for row in rows] == [
        ("0000ea2087020901.jpg", 0), ("0007ea2087020901.jpg", 7), ("1193ea2087020901.jpg", 4499)]
    assert all(row["caption"] and row["error"] is None for row in rows)
    submitted = json.loads((tmp_path / "caps.jsonl.coco_results.json").read_text())
    assert submitted == [{"image_id": row["image_id"], "caption": row["caption"]} for row in rows]
    # a photo that cannot be read keeps its place in the server's file (it wants every image), its error in the row
    (tmp_path / "nocaps" / "val" / "0007ea2087020901.jpg").unlink()
    rows = run(tmp_path / "caps.jsonl", overwrite=True)
    assert rows[1]["error"].startswith("image not found") and "caption" not in rows[1]
    assert json.loads((tmp_path / "caps.jsonl.coco_results.json").read_text())[1] == {"image_id": 7, "caption": ""}
    # not one photo readable (a copy cut short): no server file of blank captions, which a submission would spend a
    # day's upload on; the earlier run's goes with its rows
    photos = {path: path.read_bytes() for path in (tmp_path / "nocaps" / "val").iterdir()}
    [path.write_bytes(b"") for path in photos]
    rows = run(tmp_path / "caps.jsonl", overwrite=True)
    assert [bool(row["error"]) for row in rows] == [True, True, True]
    assert not (tmp_path / "caps.jsonl.coco_results.json").exists()
    [path.write_bytes(content) for path, content in photos.items()]
    # COCO's own test2017 download: annotations/image_info_test2017.json, its photos in test2017/ beside annotations/
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copytree(tmp_path / "nocaps" / "val", coco / "test2017")
    shutil.copy(info, coco / "annotations" / "image_info_test2017.json")
    shutil.copy(info, coco / "annotations" / "image_info_test-dev2017.json")  # test-dev's: the same zip, test2017's photos
    for name in ("image_info_test2017.json", "image_info_test-dev2017.json"):
        found = captioned_images(str(coco / "annotations" / name))
        assert [(row["image_id"], path) for row, path in found if path.is_file()] == [
            (0, coco / "test2017" / "0000ea2087020901.jpg"), (4499, coco / "test2017" / "1193ea2087020901.jpg")]
    lone = tmp_path / "lone" / info.name
    lone.parent.mkdir()
    shutil.copy(info, lone)
    with pytest.raises(DataError, match=r"none of its first images \(0000ea2087020901\.jpg, \.\.\.\) is in \S+lone: put the "
                                        r"photos in a folder beside the file$"):  # (predict has no data_dir to name)
        captioned_images(str(lone))
    # a later run of other images into that output: the server's file of the earlier one goes with the rows it replaced
    data = CaptionPredictDataModule(images=str(tmp_path / "nocaps" / "val"), output=str(tmp_path / "caps.jsonl"), overwrite=True,
                                    tokenizer=str(backbones[0]), image_processor=str(backbones[1]), batch_size=2, num_workers=0)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp_path).predict(module, datamodule=data)
    assert not (tmp_path / "caps.jsonl.coco_results.json").exists()
    # an image entry without its id is refused by its place: its caption could not be submitted
    content["images"][1].pop("id")
    info.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"nocaps_test_image_info\.json: images\[1\] needs an integer 'id' and a 'file_name'"):
        run(tmp_path / "again.jsonl")


def test_a_coco_copys_own_image_ids_name_its_images_in_the_results(backbones, coco_root, trained_checkpoint, tmp_path):
    # a table with COCO's ids (lmms-lab's image_id, HuggingFaceM4/COCO's and Karpathy's copies' cocoid) had its images
    # named by their rows' numbers in the COCO results file: scored against COCO's own annotations, they named other photos
    content = json.loads((coco_root / "annotations" / "captions_val2017.json").read_text())
    table = tmp_path / "coco_copy"
    table.mkdir()
    rows = [{"image": f"../{coco_root.name}/val2017/{image['file_name']}", "caption": a["caption"], "cocoid": 391895 + image["id"]}
            for image in content["images"] for a in content["annotations"] if a["image_id"] == image["id"]]  # a row per caption
    (table / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (table / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:5]))
    shutil.copytree(coco_root, tmp_path / coco_root.name, dirs_exist_ok=True)
    dm = CaptionDataModule(source="hub", hub_dataset=str(table), hub_image_column="image", hub_caption_column="caption",
                           data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                           image_processor=str(backbones[1]), batch_size=4, num_workers=0)
    module = make_captioner(backbones, generation={"max_new_tokens": 5, "min_new_tokens": 2})
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path / "run", enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, datamodule=dm, ckpt_path=str(trained_checkpoint))
    submitted = json.loads((Path(trainer.log_dir) / "test-test-step4.coco_results.json").read_text())
    assert sorted(row["image_id"] for row in submitted) == [391895 + image["id"] for image in content["images"]]
    # ids that do not name one image each (one id for every photo, a placeholder): rows' numbers, said
    (table / "test.jsonl").write_text("".join(json.dumps({**row, "cocoid": 7}) + "\n" for row in rows))
    again = CaptionDataModule(source="hub", hub_dataset=str(table), hub_image_column="image", hub_caption_column="caption",
                              data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                              image_processor=str(backbones[1]), batch_size=4, num_workers=0)
    with pytest.warns(UserWarning, match=r"images named in the results by their rows' numbers, since the table's 'cocoid' "
                                         r"column does not give each one a whole number of its own \(first: one id for two"):
        folder = again.preprocess("test")
    assert sorted(load_table(folder / "images")["image_id"]) == [5 * n for n in range(len(content["images"]))]
    # a spreadsheet's CSV (every cell read as text) and pandas' ints with a gap (floats) give their ids too; a gap is said
    import pandas as pd

    from mmcaption.data.hub import HubCaptions

    frame = pd.DataFrame(rows)
    frame.to_csv(table / "test.csv", index=False)
    (table / "test.jsonl").unlink()
    (table / "train.jsonl").unlink()
    frame[:5].to_csv(table / "train.csv", index=False)
    settings = dict(source="hub", hub_dataset=str(table), hub_image_column="image", hub_caption_column="caption",
                    data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                    image_processor=str(backbones[1]), batch_size=4, num_workers=0)
    csv = CaptionDataModule(**settings)
    assert sorted(load_table(csv.preprocess("test") / "images")["image_id"]) == [391895 + i["id"] for i in content["images"]]
    frame.loc[frame["cocoid"] == frame["cocoid"].iloc[-1], "cocoid"] = None  # one photo's id missing: its rows floats' NaN
    frame.to_json(table / "test.jsonl", orient="records", lines=True)
    frame[:5].to_json(table / "train.jsonl", orient="records", lines=True)
    (table / "test.csv").unlink()
    (table / "train.csv").unlink()
    with pytest.warns(UserWarning, match=r"\(first: nan\)|\(first: None\)"):
        CaptionDataModule(**settings).preprocess("test")
    # a run trained before this release (its images under rows' numbers) resumes on the cache built now: the same rows
    # and images, and nothing trains on their ids
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HubCaptions, "own_id_column", staticmethod(lambda data: None))
        earlier = CaptionDataModule(**settings).preprocess("train")
    now = CaptionDataModule(**settings)
    now.prepare_data()
    now.setup("fit")
    assert now.folders["train"] != earlier and now.same_training_data(earlier.name)


def test_results_name_the_checkpoint_evaluated_though_a_fit_saves_over_it_meanwhile(backbones, coco_root, trained_checkpoint,
                                                                                   tmp_path):
    """A sweep evaluates last.ckpt while its fit goes on into the same folder: the fit's next save (renamed over the file,
    or a ``save_last: link`` pointed at it) must not be the checkpoint the results name - its sha256 had been the new
    file's, the old weights scored."""
    step3 = tmp_path / "epoch=0-step=3.ckpt"
    shutil.copyfile(trained_checkpoint, step3)
    evaluated = hashlib.sha256(step3.read_bytes()).hexdigest()
    dm = karpathy_datamodule(backbones, karpathy_root(coco_root, tmp_path / "coco2014"))
    for linked in (False, True):
        last = tmp_path / f"last-{linked}.ckpt"
        last.symlink_to(step3.name) if linked else shutil.copyfile(step3, last)

        class SavedOver(Callback):  # the fit's save, after the evaluation loaded the checkpoint
            def on_test_start(self, trainer, pl_module, linked=linked, last=last):
                (tmp_path / "newer.ckpt").write_bytes(b"PK" + bytes(64))
                if linked:
                    (tmp_path / "pointed.ckpt").symlink_to("newer.ckpt")
                os.replace(tmp_path / ("pointed.ckpt" if linked else "newer.ckpt"), last)

        trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path / f"run-{linked}", enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[SavedOver()], limit_test_batches=1)
        install_atomic_checkpoint_io(trainer)
        trainer.test(make_captioner(backbones, generation={"max_new_tokens": 2}), datamodule=dm, ckpt_path=str(last))
        results = json.loads((Path(trainer.log_dir) / "test-test-step4.results.json").read_text())
        assert results["checkpoint"] == {"path": str((step3 if linked else last).resolve()), "sha256": evaluated, "step": 4}, linked


def test_mmcaption_test_scores_karpathy_test_and_writes_results_that_say_how(backbones, coco_root, trained_checkpoint, tmp_path,
                                                                             monkeypatch):
    root = karpathy_root(coco_root, tmp_path / "coco2014")
    dm = karpathy_datamodule(backbones, root)
    module = make_captioner(backbones, generation={"max_new_tokens": 8, "min_new_tokens": 3, "num_beams": 3})
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path / "run", enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.test(module, datamodule=dm, ckpt_path=str(trained_checkpoint))[0]

    folder = Path(trainer.log_dir)
    results = json.loads((folder / "test-test-step4.results.json").read_text())
    predictions = [json.loads(line) for line in (folder / "test-test-step4.predictions.jsonl").read_text().splitlines()]
    assert [row["image_id"] for row in predictions] == [102, 103] and all(row["caption"] for row in predictions)
    assert "note" not in results  # Karpathy's test split, held out from validation's choice
    # each image named as its folder holds it, beside its id
    assert [row["file_name"] for row in predictions] == [f"val2014/COCO_val2014_{i:012d}.jpg" for i in (102, 103)]
    # the captions as a COCO results file, which pycocotools takes as it is (string ids: "Results do not correspond
    # to current coco set")
    assert results["coco_results"] == "test-test-step4.coco_results.json"
    coco = COCO()
    coco.dataset = {"images": [{"id": 102}, {"id": 103}],
                    "annotations": [{"id": n, "image_id": i, "caption": c} for n, (i, c) in enumerate(
                        (row["image_id"], c) for row in predictions for c in row["references"])]}
    coco.createIndex()
    loaded = coco.loadRes(str(folder / "test-test-step4.coco_results.json"))
    assert {a["image_id"]: a["caption"] for a in loaded.dataset["annotations"]} == {r["image_id"]: r["caption"] for r in predictions}
    expected_metrics = {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"} | ({"METEOR"} if caption_metrics.java_available() else set())
    assert expected_metrics <= set(results["metrics"]) and {f"test/{m}" for m in expected_metrics} <= set(logged)
    assert results["metrics"]["CIDEr"] == pytest.approx(logged["test/CIDEr"])
    rescored = caption_metrics.caption_scores({r["image_id"]: r["caption"] for r in predictions},
                                              {r["image_id"]: r["references"] for r in predictions})
    assert rescored == pytest.approx({k: results["metrics"][k] for k in rescored})  # the file's numbers are its captions'
    assert results["split"] == "test" and results["images"] == 2 and results["references"] == 10
    assert results["generation"] == {"max_new_tokens": 8, "min_new_tokens": 3, "num_beams": 3, "do_sample": False,
                                     **{k: v for k, v in results["generation"].items() if k not in ("max_new_tokens", "min_new_tokens", "num_beams", "do_sample")}}
    # the captions generation stopped at max_new_tokens before their end (scored cut, unsaid): those of all 8 tokens
    lengths = [len(module.tokenizer(row["caption"], add_special_tokens=False)["input_ids"]) for row in predictions]
    assert results["cut_at_max_new_tokens"] == sum(length >= 8 for length in lengths), lengths
    assert results["checkpoint"]["sha256"] == hashlib.sha256(trained_checkpoint.read_bytes()).hexdigest()
    assert results["caption_metrics"]["tokenizer"].startswith("PTB" if caption_metrics.java_available() else "fallback")
    assert "SPICE" in results["caption_metrics"]["skipped"] or "SPICE" in results["metrics"]
    assert results["data"]["source"] == "karpathy"
    assert "limited_by" not in results
    # the code that made the numbers: the libraries' versions, and in a git checkout the commit (a version number
    # such as 0.1.0 names no code)
    assert results["software"]["torch"] == torch.__version__ and results["software"]["bitsandbytes"]
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert results["software"]["commit"] == head and isinstance(results["software"]["uncommitted_changes"], bool)

    # the same evaluation again, into the same folder, writes beside the first results, never over them
    first = (folder / "test-test-step4.results.json").read_text()
    again_predictions, again_results = write_evaluation(folder, "test-test-step4", predictions, {"split": "test"})
    assert (again_predictions.name, again_results.name) == ("test-test-step4-2.predictions.jsonl", "test-test-step4-2.results.json")
    assert json.loads((folder / "test-test-step4-2.coco_results.json").read_text()) == json.loads(
        (folder / "test-test-step4.coco_results.json").read_text())
    assert (folder / "test-test-step4.results.json").read_text() == first
    assert json.loads(again_results.read_text())["predictions"] == "test-test-step4-2.predictions.jsonl"
    # the loss alone (test_caption_images 0): no predictions file, empty and named in the results, as there was
    loss_only, loss_results = write_evaluation(folder, "test-test-step4", [], {"split": "test", "loss": 1.5})
    assert loss_only is None and "predictions" not in json.loads(loss_results.read_text())
    assert not (folder / "test-test-step4-3.predictions.jsonl").exists() and loss_results.name == "test-test-step4-3.results.json"
    # two validates ending together in one folder (a sweep's): both chose the same free name, and the second's result
    # was lost to a FileExistsError traceback. The other takes it between the choice and the write here
    import mmcaption.evaluation.report as report

    chosen = report._free_stem

    def taken_meanwhile(where, stem):
        free = chosen(where, stem)
        if free == "test-test-step4-4":
            (where / f"{free}.results.json").write_text("the other run's")
        return free

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "_free_stem", taken_meanwhile)
        _, raced = write_evaluation(folder, "test-test-step4", [], {"split": "test", "loss": 1.25})
    assert raced.name == "test-test-step4-5.results.json" and json.loads(raced.read_text())["loss"] == 1.25
    assert (folder / "test-test-step4-4.results.json").read_text() == "the other run's"

    # part of the split, by test_caption_images, is said (CIDEr's document frequencies are the images scored): it was
    # limited_by null; and a paper's settings beyond the usual ones (early_stopping) are recorded
    part = make_captioner(backbones, generation={"max_new_tokens": 8, "num_beams": 3, "early_stopping": True})

    class NeverEnds(Callback):  # and a model that never ends a caption: it is cut at max_new_tokens, and that is said
        def on_test_start(self, trainer, module):
            blue = module.tokenizer(" blue", add_special_tokens=False)["input_ids"][0]
            with torch.no_grad():
                module.model.language_model.get_base_model().lm_head.bias[blue] += 30

    tester = Trainer(accelerator="cpu", default_root_dir=tmp_path / "part", enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[NeverEnds()])
    monkeypatch.setattr("mmcaption.results._SAID_CUT", [])  # said once a process
    with pytest.warns(UserWarning, match=r"1 of 1 generated texts stopped at max_new_tokens 8 before their end, and are scored cut"):
        tester.test(part, datamodule=karpathy_datamodule(backbones, root, test_caption_images=1), ckpt_path=str(trained_checkpoint))
    results = json.loads((Path(tester.log_dir) / "test-test-step4.results.json").read_text())
    assert results["images"] == 1 and results["limited_by"] == ("data.test_caption_images 1 (of the split's 2 images; "
                                                                "CIDEr's document frequencies come from those scored)")
    assert results["generation"]["early_stopping"] is True and results["cut_at_max_new_tokens"] == 1
    # an image its data left out (on_bad_record skip) is in the results: a 4,999-image score read as the standard 5,000
    (root / "val2014" / "COCO_val2014_000000000103.jpg").unlink()
    tester = Trainer(accelerator="cpu", default_root_dir=tmp_path / "skipped", enable_progress_bar=False,
                     enable_model_summary=False)
    tester.test(module, datamodule=karpathy_datamodule(backbones, root, on_bad_record="skip"), ckpt_path=str(trained_checkpoint))
    results = json.loads((Path(tester.log_dir) / "test-test-step4.results.json").read_text())
    assert results["images"] == 1 and results["left_out_of_split"] == {"missing image": 1}


def test_evaluation_refuses_several_texts_per_image_and_says_which_of_two_length_limits_wins(backbones):
    # num_return_sequences 3 scored image 103 with the second beam of image 102 (the texts were zipped with the batch's
    # ids); max_length 6 lost to the config's max_new_tokens 20 with transformers' warning alone
    from mmcaption.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.generation: num_return_sequences 3: validation, test and predict score "
                                          r"and write one text per image or question"):
        make_captioner(backbones, generation={"num_beams": 3, "num_return_sequences": 3})
    with pytest.warns(UserWarning, match=r"max_length 6 .* and max_new_tokens 20 .* both limit the text: max_new_tokens 20 "
                                         r"is the limit \(--model.generation.max_new_tokens null makes it max_length\)"):
        both = make_captioner(backbones, generation={"max_length": 6, "max_new_tokens": 20})  # a checkpoint's still loads
    assert both.tasks.generation.max_new_tokens == 20
    for given in ({"max_length": 6, "max_new_tokens": None}, {"max_length": 6}):  # alone, max_length is the limit
        generation = make_captioner(backbones, generation=given).tasks.generation
        assert (generation.max_length, generation.max_new_tokens) == (6, None)

def test_without_java_one_loud_warning_names_what_is_lost_and_the_setup_records_it(monkeypatch):
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    monkeypatch.setattr(caption_metrics, "_warned_no_java", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            scores = caption_metrics.caption_scores({1: "a red circle"}, {1: ["a red circle", "one red circle"]})
    assert [str(w.message) for w in caught if "Java" in str(w.message)] == [caption_metrics.NO_JAVA]
    assert "METEOR and SPICE are not computed" in caption_metrics.NO_JAVA and "apt-get install" in caption_metrics.NO_JAVA
    assert "METEOR" not in scores and "CIDEr" in scores
    setup = caption_metrics.metric_setup()
    assert setup["tokenizer"].startswith("fallback") and set(setup["skipped"]) == {"METEOR", "SPICE"}
    assert "METEOR" not in setup["metrics"] and "no Java" in setup["skipped"]["METEOR"]


def test_outputs_people_read_keep_their_text_and_escape_only_a_name_that_is_not_utf8(backbones):
    from mmcaption.evaluation.report import json_line, json_text
    from mmcaption.tasks import Tasks

    name = "caf\udce9.jpg"  # a Windows archive's "café.jpg" in its code page, unzipped on Linux
    line = json_line({"image": name, "caption": "一个红色的三角形 😀"})
    assert "一个红色的三角形 😀" in line and "\\udce9" in line  # the whole row was escaped for one name: \u4e00\u4e2a...
    assert json.loads(line) == {"image": name, "caption": "一个红色的三角形 😀"}
    assert json_text({"per_category": {"颜色识别": 0.5}}) == '{"per_category": {"颜色识别": 0.5}}'  # was \u989c\u8272...

    # a caption cut by max_new_tokens inside a character of several byte tokens: half of it decoded as U+FFFD
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbones[0])
    ids = tokenizer("a blue triangle 😀", add_special_tokens=False)["input_ids"]
    cut = torch.tensor([ids[:-1]])
    assert tokenizer.batch_decode(cut)[0].endswith("\ufffd")  # what a cut emoji decodes to
    tasks = Tasks.__new__(Tasks)
    tasks.tokenizer = tokenizer
    assert tasks.decode(cut) == ["a blue triangle"]


def test_a_resume_compares_the_generation_settings_both_records_have():
    # every setting given is recorded now (early_stopping, top_k): an output an earlier release began lacks them, and
    # its resume was refused though nothing had changed
    from mmcaption.evaluation.report import record_differences

    earlier = {"generation": {"max_new_tokens": 8, "num_beams": 3}}
    assert record_differences(earlier, {"generation": {"max_new_tokens": 8, "num_beams": 3, "early_stopping": True}}) == []
    assert record_differences({"generation": {"num_beams": 3, "early_stopping": False, "top_k": 5}},
                              {"generation": {"num_beams": 3, "early_stopping": True, "top_k": 5}}) == [
        "early_stopping (False then, True now)"]
    assert record_differences(earlier, {"generation": {"max_new_tokens": 8, "num_beams": 5}}) == ["num_beams (3 then, 5 now)"]


def test_a_batch_limit_that_leaves_nothing_out_is_not_said_to_score_part_of_the_split(backbones, coco_root, trained_checkpoint,
                                                                                      tmp_path):
    # a fit config's limit_val_batches 200 kept for a 2-image test: "trainer.limit_test_batches 200: part of the split"
    # beside the whole split's numbers; and one batch of 1 image was blamed on test_caption_images 40, which cut nothing
    root = karpathy_root(coco_root, tmp_path / "coco2014")
    module = make_captioner(backbones, generation={"max_new_tokens": 4})

    def tested(limit, **settings) -> dict:
        trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path / f"run{limit}-{len(settings)}", enable_progress_bar=False,
                          enable_model_summary=False, limit_test_batches=limit)
        trainer.test(module, datamodule=karpathy_datamodule(backbones, root, **settings), ckpt_path=str(trained_checkpoint),
                     verbose=False)
        return json.loads((Path(trainer.log_dir) / "test-test-step4.results.json").read_text())

    whole = tested(200, test_caption_images=40)
    assert whole["images"] == 2 and "limited_by" not in whole
    part = tested(1, test_caption_images=40, eval_batch_size=1)
    assert part["images"] == 1 and part["limited_by"] == "trainer.limit_test_batches 1"


def test_a_batch_limit_per_process_is_said_with_the_processes_when_it_left_batches_out(tmp_path):
    # the wording of a multi-process run's limit (each process takes that many of its own share), and none when each
    # process's share fits in the batches it ran
    from types import SimpleNamespace

    from mmcaption.results import write_results

    def results(ran: int) -> dict:
        trainer = SimpleNamespace(lightning_module=None, datamodule=None, state=SimpleNamespace(fn=SimpleNamespace(value="validate")),
                                  ckpt_path=None, world_size=2, limit_val_batches=1, val_dataloaders=[[0, 1, 2]],
                                  num_val_batches=[ran])
        folder = tmp_path / str(ran)
        folder.mkdir()
        write_results(trainer, {}, folder, "val", {"loss": 1.0}, [], [])
        return json.loads(next(folder.glob("*.results.json")).read_text())

    assert results(1)["limited_by"] == "trainer.limit_val_batches 1 (batches per process, of 2 processes: up to 2 batches)"
    assert "limited_by" not in results(3)


def test_a_full_disk_while_results_are_written_leaves_no_file_cut_short_under_its_final_name(tmp_path, monkeypatch):
    # test on a full disk left test-val2017.predictions.jsonl cut mid-line and a 0-byte coco_results.json (the file a user
    # uploads to the COCO server) under their final names, beside no results.json
    import builtins
    import errno

    rows = [{"image_id": i, "file_name": f"{i}.jpg", "caption": f"a caption {i}"} for i in range(50)]
    real_open = builtins.open

    def full_at(name):
        def opened(path, *args, **kwargs):
            handle = real_open(path, *args, **kwargs)
            if str(path).endswith(name):
                handle.write = lambda text: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
            return handle
        return opened

    (tmp_path / "mine.txt").write_text("the user's")
    for name in (".predictions.jsonl", ".coco_results.json", ".results.json"):
        with monkeypatch.context() as patch:
            patch.setattr(builtins, "open", full_at(name))
            with pytest.raises(OSError, match="No space left on device"):
                write_evaluation(tmp_path, "test-val2017", rows, {"split": "val2017"})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"], name
    predictions, results = write_evaluation(tmp_path, "test-val2017", rows, {"split": "val2017"})  # room again: whole
    assert len(predictions.read_text().splitlines()) == 50 and json.loads(results.read_text())["coco_results"]


def test_validation_and_tests_on_images_trained_on_are_said_whatever_their_names(backbones, coco_root, tmp_path, monkeypatch):
    # a validation split holding copies of training photos (a CSV's train.csv and test.csv sharing some), val_split the
    # training split, and a caption stage of train2017 tested on Karpathy's test split (COCO 2014 images, most of which
    # train2017 holds): scores of pictures trained on, said by no one
    from mmcaption.cli import main

    from .test_interruptions import fit_config

    monkeypatch.chdir(tmp_path)
    root = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    val_names = sorted(p.name for p in (root / "val2017").iterdir())
    for train_name, val_name in zip(("000000000001.jpg", "000000000002.jpg"), val_names):
        shutil.copy(root / "train2017" / train_name, root / "val2017" / val_name)  # the same photos, other names
    config = fit_config(tmp_path, root, backbones, tmp_path / "c")
    with pytest.warns(UserWarning, match=rf"^2 of the {len(val_names)} images of split val2017 \(50%\) are in the training "
                                         rf"split train2017 too \(first: {val_names[0]}\): validation measures pictures trained "
                                         "on, and val/loss picks the best checkpoint by them"):
        main(config)
    with pytest.warns(UserWarning, match="^the split validated on, train2017, is the training split: validation measures"):
        main([*config, "--data.init_args.val_split", "train2017"])
    # Karpathy's test split, read from COCO 2017's copies of its photos, with the caption stage's checkpoint
    sentences = [{"raw": "a shape.", "tokens": ["a", "shape"], "imgid": 0, "sentid": 0}]
    images = [{"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg", "split": split, "cocoid": i, "imgid": i,
               "sentids": [0], "sentences": sentences} for i, split in ((3, "train"), (1, "test"), (2, "test"))]
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    with pytest.warns(UserWarning, match=r"^2 of the 2 images of split test \(100%\) are in the training split "
                                         r"train2017-[0-9a-f]{16} too \(first: .*\): the scores measure pictures the "
                                         "checkpoint trained on"):
        main(["test", "--config", config[2], "--data.init_args.source", "karpathy", "--data.init_args.val_split", "null",
              "--ckpt_path", str(tmp_path / "c" / "last.ckpt"), "--data.init_args.test_caption_images", "0"])


def test_photos_are_told_apart_whole_not_by_their_end_alone():
    # uncompressed photos of one size (BMP, TIFF) and JPEGs of a plain bottom edge share their length and last bytes:
    # each such validation photo was said to be a training one
    import datasets

    from mmcaption.data.stage_splits import shared_images

    def table(names, images):
        return datasets.Dataset.from_dict({"file_name": names, "image": images})

    corner = b"\xff" * 64  # the same plain corner of two pictures of one size
    trained = table(["a.bmp", "b.bmp"], [b"BM" + bytes(range(200)) + corner, b"BM" + bytes(range(1, 201)) + corner])
    scored = table(["c.bmp", "copy of a.bmp"], [b"BM" + bytes(range(2, 202)) + corner, b"BM" + bytes(range(200)) + corner])
    assert shared_images(trained, scored) == ["copy of a.bmp"]


def test_a_full_disk_where_a_fits_validation_captions_go_stops_them_not_the_training(backbones, coco_root, tmp_path, monkeypatch):
    # each validation of a fit now writes its captions and scores beside the logs: a full disk there would have ended
    # the training at a validation, as a full disk under the curves no longer does (full_log_disk)
    import errno

    from mmcaption import results

    def full(folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(results, "write_evaluation", full)
    language_dir, vision_dir = backbones
    data = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                             image_processor=str(vision_dir), batch_size=2, eval_batch_size=2, num_workers=0,
                             val_caption_images=2)
    module = make_captioner(backbones, generation={"max_new_tokens": 3})
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, max_steps=2,
                      val_check_interval=1, limit_val_batches=1)
    with pytest.warns(UserWarning, match=r"step 1's validation captions and scores were not written \(\[Errno 28\] No space "
                                         r"left on device: .*validations'\); training goes on"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2 and "val/CIDEr" in trainer.callback_metrics
    # a fast_dev_run (no logs, no checkpoints) writes none: they went into the working folder
    quick = Trainer(accelerator="cpu", fast_dev_run=1, default_root_dir=tmp_path / "quick", enable_progress_bar=False,
                    enable_model_summary=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        quick.fit(module, datamodule=data)
    assert "val/CIDEr" in quick.callback_metrics and not [w for w in said if "were not written" in str(w.message)]


def test_generated_texts_that_are_empty_are_counted_in_the_results(backbones, coco_root, tmp_path, monkeypatch):
    # a model that ends every caption at once (an instruct checkpoint asked for captions, a few steps of training) was
    # scored with nothing said but its low numbers
    from mmcaption.tasks import Tasks

    monkeypatch.setattr(Tasks, "generate_batch", lambda self, batch, *args: [""] * len(batch["input_ids"]))
    language_dir, vision_dir = backbones
    data = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                             image_processor=str(vision_dir), eval_batch_size=2, num_workers=0, test_caption_images=2)
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path / "run", enable_progress_bar=False, enable_model_summary=False,
                      limit_test_batches=1)
    trainer.test(make_captioner(backbones), datamodule=data, verbose=False)
    assert json.loads((Path(trainer.log_dir) / "test-val2017.results.json").read_text())["empty"] == 2

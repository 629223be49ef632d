"""Cached vision features: computed once per image at preprocessing, float16, used instead of the tower."""

import os

import torch
from lightning.pytorch import Trainer

from mmcaption.data import CaptionDataModule
from mmcaption.data.features import features_folder

from .conftest import make_captioner


def test_training_on_cached_features_skips_the_vision_tower_and_matches_pixels(backbones, coco_root, tmp_path):
    language_dir, vision_dir = backbones
    settings = dict(tokenizer=str(language_dir), image_processor=str(vision_dir), batch_size=4, num_workers=0)
    cached_dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), cache_image_features=True,
                                  vision_feature_layer=-2, **settings)
    # the data module is told what to cache, never asks the trainer: it prepares on its own
    cached_dm.prepare_data()
    assert features_folder(cached_dm.split_folder("train2017"), str(vision_dir), -2).is_dir()
    module = make_captioner(backbones, vision_feature_layer=-2)
    tower_calls = []
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)
    trainer.strategy.connect(module)
    module.configure_model()
    module.model.vision_model.register_forward_hook(lambda *args: tower_calls.append(1))
    trainer.fit(module, datamodule=cached_dm)
    assert trainer.global_step == 2 and tower_calls == []  # training and val loss never ran the tower

    split = cached_dm.datasets["train2017"].folder
    folder = features_folder(split, str(vision_dir), -2)
    assert (folder / "meta.json").is_file()
    features = cached_dm.datasets["train2017"].features
    tower = module.model.vision_model.config
    assert len(features) == 12 and features[0]["features"].dtype == torch.float16
    assert features[0]["features"].shape == ((tower.image_size // tower.patch_size) ** 2 + 1, tower.hidden_size)

    # the same batch through pixels and through the cache gives the same logits (up to float16)
    pixel_dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), **settings)
    pixel_dm.prepare_data()
    pixel_dm.setup("fit")
    cached, pixels = (dm.datasets["train2017"].__getitems__([0, 7, 30]) for dm in (cached_dm, pixel_dm))
    assert "pixel_values" not in cached[0] and cached[0]["vision_features"].dtype == torch.float16
    module.eval()
    with torch.no_grad():
        from_pixels = module.model.vision_features(torch.stack([s["pixel_values"] for s in pixels]))
        from_cache = torch.stack([s["vision_features"] for s in cached]).float()
    torch.testing.assert_close(from_cache, from_pixels, rtol=1e-2, atol=2e-3)


def test_a_batch_of_cached_features_is_read_at_once_and_equals_datasets_rows(tmp_path):
    import datasets
    import numpy as np

    from mmcaption.data.features import gather_features, load_image_features

    values = np.random.default_rng(0).standard_normal((40, 5, 8)).astype(np.float16)
    table = datasets.Dataset.from_dict({"features": list(values)},
                                       features=datasets.Features({"features": datasets.Array2D((5, 8), "float16")}))
    # two Arrow chunks, as a table saved in shards or appended to gives
    datasets.concatenate_datasets([table.select(range(25)).flatten_indices(), table.select(range(25, 40)).flatten_indices()]) \
        .save_to_disk(str(tmp_path / "data"))
    features = load_image_features(tmp_path)
    indices = [39, 0, 24, 25, 7, 7]
    batch = gather_features(features, indices)
    assert batch.dtype == torch.float16 and batch.shape == (6, 5, 8)
    assert torch.equal(batch, torch.from_numpy(values[indices]))
    assert torch.equal(batch, torch.stack([features[i]["features"] for i in indices]))
    view = features.select([3, 2, 1])  # a view with an indices mapping reads through datasets
    assert torch.equal(gather_features(view, [0, 2]), torch.from_numpy(values[[3, 1]]))


def test_cached_features_are_found_again_after_the_project_folder_moves(backbones, tmp_path):
    # the key held the tower folder's absolute path: a moved project recomputed every image's features (hours on COCO)
    import shutil

    split = tmp_path / "preprocessed" / "train2017-0123"
    moved = tmp_path / "moved" / "vision"
    shutil.copytree(backbones[1], moved, copy_function=shutil.copy2)  # as mv keeps them: same files, sizes and times
    assert features_folder(split, str(moved), -2) == features_folder(split, str(backbones[1]), -2)
    # a copy staged anew (new times, as cp -r to a node's scratch disk at each job's start) is the same tower: its features
    # were computed again every job
    copied = tmp_path / "scratch" / "vision"
    shutil.copytree(backbones[1], copied)
    weights = next(copied.glob("*.safetensors"))
    os.utime(weights, ns=(1, 1))
    assert features_folder(split, str(copied), -2) == features_folder(split, str(backbones[1]), -2)
    # other weights of the same size and time (a retrained tower, its time set back) are another tower: they were read
    # as the old one's, and trained on its features
    stat = weights.stat()
    content = bytearray(weights.read_bytes())
    content[-1] ^= 1
    weights.write_bytes(bytes(content))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size
    assert features_folder(split, str(copied), -2) != features_folder(split, str(backbones[1]), -2)


def test_a_hub_towers_features_keep_their_folder_while_its_files_are_fetched(backbones, tmp_path):
    # keyed by the files of its snapshot in the cache, a first fit computed every feature, fetched the weights as the
    # tower loaded, and then did not find them under the key they now gave
    split = tmp_path / "preprocessed" / "train2017-0123"
    first = features_folder(split, "someone/tower", -2)
    assert features_folder(split, "someone/tower", -2) == first != features_folder(split, "someone/other", -2)


def test_a_build_lets_go_of_the_files_it_maps_before_its_folder_is_renamed_into_place(backbones, coco_root, tmp_path,
                                                                                         monkeypatch):
    # the tables a build made still mapped their files in its staging folder when it was renamed: Windows refuses to
    # rename a folder that holds a mapped file, and the first preprocessing failed there ("Access is denied")
    import os
    from pathlib import Path

    import pytest

    from mmcaption.data import cache

    if not Path("/proc/self/maps").is_file():
        pytest.skip("reads what this process maps from /proc (Linux)")
    renamed, replace = [], os.replace

    def checked(source, target, *args, **kwargs):
        if Path(source).is_dir():
            mapped = [line.split(maxsplit=5)[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                      if str(Path(source).resolve()) in line]
            renamed.append((Path(target).name, mapped))
        return replace(source, target, *args, **kwargs)

    monkeypatch.setattr(cache.os, "replace", checked)
    language_dir, vision_dir = backbones
    CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), cache_image_features=True,
                      tokenizer=str(language_dir), image_processor=str(vision_dir), num_workers=0).prepare_data()
    assert len(renamed) >= 4 and all(not mapped for _, mapped in renamed), renamed  # splits, and their features


def test_caching_features_in_a_jobs_log_says_how_far_it_has_come(backbones, coco_root, tmp_path, monkeypatch):
    # off a terminal (SLURM, nohup) datasets' bar is off: 99,007 images were a start line, then minutes of nothing (hours
    # with CLIP on a CPU) before the end line
    import mmcaption.data.features as features
    import mmcaption.data.progress as progress

    language_dir, vision_dir = backbones
    said = []
    monkeypatch.setattr(progress, "draws_bars", lambda: False)
    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0)
    monkeypatch.setattr(progress, "rank_zero_info", said.append)
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                           image_processor=str(vision_dir), batch_size=4, num_workers=0)
    dm.prepare_data()
    # the first run's passes over the images and the captions, minutes of nothing at COCO's size, say how far they are
    checked = [line for line in said if line.startswith("preprocessing train2017-") and ": images read and checked: " in line]
    assert checked and all(" of 12 images, " in line and "min left" in line for line in checked), said
    assert [line.split(": ")[2].split(" of ")[0] for line in checked] == [str(n) for n in range(1, 12)]
    assert any(": tokenizing the captions of each image: 11 of 12 images" in line for line in said), said
    said.clear()
    features.write_image_features(dm.split_folder("train2017"), str(vision_dir), -1, batch_size=4)
    progress = [line for line in said if " of 12 images, " in line]
    assert progress and progress[0].startswith("caching the vision tower's features of train2017") and "min left" in progress[0]
    assert [line.split(": ")[1].split(" of ")[0] for line in progress] == ["4", "8"]


def test_features_that_cannot_fit_on_the_disk_are_refused_before_the_tower_runs_naming_their_size(backbones, coco_root, tmp_path,
                                                                                                  monkeypatch):
    import collections
    import shutil

    import pytest

    from mmcaption.data import features
    from mmcaption.errors import ConfigError

    language_dir, vision_dir = backbones
    data = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), cache_image_features=True,
                             vision_feature_layer=-2, tokenizer=str(language_dir), image_processor=str(vision_dir),
                             batch_size=4, num_workers=0)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**10, 2**10))  # 1 kB left
    tower = []

    class Pass:  # the features' pass, a batch at a time
        def __init__(self, *args, **kwargs) -> None:
            pass

        def at(self, done: int) -> None:
            tower.append(done)

    monkeypatch.setattr(features, "Progress", Pass)
    # COCO's 118,287 images with CLIP ViT-B/32: 9 GB, 18 GB while built, said as "no space left" after hours of a CPU
    with pytest.raises(ConfigError) as refused:
        data.prepare_data()
    said = str(refused.value)
    size = 12 * 17 * 64 * 2  # 12 images of the tiny tower's 17 tokens of 64 values
    assert said.startswith("the vision tower's features of the 12 images of train2017-") and (
        f" take {size / 1024:.1f} KiB (17 x 64 float16 values an image), up to {2 * size / 1024:.1f} KiB while they are built, "
        "and 1.0 KiB is free on the disk of") in said and said.endswith(
        ": free some space, point data.init_args.cache_dir at a larger disk, or set data.init_args.cache_image_features false "
        "(the tower then runs at every step)")
    assert not list((tmp_path / "cache").rglob("*features-*")) and tower == []  # no feature computed, nothing left


def test_a_long_preprocessing_pass_says_its_rate_and_time_left_soon_after_it_starts(monkeypatch):
    from types import SimpleNamespace

    from mmcaption.data import progress

    clock = [100.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(progress, "draws_bars", lambda: False)  # a job's log
    lines = []
    monkeypatch.setattr(progress, "rank_zero_info", lines.append)
    tokenizing = progress.Progress("tokenizing the conversations of each image", 80_000)
    for seconds, done in ((14, 5_000), (16, 6_000), (46, 18_000), (76, 30_000)):
        clock[0] = 100.0 + seconds
        tokenizing.at(done)
    # LLaVA-Instruct-150k's pass was a minute silent (after its file's reading and checking, as long) before this line
    assert lines == ["tokenizing the conversations of each image: 6,000 of 80,000 images, 375 images/s, about 3 min left",
                     "tokenizing the conversations of each image: 30,000 of 80,000 images, 395 images/s, about 2 min left"]


def test_caching_features_stopped_half_way_goes_on_from_the_images_done(backbones, coco_root, tmp_path, monkeypatch, capsys):
    # COCO's 118,287 images take the tower an hour on a GPU, days on a CPU: Ctrl-C, docker stop or a dropped SSH connection
    # half-way threw every feature computed away, and the next run started over from the first image
    import json

    import numpy as np
    import pytest

    from mmcaption.data import features

    language_dir, vision_dir = backbones
    said = []
    monkeypatch.setattr(features, "rank_zero_info", said.append)
    settings = dict(data_dir=str(coco_root), tokenizer=str(language_dir), image_processor=str(vision_dir), num_workers=0)
    whole = CaptionDataModule(cache_dir=str(tmp_path / "whole"), **settings)
    whole.prepare_data()
    def values(folder):
        return features.gather_features(features.load_image_features(folder), list(range(12))).numpy()

    expected = values(features.write_image_features(whole.split_folder("train2017"), str(vision_dir), -2, batch_size=4))
    data = CaptionDataModule(cache_dir=str(tmp_path / "cache"), **settings)
    data.prepare_data()
    split = data.split_folder("train2017")
    monkeypatch.setattr(features, "CHUNK_BYTES", 4 * 17 * 64 * 2)  # 4 images a chunk (the tiny tower: 17 tokens of 64 values)
    read, load_rgb, stop_at = [], features.load_rgb, [7]

    def read_until_stopped(row):
        read.append(row)
        if len(read) in stop_at:
            raise KeyboardInterrupt  # Ctrl-C in the second chunk
        return load_rgb(row)

    monkeypatch.setattr(features, "load_rgb", read_until_stopped)
    with pytest.raises(KeyboardInterrupt):
        features.write_image_features(split, str(vision_dir), -2, batch_size=2)
    target = features.features_folder(split, str(vision_dir), -2)
    assert not target.exists()  # nothing published half-way
    assert f"note: the vision tower's features of 4 of the 12 images of {split.name} are kept: the next run caches the " \
           "others" in capsys.readouterr().err
    chunks = target.with_name(f".{target.name}.chunks")

    def full(table, folder):  # pyarrow's full disk, which names no file
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    with monkeypatch.context() as disk:
        disk.setattr("mmcaption.data.chunks.save_table", full)  # (as each chunk is written)
        stop_at.clear()
        with pytest.raises(OSError) as refused:
            features.write_image_features(split, str(vision_dir), -2, batch_size=2)
    assert refused.value.filename == str(target)  # said with the folder being built, and why it takes the room
    assert refused.value.strerror == "No space left on device; the features take up to twice their size while they are built"
    # a chunk a kill cut short, never renamed into place, is removed; one a live run computes (where no lock is held:
    # NFS without lockd, Lustre without flock) is left to it: removed, that run stopped at "Cannot find data file"
    import socket
    import subprocess
    import time

    ended, running = subprocess.Popen(["true"]), subprocess.Popen(["sleep", "60"])
    ended.wait()
    killed, live = (chunks / f".build-{process.pid}-{socket.gethostname()}-abcd1234" for process in (ended, running))
    elsewhere = chunks / f".build-{running.pid}-{socket.gethostname()}x-abcd1234"  # another host's, whose name is longer

    def written(build, ago=0.0):
        build.mkdir(exist_ok=True)
        (build / "half.arrow").write_bytes(b"\0" * 100)
        for path in (build / "half.arrow", build):
            os.utime(path, (time.time() - ago, time.time() - ago))

    for build in (killed, live, elsewhere):
        written(build, ago=1200)
    written(elsewhere)
    meta = json.loads((chunks / "meta.json").read_text())
    assert features._kept_chunks(chunks, meta) == 1
    assert not killed.exists() and live.exists() and elsewhere.exists()
    written(killed)  # its process gone, written to a moment ago: another container's of this host's name, live
    assert features._kept_chunks(chunks, meta) == 1 and killed.exists()
    running.kill()
    running.wait()
    written(killed, ago=1200)
    written(live, ago=1200)
    written(elsewhere, ago=7200)
    assert features._kept_chunks(chunks, meta) == 1 and not live.exists() and not killed.exists() and not elsewhere.exists()
    killed.mkdir()
    (killed / "half.arrow").write_bytes(b"\0" * 100)

    read.clear()
    said.clear()
    stop_at.clear()
    features.write_image_features(split, str(vision_dir), -2, batch_size=2)
    assert len(read) == 8  # the tower ran on the 8 images not done, not on all 12 again
    assert any(f"of the 12 images of {split.name} on cpu from image 5: those before it were cached by a run stopped while" in line
               for line in said), said
    assert np.array_equal(values(target), expected)  # as one uninterrupted run's, in the images' order
    assert not chunks.exists() and json.loads((target / "meta.json").read_text())["images"] == 12
    (chunks / "00000").mkdir(parents=True)  # a kill as they were removed, the cache in place: not left there for good
    features.write_image_features(split, str(vision_dir), -2, batch_size=2)
    assert not chunks.exists()

    # the chunks a stopped run of another layer left are not this layer's, and said where the split's features are used
    with pytest.raises(KeyboardInterrupt):
        read.clear()
        stop_at.append(7)
        features.write_image_features(split, str(vision_dir), -1, batch_size=2)
    other = features.features_folder(split, str(vision_dir), -1)
    assert other.with_name(f".{other.name}.chunks").is_dir() and not other.exists()
    capsys.readouterr()
    features.write_image_features(split, str(vision_dir), -2)  # this layer's, cached: the stopped one is said at its use too
    assert f"note: {other.with_name(f'.{other.name}.chunks')} holds features (" in capsys.readouterr().err
    # chunks of another size (a release that chunked otherwise) are computed again, not taken for these
    features.discard(target)
    read.clear()
    stop_at.append(7)
    with pytest.raises(KeyboardInterrupt):
        features.write_image_features(split, str(vision_dir), -2, batch_size=2)
    monkeypatch.setattr(features, "CHUNK_BYTES", 3 * 17 * 64 * 2)
    read.clear()
    stop_at.clear()
    features.write_image_features(split, str(vision_dir), -2, batch_size=2)
    assert len(read) == 12 and np.array_equal(values(target), expected)
    err = capsys.readouterr().err
    assert f"note: {other.with_name(f'.{other.name}.chunks')} holds features (" in err and " KiB) a stopped run computed with " \
           "another vision tower or feature layer, for it to go on from: delete it if it will not" in err


def test_a_damaged_split_rebuilt_keeps_its_feature_caches(backbones, coco_root, tmp_path, capsys):
    # a table of the split deleted to make room (images/, which training on features does not read) or cut short: the
    # whole split folder went, with every tower's and layer's features in it, computed again (GPU hours at COCO's size)
    # or, another layer's, lost without a word
    import shutil

    from mmcaption.data import features

    language_dir, vision_dir = backbones
    settings = dict(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                    image_processor=str(vision_dir), num_workers=0, cache_image_features=True)
    CaptionDataModule(vision_feature_layer=-1, **settings).prepare_data(only=["train2017"])
    data = CaptionDataModule(vision_feature_layer=-2, **settings)
    data.prepare_data(only=["train2017"])
    split = data.split_folder("train2017")
    caches = {layer: features.features_folder(split, str(vision_dir), layer) for layer in (-1, -2)}
    made = {layer: (folder / "meta.json").stat().st_mtime_ns for layer, folder in caches.items()}
    shutil.rmtree(split / "images")
    computed = []
    write = features.write_image_features

    def counted(*args, **kwargs):
        if not features.is_complete(features.features_folder(*args[:3])):
            computed.append(args[2])
        return write(*args, **kwargs)

    import pytest

    said = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features, "write_image_features", counted)
        patch.setattr(features, "rank_zero_info", said.append)
        data.prepare_data(only=["train2017"])
    assert (split / "images").is_dir() and computed == []  # the split rebuilt, no feature computed again
    assert {layer: (folder / "meta.json").stat().st_mtime_ns for layer, folder in caches.items()} == made  # both kept
    assert said == [f"the rebuilt split {split.name} keeps its cached features ({', '.join(sorted(f.name for f in caches.values()))})"]
    assert not list(split.parent.glob(".*features-kept"))
    # a rebuild that stops (a bad record refused) leaves them aside: built from other settings after it (skip), they were
    # left there unsaid, gigabytes at COCO's size
    from mmcaption.data.records import DataError

    def refused(*args):
        raise DataError("a bad record")

    shutil.rmtree(split / "images")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CaptionDataModule, "write_split", refused)
        with pytest.raises(DataError, match="a bad record"):
            data.prepare_data(only=["train2017"])
    (kept,) = split.parent.glob(".*features-kept")
    capsys.readouterr()
    CaptionDataModule(vision_feature_layer=-2, on_bad_record="skip", **settings).prepare_data(only=["train2017"])
    err = capsys.readouterr().err
    assert f"note: {kept} holds the vision features (" in err and f"MB) of split train2017 as built from other inputs or " \
        f"settings ({split.name}), set aside by a rebuild of it that did not finish: they go back if it is built again" in err

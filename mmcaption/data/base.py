"""What every data module shares: the backbones' tokenizer and image processor (named by the CLI,
loaded by the model's factory), loaders; and for training, preprocessing on one process, the cache
of each split and of its vision features, and the resumable, length-grouped training loader.

The arguments shared by the data modules are declared here once; the subclasses pass them on with
``**kwargs``, which LightningCLI follows (``--print_config`` and ``--help`` show them with their docs).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from mmcaption.collate import collate
from mmcaption.data import features
from mmcaption.data.cache import built_once, damage, discard, fingerprint, folder_signature, is_complete, load_table
from mmcaption.data.datasets import ImageTextDataset
from mmcaption.data.records import DataError, OnBadRecord
from mmcaption.data.sampling import DEFAULT_MEGA_BATCH, LengthGroupedSampler, default_seed
from mmcaption.data.stage_splits import remove_orphaned_builds, say_other_split_caches, say_shared_images
from mmcaption.data.workers import end_workers_at_exit, loader_generator, worker_init, workers_for_cores
from mmcaption.errors import ConfigError, NotWritableError
from mmcaption.folders import check_writable
from mmcaption.images import processor_side
from mmcaption.model.backbones import load_image_processor, load_tokenizer

STAGE_SPLITS = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}  # what each command reads
# What a cache holds, as this release builds it: a change to the rows kept, their text, tokens or images is a new
# version (a cache an earlier release built is not read as this one's). 5: a special token's name in text tokenized as
# text. 6: another model's image placeholder refused, a null key absent, captions of digits or 'NA' kept, every cell
# of a caption table text, COCO 2017's copies of Karpathy's images, a caption cell's JSON list read as its captions, a
# dataset card's splits. 7: images of more than 8 bits scaled from the bit depth their values use. 8: big-endian
# 16-bit TIFFs read; the one record held out of a small file has its images. 9: <image> against a word (List<Image>)
# is text; conversations held out by image, not id. Not a new version, so that runs begun earlier resume (a new
# version refuses them): invisible characters around a caption removed (only the caption files that hold one change
# signature); colour profiles other than sRGB converted; a table's split column read as its splits (their names change
# the caches' keys); a conversation's NaN image read as none, a .txt of captions read as Flickr's (both refused); the
# image pass's work kept for a stopped build. tests/test_data_coco.py holds the digest of the code that builds caches.
PREPROCESSING_VERSION = 9
CACHE_BUILDERS = tuple(f"mmcaption.{name}" for name in """
    data.base data.cache data.coco data.llava data.hub data.hub_images data.caption_cells data.datamodules
    data.folder_layouts data.tables data.records data.image_pass data.image_sources data.features images pixel_levels
    prompts data.conversation_fields file_spellings data.sampling data.split_column data.table_rows data.encodings
    data.caption_files data.stage_splits data.json_values data.split_build data.chunks""".split())


def tokenizer_signature(tokenizer: PreTrainedTokenizerBase) -> str:
    vocabulary = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(vocabulary.encode()).hexdigest()[:16]


class BackbonesDataModule(LightningDataModule):
    """A data module that reads with the model's tokenizer and image processor.

    Args:
        tokenizer: the language model's tokenizer (linked to ``model.config.language_model`` by the CLI).
        image_processor: the vision tower's image processor (linked to ``model.config.vision_model``).
        num_workers: data loader worker processes (null: 4, or as many as the cores this process may use when fewer).
    """

    # "instruct" where the data asks questions, which the instruct stage teaches: predict, validate or test
    # with a caption stage's checkpoint is then noted (it answers, badly, and would pass unnoticed)
    stage_needed = ""

    def __init__(
        self, tokenizer: str = "microsoft/phi-2", image_processor: str = "openai/clip-vit-base-patch32", num_workers: int | None = None
    ) -> None:
        super().__init__()
        if num_workers is not None and num_workers < 0:  # joblib's -1, "every core": torch's refusal came after the model had loaded, as a traceback
            raise ConfigError(f"data.num_workers must be 0 (load in the main process) or more, got {num_workers}; this machine has {os.cpu_count()} cores")
        self.tokenizer_name, self.image_processor_name, self.num_workers = tokenizer, image_processor, workers_for_cores(num_workers)

    @functools.cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.tokenizer_name)

    @functools.cached_property
    def image_processor(self):
        return load_image_processor(self.image_processor_name)

    def backbones_problem(self, config: Any, tokenizer: PreTrainedTokenizerBase) -> str | None:
        """Why this module does not read as the model ``config`` (its ``tokenizer``) does, or None: a script's own Trainer
        gets no link from the model's settings as the CLI's does (other ids trained unsaid; features of another layer)."""
        if self.tokenizer_name != config.language_model:  # the same one by other names (a local copy) is fine
            try:
                same = tokenizer_signature(self.tokenizer) == tokenizer_signature(tokenizer)
            except Exception as error:  # noqa: BLE001 - what a tokenizer that cannot load raises, it is not the model's
                return f"the data module's tokenizer {self.tokenizer_name!r} cannot be loaded ({error}); give it the model's: " \
                       f"tokenizer={config.language_model!r}"
            if not same:
                return (f"the data module's tokenizer {self.tokenizer_name!r} is not the model's ({config.language_model!r}): "
                        f"its token ids mean other words to the model; give it tokenizer={config.language_model!r}")
        if self.image_processor_name != config.vision_model:
            kept = ("size", "crop_size", "image_mean", "image_std", "rescale_factor", "do_resize", "do_center_crop", "do_normalize")
            mine, model = (load_image_processor(name).to_dict() for name in (self.image_processor_name, config.vision_model))
            if any(mine.get(key) != model.get(key) for key in kept):
                return (f"the data module's image processor {self.image_processor_name!r} is not the model's "
                        f"({config.vision_model!r}): give it image_processor={config.vision_model!r}")
        layer = getattr(self, "vision_feature_layer", None)
        if getattr(self, "cache_image_features", False) and layer != config.vision_feature_layer:
            return (f"the data module caches the vision tower's layer {layer} and the model reads layer "
                    f"{config.vision_feature_layer} (predict and the API take the model's): give it "
                    f"vision_feature_layer={config.vision_feature_layer}")
        return None

    def _worker_init(self):
        end_workers_at_exit()
        return functools.partial(worker_init, rank=self.trainer.global_rank if self.trainer is not None else 0)

    def evaluation_sampler(self, dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        """Each process's share of an evaluation split, every sample once. Lightning's own sampler repeats
        samples to give every process as many: a split that does not divide evenly had some scored twice
        (8 images in the results of 7, one id twice in the predictions, an answer's exact match counted
        twice). A split smaller than the processes keeps Lightning's, so that none is left without a batch: the
        module scores each image or question once (by its id) all the same."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1 or len(dataset) < trainer.world_size:
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)

    def generation_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        """Batches of left-padded prompts, as generation needs them, in the dataset's order."""
        return DataLoader(dataset, batch_size=batch_size, sampler=self.evaluation_sampler(dataset), num_workers=self.num_workers,
                          collate_fn=functools.partial(collate, pad_token_id=self.tokenizer.pad_token_id, padding_side="left"),
                          worker_init_fn=self._worker_init(), generator=loader_generator())


class PreprocessedDataModule(BackbonesDataModule):
    """Training data: preprocessing on one process (``prepare_data``), memory-mapped datasets on
    every process, padded batches. Subclasses say where a split comes from and how it is written.

    Args:
        cache_dir: where preprocessed splits go (default: beside the data, in ``preprocessed/``).
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size per device (default ``batch_size``).
        group_by_length: batch training samples of similar length together (less padding); the
            order is still shuffled every epoch.
        length_group_batches: with ``group_by_length``, how many optimizer steps' batches are sorted by length together
            (mega-batches): more pads less and mixes less.
        cache_image_features: run the frozen vision tower once per image at preprocessing and train
            on its stored float16 outputs.
        vision_feature_layer: the vision tower's hidden state(s) the feature cache holds (linked to
            ``model.config.vision_feature_layer`` by the CLI).
        resize_images: store images larger than the image processor's input shrunk to it (shorter
            side, bicubic, JPEG quality 95) instead of as they are: the model sees the same, the
            preprocessed split is several times smaller.
        on_bad_record: ``error`` stops at the first bad record with its name; ``skip`` skips and counts them.
    """

    def __init__(
        self,
        cache_dir: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        group_by_length: bool = True,
        length_group_batches: int = DEFAULT_MEGA_BATCH,
        cache_image_features: bool = False,
        vision_feature_layer: int | list[int] = -1,
        resize_images: bool = True,
        on_bad_record: OnBadRecord = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size), ("length_group_batches", length_group_batches)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {value}")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.group_by_length, self.length_group_batches = group_by_length, length_group_batches
        self.cache_image_features = cache_image_features
        self.vision_feature_layer, self.resize_images, self.on_bad_record = vision_feature_layer, resize_images, on_bad_record
        self.cache_dir_setting = cache_dir
        self.datasets: dict[str, ImageTextDataset] = {}
        self.folders: dict[str, Path] = {}  # the preprocessed folder of each split set up
        self._looked_at: dict[tuple, Any] = {}  # what this prepare_data found of the inputs (see looked_at)
        self.resume_skip: tuple[int, int] | None = None  # (samples, epoch): a resume with other batches (see rebatch)

    # what a subclass provides

    text_table = ""  # the split's table of text rows, beside its "images"
    training_stage = ""  # "caption" or "instruct": checkpoints record it, and resuming checks it

    @property
    def default_cache_dir(self) -> Path:
        raise NotImplementedError

    def stage_splits(self) -> dict[str, str]:
        """Split name for each of train, val and test (test may be the val split)."""
        raise NotImplementedError

    def split_inputs(self, split: str) -> dict:
        """What determines the content of a preprocessed split, besides tokenizer and settings."""
        raise NotImplementedError

    def write_split(self, split: str, folder: Path) -> Path:
        raise NotImplementedError

    layout_hint = ""  # what a missing input's message adds about where inputs go

    def input_paths(self, split: str) -> list[tuple[Path, str]]:
        """The files and folders ``split`` is read from, each with what it is."""
        return []

    def check_inputs(self, stage: str = "fit") -> None:
        """Refuse, in the first seconds of a run, an input of the splits ``stage`` reads that does not
        exist (an annotation file, an image folder, a conversation file), before anything loads."""
        wanted = STAGE_SPLITS.get(stage, [])
        splits = self.stage_splits()
        for split in dict.fromkeys(splits[name] for name in wanted):
            for path, what in self.input_paths(split):
                if not path.exists():
                    raise DataError(f"{what} not found: {path}{self.layout_hint}")

    def make_dataset(self, folder: Path) -> ImageTextDataset:
        raise NotImplementedError

    # shared

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache_dir_setting) if self.cache_dir_setting else self.default_cache_dir

    def preprocess_settings(self) -> dict:
        return {"on_bad_record": self.on_bad_record, "image_size": self.stored_image_size()}

    def stored_image_size(self) -> int | None:
        """Shorter side images are stored at: the image processor's resize target (``resize_images``)."""
        return processor_side(self.image_processor) if self.resize_images else None

    def split_folder(self, split: str) -> Path:
        """The preprocessed folder of ``split``; its name changes whenever its inputs do."""
        def look() -> Path:
            key = fingerprint(
                version=PREPROCESSING_VERSION,
                inputs=self.split_inputs(split),
                tokenizer=tokenizer_signature(self.tokenizer),
                settings=self.preprocess_settings(),
            )
            return self.cache_dir / f"{split}-{key}"

        return self.looked_at(("split", split), look)

    def looked_at(self, key: tuple, look: Callable[[], Any]) -> Any:
        """``look()`` once per :meth:`prepare_data` (or once in a process that only sets up): a split's folder is
        asked for by the build lock, the build, ``setup`` and ``prepare``'s summary, and an image folder by both
        splits that read it. Each look walks and stats every image (118k of COCO's: 5-10 s, far more on a
        network disk)."""
        if key not in self._looked_at:
            self._looked_at[key] = look()
        return self._looked_at[key]

    def signed_folder(self, folder: Path) -> dict:
        return self.looked_at(("folder", folder), lambda: folder_signature(folder, self.cache_dir))

    def features_folder(self, split_folder: Path) -> Path:
        return features.features_folder(split_folder, self.image_processor_name, self.vision_feature_layer)

    def prepare_data(self, only: list[str] | None = None) -> None:
        """Preprocess the splits the running command reads (every split outside a trainer, as ``mmcaption
        prepare`` asks; ``only`` these) that are not already on disk - Lightning runs this on one process per node - and
        with ``cache_image_features`` compute the vision features of their images. ``test`` on Karpathy's test
        split preprocessed his 113,287 training images first."""
        self._looked_at.clear()  # the inputs as they are now, not as an earlier prepare_data of this module found them
        splits = self.stage_splits()
        command = getattr(getattr(getattr(self.trainer, "state", None), "fn", None), "value", None)
        for split in only or dict.fromkeys(splits[name] for name in STAGE_SPLITS.get(command, list(splits))):
            with built_once(self.split_folder(split), f"preprocessing split {split}"):
                folder = self.preprocess(split)
                if self.cache_image_features:
                    features.write_image_features(folder, self.image_processor_name, self.vision_feature_layer)

    def preprocess(self, split: str) -> Path:
        """The preprocessed folder of ``split``, written unless a whole one is there. A damaged one (files missing or
        truncated) is rebuilt with a note; reusing one built with records skipped says so again; others of the split say so."""
        folder = self.split_folder(split)
        if is_complete(folder):
            problem = damage(folder, {"images": "images", self.text_table: "rows"})
            if problem is None:
                skipped = json.loads((folder / "meta.json").read_text()).get("skipped") or {}
                if skipped:
                    rank_zero_warn(f"reusing {folder}, built with {sum(skipped.values())} bad records skipped: {skipped}")
                return folder
            rank_zero_warn(f"the preprocessed split {folder} is damaged ({problem}); rebuilding it")
        try:  # a read-only dataset folder (a shared mount) holds the default cache: said now, not as a traceback
            check_writable(folder.parent, f"the preprocessed split {split}")
        except NotWritableError as error:
            raise NotWritableError(f"{error}; set data.init_args.cache_dir to a folder you can write (the default is "
                                   "beside the data)") from None
        if is_complete(folder):  # damaged: out of the way at once (removed in place, a kill left it half there for good),
            discard(features.set_features_aside(folder))  # its feature caches kept for the rebuilt split
        remove_orphaned_builds(folder)
        rank_zero_info(f"preprocessing split {split} into {folder} (once; later runs reuse it) ...")
        start = time.perf_counter()
        written = features.put_features_back(self.write_split(split, folder))
        rank_zero_info(f"preprocessing split {split}: done in {time.perf_counter() - start:.0f} s")
        say_other_split_caches(written)
        return written

    def setup(self, stage: str) -> None:
        splits = self.stage_splits()
        for split in (splits[name] for name in STAGE_SPLITS.get(stage, [])):
            if split not in self.datasets:
                folder = self.split_folder(split)
                if not is_complete(folder):
                    raise DataError(f"split {split!r} is not preprocessed in {self.cache_dir}: run prepare_data() first")
                self.datasets[split] = self.make_dataset(folder)
                self.folders[split] = folder
                self.say_cut(split, self.datasets[split])
                if self.cache_image_features:
                    cached = self.features_folder(folder)
                    if not is_complete(cached):
                        raise DataError(f"image features of split {split!r} are not cached in {folder}: run prepare_data() first")
                    self.datasets[split].features = features.load_image_features(cached)
        if stage == "fit":  # validation on images trained on: said
            say_shared_images(self, getattr(self, "train_file", None), getattr(self, "val_file", None))

    def say_cut(self, split: str, dataset: ImageTextDataset) -> None:
        """Warn of the samples ``max_length`` cuts, when it cuts them as the data is read (not when it is preprocessed)."""

    def training_data(self) -> dict[str, Any]:
        """What a checkpoint must be resumed with: the stage, the preprocessed training split (its name
        changes with its content), its size, and what orders and cuts it into batches. A checkpoint's
        loader position means something only with all of them unchanged."""
        split = self.stage_splits()["train"]
        trainer = self.trainer
        return {
            "stage": self.training_stage,
            "preprocessing": PREPROCESSING_VERSION,  # the split's name changes with it: said as the release's change
            "max_length": getattr(self, "max_length", None),  # named when it changed, not only as the split's new name
            "train_split": self.folders[split].name if split in self.folders else None,
            "samples": len(self.datasets[split]) if split in self.datasets else None,
            "batch_size": self.batch_size,
            "accumulate_grad_batches": trainer.accumulate_grad_batches if trainer is not None else 1,
            "devices": trainer.world_size if trainer is not None else 1,
            "group_by_length": self.group_by_length,
            "length_group_batches": self.length_group_batches if self.group_by_length else None,
            "seed": default_seed(),
            **({"captions": "read anew"} if getattr(self, "read_anew", {}).get(split) else {}),  # (see ResumableStop)
        }

    def same_training_data(self, earlier: str) -> bool:
        """Whether the training split a checkpoint was trained on (the folder ``earlier``, beside this run's) holds the same
        rows and images, their ids aside (nothing trains on them): preprocessed anew, it has the same batches; it resumes."""
        current, tables = self.folders.get(self.stage_splits()["train"]), {"images": "images", self.text_table: "rows"}
        if current is None or current.name == earlier or not is_complete(old := current.parent / earlier) or damage(old, tables):
            return False  # (a damaged one, files deleted to make room: refused, as before, not a traceback)
        pairs = [[load_table(folder / t).data.table for folder in (old, current)] for t in ("images", self.text_table)]
        return all(a.drop_columns(list({"image_id"} & set(a.column_names))).equals(b.drop_columns(list({"image_id"} & set(b.column_names)))) for a, b in pairs)

    def _loader_settings(self) -> dict[str, Any]:
        """What every loader of a split shares: workers, pinning, per-batch padding."""
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "collate_fn": functools.partial(collate, pad_token_id=self.tokenizer.pad_token_id),
            "worker_init_fn": self._worker_init(),
        }

    def _loader(self, stage: str) -> DataLoader:
        dataset = self.datasets[self.stage_splits()[stage]]
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=self.evaluation_sampler(dataset),
                          generator=loader_generator(), **self._loader_settings())

    def train_dataloader(self) -> StatefulDataLoader:
        """Shuffled per epoch from the run's seed, grouped by length (``group_by_length``), each DDP
        rank taking its share of every global batch (the sampler shards itself), and resumable
        mid-epoch (Lightning checkpoints the loader's position)."""
        dataset = self.datasets[self.stage_splits()["train"]]
        trainer = self.trainer
        sampler = LengthGroupedSampler(
            dataset.lengths(), self.batch_size,
            num_replicas=trainer.world_size if trainer is not None else 1, rank=trainer.global_rank if trainer is not None else 0,
            seed=default_seed(), group_by_length=self.group_by_length, mega_batch=self.length_group_batches,
            accumulate=trainer.accumulate_grad_batches if trainer is not None else 1,
            **(dict(zip(("skip", "skip_epoch"), self.resume_skip)) if self.resume_skip else {}),
        )
        return StatefulDataLoader(dataset, batch_size=self.batch_size, sampler=sampler, generator=loader_generator(), **self._loader_settings())

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

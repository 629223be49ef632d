"""LightningDataModules over the preprocessed, memory-mapped splits."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Literal

import datasets
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

from mmcaption.data.cache import file_signature, fingerprint, is_complete
from mmcaption.data.coco import coco_records, hub_records, require_annotation_file, write_caption_split
from mmcaption.data.collate import caption_sample, collate
from mmcaption.data.records import BadRecords, DataError, OnBadRecord, load_rgb

PREPROCESSING_VERSION = 1


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The language model's tokenizer; like Phi-2's, it may have no pad token (padding is masked)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_signature(tokenizer: PreTrainedTokenizerBase) -> str:
    vocabulary = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(vocabulary.encode()).hexdigest()[:16]


class CaptionDataset(Dataset):
    """Captions of one preprocessed split; an item is one caption with its image's pixels."""

    def __init__(
        self,
        folder: Path,
        image_processor,
        tokenizer: PreTrainedTokenizerBase,
        prompt: str = "",
        max_length: int = 64,
    ) -> None:
        self.folder = folder
        self.images = datasets.load_from_disk(str(folder / "images"))
        self.captions = datasets.load_from_disk(str(folder / "captions"))
        self.image_processor = image_processor
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.captions[index]
        image = load_rgb(self.images[row["image_index"]]["image"])
        input_ids, labels = caption_sample(row["token_ids"], self.bos_id, self.eos_id, self.prompt_ids, self.max_length)
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values}


class CaptionDataModule(LightningDataModule):
    """COCO Captions 2017 (or any set in its layout), preprocessed once and memory-mapped.

    Args:
        data_dir: the COCO root: ``annotations/captions_<split>.json`` and ``<split>/`` image folders.
        source: ``coco`` for that official layout; ``hub`` for a ``datasets`` dataset with ``jpg`` and
            newline-separated ``txt`` columns (``hub_dataset``).
        hub_dataset: hub id or local folder of the ``hub`` source.
        train_split: split used by ``fit``.
        val_split: split used by validation (and by ``test`` when ``test_split`` is not set).
        test_split: split used by ``test``.
        cache_dir: where preprocessed splits go (default ``<data_dir>/preprocessed``).
        tokenizer: the language model's tokenizer (linked to ``model.language_model`` by the CLI).
        image_processor: the vision tower's image processor (linked to ``model.vision_model``).
        caption_prompt: text between ``<bos>`` and the caption, not supervised (empty: none).
        max_length: longest sequence in tokens, prompt and special tokens included; longer captions are cut.
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size per device (default ``batch_size``).
        num_workers: data loader worker processes.
        on_bad_record: ``error`` stops at the first bad record with its name; ``skip`` skips and counts them.
    """

    def __init__(
        self,
        data_dir: str = "data/coco",
        source: Literal["coco", "hub"] = "coco",
        hub_dataset: str | None = None,
        train_split: str = "train2017",
        val_split: str = "val2017",
        test_split: str | None = None,
        cache_dir: str | None = None,
        tokenizer: str = "microsoft/phi-2",
        image_processor: str = "openai/clip-vit-base-patch32",
        caption_prompt: str = "",
        max_length: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        on_bad_record: OnBadRecord = "error",
    ) -> None:
        super().__init__()
        if source == "hub" and not hub_dataset:
            raise ValueError("source: hub needs hub_dataset (a hub id or a local dataset folder)")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "preprocessed"
        self.datasets: dict[str, CaptionDataset] = {}

    @functools.cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.hparams.tokenizer)

    @functools.cached_property
    def image_processor(self):
        return AutoImageProcessor.from_pretrained(self.hparams.image_processor)

    def split_folder(self, split: str) -> Path:
        """The preprocessed folder of ``split``; its name changes whenever its inputs do."""
        if self.hparams.source == "coco":
            annotation_file = self.annotation_file(split)
            require_annotation_file(annotation_file)
            inputs = {"annotations": file_signature(annotation_file), "images": str((self.data_dir / split).resolve())}
        else:
            inputs = {"hub_dataset": self.hparams.hub_dataset, "split": split}
        key = fingerprint(
            version=PREPROCESSING_VERSION,
            inputs=inputs,
            tokenizer=tokenizer_signature(self.tokenizer),
            on_bad_record=self.hparams.on_bad_record,
        )
        return self.cache_dir / f"{split}-{key}"

    def annotation_file(self, split: str) -> Path:
        return self.data_dir / "annotations" / f"captions_{split}.json"

    def splits(self) -> list[str]:
        names = [self.hparams.train_split, self.hparams.val_split, self.hparams.test_split]
        return [name for name in dict.fromkeys(names) if name]

    def prepare_data(self) -> None:
        """Preprocess every split that is not already on disk (Lightning runs this on one process)."""
        for split in self.splits():
            self.preprocess(split)

    def preprocess(self, split: str) -> Path:
        folder = self.split_folder(split)
        if is_complete(folder):
            return folder
        if self.hparams.source == "coco":
            annotation_file = self.annotation_file(split)
            records = BadRecords(annotation_file, self.hparams.on_bad_record)
            rows = coco_records(annotation_file, self.data_dir / split, records)
            source = {"source": "coco", "annotations": str(annotation_file), "images": str(self.data_dir / split)}
        else:
            name = f"{self.hparams.hub_dataset} [{split}]"
            records = BadRecords(name, self.hparams.on_bad_record)
            rows = hub_records(self._load_hub_split(split), name, records)
            source = {"source": "hub", "dataset": self.hparams.hub_dataset, "split": split}
        return write_caption_split(rows, self.tokenizer, folder, records, dict(source, tokenizer=self.hparams.tokenizer))

    def _load_hub_split(self, split: str) -> datasets.Dataset:
        path = Path(self.hparams.hub_dataset)
        if path.is_dir() and any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{path} has splits {list(loaded)}, not {split!r}")
                return loaded[split]
            return loaded
        return datasets.load_dataset(self.hparams.hub_dataset, split=split)

    def setup(self, stage: str) -> None:
        wanted = {
            "fit": [self.hparams.train_split, self.hparams.val_split],
            "validate": [self.hparams.val_split],
            "test": [self.hparams.test_split or self.hparams.val_split],
        }.get(stage, [])
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split)

    def _dataset(self, split: str) -> CaptionDataset:
        folder = self.split_folder(split)
        if not is_complete(folder):
            raise DataError(f"split {split!r} is not preprocessed in {self.cache_dir}: run prepare_data() first")
        return CaptionDataset(
            folder, self.image_processor, self.tokenizer, self.hparams.caption_prompt, self.hparams.max_length
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        batch_size = self.hparams.batch_size if shuffle else (self.hparams.eval_batch_size or self.hparams.batch_size)
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=functools.partial(collate, pad_token_id=self.tokenizer.pad_token_id),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_split, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split or self.hparams.val_split, shuffle=False)

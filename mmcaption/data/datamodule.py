"""LightningDataModules over preprocessed, memory-mapped splits: COCO captions and LLaVA instruct."""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

from mmcaption.data.cache import file_signature, fingerprint, is_complete
from mmcaption.data.coco import coco_records, hub_records, require_annotation_file, write_caption_split
from mmcaption.data.collate import IGNORE_INDEX, bos_token_id, caption_prompt_ids, caption_sample, collate
from mmcaption.data.features import features_folder, load_image_features, write_image_features
from mmcaption.data.llava import read_llava, write_instruct_split
from mmcaption.data.records import BadRecords, DataError, OnBadRecord, load_rgb
from mmcaption.data.sampling import LengthGroupedSampler, default_seed
from mmcaption.data.templates import DEFAULT_SYSTEM, ConversationTemplate

PREPROCESSING_VERSION = 3

# torchdata 0.11 calls a deprecated torch function at every epoch; nothing a user can act on
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The language model's tokenizer; like Phi-2's, it may have no pad token (padding is masked)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_signature(tokenizer: PreTrainedTokenizerBase) -> str:
    vocabulary = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(vocabulary.encode()).hexdigest()[:16]


class ImageTextDataset(Dataset):
    """Rows of one preprocessed split with their image's pixels; subclasses say how a row becomes tokens."""

    table = ""

    def __init__(self, folder: Path, image_processor) -> None:
        self.folder = folder
        self.images = datasets.load_from_disk(str(folder / "images"))
        self.rows = datasets.load_from_disk(str(folder / self.table))
        self.image_processor = image_processor
        self.features: datasets.Dataset | None = None  # cached vision features, one row per image

    def __len__(self) -> int:
        return len(self.rows)

    def tokens(self, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def lengths(self) -> np.ndarray:
        """Every item's sequence length in tokens, read from the Arrow column without decoding rows."""
        raise NotImplementedError

    def _column_lengths(self, column: str) -> np.ndarray:
        return pc.list_value_length(self.rows.data.column(column)).to_numpy(zero_copy_only=False).astype(np.int64)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch's samples at once (the DataLoader's batched fetch): one Arrow read for the rows, one
        for the cached features or the images, one image-processor call."""
        rows = self.rows[indices]
        image_index = rows["image_index"]
        if self.features is not None:
            images = {"vision_features": self.features[image_index]["features"]}
        else:
            pictures = [load_rgb(data) for data in self.images[image_index]["image"]]
            images = {"pixel_values": self.image_processor(images=pictures, return_tensors="pt")["pixel_values"]}
        samples = []
        for i in range(len(indices)):
            input_ids, labels = self.tokens({key: column[i] for key, column in rows.items()})
            samples.append({"input_ids": input_ids, "labels": labels, **{key: value[i] for key, value in images.items()}})
        return samples


class CaptionDataset(ImageTextDataset):
    """One item per caption: ``<bos> prompt caption <eos>``, the caption and its end supervised."""

    table = "captions"

    def __init__(self, folder: Path, image_processor, tokenizer: PreTrainedTokenizerBase, prompt: str = "", max_length: int = 64) -> None:
        super().__init__(folder, image_processor)
        self.bos_id = bos_token_id(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        self.max_length = max_length

    def tokens(self, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return caption_sample(row["token_ids"], self.bos_id, self.eos_id, self.prompt_ids, self.max_length)

    def lengths(self) -> np.ndarray:
        fixed = 2 + len(self.prompt_ids)  # <bos>, prompt, <eos>
        return np.minimum(self._column_lengths("token_ids"), self.max_length - fixed) + fixed


class CaptionImagesDataset(Dataset):
    """One item per image of a preprocessed caption split: pixels, a prompt to caption from, the
    reference captions, and a small uint8 copy of the image for TensorBoard."""

    def __init__(self, folder: Path, image_processor, tokenizer: PreTrainedTokenizerBase, prompt: str = "", limit: int | None = None) -> None:
        self.folder = folder
        self.images = datasets.load_from_disk(str(folder / "images"))
        captions = datasets.load_from_disk(str(folder / "captions")).with_format("arrow")
        image_index = captions["image_index"].to_numpy()
        texts = captions["caption"].to_pylist()
        self.references: list[list[str]] = [[] for _ in range(len(self.images))]
        for index, text in zip(image_index, texts):
            self.references[index].append(text)
        self.count = len(self.images) if limit is None else min(limit, len(self.images))
        self.image_processor = image_processor
        self.prompt_ids = torch.tensor(caption_prompt_ids(tokenizer, prompt))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        row = self.images[index]
        image = load_rgb(row["image"])
        return {
            "task": "caption",
            "input_ids": self.prompt_ids,
            "pixel_values": self.image_processor(images=image, return_tensors="pt")["pixel_values"][0],
            "references": self.references[index],
            "image_id": str(row.get("image_id", row["file_name"])),
            "display": torch.from_numpy(np.array(image.resize((96, 96)))).permute(2, 0, 1).contiguous(),
        }


class QuestionsDataset(Dataset):
    """One item per kept turn of a preprocessed conversation split, asked alone: its image, the
    template's prompt for the question, and the reference answer (for exact-match scoring)."""

    def __init__(self, folder: Path, image_processor, tokenizer: PreTrainedTokenizerBase, template: ConversationTemplate, limit: int | None = None) -> None:
        self.folder = folder
        self.images = datasets.load_from_disk(str(folder / "images"))
        rows = datasets.load_from_disk(str(folder / "conversations")).select_columns(["image_index", "id", "questions", "answers"])
        self.items = [
            (row["image_index"], row["id"], question, answer)
            for row in rows
            for question, answer in zip(row["questions"], row["answers"])
        ][:limit]
        self.image_processor = image_processor
        self.prompts = [template.prompt(question, tokenizer) for _, _, question, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image_index, record_id, question, answer = self.items[index]
        image = load_rgb(self.images[image_index]["image"])
        return {
            "task": "answer",
            "input_ids": torch.tensor(self.prompts[index]),
            "pixel_values": self.image_processor(images=image, return_tensors="pt")["pixel_values"][0],
            "id": record_id,
            "question": question,
            "answer": answer,
        }


class ConversationDataset(ImageTextDataset):
    """One item per conversation, tokenized and masked at preprocessing (``templates.py``)."""

    table = "conversations"

    def tokens(self, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(row["input_ids"]), torch.tensor(row["labels"])

    def lengths(self) -> np.ndarray:
        return self._column_lengths("input_ids")


class BackboneProcessors:
    """The tokenizer and image processor named by a data module's ``tokenizer`` and
    ``image_processor`` hyper-parameters (the CLI links them to the model's backbones)."""

    hparams: Any

    @functools.cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.hparams.tokenizer)

    @functools.cached_property
    def image_processor(self):
        return AutoImageProcessor.from_pretrained(self.hparams.image_processor)

    def generation_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        """Batches of left-padded prompts, as generation needs them, in the dataset's order."""
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=functools.partial(collate, pad_token_id=self.tokenizer.pad_token_id, padding_side="left"),
        )


class ImageTextDataModule(BackboneProcessors, LightningDataModule):
    """What the caption and instruct data modules share: tokenizer, image processor, preprocessing
    on one process (``prepare_data``), memory-mapped datasets on every process, padded batches."""

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, ImageTextDataset] = {}

    @property
    def cache_dir(self) -> Path:
        raise NotImplementedError

    def split_inputs(self, split: str) -> dict:
        """What determines the content of a preprocessed split, besides tokenizer and settings."""
        raise NotImplementedError

    def preprocess_settings(self) -> dict:
        return {"on_bad_record": self.hparams.on_bad_record, "image_size": self.stored_image_size()}

    def stored_image_size(self) -> int | None:
        """Shorter side images are stored at: the image processor's resize target (``resize_images``)."""
        if not self.hparams.resize_images:
            return None
        size = getattr(self.image_processor, "size", None) or {}
        side = size.get("shortest_edge") or min(size.get("height", 0), size.get("width", 0))
        return int(side) or None

    def write_split(self, split: str, folder: Path) -> Path:
        raise NotImplementedError

    def make_dataset(self, folder: Path) -> ImageTextDataset:
        raise NotImplementedError

    def stage_splits(self) -> dict[str, str]:
        """Split name for each of train, val and test (test may be the val split)."""
        raise NotImplementedError

    def split_folder(self, split: str) -> Path:
        """The preprocessed folder of ``split``; its name changes whenever its inputs do."""
        key = fingerprint(
            version=PREPROCESSING_VERSION,
            inputs=self.split_inputs(split),
            tokenizer=tokenizer_signature(self.tokenizer),
            settings=self.preprocess_settings(),
        )
        return self.cache_dir / f"{split}-{key}"

    def prepare_data(self) -> None:
        """Preprocess every split that is not already on disk (Lightning runs this on one process per
        node), and with ``cache_image_features`` compute the vision features of their images."""
        for split in dict.fromkeys(self.stage_splits().values()):
            folder = self.preprocess(split)
            if self.hparams.cache_image_features:
                write_image_features(folder, *self.vision_feature_settings())

    def vision_feature_settings(self) -> tuple[str, int | list[int]]:
        """(vision model, feature layer) of the model being trained, which the feature cache must match."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        settings = getattr(module, "vision_feature_settings", None)
        if settings is None:
            raise DataError("cache_image_features needs the data module attached to a Trainer with an mmcaption model")
        return settings()

    def preprocess(self, split: str) -> Path:
        folder = self.split_folder(split)
        return folder if is_complete(folder) else self.write_split(split, folder)

    def setup(self, stage: str) -> None:
        splits = self.stage_splits()
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(stage, [])
        for split in (splits[name] for name in wanted):
            if split not in self.datasets:
                folder = self.split_folder(split)
                if not is_complete(folder):
                    raise DataError(f"split {split!r} is not preprocessed in {self.cache_dir}: run prepare_data() first")
                self.datasets[split] = self.make_dataset(folder)
                if self.hparams.cache_image_features:
                    cached = features_folder(folder, *self.vision_feature_settings())
                    if not is_complete(cached):
                        raise DataError(f"image features of split {split!r} are not cached in {folder}: run prepare_data() first")
                    self.datasets[split].features = load_image_features(cached)

    def _loader_settings(self) -> dict[str, Any]:
        """What every loader of a split shares: workers, pinning, per-batch padding."""
        return {
            "num_workers": self.hparams.num_workers,
            "persistent_workers": self.hparams.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "collate_fn": functools.partial(collate, pad_token_id=self.tokenizer.pad_token_id),
        }

    def _loader(self, stage: str) -> DataLoader:
        batch_size = self.hparams.eval_batch_size or self.hparams.batch_size
        return DataLoader(self.datasets[self.stage_splits()[stage]], batch_size=batch_size, **self._loader_settings())

    def train_dataloader(self) -> StatefulDataLoader:
        """Shuffled per epoch from the run's seed, grouped by length (``group_by_length``), each DDP
        rank taking its share of every global batch (the sampler shards itself), and resumable
        mid-epoch (Lightning checkpoints the loader's position)."""
        dataset = self.datasets[self.stage_splits()["train"]]
        trainer = self.trainer
        sampler = LengthGroupedSampler(
            dataset.lengths(), self.hparams.batch_size,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=default_seed(), group_by_length=self.hparams.group_by_length,
        )
        return StatefulDataLoader(dataset, batch_size=self.hparams.batch_size, sampler=sampler, **self._loader_settings())

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class CaptionDataModule(ImageTextDataModule):
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
        val_caption_images: how many val images to caption at each validation for CIDEr, BLEU-4,
            METEOR, ROUGE-L (0: none, null: all).
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size per device (default ``batch_size``).
        num_workers: data loader worker processes.
        group_by_length: batch training samples of similar length together (less padding); the
            order is still shuffled every epoch.
        cache_image_features: run the frozen vision tower once per image at preprocessing and train
            on its stored float16 outputs (the model's ``vision_model`` and ``vision_feature_layer``).
        resize_images: store images larger than the image processor's input shrunk to it (shorter
            side, bicubic, JPEG quality 95) instead of as they are: the model sees the same, the
            preprocessed split is several times smaller.
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
        val_caption_images: int | None = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        group_by_length: bool = True,
        cache_image_features: bool = False,
        resize_images: bool = True,
        on_bad_record: OnBadRecord = "error",
    ) -> None:
        super().__init__()
        if source == "hub" and not hub_dataset:
            raise ValueError("source: hub needs hub_dataset (a hub id or a local dataset folder)")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)

    @property
    def cache_dir(self) -> Path:
        return Path(self.hparams.cache_dir) if self.hparams.cache_dir else self.data_dir / "preprocessed"

    def stage_splits(self) -> dict[str, str]:
        h = self.hparams
        return {"train": h.train_split, "val": h.val_split, "test": h.test_split or h.val_split}

    def annotation_file(self, split: str) -> Path:
        return self.data_dir / "annotations" / f"captions_{split}.json"

    def split_inputs(self, split: str) -> dict:
        if self.hparams.source == "hub":
            return {"hub_dataset": self.hparams.hub_dataset, "split": split}
        annotation_file = self.annotation_file(split)
        require_annotation_file(annotation_file)
        return {"annotations": file_signature(annotation_file), "images": str((self.data_dir / split).resolve())}

    def write_split(self, split: str, folder: Path) -> Path:
        if self.hparams.source == "coco":
            annotation_file = self.annotation_file(split)
            records = BadRecords(annotation_file, self.hparams.on_bad_record)
            entries = coco_records(annotation_file, self.data_dir / split, records)
            source = {"source": "coco", "annotations": str(annotation_file), "images": str(self.data_dir / split)}
        else:
            name = f"{self.hparams.hub_dataset} [{split}]"
            records = BadRecords(name, self.hparams.on_bad_record)
            entries = hub_records(self._load_hub_split(split), name, records)
            source = {"source": "hub", "dataset": self.hparams.hub_dataset, "split": split}
        return write_caption_split(entries, self.tokenizer, folder, records, dict(source, tokenizer=self.hparams.tokenizer),
                                   self.stored_image_size())

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

    def make_dataset(self, folder: Path) -> CaptionDataset:
        return CaptionDataset(
            folder, self.image_processor, self.tokenizer, self.hparams.caption_prompt, self.hparams.max_length
        )

    def caption_images_loader(self, split: str, limit: int | None) -> DataLoader:
        """Images of ``split`` with their references, left-padded prompts for generation."""
        dataset = CaptionImagesDataset(
            self.datasets[split].folder, self.image_processor, self.tokenizer, self.hparams.caption_prompt, limit
        )
        return self.generation_loader(dataset, self.hparams.eval_batch_size or self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The val captions for the loss; with ``val_caption_images``, also val images to caption."""
        loss_loader = self._loader("val")
        if self.hparams.val_caption_images == 0:
            return loss_loader
        return [loss_loader, self.caption_images_loader(self.hparams.val_split, self.hparams.val_caption_images)]


class InstructDataModule(ImageTextDataModule):
    """LLaVA-Instruct conversations (one sequence each, loss on every assistant turn), preprocessed once.

    Args:
        train_file: LLaVA JSON of the training conversations.
        val_file: LLaVA JSON of validation conversations; if null, ``val_fraction`` of ``train_file``
            is held out by a stable hash of the record id.
        val_fraction: share of ``train_file`` held out for validation when ``val_file`` is null.
        image_root: folder that the records' ``image`` paths are relative to (COCO ``train2017/``).
        cache_dir: where preprocessed splits go (default: beside ``train_file``, in ``preprocessed/``).
        tokenizer: the language model's tokenizer (linked to ``model.language_model`` by the CLI).
        image_processor: the vision tower's image processor (linked to ``model.vision_model``).
        system_prompt: first line of every conversation (empty: none).
        max_length: longest sequence in tokens; later whole turns are dropped to fit, and counted.
        val_answer_questions: how many val questions to answer (each asked alone) at each validation
            for ``val/answer_exact_match`` (0: none, null: all).
        batch_size: training batch size per device.
        eval_batch_size: validation batch size per device (default ``batch_size``).
        num_workers: data loader worker processes.
        group_by_length: batch training samples of similar length together (less padding); the
            order is still shuffled every epoch.
        cache_image_features: run the frozen vision tower once per image at preprocessing and train
            on its stored float16 outputs (the model's ``vision_model`` and ``vision_feature_layer``).
        resize_images: store images larger than the image processor's input shrunk to it (shorter
            side, bicubic, JPEG quality 95) instead of as they are: the model sees the same, the
            preprocessed split is several times smaller.
        on_bad_record: ``error`` stops at the first bad record with its name; ``skip`` skips and counts them.
    """

    def __init__(
        self,
        train_file: str = "data/llava/llava_instruct_150k.json",
        val_file: str | None = None,
        val_fraction: float = 0.01,
        image_root: str = "data/coco/train2017",
        cache_dir: str | None = None,
        tokenizer: str = "microsoft/phi-2",
        image_processor: str = "openai/clip-vit-base-patch32",
        system_prompt: str = DEFAULT_SYSTEM,
        max_length: int = 512,
        val_answer_questions: int | None = 0,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        group_by_length: bool = True,
        cache_image_features: bool = False,
        resize_images: bool = True,
        on_bad_record: OnBadRecord = "error",
    ) -> None:
        super().__init__()
        if val_file is None and not 0 < val_fraction < 1:
            raise ValueError("without val_file, val_fraction must be between 0 and 1")
        self.save_hyperparameters()
        self.template = ConversationTemplate(system=system_prompt)

    @property
    def cache_dir(self) -> Path:
        return Path(self.hparams.cache_dir) if self.hparams.cache_dir else Path(self.hparams.train_file).parent / "preprocessed"

    def stage_splits(self) -> dict[str, str]:
        return {"train": "train", "val": "val", "test": "val"}

    def _source(self, split: str) -> tuple[Path, str | None]:
        """The file a split is read from, and the hash-split side of it (None: the whole file)."""
        if self.hparams.val_file is not None:
            return Path(self.hparams.train_file if split == "train" else self.hparams.val_file), None
        return Path(self.hparams.train_file), split

    def split_inputs(self, split: str) -> dict:
        file, side = self._source(split)
        if not file.is_file():
            raise DataError(f"LLaVA conversation file not found: {file}")
        return {"file": file_signature(file), "side": side, "images": str(Path(self.hparams.image_root).resolve())}

    def preprocess_settings(self) -> dict:
        h = self.hparams
        return {"on_bad_record": h.on_bad_record, "image_size": self.stored_image_size(),
                "template": repr(self.template), "max_length": h.max_length,
                "val_fraction": h.val_fraction if h.val_file is None else None}

    def write_split(self, split: str, folder: Path) -> Path:
        file, side = self._source(split)
        image_root = Path(self.hparams.image_root)
        records = BadRecords(file, self.hparams.on_bad_record)
        conversations = read_llava(file, image_root, records, split=side, val_fraction=self.hparams.val_fraction)
        metadata = {"source": "llava", "file": str(file), "side": side, "image_root": str(image_root),
                    "tokenizer": self.hparams.tokenizer, "template": repr(self.template)}
        return write_instruct_split(
            conversations, image_root, self.tokenizer, self.template, self.hparams.max_length, folder, records, metadata,
            self.stored_image_size(),
        )

    def make_dataset(self, folder: Path) -> ConversationDataset:
        dataset = ConversationDataset(folder, self.image_processor)
        check_supervision(dataset)
        return dataset

    def questions_loader(self, split: str, limit: int | None) -> DataLoader:
        """Val questions asked one at a time, left-padded prompts for generation."""
        dataset = QuestionsDataset(self.datasets[split].folder, self.image_processor, self.tokenizer, self.template, limit)
        return self.generation_loader(dataset, self.hparams.eval_batch_size or self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The val conversations for the loss; with ``val_answer_questions``, also questions to answer."""
        loss_loader = self._loader("val")
        if self.hparams.val_answer_questions == 0:
            return loss_loader
        return [loss_loader, self.questions_loader("val", self.hparams.val_answer_questions)]


def check_supervision(dataset: ConversationDataset) -> None:
    """Fail at start, naming the record, if any conversation would train on nothing."""
    labels = dataset.rows.data.column("labels").combine_chunks()
    offsets = labels.offsets.to_numpy()
    supervised = np.add.reduceat(labels.flatten().to_numpy() != IGNORE_INDEX, offsets[:-1])
    empty = np.flatnonzero(supervised == 0)
    if len(empty):
        raise DataError(
            f"{dataset.folder}: {len(empty)} conversation(s) have no supervised token, e.g. id "
            f"{dataset.rows[int(empty[0])]['id']} (check the template and max_length)"
        )

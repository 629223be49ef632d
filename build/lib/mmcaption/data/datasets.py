"""The datasets a data module serves, over preprocessed, memory-mapped splits: training items
(captions, conversations) and evaluation items (images to caption, questions to answer)."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from mmcaption.collate import IGNORE_INDEX, caption_sample
from mmcaption.data.cache import load_table
from mmcaption.data.features import gather_features
from mmcaption.data.records import DataError
from mmcaption.images import blank_pixels, load_rgb
from mmcaption.prompts import ConversationTemplate, bos_token_id, caption_prompt_ids, text_ids


class ImageTextDataset(Dataset):
    """Rows of one preprocessed split with their image's pixels; subclasses say how a row becomes tokens."""

    table = ""

    def __init__(self, folder: Path, image_processor) -> None:
        self.folder = folder
        self.images = load_table(folder / "images")
        self.rows = load_table(folder / self.table)
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
        for the cached features or the images, one image-processor call. A text-only row (``image_index``
        -1) gets blank pixels or features and ``image_mask`` False: the model reads no image for it."""
        rows = self.rows[indices]
        image_index = rows["image_index"]
        present = [i for i, index in enumerate(image_index) if index >= 0]
        wanted = [image_index[i] for i in present]
        if self.features is not None:
            key = "vision_features"
            fetched = gather_features(self.features, wanted) if wanted else []
            blank = torch.zeros(self.features.features["features"].shape, dtype=torch.float16)
        else:
            key = "pixel_values"
            pictures = [load_rgb(data) for data in self.images[wanted]["image"]] if wanted else []
            fetched = self.image_processor(images=pictures, return_tensors="pt")["pixel_values"] if pictures else []
            blank = blank_pixels(self.image_processor) if len(present) < len(indices) else None  # only for text-only rows
        images = [blank] * len(indices)
        for position, value in zip(present, fetched):
            images[position] = value
        samples = []
        for i in range(len(indices)):
            input_ids, labels = self.tokens({name: column[i] for name, column in rows.items()})
            samples.append({"input_ids": input_ids, "labels": labels, key: images[i],
                            "image_mask": torch.tensor(image_index[i] >= 0)})
        return samples


class CaptionDataset(ImageTextDataset):
    """One item per caption: ``<bos> prompt caption <eos>``, the caption and its end supervised."""

    table = "captions"

    def __init__(self, folder: Path, image_processor, tokenizer: PreTrainedTokenizerBase, prompt: str = "", max_length: int = 64) -> None:
        super().__init__(folder, image_processor)
        self.bos_id = bos_token_id(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.prompt_ids = text_ids(tokenizer, prompt) if prompt else []
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
        self.images = load_table(folder / "images")
        captions = load_table(folder / "captions").with_format("arrow")
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
            "image_id": row["image_id"],  # COCO's integer id: a COCO results file needs it as it is
            "file_name": row["file_name"],  # the image as its user knows it (a table's photo by its path)
            "display": torch.from_numpy(np.array(image.resize((96, 96)))).permute(2, 0, 1).contiguous(),
        }


class QuestionsDataset(Dataset):
    """One item per kept turn of a preprocessed conversation split, asked alone: its image, the
    template's prompt for the question, and the reference answer (for exact-match scoring)."""

    def __init__(self, folder: Path, image_processor, tokenizer: PreTrainedTokenizerBase, template: ConversationTemplate, limit: int | None = None) -> None:
        self.folder = folder
        self.images = load_table(folder / "images")
        rows = load_table(folder / "conversations").select_columns(["image_index", "id", "questions", "answers"])
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
        if image_index >= 0:
            image = load_rgb(self.images[image_index]["image"])
            pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        else:  # a text-only conversation
            pixel_values = blank_pixels(self.image_processor)
        return {
            "task": "answer",
            "input_ids": torch.tensor(self.prompts[index]),
            "pixel_values": pixel_values,
            "image_mask": torch.tensor(image_index >= 0),
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

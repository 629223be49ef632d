"""The training data modules: COCO-style captions (stage 1) and LLaVA-style conversations (stage 2),
each preprocessed once into memory-mapped Arrow splits (see :class:`~mmcaption.data.base.PreprocessedDataModule`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from mmcaption.data import llava as conversation_files
from mmcaption.data.base import STAGE_SPLITS, PreprocessedDataModule
from mmcaption.data.cache import file_signature, files_signature
from mmcaption.data.caption_cells import read_otherwise_now_in
from mmcaption.data.caption_files import SplitFiles, check_split_settings, split_file
from mmcaption.data.coco import (
    ImageRecords,
    coco2014_folders,
    coco_image_folder,
    coco_records,
    coco_unsigned_images,
    misplaced_data_dir,
    read_karpathy,
    require_annotation_file,
    write_caption_split,
)
from mmcaption.data.conversation_fields import asks_questions, one_file_wanted, read_otherwise_now
from mmcaption.data.datasets import (
    CaptionDataset,
    CaptionImagesDataset,
    ConversationDataset,
    QuestionsDataset,
    check_supervision,
)
from mmcaption.data.hub import HubCaptions
from mmcaption.data.image_sources import COCO2017_FOLDERS, coco2014_download
from mmcaption.data.llava import llava_unsigned_images, read_llava, turn_counts, write_instruct_split
from mmcaption.data.records import BadRecords, DataError, NothingUsable
from mmcaption.data.stage_splits import EvaluationSplits
from mmcaption.data.tables import token_split_lists
from mmcaption.errors import ConfigError
from mmcaption.images import local_file
from mmcaption.prompts import DEFAULT_SYSTEM, ConversationTemplate
from mmcaption.terminal import shell_word


class CaptionDataModule(SplitFiles, PreprocessedDataModule):
    """COCO Captions 2017 (or any set in its layout), preprocessed once and memory-mapped.

    Args:
        data_dir: the COCO root: ``annotations/captions_<split>.json`` and ``<split>/`` image folders (for ``karpathy``:
            COCO 2014's root with ``train2014/`` and ``val2014/``, or COCO 2017's, the same photos).
        source: ``coco`` for that official layout; ``hub`` for a ``datasets`` dataset (``hub_dataset``);
            ``karpathy`` for Karpathy's splits of COCO 2014 (``karpathy_file``): splits ``train`` (his train
            and restval, 113,287 images), ``val`` and ``test`` (5,000 each), the split papers report on.
        karpathy_file: Karpathy's ``dataset_coco.json`` (null: ``<data_dir>/dataset_coco.json``).
        hub_dataset: hub id or local folder (``save_to_disk``, parquet files, webdataset tars) of the ``hub`` source.
        hub_image_column: the ``hub`` dataset's image column.
        hub_caption_column: its caption column: a string (several captions split at ``hub_caption_separator``; a
            JSON list), a list of strings, objects (``sentences.raw``: the ``raw`` of each), or several columns
            (``[caption_0, caption_1]``).
        hub_caption_separator: what separates several captions in one string (empty: a string is one caption).
        hub_val_fraction: share of a single-split ``hub`` dataset held out for validation.
        hub_config: the ``hub`` dataset's configuration (subset; ``load_dataset``'s second argument), for one with several.
        train_split: split used by ``fit`` (null: ``train2017`` for coco, ``train`` for karpathy, the dataset's
            ``train`` for hub; none for a hub set of evaluation splits only, scored whole: :mod:`~mmcaption.data.stage_splits`).
        val_split: split used by validation (null: ``val2017`` for coco; for hub the dataset's validation/val/dev/test
            split, or a held-out share of a single split).
        test_split: split used by ``test`` (null: ``test`` for karpathy, and for hub when the dataset has one apart from
            validation's; else the validation split). For coco or karpathy, a split may be a COCO captions file where it lies
            (nocaps' ``nocaps_val_4500_captions.json``), its images found beside it (:mod:`~mmcaption.data.caption_files`).
        caption_prompt: text between ``<bos>`` and the caption, not supervised (empty: none).
        max_length: longest sequence in tokens, prompt and special tokens included; longer captions are cut.
        val_caption_images: how many val images to caption at each validation for CIDEr, BLEU-4,
            METEOR, ROUGE-L (0: none, null: all).
        test_caption_images: how many images of the test split ``mmcaption test`` captions and scores
            (null: all; 0: the loss only); the scores and captions are written beside the run's logs.
    """

    training_stage = "caption"

    def __init__(
        self, data_dir: str = "data/coco", source: Literal["coco", "hub", "karpathy"] = "coco",
        karpathy_file: str | None = None, hub_dataset: str | None = None, hub_image_column: str = "jpg",
        hub_caption_column: str | list[str] = "txt",
        hub_caption_separator: str = "\n",  # (str: with str | None, jsonargparse read "#" and "~" as YAML's null)
        hub_val_fraction: float = 0.01, hub_config: str | None = None,
        train_split: str | None = None, val_split: str | None = None, test_split: str | None = None,
        caption_prompt: str = "", max_length: int = 64, val_caption_images: int | None = 0,
        test_caption_images: int | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if source == "hub" and not hub_dataset:
            raise ConfigError("source: hub needs hub_dataset (a hub id or a local dataset folder)")
        self.save_hyperparameters()  # recorded in checkpoints: export reads the caption prompt from them
        self.text_table, self.source = "captions", source
        self.data_dir = local_file(Path(data_dir))  # typed in the other Unicode form than a Mac wrote it: found
        self.hub = HubCaptions(hub_dataset, hub_image_column, hub_caption_column, hub_caption_separator, hub_val_fraction,
                               str(self.cache_dir), hub_config) if source == "hub" else None
        self.splits = (train_split, val_split, test_split)
        check_split_settings(self.splits, source)
        self.caption_prompt, self.max_length, self.val_caption_images = caption_prompt, max_length, val_caption_images
        self.test_caption_images = test_caption_images
        self.karpathy_file = local_file(Path(karpathy_file)) if karpathy_file else self.data_dir / "dataset_coco.json"

    @property
    def default_cache_dir(self) -> Path:
        # a split file scored with no COCO root here (nocaps alone), a local table: its cache beside it, not in a data/coco/
        files = [path for split in self.splits if (path := split_file(split))] if self.source != "hub" else [  # made here
            local for local in [Path(self.hparams["hub_dataset"]).expanduser()] if local.exists()]
        return files[0].parent / "preprocessed" if files and not self.data_dir.exists() else self.data_dir / "preprocessed"

    def stage_splits(self) -> dict[str, str]:
        # once per data module (listing a hub dataset's splits reads files), kept on it: functools.cache on the method
        # kept every data module, its trainer and model with it, for the process's life (a sweep's trials piled up)
        if "_stage_splits" not in self.__dict__:
            self._stage_splits = self._find_stage_splits()
        return self._stage_splits

    def _setting(self, split: str) -> str:  # the setting that names ``split``: the running command's, else the first
        names = [stage for stage, name in self.stage_splits().items() if name == split] or ["val"]
        running = {"test": "test", "validate": "val"}.get(getattr(getattr(getattr(self.trainer, "state", None), "fn", None), "value", None))
        return f"{running if running in names else names[0]}_split"

    def _find_stage_splits(self) -> dict[str, str]:
        train, val, test = self.splits
        if self.hub is not None:
            return self.hub.stage_splits(train, val, test)
        train, val, test = self.split_names()  # a split file's by the file (nocaps_val_4500_captions)
        if self.source == "karpathy":
            return {"train": train or "train", "val": val or "val", "test": test or "test"}
        val = val or "val2017"
        return {"train": train or "train2017", "val": val, "test": test or val}

    @property
    def layout_hint(self) -> str:
        if self.source == "karpathy":
            return " (Karpathy's splits: <data_dir>/dataset_coco.json, or karpathy_file, with COCO 2014's train2014/ and val2014/, or COCO 2017's train2017/ and val2017/, in <data_dir>)"
        return " (the official layout is <data_dir>/annotations/captions_<split>.json with images in <data_dir>/<split>/)" + \
            (f";{said}" if (said := misplaced_data_dir(self.data_dir)) else "")

    def input_paths(self, split: str) -> list[tuple[Path, str]]:
        if self.karpathy_split(split):
            return [(self.karpathy_file, "Karpathy split file (dataset_coco.json)"), (self.data_dir, "COCO image root")]
        folder, what = coco_image_folder(self.image_folder(split))  # or COCO 2014's download in its place: the same photos
        file = self.split_files().get(split)
        return [(self.annotation_file(split), "COCO annotation file" if file is None else "COCO captions file (a split given "
                 "by its path, read from the current folder when relative: " + str(file.absolute()) + ")"), (folder, what)]

    def check_inputs(self, stage: str = "fit") -> None:
        if self.hub is None:  # a hub dataset is found (or downloaded) by datasets itself; a local one's splits are
            super().check_inputs(stage)  # listed now: fit refused on a set of evaluation splits before the model loads
        elif Path(self.hub.dataset).expanduser().exists() and isinstance(splits := self.stage_splits(), EvaluationSplits):
            if lacking := [name for name in STAGE_SPLITS.get(stage, []) if name not in splits]:  # (and a split it lacks)
                raise DataError(splits.refused.get(lacking[0], splits.said))

    def _read_otherwise_now(self, file: Path, split: str, hub: bool = False) -> dict:
        found = "; ".join(read_otherwise_now_in(file, hub, self.looked_at))  # (and a run's place in its cache,
        self.read_anew = {**getattr(self, "read_anew", {}), split: found}  # ``training_data``: what this release does otherwise)
        return {"captions": found} if found else {}

    def split_inputs(self, split: str) -> dict:
        if self.hub is not None:
            # a datasets dataset's fingerprint follows its files (hub revision, local Arrow or parquet)
            local = Path(self.hub.dataset)  # one local file: its content, not datasets' fingerprint of its time
            data = self.hub.load(split)[0]  # (once: its fingerprint, its own image ids' column)
            content = file_signature(local) if local.is_file() else data._fingerprint
            lists = token_split_lists(local) if local.is_file() else {}  # Flickr8k's, beside its token file: its splits
            files = self.hub.image_files(split)  # rows that name image files: the files' content too
            hub = {key: value for key, value in asdict(self.hub).items() if key != "cache_dir"}  # where, not what, it reads
            return {"hub": hub, "split": split, "fingerprint": content,
                    "rows": "grouped by image",  # since rows of one image became one image, not one each
                    **({"image_files": files_signature(files, self.hub.dataset, self.cache_dir)} if files else {}),
                    **({"split_lists": {name: file_signature(file) for name, file in lists.items()}} if lists else {}),
                    **self._read_otherwise_now(local, split, hub=True),  # and a COCO copy's own ids kept (were rows' numbers)
                    **({"own ids": column} if (column := self.hub.own_id_column(data)) else {})}
        if self.karpathy_split(split):
            if not self.karpathy_file.is_file():
                others = sorted(self.karpathy_file.parent.glob("dataset_*.json"))  # Flickr30k's and Flickr8k's files
                raise DataError(f"Karpathy split file not found: {self.karpathy_file}" + (
                    f" ({others[0].name} is beside it: --data.init_args.karpathy_file {shell_word(others[0])})" if others else ""))
            folders = ([self.data_dir / name for name in ("train2014", "val2014") if (self.data_dir / name).is_dir()]
                       or [self.data_dir / name for name in COCO2017_FOLDERS if (self.data_dir / name).is_dir()])
            return {"karpathy": file_signature(self.karpathy_file), "split": split,
                    "images": [self.signed_folder(folder) for folder in folders or [self.data_dir]],
                    **self._read_otherwise_now(self.karpathy_file, split)}
        annotation_file = self.annotation_file(split)
        require_annotation_file(annotation_file, self._setting(split))
        folder, listed = self.image_folder(split), self.listed_signature(split)  # a split file's own images, if not COCO's
        signature = {"annotations": file_signature(annotation_file), "images": listed or self.signed_folder(folder),
                     **self._read_otherwise_now(annotation_file, split)}
        if copies := coco2014_folders(folder):  # COCO 2014's photos read in the split folder's place
            signature["coco 2014 copies"] = [self.signed_folder(folder) for folder in copies]
        unsigned = [] if listed else coco_unsigned_images(annotation_file, folder)
        if unsigned:  # a labelling tool's absolute file names, a scraper's img1 (none in the official files)
            signature["outside the image folder"] = files_signature(unsigned, str(annotation_file.resolve()), self.cache_dir)
        return signature

    def write_split(self, split: str, folder: Path) -> Path:
        if self.karpathy_split(split):
            records = BadRecords(f"{self.karpathy_file} [{split}]", self.on_bad_record)
            entries = ImageRecords(read_karpathy(self.karpathy_file, self.data_dir, split, records), self.data_dir)
            source = {"source": "karpathy", "split_file": str(self.karpathy_file), "split": split, "images": str(self.data_dir)}
        elif self.hub is None:  # COCO's layout, or a split given as a COCO captions file
            annotation_file = self.annotation_file(split)
            records = BadRecords(annotation_file, self.on_bad_record)
            images = self.image_folder(split)  # (not ``folder``: the cache's)
            entries = coco_records(annotation_file, images, records, self._setting(split))
            source = {"source": "coco", "annotations": str(annotation_file), "images": str(images)}
        else:
            records = BadRecords(f"{self.hub.dataset} [{split}]", self.on_bad_record)
            entries = self.hub.records(split, records)
            source = {"source": "hub", "dataset": self.hub.dataset, "split": split}
        return write_caption_split(entries, self.tokenizer, folder, records, dict(source, tokenizer=self.tokenizer_name),
                                   self.stored_image_size())

    def make_dataset(self, folder: Path) -> CaptionDataset:
        return CaptionDataset(folder, self.image_processor, self.tokenizer, self.caption_prompt, self.max_length)

    def say_cut(self, split: str, dataset: CaptionDataset) -> None:
        """Captions longer than ``max_length`` allows are cut as they are read (the cache keeps them whole): said when
        more than one in a thousand are (COCO's longest few are), with their lengths; only ``prepare`` counted them."""
        lengths = dataset._column_lengths("token_ids")
        room = self.max_length - 2 - len(dataset.prompt_ids)  # <bos>, the prompt, <eos>
        if room < 1:  # was said as "cut to -1 caption tokens", and refused at the first batch, once the model had loaded
            raise ConfigError(f"data.init_args.max_length {self.max_length} leaves no room for a caption after the "
                              f"{len(dataset.prompt_ids)}-token prompt and the start and end tokens: give at least "
                              f"{len(dataset.prompt_ids) + 3}")
        cut = int((lengths > room).sum())
        if cut > len(lengths) / 1000:
            rank_zero_warn(f"split {split}: {cut:,} of {len(lengths):,} captions ({cut / len(lengths):.1%}) are longer than "
                           f"max_length {self.max_length} allows ({room} caption tokens): they are cut there (training learns "
                           f"them to end there). The longest has {int(lengths.max()):,} tokens, 99% have {np.percentile(lengths, 99):.0f} "
                           "or fewer: raise --data.init_args.max_length to keep them whole")

    def caption_images_loader(self, split: str, limit: int | None) -> DataLoader:
        """Images of ``split`` with their references, left-padded prompts for generation."""
        dataset = CaptionImagesDataset(self.datasets[split].folder, self.image_processor, self.tokenizer, self.caption_prompt, limit)
        return self.generation_loader(dataset, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The val captions for the loss; with ``val_caption_images``, also val images to caption."""
        loss_loader = self._loader("val")
        return loss_loader if self.val_caption_images == 0 else [
            loss_loader, self.caption_images_loader(self.stage_splits()["val"], self.val_caption_images)]

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test captions for the loss; unless ``test_caption_images`` is 0, also its images to caption."""
        loss_loader = self._loader("test")
        return loss_loader if self.test_caption_images == 0 else [
            loss_loader, self.caption_images_loader(self.stage_splits()["test"], self.test_caption_images)]


class InstructDataModule(PreprocessedDataModule):
    """LLaVA-Instruct conversations (one sequence each, loss on every assistant turn), preprocessed once.

    Args:
        train_file: LLaVA JSON of the training conversations.
        val_file: LLaVA JSON of validation conversations; if null, ``val_fraction`` of ``train_file``
            is held out by a stable hash of the record id.
        val_fraction: share of ``train_file`` held out for validation when ``val_file`` is null (at least one
            id's conversations, in a file too small for the share to hold any out).
        image_root: folder that the records' ``image`` paths are relative to (COCO ``train2017/``); an absolute
            path is read as written.
        val_image_root: folder that ``val_file``'s ``image`` paths are relative to (null: ``image_root``).
        system_prompt: first line of every conversation (empty: none).
        max_length: longest sequence in tokens; later whole turns are dropped to fit, and counted.
        val_answer_questions: how many val questions to answer (each asked alone) at each validation
            for ``val/answer_exact_match`` (0: none, null: all).
        test_answer_questions: how many questions of the validation conversations ``mmcaption test``
            answers and scores by exact match (null: all; 0: the loss only); the answers are written beside
            the run's logs.
    """

    training_stage = stage_needed = "instruct"

    def __init__(self, train_file: str = "data/llava/llava_instruct_150k.json", val_file: str | None = None,
                 val_fraction: float = 0.01, image_root: str = "data/coco/train2017", val_image_root: str | None = None,
                 system_prompt: str = DEFAULT_SYSTEM, max_length: int = 512, val_answer_questions: int | None = 0,
                 test_answer_questions: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if val_file is None and (not 0 < val_fraction < 1 or val_image_root is not None):  # (a share's images: image_root's)
            raise ConfigError(f"val_image_root {val_image_root} is val_file's image folder: give val_file, or leave it null"
                              if val_image_root is not None else "without val_file, val_fraction must be between 0 and 1")
        self.save_hyperparameters()  # recorded in checkpoints: export reads the system prompt from them
        self.train_file, self.val_file, self.val_fraction = local_file(Path(train_file)), val_file and local_file(Path(val_file)), val_fraction
        self.image_root, self.val_image_root = local_file(Path(image_root)), local_file(Path(val_image_root or image_root))
        self.max_length, self.val_answer_questions, self.test_answer_questions = max_length, val_answer_questions, test_answer_questions
        self.text_table, self.template = "conversations", ConversationTemplate(system=system_prompt)
        if self.val_file is not None and self.val_file.resolve() == self.train_file.resolve():
            rank_zero_warn(f"val_file is train_file ({train_file}): validation measures the training conversations; "
                           "give val_file null to hold out val_fraction of them")

    @property
    def default_cache_dir(self) -> Path:
        return self.train_file.parent / "preprocessed"

    def stage_splits(self) -> dict[str, str]:
        return {"train": "train", "val": "val", "test": "val"}

    def _source(self, split: str) -> tuple[Path, str | None]:
        """The file a split is read from, and the hash-split side of it (None: the whole file)."""
        if self.val_file is not None:
            return (self.train_file if split == "train" else self.val_file), None
        return self.train_file, split

    def _image_root(self, split: str) -> Path:
        return self.image_root if split == "train" else self.val_image_root

    def input_paths(self, split: str) -> list[tuple[Path, str]]:
        named = "image_root" if self._image_root(split) == self.image_root else "val_image_root"
        return [(self._source(split)[0], "LLaVA conversation file"), (self._image_root(split), f"image folder ({named})")]

    def split_inputs(self, split: str) -> dict:
        file, side = self._source(split)
        if several := one_file_wanted(file):  # a folder of LLaVA-Instruct's files, or data/llava/*.json quoted
            raise DataError(several)
        tabular = file.is_dir() or file.suffix.lower() in (".parquet", ".arrow")
        if tabular and file.exists():  # a datasets folder (save_to_disk) or its parquet: not conversations as LLaVA ships them
            raise DataError(f"{file} is {'a folder' if file.is_dir() else 'a ' + file.suffix[1:] + ' file'}: the instruct "
                            "stage reads conversations from a JSON or JSON Lines file (LLaVA's layout); write one with "
                            "datasets' Dataset.to_json(\"conversations.jsonl\"), images as paths under image_root")
        if not file.is_file():
            raise DataError(f"LLaVA conversation file not found: {file}")
        image_root = self._image_root(split)
        signature = {"file": file_signature(file), "side": side, "images": self.signed_folder(image_root)}
        if reader := self.looked_at(("read otherwise", file), lambda: read_otherwise_now(file)):  # not an earlier reading's cache
            signature["reader"] = reader
        if self.looked_at(("asked", file), lambda: asks_questions(file)):  # its question-and-answer records were refused
            signature["questions"] = "as conversations"
        if coco2014_download(image_root):  # COCO 2017's names read from its copies (a cache before them skipped those)
            signature["coco 2014 copies"] = "read"
        if self.looked_at(("untidy", file), lambda: conversation_files.untidy_image_paths(file)):  # sides hashed from paths put in order
            signature["image paths"] = "tidied"
        unsigned = self.looked_at(("outside", file), lambda: llava_unsigned_images(file, image_root))
        if unsigned:  # absolute image paths, names without an image's suffix (none in LLaVA's own files)
            signature["outside image_root"] = files_signature(unsigned, str(file.resolve()), self.cache_dir)
        return signature

    def preprocess_settings(self) -> dict:
        return {**super().preprocess_settings(), "template": repr(self.template), "max_length": self.max_length,
                "val_fraction": self.val_fraction if self.val_file is None else None,
                **({"held_out_by": "id, else image"} if self.val_file is None else {})}  # records without ids: by place before

    def write_split(self, split: str, folder: Path) -> Path:
        file, side, image_root = *self._source(split), self._image_root(split)
        records = BadRecords(file, self.on_bad_record)
        if file.is_file() and file.stat().st_size > 1 << 24:  # LLaVA-Instruct-150k's 230 MB: seconds before a bar moves
            rank_zero_info(f"reading and checking the {file.stat().st_size / 2**20:,.0f} MB of {file} ...")
        try:
            conversations = read_llava(file, image_root, records, split=side, val_fraction=self.val_fraction)
        except DataError as error:  # a val file beside photos of its own, read from the training photos' folder
            if split == "train" or self.val_file is None or self.val_image_root != self.image_root or "missing under" not in str(error):
                raise
            raise DataError(f"{error} val_file's images are read from image_root unless --data.init_args.val_image_root "
                            "names their own folder") from None
        metadata = {"source": "llava", "file": str(file), "side": side, "image_root": str(image_root),
                    "tokenizer": self.tokenizer_name, "template": repr(self.template)}
        try:
            return write_instruct_split(conversations, image_root, self.tokenizer, self.template, self.max_length, folder, records,
                                        metadata, self.stored_image_size())
        except NothingUsable as error:  # "nothing usable is left" alone named neither the split nor what to change
            if side != "val" or self.val_file is not None:
                raise
            raise NothingUsable(f"{error}; they are the conversations held out for validation (val_fraction "
                                f"{self.val_fraction}): give val_file, or raise val_fraction to hold out more") from None

    def make_dataset(self, folder: Path) -> ConversationDataset:
        dataset = ConversationDataset(folder, self.image_processor)
        check_supervision(dataset)
        return dataset

    def say_cut(self, split: str, dataset: ConversationDataset) -> None:
        """The turns ``max_length`` dropped, said at every fit as the caption stage's cut captions are: a run on a cache
        built earlier said nothing of them (only ``prepare`` and the build's own run did)."""
        kept, dropped = turn_counts(dataset.rows.data)
        if dropped > (total := kept + dropped) / 1000:
            rank_zero_warn(f"split {split}: {dropped:,} of {total:,} question-answer turns ({dropped / total:.1%}) do not fit "
                           f"max_length {self.max_length}: later turns are dropped whole, neither trained on nor scored; raise "
                           "--data.init_args.max_length to keep them")

    def questions_loader(self, split: str, limit: int | None) -> DataLoader:
        """Val questions asked one at a time, left-padded prompts for generation."""
        dataset = QuestionsDataset(self.datasets[split].folder, self.image_processor, self.tokenizer, self.template, limit)
        return self.generation_loader(dataset, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The val conversations for the loss; with ``val_answer_questions``, also questions to answer."""
        loss_loader = self._loader("val")
        return loss_loader if self.val_answer_questions == 0 else [loss_loader, self.questions_loader("val", self.val_answer_questions)]

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The val conversations for the loss; unless ``test_answer_questions`` is 0, also their questions to
        answer (a LLaVA file has no test split: ``test`` reads the validation conversations)."""
        loss_loader = self._loader("test")
        return loss_loader if self.test_answer_questions == 0 else [
            loss_loader, self.questions_loader(self.stage_splits()["test"], self.test_answer_questions)]

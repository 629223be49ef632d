"""Data: COCO captions and LLaVA conversations - checks, preprocessing, datasets, collation,
LightningDataModules - and the synthetic demo data."""

from mmcaption.data.datamodule import CaptionDataModule, CaptionDataset, ConversationDataset, InstructDataModule
from mmcaption.data.predict import CaptionPredictDataModule, MultipleChoiceDataModule
from mmcaption.data.records import DataError

__all__ = [
    "CaptionDataModule",
    "CaptionDataset",
    "CaptionPredictDataModule",
    "ConversationDataset",
    "DataError",
    "InstructDataModule",
    "MultipleChoiceDataModule",
]

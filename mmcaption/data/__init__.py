"""Data: COCO captions preprocessing, datasets, collation, LightningDataModules, synthetic data."""

from mmcaption.data.datamodule import CaptionDataModule, CaptionDataset
from mmcaption.data.records import DataError

__all__ = ["CaptionDataModule", "CaptionDataset", "DataError"]

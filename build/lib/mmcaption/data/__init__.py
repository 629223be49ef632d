"""Data: COCO captions and LLaVA conversations (reading and checks, preprocessing caches, datasets,
LightningDataModules) and what ``mmcaption predict`` reads (images; multiple-choice questions from the
original scripts' CSV, MMBench's TSV or ScienceQA's problems.json; free-form questions)."""

from mmcaption.data.datamodules import CaptionDataModule, InstructDataModule
from mmcaption.data.datasets import CaptionDataset, ConversationDataset
from mmcaption.data.predict import CaptionPredictDataModule, MultipleChoiceDataModule
from mmcaption.data.questions import QuestionsPredictDataModule
from mmcaption.data.records import DataError

__all__ = [
    "CaptionDataModule",
    "CaptionDataset",
    "CaptionPredictDataModule",
    "ConversationDataset",
    "DataError",
    "InstructDataModule",
    "MultipleChoiceDataModule",
    "QuestionsPredictDataModule",
]

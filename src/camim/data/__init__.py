"""The MNRE data layer: readers and validators of every released file format, their canonical JSONL
forms, and :class:`MNREDataset` (see ``docs/architecture.md``, Contract 1)."""

from camim.data.auxiliary import (
    UNIFORM_SCORE,
    ScoreTable,
    read_box_dict,
    read_object_dict,
    read_phrases,
    read_score_file,
    read_score_table,
)
from camim.data.captions import Captions, read_captions
from camim.data.dataset import MODALITIES, MNREDataset, default_labels
from camim.data.images import ImageLimits, crop_box, load_image
from camim.data.labels import NEGATIVE_NAMES, LabelSet, find_negative
from camim.data.layout import CAPTION_SOURCES, RELEASED_CAPTION_SOURCES, SPLITS, DataLayout
from camim.data.samples import read_samples
from camim.data.types import IMAGE_MODALITIES, Entity, MNREExample, Scores

__all__ = [
    "CAPTION_SOURCES",
    "IMAGE_MODALITIES",
    "MODALITIES",
    "NEGATIVE_NAMES",
    "RELEASED_CAPTION_SOURCES",
    "SPLITS",
    "UNIFORM_SCORE",
    "Captions",
    "DataLayout",
    "Entity",
    "ImageLimits",
    "LabelSet",
    "MNREDataset",
    "MNREExample",
    "ScoreTable",
    "Scores",
    "crop_box",
    "default_labels",
    "find_negative",
    "load_image",
    "read_box_dict",
    "read_captions",
    "read_object_dict",
    "read_phrases",
    "read_samples",
    "read_score_file",
    "read_score_table",
]

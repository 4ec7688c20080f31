"""Tiny MNRE-layout data with drawn images, and scripted answer tables for the loopback chat server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.captioning.conftest import draw_images
from tests.training.conftest import write_tiny_mnre

from camim.data import MNREDataset
from camim.data.types import MNREExample
from camim.zeroshot.prompt import PromptBuilder, PromptInput


def query_key(ex: MNREExample) -> str:
    """The part of a sample's user turn that identifies it (post, head, tail): a script key."""
    return PromptBuilder([]).post_text(PromptInput(ex)).split("\nImage:")[0]


def examples(data: Path, split: str = "test") -> list[MNREExample]:
    return MNREDataset(data, split, caption_source=None, modalities=()).examples


def gold_script(exs: list[MNREExample]) -> dict[str, str]:
    """Every sample answered with its gold relation, as the prompt asks."""
    return {query_key(ex): json.dumps({"relation": ex.relation}) for ex in exs}


def write_images(data: Path, split: str, ids: list[str]) -> None:
    """Drawn images for ``ids`` (distinct pictures) under ``img_org/{split}/``."""
    folder = data / "img_org" / split
    items = draw_images(folder / "_drawn", len(ids))
    for img_id, item in zip(ids, items):
        item.path.rename(folder / img_id)
    (folder / "_drawn").rmdir()


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """16 test samples (relations cycle None, couple, member_of, place_of_residence), 48 train samples.
    Test images: 0-11 drawn, except 3 unreadable; 12-15 missing. Every train image is drawn."""
    data = write_tiny_mnre(tmp_path / "data", n_train=48, n_eval=16)
    write_images(data, "test", [f"test_{i}.jpg" for i in range(12)])
    (data / "img_org" / "test" / "test_3.jpg").write_bytes(b"not a jpeg")
    write_images(data, "train", [f"train_{i}.jpg" for i in range(48)])
    return data

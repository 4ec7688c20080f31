"""A small synthetic world (drawn images in MNRE's layout) and tiny backbones for the speed tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.models.conftest import text_dir, vision_dir  # noqa: F401 - fixtures re-exported

from camim.data import MNREDataset
from camim.synthetic import WorldConfig, generate_world

ALL = ("caption", "scores", "phrase", "image", "objects", "generated_image", "generated_objects")
TEXT = ("caption", "scores", "phrase")


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speed_world") / "w"
    generate_world(root, WorldConfig(train=10, val=1, test=1, image_size=64, generated_size=48))
    return root


def dataset(world: Path, modalities=ALL) -> MNREDataset:
    return MNREDataset(world, "train", modalities=modalities)

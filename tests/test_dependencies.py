"""The dependency floors of pyproject.toml are versions that have what camim relies on."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _floor(name: str) -> Version:
    """The ``name>=X`` floor in ``[project] dependencies`` (no tomllib on 3.10)."""
    deps = PYPROJECT.read_text(encoding="utf-8").split("\ndependencies = [", 1)[1].split("\n]", 1)[0]
    return Version(re.search(rf'^\s*"{re.escape(name)}>=([^",;]+)"', deps, re.M).group(1))


def test_the_lightning_floor_has_what_camim_relies_on():
    """Lightning 2.3 (the floor until 2026-12-08) failed every run with a TypeError (``seed_everything`` takes
    ``verbose`` from 2.4) and, shimmed past that, returned from ``fit`` on Ctrl-C: ``camim train`` then scored
    and wrote the interrupted run (metrics.json at step 6 of 18). 2.4.0's rich bar, which camim's speed.fast bar
    is, crashed with rich 15 (fixed in 2.5.3). CI installs 2.6, whose last.ckpt rule camim.training.selection
    is written for."""
    assert _floor("lightning") >= Version("2.6")

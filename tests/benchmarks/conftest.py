"""The benchmarks are scripts, not a package: ``bench(name)`` imports ``benchmarks/<name>.py`` with that
folder on ``sys.path`` (as when it runs as a file, so ``from step_speed import ...`` finds the same
module)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
MODULES = ("step_speed", "gpu_e2e", "offline_mnre", "offline_ablations", "device_pack", "gpu_minilm")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module
    for name in MODULES:  # the next test imports them afresh
        sys.modules.pop(name, None)

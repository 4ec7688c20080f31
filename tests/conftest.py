from __future__ import annotations

from pathlib import Path

import pytest

SHARED_MNRE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnre"


@pytest.fixture(scope="session")
def mnre_dir() -> Path:
    """The real MNRE text/caption folder beside the checkout; integration tests skip without it."""
    if not (SHARED_MNRE / "ours_rel2id.json").exists():
        pytest.skip("../shared/data/mnre not present")
    return SHARED_MNRE

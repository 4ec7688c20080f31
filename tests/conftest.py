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


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tests run tiny models on 2 CPU cores: one intra-op thread is several times faster than
    oversubscribed ones (measured by the inference, preprocess and speed suites), and results do not
    depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

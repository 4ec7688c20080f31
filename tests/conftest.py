from __future__ import annotations

import signal
from pathlib import Path

import pytest

SHARED_MNRE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnre"


@pytest.fixture(scope="session")
def mnre_dir() -> Path:
    """The real MNRE text/caption folder beside the checkout; integration tests skip without it."""
    if not (SHARED_MNRE / "ours_rel2id.json").exists():
        pytest.skip("../shared/data/mnre not present")
    return SHARED_MNRE


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the test processes and the commands they start. A shell without job control starts a
    background job (``nohup .ci/run &``, a script's ``&``) with SIGINT ignored, which its children inherit through
    exec: the tests that press Ctrl-C in a ``camim`` subprocess then saw it exit 0 untouched (4 failures, none
    of camim's). A handler installed here is reset to the default in every child at exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped, before any fixture is built, where CUDA is absent; on a GPU machine
    they run with the rest, or alone with ``-m gpu``."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker; run with -m gpu on a GPU machine)")
    for item in gpu_items:
        item.add_marker(skip)


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


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms`` for one test (with the session's one thread: the same run gives
    the same bits); for the tests that train two code paths side by side (tests/lockstep.py)."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)

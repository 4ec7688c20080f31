"""The progress bar of a ``speed.fast`` run: Lightning's own bar, reading the step's metrics less often.

Each time a Lightning progress bar shows the metrics it converts the logged loss to a Python number; on a GPU
that copy waits for every queued kernel, so the host cannot queue the next steps while the GPU works. With
``speed.fast`` the bar reads the metrics every ``every`` batches and shows the last ones read in between (the
position in the epoch still moves every batch).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


class _ReadsMetricsEvery:
    """Mixin over a Lightning progress bar: ``get_metrics`` asks the trainer every ``every`` calls."""

    def __init__(self, every: int, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.every = max(1, int(every))
        self._calls, self._shown = 0, None

    def get_metrics(self, trainer, pl_module):
        if self._shown is None or self._calls % self.every == 0:
            self._shown = super().get_metrics(trainer, pl_module)
        self._calls += 1
        return self._shown


class ThrottledRichProgressBar(_ReadsMetricsEvery, RichProgressBar):
    """:class:`RichProgressBar` (Lightning's default bar where ``rich`` is installed), metrics every ``every``."""


class ThrottledTQDMProgressBar(_ReadsMetricsEvery, TQDMProgressBar):
    """:class:`TQDMProgressBar`, metrics every ``every`` batches."""


def throttled_progress_bar(every: int):
    """The bar Lightning would pick (rich if installed, else tqdm), reading the metrics every ``every`` calls."""
    rich = importlib.util.find_spec("rich") is not None
    return (ThrottledRichProgressBar if rich else ThrottledTQDMProgressBar)(every)

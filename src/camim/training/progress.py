"""The progress bar of a ``speed.fast`` run: Lightning's own bar, showing the step loss every N batches.

Lightning converts every step-level metric logged with ``prog_bar=True`` to a Python number after *every*
batch (its logger connector, whatever the bar does); on a GPU that copy waits for every queued kernel, so the
host cannot queue the next step while the GPU runs this one. In a ``speed.fast`` run the module logs the step
loss without ``prog_bar`` (``MRELightningModule.training_step``), and this bar reads it itself, from the
trainer's callback metrics (tensors, no conversion), every ``every`` batches.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

try:  # the check Lightning itself makes before it picks the rich bar (rich >= 10.2.2)
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
except ImportError:  # pragma: no cover - a Lightning without the flag
    _RICH_AVAILABLE = importlib.util.find_spec("rich") is not None

LOSS = "train/loss"


class _LossEvery:
    """Mixin over a Lightning progress bar: shows ``train/loss`` read every ``every`` training batches."""

    def __init__(self, every: int, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.every = max(1, int(every))
        self._loss: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx % self.every == 0 or batch_idx + 1 == trainer.num_training_batches:
            value = trainer.callback_metrics.get(f"{LOSS}_step")
            self._loss = None if value is None else float(value)  # one wait for the GPU per `every` batches
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)  # no step-level metric left to convert
        if self._loss is not None:
            items = {LOSS: self._loss, **items}
        return items


class ThrottledRichProgressBar(_LossEvery, RichProgressBar):
    """:class:`RichProgressBar` (Lightning's default bar where ``rich`` is installed), loss every ``every``."""


class ThrottledTQDMProgressBar(_LossEvery, TQDMProgressBar):
    """:class:`TQDMProgressBar`, loss every ``every`` batches."""


def throttled_progress_bar(every: int):
    """The bar Lightning would pick (rich if available, else tqdm), showing the loss every ``every`` batches."""
    return (ThrottledRichProgressBar if _RICH_AVAILABLE else ThrottledTQDMProgressBar)(every)

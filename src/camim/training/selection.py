"""Model selection on dev micro-F1 with the released tie rules (reference §2 and §5.1).

The released TMR / CAMIM trainer saves an epoch when its dev F1 is strictly greater than the best so far
(``>``: of equal bests, the first is kept); the released HVPNeT trainer uses ``>=`` (the last is kept).
Lightning's ``ModelCheckpoint`` compares with ``torch.gt`` for ``mode="max"`` and offers no tie option
(Lightning-AI/pytorch-lightning#16504, closed as won't fix), so :class:`DevCheckpoint` overrides its public
``check_monitor_top_k`` decision; everything else (files, resume state, DDP agreement) is Lightning's.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from camim.errors import CamimError

TIES = ("first", "last")


class DevCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(mode="max", save_top_k=1)`` whose ties go to the first (``>``) or last (``>=``) epoch."""

    def __init__(self, *args, ties: str = "first", **kwargs):
        if ties not in TIES:
            raise CamimError(f"ties must be one of {TIES}, got {ties!r}")
        kwargs.setdefault("mode", "max")
        kwargs.setdefault("save_top_k", 1)
        super().__init__(*args, **kwargs)
        if self.mode != "max" or self.save_top_k != 1:
            raise CamimError("DevCheckpoint keeps the single best epoch of a maximised metric")
        self.ties = ties

    @property
    def state_key(self) -> str:
        # the key ModelCheckpoint stores its resume state under, so that run folders written before this
        # subclass existed resume with their best-so-far intact
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        if self.ties == "first" or current is None or not self.best_k_models:
            return super().check_monitor_top_k(trainer, current)
        better_or_equal = bool(torch.ge(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(better_or_equal)

r"""Model selection on dev micro-F1 with the released tie rules (reference §2 and §5.1).

The released TMR / CAMIM trainer saves an epoch when its dev F1 is strictly greater than the best so far
(``>``: of equal bests, the first is kept); the released HVPNeT trainer uses ``>=`` (the last is kept).
Lightning's ``ModelCheckpoint`` compares with ``torch.gt`` for ``mode="max"`` and offers no tie option
(Lightning-AI/pytorch-lightning#16504, closed as won't fix), so :class:`DevCheckpoint` overrides its public
``check_monitor_top_k`` decision; everything else (files, resume state, DDP agreement) is Lightning's.

Both checkpoint callbacks of a run are :class:`RunCheckpoint`\ s, whose resume state follows a run folder that
was moved or copied (issue 29): Lightning keeps the absolute paths of the best and last checkpoints in it. On
resume they also remove the checkpoints a killed run saved after its ``last.ckpt`` (issue 29 §3), and they write
``last.ckpt`` after every epoch: Lightning 2.6 writes it only at a step that also saved a top-k checkpoint, so a
run killed some epochs after its best dev F1 resumed from that best epoch and trained the epochs since again.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from camim.errors import CamimError

TIES = ("first", "last")


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose resume state follows a moved run folder: paths it saved under the
    checkpoint folder of another location (best, last, the k best) are read as the same files under this one.
    Lightning itself would keep only ``best_model_path``, still pointing at the old place, and forget the rest."""

    @property
    def state_key(self) -> str:
        # the key ModelCheckpoint stores its resume state under, so that run folders written before these
        # subclasses existed resume with their best-so-far intact
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def _save_last_if_not_saved(self, trainer) -> None:
        """``last.ckpt`` at this step when Lightning saved nothing here. Lightning before 2.6 saved it after every
        epoch; 2.6 saves it only beside a new top-k checkpoint ("Only save last checkpoint if a checkpoint was
        actually saved in this step"): an epoch that does not improve dev F1 was lost to a kill, and a 22-minute
        MiniLM caption epoch with it (issue 37's runs). ``_should_skip_saving_checkpoint`` is Lightning's own
        test: not fitting, sanity checking, fast_dev_run, or already saved at this global step."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: dict) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            state_dict = _moved_state(state_dict, str(old), str(new))
        super().load_state_dict(state_dict)
        self._remove_unknown_checkpoints()

    def _remove_unknown_checkpoints(self) -> None:
        """Remove the checkpoints of this callback's file name that the resume state does not know. A run
        killed after saving a new best checkpoint (and removing the previous one) but before saving
        ``last.ckpt`` leaves one; the resumed run redoes that epoch and, finding the name taken, would save
        ``best-epoch2-v1.ckpt`` beside it: a second model-sized file, and another ``best_checkpoint`` in
        metrics.json than an uninterrupted run's."""
        if not self.dirpath or not self.filename or not os.path.isdir(self.dirpath):
            return
        known = [*self.best_k_models, self.best_model_path, self.last_model_path]
        known = {os.path.abspath(p) for p in known if p}
        pattern = re.sub(r"\{[^}]*\}", "*", self.filename) + "*" + self.FILE_EXTENSION  # best-epoch*.ckpt
        for name in fnmatch.filter(os.listdir(self.dirpath), pattern):
            path = os.path.abspath(os.path.join(self.dirpath, name))
            if path not in known and name != self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION:
                Path(path).unlink(missing_ok=True)


def _moved_state(state: dict, old: str, new: str) -> dict:
    """``state`` with every path under the folder ``old`` moved under ``new`` (other paths unchanged)."""

    def move(path):
        if isinstance(path, str) and path.startswith(old.rstrip(os.sep) + os.sep):
            return new.rstrip(os.sep) + path[len(old.rstrip(os.sep)) :]
        return path

    moved = {k: move(v) for k, v in state.items()}
    moved["best_k_models"] = {move(k): v for k, v in (state.get("best_k_models") or {}).items()}
    moved["dirpath"] = new
    return moved


class DevCheckpoint(RunCheckpoint):
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

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        if self.ties == "first" or current is None or not self.best_k_models:
            return super().check_monitor_top_k(trainer, current)
        better_or_equal = bool(torch.ge(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(better_or_equal)

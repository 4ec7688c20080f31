"""What every Lightning run of camim shares: the precision values a ``lightning.Trainer`` takes, the console it
prints to (Lightning's info logs and the warnings camim expects silenced), what Ctrl-C does
(:func:`interruptible`), what a run shows when its output goes to a log file (:class:`EpochLines`), and how its
checkpoints reach the disk (:class:`AtomicCheckpointIO`).

``camim train`` (:mod:`camim.training`) and ``camim pretrain`` (:mod:`camim.pretraining`) both build their
trainers with these, so a setting is spelt and checked the same way in both.
"""

from __future__ import annotations

import io
import logging
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from camim.errors import Interrupted, Terminated
from camim.io import atomic_path, failpoint
from camim.progress import EVERY_S, duration, on_terminal

# Lightning's precision values (lightning.Trainer(precision=...)): refused up front if misspelt
Precision = Literal[
    "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
    "transformer-engine", "transformer-engine-float16", "64", "32", "16", "bf16", 64, 32, 16,
]  # fmt: skip

#: Lightning warnings that say what camim does on purpose (a message regex each)
EXPECTED_WARNINGS = (
    ".*does not have many workers.*",
    ".*LeafSpec.*",
    ".*GPU available but not used.*",
    ".*overridden `transfer_batch_to_device`.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*callbacks used to create the checkpoint need to be provided.*",
)


def quiet_lightning() -> None:
    """Lightning logs warnings only, and the warnings camim expects (:data:`EXPECTED_WARNINGS`) are silenced.
    In a log file (stderr not a terminal) transformers' loading and saving bars are off too: their frames are
    not readable there."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if not on_terminal():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


@contextmanager
def interruptible(resume: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C anywhere inside ends as one :class:`~camim.errors.Interrupted` whose message is ``resume()``
    (where running the command again picks up). Lightning catches the ``KeyboardInterrupt`` inside ``fit`` /
    ``validate`` / ``test``, shuts down gracefully, ignores further Ctrl-C and calls ``sys.exit(1)``: that
    ``SystemExit``, raised while handling the interrupt, is turned back into it, and the SIGINT handler found
    on entry is restored. SIGTERM inside Lightning's loops (which raise ``SIGTERMException``, a ``SystemExit``
    without a status: exit 0, nothing printed) ends as :class:`~camim.errors.Terminated`, with the same message."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(resume()) from None
    except SIGTERMException:
        raise Terminated(resume()) from None
    except SystemExit as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Lightning's exit(1) after an interrupt
            raise Interrupted(resume()) from None
        raise
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)


def progress_callbacks(
    progress_bar: bool, loss_key: str, score_key: str | None = None, epoch_loss: EpochLoss | None = None
) -> tuple[bool, list]:
    """``(enable_progress_bar, callbacks)`` of a run's trainer: Lightning's bar on a terminal; in a log file (or
    pipe) plain :class:`EpochLines` instead, since a bar draws nothing readable there; nothing when off."""
    if not progress_bar:
        return False, []
    if on_terminal():
        return True, []
    return False, [EpochLines(loss_key, score_key, epoch_loss=epoch_loss)]


#: the epoch's loss as a run reports it elsewhere (e.g. ``camim pretrain``'s card), from (trainer, module)
EpochLoss = Callable[[L.Trainer, L.LightningModule], "float | None"]


class EpochLines(L.Callback):
    """Lightning's progress bar for a log file: one line per epoch (epoch k/N, steps, the epoch's mean
    ``loss_key`` (or ``epoch_loss``), the ``score_key`` and the best so far, elapsed, ETA) and, inside an epoch,
    one line every ``every_s`` seconds (batch b/B, the step loss, elapsed, ETA)::

        epoch 2/4: 766 steps, train loss 1.2034, val F1 41.20 (best 41.20 at epoch 2), 12.3 min elapsed, ETA 24.6 min

    Metrics are read from the trainer's callback metrics, so a number is copied from the device only when a
    line is printed. Times count from the start of this (possibly resumed) session."""

    def __init__(self, loss_key: str, score_key: str | None = None, every_s: float = EVERY_S, stream=None,
                 clock=time.monotonic, epoch_loss: EpochLoss | None = None):  # fmt: skip
        self.loss_key, self.score_key, self.every_s, self.clock = loss_key, score_key, every_s, clock
        self.epoch_loss = epoch_loss
        self.stream = stream
        self.best: tuple[float, int] | None = None  # (score, 1-based epoch)

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self._last = self.clock()
        self.batches = 0  # this session's
        self.epochs = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.clock() - self._last < self.every_s:
            return
        total = trainer.num_training_batches
        left = (trainer.max_epochs - trainer.current_epoch - 1) * total + total - batch_idx - 1
        eta = left * (self.clock() - self.start) / self.batches
        loss = _number(trainer.callback_metrics.get(f"{self.loss_key}_step"))
        self._print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: batch {batch_idx + 1}/{total}"
            + (f", loss {loss:.4f}" if loss is not None else "")
            + f", {duration(self.clock() - self.start)} elapsed, ETA {duration(eta)}"
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # printed once the checkpoint callback (a "monitoring" callback, whose hook Lightning calls after this
        # one) has taken this epoch's score into its best: at the next epoch's start, or the end of training
        self._pending = trainer.current_epoch + 1, self.clock() - self.start

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._flush(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._flush(trainer, pl_module)

    def _flush(self, trainer, pl_module) -> None:
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is None:
            return
        epoch, elapsed = pending
        self.epochs += 1
        metrics = trainer.callback_metrics
        parts = [f"epoch {epoch}/{trainer.max_epochs}: {trainer.global_step} steps"]
        if self.epoch_loss is not None:
            loss = self.epoch_loss(trainer, pl_module)
        else:
            loss = _number(metrics.get(f"{self.loss_key}_epoch", metrics.get(self.loss_key)))
        if loss is not None:
            parts.append(f"{self.loss_key.replace('/', ' ')} {loss:.4f}")
        if self.score_key is not None:
            parts.append(self._score(trainer, _number(metrics.get(self.score_key)), epoch))
        parts.append(f"{duration(elapsed)} elapsed")
        if epoch < trainer.max_epochs:
            parts.append(f"ETA {duration(elapsed / self.epochs * (trainer.max_epochs - epoch))}")
        self._print(", ".join(parts))

    def _score(self, trainer, score: float | None, epoch: int) -> str:
        """The epoch's score and the best so far: the checkpoint callback's (its tie rule, kept across a
        resume) when it monitors this score, else the best this session printed."""
        name = self.score_key.replace("/", " ").replace("f1", "F1")
        if score is None or score < 0:  # not evaluated this epoch (before optim.eval_begin_epoch)
            return f"{name} -"
        if self.best is None or score > self.best[0]:
            self.best = (score, epoch)
        best, at = self.best
        ckpt = trainer.checkpoint_callback
        if getattr(ckpt, "monitor", None) == self.score_key and ckpt.best_model_score is not None:
            found = re.search(r"epoch(\d+)", Path(ckpt.best_model_path or "").name)
            best, at = float(ckpt.best_model_score), int(found.group(1)) + 1 if found else at
        return f"{name} {score:.2f} (best {best:.2f} at epoch {at})"

    def _print(self, line: str) -> None:
        print(line, file=self.stream if self.stream is not None else sys.stderr, flush=True)
        self._last = self.clock()


def _number(value) -> float | None:
    return None if value is None else float(value)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing each checkpoint to a temporary file beside it and renaming it into
    place (:func:`camim.io.atomic_path`): a SIGKILL or a full disk in the middle of a save leaves the previous
    ``last.ckpt`` whole. Lightning's own writer copies a temporary file into place, which a full disk cuts short,
    leaving a torn ``last.ckpt`` that the next run cannot resume from."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()  # serialised first: torch's zip writer turns a full disk into a RuntimeError
        torch.save(checkpoint, buffer)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
            failpoint("checkpoint.before_rename")  # a test's kill: written whole, not yet in place

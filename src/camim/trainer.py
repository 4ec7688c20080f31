"""What every Lightning run of camim shares: the precision values a ``lightning.Trainer`` takes, the console it
prints to (Lightning's info logs and the warnings camim expects silenced), and what Ctrl-C does
(:func:`interruptible`).

``camim train`` (:mod:`camim.training`) and ``camim pretrain`` (:mod:`camim.pretraining`) both build their
trainers with these, so a setting is spelt and checked the same way in both.
"""

from __future__ import annotations

import logging
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from camim.errors import Interrupted

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
    """Lightning logs warnings only, and the warnings camim expects (:data:`EXPECTED_WARNINGS`) are silenced."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


@contextmanager
def interruptible(resume: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C anywhere inside ends as one :class:`~camim.errors.Interrupted` whose message is ``resume()``
    (where running the command again picks up). Lightning catches the ``KeyboardInterrupt`` inside ``fit`` /
    ``validate`` / ``test``, shuts down gracefully, ignores further Ctrl-C and calls ``sys.exit(1)``: that
    ``SystemExit``, raised while handling the interrupt, is turned back into it, and the SIGINT handler found
    on entry is restored."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(resume()) from None
    except SystemExit as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Lightning's exit(1) after an interrupt
            raise Interrupted(resume()) from None
        raise
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)

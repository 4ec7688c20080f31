"""What every Lightning run of camim shares: the precision values a ``lightning.Trainer`` takes, and the
console it prints to (Lightning's info logs and the warnings camim expects silenced).

``camim train`` (:mod:`camim.training`) and ``camim pretrain`` (:mod:`camim.pretraining`) both build their
trainers with these, so a setting is spelt and checked the same way in both.
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

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

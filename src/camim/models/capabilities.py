"""What an extractor reads and supports, declared by its class (``MREModel.capabilities``).

The registry hands the declaration (:func:`camim.models.registry.capabilities`) to everything that used to
decide by the extractor's name: ``ModelConfig`` (the defaults of ``cam`` / ``mi`` and the one-line refusal of
a switch the extractor lacks, on which ``uses_cam`` / ``uses_mi`` rely), the model card, the case analysis and
the predictor. A text-only extractor declares ``Capabilities()``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    """One extractor's declaration.

    - ``reads``: the dataset modalities (``camim.data.MODALITIES``: image, objects, caption, scores, ...) it
      reads besides the text in some setting; a built model's ``required_modalities`` is a subset, and their
      union over its settings is this set (tests/models/test_extractors.py). Empty: text only.
    - ``visual_modes``: the ``model.visual_mode`` values it runs in; empty for a text-only extractor, which
      has no visual stream and ignores ``model.visual_mode``.
    - ``cam``: it has the Caption-Aware Module (``model.cam`` other than ``none``).
    - ``mi``: it has the mutual-information loss (``model.mi``).
    - ``mi_pairs``: the ``model.mi_pair`` values it supports with MI; ``None``: every pair.
    """

    reads: frozenset[str] = frozenset()
    visual_modes: tuple[str, ...] = ()
    cam: bool = False
    mi: bool = False
    mi_pairs: tuple[str, ...] | None = None

    @property
    def text_only(self) -> bool:
        return not self.reads

"""CAMIM's models: building blocks named after the paper and the extractors of Table 1.

``build_model(config, labels)`` builds one from a dict or :class:`ModelConfig` (``name`` one of
:data:`camim.models.registry.EXTRACTORS`);
``load_model(dir)`` loads what ``model.save_pretrained(dir)`` wrote. See docs/models.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from camim.errors import CamimError
from camim.models.config import FidelityConfig, ModelConfig
from camim.models.registry import CLASS_NAMES, model_class


def build_model(config: dict[str, Any] | ModelConfig, labels: list[str]):
    """Build an extractor (encoders from ``from_pretrained`` or random from their configs)."""
    cfg = ModelConfig.from_dict(config)
    if not labels:
        raise CamimError("build_model needs a non-empty list of label names")
    return model_class(cfg.name)(cfg, list(labels))


def load_model(directory: str | Path):
    """Load a model saved by ``save_pretrained`` (:meth:`MREModel.from_pretrained`): same modules, same
    weights, same logits."""
    from camim.models.base import MREModel

    return MREModel.from_pretrained(directory)


def __getattr__(name: str):  # lazy access to the extractor classes
    if name in CLASS_NAMES:
        return model_class(CLASS_NAMES[name])
    raise AttributeError(name)


__all__ = ["FidelityConfig", "ModelConfig", "build_model", "load_model"]

"""CAMIM's models: building blocks named after the paper and the extractors of Table 1.

``build_model(config, labels)`` builds one from a dict or :class:`ModelConfig` (``name`` in bert|tmr|hvpnet);
``load_model(dir)`` loads what ``model.save_pretrained(dir)`` wrote. See docs/models.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from camim.errors import CamimError
from camim.models.config import FidelityConfig, ModelConfig


def _model_class(name: str) -> type:
    if name == "bert":
        from camim.models.bert_re import BertRE

        return BertRE
    if name == "tmr":
        from camim.models.tmr import TMR

        return TMR
    if name == "hvpnet":
        from camim.models.hvpnet import HVPNeT

        return HVPNeT
    raise CamimError(f"unknown model name {name!r}; expected bert, tmr or hvpnet")


def build_model(config: dict[str, Any] | ModelConfig, labels: list[str]):
    """Build an extractor (encoders from ``from_pretrained`` or random from their configs)."""
    cfg = ModelConfig.from_dict(config)
    if not labels:
        raise CamimError("build_model needs a non-empty list of label names")
    return _model_class(cfg.name)(cfg, list(labels))


def load_model(directory: str | Path):
    """Load a model saved by ``save_pretrained``: same modules, same weights, same logits."""
    from safetensors.torch import load_model as load_safetensors
    from transformers import AutoConfig

    from camim.models.encoders import load_tokenizer

    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise CamimError(f"{cfg_path}: not found (not a camim model folder)")
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CamimError(f"{cfg_path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if "labels" not in data:
        raise CamimError(f"{cfg_path}: no 'labels' entry")
    cfg = ModelConfig.from_dict(data)
    enc_dir = directory / "encoders"
    encoder_configs = {}
    if enc_dir.is_dir():
        for sub in sorted(enc_dir.iterdir()):
            encoder_configs[sub.name] = AutoConfig.from_pretrained(sub)
    tokenizer = load_tokenizer(str(directory))
    model = _model_class(cfg.name)(cfg, data["labels"], tokenizer=tokenizer, encoder_configs=encoder_configs)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise CamimError(f"{weights}: not found")
    try:
        load_safetensors(model, str(weights), strict=True)
    except RuntimeError as exc:
        raise CamimError(f"{weights}: weights do not match the model: {exc}") from exc
    model.eval()
    return model


def __getattr__(name: str):  # lazy access to the extractor classes
    if name in ("BertRE", "TMR", "HVPNeT"):
        return _model_class({"BertRE": "bert", "TMR": "tmr", "HVPNeT": "hvpnet"}[name])
    raise AttributeError(name)


__all__ = ["FidelityConfig", "ModelConfig", "build_model", "load_model"]

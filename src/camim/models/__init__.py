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
            try:
                encoder_configs[sub.name] = AutoConfig.from_pretrained(sub)
            except Exception as exc:  # noqa: BLE001 - a corrupt or foreign config.json: one line naming it
                raise CamimError(
                    f"{sub / 'config.json'}: cannot read the encoder config: {_first_line(exc)}"
                ) from exc
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise CamimError(f"{weights}: not found")
    try:
        tokenizer = load_tokenizer(str(directory))
    except CamimError as exc:
        raise CamimError(
            f"{_bad_tokenizer_file(directory)}: cannot load the tokenizer: {_first_line(exc.__cause__ or exc)}"
        ) from exc
    model = _model_class(cfg.name)(cfg, data["labels"], tokenizer=tokenizer, encoder_configs=encoder_configs)
    try:
        load_safetensors(model, str(weights), strict=True)
    except RuntimeError as exc:
        raise CamimError(f"{weights}: weights do not match the model: {_first_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - SafetensorError (truncated/corrupt file), OSError ...
        raise CamimError(f"{weights}: not a readable safetensors file ({_first_line(exc)})") from exc
    model.eval()
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _bad_tokenizer_file(directory: Path) -> Path:
    """The first tokenizer file of ``directory`` that is not valid UTF-8 / JSON, else the folder itself."""
    for name in _TOKENIZER_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return path
    return directory


def __getattr__(name: str):  # lazy access to the extractor classes
    if name in ("BertRE", "TMR", "HVPNeT"):
        return _model_class({"BertRE": "bert", "TMR": "tmr", "HVPNeT": "hvpnet"}[name])
    raise AttributeError(name)


__all__ = ["FidelityConfig", "ModelConfig", "build_model", "load_model"]

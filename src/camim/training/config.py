"""Typed run configuration, YAML presets and ``--set key=value`` overrides.

A run config has four typed sections (:class:`DataConfig`, :class:`OptimConfig`, :class:`TrainerConfig`,
:class:`OfflineConfig`) and a ``model`` mapping that is passed unchanged to ``camim.models.build_model``.
Presets live in ``camim/configs/presets/<name>.yaml``; a preset may name a ``base`` preset that it updates
(deep merge). ``load_config("tmr-cam-mi", ["optim.lr=1e-5", "model.alpha=0.3"])`` returns a
:class:`RunConfig`; overrides use dotted keys and YAML-typed values.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from camim.errors import CamimError
from camim.speed.config import SpeedConfig

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "presets"
CONFIG_DIR = PRESET_DIR.parent


@dataclass
class DataConfig:
    """Where the data is and which of it to load (modalities come from the model's ``required_modalities``)."""

    data_dir: str | None = None
    caption_source: str | None = "minicpm"  # a released source name, a captions file, or null for none
    max_objects: int = 3
    on_error: str = "raise"  # "raise" | "skip" (bad sample lines)
    on_missing: str = "raise"  # "raise" | "fallback" (missing captions/scores/images, counted)
    num_workers: int = 0
    train_limit: int | None = None  # use only the first N samples of each split (smoke runs, tests)
    eval_limit: int | None = None
    # decoded-image cache (camim.speed): one memmap folder per split, <image_cache_dir>/<split>, built on first
    # use and reused after; batches are bit-identical to decoding the images each step (docs/speed.md)
    image_cache_dir: str | None = None


@dataclass
class OptimConfig:
    """AdamW + linear warmup/decay; the released trainer's quirks are named options."""

    lr: float = 2e-5
    batch_size: int = 16
    eval_batch_size: int | None = None  # default: batch_size (as released)
    epochs: int = 8
    warmup_steps: int | None = 300  # fixed warmup (released TMR/CAMIM trainer)
    warmup_ratio: float | None = None  # fraction of all steps (paper §4.2: 0.1); set warmup_steps: null
    weight_decay: float = 0.01  # not on biases / LayerNorm
    adam_eps: float = 1e-6
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_bias_correction: bool = False  # released: transformers.AdamW(correct_bias=False)
    bootstrap_train: bool = True  # released: train split redrawn WITH replacement (random.choices, ratio 1.0)
    eval_begin_epoch: int = 1  # validate (and select) from this 1-based epoch on (HVPNeT setting: 8)
    max_grad_norm: float | None = None  # released: no clipping
    seed: int = 666


@dataclass
class TrainerConfig:
    """Settings handed to ``lightning.Trainer`` (devices, precision, strategy) and checkpointing."""

    accelerator: str = "auto"
    devices: Any = 1  # int, list or "auto"; >1 GPUs use DDP
    strategy: str = "auto"
    precision: str = "32-true"  # e.g. "bf16-mixed" on GPUs
    deterministic: Any = (
        "warn"  # deterministic kernels ("warn": where a CUDA op has none, warn instead of fail)
    )
    log_every_n_steps: int = 10
    max_steps: int = -1  # cap on optimiser steps (smoke runs); -1 = epochs decide
    progress_bar: bool = True
    # experiment trackers (camim.training.loggers): csv, tensorboard, mlflow, wandb; each gets the resolved
    # config as hyperparameters, the per-epoch metrics and the final test metrics
    loggers: list[str] = field(default_factory=lambda: ["csv"])


@dataclass
class OfflineConfig:
    """Offline presets: a WordPiece vocabulary built from the training split's text and captions, and a
    compact BERT config with random weights, written to a folder the model config points to. The defaults
    are the ``offline-*`` presets' sizes."""

    enabled: bool = False
    # captions added to the vocabulary corpus (the same for every offline preset)
    vocab_caption_source: str | None = "minicpm"
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 80
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    encoder_dir: str | None = None  # default: <output>/offline_encoder
    model_keys: list[str] = field(default_factory=lambda: ["text_encoder"])  # model keys set to encoder_dir


@dataclass
class RunConfig:
    """A complete, resolved training run."""

    name: str = "custom"
    description: str = ""
    paper_row: str | None = None  # the Table 1 row this reproduces, if any
    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["optim"]["adam_betas"] = list(self.optim.adam_betas)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS = {
    "data": DataConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "offline": OfflineConfig,
    "speed": SpeedConfig,
}


def list_presets() -> list[str]:
    """Names of the packaged presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise CamimError(f"{path}{'' if line is None else f':{line + 1}'}: invalid YAML: {exc}") from None
    except OSError as exc:
        raise CamimError(f"{path}: cannot read config: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CamimError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict, update: dict) -> dict:
    """Recursive dict update (``update`` wins); neither input is modified."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _resolve_raw(preset_or_yaml: str | Path, _seen: tuple = ()) -> dict:
    """The raw mapping of a preset name or YAML file, with its ``base`` chain merged in."""
    text = str(preset_or_yaml)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = PRESET_DIR / f"{text}.yaml"
        if not path.is_file():
            raise CamimError(f"unknown preset or config file {text!r}; presets: {', '.join(list_presets())}")
    if path.resolve() in _seen:
        raise CamimError(f"{path}: circular 'base' chain")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is not None:
        raw = deep_merge(_resolve_raw(base, (*_seen, path.resolve())), raw)
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-5"`` -> (["optim", "lr"], 3e-05); the value is parsed as YAML."""
    if "=" not in item:
        raise CamimError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise CamimError(f"override {item!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, float) or (isinstance(parsed, str) and _looks_like_float(parsed)):
        parsed = float(parsed)  # YAML 1.1 reads "3e-5" as a string
    return keys, parsed


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return any(c in s for c in ".eE") and s.strip().lower() not in {"nan", "inf", "-inf", ".inf"}


def apply_overrides(raw: dict, overrides: list[str] | dict | None) -> dict:
    """Apply dotted ``key=value`` strings (or a ``{dotted_key: value}`` dict) to a raw config mapping."""
    out = copy.deepcopy(raw)
    if not overrides:
        return out
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for keys, value in items:
        if isinstance(keys, str):
            keys = keys.split(".")
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return out


def _coerce(cls: type, values: dict, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and coercing numbers."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CamimError(
            f"unknown key(s) in {where}: {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for k, v in values.items():
        t = str(hints[k])
        if v is not None and "float" in t and "int" not in t and isinstance(v, (int, str)):
            try:
                v = float(v)
            except ValueError:
                raise CamimError(f"{where}.{k}: expected a number, got {v!r}") from None
        if v is not None and t.startswith("int") and isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                raise CamimError(f"{where}.{k}: expected an integer, got {v!r}") from None
        if k == "adam_betas" and v is not None:
            v = tuple(float(b) for b in v)
        kwargs[k] = v
    return cls(**kwargs)


def config_from_dict(raw: dict) -> RunConfig:
    """Validate a raw mapping into a :class:`RunConfig`."""
    raw = dict(raw)
    raw.pop("base", None)
    top = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise CamimError(
            f"unknown top-level config key(s): {', '.join(unknown)}; known: {', '.join(sorted(top))}"
        )
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        if k in _SECTIONS:
            if v is not None and not isinstance(v, dict):
                raise CamimError(f"config section {k!r} must be a mapping")
            kwargs[k] = _coerce(_SECTIONS[k], v or {}, k)
        elif k == "model":
            if not isinstance(v, dict) or "name" not in v:
                raise CamimError(
                    "config section 'model' must be a mapping with a 'name' (bert | tmr | hvpnet)"
                )
            kwargs[k] = dict(v)
        else:
            kwargs[k] = v
    cfg = RunConfig(**kwargs)
    validate_config(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Reject inconsistent settings with a message naming the key."""
    o = cfg.optim
    if o.warmup_steps is not None and o.warmup_ratio is not None:
        raise CamimError("set either optim.warmup_steps or optim.warmup_ratio (the other to null), not both")
    if o.warmup_ratio is not None and not 0.0 <= o.warmup_ratio < 1.0:
        raise CamimError(f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}")
    for key in ("lr", "batch_size", "epochs"):
        if getattr(o, key) is None or getattr(o, key) <= 0:
            raise CamimError(f"optim.{key} must be positive, got {getattr(o, key)}")
    if o.eval_begin_epoch < 1:
        raise CamimError("optim.eval_begin_epoch is 1-based and must be >= 1")
    if o.eval_begin_epoch > o.epochs:
        raise CamimError(f"optim.eval_begin_epoch {o.eval_begin_epoch} is after the last epoch {o.epochs}")
    if cfg.data.on_error not in ("raise", "skip"):
        raise CamimError(f"data.on_error must be 'raise' or 'skip', got {cfg.data.on_error!r}")
    from camim.training.loggers import check_logger_names

    check_logger_names(cfg.trainer.loggers)
    if cfg.data.on_missing not in ("raise", "fallback"):
        raise CamimError(f"data.on_missing must be 'raise' or 'fallback', got {cfg.data.on_missing!r}")
    if cfg.speed.frozen_visual and not cfg.data.image_cache_dir:
        raise CamimError(
            "speed.frozen_visual needs data.image_cache_dir (features are computed per cached image)"
        )


def load_config(preset_or_yaml: str | Path, overrides: list[str] | dict | None = None) -> RunConfig:
    """Load a preset name (``tmr-cam-mi``) or a YAML file, apply overrides, and validate."""
    raw = _resolve_raw(preset_or_yaml)
    return config_from_dict(apply_overrides(raw, overrides))


def load_grids() -> dict:
    """The experiment grids (Table 1, Table 2, Fig. 4) from ``camim/configs/grids.yaml``."""
    return _read_yaml(CONFIG_DIR / "grids.yaml")


def load_paper_results() -> dict:
    """The paper's reported numbers (Table 1, Table 2, Fig. 4) from ``camim/configs/paper_results.yaml``."""
    return _read_yaml(CONFIG_DIR / "paper_results.yaml")

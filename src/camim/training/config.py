"""Typed run configuration, YAML presets and ``--set key=value`` overrides.

A run config has a ``model`` section (:class:`camim.models.ModelConfig`) and five typed sections
(:class:`DataConfig`, :class:`OptimConfig`, :class:`TrainerConfig`, :class:`OfflineConfig`,
:class:`SpeedConfig`). Presets live in ``camim/configs/presets/<name>.yaml``; a preset may name a ``base``
preset that it updates (deep merge). ``load_config("tmr-cam-mi", ["optim.lr=1e-5", "model.mi_alpha=0.3"])``
returns a :class:`RunConfig`; overrides use dotted keys and YAML values. Every section is parsed by
:func:`camim.typed.from_mapping` (one strict loader: declared types, unknown keys refused, the dotted key in
every error) and checked by :func:`validate_config`, before anything is written. ``RunConfig.to_yaml()`` writes
every setting, and :func:`load_config` reads it back to an equal object.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from camim.errors import CamimError
from camim.io import check_encoding
from camim.models.config import ModelConfig, unsupported_switches_off
from camim.models.registry import model_names
from camim.pretraining.offline import OfflineConfig
from camim.speed.config import SpeedConfig
from camim.trainer import Precision
from camim.typed import (
    apply_overrides,
    deep_merge,
    describe,
    differing_keys,
    dump_yaml,
    field_types,
    from_mapping,
    parse,
    read_yaml_mapping,
    to_plain,
)

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "presets"
CONFIG_DIR = PRESET_DIR.parent

#: settings that do not change what a run computes: a run folder may be resumed or reused with others
RUN_NEUTRAL_KEYS = (
    "trainer.progress_bar",
    "trainer.loggers",
    "data.num_workers",
    "speed.compile_cache_dir",
    "speed.keep_freed_memory",
)

#: keys that moved, old dotted key -> new one (an old key in a YAML file or --set is refused naming the new)
MOVED_KEYS = {"data.max_objects": "model.max_objects"}


@dataclass
class DataConfig:
    """Where the data is and which of it to load (modalities come from the model's ``required_modalities``)."""

    data_dir: str | None = None
    caption_source: str | None = "minicpm"  # a released source name, a captions file, or null for none
    # a control: each image's caption is given to another image of its split (a derangement drawn with this
    # seed, train/val/test alike), to measure what the captions' content is worth; null: off
    caption_shuffle_seed: int | None = None
    # (object crops per sample: model.max_objects, the model's setting, read from there)
    on_error: Literal["raise", "skip"] = "raise"  # bad sample lines
    # fallback: missing captions, scores, phrases, object entries and crops become the documented fallbacks,
    # counted; the original/generated images a model needs have none (refused before training)
    on_missing: Literal["raise", "fallback"] = "raise"
    # the label excluded from micro P/R/F1; null: rel2id's / the samples' "None", "none", "NA", "no_relation" ...
    negative_label: str | None = None
    # of the text files (strict; a UTF-8 BOM is accepted); e.g. latin-1 for legacy files
    encoding: str = "utf-8"
    num_workers: int = 0
    train_limit: int | None = None  # use only the first N samples of each split (smoke runs, tests)
    eval_limit: int | None = None
    # decoded-image cache (camim.speed): one memmap folder per split, <image_cache_dir>/<split>, built on first
    # use and reused after; batches are bit-identical to decoding the images each step (docs/speed.md)
    image_cache_dir: str | None = None
    # cached batches keep their pixels uint8 until they are on the device, where the float conversion runs
    # (4x less to move from loader workers to the GPU; same float tensors); null: on for a run on a GPU
    image_cache_uint8: bool | None = None


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
    # the same AdamW update in a few multi-tensor kernels (false: the released per-parameter loop, ~10 kernels
    # per parameter: about half of the released step's time on a GPU; docs/speed.md)
    multi_tensor: bool = True
    bootstrap_train: bool = True  # released: train split redrawn WITH replacement (random.choices, ratio 1.0)
    eval_begin_epoch: int = 1  # validate (and select) from this 1-based epoch on (HVPNeT setting: 8)
    max_grad_norm: float | None = None  # released: no clipping
    # checkpoint selection: "val_f1" (best dev micro-F1, released) or "train_loss" (lowest epoch training loss;
    # for data without a val split: no validation runs, metrics.json has "val": null)
    select_on: Literal["val_f1", "train_loss"] = "val_f1"
    seed: int = 666
    # released HVPNeT trainer (reference §5.1; docs/training.md), each false / "last" in the hvpnet presets:
    no_decay_split: bool = True  # False: weight decay on every parameter, biases and LayerNorm included
    train_classifier: bool = True  # False: the classifier Linear stays out of the optimiser (random init)
    train_vision_backbone: bool = True  # False: the ResNet stays out of the optimiser (BN statistics update)
    # dev F1 equal to the best: "first" keeps the earlier epoch (released TMR `>`), "last" the later (`>=`)
    selection_tie: Literal["first", "last"] = "first"
    warmup_unrounded: bool = False  # True: warmup_ratio * total steps as a float, not rounded down


@dataclass
class TrainerConfig:
    """Settings handed to ``lightning.Trainer`` (devices, precision, strategy) and checkpointing."""

    accelerator: str = "auto"
    devices: int | list[int] | Literal["auto"] = 1  # a count, device indices or "auto"; >1 GPUs use DDP
    strategy: str = "auto"
    precision: Precision = "32-true"  # e.g. "bf16-mixed" on GPUs
    # deterministic kernels ("warn": where a CUDA op has none, warn instead of fail; null: Lightning's default)
    deterministic: bool | Literal["warn"] | None = "warn"
    log_every_n_steps: int = 10
    max_steps: int = -1  # cap on optimiser steps (smoke runs); -1 = epochs decide
    progress_bar: bool = True
    # experiment trackers (camim.training.loggers): csv, tensorboard, mlflow, wandb; each gets the resolved
    # config as hyperparameters, the per-epoch metrics and the final test metrics
    loggers: list[str] = field(default_factory=lambda: ["csv"])


@dataclass
class RunConfig:
    """A complete, resolved training run."""

    name: str = "custom"
    description: str = ""
    paper_row: str | None = None  # the Table 1 row this reproduces, if any
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def to_dict(self) -> dict:
        """Every setting as plain dicts, lists and scalars (what ``config.yaml`` holds)."""
        return to_plain(self)

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


def list_presets() -> list[str]:
    """Names of the packaged presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


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
    raw = read_yaml_mapping(path)
    base = raw.pop("base", None)
    if base is not None:
        raw = deep_merge(_resolve_raw(base, (*_seen, path.resolve())), raw)
    return raw


def config_from_dict(raw: dict, *, to_train: bool = True) -> RunConfig:
    """Parse a raw mapping into a :class:`RunConfig` (every section by its declared types) and validate it;
    ``to_train=False`` (a run folder's ``config.yaml`` read back) leaves out what only training needs."""
    raw = dict(raw)
    raw.pop("base", None)
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise CamimError(f"{old}: moved to {new}; set {new} instead")
    model = raw.get("model")
    if not isinstance(model, dict) or "name" not in model:
        raise CamimError(
            f"config section 'model' must be a mapping with a 'name' ({' | '.join(model_names())})"
        )
    cfg = from_mapping(RunConfig, raw)
    validate_config(cfg, to_train=to_train)
    return cfg


#: epoch ``e`` resets the global RNGs to ``seed * EPOCH_SEED_STRIDE + e`` (:func:`epoch_seed`)
EPOCH_SEED_STRIDE = 1000


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the global RNGs in 0-based ``epoch`` (``MRELightningModule`` resets them at its first batch)."""
    return seed * EPOCH_SEED_STRIDE + epoch


def check_seed(seed: int, epochs: int) -> None:
    """``optim.seed`` whose every epoch seed ``seed_everything`` takes: Lightning >= 2.5.3 raises a ValueError
    (a traceback at the first batch) for one outside [0, 2**32 - 1], and before that it seeded 0 instead."""
    from lightning.fabric.utilities.seed import max_seed_value, min_seed_value

    top = (max_seed_value - (epochs - 1)) // EPOCH_SEED_STRIDE
    if not min_seed_value <= seed <= top:
        raise CamimError(
            f"optim.seed must be in [{min_seed_value}, {top}] with optim.epochs {epochs} (epoch e seeds the RNGs "
            f"with seed * {EPOCH_SEED_STRIDE} + e, at most {max_seed_value}), got {seed}"
        )


def validate_config(cfg: RunConfig, *, to_train: bool = True) -> None:
    """Reject inconsistent settings with a message naming the key (types are checked by the loader).
    ``to_train=False``: not ``optim.seed``'s range, which only the epochs' ``seed_everything`` needs (a run
    trained before the check, under a Lightning that seeded 0 instead, still evaluates and compares)."""
    o = cfg.optim
    if o.warmup_steps is not None and o.warmup_ratio is not None:
        raise CamimError("set either optim.warmup_steps or optim.warmup_ratio (the other to null), not both")
    if o.warmup_ratio is not None and not 0.0 <= o.warmup_ratio < 1.0:
        raise CamimError(f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}")
    for key in ("lr", "batch_size", "epochs"):
        if getattr(o, key) <= 0:
            raise CamimError(f"optim.{key} must be positive, got {getattr(o, key)}")
    if o.eval_batch_size is not None and o.eval_batch_size <= 0:
        raise CamimError(f"optim.eval_batch_size must be positive, got {o.eval_batch_size}")
    if o.warmup_unrounded and o.warmup_ratio is None:
        raise CamimError("optim.warmup_unrounded applies to optim.warmup_ratio, which is null")
    if o.eval_begin_epoch < 1:
        raise CamimError("optim.eval_begin_epoch is 1-based and must be >= 1")
    if o.eval_begin_epoch > o.epochs:
        raise CamimError(f"optim.eval_begin_epoch {o.eval_begin_epoch} is after the last epoch {o.epochs}")
    if to_train:
        check_seed(o.seed, o.epochs)
    try:
        check_encoding(cfg.data.encoding)
    except CamimError as exc:
        raise CamimError(f"data.encoding: {exc}") from None
    off = cfg.offline
    model_types = field_types(ModelConfig)
    for key in off.model_keys:
        if key not in model_types:
            raise CamimError(f"offline.model_keys: {key!r} is not a model key (e.g. text_encoder)")
        try:
            parse("folder", model_types[key])
        except CamimError:
            raise CamimError(
                f"offline.model_keys: model.{key} takes {describe(model_types[key])}, not a folder"
            ) from None
    if off.pretrained_encoder and not off.enabled:
        raise CamimError("offline.pretrained_encoder applies to offline presets (offline.enabled: true)")
    if off.enabled and off.pretrained_encoder and not cfg.model.text_encoder_pretrained:
        raise CamimError(
            "offline.pretrained_encoder needs model.text_encoder_pretrained: true (else its weights are unused)"
        )
    if cfg.model.text_encoder is None and not (off.enabled and "text_encoder" in off.model_keys):
        raise CamimError("model.text_encoder is null: name a text encoder (hub id or folder)")
    from camim.training.loggers import check_logger_names

    check_logger_names(cfg.trainer.loggers)
    sp = cfg.speed
    if sp.frozen_visual and not cfg.data.image_cache_dir:
        raise CamimError(
            "speed.frozen_visual needs data.image_cache_dir (features are computed per cached image)"
        )


def load_config(preset_or_yaml: str | Path, overrides: list[str] | dict | None = None) -> RunConfig:
    """Load a preset name (``tmr-cam-mi``) or a YAML file (a run folder's ``config.yaml`` included), apply
    overrides, parse and validate."""
    raw = _resolve_raw(preset_or_yaml)
    cfg = config_from_dict(apply_overrides(raw, overrides))
    path = Path(preset_or_yaml)
    return _anchored(cfg, path.parent) if path.is_file() else cfg


def _anchored(cfg: RunConfig, folder: Path) -> RunConfig:
    """An offline run's encoder folder in its model keys (``offline.model_keys``), relative in the
    ``config.yaml`` of a run folder (camim.runs writes its own contents so), made absolute against ``folder``:
    the run reads as fully resolved wherever the folder now is. Absolute values, and names that are no folder
    there (a hub id), are left as they are."""
    if not cfg.offline.enabled:
        return cfg
    model = cfg.model
    for key in cfg.offline.model_keys:
        value = getattr(model, key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (folder / value).is_dir():
            model = replace(model, **{key: str((folder / value).resolve())})
    return replace(cfg, model=model)


def load_run_config(path: str | Path) -> RunConfig:
    """A run folder's ``config.yaml``; errors name the file. One written before ``data.max_objects`` moved
    to ``model.max_objects`` is read when the two agreed (the data key is dropped); one whose text-only
    model has ``cam`` / ``mi`` on, from before extractors declared their capabilities, is read with them off
    (``unsupported_switches_off``: logged); one whose ``optim.seed`` is out of today's training range is read
    (``to_train=False``: evaluating, predicting and comparing it do not seed)."""
    raw = read_yaml_mapping(Path(path))
    data, model = raw.get("data"), raw.get("model")
    if isinstance(data, dict) and isinstance(model, dict) and "max_objects" in data:
        if data["max_objects"] == model.get("max_objects", ModelConfig().max_objects):
            del data["max_objects"]
    if isinstance(model, dict):
        raw["model"] = unsupported_switches_off(model, str(path))
    try:
        return _anchored(config_from_dict(raw, to_train=False), Path(path).parent)
    except CamimError as exc:
        raise CamimError(f"{path}: {exc}") from None


def config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """The dotted keys whose values differ between two run configs, settings that do not change what a run
    computes (:data:`RUN_NEUTRAL_KEYS`) left out."""
    return differing_keys(a, b, ignore=RUN_NEUTRAL_KEYS)


def load_paper_results() -> dict:
    """The paper's reported numbers (Table 1, Table 2, Fig. 4) from ``camim/configs/paper_results.yaml``."""
    return read_yaml_mapping(CONFIG_DIR / "paper_results.yaml")

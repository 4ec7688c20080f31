"""Python API of training and evaluation: :func:`train_run` and :func:`evaluate_run`.

``train_run`` writes, into its output folder (Contract 3): ``config.yaml`` (the full resolved config),
``checkpoints/`` (Lightning: ``best-*.ckpt`` on dev micro-F1 and ``last.ckpt``), ``logs/metrics.csv`` (and
the other ``trainer.loggers``: ``tensorboard/``, ``mlruns/``, ``wandb/``),
``metrics.json``, ``predictions.jsonl``, ``model/`` (``save_pretrained``: safetensors + config + labels +
tokenizer, loadable without camim.training) and ``report.md`` with PNG plots. Calling it again on a folder
that holds ``checkpoints/last.ckpt`` resumes that run. The whole config is parsed and validated, and the
folder checked (a different run, or a finished one whose checkpoints are gone, is refused unless
``overwrite``), before anything is written.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from camim.errors import CamimError
from camim.io import atomic_write_text, read_json
from camim.training.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainerConfig,
    apply_overrides,
    config_differences,
    config_from_dict,
    load_config,
    load_paper_results,
    load_run_config,
)
from camim.training.datamodule import MNREDataModule
from camim.training.loggers import LogRunConfig, build_loggers, log_test_metrics
from camim.training.module import MRELightningModule
from camim.training.progress import throttled_progress_bar
from camim.training.selection import DevCheckpoint

log = logging.getLogger(__name__)
_RUN_DEFAULT = object()  # evaluate_run: take the caption source from the run's config.yaml


@dataclass
class RunResult:
    """What :func:`train_run` produced: ``metrics`` as in ``metrics.json``; the run and model folders."""

    metrics: dict
    output_dir: Path
    model_dir: Path
    primary: bool = True  # False on the non-zero DDP ranks, which write nothing and have no metrics


#: what train_run writes into a run folder (``--overwrite`` removes these, and nothing else, first)
RUN_OUTPUTS = (
    "config.yaml",
    "checkpoints",
    "logs",
    "metrics.json",
    "predictions.jsonl",
    "model",
    "report.md",
    "curves.png",
    "confusion.png",
    "per_relation_f1.png",
)


def _resolve(config: RunConfig | str | Path | dict, overrides) -> RunConfig:
    if isinstance(config, RunConfig):
        if not overrides:
            return config
        config = config.to_dict()
    if isinstance(config, dict):
        return config_from_dict(apply_overrides(config, overrides))
    return load_config(config, overrides)


def resolve_run_config(
    config: RunConfig | str | Path | dict,
    overrides: list[str] | dict | None,
    data_dir: str | Path | None,
    output_dir: str | Path,
) -> RunConfig:
    """The config a run in ``output_dir`` trains with, exactly as its ``config.yaml`` will hold it: the preset
    (YAML, mapping or RunConfig) with ``overrides``, ``data.data_dir`` from ``data_dir``, and for offline
    presets the encoder folder (``offline.encoder_dir``, default ``<output_dir>/offline_encoder``) in the model
    keys ``offline.model_keys``. Parsed and validated; nothing is read from or written to ``output_dir``."""
    cfg = _resolve(config, overrides)
    run: dict[str, str] = {}
    if data_dir is not None:
        run["data.data_dir"] = str(data_dir)
    if cfg.offline.enabled and cfg.model.text_encoder_pretrained and not cfg.offline.pretrained_encoder:
        raise CamimError(
            "offline.pretrained_encoder is null: this preset starts from a `camim pretrain` folder "
            "(--set offline.pretrained_encoder=ENC); the offline encoder folder has no weights"
        )
    if cfg.offline.enabled:
        folder = Path(_offline_folder(cfg, Path(output_dir))).resolve()
        run.update({f"model.{key}": str(folder) for key in cfg.offline.model_keys})
    if run:
        cfg = config_from_dict(apply_overrides(cfg.to_dict(), run))
    if not cfg.data.data_dir:
        raise CamimError("no data folder: pass --data-dir (or set data.data_dir)")
    return cfg


def _offline_folder(cfg: RunConfig, out: Path) -> Path:
    """The encoder folder of an offline run: ``offline.pretrained_encoder`` (a ``camim pretrain`` folder) when
    set, else ``offline.encoder_dir`` (default ``<output>/offline_encoder``)."""
    return Path(cfg.offline.pretrained_encoder or cfg.offline.encoder_dir or out / "offline_encoder")


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings(
        "ignore", message=".*callbacks used to create the checkpoint need to be provided.*"
    )


def _trainer(
    cfg: RunConfig, out: Path, callbacks: list, logger: Any = False, device: torch.device | None = None
) -> L.Trainer:
    """The run's ``lightning.Trainer``; ``device`` pins it to that one device (single-process strategy)."""
    t = cfg.trainer
    accelerator, devices, strategy = t.accelerator, t.devices, t.strategy
    if t.progress_bar and cfg.speed.fast:
        callbacks = [*callbacks, throttled_progress_bar(t.log_every_n_steps)]
    if device is not None:
        accelerator = "cpu" if device.type == "cpu" else t.accelerator
        devices = 1 if device.index is None else [device.index]
        strategy = "auto"
    return L.Trainer(
        default_root_dir=str(out),
        max_epochs=cfg.optim.epochs,
        max_steps=t.max_steps,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=t.precision,
        deterministic=t.deterministic,
        gradient_clip_val=cfg.optim.max_grad_norm,
        log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=0 if cfg.optim.select_on == "train_loss" else None,  # no val split to select on
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        callbacks=callbacks,
        logger=logger,
    )


def _labels(cfg: RunConfig):
    from camim.data import default_labels

    return default_labels(cfg.data.data_dir, negative=cfg.data.negative_label, encoding=cfg.data.encoding)


def negative_label_info(cfg: RunConfig, labels) -> dict:
    """``{"name", "origin"}`` of the label excluded from micro P/R/F1 (metrics.json, report.md)."""
    from camim.data import DataLayout
    from camim.data.inspection import label_source
    from camim.data.labels import negative_label_origin

    source = label_source(Path(cfg.data.data_dir), DataLayout())
    return {
        "name": labels.negative_name,
        "origin": negative_label_origin(labels.negative_name, cfg.data.negative_label, source),
    }


def _prediction_records(records: list[dict], names: list[str], ds) -> list[dict]:
    """``predictions.jsonl`` rows: id (index in the split file), img_id, gold, predicted, probabilities."""
    rows = []
    for r in sorted(records, key=lambda r: (r["index"] is None, r["index"])):
        idx = r["index"]
        ex = ds.examples[idx] if idx is not None and 0 <= idx < len(ds.examples) else None
        rows.append(
            {
                "id": idx,
                "img_id": ex.img_id if ex is not None else None,
                "gold": names[r["gold"]] if r["gold"] is not None else None,
                "predicted": names[r["pred"]],
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, r["probs"].tolist())},
            }
        )
    return rows


def _prediction_lines(records: list[dict], names: list[str], ds) -> list[str]:
    return [json.dumps(row) for row in _prediction_records(records, names, ds)]


def run_differences(out: Path, cfg: RunConfig) -> list[str]:
    """The dotted keys in which the run that ``out`` holds (its ``config.yaml``) differs from ``cfg``; an
    error if it has no readable config.yaml."""
    path = out / "config.yaml"
    if not path.is_file():
        raise CamimError(f"{out}: holds a run without config.yaml; use a new output folder")
    return config_differences(load_run_config(path), cfg)


def different_run_message(out: Path, diffs: list[str]) -> str:
    """``<out>: holds a different run (its config.yaml differs in optim.lr, model.mi)``."""
    shown = ", ".join(diffs[:8]) + (f" and {len(diffs) - 8} more" if len(diffs) > 8 else "")
    return f"{out}: holds a different run (its config.yaml differs in {shown})"


def _conflict(out: Path, cfg: RunConfig) -> str | None:
    """Why training ``cfg`` into ``out`` would mix two runs, or None: ``out`` holds a run (resumable:
    ``checkpoints/last.ckpt``; finished: ``metrics.json``) with another config, or a finished run whose
    checkpoints are gone (training again would replace its results). Reads only."""
    finished = (out / "metrics.json").is_file()
    resumable = (out / "checkpoints" / "last.ckpt").is_file()
    if not (finished or resumable):
        return None
    if not (out / "config.yaml").is_file():
        return f"{out}: holds a run without config.yaml"
    diffs = run_differences(out, cfg)
    if diffs:
        return different_run_message(out, diffs)
    if finished and not resumable:
        return (
            f"{out}: holds a finished run whose checkpoints/ are gone; training again would replace its "
            "metrics.json, predictions.jsonl and model/"
        )
    return None


def _clear_run_outputs(out: Path) -> None:
    """``--overwrite``: remove what an earlier run wrote (:data:`RUN_OUTPUTS`) so that this one starts afresh.
    Only the first process of a DDP run does it (the others start once training has begun)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def train_run(
    config: RunConfig | str | Path | dict,
    data_dir: str | Path | None,
    output_dir: str | Path,
    overrides: list[str] | dict | None = None,
    callbacks: list | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Train with Lightning, select the best dev micro-F1 checkpoint, test it once, write the run folder.

    ``config`` is a preset name, a YAML path, a mapping or a :class:`RunConfig`; ``overrides`` are dotted
    ``key=value`` strings; ``callbacks`` are extra Lightning callbacks for the fit. Resumes automatically
    from ``output_dir/checkpoints/last.ckpt``. A folder holding another run, or a finished run whose
    checkpoints are gone, is refused; with ``overwrite`` that run's outputs are removed and training starts
    afresh (a folder that would not be refused is resumed as usual).
    """
    from camim.models import build_model

    _quiet_lightning()
    cfg = resolve_run_config(config, overrides, data_dir, output_dir)  # everything parsed and validated
    data_dir = cfg.data.data_dir
    out = Path(output_dir)
    labels = _labels(cfg)
    conflict = _conflict(out, cfg)
    if conflict and not overwrite:
        raise CamimError(f"{conflict}; use a new --output folder, or --overwrite to replace that run")
    # nothing was written so far; from here on the run folder is ours
    out.mkdir(parents=True, exist_ok=True)
    if conflict:
        _clear_run_outputs(out)
    if cfg.offline.enabled and cfg.offline.pretrained_encoder:
        from camim.training.pretrain import check_pretrained_folder

        check_pretrained_folder(cfg.offline.pretrained_encoder)
    elif cfg.offline.enabled:
        from camim.training.offline import build_offline_encoder

        folder = _offline_folder(cfg, out)
        build_offline_encoder(
            cfg.offline,
            data_dir,
            folder,
            limit=cfg.data.train_limit,
            require_captions=cfg.data.caption_source is not None,
            encoding=cfg.data.encoding,
            on_error=cfg.data.on_error,
        )
    (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")

    L.seed_everything(cfg.optim.seed, workers=True, verbose=False)
    model = build_model(cfg.model, labels=labels.names)
    module = MRELightningModule(model, cfg, labels.negative_id)
    dm = MNREDataModule(cfg, data_dir, labels, model.required_modalities, model.processor)

    ckpt_dir = out / "checkpoints"
    on_train_loss = cfg.optim.select_on == "train_loss"
    common = {"dirpath": str(ckpt_dir), "filename": "best-epoch{epoch}", "save_last": True,
              "auto_insert_metric_name": False}  # fmt: skip
    if on_train_loss:  # no val split: the lowest epoch training loss (optim.select_on: train_loss)
        checkpoint = ModelCheckpoint(
            **common, monitor="train/loss_epoch", mode="min", save_top_k=1, save_on_train_epoch_end=True
        )
    else:  # best dev micro-F1; ties: "first" = strict improvement (released TMR `>`), "last" = HVPNeT `>=`
        checkpoint = DevCheckpoint(**common, monitor="val/f1", ties=cfg.optim.selection_tie)
    # trainer.loggers (camim.training.loggers): csv writes logs/version_<k>/ per (re)start; the report joins them
    loggers = build_loggers(cfg.trainer.loggers, out, run_name=out.name, tags={"preset": cfg.name})
    callbacks = [checkpoint, LogRunConfig(cfg.to_dict()), *(callbacks or [])]
    trainer = _trainer(cfg, out, callbacks, loggers or False)
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)

    best = checkpoint.best_model_path or (str(last) if last.is_file() else None)
    if trainer.world_size > 1:
        # DDP: the final validation and test run once, on rank 0 and one device, so that metrics.json and
        # predictions.jsonl hold every sample exactly once (DistributedSampler pads a split to a multiple
        # of the world size, repeating samples). The other ranks are done once the group is torn down.
        best = trainer.strategy.broadcast(best)
        primary, root = trainer.is_global_zero, trainer.strategy.root_device
        trainer.strategy.barrier("camim-fit-done")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if not primary:
            return RunResult(metrics={}, output_dir=out, model_dir=out / "model", primary=False)
        eval_trainer = _trainer(cfg, out, [], False, device=root)
    else:
        eval_trainer = _trainer(cfg, out, [], False)
    val = None
    if not on_train_loss:
        eval_trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)
        val = dict(module.eval_result)
    eval_trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)
    test = dict(module.eval_result)

    metrics = {
        "val": val,
        "test": test,
        "best_checkpoint": Path(best).name if best else None,
        "best_epoch": _epoch_of(best),
        "selected_on": cfg.optim.select_on,
        "global_step": int(trainer.global_step),
        "negative_label": negative_label_info(cfg, labels),
        "notes": _run_notes(cfg, out),
        "data_report": {k: v for k, v in dm.data_report().items() if v},
        "processor_report": dict(getattr(model.processor, "report", {}) or {}),
    }
    if module.speed is not None:  # graph captures, eager fallbacks, compiled regions (camim.speed)
        metrics["speed"] = module.speed.report()
    model_dir = out / "model"
    if eval_trainer.is_global_zero:
        log_test_metrics(loggers, test, step=int(trainer.global_step))
        from camim.models.card import CardRun

        card = CardRun.of_run(cfg.to_dict(), {"val": val, "test": test}, load_paper_results())
        model.save_pretrained(model_dir, card=card)
        test_ds = dm.dataset("test")
        lines = _prediction_lines(module.test_records, list(model.labels), test_ds)
        atomic_write_text(out / "predictions.jsonl", "\n".join(lines) + "\n")
        atomic_write_text(
            out / "metrics.json", json.dumps(metrics, indent=2) + "\n"
        )  # marks the run finished
        from camim.training.report import write_run_report

        write_run_report(out, cfg.to_dict(), metrics, list(model.labels))
    return RunResult(metrics=metrics, output_dir=out, model_dir=model_dir)


def _run_notes(cfg: RunConfig, out: Path) -> list[str]:
    """What a reader of metrics.json/report.md must know about how the run was made from this data."""
    notes = []
    if cfg.offline.enabled:
        folder = _offline_folder(cfg, out)
        stamp = folder / "camim_offline.json"
        built = read_json(stamp) if stamp.is_file() else {}
        if (
            cfg.offline.vocab_caption_source
            and isinstance(built, dict)
            and built.get("vocab_captions", "") is None
        ):
            notes.append(
                f"offline vocabulary built from the training text alone (no {cfg.offline.vocab_caption_source!r} "
                "caption file in the data folder)"
            )
    if cfg.optim.select_on == "train_loss":
        notes.append("checkpoint selected on the lowest epoch training loss (no validation; optim.select_on)")
    return notes


def _epoch_of(ckpt: str | None) -> int | None:
    """The 1-based epoch of a ``best-epoch<k>.ckpt`` name (k is Lightning's 0-based epoch)."""
    m = re.search(r"best-epoch(\d+)", Path(ckpt).name) if ckpt else None
    return int(m.group(1)) + 1 if m else None


def _run_config_for(model_dir: Path) -> tuple[Path, RunConfig | None]:
    """Accept a run folder or its ``model/`` folder; return the model folder and the run config if any."""
    if (model_dir / "model" / "config.json").is_file():
        model_dir = model_dir / "model"
    run_cfg = model_dir.parent / "config.yaml"
    return model_dir, load_run_config(run_cfg) if run_cfg.is_file() else None


def _test_split(model_dir, data_dir, split: str, caption_source, batch_size: int, limit: int | None):
    """Run a saved model's test loop on one split -> (its MRELightningModule after the loop, datamodule, model,
    label set, run config). A missing or empty split is a ``DataError`` naming it and its file."""
    from camim.data import LabelSet
    from camim.models import load_model

    _quiet_lightning()
    if split not in ("train", "val", "test"):
        raise CamimError(f"split must be train, val or test, got {split!r}")
    model_path, run_cfg = _run_config_for(Path(model_dir))
    model = load_model(model_path)
    data = run_cfg.data if run_cfg is not None else DataConfig()
    if caption_source is not _RUN_DEFAULT:
        data = replace(data, caption_source=caption_source)
    cfg = RunConfig(
        model=model.config,  # the saved model's own config (max_objects included)
        data=replace(data, eval_limit=limit),
        optim=OptimConfig(eval_batch_size=batch_size),
        trainer=TrainerConfig(progress_bar=False),
    )
    labels = LabelSet.from_names(model.labels, negative=cfg.data.negative_label)
    module = MRELightningModule(model, cfg, labels.negative_id)
    dm = MNREDataModule(
        cfg, str(data_dir), labels, model.required_modalities, model.processor, test_split=split
    )
    dm.dataset(split)  # a missing or empty split: DataError naming it and its file, before Lightning starts
    trainer = _trainer(cfg, Path(model_path), [], False)
    trainer.test(module, datamodule=dm, verbose=False)
    return module, dm, model, labels, cfg


def evaluate_run(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str = "test",
    caption_source: str | None | object = _RUN_DEFAULT,
    batch_size: int = 32,
    limit: int | None = None,
) -> dict:
    """Re-score a saved model on one split; returns ``{"accuracy", "precision", "recall", "f1"}`` (percent)
    plus ``per_relation``, ``confusion``, ``labels``, ``negative_label`` and ``num_samples``. A missing or
    empty split is a ``DataError`` naming it and its file.

    ``model_dir`` is a run folder or its ``model/``; the caption source defaults to the run's config.yaml
    (else ``minicpm``).
    """
    from camim.data.labels import negative_label_origin

    module, _, model, labels, cfg = _test_split(model_dir, data_dir, split, caption_source, batch_size, limit)
    result = dict(module.eval_result)
    result["labels"] = list(model.labels)
    result["num_samples"] = sum(sum(row) for row in result["confusion"])
    result["split"] = split
    origin = negative_label_origin(labels.negative_name, cfg.data.negative_label, "the model's labels")
    result["negative_label"] = {"name": labels.negative_name, "origin": origin}
    return result


def predict_split(
    model_dir: str | Path, data_dir: str | Path, split: str = "test", limit: int | None = None
) -> list[dict]:
    """Per-sample predictions of a saved run on one split (its own caption source and data settings), as the
    rows of ``predictions.jsonl``."""
    module, dm, model, _, _ = _test_split(model_dir, data_dir, split, _RUN_DEFAULT, 32, limit)
    return _prediction_records(module.test_records, list(model.labels), dm.dataset(split))

"""Python API of training and evaluation: :func:`train_run` and :func:`evaluate_run`.

``train_run`` writes a run folder (Contract 3, :class:`camim.runs.RunFolder`): ``config.yaml`` (the full resolved
config), ``checkpoints/`` (Lightning: ``best-*.ckpt`` on dev micro-F1 and ``last.ckpt``), ``logs/metrics.csv``
(and the other ``trainer.loggers``: ``tensorboard/``, ``mlruns/``, ``wandb/``), ``metrics.json``,
``predictions.jsonl``, ``model/`` (``save_pretrained``: safetensors + config + labels + tokenizer, loadable
without camim.training) and ``report.md`` with PNG plots. Calling it again on a folder that holds
``checkpoints/last.ckpt`` resumes that run. The whole config is parsed and validated, and the folder checked (a
different run, or a finished one whose checkpoints are gone, is refused unless ``overwrite``), before anything is
written.
"""

from __future__ import annotations

import enum
import logging
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from camim.errors import CamimError
from camim.io import no_space_is_an_error, read_json
from camim.runs import Differences, RunFolder, prediction_row
from camim.trainer import AtomicCheckpointIO, interruptible, progress_callbacks, quiet_lightning
from camim.training.config import (
    RUN_NEUTRAL_KEYS,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainerConfig,
    config_from_dict,
    load_config,
    load_paper_results,
    load_run_config,
)
from camim.training.datamodule import MNREDataModule
from camim.training.loggers import LogRunConfig, build_loggers, log_test_metrics
from camim.training.module import MRELightningModule
from camim.training.progress import throttled_progress_bar
from camim.training.selection import DevCheckpoint, RunCheckpoint
from camim.typed import apply_overrides, differing_keys

log = logging.getLogger(__name__)


class FromRun(enum.Enum):
    """The default of an evaluation setting: what the saved run's ``config.yaml`` says."""

    CONFIG = "the run's config.yaml"


@dataclass
class RunResult:
    """What :func:`train_run` produced: ``metrics`` as in ``metrics.json``; the run and model folders."""

    metrics: dict
    output_dir: Path
    model_dir: Path
    primary: bool = True  # False on the non-zero DDP ranks, which write nothing and have no metrics

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.output_dir)


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


def _trainer(
    cfg: RunConfig, out: Path, callbacks: list, logger: Any = False, device: torch.device | None = None
) -> L.Trainer:
    """The run's ``lightning.Trainer``; ``device`` pins it to that one device (single-process strategy). With
    ``trainer.progress_bar``, Lightning's bar on a terminal, and one line per epoch in a log file
    (:func:`camim.trainer.progress_callbacks`)."""
    t = cfg.trainer
    accelerator, devices, strategy = t.accelerator, t.devices, t.strategy
    bar, lines = progress_callbacks(
        t.progress_bar, "train/loss", None if cfg.optim.select_on == "train_loss" else "val/f1"
    )
    callbacks = [*callbacks, *lines]
    if bar and cfg.speed.fast:
        callbacks.append(throttled_progress_bar(t.log_every_n_steps))
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
        enable_progress_bar=bar,
        enable_model_summary=False,
        callbacks=callbacks,
        logger=logger,
        plugins=[AtomicCheckpointIO()],
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


def _prediction_rows(records: list[dict], names: list[str], ds) -> list[dict]:
    """``predictions.jsonl`` rows (:func:`camim.runs.prediction_row`) of a test loop's records, in split order."""
    rows = []
    for r in sorted(records, key=lambda r: (r["index"] is None, r["index"])):
        idx = r["index"]
        ex = ds.examples[idx] if idx is not None and 0 <= idx < len(ds.examples) else None
        gold = names[r["gold"]] if r["gold"] is not None else None
        probs = dict(zip(names, r["probs"].tolist()))
        rows.append(prediction_row(idx, ex.img_id if ex is not None else None, gold, names[r["pred"]], probs))
    return rows


def differences_from(cfg: RunConfig) -> Differences:
    """For a run folder's checks (:meth:`RunFolder.conflict`, :meth:`RunFolder.reusable`): the dotted keys in
    which the run config at a ``config.yaml`` differs from ``cfg``, both as that folder records them (paths
    inside it relative, :meth:`RunFolder.relative`: a moved folder still holds the same run; one written with
    absolute paths before that, unmoved, too), ``data.data_dir`` compared as an absolute path (a Ray task
    gets it so: the same data folder, given relative or absolute, is the same run)."""

    def differences(path: Path) -> list[str]:
        folder = RunFolder(path.parent)
        held = folder.relative(_data_dir_absolute(load_run_config(path).to_dict()))
        requested = folder.relative(_data_dir_absolute(cfg.to_dict()))
        return differing_keys(held, requested, ignore=RUN_NEUTRAL_KEYS)

    return differences


def _data_dir_absolute(config: dict) -> dict:
    """``config`` (a run config as a mapping) with ``data.data_dir`` absolute against the working directory."""
    data = config.get("data")
    if isinstance(data, dict) and isinstance(data.get("data_dir"), str):
        config = {**config, "data": {**data, "data_dir": os.path.abspath(data["data_dir"])}}
    return config


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
    afresh (a folder that would not be refused is resumed as usual). A folder that another trainer is writing
    (it holds the folder's lock, :meth:`RunFolder.writing`) is refused in one line.
    """
    from lightning.pytorch.utilities import rank_zero_only

    quiet_lightning()
    cfg = resolve_run_config(config, overrides, data_dir, output_dir)  # everything parsed and validated
    folder = RunFolder(Path(output_dir))
    labels = _labels(cfg)
    # one trainer per folder (the first DDP process locks it for the ranks it starts)
    with folder.writing() if rank_zero_only.rank == 0 else nullcontext():
        _claim(folder, cfg, overwrite)  # nothing was written before; from here on the run folder is ours
        # a full disk where camim does not write itself (Lightning's checkpoints, the trackers): one line too
        full_disk = no_space_is_an_error(
            folder.path, "what was written before is intact; free space and " + _resume_hint(folder)
        )
        with interruptible(lambda: _resume_hint(folder)), full_disk:
            _prepare_encoder(cfg, folder.path)
            folder.write_config(cfg.to_dict())
            return _train(cfg, folder, labels, callbacks or [])


def _resume_hint(folder: RunFolder) -> str:
    """Where running ``camim train`` again picks up (the line Ctrl-C prints)."""
    if folder.resumable:
        return f"run the same command again to resume from {folder.last_checkpoint}"
    return f"no epoch was saved yet; the same command starts {folder.path} again from the beginning"


def _train(cfg: RunConfig, folder: RunFolder, labels, callbacks: list) -> RunResult:
    """Fit, select, score and write the run folder (the steps of :func:`train_run` after the checks)."""
    from camim.models import build_model

    L.seed_everything(cfg.optim.seed, workers=True, verbose=False)
    model = build_model(cfg.model, labels=labels.names)
    module = MRELightningModule(model, cfg, labels.negative_id)
    dm = MNREDataModule(cfg, cfg.data.data_dir, labels, model.required_modalities, model.processor)
    checkpoint = _checkpoint_callback(cfg, folder)
    # trainer.loggers (camim.training.loggers): csv writes logs/version_<k>/ per (re)start; the report joins them
    loggers = build_loggers(
        cfg.trainer.loggers, folder.path, run_name=folder.path.name, tags={"preset": cfg.name}
    )
    callbacks = [
        checkpoint,
        LogRunConfig(folder.relative(cfg.to_dict())),
        *callbacks,
    ]  # as config.yaml holds it
    trainer = _trainer(cfg, folder.path, callbacks, loggers or False)
    last = folder.last_checkpoint
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if folder.resumable else None)

    best = checkpoint.best_model_path or (str(last) if folder.resumable else None)
    eval_trainer, best = _evaluation_trainer(trainer, cfg, folder.path, best)
    if eval_trainer is None:  # a non-zero DDP rank
        return RunResult(metrics={}, output_dir=folder.path, model_dir=folder.model_dir, primary=False)
    val = None
    if cfg.optim.select_on != "train_loss":
        eval_trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)
        val = dict(module.eval_result)
    eval_trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)
    metrics = {
        "val": val,
        "test": dict(module.eval_result),
        "best_checkpoint": Path(best).name if best else None,
        "best_epoch": _epoch_of(best),
        "selected_on": cfg.optim.select_on,
        "global_step": int(trainer.global_step),
        "negative_label": negative_label_info(cfg, labels),
        "notes": _run_notes(cfg, folder.path),
        "data_report": {k: v for k, v in dm.data_report().items() if v},
        "processor_report": dict(getattr(model.processor, "report", {}) or {}),
    }
    if module.speed is not None:  # graph captures, eager fallbacks, compiled regions (camim.speed)
        metrics["speed"] = module.speed.report()
    if eval_trainer.is_global_zero:
        log_test_metrics(loggers, metrics["test"], step=int(trainer.global_step))
        _write_outputs(folder, cfg, model, module, dm, metrics)
    return RunResult(metrics=metrics, output_dir=folder.path, model_dir=folder.model_dir)


def _claim(folder: RunFolder, cfg: RunConfig, overwrite: bool) -> None:
    """Make ``folder`` this run's: refuse one that holds another run (or a finished run without its
    checkpoints) unless ``overwrite``, which removes that run's outputs (on the first DDP process only; the
    others start once training has begun)."""
    from lightning.pytorch.utilities import rank_zero_only

    conflict = folder.conflict(differences_from(cfg))
    if conflict and not overwrite:
        raise CamimError(f"{conflict}; use a new --output folder, or --overwrite to replace that run")
    folder.path.mkdir(parents=True, exist_ok=True)
    if conflict and rank_zero_only.rank == 0:
        folder.clear_outputs()


def _prepare_encoder(cfg: RunConfig, out: Path) -> None:
    """Offline presets: check the ``camim pretrain`` folder they start from, or build (or reuse) the
    vocabulary and encoder config folder."""
    if not cfg.offline.enabled:
        return
    if cfg.offline.pretrained_encoder:
        from camim.pretraining.pretrain import check_pretrained_folder

        check_pretrained_folder(cfg.offline.pretrained_encoder)
        return
    from camim.pretraining.offline import build_offline_encoder

    build_offline_encoder(
        cfg.offline,
        cfg.data.data_dir,
        _offline_folder(cfg, out),
        limit=cfg.data.train_limit,
        require_captions=cfg.data.caption_source is not None,
        encoding=cfg.data.encoding,
        on_error=cfg.data.on_error,
    )


def _checkpoint_callback(cfg: RunConfig, folder: RunFolder) -> ModelCheckpoint:
    """``best-epoch<k>.ckpt`` and ``last.ckpt``: the best dev micro-F1 (ties: "first" = strict improvement,
    released TMR ``>``; "last" = HVPNeT ``>=``) or, with ``optim.select_on: train_loss`` (no val split), the
    lowest epoch training loss."""
    common = {"dirpath": str(folder.checkpoints_dir), "filename": "best-epoch{epoch}", "save_last": True,
              "auto_insert_metric_name": False}  # fmt: skip
    if cfg.optim.select_on == "train_loss":
        return RunCheckpoint(
            **common, monitor="train/loss_epoch", mode="min", save_top_k=1, save_on_train_epoch_end=True
        )
    return DevCheckpoint(**common, monitor="val/f1", ties=cfg.optim.selection_tie)


def _evaluation_trainer(
    trainer: L.Trainer, cfg: RunConfig, out: Path, best: str | None
) -> tuple[L.Trainer | None, str | None]:
    """The trainer of the final validation and test, and the checkpoint they load (None on a non-zero DDP
    rank). Under DDP they run once, on rank 0 and one device, so that metrics.json and predictions.jsonl hold
    every sample exactly once (DistributedSampler pads a split to a multiple of the world size, repeating
    samples); the other ranks are done once the process group is torn down."""
    if trainer.world_size <= 1:
        return _trainer(cfg, out, [], False), best
    best = trainer.strategy.broadcast(best)
    primary, root = trainer.is_global_zero, trainer.strategy.root_device
    trainer.strategy.barrier("camim-fit-done")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return (_trainer(cfg, out, [], False, device=root) if primary else None), best


def _write_outputs(folder: RunFolder, cfg: RunConfig, model, module, dm, metrics: dict) -> None:
    """``model/`` (with its card), ``predictions.jsonl``, ``report.md``, and last ``metrics.json``: the run is
    finished once it exists, so a run stopped before it (even by SIGKILL) is resumed, never half reused."""
    from camim.models.card import CardRun
    from camim.reports import write_run_report

    card = CardRun.of_run(
        cfg.to_dict(), {"val": metrics["val"], "test": metrics["test"]}, load_paper_results()
    )
    model.save_pretrained(folder.model_dir, card=card)
    folder.write_predictions(_prediction_rows(module.test_records, list(model.labels), dm.dataset("test")))
    write_run_report(folder.path, cfg.to_dict(), metrics, list(model.labels))
    folder.write_metrics(metrics)


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


def _test_split(
    model_dir, data_dir, split: str, caption_source: str | None | FromRun, batch_size: int, limit: int | None
):
    """Run a saved model's test loop on one split -> (its MRELightningModule after the loop, datamodule, model,
    label set, run config). A missing or empty split is a ``DataError`` naming it and its file."""
    from camim.data import LabelSet
    from camim.models import load_model

    quiet_lightning()
    if split not in ("train", "val", "test"):
        raise CamimError(f"split must be train, val or test, got {split!r}")
    folder = RunFolder.of(model_dir)  # a run folder or its model/ folder
    run_cfg = load_run_config(folder.config_path) if folder.config_path.is_file() else None
    model = load_model(folder.model_dir)
    data = run_cfg.data if run_cfg is not None else DataConfig()
    if caption_source is not FromRun.CONFIG:
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
    trainer = _trainer(cfg, folder.model_dir, [], False)
    with interruptible(lambda: "nothing was written; run the same command again"):  # SIGTERM: not exit 0
        trainer.test(module, datamodule=dm, verbose=False)
    return module, dm, model, labels, cfg


def evaluate_run(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str = "test",
    caption_source: str | None | FromRun = FromRun.CONFIG,
    batch_size: int = 32,
    limit: int | None = None,
) -> dict:
    """Re-score a saved model on one split; returns ``{"accuracy", "precision", "recall", "f1"}`` (percent)
    plus ``per_relation``, ``confusion``, ``labels``, ``negative_label`` and ``num_samples``. A missing or
    empty split is a ``DataError`` naming it and its file.

    ``model_dir`` is a run folder or its ``model/``; the caption source defaults to the run's config.yaml
    (else ``minicpm``); ``None`` reads no captions.
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
    module, dm, model, _, _ = _test_split(model_dir, data_dir, split, FromRun.CONFIG, 32, limit)
    return _prediction_rows(module.test_records, list(model.labels), dm.dataset(split))

"""The run folder (docs/architecture.md, Contract 3): the one module that knows its file names and formats.

A run folder is what ``camim train``, ``camim zero-shot`` and the experiments write and what ``evaluate``,
``predict``, ``serve``, ``push``, the grids and the case analysis read back::

    config.yaml         the resolved settings (YAML; a training run's RunConfig, a zero-shot run's own sections)
    metrics.json        the scores; it marks the run finished (written last, atomically, flushed to disk;
                        an empty or unreadable one counts as unfinished, with a warning)
    predictions.jsonl   one row per scored sample (:func:`prediction_row`)
    report.md + PNGs    the human-readable report (camim.reports)
    model/              save_pretrained: weights, config.json, tokenizer, model card (training runs)
    checkpoints/        Lightning's, for resuming (training runs); logs/: the experiment trackers
    .train.lock         locked (``flock``) while a trainer writes the folder (:meth:`RunFolder.writing`)

:class:`RunFolder` names these paths, writes the files atomically (a reader never sees half a file), reads
them back with one-line errors naming the file (and line), and checks whether a folder may take a run:
:meth:`RunFolder.conflict` (training into it would mix two runs) and :meth:`RunFolder.reusable` (a finished run
with the requested settings). What "the same settings" means is the caller's: it passes a function that
lists the dotted keys in which the folder's ``config.yaml`` differs from the run it wants.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camim.errors import CamimError
from camim.io import atomic_write_text, flocked, iter_lines, read_json
from camim.typed import dump_yaml, read_yaml_mapping

CONFIG = "config.yaml"
METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
REPORT = "report.md"
PLOTS = ("curves.png", "confusion.png", "per_relation_f1.png")
MODEL = "model"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOGS = "logs"
LOCK = ".train.lock"
#: what a training run writes into its folder (``--overwrite`` removes these, and nothing else, first)
OUTPUTS = (CONFIG, CHECKPOINTS, LOGS, METRICS, PREDICTIONS, MODEL, REPORT, *PLOTS)

#: the four MNRE scores of a split in ``metrics.json`` (percent; P/R/F1 micro over the non-negative labels)
SCORE_KEYS = ("accuracy", "precision", "recall", "f1")

log = logging.getLogger(__name__)
_WARNED: set[Path] = set()  # the unreadable metrics.json files warned about (once each per process)

#: lists the dotted keys in which the run config at a ``config.yaml`` path differs from the one requested
Differences = Callable[[Path], list[str]]


def format_score(value: float | None) -> str:
    """A score as the reports and cards print it: two decimals, ``-`` for a missing or NaN value."""
    if value is None or math.isnan(float(value)):
        return "-"
    return f"{float(value):.2f}"


def format_scores(scores: Mapping[str, Any]) -> str:
    """``accuracy 71.20  precision 60.00  recall 58.10  f1 59.03``: the four scores a result has."""
    return "  ".join(f"{k} {format_score(scores[k])}" for k in SCORE_KEYS if k in scores)


def prediction_row(
    sample_id: int | None,
    img_id: str | None,
    gold: str | None,
    predicted: str,
    probabilities: Mapping[str, float] | None,
    **extra: Any,
) -> dict:
    """One ``predictions.jsonl`` row: ``id`` (the sample's index in its split file), ``img_id``, ``gold``,
    ``predicted``, ``probabilities`` (label -> probability, rounded to 6 places; ``None`` for an extractor
    without a distribution) and the writer's own fields after them (zero-shot: ``answer``, ``parsed``, ...)."""
    probs = None if probabilities is None else {k: round(float(p), 6) for k, p in probabilities.items()}
    row = {"id": sample_id, "img_id": img_id, "gold": gold, "predicted": predicted, "probabilities": probs}
    return {**row, **extra}


def different_run_message(path: Path, diffs: list[str]) -> str:
    """``<path>: holds a different run (its config.yaml differs in optim.lr, model.mi)``."""
    shown = ", ".join(diffs[:8]) + (f" and {len(diffs) - 8} more" if len(diffs) > 8 else "")
    return f"{path}: holds a different run (its {CONFIG} differs in {shown})"


@dataclass(frozen=True)
class RunFolder:
    """A run folder's paths, its atomic writers and readers, and the checks before a run goes into it."""

    path: Path
    model_path: Path | None = None  # a model folder given by itself (default: <path>/model)

    @classmethod
    def of(cls, path: str | Path) -> RunFolder:
        """The run folder of ``path``: a run folder, or a model folder (``config.json`` beside the weights,
        e.g. a run's ``model/``), whose run folder is its parent."""
        path = Path(path)
        if (path / MODEL / "config.json").is_file() or not (path / "config.json").is_file():
            return cls(path)
        return cls(path.parent, path)

    # ---- paths -----------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    @property
    def model_dir(self) -> Path:
        return self.model_path or self.path / MODEL

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / LAST_CHECKPOINT

    @property
    def finished(self) -> bool:
        """``metrics.json`` holds the run's metrics. An empty or unreadable one (e.g. cut short by a power
        loss on a file system that kept its name but not its data) counts as unfinished, with a warning: the
        run trains again, resuming from its last checkpoint when it has one."""
        if not self.metrics_path.is_file():
            return False
        try:
            self.read_metrics()
        except CamimError as exc:
            if self.metrics_path not in _WARNED:
                _WARNED.add(self.metrics_path)
                log.warning("%s; the run counts as unfinished and is trained again", exc)
            return False
        return True

    @property
    def resumable(self) -> bool:
        """``checkpoints/last.ckpt`` exists and is not empty. An empty one (a power loss cut it short, before
        atomic writes were fsynced) cannot be resumed from: the run starts afresh, with a warning."""
        last = self.last_checkpoint
        if not last.is_file():
            return False
        if last.stat().st_size == 0:
            if last not in _WARNED:
                _WARNED.add(last)
                log.warning(
                    "%s is empty (cut short by a power loss); the run starts again from its first step", last
                )
            return False
        return True

    @property
    def has_model(self) -> bool:
        return (self.model_dir / "config.json").is_file()

    # ---- reading back ----------------------------------------------------------------------------------
    def read_config(self) -> dict | None:
        """The raw mapping of ``config.yaml`` (``None`` when the folder has none); errors name the file."""
        return read_yaml_mapping(self.config_path) if self.config_path.is_file() else None

    def read_metrics(self) -> dict:
        """``metrics.json``; a missing or invalid file is a one-line error naming it."""
        metrics = read_json(self.metrics_path)
        if not isinstance(metrics, dict):
            raise CamimError(f"{self.metrics_path}: not a run's metrics (expected a JSON object)")
        return metrics

    def read_predictions(self) -> list[dict]:
        """The rows of ``predictions.jsonl``; a row that is not JSON, or lacks ``id`` (an integer) or
        ``probabilities``, is a one-line error naming the file and line."""
        rows = []
        for n, line in iter_lines(self.predictions_path):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CamimError(f"{self.predictions_path}:{n}: invalid JSON: {exc.msg}") from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), int) or "probabilities" not in row:
                raise CamimError(
                    f"{self.predictions_path}:{n}: a prediction row needs 'id' and 'probabilities'"
                )
            rows.append(row)
        return rows

    # ---- writing (each file atomically: a reader sees the old file or the new one, never a mix) ---------
    def write_config(self, config: Mapping[str, Any]) -> Path:
        """``config.yaml``, with the paths inside this folder written relative to it (:meth:`relative`)."""
        text = dump_yaml(self.relative(config))
        return atomic_write_text(self.config_path, text)

    def relative(self, config: Any) -> Any:
        """``config`` (a mapping, list or value) as this folder records it: an absolute path that lies inside
        the folder (an offline run's ``offline_encoder``) becomes relative to it, so the folder can be moved,
        copied or mounted elsewhere and still be resumed or reused. Other values are left as they are."""
        if isinstance(config, Mapping):
            return {k: self.relative(v) for k, v in config.items()}
        if isinstance(config, (list, tuple)):
            return [self.relative(v) for v in config]
        if isinstance(config, str) and config.startswith("/"):
            try:
                return Path(config).relative_to(self.path.resolve()).as_posix()
            except ValueError:
                return config
        return config

    def write_predictions(self, rows: Iterable[Mapping[str, Any]]) -> Path:
        return atomic_write_text(
            self.predictions_path, [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
        )

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        """``metrics.json``, written last: from here on the run counts as finished."""
        return atomic_write_text(self.metrics_path, json.dumps(metrics, indent=2) + "\n")

    def clear_outputs(self) -> None:
        """Remove what a run wrote (:data:`OUTPUTS`) so that another starts afresh; nothing else is touched."""
        for name in OUTPUTS:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the folder's lock (:data:`LOCK`, an exclusive ``flock``, created with the folder) while a
        trainer writes it: a second writer (another process, or a second call in a notebook while the first
        one's runs go on) is refused in one line naming the folder instead of training beside it. The system
        releases the lock when its process dies, SIGKILL included: a stale lock never blocks a rerun."""
        self.path.mkdir(parents=True, exist_ok=True)
        busy = (
            f"{self.path}: another process is training this run folder (it holds {LOCK}); wait for it to end, "
            "or stop it, before training it again"
        )
        with open(self.path / LOCK, "ab") as lock, flocked(lock.fileno(), busy, lock.name):
            yield

    # ---- may a run go here? ----------------------------------------------------------------------------
    def differences(self, differences: Differences) -> list[str]:
        """The dotted keys in which the run this folder holds differs from the one requested; an error when
        the folder holds a run without ``config.yaml``."""
        if not self.config_path.is_file():
            raise CamimError(f"{self.path}: holds a run without {CONFIG}; use a new output folder")
        return differences(self.config_path)

    def conflict(self, differences: Differences) -> str | None:
        """Why training the requested run into this folder would mix two runs, or None: it holds a run
        (resumable or finished) with other settings, or a finished run whose checkpoints are gone (training
        again would replace its results). Reads only."""
        if not (self.finished or self.resumable):
            return None
        if not self.config_path.is_file():
            return f"{self.path}: holds a run without {CONFIG}"
        diffs = differences(self.config_path)
        if diffs:
            return different_run_message(self.path, diffs)
        if self.finished and not self.resumable:
            return (
                f"{self.path}: holds a finished run whose {CHECKPOINTS}/ are gone; training again would replace "
                f"its {METRICS}, {PREDICTIONS} and {MODEL}/"
            )
        return None

    def reusable(self, differences: Differences, overwrite: bool = False) -> bool:
        """True when the folder holds a finished run with the requested settings (use its results). A
        finished run with other settings is refused naming the keys, unless ``overwrite`` (then False: train
        it again in its place)."""
        if not self.finished:
            return False
        diffs = self.differences(differences)
        if diffs and not overwrite:
            raise CamimError(
                different_run_message(self.path, diffs)
                + "; use a new --output folder, or --overwrite to train it again with these settings"
            )
        return not diffs


def add_overwrite_argument(parser) -> None:
    """The ``--overwrite`` option of the commands that write run folders (train, experiment)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="a run folder that holds another run (other settings, or finished with its checkpoints gone) is "
        "refused; with --overwrite that run is removed and trained afresh",
    )

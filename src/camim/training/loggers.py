"""Experiment tracking through Lightning's loggers (``trainer.loggers`` in the run config).

Each named logger receives the run's resolved config as hyperparameters (at the start of every fit,
resumed ones included), the per-step and per-epoch metrics the module logs (``train/*``, ``val/*``), and
the final test metrics of the selected checkpoint (``test/*``, at the last global step). Where they write,
inside the run folder ``OUT``:

==============  =========================================================================================
``csv``         ``OUT/logs/version_<k>/metrics.csv`` + ``hparams.yaml`` (the default; ``report.md`` plots it)
``tensorboard`` ``OUT/tensorboard/version_<k>/events.out.tfevents.*`` (``tensorboard --logdir OUT/tensorboard``;
                the hparams dashboard's ``hp_metric`` is the test micro-F1)
``mlflow``      ``$MLFLOW_TRACKING_URI`` if set, else the local file store ``OUT/mlruns`` (works offline;
                ``mlflow ui --backend-store-uri OUT/mlruns``), experiment ``camim``, one MLflow run per start
``wandb``       offline, ``OUT/wandb/offline-run-*`` (``wandb sync`` uploads it later); project ``$WANDB_PROJECT``
                or ``camim``
==============  =========================================================================================

``<k>`` counts the (re)starts of a run. tensorboard, mlflow and wandb are optional extras:
``pip install 'camim[tensorboard]'`` (or ``[mlflow]``, ``[wandb]``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from camim.errors import CamimError

LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
# logger -> (module it needs, camim extra that installs it)
_NEEDS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


def check_logger_names(names: object) -> None:
    """``CamimError`` naming ``trainer.loggers`` unless ``names`` is a list of known, distinct logger names."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CamimError(
            f"trainer.loggers must be a list of logger names ({', '.join(LOGGERS)}), got {names!r}"
        )
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise CamimError(
            f"trainer.loggers: unknown logger(s) {', '.join(unknown)}; known: {', '.join(LOGGERS)}"
        )
    if len(set(names)) != len(names):
        raise CamimError(f"trainer.loggers lists a logger twice: {list(names)}")


def mlflow_tracking_uri(out: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else the file store ``out/mlruns`` as a ``file:`` URI."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri()


def _build_one(name: str, out: Path, run_name: str, tags: dict[str, str]):
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out), name="logs")
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        # default_hp_metric: the hparams dashboard needs a metric; hp_metric is -1 until the test F1 replaces it
        return TensorBoardLogger(save_dir=str(out), name="tensorboard", default_hp_metric=True)
    if name == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        uri = mlflow_tracking_uri(out)
        if uri.startswith("file:"):
            # MLflow >= 3 refuses its file store unless this opt-out is set; the file store is what works
            # offline and without a database (mlflow-skinny suffices for it)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return MLFlowLogger(experiment_name="camim", run_name=run_name, tracking_uri=uri, tags=tags)
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(
            save_dir=str(out), offline=True, name=run_name, project=os.environ.get("WANDB_PROJECT", "camim")
        )
    raise CamimError(f"trainer.loggers: unknown logger {name!r}")  # pragma: no cover - checked by the config


def build_loggers(names: Sequence[str], out: Path, run_name: str, tags: dict[str, str] | None = None) -> list:
    """The Lightning loggers named in ``names`` (see the module docstring for where each writes).

    ``CamimError`` saying which extra to install when a logger's package is missing.
    """
    check_logger_names(list(names))
    loggers = []
    for name in names:
        try:
            loggers.append(_build_one(name, Path(out), run_name, dict(tags or {})))
        except ModuleNotFoundError as exc:
            module, extra = _NEEDS.get(name, (exc.name, name))
            raise CamimError(
                f"trainer.loggers: {name} needs the {module} package: pip install 'camim[{extra}]'"
            ) from None
    return loggers


class LogRunConfig(Callback):
    """Hands the resolved run config to every logger as hyperparameters when a fit starts, resumed fits
    included (each logger flattens and converts it as its tracker needs; Lightning's loggers write on rank 0
    only)."""

    def __init__(self, config: dict):
        self.config = config

    def on_fit_start(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config)
            logger.save()


def log_test_metrics(loggers: Sequence, test: dict, step: int) -> None:
    """Log the final ``test/<metric>`` scores at ``step`` to every logger, then close the loggers."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from camim.runs import SCORE_KEYS

    metrics = {f"test/{k}": float(test[k]) for k in SCORE_KEYS if test.get(k) is not None}
    for logger in loggers:
        hp = (
            {"hp_metric": metrics["test/f1"]}
            if isinstance(logger, TensorBoardLogger) and "test/f1" in metrics
            else {}
        )
        logger.log_metrics({**metrics, **hp}, step=step)
        logger.save()
        logger.finalize("success")

"""Experiment tracking (``trainer.loggers``): one tiny run writes csv, tensorboard and mlflow files, and each
is read back with its own tool's reader (csv + YAML, tensorboard's event reader, mlflow's client)."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import yaml

from camim.errors import CamimError
from camim.training.api import train_run
from camim.training.config import load_config
from camim.training.loggers import build_loggers

from .conftest import TINY


@pytest.fixture(scope="module")
def tracked_run(tiny_mnre, tmp_path_factory, monkeypatch_module):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path_factory.mktemp("tracked")
    result = train_run(
        "offline-bert", tiny_mnre, out, overrides=[*TINY, "trainer.loggers=[csv, tensorboard, mlflow]"]
    )
    return result, yaml.safe_load((out / "config.yaml").read_text())


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_loggers_default_to_csv_and_are_checked():
    assert load_config("tmr").trainer.loggers == ["csv"]
    with pytest.raises(CamimError, match=r"trainer.loggers: unknown logger\(s\) neptune; known: csv"):
        load_config("tmr", ["trainer.loggers=[csv, neptune]"])
    with pytest.raises(CamimError, match="trainer.loggers: expected a list of strings"):  # the typed loader
        load_config("tmr", ["trainer.loggers=csv"])
    with pytest.raises(CamimError, match="lists a logger twice"):
        load_config("tmr", ["trainer.loggers=[csv, csv]"])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_missing_tracker_package_says_which_extra_to_install(tmp_path):
    with pytest.raises(CamimError, match=r"wandb needs the wandb package: pip install 'camim\[wandb\]'"):
        build_loggers(["csv", "wandb"], tmp_path, run_name="x")


def test_csv_logger_files(tracked_run):
    result, config = tracked_run
    folder = result.output_dir / "logs" / "version_0"
    assert yaml.safe_load((folder / "hparams.yaml").read_text()) == config  # the resolved config, nested
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = [(int(r["epoch"]), float(r["val/f1"])) for r in rows if r.get("val/f1")]
    assert [e for e, _ in val] == [0, 1]  # one dev F1 per epoch (2 epochs)
    assert sum(1 for r in rows if r.get("train/loss_epoch")) == 2
    (test_row,) = [r for r in rows if r.get("test/f1")]
    for k in ("accuracy", "precision", "recall", "f1"):
        assert float(test_row[f"test/{k}"]) == pytest.approx(result.metrics["test"][k])
    assert int(test_row["step"]) == result.metrics["global_step"] == 12
    best = result.metrics["best_epoch"]
    assert result.metrics["val"]["f1"] == pytest.approx(dict(val)[best - 1])  # the selected epoch's dev F1


def test_tensorboard_event_files(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    result, config = tracked_run
    events = EventAccumulator(str(result.output_dir / "tensorboard" / "version_0"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"val/f1", "train/loss_epoch", "train/loss_step", "test/f1"} <= set(tags)
    assert len(events.Scalars("val/f1")) == 2
    (test_f1,) = events.Scalars("test/f1")
    assert test_f1.step == 12 and test_f1.value == pytest.approx(result.metrics["test"]["f1"], rel=1e-6)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["optim/lr"].number_value == pytest.approx(config["optim"]["lr"])
    assert hparams["model/name"].string_value == "bert"
    assert hparams["name"].string_value == "offline-bert"
    assert events.Scalars("hp_metric")[-1].value == pytest.approx(test_f1.value)  # the dashboard's metric


def test_mlflow_file_store(tracked_run):
    from mlflow.tracking import MlflowClient

    result, config = tracked_run
    store = result.output_dir / "mlruns"
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("camim")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result.output_dir.name
    assert run.data.tags["preset"] == "offline-bert"
    params = run.data.params
    assert float(params["optim/lr"]) == pytest.approx(config["optim"]["lr"])
    assert params["data/caption_source"] == str(config["data"]["caption_source"])  # None -> "None"
    assert params["trainer/loggers"] == "['csv', 'tensorboard', 'mlflow']"
    history = client.get_metric_history(run.info.run_id, "val/f1")
    assert len(history) == 2
    for k in ("accuracy", "f1"):
        assert run.data.metrics[f"test/{k}"] == pytest.approx(result.metrics["test"][k])
    metrics_json = json.loads((result.output_dir / "metrics.json").read_text())
    assert run.data.metrics["test/f1"] == pytest.approx(metrics_json["test"]["f1"])

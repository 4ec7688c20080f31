"""Multi-seed aggregation and the paper grids' tables/plots."""

from __future__ import annotations

import json
import math

import pytest
from tests.training.conftest import TINY

from camim.cli import main
from camim.experiments import grids
from camim.reports import aggregate, comparison_table, mean_std


def test_mean_std_is_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([5.0]) == (5.0, 0.0)
    agg = aggregate(
        {
            1: {"accuracy": 1, "precision": 2, "recall": 3, "f1": 4.0},
            2: {"accuracy": 3, "precision": 2, "recall": 3, "f1": 6.0},
        }
    )
    assert agg["f1"] == pytest.approx({"mean": 5.0, "std": math.sqrt(2), "n": 2})


def test_comparison_table_puts_paper_beside_ours():
    md = comparison_table([("tmr", {"f1": {"mean": 50.0, "std": 1.5}}, {"f1": 89.05})], keys=("f1",))
    assert "| tmr | 50.00 ± 1.50 | 89.05 |" in md


def test_grid_writes_table_and_plots_with_paper_numbers(tmp_path, monkeypatch):
    calls = []

    def fake_run_seeds(preset, data_dir, out, seeds, overrides, overwrite=False):
        calls.append((preset, tuple(overrides)))
        f1 = 10.0 + len(calls)
        return {
            "test": {k: {"mean": f1, "std": 0.5, "n": 2} for k in ("accuracy", "precision", "recall", "f1")}
        }

    monkeypatch.setattr(grids, "run_seeds", fake_run_seeds)
    path = grids.run_grid("fig4", "unused", tmp_path, seeds=[1, 2], overrides=["optim.epochs=1"])
    text = path.read_text()
    assert ("tmr-cam-mi", ('model.mi_pair="O&G"', "optim.epochs=1")) in calls
    assert ("hvpnet-cam-mi", ('model.cam="sentence"', "optim.epochs=1")) in calls
    assert "| O&G | 11.00 ± 0.50 | 90.62 |" in text  # ours beside the paper's 0.9062
    assert "| 0.1 |" in text and "89.43" in text
    for panel in ("mi_pair", "caption_level", "alpha"):
        assert (tmp_path / f"fig4_{panel}.png").stat().st_size > 1000


def test_experiment_cli_over_two_seeds(tiny_mnre, tmp_path, capsys):
    out = tmp_path / "exp"
    args = [
        "experiment",
        "--preset",
        "offline-bert",
        "--seeds",
        "5",
        "6",
        "--data-dir",
        str(tiny_mnre),
        "--output",
        str(out),
    ]
    for o in [*TINY, "optim.epochs=2", "optim.eval_begin_epoch=2", "data.train_limit=24"]:
        args += ["--set", o]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    f1s = [json.loads((out / f"seed{s}" / "metrics.json").read_text())["test"]["f1"] for s in (5, 6)]
    assert summary["test"]["f1"]["mean"] == pytest.approx(sum(f1s) / 2)
    assert summary["test"]["f1"]["std"] == pytest.approx(abs(f1s[0] - f1s[1]) / math.sqrt(2))
    assert "± " in capsys.readouterr().out
    # evaluation starts at epoch 2: epoch 1 is logged as not evaluated and never selected
    from camim.reports import read_run_logs

    for s in (5, 6):
        assert json.loads((out / f"seed{s}" / "metrics.json").read_text())["best_epoch"] == 2
        val = [r["val/f1"] for r in read_run_logs(out / f"seed{s}" / "logs") if "val/f1" in r]
        assert val[0] == -1.0 and val[1] >= 0.0
    # seeds really differ in the run configs
    assert "seed: 5" in (out / "seed5" / "config.yaml").read_text()
    assert "seed: 6" in (out / "seed6" / "config.yaml").read_text()


def test_experiment_reuses_a_finished_run_only_with_an_equal_config(tiny_mnre, tmp_path, capsys, monkeypatch):
    """A second call with another --set into the same folder used to report the old numbers under the new
    overrides; now it is refused naming the keys that differ, and an equal call reuses the run."""
    out = tmp_path / "exp"
    args = ["experiment", "--preset", "offline-bert", "--seeds", "5", "--data-dir", str(tiny_mnre)]
    args += ["--output", str(out)]
    for o in [*TINY, "optim.epochs=1", "data.train_limit=16", "data.eval_limit=8"]:
        args += ["--set", o]
    assert main(args) == 0
    metrics = out / "seed5" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns

    from camim.training import api

    def no_training(*a, **k):
        raise AssertionError("a finished run with the same config must be reused, not trained")

    monkeypatch.setattr(api, "train_run", no_training)
    capsys.readouterr()
    assert main([*args, "--set", "trainer.progress_bar=true"]) == 0  # progress bar: the same run
    assert "± " in capsys.readouterr().out
    assert main([*args, "--set", "optim.lr=1e-3", "--set", "model.dropout=0.2"]) == 1
    err = capsys.readouterr().err
    assert "holds a different run" in err and "differs in model.dropout, optim.lr" in err
    assert metrics.stat().st_mtime_ns == stamp
    monkeypatch.undo()  # --overwrite trains that seed again with the new settings
    assert main([*args, "--set", "optim.lr=1e-3", "--overwrite"]) == 0
    assert metrics.stat().st_mtime_ns > stamp and "lr: 0.001" in (out / "seed5" / "config.yaml").read_text()

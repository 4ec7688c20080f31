"""Multi-seed aggregation and the paper grids' tables/plots."""

from __future__ import annotations

import json
import math

import pytest
from tests.training.conftest import TINY

from camim.cli import main
from camim.errors import CamimError
from camim.experiments import grids
from camim.experiments.worker import JobOutcome
from camim.reports import aggregate, comparison_table, mean_std
from camim.runs import SCORE_KEYS


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
    plans = []

    def fake_run_plans(planned, launch):  # every row's seeds "trained": f1 10, 11, ... per row
        plans.extend(planned)
        return [
            [JobOutcome(job, scores={k: 10.0 + i for k in SCORE_KEYS}) for job in p.jobs]
            for i, p in enumerate(planned)
        ]

    monkeypatch.setattr(grids, "run_plans", fake_run_plans)
    report = grids.run_grid("fig4", "unused", tmp_path, seeds=[1, 2], overrides=["optim.lr=1e-5"])
    text = report.path.read_text()
    overrides = {p.label: p.jobs[0].overrides for p in plans}
    assert overrides["mi_pair:O&G"] == ("model.mi_pair=O&G", "optim.lr=1e-5", "optim.seed=1")
    assert overrides["caption_level:S"] == ("model.cam=sentence", "optim.lr=1e-5", "optim.seed=1")
    assert [p.out.name for p in plans][:2] == ["mi_pair_O_G", "mi_pair_O_G_F"]
    assert "| O&G | 10.00 ± 0.00 | 90.62 |" in text  # ours beside the paper's 0.9062
    assert "| 0.1 | 18.00 ± 0.00 | 90.62 |" in text
    for panel in ("mi_pair", "caption_level", "alpha"):
        assert (tmp_path / f"fig4_{panel}.png").stat().st_size > 1000
    # the paper presets with their swept key: only the --set differs, per paper preset's own lr
    section = text[text.index("## Settings that differ from the paper") : text.index("## mi_pair")]
    assert "| `optim.lr` | `2e-05` | `1e-05` | mi_pair:O&G, " in section
    assert (
        "| `optim.lr` | `3e-05` | `1e-05` | caption_level:W&S, caption_level:S, caption_level:W |" in section
    )
    assert sum(line.startswith("| `") for line in section.splitlines()) == 2  # no other key
    assert report.warning.startswith("warning: not a reproduction of the paper: these runs differ from its ")
    assert "in 1 key(s) (optim.lr)" in report.warning and not report.failed


def test_offline_grids_keep_the_run_folders_of_the_running_ablations():
    """The lead's background runs were started with these rows: labels (hence folders), presets and
    overrides must stay exactly so, or the runs would not be reused."""
    dapt = "offline-tmr-cam-mi-dapt"
    t1 = [
        (r["label"], r["preset"], r["overrides"], r["paper_preset"])
        for r in grids.grid_rows("offline-table1")
    ]
    assert t1 == [
        ("bert", "offline-bert-dapt", [], "bert"),
        ("tmr", dapt, ["model.cam=none", "model.mi=false"], "tmr"),
        ("tmr-mi", dapt, ["model.cam=none"], "tmr-mi"),
        ("tmr-cam", dapt, ["model.mi=false"], "tmr-cam"),
        ("tmr-cam-mi", dapt, [], "tmr-cam-mi"),
        ("tmr-cam-mi-shuffled", dapt, ["data.caption_shuffle_seed=7"], "tmr-cam-mi"),
    ]
    t2 = grids.grid_rows("offline-table2")
    sources = ["blip2", "instruct", "llavanext", "qwenvl", "cogvlm", "minicpm"]
    assert [grids.slug(r["label"]) for r in t2] == [f"{s}_tmr-cam-mi" for s in sources]
    assert [r["overrides"] for r in t2] == [[f"data.caption_source={s}"] for s in sources]
    assert t2[0]["paper"]["f1"] == 89.63 and {r["preset"] for r in t2} == {dapt}
    f4 = grids.grid_rows("offline-fig4")
    assert [(grids.slug(r["label"]), r["overrides"]) for r in f4] == [
        ("alpha_0.05", ["model.mi_alpha=0.05"]),
        ("alpha_0.1", ["model.mi_alpha=0.1"]),
        ("alpha_0.3", ["model.mi_alpha=0.3"]),
        ("alpha_0.5", ["model.mi_alpha=0.5"]),
        ("caption_level_W_S", ["model.cam=both"]),
        ("caption_level_S", ["model.cam=sentence"]),
        ("caption_level_W", ["model.cam=word"]),
    ]
    assert [r["paper"]["f1"] for r in f4] == [89.03, 90.62, 89.03, 89.43, 84.66, 82.91, 81.69]
    assert "Fig. 4b is on HVPNeT" in f4[-1]["note"] and f4[-1]["paper_preset"] == "hvpnet-cam-mi"


def test_row_differences_name_every_setting_that_is_not_the_papers():
    from camim.experiments.paper import differences_section, row_differences
    from camim.training.config import load_config

    ours = load_config(
        "offline-tmr-cam-mi-dapt", ["data.caption_shuffle_seed=7", "offline.pretrained_encoder=E"]
    )
    diff = row_differences("tmr-cam-mi-shuffled", ours, "tmr-cam-mi", []).differences
    assert diff["data.caption_shuffle_seed"] == (None, 7)
    assert diff["model.visual_mode"] == ("images", "text-caption")
    assert diff["offline.enabled"] == (False, True) and diff["optim.lr"] == (2e-5, 5e-4)
    assert diff["optim.epochs"] == (8, 4) and diff["model.text_encoder"] == ("bert-base-uncased", None)
    assert "optim.seed" not in diff and "name" not in diff  # seeds and names are not settings compared
    # a paper preset with the row's swept key: nothing differs; a preset without paper_row: not compared
    same = load_config("tmr-cam-mi", ["data.caption_source=blip2"])
    assert row_differences("blip2", same, "tmr-cam-mi", ["data.caption_source=blip2"]).differences == {}
    alone = row_differences("x", ours, "offline-bert", [])
    assert alone.paper_preset is None
    md = "\n".join(differences_section([alone]))
    assert "No row of this grid names a paper preset: nothing here is comparable with the paper." in md


def test_unknown_grid_is_one_line_naming_the_grids(tmp_path, capsys):
    assert main(["experiment", "tabel1", "--data-dir", "d", "--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "camim: error: unknown grid 'tabel1'; grids: table1, table2, fig4, offline-table1, offline-table2, "
        "offline-fig4, minilm-lr, minilm-table1, minilm-precision, minilm-table2 (or cases)"
    )


def test_a_bad_grid_file_names_the_file_and_key(tmp_path, monkeypatch):
    spec = tmp_path / "grids.yaml"
    monkeypatch.setattr(grids, "GRIDS_FILE", spec)
    spec.write_text("g:\n  - {group: a, preset: bert, colour: red}\n")
    with pytest.raises(CamimError, match=r"grids.yaml: g\[0\].colour: unknown key"):
        grids.load_grids()
    spec.write_text("g:\n  - {group: a, rows: [{label: x, preset: bert}], key: model.cam, values: [word]}\n")
    with pytest.raises(CamimError, match=r"grids.yaml: g\[0\]: give either rows, or key and values"):
        grids.load_grids()
    spec.write_text("g:\n  - {group: a, preset: bert, rows: [{label: a b}, {label: a_b}]}\n")
    with pytest.raises(CamimError, match=r"^grid g: rows 'a b' and 'a_b' share the folder a_b$"):
        grids.run_grid("g", "d", tmp_path)
    spec.write_text(
        "g:\n  - {group: a, preset: bert, rows: [{label: x}]}\n  - {group: b, preset: bert, rows: [{label: x}]}\n"
    )
    with pytest.raises(CamimError, match=r"^grid g: row 'x' is listed twice$"):  # two writers of one folder
        grids.run_grid("g", "d", tmp_path)


def test_a_seed_listed_twice_is_refused_before_anything_trains(tmp_path):
    with pytest.raises(CamimError, match=r"^--seeds: seed 1 is listed twice$"):  # two writers of seed1/
        grids.plan_seeds("offline-bert", "d", tmp_path / "exp", [1, 2, 1], [], False, "x")
    assert not (tmp_path / "exp").exists()


def test_a_seed_out_of_range_is_refused_naming_seeds_before_anything_trains(tmp_path):
    """optim.seed's range (Lightning's seed_everything takes seed * 1000 + epoch up to 2**32 - 1) named as the
    option the user gave: --seeds."""
    with pytest.raises(
        CamimError, match=r"^--seeds: seed 5000000: optim.seed must be in \[0, 4294967\] with optim.epochs 2 "
    ):
        grids.plan_seeds("offline-bert", "d", tmp_path / "exp", [1, 5000000], TINY, False, "x")
    assert not (tmp_path / "exp").exists()


def test_a_run_with_an_empty_metrics_json_is_planned_again_with_a_warning(tiny_mnre, tmp_path, caplog):
    """Issue 36: after a power loss a first-time metrics.json can be empty; the plan reused it as finished
    and crashed on invalid JSON. Now that seed trains again (resuming from its last.ckpt when there is one)."""
    from camim.runs import RunFolder
    from camim.training.api import resolve_run_config

    out = tmp_path / "exp"
    folder = RunFolder(out / "seed1")
    folder.path.mkdir(parents=True)
    folder.write_config(
        resolve_run_config("offline-bert", [*TINY, "optim.seed=1"], tiny_mnre, folder.path).to_dict()
    )
    folder.metrics_path.write_text("")
    with caplog.at_level("WARNING", logger="camim.runs"):
        plan = grids.plan_seeds("offline-bert", tiny_mnre, out, [1], list(TINY), False, "x")
    assert plan.reused == {} and [(job.seed, job.output) for job in plan.jobs] == [(1, str(folder.path))]
    assert f"{folder.metrics_path}:1: not valid JSON" in caplog.text and "counts as unfinished" in caplog.text


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
    assert "f1 0.00 (1 seed)" in capsys.readouterr().out  # the reused run's scores
    assert main([*args, "--set", "optim.lr=1e-3", "--set", "model.dropout=0.2"]) == 1
    err = capsys.readouterr().err
    assert "holds a different run" in err and "differs in model.dropout, optim.lr" in err
    assert metrics.stat().st_mtime_ns == stamp
    monkeypatch.undo()  # --overwrite trains that seed again with the new settings
    assert main([*args, "--set", "optim.lr=1e-3", "--overwrite"]) == 0
    assert metrics.stat().st_mtime_ns > stamp and "lr: 0.001" in (out / "seed5" / "config.yaml").read_text()


def test_each_finished_run_prints_a_line_with_elapsed_time_eta_and_failures(monkeypatch, capsys):
    """A grid in a log file: one line per finished run with done/total, the time so far, an ETA from the runs
    done, and the failures so far (issue 29 §1)."""
    from camim.experiments.worker import JobOutcome, RunJob

    clock = iter([100.0, 160.0, 220.0, 400.0])  # start, then after each of three runs
    monkeypatch.setattr(grids.time, "monotonic", lambda: next(clock))
    report = grids._announce(3)
    job = RunJob("tmr", 1, "p", "d", "o", ())
    report(JobOutcome(job, scores={"f1": 40.0}, seconds=60))
    report(JobOutcome(RunJob("tmr", 2, "p", "d", "o2", ()), error="o2: RuntimeError: boom", seconds=60))
    report(JobOutcome(RunJob("tmr", 3, "p", "d", "o3", ()), scores={"f1": 41.0}, seconds=180))
    assert capsys.readouterr().out.splitlines() == [
        "[1/3] tmr seed 1 (60 s): f1 40.00 (60 s elapsed, ETA 2.0 min)",
        "[2/3] tmr seed 2 (60 s): failed: o2: RuntimeError: boom (2.0 min elapsed, ETA 60 s, 1 failed so far)",
        "[3/3] tmr seed 3 (180 s): f1 41.00 (5.0 min elapsed, 1 failed so far)",
    ]


@pytest.mark.parametrize(
    "labels",
    [
        ["bert", "tmr", "tmr-mi", "tmr-cam", "tmr-cam-mi", "tmr-cam-mi-shuffled"],  # offline Table 1's rows
        [f"{s}/tmr-cam-mi" for s in ("blip2", "instruct", "llavanext", "qwenvl", "cogvlm", "minicpm")],
        ["W&S", "S", "W"],
    ],
)
def test_grid_plot_row_names_do_not_overlap(labels):
    import matplotlib.pyplot as plt

    from camim.reports import bars_figure

    fig = bars_figure(labels, [{"mean": 40.0, "std": 1.0}] * len(labels), [90.0] * len(labels), "grid")
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in fig.axes[0].get_xticklabels()]
    plt.close(fig)
    assert len(boxes) == len(labels)
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))

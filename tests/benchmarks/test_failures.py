"""A benchmark survives a bad variant or run: it is printed and written in the JSON as failed with its
one-line reason, the next one runs, and the exit status says some failed (issue 29 §6). The failures are
forced on CPU: a monkeypatched step that raises a multi-line compile error or hangs past its time limit, a
child run that exits 1 or times out, a training run that raises."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

COMPILE_ERROR = "backend='inductor' raised:\nTimeoutError: compile worker timed out\n\nSet TORCH_LOGS=+dynamo"


def test_step_speed_goes_on_after_a_failing_and_a_hanging_variant(bench, tmp_path, capsys, monkeypatch):
    step_speed = bench("step_speed")
    real = step_speed.apply_fast_mode

    def flaky(model, cfg, device):
        if cfg.compile == "regional":
            raise RuntimeError(COMPILE_ERROR)
        if cfg.skip_padded_crops:
            time.sleep(60)  # stuck: --variant-timeout-s stops it
        return real(model, cfg, device)

    monkeypatch.setattr(step_speed, "apply_fast_mode", flaky)
    out = tmp_path / "step.json"
    argv = [
        "--small",
        "--batch-sizes",
        "2",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--rounds",
        "1",
        "--threads",
        "1",
    ]
    argv += ["--variants", "released", "fast-regional", "fast-skip", "fast", "--variant-timeout-s", "4"]
    assert step_speed.main([*argv, "--json", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["status"]) for r in rows] == [
        ("released", "ok"),
        ("fast-regional", "failed"),
        ("fast-skip", "failed"),
        ("fast", "ok"),  # the variant after the failures still ran
    ]
    assert rows[1]["error"] == (
        "RuntimeError: backend='inductor' raised: TimeoutError: compile worker timed out "
        "Set TORCH_LOGS=+dynamo"
    )
    assert rows[2]["error"] == "TimeoutError: over its 4 s limit"
    assert rows[3]["samples_per_s"] > 0 and rows[3]["ratio"] > 0
    printed = capsys.readouterr().out
    assert f"fast-regional                2  failed: {rows[1]['error']}\n" in printed
    assert printed.endswith("2 of 4 variants failed: fast-regional 2, fast-skip 2\n")


def test_gpu_e2e_goes_on_after_a_failed_and_a_timed_out_run(bench, tmp_path, capsys, monkeypatch):
    gpu_e2e = bench("gpu_e2e")
    result = {
        "wall_s": 1.0,
        "epoch_s": 0.5,
        "warmup_s": 0.1,
        "samples_per_s": 40.0,
        "between_ms_per_batch": 1.0,
    }
    result |= {"step_ms_per_batch": 2.0, "test_f1": 10.0}
    answers = iter(
        [
            subprocess.CompletedProcess(
                [], 1, "", "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n"
            ),
            subprocess.TimeoutExpired([], 7),
            subprocess.CompletedProcess([], 0, gpu_e2e.RESULT_PREFIX + json.dumps(result) + "\n", ""),
        ]
    )

    def fake_run(cmd, **kw):  # the child processes: plain fails, fast runs over its limit, released works
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(gpu_e2e.subprocess, "run", fake_run)
    out = tmp_path / "e2e.json"
    argv = ["--small", "--train", "8", "--eval", "2", "--presets", "tmr-cam-mi", "--repeat-fast", "1"]
    argv += ["--run-timeout-s", "7", "--work-dir", str(tmp_path / "work"), "--json", str(out)]
    assert gpu_e2e.main(argv) == 1
    runs = json.loads(out.read_text())["runs"]
    assert [(r["mode"], r["status"], r.get("error")) for r in runs] == [
        (
            "plain",
            "failed",
            "RuntimeError: exit 1: Traceback (most recent call last): | ... | RuntimeError: boom",
        ),
        ("fast", "failed", "TimeoutError: over its 7 s limit"),
        ("released", "ok", None),
    ]
    assert runs[2]["samples_per_s"] == 40.0
    assert capsys.readouterr().out.endswith("2 of 3 runs failed: tmr-cam-mi plain, tmr-cam-mi fast\n")


def test_offline_mnre_scores_the_runs_that_finished(bench, tmp_path, capsys, monkeypatch):
    offline_mnre = bench("offline_mnre")
    import camim.experiments.grids as experiment
    import camim.pretraining.offline as offline

    def one(preset, data_dir, run_dir, overrides, threads):
        if preset == "offline-bert" and "optim.seed=2" in overrides:
            raise RuntimeError("CUDA error: out of memory\n(the rest of the trace)")
        return run_dir, 60.0

    scored = {}

    def run_seeds(preset, data_dir, out, seeds, overrides):
        scored[preset] = seeds
        f1 = 30.0 if preset == "offline-bert" else 36.0
        stats = {k: {"mean": f1, "std": 0.0} for k in ("f1", "accuracy", "precision", "recall")}
        return {"test": stats, "per_seed": {s: {"f1": f1} for s in seeds}}

    monkeypatch.setattr(offline_mnre, "ProcessPoolExecutor", ThreadPoolExecutor)  # the fakes below apply
    monkeypatch.setattr(offline_mnre, "_one", one)
    monkeypatch.setattr(offline, "build_offline_encoder", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "run_seeds", run_seeds)
    out = tmp_path / "bench"
    assert offline_mnre.main(["--data-dir", str(tmp_path), "--output", str(out), "--seeds", "1", "2"]) == 1
    assert scored == {"offline-bert": [1], "offline-tmr-cam-mi": [1, 2]}  # the failed run is left out
    runs = json.loads((out / "benchmark.json").read_text())["runs"]
    failed = [r for r in runs if r["status"] == "failed"]
    assert failed == [
        {
            "preset": "offline-bert",
            "seed": 2,
            "status": "failed",
            "error": "RuntimeError: CUDA error: out of memory (the rest of the trace)",
        }
    ]
    printed = capsys.readouterr().out
    assert "gain (offline-tmr-cam-mi - offline-bert): +6.00 F1" in printed
    assert printed.endswith("1 of 4 runs failed: offline-bert 2\n")


@pytest.mark.parametrize(
    "text, expected", [("a\n  b", "ValueError: a b"), ("x" * 400, "ValueError: " + "x" * 285 + "...")]
)
def test_a_failure_reason_is_one_line(bench, text, expected):
    assert bench("step_speed").one_line(ValueError(text)) == expected


def test_the_end_of_the_budget_stops_a_variant_without_failing_it(bench, capsys):
    step_speed = bench("step_speed")
    rows = [{"variant": "fast", "batch": 16}, {"variant": "frozen", "batch": 16}]
    for row, budget_cut in zip(rows, (True, False)):
        with step_speed.survive(row, row["variant"], budget_cut):
            raise TimeoutError("over its 12 s limit")
    assert [r["status"] for r in rows] == ["stopped", "failed"]
    assert step_speed.failed_exit(rows[:1]) == 0 and step_speed.failed_exit(rows) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "fast  stopped at the end of the budget: TimeoutError: over its 12 s limit",
        "frozen  failed: TimeoutError: over its 12 s limit",
        "1 of 2 variants failed: frozen 16",
    ]

"""Ctrl-C during a run and run folders that move (issue 29 §5): one line, exit 130, an exact resume; a moved or
copied folder resumes, evaluates and predicts where it now is."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import lightning as L
import pytest

from camim.errors import Interrupted
from camim.training.api import evaluate_run, train_run

from .conftest import TINY

ARGS = [*TINY, "optim.epochs=3", "data.train_limit=24", "data.eval_limit=8"]


class _StopAfterEpoch(L.Callback):
    """Presses Ctrl-C at the end of an epoch (after Lightning saved last.ckpt)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def _outputs(run) -> tuple[dict, list[dict]]:
    metrics = json.loads((run / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    return {k: metrics[k] for k in ("val", "test", "best_epoch", "global_step")}, rows


@pytest.fixture(scope="module")
def uninterrupted(tiny_mnre, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train_run("offline-tmr-cam-mi", tiny_mnre, run, overrides=ARGS)
    return _outputs(run)


def _signalled_run(tiny_mnre, run, preset: str, sig: int) -> tuple[int, list[str]]:
    """``camim train`` of a 30-epoch run sent ``sig`` once its first last.ckpt exists: (exit status, stderr lines)."""
    cmd = [sys.executable, "-m", "camim", "train", "--config", preset, "--data-dir", str(tiny_mnre)]
    cmd += ["--output", str(run), *[x for o in [*ARGS, "optim.epochs=30"] for x in ("--set", o)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err.splitlines()


def test_ctrl_c_in_camim_train_prints_one_line_exits_130_and_the_rerun_resumes(
    tiny_mnre, tmp_path, uninterrupted
):
    run = tmp_path / "run"
    assert _signalled_run(tiny_mnre, run, "offline-tmr-cam-mi", signal.SIGINT) == (
        130,
        [f"camim: interrupted; run the same command again to resume from {run}/checkpoints/last.ckpt"],
    )
    assert not (run / "metrics.json").exists()
    # the interrupted 30-epoch run, resumed with the 3 epochs of the reference, gives the reference's results
    shutil.rmtree(run)
    with pytest.raises(Interrupted, match="resume from"):
        train_run("offline-tmr-cam-mi", tiny_mnre, run, overrides=ARGS, callbacks=[_StopAfterEpoch(1)])
    assert not (run / "metrics.json").exists()
    train_run("offline-tmr-cam-mi", tiny_mnre, run, overrides=ARGS)
    assert _outputs(run) == uninterrupted


def test_sigterm_in_camim_train_prints_one_line_and_exits_143_not_0(tiny_mnre, tmp_path):
    """A scheduler's preemption or ``docker stop``: Lightning's loops end on SIGTERM with a status-less
    ``SystemExit`` (``SIGTERMException``), so ``camim train`` exited 0 printing nothing, as if it had finished."""
    run = tmp_path / "run"
    assert _signalled_run(tiny_mnre, run, "offline-bert", signal.SIGTERM) == (
        143,
        [f"camim: terminated; run the same command again to resume from {run}/checkpoints/last.ckpt"],
    )
    assert not (run / "metrics.json").exists()


class _StopAtStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        raise KeyboardInterrupt


def test_ctrl_c_before_any_epoch_says_the_run_starts_again_and_restores_the_handler(tiny_mnre, tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="no epoch was saved yet; the same command starts .* again"):
        train_run("offline-bert", tiny_mnre, tmp_path / "run", overrides=ARGS, callbacks=[_StopAtStart()])
    assert signal.getsignal(signal.SIGINT) is before  # Lightning had set SIG_IGN


def test_a_moved_run_folder_resumes_evaluates_and_predicts(tiny_mnre, tmp_path, uninterrupted):
    from camim.inference import Predictor

    first = tmp_path / "first"
    with pytest.raises(Interrupted):
        train_run("offline-tmr-cam-mi", tiny_mnre, first, overrides=ARGS, callbacks=[_StopAfterEpoch(1)])
    assert "offline_encoder" in (first / "config.yaml").read_text()
    assert str(first) not in (first / "config.yaml").read_text()  # its own contents by relative paths
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    train_run("offline-tmr-cam-mi", tiny_mnre, moved, overrides=ARGS)  # resumes: not "a different run"
    assert _outputs(moved) == uninterrupted
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    shutil.rmtree(moved)  # nothing may still point into the folder it was copied from
    again = train_run("offline-tmr-cam-mi", tiny_mnre, copy, overrides=ARGS)  # finished, same run: rescored
    assert _outputs(copy) == uninterrupted and again.metrics["test"] == uninterrupted[0]["test"]
    assert evaluate_run(copy, tiny_mnre, split="test", limit=8)["f1"] == uninterrupted[0]["test"]["f1"]
    result = Predictor.from_pretrained(copy).predict(
        "Anna met Bob", head="Anna", tail="Bob", caption="two people"
    )
    assert result.relation in json.loads((copy / "model" / "config.json").read_text())["labels"]

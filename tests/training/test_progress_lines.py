"""A training run whose output goes to a log file prints one line per epoch (and one every 30 s inside long
epochs) instead of Lightning's bar (issue 29 §1)."""

from __future__ import annotations

import io
import re
import subprocess
import sys

from camim.trainer import EpochLines
from camim.training.api import train_run

from .conftest import TINY

EPOCH_LINE = re.compile(
    r"epoch (\d)/3: (\d+) steps, train loss \d\.\d{4}, val F1 (\d+\.\d\d) \(best (\d+\.\d\d) at epoch (\d)\), "
    r"\d+ s elapsed(, ETA \d+ s)?"
)


def test_camim_train_in_a_log_file_prints_one_plain_line_per_epoch(tiny_mnre, tmp_path):
    sets = [x for o in [*TINY, "optim.epochs=3", "trainer.progress_bar=true"] for x in ("--set", o)]
    cmd = [sys.executable, "-m", "camim", "train", "--config", "offline-bert", "--data-dir", str(tiny_mnre)]
    proc = subprocess.run(
        [*cmd, "--output", str(tmp_path / "run"), *sets], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr  # no bar frames
    epochs = [EPOCH_LINE.fullmatch(line) for line in lines]
    assert all(epochs) and [int(m.group(1)) for m in epochs] == [1, 2, 3], lines
    assert [m.group(2) for m in epochs] == ["6", "12", "18"]  # 48 samples / batch 8, per epoch
    assert [bool(m.group(6)) for m in epochs] == [True, True, False]  # no ETA after the last epoch
    best = max(float(m.group(3)) for m in epochs)
    assert float(epochs[-1].group(4)) == best
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    assert f'"best_epoch": {epochs[-1].group(5)}' in metrics  # the best it names is the checkpoint selected


def test_long_epochs_also_print_a_line_every_30_seconds(tiny_mnre, tmp_path):
    out = io.StringIO()
    lines = EpochLines("train/loss", "val/f1", every_s=0.0, stream=out)  # every batch stands for 30 s here
    train_run(
        "offline-bert", tiny_mnre, tmp_path / "run", overrides=[*TINY, "optim.epochs=2"], callbacks=[lines]
    )
    printed = out.getvalue().splitlines()
    inside = [line for line in printed if ": batch " in line]
    assert len(inside) == 2 * 6 and inside[0].startswith("epoch 1/2: batch 1/6, loss ")
    assert re.fullmatch(r"epoch 2/2: batch 6/6, loss \d\.\d{4}, \d+ s elapsed, ETA 0 s", inside[-1])
    assert [line.split(":")[0] for line in printed if " steps, " in line] == ["epoch 1/2", "epoch 2/2"]

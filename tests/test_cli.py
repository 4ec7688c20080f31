"""The ``camim`` dispatcher: every command group registers, and user errors end in one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

from camim.cli import build_parser, main
from camim.synthetic import WorldConfig, generate_world


def test_every_command_group_registers():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    expected = {"data", "train", "evaluate", "experiment", "convert", "demo", "predict", "serve", "caption"}
    assert expected | {"prepare", "cache-images", "zero-shot", "push"} <= set(sub.choices)


def test_user_error_is_one_line_with_exit_1(capsys, tmp_path):
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("camim: error:") and "data folder not found" in err and "Traceback" not in err


def test_a_reader_that_went_away_is_not_a_traceback(tmp_path):
    world = tmp_path / "world"
    generate_world(world, WorldConfig(train=6, val=2, test=2, image_size=48, generated_size=48))
    # `camim data inspect DIR --json | head -c 1` where the reader is gone before camim writes anything
    proc = subprocess.Popen(
        [sys.executable, "-m", "camim", "data", "inspect", str(world), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err

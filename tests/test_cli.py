"""The ``camim`` dispatcher: every command group registers, and user errors end in one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


# A child that sends itself SIGINT the moment it first imports `target`: deterministic Ctrl-C at a chosen
# point of start-up. `argparse` is first imported by `camim.cli` itself (the entry point's own import),
# `torch` by the command modules that `main` registers.
_INTERRUPTED_CHILD = r"""
import builtins, os, runpy, signal, sys
entry, target = sys.argv[1], sys.argv[2]
real_import = builtins.__import__
def hook(name, *args, **kwargs):
    if name.split(".")[0] == target and target not in sys.modules:
        builtins.__import__ = real_import
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = hook
sys.argv = ["camim", "--help"]
if entry == "module":  # python -m camim
    runpy.run_module("camim", run_name="__main__", alter_sys=True)
else:  # the console script: `from <module> import <function>; sys.exit(<function>())`
    module, function = entry.split(":")
    sys.exit(getattr(__import__(module, fromlist=[function]), function)())
"""


def _console_entry() -> str:
    """The ``camim`` console script's ``module:function`` as declared in pyproject.toml (no tomllib on 3.10)."""
    import re
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    scripts = pyproject.split("[project.scripts]", 1)[1]
    return re.search(r'^camim\s*=\s*"([^"]+)"', scripts, re.M).group(1)


@pytest.mark.parametrize("target", ["argparse", "torch"])
@pytest.mark.parametrize("entry", ["console-script", "module"])
def test_ctrl_c_while_importing_ends_quietly_with_130(entry, target):
    entry_point = _console_entry() if entry == "console-script" else "module"
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_CHILD, entry_point, target],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip() == "camim: interrupted", proc.stderr[-2000:]
    assert "usage:" not in proc.stdout  # interrupted before the help was printed

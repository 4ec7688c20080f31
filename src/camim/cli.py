"""The ``camim`` command line. Each command group lives in its own module that defines
``register(subparsers)``; a group whose optional dependencies are missing is still listed and says what
to install when called."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from camim import __version__
from camim.errors import CamimError, Terminated
from camim.io import NO_SPACE, no_space_message

# (command module, help) pairs; each module defines register(subparsers).
COMMAND_MODULES = [
    "camim.data.cli",
    "camim.training.cli",
    "camim.experiments.cli",
    "camim.pretraining.cli",
    "camim.models.cli",
    "camim.demo",
    "camim.inference.cli",
    "camim.captioning.cli",
    "camim.preprocess.cli",
    "camim.speed.cli",
    "camim.zeroshot.cli",
    "camim.hub",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camim", description="Caption-aware multimodal relation extraction (CAMIM, TMR, HVPNeT) on MNRE."
    )
    parser.add_argument("--version", action="version", version=f"camim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("camim"):
                continue  # command group not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``camim`` command; 1 on a :class:`CamimError` (one line), 130 on Ctrl-C (also while the command
    modules are still importing), 143 on SIGTERM in a
    Lightning loop (train, pretrain, evaluate), 141 when stdout's reader went away, 1 with one line on a full disk."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        rc = args.func(args)
    except CamimError as exc:
        print(f"camim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # camim.errors.Interrupted says where a rerun resumes
        word, rc = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"camim: {word}" + (f"; {exc}" if str(exc) else ""), file=sys.stderr)
        return rc
    except BrokenPipeError:
        # The reader went away (e.g. `camim evaluate --json | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit flush
        return 141
    except OSError as exc:
        if (
            exc.errno not in NO_SPACE
        ):  # a full disk where camim does not write itself (Lightning's checkpoints)
            raise
        kept = "what was written before is intact (camim writes files whole); free space and run it again"
        print(f"camim: error: {no_space_message(exc.filename, kept)}", file=sys.stderr)
        return 1
    return int(rc or 0)

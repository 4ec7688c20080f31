"""``python -m camim`` and the ``camim`` console script (``camim.__main__:run``).

Ctrl-C ends the command quietly with status 130 from the first instant: while the command line is still
importing (torch, transformers, Lightning take seconds) a SIGINT handler installed before any of those
imports ends the process with 130 and one line instead of a ``KeyboardInterrupt`` traceback; once
:func:`camim.cli.main` runs, Python's default handler is back and ``main`` turns the ``KeyboardInterrupt``
into the same line and status (so running commands still stop through ``KeyboardInterrupt``: Lightning saves
its state, files are closed).
"""

import signal
import sys

INTERRUPTED = 130


def _interrupted_while_starting(signum, frame):  # noqa: ARG001 - signal handler signature
    sys.stderr.write("camim: interrupted\n")
    raise SystemExit(INTERRUPTED)  # exits quietly, whatever import was in progress


def run() -> int:
    """The console-script entry point: import the command line under the quiet handler, then run it."""
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    from camim.cli import main

    signal.signal(signal.SIGINT, previous)
    return main()


if __name__ == "__main__":
    sys.exit(run())

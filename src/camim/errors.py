"""Errors raised on bad input. Every message names the file (and line) at fault."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, for a one-line error; its type name when the message is empty
    (``OSError()``, ``RuntimeError("")``): libraries raise both multi-line and empty messages."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip() if text else type(exc).__name__


class CamimError(Exception):
    """Base class of camim's user-facing errors (the CLI prints them without a traceback)."""


class DataError(CamimError):
    """A data file or record is malformed. ``path`` and ``line`` (1-based) locate the problem."""

    def __init__(self, problem: str, path: str | None = None, line: int | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        super().__init__(where + problem)


class ImageError(DataError):
    """An image that cannot be used: missing, unreadable, corrupt, or over a size limit (``too_large``)."""

    def __init__(
        self, problem: str, path: str | None = None, line: int | None = None, too_large: bool = False
    ):
        super().__init__(problem, path, line)
        self.too_large = too_large


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a long job; the message says where running it again resumes. The CLI prints
    ``camim: interrupted; <message>`` and exits 130."""


class Terminated(Interrupted):
    """SIGTERM (a scheduler's preemption, ``docker stop``, ``kill``) stopped a training or pretraining run;
    Lightning's loops end on it with a ``SystemExit`` that carries no status, which read as success. The CLI
    prints ``camim: terminated; <message>`` and exits 143 (128 + 15, what a shell reports for SIGTERM)."""


class Cancelled(CamimError):
    """Work stopped because nobody waits for its result any more (a served request answered 504, or whose
    client left); raised between steps and by helpers that take a ``stop`` event."""

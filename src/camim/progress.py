"""What a long job shows while it runs: a progress bar on a terminal, plain lines when its output goes to a file.

Under ``nohup``, in a container or on a cluster scheduler nobody sees a bar, and a log full of bar frames is
unreadable. :func:`progress` gives a tqdm bar on a terminal and otherwise a :class:`ProgressLines`, which prints
one plain line every ``every_s`` seconds (30 by default) and one at the end::

    captioning (qwen2.5-vl): 1200/7356 img (16.3%), 3.2 img/s, 6.3 min elapsed, ETA 32.1 min, 4 failed

The training runs (``camim train``, ``camim pretrain``) print one line per epoch instead of Lightning's bar
(:class:`camim.trainer.EpochLines`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

EVERY_S = 30.0


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr, where bars and progress lines go) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressLines:
    """tqdm's small interface (``update``, ``set_description``, ``set_postfix``, ``close``, a context manager)
    printing a plain line every ``every_s`` seconds and at the end: done/total, share, rate, elapsed, ETA and
    the postfix values (e.g. ``failed``)."""

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        unit: str = "it",
        every_s: float = EVERY_S,
        stream: TextIO | None = None,
        clock=time.monotonic,
    ):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.start = self._last = clock()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self._last >= self.every_s:
            self.print_line()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        parts = [done + (f" ({100 * self.n / self.total:.1f}%)" if self.total else "")]
        parts.append(f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s")
        parts.append(f"{duration(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {duration((self.total - self.n) / rate)}")
        parts += [f"{v} {k}" for k, v in self.postfix.items() if v]
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def print_line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last = self.clock()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.print_line()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    total: int | None, desc: str = "", unit: str = "it", enabled: bool | None = None, **tqdm_kwargs: Any
):
    """A progress display for ``total`` items: a tqdm bar on a terminal, :class:`ProgressLines` when stderr is a
    file or pipe; ``enabled=False`` shows nothing (a disabled bar), ``True`` a bar wherever stderr goes."""
    from tqdm.auto import tqdm

    if enabled is False:
        return tqdm(total=total, disable=True)
    if enabled or on_terminal():
        return tqdm(total=total, desc=desc or None, unit=unit, dynamic_ncols=True, **tqdm_kwargs)
    return ProgressLines(total, desc, unit)

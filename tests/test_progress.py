"""Long jobs in a log file: plain periodic lines instead of bar frames (camim.progress, issue 29 §1)."""

from __future__ import annotations

import io

from camim.progress import ProgressLines, duration, on_terminal, progress


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lines_every_30_seconds_and_at_the_end():
    clock, out = _Clock(), io.StringIO()
    lines = ProgressLines(200, "captioning (m)", "img", stream=out, clock=clock)
    for _ in range(10):  # 10 images in 20 s: no line yet
        clock.t += 2
        lines.update(1)
    assert out.getvalue() == ""
    clock.t += 10
    lines.set_postfix(failed=2, missing=0)
    lines.update(10)  # 30 s after the start: one line
    assert (
        out.getvalue()
        == "captioning (m): 20/200 img (10.0%), 0.67 img/s, 30 s elapsed, ETA 4.5 min, 2 failed\n"
    )
    clock.t += 5
    lines.update(1)
    assert out.getvalue().count("\n") == 1  # the next one comes 30 s after the last
    with lines:
        lines.update(179)
    last = out.getvalue().splitlines()[-1]
    assert last == "captioning (m): 200/200 img (100.0%), 5.71 img/s, 35 s elapsed, 2 failed"
    lines.close()  # closing twice prints once
    assert out.getvalue().count("\n") == 2


def test_durations_and_unknown_totals():
    assert [duration(s) for s in (42, 89.4, 210, 5399, 7560)] == [
        "42 s",
        "89 s",
        "3.5 min",
        "90.0 min",
        "2.1 h",
    ]
    clock = _Clock()
    lines = ProgressLines(None, "", "row", stream=io.StringIO(), clock=clock)
    clock.t += 4
    lines.update(50)
    assert lines.line() == "50 row, 12 row/s, 4 s elapsed"


def test_a_bar_on_a_terminal_lines_in_a_log_nothing_when_off(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert not on_terminal(io.StringIO()) and on_terminal(Tty())
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(progress(10, "x"), ProgressLines)  # stderr is a file: lines
    assert progress(10, "x", enabled=False).disable  # off: a disabled bar, nothing printed
    assert not isinstance(progress(10, "x", enabled=True), ProgressLines)  # asked for: a bar anyway
    monkeypatch.setattr("sys.stderr", Tty())
    assert not isinstance(progress(10, "x"), ProgressLines)

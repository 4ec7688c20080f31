"""SIGKILL at any moment (issue 29 §3): run a camim command, kill it with SIGKILL at a chosen point, run the
same command again, and compare what it leaves with what an uninterrupted run leaves.

A kill point is a failpoint (``CAMIM_FAILPOINT=name:N``, :func:`camim.io.failpoint`: the process kills itself
the N-th time it reaches that write) or a delay (drawn uniformly over the uninterrupted run's duration, seeded).
A *trial* applies one or more kill points to successive runs of the command in one work folder, then runs it a
last time uninterrupted; that run must end with the command's success status, its outputs (normalised per
command by :class:`Scenario`) must equal the reference's, and the command's invariants must hold (no stray
temporary file, no torn or duplicate line, a cache that verifies). A kill that comes after the process ended
counts as "finished before the kill", and the outputs are checked all the same.

Commands run as forked children of a fork server (``forkserver.py``: the imports are paid once) or, with
``Launcher(exec_=True)``, as ``python -m camim`` processes. Used by ``tests/faults/test_sigkill.py`` (a few
points per command) and ``benchmarks/kill_points.py`` (many).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import camim

FORKSERVER = Path(__file__).with_name("forkserver.py")
SRC = Path(camim.__file__).resolve().parents[1]
#: the environment of every command: one thread (as the tests run), no tracker, a fake API key
BASE_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OPENAI_API_KEY": "sk-test",
    "CAMIM_FAILPOINT": None,
    "NO_COLOR": "1",
}


# ------------------------------------------------------------------------------------------ processes
@dataclass
class Outcome:
    """How one run ended: ``killed`` (by SIGKILL), ``exited`` (with ``rc``) or ``timeout`` (killed by us)."""

    state: str
    rc: int | None = None
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""

    def tail(self) -> str:
        lines = (self.stderr or self.stdout).strip().splitlines()
        return lines[-1] if lines else ""


class Launcher:
    """Starts commands: forked from a fork server (default) or as ``python -m camim`` (``exec_=True``)."""

    def __init__(self, exec_: bool = False, timeout: float = 180.0):
        self.exec_, self.timeout = exec_, timeout
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        }
        self.env.update({k: v for k, v in BASE_ENV.items() if v is not None})
        self.env.pop("CAMIM_FAILPOINT", None)
        self.server: subprocess.Popen | None = None

    def __enter__(self) -> Launcher:
        if not self.exec_:
            self.server = subprocess.Popen(
                [sys.executable, str(FORKSERVER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self.env,
                text=True,
                bufsize=1,
            )
            while True:
                line = self.server.stdout.readline()
                if not line:
                    raise RuntimeError("the fork server ended while importing (see its stderr)")
                if line.startswith('{"ready"'):
                    break
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            try:
                self._ask({"op": "exit"}, answer=False)
                self.server.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.server.kill()
                self.server.wait()
            self.server = None

    def _ask(self, request: dict, answer: bool = True) -> dict:
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        return json.loads(self.server.stdout.readline()) if answer else {}

    def run(
        self,
        argv: list[str],
        cwd: Path,
        env: dict | None = None,
        kill_after: float | None = None,
        trace: Path | None = None,
    ) -> Outcome:
        """Run ``camim argv`` in ``cwd``; SIGKILL it after ``kill_after`` seconds if still running. Its output
        goes to ``cwd/.camim-run.{out,err}`` (read back into the outcome)."""
        out, err = cwd / ".camim-run.out", cwd / ".camim-run.err"
        env = {**(env or {})}
        start = time.monotonic()
        if self.exec_:
            state = self._run_exec(argv, cwd, env, out, err, kill_after, trace)
        else:
            state = self._run_forked(argv, cwd, env, out, err, kill_after, trace)
        state.seconds = time.monotonic() - start
        state.stdout = out.read_text(errors="replace") if out.exists() else ""
        state.stderr = err.read_text(errors="replace") if err.exists() else ""
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
        return state

    def _run_forked(self, argv, cwd, env, out, err, kill_after, trace) -> Outcome:
        request = {
            "op": "spawn",
            "argv": argv,
            "cwd": str(cwd),
            "out": str(out),
            "err": str(err),
            "env": {**BASE_ENV, **env},
            "trace": str(trace) if trace else None,
        }
        pid = self._ask(request)["pid"]
        limit = self.timeout if kill_after is None else min(kill_after, self.timeout)
        answer = self._ask({"op": "wait", "pid": pid, "timeout": limit})
        if answer["state"] == "running":
            os.kill(pid, signal.SIGKILL)  # by its PID
            answer = self._ask({"op": "wait", "pid": pid, "timeout": 30})
            if kill_after is None or kill_after >= self.timeout:
                return Outcome("timeout")
        if answer["state"] == "killed":
            return Outcome("killed")
        return Outcome("exited", answer["rc"])

    def _run_exec(self, argv, cwd, env, out, err, kill_after, trace) -> Outcome:
        full = {**self.env, **{k: v for k, v in env.items() if v is not None}}
        if trace:  # a reference run: through forkserver.py, which counts the failpoints it reaches
            command = [sys.executable, str(FORKSERVER), "--trace", str(trace), *argv]
        else:
            command = [sys.executable, "-m", "camim", *argv]
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen(command, cwd=cwd, env=full, stdout=fo, stderr=fe)
            limit = self.timeout if kill_after is None else min(kill_after, self.timeout)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return Outcome("timeout" if kill_after is None or kill_after >= self.timeout else "killed")
        return Outcome("killed", rc) if rc == -signal.SIGKILL else Outcome("exited", rc)


# ------------------------------------------------------------------------------------------ kill points
@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed: at a failpoint (``failpoint="name:N"``) or after ``delay`` seconds."""

    failpoint: str | None = None
    delay: float | None = None

    def __str__(self) -> str:
        return self.failpoint if self.failpoint else f"after {self.delay:.2f} s"


def draw_points(
    reference: Reference, n: int, rng: random.Random, failpoint_share: float = 0.5
) -> list[KillPoint]:
    """``n`` kill points: a share at the failpoints the reference run reached (name, and N uniform over its
    hits), the rest at delays uniform over the reference run's duration."""
    reached = [(name, k) for name, k in sorted(reference.hits.items()) if k > 0]
    points = []
    for _ in range(n):
        if reached and rng.random() < failpoint_share:
            name, hits = rng.choice(reached)
            points.append(KillPoint(failpoint=f"{name}:{rng.randint(1, hits)}"))
        else:
            points.append(KillPoint(delay=round(rng.uniform(0, reference.seconds), 3)))
    return points


# ------------------------------------------------------------------------------------------ scenarios
@dataclass
class Scenario:
    """One command: how to lay out a fresh work folder, its arguments, its outputs (normalised so that an
    uninterrupted run and a resumed one compare equal) and its invariants (problems: a list of strings)."""

    name: str
    setup: Callable[[Path], None]
    argv: Callable[[Path], list[str]]
    outputs: Callable[[Path], dict[str, Any]]
    problems: Callable[[Path], list[str]]
    ok_codes: tuple[int, ...] = (0,)


@dataclass
class Reference:
    """The uninterrupted run: its outputs, duration and how often it reached each failpoint."""

    outputs: dict[str, Any]
    seconds: float
    hits: dict[str, int]


@dataclass
class TrialResult:
    """One trial: how each killed run ended, whether the last run finished and left the reference's outputs,
    and what was wrong (the first difference, broken invariants)."""

    command: str
    points: list[str]
    outcomes: list[str]  # per kill point: killed | finished before the kill | exited rc N | timeout
    finished: bool  # the last run ended with the command's success status
    equal: bool
    problems: list[str] = field(default_factory=list)
    last: Outcome | None = None  # the last, uninterrupted run (its output says what it resumed)


def reference_run(scenario: Scenario, launcher: Launcher, work: Path) -> Reference:
    """Run ``scenario`` uninterrupted in a fresh ``work`` folder, counting the failpoints it reaches."""
    fresh(work)  # the trials' folder: outputs may hold their own path (a model's encoder folder)
    scenario.setup(work)
    trace = work.parent / f".{work.name}.failpoints.json"
    outcome = launcher.run(scenario.argv(work), work, trace=trace)
    if outcome.state != "exited" or outcome.rc not in scenario.ok_codes:
        raise RuntimeError(
            f"{scenario.name}: the uninterrupted run ended {outcome.state} {outcome.rc}: "
            f"{outcome.stderr[-2000:]}"
        )
    hits = json.loads(trace.read_text()) if trace.exists() else {}
    trace.unlink(missing_ok=True)
    problems = scenario.problems(work)
    if problems:
        raise RuntimeError(f"{scenario.name}: the uninterrupted run left problems: {problems}")
    return Reference(scenario.outputs(work), outcome.seconds, hits)


def run_trial(
    scenario: Scenario, reference: Reference, points: list[KillPoint], launcher: Launcher, work: Path
) -> TrialResult:
    """Each kill point on a run of the command in turn (each run resumes what the previous left), then one
    uninterrupted run, whose outputs are compared with ``reference``."""
    fresh(work)
    scenario.setup(work)
    outcomes = []
    for point in points:
        env = {"CAMIM_FAILPOINT": point.failpoint} if point.failpoint else {}
        outcome = launcher.run(scenario.argv(work), work, env=env, kill_after=point.delay)
        outcomes.append(_describe(outcome, scenario))
    last = launcher.run(scenario.argv(work), work)
    result = TrialResult(scenario.name, [str(p) for p in points], outcomes, False, False, last=last)
    if last.state != "exited" or last.rc not in scenario.ok_codes:
        result.problems.append(f"the rerun ended {_describe(last, scenario)}: {last.tail()}")
        return result
    result.finished = True
    result.problems += scenario.problems(work)
    outputs = scenario.outputs(work)
    result.equal = outputs == reference.outputs
    if not result.equal:
        result.problems.append(f"outputs differ: {first_difference(outputs, reference.outputs)}")
    return result


def first_difference(got: Any, expected: Any, where: str = "") -> str:
    """Where ``got`` first differs from ``expected`` (the uninterrupted run's), e.g.
    ``predictions.jsonl[15].probability: 0.37046918 (uninterrupted: 0.37046921)``."""
    if isinstance(got, dict) and isinstance(expected, dict):
        for key in sorted(set(got) | set(expected), key=str):
            if got.get(key) != expected.get(key):
                return first_difference(
                    got.get(key), expected.get(key), f"{where}.{key}" if where else str(key)
                )
    if isinstance(got, list) and isinstance(expected, list):
        for i, (a, b) in enumerate(zip(got, expected)):
            if a != b:
                return first_difference(a, b, f"{where}[{i}]")
        if len(got) != len(expected):
            return f"{where}: {len(got)} items (uninterrupted: {len(expected)})"
    return f"{where}: {_short(got)} (uninterrupted: {_short(expected)})"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(outcome: Outcome, scenario: Scenario) -> str:
    if outcome.state == "killed":
        return "killed"
    if outcome.state == "exited" and outcome.rc in scenario.ok_codes:
        return "finished before the kill"
    if outcome.state == "exited":
        return f"exited rc {outcome.rc} ({outcome.tail()})"
    return outcome.state


def fresh(work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)


# ------------------------------------------------------------------------------------------ normalising
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jsonl_lines(path: Path) -> tuple[list[Any], list[str]]:
    """The values of a JSONL file's lines and its problems (a line that is not JSON, a torn last line)."""
    values, problems = [], []
    if not path.exists():
        return values, [f"{path.name}: missing"]
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        problems.append(f"{path.name}: torn last line")
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            values.append(json.loads(raw))
        except ValueError:
            problems.append(f"{path.name}:{n}: not JSON")
    return values, problems


def stray_temporaries(root: Path) -> list[str]:
    """Files an atomic write left behind (``.<name>.<pid>@<host>.<random>.tmp``) under ``root``."""
    return [f"stray temporary {p.relative_to(root)}" for p in root.rglob(".*.tmp")]


def keyed_records(
    path: Path, key: Callable[[dict], Any], drop: tuple[str, ...] = ("created",)
) -> tuple[list[Any], list[str]]:
    """A concurrent writer's JSONL file as its records sorted by ``key`` (``drop``-ed fields left out: the
    time a record was made), and its problems, duplicate keys among them."""
    values, problems = jsonl_lines(path)
    keys = [key(v) for v in values]
    if len(set(map(json.dumps, keys))) != len(keys):
        problems.append(f"{path.name}: a key written twice")
    records = sorted(
        json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True) for r in values
    )
    return records, problems


@contextmanager
def scenarios(root: Path, launcher: Launcher, names: list[str] | None = None):
    """The scenarios named (default: all) with their inputs built under ``root`` and the chat servers running."""
    from tests.faults import commands

    with ExitStack() as stack:
        built = commands.build(root, launcher, stack, names)
        yield built

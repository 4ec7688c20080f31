"""One training run of an experiment, wherever it is scheduled: in this process, in a worker of the local
pool, or in a Ray task (:mod:`camim.experiments.launch`).

This module imports only the standard library at module level: a fresh pool worker takes its GPU in
:func:`init_pool_worker` and sets ``CUDA_VISIBLE_DEVICES`` before torch is imported or CUDA initialised in
it, so the run sees only its device. Every mode trains through :func:`train_job`, which fixes torch's thread count for the run
(``RunJob.threads``), so a run's result does not depend on how it was scheduled.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field, replace

#: the GPU this pool worker holds (a CUDA_VISIBLE_DEVICES entry), None for a CPU slot
_held_device: str | None = None


@dataclass(frozen=True)
class RunJob:
    """A run to train: ``train_run(preset, data_dir, output, overrides, overwrite=...)`` on ``threads``
    torch threads. ``label``/``seed`` name it in messages; plain values only (it travels to other processes)."""

    label: str
    seed: int
    preset: str
    data_dir: str
    output: str
    overrides: tuple[str, ...]
    overwrite: bool = False
    threads: int = 1
    cwd: str | None = None  # where the run trains from (None: this process's working directory)

    def absolute(self) -> RunJob:
        """This job for a process whose working directory is its own (a Ray worker's, on another node too):
        ``data_dir``, ``output`` and a ``preset`` that is a YAML file made absolute against this process's
        working directory, which goes with it as ``cwd``, so that the run also reads the relative paths of
        its ``overrides`` (``--set``) as this process would (:func:`train_job`)."""
        preset = os.path.abspath(self.preset) if os.path.isfile(self.preset) else self.preset
        return replace(self, preset=preset, data_dir=os.path.abspath(self.data_dir),
                       output=os.path.abspath(self.output), cwd=os.getcwd())  # fmt: skip


@dataclass
class JobOutcome:
    """What a run produced: its test ``scores`` (``metrics.json``'s ``test``), or ``error``, a one-line reason.
    ``primary`` is False on the non-zero DDP ranks, which train but score nothing."""

    job: RunJob
    scores: dict | None = None
    error: str | None = None
    primary: bool = True
    seconds: float = 0.0
    device: str | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.error is None


def one_line(exc: BaseException) -> str:
    """An exception as one line: a camim error's own text, else its type and first line."""
    from camim.errors import CamimError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, CamimError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def train_job(job: RunJob) -> JobOutcome:
    """Train ``job`` in this process with ``job.threads`` torch threads, from ``job.cwd`` when given and
    present here (the previous count and working directory are restored). A failure is returned as the
    outcome's one-line ``error`` (its traceback printed to stderr), so the other runs of an experiment go on;
    Ctrl-C still stops everything."""
    import time

    import torch

    from camim.training.api import train_run

    previous, cwd = torch.get_num_threads(), os.getcwd()
    torch.set_num_threads(job.threads)
    start = time.perf_counter()
    try:
        _enter(job.cwd)
        result = train_run(job.preset, job.data_dir, job.output, overrides=list(job.overrides),
                           overwrite=job.overwrite)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - reported as this run's failure, the grid goes on
        traceback.print_exc(file=sys.stderr)
        return JobOutcome(job, error=one_line(exc), seconds=time.perf_counter() - start, device=_held_device)
    finally:
        torch.set_num_threads(previous)
        os.chdir(cwd)
    scores = result.metrics.get("test") if result.primary else None
    return JobOutcome(job, scores=scores, primary=result.primary, seconds=time.perf_counter() - start,
                      device=_held_device)  # fmt: skip


def _enter(cwd: str | None) -> None:
    """Train from ``cwd`` (the launching command's working directory); where this node has no such folder,
    say so: the job's own paths are absolute, but a relative ``--set`` path resolves here."""
    if cwd is None or os.path.abspath(cwd) == os.getcwd():
        return
    if os.path.isdir(cwd):
        os.chdir(cwd)
    else:
        print(f"camim: {cwd} (the command's folder) is not on this node: relative --set paths resolve in "
              f"{os.getcwd()}", file=sys.stderr)  # fmt: skip


def init_pool_worker(gpu: str | None) -> None:
    """The local pool's worker initialiser (a fresh spawned process, one run): die with the parent (a killed
    grid leaves no run training on), and, given a GPU (a ``CUDA_VISIBLE_DEVICES`` entry the pool holds for
    this run), make it the only device the run sees."""
    global _held_device
    _die_with_parent()
    if gpu is not None:
        _held_device = gpu
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # read when torch initialises CUDA, which is later


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it dies (prctl PR_SET_PDEATHSIG), so
    killing a grid never leaves a run writing into a folder that the next invocation trains again."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import multiprocessing
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except OSError:  # no glibc: the run is not tied to its parent
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the call above
        os._exit(1)

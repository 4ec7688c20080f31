"""Where an experiment's runs train: one after another in this process (the default), up to N at once in a
local process pool (``--jobs N``: one run per GPU when there are GPUs, else CPU slots), or as Ray tasks
(``--launcher ray``: one GPU, or CPUs, per task; a local Ray unless ``--ray-address`` names a cluster).

Every mode trains each run through :func:`camim.experiments.worker.train_job` with the same number of torch
threads (``--threads-per-run``), so a run's result does not depend on how it was scheduled. The pool is
``concurrent.futures.ProcessPoolExecutor``, one spawned process per run (so a run killed by the system
fails alone, as does one sent SIGTERM alone); Ray schedules its own tasks, each sent its paths absolute (:meth:`RunJob.absolute`: a task's
working directory is its own). A run that fails is an outcome with a one-line reason; the others go on.
Interrupted, the pool terminates its runs' processes (then kills them, :data:`STOP_GRACE_S`) and Ray cancels
its tasks before the interrupt goes on: an interrupt that reached this process alone leaves no run training.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Literal

from camim.errors import CamimError, Terminated
from camim.experiments.worker import JobOutcome, RunJob, init_pool_worker, one_line, train_job

Report = Callable[[JobOutcome], None]

#: seconds an interrupted pool's runs get to stop after SIGTERM before they are killed
STOP_GRACE_S = 10.0


@dataclass
class Launch:
    """How to schedule an experiment's runs (``camim experiment --jobs/--launcher/--ray-address/
    --threads-per-run``)."""

    jobs: int = 1
    launcher: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    # torch threads of every run; None: 1 on CPU (small offline models: two 1-thread runs beat one 2-thread
    # run, and sequential and parallel runs compute alike), the machine's CPUs per GPU on GPUs
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise CamimError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise CamimError(f"--threads-per-run must be >= 1, got {self.threads}")
        if self.ray_address and self.launcher != "ray":
            raise CamimError("--ray-address goes with --launcher ray")

    @property
    def parallel(self) -> bool:
        """Runs train in other processes (then one run may not span several devices)."""
        return self.jobs > 1 or self.launcher == "ray"


def visible_gpus() -> list[str]:
    """The GPUs runs may be given, as ``CUDA_VISIBLE_DEVICES`` entries (that variable's, when it is set)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def default_threads(cpus: float, gpus: float) -> int:
    """Torch threads per run when not given: 1 on CPU, else the CPUs per GPU (the same in every mode)."""
    return max(1, int(cpus // gpus)) if gpus else 1


def run_jobs(jobs: list[RunJob], launch: Launch, use_gpus: bool, report: Report) -> list[JobOutcome]:
    """Train ``jobs`` as ``launch`` says (``use_gpus``: the runs may have a GPU); ``report`` is called with
    each outcome as it arrives. Returns the outcomes in the order of ``jobs``."""
    if not jobs:
        return []
    if launch.launcher == "ray":
        outcomes = _ray(jobs, launch, use_gpus, report)
    else:
        gpus = visible_gpus() if use_gpus else []
        threads = launch.threads or default_threads(os.cpu_count() or 1, len(gpus))
        jobs = [replace(job, threads=threads) for job in jobs]
        workers = min(launch.jobs, len(gpus) or launch.jobs, len(jobs))
        where = f"{len(gpus)} GPU(s)" if gpus else "CPU"
        print(f"{len(jobs)} run(s) to train, {workers} at once on {where}, {threads} torch thread(s) per run")
        if workers <= 1:  # in this process (so a DDP run can start its own processes)
            outcomes = [_reported(train_job(job), report) for job in jobs]
        else:
            outcomes = _pool(jobs, workers, gpus, report)
    order = {job.output: i for i, job in enumerate(jobs)}  # outcomes from other processes hold copies
    return sorted(outcomes, key=lambda o: order[o.job.output])


def _reported(outcome: JobOutcome, report: Report) -> JobOutcome:
    report(outcome)
    return outcome


def _pool(
    jobs: list[RunJob], workers: int, gpus: list[str], report: Report, task=train_job
) -> list[JobOutcome]:
    """The local pool: at most ``workers`` runs at once, each in a fresh spawned process of its own (a
    one-worker ``ProcessPoolExecutor`` per run, so a killed process fails only its run, never the runs beside
    it), holding one of ``gpus`` (or a CPU slot); ``task(job) -> JobOutcome`` runs in it."""
    ctx = multiprocessing.get_context("spawn")
    queued, free = list(jobs), list(gpus[:workers]) or [None] * workers
    running: dict = {}  # future -> (job, its executor, its GPU)
    outcomes: list[JobOutcome] = []
    try:
        while queued or running:
            while queued and free:
                job, gpu = queued.pop(0), free.pop(0)
                executor = ProcessPoolExecutor(
                    1, mp_context=ctx, initializer=init_pool_worker, initargs=(gpu,)
                )
                running[executor.submit(task, job)] = (job, executor, gpu)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job, executor, gpu = running.pop(future)
                executor.shutdown()
                free.append(gpu)  # back to the slots whatever became of the run
                outcomes.append(_reported(_outcome(job, future), report))
    except BaseException:  # Ctrl-C, perhaps to this process alone (a notebook's interrupt, kill -INT)
        _stop([executor for _, executor, _ in running.values()])
        raise
    return outcomes


def _stop(executors: list[ProcessPoolExecutor]) -> None:
    """Stop the runs of ``executors`` now: start nothing more, terminate each run's process (SIGTERM:
    Lightning stops at its next step) and kill those still alive after :data:`STOP_GRACE_S` seconds (at once
    on a second Ctrl-C). A signal sent to the grid's process alone reaches no run, and ``shutdown(
    cancel_futures=True)`` cancels none already running: without this they would go on writing their folders
    (beside a rerun's trainers), and the command would wait for them at exit."""
    processes = [p for ex in executors for p in (ex._processes or {}).values()]  # noqa: SLF001 - no API
    for executor in executors:
        executor.shutdown(wait=False, cancel_futures=True)
    if processes:
        print(f"stopping {len(processes)} running run(s) (killed if still running in {STOP_GRACE_S:g} s)",
              file=sys.stderr)  # fmt: skip
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()


def _outcome(job: RunJob, future) -> JobOutcome:
    """The outcome a finished future holds, or a one-line reason it holds none."""
    try:
        return future.result()
    except BrokenProcessPool as exc:  # its process was killed (out of memory, a signal)
        return JobOutcome(job, error=f"its process died ({one_line(exc)}); rerun to resume it")
    except Terminated as exc:  # SIGTERM to its process alone (kill, an OOM guard): it fails alone, as killed
        return JobOutcome(job, error=f"its process was terminated (SIGTERM); {exc}")
    except Exception as exc:  # noqa: BLE001 - e.g. a job that could not be sent to the worker
        return JobOutcome(job, error=one_line(exc))


def import_ray():
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise CamimError("--launcher ray needs Ray: pip install 'camim[ray]'") from None
    return ray


def _ray(jobs: list[RunJob], launch: Launch, use_gpus: bool, report: Report) -> list[JobOutcome]:
    """One Ray task per run, asking for one GPU (when the cluster has GPUs and the runs may use one) or
    ``threads`` CPUs. A local Ray is started (and stopped) when none is running and no address is given:
    with ``jobs * threads`` CPUs when ``--jobs`` is given, else all of this machine's."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        address = launch.ray_address or os.environ.get("RAY_ADDRESS")
        options: dict = {"address": launch.ray_address} if launch.ray_address else {}
        if not address and launch.jobs > 1:  # a Ray of our own: --jobs runs at once
            options["num_cpus"] = launch.jobs * (launch.threads or 1)
        try:
            ray.init(**options, include_dashboard=False, logging_level="WARNING")
        except Exception as exc:  # noqa: BLE001 - a wrong address, a cluster that is down
            raise CamimError(f"--launcher ray: could not start or reach Ray ({one_line(exc)})") from None
    try:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0) if use_gpus else 0
        threads = launch.threads or default_threads(resources.get("CPU", 1), gpus)
        if threads > resources.get("CPU", 0):  # Ray would wait for such a task forever
            raise CamimError(
                f"--threads-per-run {threads}: each run would ask Ray for {threads} CPUs, and the cluster has "
                f"{resources.get('CPU', 0):g}"
            )
        each = "1 GPU" if gpus else f"{threads} CPU(s)"
        print(f"{len(jobs)} run(s) to train as Ray tasks, {each} each (cluster: {resources.get('CPU', 0):g} "
              f"CPUs, {gpus:g} GPUs), {threads} torch thread(s) per run")  # fmt: skip
        # max_retries=0: a task whose worker died fails as a pool run does (a rerun resumes it), rather than
        # being trained again unseen, e.g. after each out-of-memory kill
        task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=threads, max_calls=1, max_retries=0)(train_job)
        jobs = [replace(job, threads=threads) for job in jobs]
        # absolute paths: a task's working directory is its worker's own (on another node too), not ours
        refs = {task.remote(job.absolute()): job for job in jobs}
        return _ray_outcomes(ray, refs, report)
    finally:
        if started:
            ray.shutdown()


def _ray_outcomes(ray, refs: dict, report: Report) -> list[JobOutcome]:
    """Wait for the Ray tasks ``refs`` (ref -> the caller's job), reporting each outcome, with the caller's
    job, as it arrives. Interrupted (Ctrl-C), it cancels the tasks still running, also on a cluster that
    outlives this process: a rerun must not train a run folder that a forgotten task still writes."""
    pending, outcomes = list(refs), []
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            job = refs[done[0]]
            try:
                outcome = replace(ray.get(done[0]), job=job)
            except Exception as exc:  # noqa: BLE001 - the task's worker died or the task was cancelled
                outcome = JobOutcome(job, error=f"its Ray task failed ({one_line(exc)})")
            outcomes.append(_reported(outcome, report))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return outcomes

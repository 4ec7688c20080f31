"""Tasks for the local pool's tests: standard library only, so a spawned worker starts in a fraction of a
second (the pool imports this module in each fresh process)."""

from __future__ import annotations

import os
import time


def report_device(job):
    """What a pool worker saw: its CUDA_VISIBLE_DEVICES, its pid, and when it held its slot."""
    from camim.experiments import worker

    start = time.monotonic()
    time.sleep(0.5)  # long enough for the two workers to overlap
    seen = {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(), "start": start,
            "end": time.monotonic()}  # fmt: skip
    return worker.JobOutcome(job, scores=seen, device=worker._held_device)


def fail_or_die(job):
    """A run that fails with a camim error (job "bad"), a worker killed mid-run (job "dies", 0.2 s in), or a
    run that succeeds after 1 s (any other job, so that it is training when "dies" is killed)."""
    from camim.errors import CamimError
    from camim.experiments import worker

    if job.label == "bad":
        return worker.JobOutcome(
            job, error=worker.one_line(CamimError("offline.pretrained_encoder: no such folder"))
        )
    if job.label == "dies":
        time.sleep(0.2)
        os._exit(9)
    time.sleep(1.0)
    return worker.JobOutcome(job, scores={"f1": float(job.seed)})


def terminated_or_done(job):
    """A run whose process alone got SIGTERM 0.2 s in (job "terminated": what ``train_job`` raises then, from
    ``camim.trainer.interruptible``), or a run that succeeds after 1 s (any other job)."""
    from camim.errors import Terminated
    from camim.experiments import worker

    if job.label == "terminated":
        time.sleep(0.2)
        raise Terminated(f"run the same command again to resume from {job.output}/checkpoints/last.ckpt")
    time.sleep(1.0)
    return worker.JobOutcome(job, scores={"f1": float(job.seed)})


def train_until_stopped(job):
    """A run that trains (sleeps) for a minute after writing its pid to ``<job.output>.pid``; job "stubborn"
    ignores SIGTERM, as a run stuck in a long step would, and must be killed."""
    import signal
    from pathlib import Path

    if job.label == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(job.output + ".part").write_text(str(os.getpid()))
    os.replace(job.output + ".part", job.output + ".pid")  # whole when the test sees it
    time.sleep(60)

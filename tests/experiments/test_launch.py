"""Grids and seeds in parallel: ``--jobs N`` (a local process pool, one GPU per worker) and ``--launcher ray``
give the same per-run metrics as one run after another; a killed grid resumes without redoing finished runs;
a failing run is named while the others are summarised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.training.conftest import TINY

from camim.cli import main
from camim.errors import CamimError
from camim.experiments import grids, launch, worker
from camim.experiments.launch import Launch
from camim.experiments.worker import RunJob

# tiny runs: 16 training samples, 8 per evaluation split, one epoch
SMALL = [*TINY, "optim.epochs=1", "data.train_limit=16", "data.eval_limit=8"]


def _args(data: Path, out: Path, seeds: list[int], *extra: str) -> list[str]:
    args = ["experiment", "--preset", "offline-bert", "--seeds", *map(str, seeds)]
    args += ["--data-dir", str(data), "--output", str(out), *extra]
    for o in SMALL:
        args += ["--set", o]
    return args


def _test_scores(out: Path, seeds) -> dict[int, dict]:
    return {s: json.loads((out / f"seed{s}" / "metrics.json").read_text())["test"] for s in seeds}


@pytest.fixture(scope="module")
def sequential(tiny_mnre, tmp_path_factory) -> dict[int, dict]:
    """The reference: seeds 1-3 trained one after another in this process (the default)."""
    out = tmp_path_factory.mktemp("sequential")
    assert main(_args(tiny_mnre, out, [1, 2, 3])) == 0
    return _test_scores(out, [1, 2, 3])


def test_jobs_2_gives_the_sequential_metrics(tiny_mnre, tmp_path, sequential, capsys):
    out = tmp_path / "jobs2"
    assert main(_args(tiny_mnre, out, [1, 2], "--jobs", "2")) == 0
    assert "2 run(s) to train, 2 at once on CPU, 1 torch thread(s) per run" in capsys.readouterr().out
    assert _test_scores(out, [1, 2]) == {s: sequential[s] for s in (1, 2)}  # every score, exactly
    assert "progress_bar: false" in (out / "seed1" / "config.yaml").read_text()  # no bars side by side


def test_local_ray_gives_the_sequential_metrics(tiny_mnre, tmp_path, sequential, capsys):
    """camim starts a local Ray (--jobs 2: 2 CPUs), runs each seed as a task, and stops it."""
    ray = pytest.importorskip("ray")
    out = tmp_path / "ray"
    try:
        assert main(_args(tiny_mnre, out, [1, 2], "--jobs", "2", "--launcher", "ray")) == 0
        assert not ray.is_initialized()  # the Ray it started is shut down
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert "as Ray tasks, 1 CPU(s) each (cluster: 2 CPUs, 0 GPUs)" in capsys.readouterr().out
    assert _test_scores(out, [1, 2]) == {s: sequential[s] for s in (1, 2)}


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids |= {int(k) for k in (task / "children").read_text().split()}
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_grid_resumes_without_redoing_finished_runs(tiny_mnre, tmp_path, sequential):
    """SIGKILL `camim experiment --jobs 2` once its first run finished: its pool workers die with it (no run
    keeps writing), and the rerun reuses the finished runs and ends with the uninterrupted metrics."""
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    cmd = [sys.executable, "-m", "camim", *_args(tiny_mnre, out, [1, 2, 3], "--jobs", "2")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("seed*/metrics.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no run finished"
            time.sleep(0.05)
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "a pool worker outlived the killed grid"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("seed*/metrics.json")}
    assert 1 <= len(finished) < 3
    assert main(_args(tiny_mnre, out, [1, 2, 3], "--jobs", "2")) == 0
    assert {n: (out / n / "metrics.json").stat().st_mtime_ns for n in finished} == finished  # not redone
    assert _test_scores(out, [1, 2, 3]) == sequential


def test_a_failing_row_is_named_and_the_others_summarised(tiny_mnre, tmp_path, monkeypatch, capsys):
    """A grid whose second row fails when it trains (its encoder folder does not exist): the table and plot
    are written from the first row, the failure is named with its run folder, and the command exits 1. (In
    this process: a run failing in a pool worker comes back through the same outcome, see the pool test.)"""
    spec = tmp_path / "grids.yaml"
    missing = tmp_path / "no_encoder"
    spec.write_text(
        "tiny:\n  - group: tiny\n    rows:\n      - {label: ok, preset: offline-bert}\n"
        "      - {label: broken, preset: offline-bert, overrides: [model.text_encoder_pretrained=true, "
        f"'offline.pretrained_encoder={missing}']}}\n"
    )
    monkeypatch.setattr(grids, "GRIDS_FILE", spec)
    out = tmp_path / "grid"
    args = [
        "experiment",
        "tiny",
        "--seeds",
        "1",
        "--jobs",
        "2",
        "--data-dir",
        str(tiny_mnre),
        "--output",
        str(out),
    ]
    for o in SMALL:
        args += ["--set", o]
    assert main(args) == 1
    printed = capsys.readouterr().out
    reason = f"offline.pretrained_encoder: {missing} is not a finished `camim pretrain` folder"
    assert f"failed: {out / 'broken' / 'seed1'}: {reason}" in printed
    md = (out / "tiny.md").read_text()
    assert f"- `{out / 'broken' / 'seed1'}`: {reason}" in md
    test = json.loads((out / "ok" / "seed1" / "metrics.json").read_text())["test"]
    cells = " | ".join(f"{test[k]:.2f} (1 seed) | -" for k in ("accuracy", "precision", "recall", "f1"))
    assert f"| ok | {cells} |" in md  # one seed: no spread measured (not "± 0.00"); no paper number
    assert "| broken | - | - | - | - | - | - | - | - |" in md
    assert (out / "tiny_tiny.png").stat().st_size > 1000
    assert json.loads((out / "broken" / "summary.json").read_text())["failed"][0]["reason"].startswith(reason)


def test_a_failing_seed_in_this_process_is_named(tiny_mnre, tmp_path, monkeypatch, capsys):
    """Sequential runs: seed 2 raises; seed 1's scores are summarised, seed 2 named, exit status 1."""
    from camim.training import api

    real = api.train_run

    def train_or_fail(preset, data_dir, output, overrides=None, overwrite=False):
        if Path(output).name == "seed2":
            raise RuntimeError("CUDA out of memory\nsecond line")
        return real(preset, data_dir, output, overrides=overrides, overwrite=overwrite)

    monkeypatch.setattr(api, "train_run", train_or_fail)
    out = tmp_path / "exp"
    assert main(_args(tiny_mnre, out, [1, 2])) == 1
    printed = capsys.readouterr().out
    assert f"failed: {out / 'seed2'}: RuntimeError: CUDA out of memory\n" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["per_seed"]) == ["1"] and summary["test"]["f1"]["n"] == 1
    assert "## Runs that failed" in (out / "summary.md").read_text()


def test_threads_per_run_is_set_for_the_run_and_restored(monkeypatch):
    import torch

    from camim.training import api

    seen = []

    def fake_train_run(preset, data_dir, output, overrides=None, overwrite=False):
        seen.append(torch.get_num_threads())
        return api.RunResult(metrics={"test": {"f1": 1.0}}, output_dir=Path(output), model_dir=Path(output))

    monkeypatch.setattr(api, "train_run", fake_train_run)
    before = torch.get_num_threads()
    for threads in (1, 2):
        outcome = worker.train_job(RunJob("x", 1, "offline-bert", "d", "o", (), threads=threads))
        assert outcome.ok and outcome.scores == {"f1": 1.0}
    assert seen == [1, 2] and torch.get_num_threads() == before


def test_pool_names_a_failed_run_and_a_dead_worker_and_the_others_finish():
    """A worker killed mid-run fails only its own run: the run training beside it and the runs queued after it
    finish (with one shared pool, the killed worker broke the pool and every other run with it)."""
    from tests.experiments.pool_helpers import fail_or_die

    jobs = [
        RunJob(label, seed, "p", "d", label, ()) for seed, label in enumerate(["ok1", "dies", "bad", "ok2"])
    ]
    outcomes = {o.job.output: o for o in launch._pool(jobs, 2, [], lambda o: None, task=fail_or_die)}
    assert outcomes["bad"].error == "offline.pretrained_encoder: no such folder"
    assert outcomes["dies"].error.startswith("its process died (BrokenProcessPool")
    assert outcomes["ok1"].ok and outcomes["ok1"].scores == {"f1": 0.0}  # was training when "dies" was killed
    assert outcomes["ok2"].ok and outcomes["ok2"].scores == {"f1": 3.0}


def test_pool_run_terminated_alone_fails_alone_and_the_others_finish():
    """SIGTERM to one run's process (``kill``, a memory guard) ends that run in ``Terminated``, which used to
    stop the whole grid (exit 143, the runs beside it terminated mid-epoch): it fails alone, like a killed one,
    saying where a rerun resumes."""
    from tests.experiments.pool_helpers import terminated_or_done

    jobs = [
        RunJob(label, seed, "p", "d", label, ()) for seed, label in enumerate(["ok1", "terminated", "ok2"])
    ]
    outcomes = {o.job.output: o for o in launch._pool(jobs, 2, [], lambda o: None, task=terminated_or_done)}
    assert outcomes["terminated"].error == (
        "its process was terminated (SIGTERM); run the same command again to resume from "
        "terminated/checkpoints/last.ckpt"
    )
    assert outcomes["ok1"].scores == {"f1": 0.0} and outcomes["ok2"].scores == {"f1": 2.0}


def test_pool_gives_each_worker_its_own_gpu():
    """Four runs on two GPUs: a fresh process per run, each seeing one GPU through CUDA_VISIBLE_DEVICES, and
    runs that overlap in time never share one."""
    from tests.experiments.pool_helpers import report_device

    jobs = [RunJob(f"r{i}", i, "p", "d", f"out{i}", ()) for i in range(4)]
    outcomes = launch._pool(jobs, 2, ["3", "5"], lambda o: None, task=report_device)
    seen = [o.scores for o in outcomes]
    assert sorted(o.job.output for o in outcomes) == ["out0", "out1", "out2", "out3"]
    assert {s["visible"] for s in seen} == {"3", "5"} and all(
        o.device == o.scores["visible"] for o in outcomes
    )
    assert len({s["pid"] for s in seen}) == 4  # max_tasks_per_child=1: one process per run
    for a in seen:
        for b in seen:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["visible"] != b["visible"]


INTERRUPTED_POOL = """
import sys
from camim.experiments import launch
from camim.experiments.worker import RunJob
from tests.experiments.pool_helpers import train_until_stopped

launch.STOP_GRACE_S = 1.0
jobs = [RunJob(label, 1, "p", "d", f"{sys.argv[1]}/{label}", ()) for label in ("obeys", "stubborn")]
try:
    launch._pool(jobs, 2, [], print, task=train_until_stopped)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigint_to_the_grid_alone_stops_its_runs_and_returns(tmp_path):
    """SIGINT to the pool's process alone (a notebook's interrupt, kill -INT; not Ctrl-C on a terminal, which
    reaches the runs too): the runs are terminated, the one ignoring SIGTERM is killed after the grace period
    (1 s here), and the call returns at once after (it used to return with both runs still training, and the
    process then waited a minute for them at exit)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    cmd = [sys.executable, "-c", INTERRUPTED_POOL, str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_files = [tmp_path / "obeys.pid", tmp_path / "stubborn.pid"]
    runs: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not all(p.exists() for p in pid_files):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the runs did not start: {proc.communicate()}")
            time.sleep(0.05)
        runs = [int(p.read_text()) for p in pid_files]
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - start
    finally:
        for pid in [proc.pid, *runs]:  # whatever the test found, nothing is left running
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert out == "interrupted\n" and proc.returncode == 0
    assert "stopping 2 running run(s) (killed if still running in 1 s)" in err
    assert not any(_alive(pid) for pid in runs)
    assert 1.0 <= elapsed < 6.0  # the grace period, then no wait for the runs


LOCK_HOLDER = """
import fcntl, sys, time
lock = open(sys.argv[1], "ab")
fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock")
def test_a_second_trainer_on_a_locked_run_folder_is_refused_in_one_line(tiny_mnre, tmp_path, capsys):
    """A run folder whose lock another process holds (a trainer still writing it: a first grid's pool worker
    that a notebook's interrupt left running, say) is refused in one line naming the folder, before anything
    is written; once that process is gone, the folder is free (the system drops a dead process's lock)."""
    from camim.runs import RunFolder

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out / ".train.lock")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"
        args = ["train", "--config", "offline-bert", "--data-dir", str(tiny_mnre), "--output", str(out)]
        assert main([*args, *(a for o in SMALL for a in ("--set", o))]) == 1
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err == (
        f"camim: error: {out}: another process is training this run folder (it holds .train.lock); wait for "
        "it to end, or stop it, before training it again\n"
    )
    assert sorted(p.name for p in out.iterdir()) == [".train.lock"]  # nothing written
    with RunFolder(out).writing():  # the killed holder's lock is gone with it
        pass


def test_ddp_runs_are_refused_side_by_side(tiny_mnre, tmp_path, capsys):
    args = _args(tiny_mnre, tmp_path / "exp", [1], "--jobs", "2", "--set", "trainer.devices=2")
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trainer.devices > 1 trains one run over several devices (DDP)" in err
    assert not (tmp_path / "exp").exists()


class FakeRay:
    """Ray's API as `_ray` uses it, on a pretend cluster: records what each task asks for and runs it here."""

    def __init__(self, resources: dict, workdir: Path | None = None):
        self.resources, self.asked, self.initialised = resources, [], True
        self.cancelled, self.interrupt_after = [], None  # Ctrl-C after that many outcomes
        self.workdir = workdir  # a task's working directory (a Ray worker's is its own), else this one
        self.jobs = []  # the jobs the tasks were sent

    def is_initialized(self):
        return self.initialised

    def cluster_resources(self):
        return self.resources

    def remote(self, **options):
        def wrap(fn):
            ray = self

            class Task:
                def remote(self, job):
                    ray.asked.append((options, job.threads))
                    ray.jobs.append(job)
                    here = os.getcwd()
                    os.chdir(ray.workdir or here)
                    try:
                        return FakeRef(fn(job))
                    finally:
                        os.chdir(here)

            return Task()

        return wrap

    def wait(self, pending, num_returns):
        if self.interrupt_after is not None and len(pending) + self.interrupt_after == len(self.asked):
            raise KeyboardInterrupt
        return pending[:num_returns], pending[num_returns:]

    def cancel(self, ref, force=False):
        self.cancelled.append((ref.value.job.output, force))

    def get(self, ref):
        return ref.value


class FakeRef:  # an ObjectRef: hashable by identity
    def __init__(self, value):
        self.value = value


def _fake_task(job):
    return worker.JobOutcome(job, scores={"f1": 1.0})


def test_ray_tasks_ask_for_one_gpu_each_on_a_gpu_cluster(monkeypatch):
    """A cluster of 16 CPUs and 8 GPUs: each run asks for 1 GPU and 2 CPUs and trains on 2 threads (the CPUs
    per GPU); on CPUs only, for T CPUs; a thread count the cluster cannot give is refused, not queued forever."""
    fake = FakeRay({"CPU": 16.0, "GPU": 8.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(launch, "train_job", _fake_task)
    jobs = [RunJob("r", s, "p", "d", f"out{s}", ()) for s in (1, 2)]
    outcomes = launch.run_jobs(jobs, Launch(launcher="ray"), use_gpus=True, report=lambda o: None)
    assert [o.job.output for o in outcomes] == ["out1", "out2"]
    assert fake.asked == [({"num_gpus": 1, "num_cpus": 2, "max_calls": 1, "max_retries": 0}, 2)] * 2
    fake.asked.clear()  # runs set to the CPU (trainer.accelerator=cpu): CPUs only, one thread each
    launch.run_jobs(jobs, Launch(launcher="ray"), use_gpus=False, report=lambda o: None)
    assert fake.asked == [({"num_gpus": 0, "num_cpus": 1, "max_calls": 1, "max_retries": 0}, 1)] * 2
    with pytest.raises(CamimError, match="each run would ask Ray for 32 CPUs, and the cluster has 16"):
        launch.run_jobs(jobs, Launch(launcher="ray", threads=32), use_gpus=False, report=lambda o: None)


def test_ray_tasks_get_absolute_paths_and_a_rerun_reuses_their_runs(tiny_mnre, tmp_path, monkeypatch):
    """A Ray task starts in a folder of its own (here another folder of this machine), where the command's
    relative paths would name other folders: it gets --data-dir and --output absolute and trains from the
    command's folder (a relative --set path, here the encoder folder the run builds, means what it meant to
    the command). The run lands where the command said, and the same command run again reuses it, though
    its config.yaml holds the data folder absolute."""
    fake = FakeRay({"CPU": 2.0}, workdir=tmp_path / "worker")
    fake.workdir.mkdir()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.chdir(tmp_path)
    args = _args(Path(os.path.relpath(tiny_mnre)), Path("exp"), [1], "--set", "offline.encoder_dir=enc")
    assert main([*args, "--launcher", "ray"]) == 0
    sent = fake.jobs[0]
    assert (sent.data_dir, sent.output, sent.cwd) == (
        str(tiny_mnre),
        str(tmp_path / "exp" / "seed1"),
        str(tmp_path),
    )
    assert os.getcwd() == str(tmp_path) and not list(
        fake.workdir.iterdir()
    )  # nothing written in the worker's
    metrics = tmp_path / "exp" / "seed1" / "metrics.json"
    assert (tmp_path / "enc" / "camim_offline.json").is_file() and metrics.is_file()
    stamp = metrics.stat().st_mtime_ns
    assert main(args) == 0  # in this process, with the relative paths
    assert metrics.stat().st_mtime_ns == stamp  # reused, not trained again


def test_interrupted_ray_grid_cancels_the_tasks_still_running(monkeypatch):
    """Ctrl-C after the first of three outcomes: the two tasks left are cancelled (force: their workers are
    killed), so no forgotten task on a cluster keeps writing a folder that the rerun trains again."""
    fake = FakeRay({"CPU": 4.0})
    fake.interrupt_after = 1
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(launch, "train_job", _fake_task)
    jobs = [RunJob("r", s, "p", "d", f"out{s}", ()) for s in (1, 2, 3)]
    reported = []
    with pytest.raises(KeyboardInterrupt):
        launch.run_jobs(jobs, Launch(launcher="ray"), use_gpus=False, report=reported.append)
    assert [o.job.output for o in reported] == ["out1"]
    assert fake.cancelled == [(os.path.abspath(f"out{s}"), True) for s in (2, 3)]  # as the tasks got them


def test_jobs_on_gpus_are_capped_at_one_run_per_gpu(monkeypatch, capsys):
    """--jobs 4 on a machine with two GPUs: two workers, each given one GPU; CPUs per GPU threads per run."""
    seen = {}

    def fake_pool(jobs, workers, gpus, report):
        seen.update(workers=workers, gpus=gpus, threads={j.threads for j in jobs})
        return [worker.JobOutcome(j, scores={}) for j in reversed(jobs)]

    monkeypatch.setattr(launch, "visible_gpus", lambda: ["2", "3"])
    monkeypatch.setattr(launch, "_pool", fake_pool)
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 16)
    jobs = [RunJob("r", s, "p", "d", f"out{s}", ()) for s in range(5)]
    outcomes = launch.run_jobs(jobs, Launch(jobs=4), use_gpus=True, report=lambda o: None)
    assert seen == {"workers": 2, "gpus": ["2", "3"], "threads": {8}}
    assert [o.job.output for o in outcomes] == [f"out{s}" for s in range(5)]  # in the order of the jobs
    assert "5 run(s) to train, 2 at once on 2 GPU(s), 8 torch thread(s) per run" in capsys.readouterr().out


def test_visible_gpus_keep_the_ids_cuda_visible_devices_names(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    assert launch.visible_gpus() == ["4", "6"]  # a worker given "6" sees the parent's sixth GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launch.visible_gpus() == ["0", "1"]


def test_launch_options_are_checked(monkeypatch):
    with pytest.raises(CamimError, match="--jobs must be >= 1"):
        Launch(jobs=0)
    with pytest.raises(CamimError, match="--threads-per-run must be >= 1"):
        Launch(threads=0)
    with pytest.raises(CamimError, match="--ray-address goes with --launcher ray"):
        Launch(ray_address="ray://head:10001")
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(CamimError, match=r"^--launcher ray needs Ray: pip install 'camim\[ray\]'$"):
        launch.import_ray()

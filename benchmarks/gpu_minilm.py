"""Issue 37's MiniLM grids on one lent GPU within a wall-clock budget: several runs at once, results as they go.

Run by ``benchmarks/gpu_minilm.sh`` (which unpacks ``.device/mnre.tar.xz``; docs/speed.md, "Issue 37's MiniLM
grids on a lent GPU").
The runs are those of the grids (``camim.experiments.grids.plan_seeds`` with each row's overrides, into
``<runs>/<grid>/<row slug>/seed<k>/`` as ``benchmarks/offline_ablations.py`` lays them out, so ``offline_ablations.py
--regime minilm --report-only --output <runs>`` reports them), in :data:`PRIORITY` order, with these overrides on
top: ``model.text_encoder=<the fp16 copy>`` (``benchmarks/device_pack.py``), ``trainer.accelerator`` and
``speed.cuda_graphs=false`` (see below). Everything else is the grid's: ``trainer.precision`` 32-true with the
presets' ``speed.fast``/``speed.bf16``, which on CUDA is ``torch.autocast("cuda", bfloat16)`` inside the fast
step, as on the CPU (``minilm-precision``'s fp32 row sets ``speed.bf16=false``: plain fp32, TF32 off, the same
comparison as on the CPU).

CUDA graphs are off unless ``--graphs``: the presets pad each batch to its longest row, so batch shapes vary,
only the first four shapes would be captured (``speed.graphs``), and a failed capture stops the run; graphs
compute what the eager step computes. A finished run with the same resolved config is reused (a second call on
the same warm machine), an unfinished one resumes from its ``last.ckpt``, and a row whose resolved config equals
an earlier one (Table 2's MiniCPM row is Table 1's CAM + MI run) is copied from it once it has finished.

Up to ``--jobs`` runs train at once, each a process of its own (``camim.experiments.worker.train_job``, with
``--threads`` torch threads). A run starts while the time left holds its kind's estimated duration (text-only or
caption model: the longest finished run of the kind, else one running run's first epoch plus its last epoch times
the epochs left, else ``--estimate KIND=S``; a kind with no estimate starts while any time is left: its epochs
are what is measured).
A run that fails before its first epoch is started again once with ``--fallback``'s overrides (default
``speed.foreach_casts=false``: the multi-tensor weight casts, on by default on CUDA and not yet run on a GPU;
autocast computes the same either way), which every later run then gets too (``"fallback": true`` in the
summary); after three failures before any run reached an epoch, no more runs start. At the deadline the runs
still going are stopped (SIGTERM, then SIGKILL after 10 s): a later call on the SAME
warm machine resumes them from their last finished epoch; a fresh machine has lost them.

As it goes, under ``--out`` (at most these three files, the device call returns 8): ``gpu_minilm.log`` (what is
printed), ``gpu_minilm.json`` (per run: status, wall time, per-epoch times from the run's epoch lines, first vs
steady epoch, test/val F1, best epoch; the device and the encoder) and ``gpu_minilm_runs.tar.gz`` (the finished
runs' ``config.yaml`` and ``metrics.json`` in the grid layout).

    bash benchmarks/gpu_minilm.sh OUT_DIR [--budget-s 330] [--jobs 6]      # on the device, after device_pack.py
    bash benchmarks/gpu_minilm.sh OUT_DIR --small                          # a CPU check of under 3 minutes
    python benchmarks/gpu_minilm.py --table OUT_DIR/gpu_minilm.json         # the runs' times and F1 as a table
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ENCODER_NOTE = (
    "encoder: fp16 copy of all-MiniLM-L6-v2 (weights rounded to fp16, an fp32 model built from them; "
    "computation fp32 or bf16 autocast as each run's speed.bf16 says)"
)
#: (grid, row labels (None: every row, in the grid's order), seeds), highest priority first; seed-major
PRIORITY = (
    ("minilm-table1", ("bert", "tmr-cam-mi", "tmr-cam-mi-shuffled"), (1, 2, 3)),
    ("minilm-table1", ("tmr",), (1, 2, 3)),
    ("minilm-precision", None, (1,)),
    ("minilm-table2", None, (1,)),
)
#: --small: two text/caption runs, one more queued behind them, and a copy (MiniCPM = Table 1's CAM + MI)
SMALL_PRIORITY = (
    ("minilm-table1", ("bert", "tmr-cam-mi"), (1,)),
    ("minilm-table1", ("tmr",), (1,)),
    ("minilm-table2", ("minicpm/tmr-cam-mi",), (1,)),
)
SMALL_OVERRIDES = (
    "data.train_limit=16",
    "data.eval_limit=16",
    "optim.epochs=2",
    "trainer.max_steps=2",
)  # 2 epochs of 1 step
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): \d+ steps")
OUTCOME = re.compile(r"^camim run .*: (failed: .*|done)$")  # one_run's last line
STOP_GRACE_S = 10.0
#: appended to every later run once a run failed before its first epoch: code paths on by default on CUDA that
#: no GPU has run yet (the weight casts in multi-tensor copies; autocast's own result either way)
FALLBACK = ("speed.foreach_casts=false",)
#: this many runs failed before their first epoch, none reached one: no more runs are started
HOPELESS = 3
FINISHED = ("finished", "reused", "copied")
LOG, SUMMARY, TARBALL = "gpu_minilm.log", "gpu_minilm.json", "gpu_minilm_runs.tar.gz"


@dataclass
class Run:
    """One grid run and what became of it (``job``: None for a run reused or copied from ``twin``)."""

    grid: str
    label: str
    seed: int
    folder: Path
    kind: str  # "text" (the bert row) or "caption"
    epochs: int
    job: object = None
    twin: Run | None = None
    status: str = "queued"
    started: float | None = None
    ended: float | None = None
    epoch_lines: list[tuple[int, float]] = field(default_factory=list)  # (epoch, when its line came)
    tail: deque = field(default_factory=lambda: deque(maxlen=12))
    process: subprocess.Popen | None = None
    reader: threading.Thread | None = None
    note: str = ""
    fallback: bool = False  # started with --fallback's overrides

    @property
    def name(self) -> str:
        return f"{self.grid}/{self.folder.parent.name}/seed{self.seed}"


# ---------------------------------------------------------------------------------------------------- plan
def plan(
    runs_dir: Path, data_dir: str, overrides: list[str], priority=PRIORITY
) -> tuple[list[Run], list[str]]:
    """Every run of ``priority`` as the grids plan it (a finished run with the same config reused, a folder
    holding another run refused), a run equal to an earlier one made its copy; and the grids left out."""
    from camim.errors import CamimError
    from camim.experiments.grids import grid_names, grid_rows, plan_seeds, slug

    names, planned, skipped = set(grid_names()), [], []
    for grid, labels, seeds in priority:
        if grid not in names:
            skipped.append(f"{grid}: not in grids.yaml (yet)")
            continue
        rows = {r["label"]: r for r in grid_rows(grid)}
        missing = [label for label in labels or () if label not in rows]
        if missing:
            raise CamimError(f"grid {grid}: no row {missing[0]!r}")
        for seed in seeds:
            for r in [rows[label] for label in labels] if labels else rows.values():
                folder = runs_dir / grid / slug(r["label"])
                p = plan_seeds(
                    r["preset"], data_dir, folder, [seed], [*r["overrides"], *overrides], False, r["label"]
                )
                kind = "text" if p.config.model.name == "bert" else "caption"
                run = Run(grid, r["label"], seed, folder / f"seed{seed}", kind, p.config.optim.epochs)
                run.twin = _twin(p.config, planned)
                if seed in p.reused:
                    run.status = "reused"
                elif run.twin is None:
                    run.job = p.jobs[0]
                planned.append((run, p.config))
    return [r for r, _ in planned], skipped


def _twin(cfg, planned: list) -> Run | None:
    """The first planned run whose resolved config equals ``cfg`` (run-neutral keys aside), or None."""
    from camim.training.config import RUN_NEUTRAL_KEYS
    from camim.typed import differing_keys

    mine = cfg.to_dict()
    return next(
        (
            r
            for r, c in planned
            if not differing_keys(c.to_dict(), mine, ignore=RUN_NEUTRAL_KEYS) and r.twin is None
        ),
        None,
    )


# ------------------------------------------------------------------------------------------- the runs
class Driver:
    """Starts, watches and stops the runs; writes the log, the summary and the tarball as it goes."""

    def __init__(self, args: argparse.Namespace, runs: list[Run], info: dict):
        self.args, self.runs, self.info = args, runs, info
        self.t0 = args.started_at
        self.stop_at = self.t0 + args.budget_s - STOP_GRACE_S - 5  # the stop, the last writes
        self.lock = threading.Lock()
        self.fallback_on = False
        self.log = open(args.out / LOG, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole call
        (args.runs / "logs").mkdir(parents=True, exist_ok=True)

    def say(self, line: str) -> None:
        with self.lock:
            text = f"[{time.time() - self.t0:6.1f} s] {line}"
            print(text, flush=True)
            self.log.write(text + "\n")
            self.log.flush()

    def drive(self) -> None:
        """:meth:`loop`; an error in it kills the runs still going, so none trains on into the call's next
        command (gpu_check's timings) with no driver left to stop it."""
        try:
            self.loop()
        except BaseException:
            for run in self.running():
                run.process.kill()
                run.process.wait()
            raise

    def loop(self) -> None:
        while True:
            for run in self.running():
                if run.process.poll() is not None:
                    self.finish(run)
            self.copy_twins()
            if time.time() >= self.stop_at and self.running():
                self.stop_all()
                break
            while len(self.running()) < self.args.jobs and (run := self.next_run()) is not None:
                self.start(run)
            if not self.running():
                break
            time.sleep(0.5)
        why = (
            f"{HOPELESS} runs failed before their first epoch"
            if self.hopeless()
            else "the budget left no time"
        )
        if self.hopeless():
            self.say(f"no more runs started: {why}, none reached one (see the runs' logs)")
        for run in self.runs:
            if run.status == "queued":
                run.status = "not started"
                run.note = why if run.twin is None else f"{run.twin.name} did not finish"
        self.write()

    def running(self) -> list[Run]:
        return [r for r in self.runs if r.status == "running"]

    def next_run(self) -> Run | None:
        """The first queued run (no copy) whose kind's estimate fits in the time left; none once the stop's time
        has come (a kind without an estimate would start there only to be stopped at once)."""
        left = self.stop_at - time.time()
        if self.hopeless() or left <= 0:
            return None
        for run in self.runs:
            if run.status == "queued" and run.job is not None:
                guess = self.estimate(run.kind)
                if guess is None or guess <= left:
                    return run
        return None

    def hopeless(self) -> bool:
        """:data:`HOPELESS` runs failed before their first epoch and no run has reached one (say, a package
        missing on the machine): starting more would fail alike."""
        early = sum(r.status == "failed" and not r.epoch_lines for r in self.runs)
        return early >= HOPELESS and not any(r.epoch_lines for r in self.runs)

    def estimate(self, kind: str) -> float | None:
        """A run of ``kind``'s expected wall time (module docstring)."""
        done = [r.ended - r.started for r in self.runs if r.kind == kind and r.status == "finished"]
        if done:
            return max(done)
        for r in self.runs:
            times = epoch_times(r)
            if r.kind == kind and r.status == "running" and len(times) >= 2:
                return times[0] + times[-1] * (r.epochs - 1)
        return self.args.estimate.get(kind)

    def start(self, run: Run) -> None:
        job = self.job_for(run)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one-run", json.dumps(asdict(job))]
        log = self.args.runs / "logs" / f"{run.name.replace('/', '__')}.log"
        # bytes that are not UTF-8 are replaced: a reader that died on one would leave the pipe full and the run
        # blocked on its next write until the deadline
        run.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                       encoding="utf-8", errors="replace",
                                       env={**os.environ, "OMP_NUM_THREADS": str(self.args.threads)})  # fmt: skip
        run.status, run.started, run.fallback = "running", time.time(), self.fallback_on
        run.tail.clear()
        run.reader = threading.Thread(target=self.read, args=(run, log), daemon=True)
        run.reader.start()
        self.say(f"start {run.name} ({run.kind}, {len(self.running())} running)")
        self.write()

    def job_for(self, run: Run):
        """The run's grid job with ``--threads`` and, once needed, the fallback overrides last."""
        extra = tuple(self.args.fallback) if self.fallback_on else ()
        return replace(run.job, threads=self.args.threads, overrides=(*run.job.overrides, *extra))

    def read(self, run: Run, log: Path) -> None:
        """A run's output: all of it into its log file; its epoch lines (timed) and outcome line into ours."""
        with open(log, "a", encoding="utf-8") as fh:
            for line in run.process.stdout:
                now, line = time.time(), line.rstrip("\n")
                fh.write(line + "\n")
                run.tail.append(line)
                if m := EPOCH_LINE.match(line):
                    run.epoch_lines.append((int(m.group(1)), now))
                    self.say(f"{run.name}: {line} [{now - run.started:.1f} s since start]")
                elif OUTCOME.match(line):
                    self.say(f"{run.name}: {line}")

    def finish(self, run: Run) -> None:
        run.reader.join(timeout=5)
        run.ended = time.time()
        ok = run.process.returncode == 0 and (run.folder / "metrics.json").is_file()
        if run.status == "stopped" and ok:  # it finished during the stop's grace
            run.status, run.note = "finished", ""
        if run.status == "running":
            run.status = "finished" if ok else "failed"
            if not ok:
                last = [line for line in run.tail if OUTCOME.match(line)] or list(run.tail)[-4:]
                run.note = f"exit {run.process.returncode}: " + " | ".join(last)
            if not ok and not run.epoch_lines and not run.fallback and self.args.fallback:
                self.fallback_on, run.status = True, "queued"  # every later run gets the fallback too
                run.note = f"failed before its first epoch ({run.note}); queued again with {' '.join(self.args.fallback)}"
        self.say(
            f"{run.status} {run.name} in {run.ended - run.started:.1f} s{': ' + run.note if run.note else ''}"
        )
        self.write()

    def copy_twins(self) -> None:
        for run in self.runs:
            if run.status == "queued" and run.twin is not None and run.twin.status in FINISHED:
                if not run.folder.exists():
                    shutil.copytree(run.twin.folder, run.folder)
                run.status, run.note = "copied", f"the same run as {run.twin.name}"
                self.say(f"copied {run.twin.name} -> {run.name} (the same resolved config)")
                self.write()

    def stop_all(self) -> None:
        running = self.running()
        self.say(f"deadline: stopping {len(running)} run(s) (SIGTERM, SIGKILL after {STOP_GRACE_S:.0f} s)")
        for run in running:
            run.status = "stopped"
            run.note = (f"stopped at the deadline after {len(run.epoch_lines)} epoch line(s): resumes from its last "
                        "finished epoch (last.ckpt) in a later call on this warm machine; lost on a fresh one")  # fmt: skip
            run.process.terminate()
        deadline = time.time() + STOP_GRACE_S
        for run in running:
            try:
                run.process.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
            self.finish(run)

    # ------------------------------------------------------------------------------------------ outputs
    def write(self) -> None:
        summary = {
            **self.info,
            "elapsed_s": round(time.time() - self.t0, 1),
            "runs": [describe(r) for r in self.runs],
        }
        write_atomic(self.args.out / SUMMARY, lambda p: p.write_text(json.dumps(summary, indent=1) + "\n"))
        done = [r for r in self.runs if r.status in FINISHED]
        write_atomic(self.args.out / TARBALL, lambda p: tar_runs(p, self.args.runs, done))


def write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def tar_runs(path: Path, root: Path, runs: list[Run]) -> None:
    """``path``: a tar.gz of the ``config.yaml`` and ``metrics.json`` of ``runs``, relative to ``root``."""
    with tarfile.open(path, "w:gz") as tar:
        for run in runs:
            for name in ("config.yaml", "metrics.json"):
                tar.add(run.folder / name, arcname=str((run.folder / name).relative_to(root)))


def epoch_times(run: Run) -> list[float]:
    """Seconds per epoch from the run's epoch lines (each printed once its epoch's validation is done); the
    first counts from the process's start (imports, model load, device set-up, the first shapes)."""
    when = [run.started, *(t for _, t in run.epoch_lines)] if run.started else []
    return [b - a for a, b in zip(when, when[1:])]


def describe(run: Run) -> dict:
    """A run's entry of the summary: what it is, what became of it, its times and (finished) scores."""
    times = epoch_times(run)
    steady = statistics.median(times[1:]) if len(times) > 1 else None
    out = {"grid": run.grid, "row": run.label, "seed": run.seed, "kind": run.kind, "status": run.status,
           "folder": f"{run.grid}/{run.folder.parent.name}/seed{run.seed}", "note": run.note, "fallback": run.fallback,
           "wall_s": round(run.ended - run.started, 1) if run.started and run.ended else None,
           "first_epoch": run.epoch_lines[0][0] if run.epoch_lines else None,
           "epoch_s": [round(t, 2) for t in times], "first_epoch_s": round(times[0], 2) if times else None,
           "steady_epoch_s": None if steady is None else round(steady, 2),
           "warmup_s": None if steady is None else round(times[0] - steady, 2)}  # fmt: skip
    metrics = run.folder / "metrics.json"
    if run.status in FINISHED and metrics.is_file():
        m = json.loads(metrics.read_text())
        out.update(test_f1=(m.get("test") or {}).get("f1"), val_f1=(m.get("val") or {}).get("f1"),
                   best_epoch=m.get("best_epoch"), speed=m.get("speed"))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- set-up
def preflight(args: argparse.Namespace) -> dict:
    """Check the device and the encoder copy before any run starts; what the summary says about them."""
    import torch

    from camim.errors import CamimError
    from camim.models.bundled import file_sha256
    from camim.models.encoders import load_text_encoder

    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise CamimError("--accelerator gpu: torch sees no CUDA device (use --small on a CPU machine)")
    record = json.loads((args.encoder / "PACK.json").read_text())
    if file_sha256(args.encoder / "model.safetensors") != record.get("sha256"):
        raise CamimError(
            f"{args.encoder / 'model.safetensors'}: sha256 differs from PACK.json (damaged in transit)"
        )
    dtypes = {str(p.dtype) for p in load_text_encoder(str(args.encoder)).parameters()}
    if dtypes != {"torch.float32"}:
        raise CamimError(f"{args.encoder}: transformers built the encoder in {sorted(dtypes)}, not float32")
    gpu = torch.cuda.get_device_name(0) if args.accelerator == "gpu" else None
    return {"device": gpu or f"cpu ({os.cpu_count()} cores)", "encoder": ENCODER_NOTE, "encoder_pack": record,
            "torch": torch.__version__, "budget_s": args.budget_s, "jobs": args.jobs, "threads_per_run": args.threads,
            "graphs": args.graphs, "small": args.small}  # fmt: skip


def overrides(args: argparse.Namespace) -> list[str]:
    """What every run gets on top of its grid's overrides (module docstring)."""
    out = [f"model.text_encoder={args.encoder}", f"trainer.accelerator={args.accelerator}"]
    if not args.graphs:
        out.append("speed.cuda_graphs=false")
    return [*out, *(SMALL_OVERRIDES if args.small else ()), *args.overrides]


def one_run(spec: str) -> int:
    """``--one-run JOB_JSON``: train one grid job in this process (the driver's child)."""
    from camim.experiments.worker import RunJob, train_job

    job = json.loads(spec)
    outcome = train_job(RunJob(**{**job, "overrides": tuple(job["overrides"])}))
    print(
        f"camim run {job['label']} seed {job['seed']}: "
        + (f"failed: {outcome.error}" if outcome.error else "done")
    )
    return 0 if outcome.ok else 1


def table(summary: dict) -> str:
    """``--table SUMMARY_JSON``: the runs of a summary as a markdown table (times in seconds), device first."""
    lines = [f"{summary['device']}; {summary['encoder']}", "",
             "| run | status | first epoch | steady epoch | warm-up | epochs timed | wall | val F1 | test F1 |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    num = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
    for r in summary["runs"]:
        lines.append(f"| {r['folder']} | {r['status']} | {num(r['first_epoch_s'])} | {num(r['steady_epoch_s'])} | "
                     f"{num(r['warmup_s'])} | {len(r['epoch_s'])} | {num(r['wall_s'])} | "
                     f"{num(r.get('val_f1'), '{:.2f}')} | {num(r.get('test_f1'), '{:.2f}')} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one-run"]:
        return one_run(argv[1])
    if argv[:1] == ["--table"]:
        print(table(json.loads(Path(argv[1]).read_text())))
        return 0
    args = _complete(_parser().parse_args(argv))
    from camim.errors import CamimError, first_line

    try:
        info = preflight(args)
        runs, skipped = plan(
            args.runs, args.data_dir, overrides(args), SMALL_PRIORITY if args.small else PRIORITY
        )
    except (CamimError, OSError, KeyError, ValueError, RuntimeError) as exc:  # RuntimeError: CUDA's
        print(f"gpu_minilm: error: {first_line(exc)}", file=sys.stderr)
        return 1
    driver = Driver(args, runs, {**info, "skipped_grids": skipped, "overrides": overrides(args)})
    driver.say(f"{info['device']}; {len(runs)} runs planned, {args.jobs} at once, {args.threads} thread(s) each; "
               f"budget {args.budget_s:.0f} s; {'; '.join(skipped) or 'every grid present'}")  # fmt: skip
    driver.drive()
    counts = {s: sum(r.status == s for r in runs) for s in dict.fromkeys(r.status for r in runs)}
    driver.say(
        f"done: {', '.join(f'{n} {s}' for s, n in counts.items())}; {args.out / SUMMARY}, {args.out / TARBALL}"
    )
    return 1 if counts.get("failed") else 0


def _estimate(text: str) -> tuple[str, float]:
    kind, _, seconds = text.partition("=")
    if kind not in ("text", "caption"):
        raise argparse.ArgumentTypeError(f"--estimate {text}: expected text=S or caption=S")
    return kind, float(seconds)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--encoder", type=Path, required=True, help="the fp16 copy (.device/minilm-fp16)")
    ap.add_argument("--runs", type=Path, required=True, help="the grids' folders go here")
    ap.add_argument("--out", type=Path, required=True, help="the log, the JSON summary and the tarball")
    ap.add_argument(
        "--budget-s", type=float, default=330.0, help="wall clock of the whole call, from --started-at"
    )
    ap.add_argument("--started-at", type=float, default=time.time(), help="epoch seconds (the .sh's start)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at once (default 6; --small 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: CPUs // jobs)")
    ap.add_argument("--estimate", type=_estimate, action="append", default=[], metavar="KIND=S")
    ap.add_argument("--graphs", action="store_true", help="leave speed.cuda_graphs automatic (on for CUDA)")
    ap.add_argument("--small", action="store_true", help="tiny runs on the CPU (a check of this script)")
    ap.add_argument("--fallback", action="append", metavar="KEY=VALUE",
                    help=f"overrides of the retry after a failure before the first epoch (default {' '.join(FALLBACK)}; none: no retry)")  # fmt: skip
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return ap


def _complete(args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on ``--small``: 6 runs at once on the GPU, 2 on the CPU; threads to match."""
    args.jobs = args.jobs or (2 if args.small else 6)
    args.threads = args.threads or (1 if args.small else max(1, (os.cpu_count() or 1) // args.jobs))
    args.estimate = dict(args.estimate)
    args.fallback = [] if args.fallback == ["none"] else args.fallback or list(FALLBACK)
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs, args.encoder = args.runs.resolve(), args.encoder.resolve()
    args.accelerator = "cpu" if args.small else "gpu"
    return args


if __name__ == "__main__":
    sys.exit(main())

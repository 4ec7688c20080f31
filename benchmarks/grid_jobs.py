"""Wall time of a small experiment trained one run after another against ``--jobs 2`` on this machine.

    python benchmarks/grid_jobs.py --data-dir ../shared/data/mnre [--seeds 1 2 3 4] [--set data.train_limit=800]

Trains ``offline-bert`` over ``--seeds`` twice, into two fresh folders under ``--output`` (default: a new
temporary folder), side by side in this process through :func:`camim.experiments.grids.run_seeds` (what
``camim experiment --preset offline-bert --seeds ...`` runs): first one run after another in this process
(``--jobs 1``), then up to two at once in a spawned process pool (``--jobs 2``). Both use one torch thread per
run (``--threads-per-run`` default on CPU). Prints each wall time with the load average before it, the ratio,
a busy-loop probe of how many cores two processes get on the machine as it is (before and after: other work
on a shared machine takes cores that --jobs 2 would need), and checks that every run's test scores are
identical in both modes (exit 1 if not).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# each run ~20-40 s on one core of the 2-core development machine
DEFAULT_SET = ["data.train_limit=1200", "data.eval_limit=400", "optim.epochs=3", "trainer.progress_bar=false"]


def _spin(n: int = 20_000_000) -> float:
    start = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - start


def _cores_free() -> float:
    """How many cores this machine gives two busy processes now: a pure-Python loop alone vs two at once
    (2.0: two free cores; 1.0: the second is taken by other work, so --jobs 2 cannot gain)."""
    from concurrent.futures import ProcessPoolExecutor

    alone = _spin()
    with ProcessPoolExecutor(2) as pool:
        both = max(pool.map(_spin, [20_000_000] * 2))
    print(f"busy-loop probe: {alone:.2f} s alone, {both:.2f} s each with two at once", flush=True)
    return 2 * alone / both


def _timed(label: str, run) -> float:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.1f} s (1-min load average before: {load:.2f})", flush=True)
    return seconds


def main() -> int:
    from camim.experiments.grids import run_seeds
    from camim.experiments.launch import Launch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="an MNRE folder (with caption/minicpm_*.txt)")
    p.add_argument("--output", default=None, help="where the two experiment folders go (default: a temp dir)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--preset", default="offline-bert")
    p.add_argument("--first", choices=["sequential", "jobs2"], default="sequential",
                   help="which mode runs first (swap to see drift in the machine's load)")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help=f"replaces the defaults {' '.join(DEFAULT_SET)}")  # fmt: skip
    args = p.parse_args()
    overrides = args.overrides if args.overrides is not None else DEFAULT_SET
    root = Path(args.output or tempfile.mkdtemp(prefix="grid_jobs_"))
    modes = ["sequential", "jobs2"] if args.first == "sequential" else ["jobs2", "sequential"]
    folders = {m: root / m for m in modes}
    for folder in folders.values():
        if folder.exists():
            sys.exit(f"{folder} exists: give a fresh --output (the benchmark times training, not reuse)")
    print(
        f"{args.preset} over seeds {args.seeds}; --set {' '.join(overrides)}; {os.cpu_count()} CPUs; {root}"
    )
    free_before = _cores_free()
    times = {
        mode: _timed(mode, lambda m=mode: run_seeds(args.preset, args.data_dir, folders[m], args.seeds, overrides,
                                                     launch=Launch(jobs=1 if m == "sequential" else 2)))
        for mode in folders
    }  # fmt: skip
    print(
        f"| mode | wall (s) |\n|---|---|\n| sequential | {times['sequential']:.1f} |\n| --jobs 2 | {times['jobs2']:.1f} |"
    )
    print(f"ratio sequential / --jobs 2: {times['sequential'] / times['jobs2']:.2f}x")
    print(f"cores free for two processes (probe, before / after): {free_before:.2f} / {_cores_free():.2f}")
    scores = {m: {s: json.loads((f / f"seed{s}" / "metrics.json").read_text())["test"] for s in args.seeds}
              for m, f in folders.items()}  # fmt: skip
    same = scores["sequential"] == scores["jobs2"]
    for s in args.seeds:
        print(f"seed {s}: test f1 {scores['sequential'][s]['f1']:.2f} / {scores['jobs2'][s]['f1']:.2f}")
    print("per-run test scores identical: " + ("yes" if same else "NO"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

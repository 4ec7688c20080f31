"""Offline MNRE benchmark: ``offline-bert`` vs ``offline-tmr-cam-mi`` (MiniCPM captions), several seeds each.

Trains both offline presets (compact encoders from scratch, own WordPiece vocabulary, text + captions only)
on a real MNRE folder and prints test micro-F1 mean ± std per preset and the gain of the caption model.
These numbers are NOT comparable with the paper's (no pretrained BERT, no images).

    python benchmarks/offline_mnre.py --data-dir ../shared/data/mnre --seeds 1 2 3 --jobs 2

Both presets share one vocabulary, built once. Runs go to ``--output/<preset>/seed<k>/`` and are resumable:
finished runs are reused and unfinished ones resume from their ``last.ckpt``. ``--jobs 2`` trains two runs at
a time, one CPU thread each (faster than one run on two threads for models this small). ``--set`` applies
to both presets (e.g. ``--set data.train_limit=640 --set optim.epochs=1`` for a smoke run).
Targets (full run): offline-tmr-cam-mi >= 35 mean test F1 and >= 3 above offline-bert, < 60 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PRESETS = ("offline-bert", "offline-tmr-cam-mi")


def _one(preset: str, data_dir: str, run_dir: str, overrides: list[str], threads: int) -> tuple[str, float]:
    import torch

    torch.set_num_threads(threads)
    from camim.training.api import train_run

    t0 = time.time()
    if not (Path(run_dir) / "metrics.json").is_file():
        train_run(preset, data_dir, run_dir, overrides=overrides)
    return run_dir, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnre")
    )
    ap.add_argument("--output", default="runs/offline_mnre")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--caption-source", default="minicpm", help="captions of offline-tmr-cam-mi")
    ap.add_argument(
        "--jobs", type=int, default=2, help="runs trained at the same time (1 thread each if > 1)"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    from camim.training.config import load_config
    from camim.training.experiment import run_seeds
    from camim.training.offline import build_offline_encoder

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    # One vocabulary for both presets (their offline sections are identical), built once.
    enc_dir = (out / "offline_encoder").resolve()
    base = load_config(PRESETS[0], args.overrides)
    build_offline_encoder(base.offline, args.data_dir, enc_dir, limit=base.data.train_limit)
    common = [*args.overrides, f"offline.encoder_dir={enc_dir}"]
    per_preset = {
        "offline-bert": common,
        "offline-tmr-cam-mi": [*common, f"data.caption_source={args.caption_source}"],
    }

    jobs = [(p, s) for p in reversed(PRESETS) for s in args.seeds]  # longest runs first
    threads = 1 if args.jobs > 1 else 2
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(
                _one,
                p,
                args.data_dir,
                str(out / p / f"seed{s}"),
                [*per_preset[p], f"optim.seed={s}"],
                threads,
            )
            for p, s in jobs
        ]
        for f in futures:
            run_dir, secs = f.result()
            print(f"  done {run_dir} ({secs / 60:.1f} min)", flush=True)

    # Aggregate (run_seeds reuses the finished runs' metrics.json).
    summaries = {p: run_seeds(p, args.data_dir, out / p, args.seeds, per_preset[p]) for p in PRESETS}
    wall = (time.time() - t_start) / 60
    print()
    print(
        f"Offline MNRE benchmark, seeds {args.seeds}, overrides {args.overrides or 'none'} (not comparable with the paper)"
    )
    print(f"{'preset':<22} {'test F1':>16} {'accuracy':>16} {'precision':>16} {'recall':>16}")
    for p, s in summaries.items():
        t = s["test"]
        cells = [
            f"{t[k]['mean']:6.2f} ± {t[k]['std']:5.2f}" for k in ("f1", "accuracy", "precision", "recall")
        ]
        print(f"{p:<22} " + " ".join(f"{c:>16}" for c in cells))
    gain = (
        summaries["offline-tmr-cam-mi"]["test"]["f1"]["mean"]
        - summaries["offline-bert"]["test"]["f1"]["mean"]
    )
    f1 = summaries["offline-tmr-cam-mi"]["test"]["f1"]["mean"]
    print(f"gain (offline-tmr-cam-mi - offline-bert): {gain:+.2f} F1")
    print(
        f"targets: offline-tmr-cam-mi >= 35 F1: {'met' if f1 >= 35 else 'NOT met'} ({f1:.2f}); "
        f"gain >= 3: {'met' if gain >= 3 else 'NOT met'}; wall time {wall:.1f} min (< 60: {'met' if wall < 60 else 'NOT met'})"
    )
    (out / "benchmark.json").write_text(
        json.dumps(
            {
                "seeds": args.seeds,
                "overrides": args.overrides,
                "wall_min": wall,
                "gain_f1": gain,
                "summaries": summaries,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

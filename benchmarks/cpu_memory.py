"""speed.keep_freed_memory against glibc's defaults, side by side in one process: the `minilm-*` training step.

The text-only row (``minilm-bert``) and TMR + CAM + MI in text-caption mode (``minilm-tmr-cam-mi``), built from
their presets with the bundled MiniLM encoder and fed real MNRE training batches as ``benchmarks/cpu_bf16.py``
does (its ``batches``), the presets' step (``speed.fast`` with bf16 autocast). Rounds alternate between glibc's
malloc defaults (:func:`camim.speed.memory.release_freed_memory`) and freed memory kept
(:func:`camim.speed.memory.keep_freed_memory`) on the same model and optimiser; each round times every batch's
training step. Prints the median seconds per step of each and their ratio.

    python benchmarks/cpu_memory.py --data-dir ../shared/data/mnre [--threads 1] [--rounds 6] [--json out.json]

Needs glibc, the data folder and the package; says so and exits 2 without them.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_bf16 import batches, missing, parser, step_for  # noqa: E402

from camim.speed import memory  # noqa: E402
from camim.speed.fast import FastStep  # noqa: E402


def alternate(step: FastStep, items: list, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each round, glibc's defaults and kept memory alternating (defaults first)."""
    step(items[0])  # warm-up: first-call allocations, oneDNN primitives
    per_step: dict[str, list[float]] = {"default": [], "keep": []}
    for _ in range(rounds):
        for mode, apply in (("default", memory.release_freed_memory), ("keep", memory.keep_freed_memory)):
            apply()
            start = time.perf_counter()
            for item in items:
                step(item)
            per_step[mode].append((time.perf_counter() - start) / len(items))
    memory.release_freed_memory()
    return per_step


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, batches=3, rounds=6, threads=1).parse_args(argv)
    lacking = "needs Linux with glibc (mallopt)" if memory._glibc() is None else missing(args.data_dir)
    if lacking:
        print(lacking, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads {args.threads}, batch {args.batch_size} x {args.batches}, {args.rounds} rounds each")
    print(f"{'preset':<20} {'default s/step':>15} {'kept s/step':>12} {'default/kept':>13}")
    rows = {}
    for preset in args.presets:
        cfg, model, items = batches(preset, args.data_dir, args.batches, args.batch_size)
        rounds = alternate(step_for(cfg, model, bf16=True), items, args.rounds)
        default, keep = (statistics.median(rounds[k]) for k in ("default", "keep"))
        rows[preset] = {**rounds, "median_default": default, "median_keep": keep, "ratio": default / keep}
        print(f"{preset:<20} {default:>15.3f} {keep:>12.3f} {default / keep:>12.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

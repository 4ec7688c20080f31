"""`camim train` end to end on one GPU: plain vs ``speed.fast`` (and the released step), one epoch each.

A synthetic world with drawn images in MNRE's layout (``camim.synthetic``), random-init encoders of the
paper's sizes saved as folders (no hub): a ``BertConfig()`` (bert-base) with a WordPiece vocabulary built from
the world's training text and captions (``camim.pretraining.offline.wordpiece_vocabulary``), and a
``ResNetConfig()`` (ResNet-50). Modes (``--modes``): ``plain`` is ``camim train``'s defaults (eager fp32, the
released AdamW update in multi-tensor kernels), ``fast`` adds ``speed.fast=true``, and ``released`` is plain
with ``optim.multi_tensor=false``: the released per-parameter AdamW loop, the step ``step_speed.py`` takes as its
baseline. Every run's ``vs plain`` is printed, and ``fast`` against ``released`` at the end. For each preset
(``tmr-cam-mi``, ``hvpnet-cam-mi``) and mode, one epoch of
``camim train`` runs in a fresh process (so start-up, model loading, compile and graph capture count) through
the Python API with a timing callback, and one line per run is printed (flushed):

- ``wall s``: the whole run (build, fit, final validation and test, writing the run folder);
- ``epoch s``: the training epoch (first batch to last, synchronised; not the validation after it);
- ``warm-up s``: the first ``--warm-batches`` training batches (compile, graph capture, cuDNN autotuning);
- ``samples/s``: training samples per second after those batches (the steady state);
- ``between ms`` / ``step ms``: host milliseconds per steady-state batch spent between batches (DataLoader
  ``next``, the copy to the device, Lightning's bookkeeping) and inside the step (training step and optimiser
  step; unsynchronised, so a step that waits for the GPU shows here). In a fast run (page-locked batches,
  asynchronous copy) a ``between`` that dominates means the input pipeline bounds the epoch; in a plain run
  the copy is synchronous and waits for the previous step's GPU work, so its ``between`` holds GPU time too.

``--profile-batches N`` runs torch.profiler over the last N training batches of each preset's first fast run
(left out of ``samples/s``) and prints per-batch GPU-busy time, kernel and op counts and the top operators.

``--image-cache`` lets the fast runs read the decoded-image cache (``data.image_cache_dir``, built by the
first of them). ``fast`` runs twice by default (``--repeat-fast 2``), the second time with the first run's
compile cache and image cache in place. ``--json PATH`` is rewritten after every run. ``--budget-s S`` is an
end time: a run still going when S seconds have passed is stopped (``"status": "stopped"``), and a run is
not started with less than ``MIN_RUN_S`` (20 s) left (said in the output); neither is a failure. A run that
fails (its process exits non-zero, e.g. on a compile error, or runs past ``--run-timeout-s``) is printed and
written in the JSON with ``"status": "failed"`` and its one-line ``error``, and the next run starts; the exit
status is 1 when any run failed. ``--small`` uses tiny encoders and
images (CPU check).

    python benchmarks/gpu_e2e.py [--presets tmr-cam-mi hvpnet-cam-mi] [--train 960] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT_PREFIX = "GPU_E2E_RESULT "
MODES = ("plain", "fast", "released")
MIN_RUN_S = 20.0  # --budget-s: no run is started with less time left than this (a fresh process loads models)


def write_encoders(world: Path, folder: Path, small: bool) -> tuple[Path, Path]:
    """bert-base (or tiny) with a WordPiece vocabulary of the world's text, and ResNet-50 (or tiny)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, ResNetConfig, ResNetModel

    from camim.pretraining.offline import vocabulary_corpus, wordpiece_vocabulary

    text, vision = folder / "bert", folder / "resnet"
    vocab = wordpiece_vocabulary(vocabulary_corpus(world, "minicpm"), 30522, 1, True)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(text)
    if small:
        bert = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128)  # fmt: skip
        resnet = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                              layer_type="basic")  # fmt: skip
    else:
        bert, resnet = BertConfig(vocab_size=len(vocab)), ResNetConfig()
    BertModel(bert, add_pooling_layer=False).save_pretrained(text)
    ResNetModel(resnet).save_pretrained(vision)
    return text, vision


def overrides_for(preset: str, text: Path, vision: Path, args, mode: str, out: Path) -> list[str]:
    fast = mode == "fast"
    o = [
        f"model.text_encoder={text}",
        f"model.vision_encoder={vision}",
        "model.text_encoder_pretrained=true",
        "model.vision_encoder_pretrained=true",
        "data.caption_source=minicpm",
        f"data.num_workers={args.workers}",
        "optim.epochs=1",
        "optim.eval_begin_epoch=1",
        f"optim.batch_size={args.batch_size}",
        "trainer.progress_bar=false",
        f"trainer.deterministic={args.deterministic}",
    ]
    if args.small:
        o += ["model.image_size=64"]
    if mode == "released":
        o += ["optim.multi_tensor=false"]  # the released per-parameter AdamW loop
    if fast and args.image_cache:
        o += [
            f"data.image_cache_dir={out / f'image-cache-{preset}'}"
        ]  # decoded once, shared by its fast runs
    if fast:
        o += [
            "speed.fast=true",
            f"speed.compile={args.compile}",
            f"speed.compile_cache_dir={out / 'compile-cache'}",
        ]
    return o


def one_run(args) -> None:
    """Child process: one `camim train` run with a timing callback; prints one RESULT line."""
    import lightning as L
    import torch
    from step_speed import profile_summary  # benchmarks/ is on sys.path: this script runs as a file

    from camim.training.api import train_run

    class Timer(L.Callback):
        """Epoch (first batch to last, not the validation after it), warm-up and steady-state times; the
        host's time between batches (DataLoader ``next``, the copy to the device, Lightning's bookkeeping)
        apart from its time in the step (a batch's start to its end, optimiser step included; no
        synchronisation, so a step that waits for the GPU shows there); and, with ``--profile-batches N``,
        torch.profiler over the epoch's last N batches, which the rate leaves out."""

        def __init__(self, warm: int, profile: int):
            if warm < 1:
                raise ValueError("--warm-batches must be at least 1")
            self.warm, self.profile, self.t = warm, profile, {}
            self.samples, self.batches = 0, 0
            self.between_s = self.step_s = 0.0
            self.prof = self.profiled = None
            self.profile_from: int | None = None

        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_epoch_start(self, trainer, pl_module):
            self.total = trainer.num_training_batches
            if self.profile and self.total - self.profile > self.warm:
                self.profile_from = self.total - self.profile
            elif self.profile:
                self.profiled = {"skipped": f"{self.total} batches leave none to profile after the warm-up"}
            self.t["start"] = self.t["batch_end"] = self._now()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == self.profile_from:
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.prof = profile(activities=acts)
                self.prof.__enter__()
                self.t["profile"] = self._now()  # after the profiler's own start-up
            now = time.perf_counter()
            if batch_idx >= self.warm and self.prof is None:
                self.between_s += now - self.t["batch_end"]
            self.t["batch_start"] = now

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            if batch_idx >= self.warm and self.prof is None:  # a steady-state batch
                self.step_s += now - self.t["batch_start"]
                self.samples += len(batch)
                self.batches += 1
            self.t["batch_end"] = now
            if batch_idx + 1 == self.warm:
                self.t["warm"] = self.t["batch_end"] = self._now()
            if batch_idx + 1 == self.profile_from:
                self.t["measured"] = self._now()  # the steady state ends with this batch
            if batch_idx + 1 == self.total:
                self.t["last"] = self._now()
                if self.prof is not None:
                    self.prof.__exit__(None, None, None)
                    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
                    self.profiled = profile_summary(self.prof, self.total - self.profile_from,
                                                    self.t["last"] - self.t["profile"], device)  # fmt: skip
                    self.prof = None

    t0 = time.perf_counter()
    timer = Timer(args.warm_batches, args.profile_batches)
    out = Path(args.out)
    result = train_run(args.preset, args.world, out / "run", overrides=args.overrides, callbacks=[timer])
    wall = time.perf_counter() - t0
    t = timer.t
    steady_end = t.get("measured", t["last"])
    per_batch = lambda x: round(1e3 * x / timer.batches, 1) if timer.batches else None  # noqa: E731
    row = {
        "wall_s": round(wall, 1),
        "epoch_s": round(t["last"] - t["start"], 2),
        "warmup_s": round(t["warm"] - t["start"], 2) if "warm" in t else None,
        "samples_per_s": round(timer.samples / (steady_end - t["warm"]), 1) if timer.samples else None,
        "between_ms_per_batch": per_batch(timer.between_s),
        "step_ms_per_batch": per_batch(timer.step_s),
        "test_f1": (result.metrics.get("test") or {}).get("f1"),
    }
    if timer.profiled:
        row["profile"] = timer.profiled
    speed = result.metrics.get("speed")
    if speed:
        row["speed"] = speed
    print(RESULT_PREFIX + json.dumps(row), flush=True)


def child_run(cmd: list[str], env: dict, limit: float | None) -> dict:
    """Run one child process (``--child``) within ``limit`` seconds -> its RESULT row; an exception saying
    why when it fails (its exit status and last lines) or runs over its limit."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"over its {limit:.0f} s limit") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def print_run(row: dict, preset: str, label: str, profile_batches: int) -> None:
    """The line of a finished run (and its profile's summary)."""
    num = lambda v, w, f=".1f": f"{v:>{w}{f}}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    print(f"{preset:<16}{label:<8}{num(row['wall_s'], 8)}{num(row['epoch_s'], 9)}{num(row['warmup_s'], 11)}"
          f"{num(row['samples_per_s'], 11)}{num(row['vs_plain'], 9, '.2f')}{'x' if row['vs_plain'] else ' '}"
          f"{num(row['between_ms_per_batch'], 12)}{num(row['step_ms_per_batch'], 9)}", flush=True)  # fmt: skip
    prof = row.get("profile")
    if prof and "skipped" in prof:
        print(f"  profile skipped: {prof['skipped']}", flush=True)
    elif prof:
        print(f"  profile of the last {profile_batches} batches: wall {prof['wall_ms_per_step']} ms/batch, "
              f"GPU busy {prof['gpu_busy_ms_per_step']} ms/batch, {prof['kernels_per_step']} kernels/batch, "
              f"{prof['aten_ops_per_step']} aten ops/batch", flush=True)  # fmt: skip
        print(prof["top"], flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--child``, one run); the exit status is 1 when a run failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tmr-cam-mi", "hvpnet-cam-mi"])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                    help="plain and fast run for every preset first, then released, then the repeated fast "
                         "runs")  # fmt: skip
    ap.add_argument("--train", type=int, default=960, help="training samples in the synthetic world")
    ap.add_argument("--eval", type=int, default=64, help="val and test samples")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers (both modes)")
    ap.add_argument("--warm-batches", type=int, default=5)
    ap.add_argument("--repeat-fast", type=int, default=2, help="fast runs per preset (cache warm on the 2nd)")
    ap.add_argument("--compile", default="auto", help="speed.compile of the fast runs")
    ap.add_argument("--deterministic", default="false", help="trainer.deterministic of every run")
    ap.add_argument("--image-cache", action="store_true", help="fast runs read the decoded-image cache")
    ap.add_argument("--profile-batches", type=int, default=0,
                    help="torch.profiler over the last N training batches of the first fast run of each preset "
                         "(left out of samples/s)")  # fmt: skip
    ap.add_argument("--small", action="store_true", help="tiny encoders and images (CPU check)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--budget-s", type=float, default=None, help="end within S seconds of the start")
    ap.add_argument("--started-at", type=float, default=None,
                    help="Unix time at which the --budget-s clock started (default: when the arguments are "
                         "parsed)")  # fmt: skip
    ap.add_argument("--run-timeout-s", type=float, default=None, help="stop one run after this long")
    ap.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    # child mode
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    ap.add_argument("--world", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.warm_batches < 1:
        ap.error("--warm-batches must be at least 1 (the steady state starts after them)")
    if args.child:
        one_run(args)
        return 0

    import torch
    from step_speed import budget_clock, failed_exit, survive  # benchmarks/ is on sys.path (run as a file)

    from camim.io import atomic_write_text
    from camim.synthetic import WorldConfig, generate_world

    t_start = budget_clock(args.started_at)
    tmp = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(tmp.name) if tmp else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    world = work / "world"
    size = 64 if args.small else 160
    if not (world / "ours_rel2id.json").exists():
        generate_world(world, WorldConfig(train=args.train, val=args.eval, test=args.eval, image_size=size,
                                          generated_size=size))  # fmt: skip
    text, vision = write_encoders(world, work / "encoders", args.small)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results: dict = {"env": {"device": device, "torch": torch.__version__, "train": args.train,
                             "batch_size": args.batch_size, "small": args.small,
                             "setup_s": round(time.perf_counter() - t_start, 1)}, "runs": []}  # fmt: skip
    print(f"device {device}; world {args.train} train / {args.eval} val / {args.eval} test samples; "
          f"batch {args.batch_size}; {'tiny' if args.small else 'bert-base + ResNet-50'} encoders; "
          f"setup {results['env']['setup_s']} s", flush=True)  # fmt: skip
    print(f"{'preset':<16}{'mode':<8}{'wall s':>8}{'epoch s':>9}{'warm-up s':>11}{'samples/s':>11}{'vs plain':>10}"
          f"{'between ms':>12}{'step ms':>9}", flush=True)  # fmt: skip

    def save() -> None:  # atomic: a benchmark killed while writing leaves the previous JSON whole
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.json, json.dumps(results, indent=1))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # plain and fast for every preset first (the target), then the released step (the step benchmark's
    # baseline), then the repeated fast runs (compile caches warm)
    plan = [(p, m, 1) for p in args.presets for m in ("plain", "fast") if m in args.modes]
    plan += [(p, "released", 1) for p in args.presets if "released" in args.modes]
    if "fast" in args.modes:
        plan += [(p, "fast", k) for k in range(2, args.repeat_fast + 1) for p in args.presets]
    rates: dict[tuple[str, str], float] = {}  # (preset, mode) -> the first run's samples/s
    for preset, mode, k in plan:
        label = mode if k <= 1 else f"fast#{k}"
        row = {"preset": preset, "mode": label}
        used = time.perf_counter() - t_start
        limit, budget_cut = args.run_timeout_s, False
        if args.budget_s is not None:  # the budget is an end time: a run gets at most what is left
            left = args.budget_s - used
            if left < MIN_RUN_S:
                print(
                    f"{preset:<16}{label:<8}  skipped: {used:.0f} s used of {args.budget_s:.0f} s", flush=True
                )
                row["skipped"] = "budget"
                results["runs"].append(row)
                save()
                continue
            budget_cut = limit is None or left < limit  # a timeout then is the budget's end, not a failure
            limit = left if budget_cut else limit
        out = work / f"{preset}-{mode}-{k}"
        cmd = [sys.executable, __file__, "--child", "--preset", preset, "--world", str(world), "--out", str(out),
               "--warm-batches", str(args.warm_batches),
               "--profile-batches", str(args.profile_batches if (mode, k) == ("fast", 1) else 0), "--overrides",
               *overrides_for(preset, text, vision, args, mode, work)]  # fmt: skip
        results["runs"].append(row)
        with survive(row, f"{preset:<16}{label:<8}", budget_cut):
            save()  # "running": a benchmark killed during this run leaves it so
            row.update(child_run(cmd, env, limit))
        if row["status"] == "ok":
            rate = row["samples_per_s"]
            if k == 1 and rate:
                rates[(preset, mode)] = rate
            plain_rate = rates.get((preset, "plain"))
            row["vs_plain"] = round(rate / plain_rate, 2) if rate and plain_rate else None
            print_run(row, preset, label, args.profile_batches)
        save()
    for preset in args.presets:  # the ratio step_speed.py reports, here for a whole epoch
        fast, released = rates.get((preset, "fast")), rates.get((preset, "released"))
        if fast and released:
            results.setdefault("fast_vs_released", {})[preset] = round(fast / released, 2)
            print(
                f"{preset}: fast {fast / released:.2f}x the released step (optim.multi_tensor=false)",
                flush=True,
            )
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(f"total {results['total_s']} s", flush=True)
    if tmp:
        tmp.cleanup()
    return failed_exit(results["runs"], "runs")


if __name__ == "__main__":
    sys.exit(main())

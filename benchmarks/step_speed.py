"""Training-step throughput: the released-code-equivalent eager fp32 step vs camim's fast steps, one process.

TMR + CAM + MI (CAMIM) built once from configs with random weights (no download); every variant starts
from the same weights (a deep copy) and trains on the same random batch (fixed shapes: text 128, caption
40, phrase 6, 3 object crops per side of which ``--real-crops`` are real, the rest zero-padded as released):

==========================  ============================================================================
released                    eager attention, fp32, per-parameter AdamW without bias correction, ResNet
                            fine-tuned over 8B images (BatchNorm in train mode), no compile
fast                        bf16 autocast, SDPA, channels-last, multi-tensor AdamW (eager)
fast-graphs                 fast + forward/loss/backward replayed from a CUDA graph (camim.speed.graphs;
                            the ``speed.fast`` default on CUDA)
fast-regional               fast + regional torch.compile (text-encoder layers, CAM's cross-attention)
fast-skip                   fast + the documented skip-padded-crops mode (backbone once for all pads)
frozen                      the backbone frozen, its features read from a feature store built beforehand
frozen-graphs               frozen + CUDA graph (weight casts in multi-tensor copies: speed.foreach_casts)
frozen-merged               frozen with bert2 over captions and text windows in one call
                            (``speed.merge_encoder_calls: true``, the CUDA default of the fast variants)
frozen-unmerged             frozen with the released two bert2 calls (``speed.merge_encoder_calls: false``,
                            the CPU default); not in the default lists
frozen-graphs-percast       frozen-graphs with autocast casting each weight itself (``speed.foreach_casts:
                            false``; the fast variants cast them in multi-tensor copies on CUDA)
frozen-bf16 / -percast      frozen with bf16 autocast and the weight casts in multi-tensor copies / one per
                            weight (both run on CPU too: op counts); not in the default lists
==========================  ============================================================================

Each variant's line is printed (flushed) the moment it is measured: samples/s of the steady state (best of
``--rounds`` rounds of ``--steps`` steps), the ratio to ``released`` at the same batch size, and the warm-up
seconds (the ``--warmup`` untimed steps: compile, graph capture, cuDNN autotuning) in a column of its own.
``--json PATH`` rewrites a JSON file after every variant. ``--budget-s S`` is an end time: a variant running
when S seconds have passed is stopped (``"status": "stopped"``, "over its limit") and what no longer fits is
skipped (said in the output); neither is a failure. ``--variant-timeout-s`` stops one variant that hangs
(e.g. in compile) sooner, as a failure. A variant that fails (an exception, a compile error, its timeout) is
printed and written in the JSON with ``"status": "failed"`` and its one-line ``error``, and the next variant
runs; the exit status is 1 when any variant (or profile) failed.

``--small`` (the default without CUDA; ``--real`` overrides it): tiny BERT (2 x 128) / ResNet (4 basic stages, 16..128 channels),
64-px images. Without ``--small`` on a GPU: bert-base and ResNet-50 configs, 224-px images (the paper's
sizes). ``--profile N`` adds a torch.profiler look at ``--profile-variants`` (default released, fast; N
steps each): kernel launches per step, GPU-busy vs wall time, and the top operators. Targets on a GPU
(issue 14): >= 3.5x at batch 16 fine-tuned, >= 12x frozen-visual; docs/speed.md has the H200 numbers.

    python benchmarks/step_speed.py [--small] [--batch-sizes 16 64] [--variants ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from camim.io import atomic_write_text
from camim.models import build_model
from camim.models.batch import MREBatch
from camim.optim import build_optimizer
from camim.speed.config import SpeedConfig
from camim.speed.fast import FastStep, apply_fast_mode
from camim.speed.features import FeatureStore, use_cached_features

LABELS = ["None"] + [f"/rel/{i}" for i in range(22)]  # 23 relations like MNRE
_FAST = {"fast": True, "cuda_graphs": False, "compile": "none"}
VARIANTS: dict[str, tuple[SpeedConfig, bool]] = {  # name -> (speed switches, frozen visual)
    "released": (SpeedConfig.released(), False),
    "fast": (SpeedConfig(**_FAST), False),
    "fast-graphs": (SpeedConfig(**{**_FAST, "cuda_graphs": True}), False),
    "fast-regional": (SpeedConfig(**{**_FAST, "compile": "regional"}), False),
    "fast-skip": (SpeedConfig(**{**_FAST, "skip_padded_crops": True}), False),
    "frozen": (SpeedConfig(**_FAST), True),
    "frozen-graphs": (SpeedConfig(**{**_FAST, "cuda_graphs": True}), True),
    "frozen-merged": (SpeedConfig(**{**_FAST, "merge_encoder_calls": True}), True),
    "frozen-unmerged": (SpeedConfig(**{**_FAST, "merge_encoder_calls": False}), True),
    "frozen-graphs-percast": (SpeedConfig(**{**_FAST, "cuda_graphs": True, "foreach_casts": False}), True),
    "frozen-bf16": (SpeedConfig(**{**_FAST, "bf16": True, "foreach_casts": True}), True),
    "frozen-bf16-percast": (SpeedConfig(**{**_FAST, "bf16": True, "foreach_casts": False}), True),
}
MIN_VARIANT_S = 5.0  # --budget-s: a variant is not started with less time left than this
GPU_VARIANTS = [
    "released",
    "fast",
    "fast-graphs",
    "fast-regional",
    "fast-skip",
    "frozen",
    "frozen-graphs",
    "frozen-graphs-percast",
]
CPU_VARIANTS = ["released", "fast", "fast-regional", "fast-skip", "frozen"]  # graphs need CUDA


def write_backbones(folder: Path, small: bool) -> tuple[Path, Path, int]:
    """Tokenizer + BERT config and a ResNet config saved to folders (random weights); returns image size."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, ResNetConfig, ResNetModel

    text, vision = folder / "bert", folder / "resnet"
    special = ["[PAD]"] + [f"[unused{i}]" for i in range(4)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_size = 1000 if small else 30522
    vocab = special + [f"w{i}" for i in range(vocab_size - len(special))]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(text)
    if small:
        bert = BertConfig(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=256)  # fmt: skip
        resnet = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                              layer_type="basic")  # fmt: skip
    else:
        bert, resnet = BertConfig(vocab_size=vocab_size), ResNetConfig()  # bert-base, ResNet-50
    BertModel(bert, add_pooling_layer=False).save_pretrained(text)
    ResNetModel(resnet).save_pretrained(vision)
    return text, vision, 64 if small else 224


def random_batch(b: int, size: int, real_crops: int, vocab: int, gen: torch.Generator) -> MREBatch:
    """A fixed-shape batch like the released loader's (text 128 with ~32 real tokens, caption 40, phrase 6)."""
    ids = torch.randint(10, vocab, (b, 128), generator=gen)
    mask = torch.zeros(b, 128, dtype=torch.long)
    mask[:, :32] = 1
    ids[mask == 0] = 0
    objects_mask = torch.zeros(b, 3, dtype=torch.long)
    objects_mask[:, :real_crops] = 1

    def crops() -> torch.Tensor:
        x = torch.randn(b, 3, 3, size, size, generator=gen)
        return x * objects_mask[:, :, None, None, None]  # zero-padded crops, as released

    return MREBatch(
        input_ids=ids, attention_mask=mask,
        head_pos=torch.full((b,), 1), tail_pos=torch.full((b,), 5),
        labels=torch.randint(0, len(LABELS), (b,), generator=gen),
        caption_input_ids=torch.randint(10, vocab, (b, 40), generator=gen),
        caption_attention_mask=torch.ones(b, 40, dtype=torch.long),
        phrase_input_ids=torch.randint(10, vocab, (b, 6), generator=gen),
        phrase_attention_mask=torch.ones(b, 6, dtype=torch.long),
        image=torch.rand(b, 3, size, size, generator=gen) * 255, objects=crops(), objects_mask=objects_mask,
        generated_image=torch.rand(b, 3, size, size, generator=gen) * 255, generated_objects=crops(),
        generated_objects_mask=objects_mask.clone(),
        scores=torch.rand(b, 4, generator=gen),
    )  # fmt: skip


@torch.no_grad()
def frozen_visual(model, batch: MREBatch, device) -> tuple[object, MREBatch]:
    """Frozen-visual ``model`` (store attached to its backbone) + ``batch`` carrying feature-row ids in its
    ``*_rows`` fields instead of pixels (features computed once, here)."""
    model.eval()
    b, m = batch.objects.shape[:2]
    pixels = torch.cat([batch.image, batch.generated_image, batch.objects.flatten(0, 1),
                        batch.generated_objects.flatten(0, 1)]).to(device)  # fmt: skip
    zero = torch.zeros(1, *pixels.shape[1:], device=device)
    feats = torch.cat([model.resnet.features(chunk, "tokens")[0] for chunk in pixels.split(64)])
    store = FeatureStore("tokens", [torch.cat([feats, model.resnet.features(zero, "tokens")[0]])])
    model = use_cached_features(model, store).train()
    rows = torch.arange(pixels.shape[0])
    obj, gobj = rows[2 * b : 2 * b + b * m].view(b, m).clone(), rows[2 * b + b * m :].view(b, m).clone()
    obj[batch.objects_mask == 0] = store.zero_row
    gobj[batch.generated_objects_mask == 0] = store.zero_row
    rb = dataclasses.replace(
        batch, image=None, generated_image=None, objects=None, generated_objects=None,
        image_rows=rows[:b], generated_image_rows=rows[b : 2 * b], objects_rows=obj, generated_objects_rows=gobj,
    )  # fmt: skip
    return model, rb


def time_steps(step: FastStep, batch: MREBatch, steps: int, device: torch.device) -> float:
    """samples/s over ``steps`` consecutive steps."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(batch)
    sync(device)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {float(loss)}")
    return len(batch) * steps / elapsed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise TimeoutError in the main thread after ``seconds`` (a variant stuck in compile, say)."""
    if not seconds:
        yield
        return

    def _raise(signum, frame):
        raise TimeoutError(f"over its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of ``exc`` on one line of at most ``limit`` characters (an inductor compile error
    spans a page; its first lines say which)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def survive(row: dict, label: str, budget_cut: bool = False):
    """One variant or run of a benchmark (also used by gpu_e2e.py and offline_mnre.py): ``row["status"]``
    is ``running`` inside (write the JSON then: a process killed mid-variant leaves it so), ``ok`` after,
    or ``failed`` with ``row["error"]`` the one-line reason when it raised (a compile error, ``time_limit``'s
    timeout, a failed child run). A failure is printed and swallowed, so the benchmark goes on with the
    next; Ctrl-C is not caught. ``budget_cut``: its time limit is the ``--budget-s`` end time, so a timeout
    is ``stopped`` (the budget's choice, as a variant skipped for it), not a failure. Test
    ``row["status"] == "ok"`` after the block."""
    row["status"] = "running"
    try:
        yield row
    except Exception as exc:  # noqa: BLE001 - any failure of one variant: report it and go on
        stopped = budget_cut and isinstance(exc, TimeoutError)
        row.update(status="stopped" if stopped else "failed", error=one_line(exc))
        print(
            f"{label}  {'stopped at the end of the budget' if stopped else 'failed'}: {row['error']}",
            flush=True,
        )
    else:
        row["status"] = "ok"


def failed_exit(rows: list[dict], what: str = "variants") -> int:
    """The exit status of a benchmark over ``rows``: 1 (and a line naming them) when some failed, else 0."""
    failed = [r for r in rows if r.get("status") == "failed"]
    if not failed:
        return 0
    keys = ("variant", "preset", "mode", "batch", "seed")  # what names a row in each benchmark
    names = ", ".join(" ".join(str(v) for k, v in r.items() if k in keys) for r in failed)
    print(f"{len(failed)} of {len(rows)} {what} failed: {names}", flush=True)
    return 1


def budget_clock(started_at: float | None) -> float:
    """The ``time.perf_counter()`` reading at which a ``--budget-s`` clock starts: ``started_at`` (Unix time,
    e.g. a launcher's, so the imports count), else now (also used by gpu_e2e.py)."""
    return time.perf_counter() - (time.time() - started_at if started_at else 0.0)


def profile_step(step: FastStep, batch: MREBatch, steps: int, device: torch.device) -> dict:
    """Kernel launches and GPU-busy time per step, and the top operators, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step(batch)
        sync(device)
    return profile_summary(prof, steps, time.perf_counter() - start, device)


def profile_summary(prof, steps: int, wall_s: float, device: torch.device) -> dict:
    """Per-step wall time, GPU-busy time, kernel and aten-op counts, and the top-15 operator table of a
    finished torch.profiler run over ``steps`` steps that took ``wall_s`` (also used by gpu_e2e.py)."""
    wall = wall_s / steps
    events = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy_us = sum(e.device_time for e in kernels) / steps if kernels else None
    aten = sum(e.count for e in events if e.key.startswith("aten::")) / steps
    casts = sum(e.count for e in events if e.key == "aten::_to_copy") / steps  # dtype casts (one kernel each)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {
        "wall_ms_per_step": round(wall * 1e3, 2),
        "gpu_busy_ms_per_step": None if busy_us is None else round(busy_us / 1e3, 2),
        "kernels_per_step": round(len(kernels) / steps, 1) if kernels else None,
        "aten_ops_per_step": round(aten, 1),
        "casts_per_step": round(casts, 1),
        "top": events.table(sort_by=sort, row_limit=15, max_name_column_width=50),
    }


def measure(base, batch: MREBatch, speed_cfg: SpeedConfig, frozen: bool, device, args, row: dict):
    """One variant at one batch size: its model (a copy of ``base``), optimiser and step, ``--warmup``
    untimed steps (``row["warmup_s"]``), then the best samples/s of ``--rounds`` -> (step, batch, rate)."""
    model, run_batch = copy.deepcopy(base), batch
    if frozen:
        model, run_batch = frozen_visual(model.to(device), batch, device)
    model = apply_fast_mode(model, speed_cfg, device).train()
    opt = build_optimizer(model, lr=2e-5, multi_tensor=bool(speed_cfg.resolved(device).fused_optimizer))
    step, run_batch = FastStep(model, opt, speed_cfg, device), run_batch.to(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step(run_batch)
    sync(device)
    row["warmup_s"] = round(time.perf_counter() - t0, 2)
    rate = max(time_steps(step, run_batch, args.steps, device) for _ in range(args.rounds))
    return step, run_batch, rate


def report_variant(row: dict, name: str, b: int, rate: float, released: float | None, step, graphs_on: bool):
    """Fill ``row`` with a measured variant's figures (the ratio against ``released`` at the same batch
    size) and print its line."""
    row["samples_per_s"] = round(rate, 1)
    row["ratio"] = round(rate / released, 2) if released else None
    graphs = step.forward_backward.stats.as_dict()
    if graphs_on:
        row["graphs"] = graphs
    row["compiled_regions"] = len(step.compiled_regions)
    ratio = f"{row['ratio']:>7.2f}x" if row["ratio"] else f"{'-':>8}"
    note = f"  (eager steps: {graphs['eager_reasons']})" if graphs["eager_steps"] and graphs_on else ""
    print(f"{name:<24}{b:>6}{rate:>11.1f}{ratio}{row['warmup_s']:>11.1f}{note}", flush=True)


def profile_variant(name: str, step, run_batch: MREBatch, args, device, left: float | None) -> dict:
    """torch.profiler over ``args.profile`` steps of a measured variant, within the budget ``left``: its
    summary, ``{"skipped": why}`` without time left, or a failed row (a profile that fails is a failure)."""
    if left is not None and left < MIN_VARIANT_S:
        print(f"  profile {name} skipped: no time left in the budget", flush=True)
        return {"variant": name, "skipped": "no time left in the budget"}
    row: dict = {"variant": name}
    with survive(row, f"  profile {name}", budget_cut=left is not None), time_limit(left):
        row.update(profile_step(step, run_batch, args.profile, device))
    if row["status"] == "ok":
        print(f"  profile {name}: wall {row['wall_ms_per_step']} ms/step, GPU busy "
              f"{row['gpu_busy_ms_per_step']} ms/step, {row['kernels_per_step']} kernels/step, "
              f"{row['aten_ops_per_step']} aten ops/step, {row['casts_per_step']} casts/step",
              flush=True)  # fmt: skip
        print(row["top"], flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit status is 1 when a variant (or a profile) failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny configs (the default without CUDA)")
    ap.add_argument(
        "--real", action="store_true", help="the paper's sizes even without CUDA (op counts on CPU)"
    )
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                    help=f"default on CUDA: {' '.join(GPU_VARIANTS)}; on CPU: {' '.join(CPU_VARIANTS)}")  # fmt: skip
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile / graph capture)")
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds per variant; the best is kept")
    ap.add_argument("--real-crops", type=int, default=2, help="real object crops per side (of 3)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write results here after every variant")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="end within S seconds of the start: a variant is stopped when the budget runs out, and "
                         f"skipped when less than {MIN_VARIANT_S:.0f} s are left")  # fmt: skip
    ap.add_argument("--started-at", type=float, default=None,
                    help="Unix time at which the --budget-s clock started (default: when the arguments are "
                         "parsed); gpu_check.sh passes the launch time, so the imports count")  # fmt: skip
    ap.add_argument("--variant-timeout-s", type=float, default=None, help="stop a variant after this long")
    ap.add_argument("--first-batch-only", nargs="*", default=[], choices=list(VARIANTS), metavar="VARIANT",
                    help="measure these variants at the first of --batch-sizes only")  # fmt: skip
    ap.add_argument("--compile-cache", default=None, help="inductor cache folder (speed.compile_cache_dir)")
    ap.add_argument("--profile", type=int, default=0, help="profile --profile-variants for N steps")
    ap.add_argument("--profile-variants", nargs="+", default=["released", "fast"], choices=list(VARIANTS))
    args = ap.parse_args(argv)
    t_start = budget_clock(args.started_at)

    def budget_left() -> float | None:
        return None if args.budget_s is None else args.budget_s - (time.perf_counter() - t_start)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    small = args.small or (not cuda and not args.real)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variants or (GPU_VARIANTS if cuda else CPU_VARIANTS)
    if "released" not in names:
        names = ["released", *names]  # every ratio is against it

    with tempfile.TemporaryDirectory() as tmp:
        text, vision, size = write_backbones(Path(tmp), small)
        torch.manual_seed(0)
        cfg = {"name": "tmr", "cam": "both", "mi": True, "text_encoder": str(text), "vision_encoder": str(vision),
               "text_encoder_pretrained": True, "vision_encoder_pretrained": True, "image_size": size}  # fmt: skip
        base = build_model(cfg, LABELS)
        vocab = base.bert.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    env = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "sizes": "small" if small else "real", "image_px": size, "real_crops": args.real_crops,
           "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "threads": torch.get_num_threads()}  # fmt: skip
    results: dict = {"env": env, "rows": [], "skipped": [], "profile": {}}
    print(f"device: {env['device']}; torch {torch.__version__}; sizes: {env['sizes']} (image {size}px, "
          f"{args.real_crops}/3 real crops per side); {args.steps} timed steps x best of {args.rounds} rounds "
          f"after {args.warmup} warm-up steps", flush=True)  # fmt: skip
    print(f"{'variant':<24}{'batch':>6}{'samples/s':>11}{'ratio':>8}{'warm-up s':>11}", flush=True)

    def save() -> None:  # atomic: a process killed while writing leaves the previous JSON whole
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.json, json.dumps(results, indent=1))

    batches = {b: random_batch(b, size, args.real_crops, vocab, gen) for b in args.batch_sizes}
    released: dict[int, float] = {}
    for name in names:  # every batch size of a variant, then the next variant (in the order given)
        for b, batch in batches.items():
            if name in args.first_batch_only and b != args.batch_sizes[0]:
                results["skipped"].append({"variant": name, "batch": b, "reason": "--first-batch-only"})
                continue
            limit, left = args.variant_timeout_s, budget_left()
            budget_cut = False  # whether the limit is the budget's end time rather than --variant-timeout-s
            if left is not None:  # the budget is an end time: a variant gets at most what is left
                if left < MIN_VARIANT_S:
                    used = time.perf_counter() - t_start
                    print(f"{name:<24}{b:>6}  skipped: {used:.0f} s used of the {args.budget_s:.0f} s budget",
                          flush=True)  # fmt: skip
                    results["skipped"].append({"variant": name, "batch": b, "reason": "budget"})
                    save()
                    continue
                budget_cut = limit is None or left < limit
                limit = left if budget_cut else limit
            speed_cfg, frozen = VARIANTS[name]
            if args.compile_cache:
                speed_cfg = SpeedConfig(**{**speed_cfg.__dict__, "compile_cache_dir": args.compile_cache})
            row = {"variant": name, "batch": b}
            results["rows"].append(row)
            step = run_batch = None
            with survive(row, f"{name:<24}{b:>6}", budget_cut):
                save()  # "running": a process killed in this variant leaves it so
                with time_limit(limit):
                    step, run_batch, rate = measure(base, batch, speed_cfg, frozen, device, args, row)
            if row["status"] == "ok":
                if name == "released":
                    released[b] = rate
                report_variant(
                    row, name, b, rate, released.get(b), step, speed_cfg.resolved(device).cuda_graphs
                )
                if args.profile and name in args.profile_variants and b == args.batch_sizes[0]:
                    results["profile"][name] = profile_variant(
                        name, step, run_batch, args, device, budget_left()
                    )
            save()
            del step, run_batch
            if cuda:
                torch.cuda.empty_cache()
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(f"total {results['total_s']} s", flush=True)
    return failed_exit(results["rows"] + list(results["profile"].values()))


if __name__ == "__main__":
    sys.exit(main())

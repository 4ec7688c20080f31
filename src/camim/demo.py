"""``camim demo``: the whole pipeline on the embedded synthetic world, offline, in a few CPU minutes.

It generates (or reuses) the synthetic world of :mod:`camim.synthetic` under ``OUTPUT/data``, trains the
offline text-only model (``offline-bert``) and the offline TMR + CAM + MI model (``offline-tmr-cam-mi``,
text + captions) through :func:`camim.training.api.train_run` with small-model overrides, evaluates both on
the world's test split, prints a table (accuracy, P, R, F1) with the gain, writes ``OUTPUT/report.md`` and
``OUTPUT/demo.json`` beside the usual run folders (``OUTPUT/runs/<preset>/``), and predicts one ambiguous
test post with both models, its caption shown.

Interrupted? Run it again: a complete world and finished runs (``metrics.json`` present, same resolved
settings) are reused, and an unfinished run resumes from its last Lightning checkpoint where the training
API supports it.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from camim.errors import CamimError
from camim.runs import RunFolder
from camim.synthetic import GROUPS, WorldConfig, WorldSummary, load_or_generate

TEXT_PRESET = "offline-bert"
MULTIMODAL_PRESET = "offline-tmr-cam-mi"

#: Small, fast encoders for 2 CPU cores (applied to both presets; ``--set`` adds more).
DEMO_OVERRIDES: list[str] = [
    "offline.vocab_size=2000",
    "offline.hidden_size=64",
    "offline.num_hidden_layers=2",
    "offline.num_attention_heads=2",
    "offline.intermediate_size=128",
    "offline.max_position_embeddings=64",
    "model.max_length=24",  # the world's marked posts are at most ~20 word pieces
    "model.text_window=24",
    "model.caption_max_length=24",  # the decisive cue starts within a caption's first 10 words
    "model.dropout=0.1",
    "model.cam_dropout=0.1",
    "optim.batch_size=32",
    "optim.lr=3e-3",
    "optim.epochs=4",
    "trainer.progress_bar=false",
    # The released sum-then-tanh pooling saturates in the offline text-caption mode (most O_final/G_final
    # units start at |x| > 0.99) and the caption path then barely learns; the mean keeps it trainable.
    "model.fidelity.sum_pooling=false",
]
METRICS = ("accuracy", "precision", "recall", "f1")


@dataclass
class DemoConfig:
    """Everything ``camim demo`` does, as one typed object (the CLI flags map onto it)."""

    output: Path = Path("camim-demo")
    world: WorldConfig = field(default_factory=WorldConfig)
    text_preset: str = TEXT_PRESET
    multimodal_preset: str = MULTIMODAL_PRESET
    overrides: list[str] = field(default_factory=lambda: list(DEMO_OVERRIDES))
    quiet: bool = False
    threads: int | None = 1  # torch intra-op threads; tiny models run fastest on one (None: leave as is)


@dataclass
class DemoResult:
    """Test metrics (percent) of both models, their gain, and the example prediction."""

    world_dir: Path
    world_reused: bool
    text_only: dict[str, float]
    multimodal: dict[str, float]
    gain: dict[str, float]
    run_dirs: dict[str, Path]
    example: dict[str, Any] | None
    seconds: float
    text_only_accuracy_ceiling: float  # of the test split, in percent

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["world_dir"] = str(self.world_dir)
        d["run_dirs"] = {k: str(v) for k, v in self.run_dirs.items()}
        return d


# ------------------------------------------------------------------------------------------------ running


def _train(preset: str, world_dir: Path, run_dir: Path, overrides: list[str], log) -> tuple[dict, Path]:
    """Train one preset (or reuse a finished run) and return its metrics and model folder."""
    from camim.training.api import train_run

    folder = RunFolder(run_dir)
    stamp_file = run_dir / "demo_settings.json"
    stamp = {"preset": preset, "data_dir": str(world_dir.resolve()), "overrides": overrides}
    previous = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
    if previous == stamp and folder.finished:
        log(f"  {preset}: reusing the finished run in {run_dir}")
        return folder.read_metrics(), folder.model_dir
    if previous is not None and previous != stamp:  # a demo run with other settings: start it afresh
        shutil.rmtree(run_dir)
    elif previous is None and run_dir.exists() and any(run_dir.iterdir()):
        raise CamimError(f"{run_dir}: exists and was not written by camim demo; choose another --output")
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps(stamp, indent=1))  # same stamp + no metrics.json: train_run resumes
    log(f"  {preset}: training -> {run_dir}")
    result = train_run(preset, data_dir=world_dir, output_dir=run_dir, overrides=overrides)
    return result.metrics, Path(result.model_dir)


def _test_metrics(metrics: dict) -> dict[str, float]:
    try:
        test = metrics["test"]
        return {k: float(test[k]) for k in METRICS}
    except (KeyError, TypeError, ValueError) as exc:
        raise CamimError(f"training returned metrics without test {', '.join(METRICS)}: {exc}") from None


def pick_example(world_dir: Path) -> dict[str, Any]:
    """The first test post of the ``pair`` group whose relation is not None: its text alone is ambiguous."""
    pair = set(GROUPS["pair"]) - {"None"}
    captions = {}
    with open(world_dir / "caption" / "minicpm_test.txt", encoding="utf-8") as f:
        for line in f:
            row = ast.literal_eval(line)
            captions[row["img_id"]] = row["text"]
    with open(world_dir / "txt" / "ours_test.txt", encoding="utf-8") as f:
        samples = [ast.literal_eval(line) for line in f]
    for s in samples:
        if s["relation"] in pair and s["token"][0] != "Proud":
            return {
                **s,
                "caption": captions[s["img_id"]],
                "image": str(world_dir / "img_org" / "test" / s["img_id"]),
            }
    return {**samples[0], "caption": captions[samples[0]["img_id"]], "image": None}


def _predict_example(example: dict[str, Any], model_dirs: dict[str, Path]) -> dict[str, Any]:
    from camim.inference.predictor import Predictor

    out = {
        "text": " ".join(example["token"]),
        "head": example["h"]["name"],
        "tail": example["t"]["name"],
        "caption": example["caption"],
        "image": example["image"],
        "gold": example["relation"],
        "predictions": {},
    }
    for name, model_dir in model_dirs.items():
        predictor = Predictor.from_pretrained(model_dir)
        p = predictor.predict(
            example["token"],
            head=tuple(example["h"]["pos"]),
            tail=tuple(example["t"]["pos"]),
            image=example["image"],
            caption=example["caption"],
        )
        out["predictions"][name] = {"relation": p.relation, "probability": round(p.probability, 4)}
    return out


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Generate or reuse the world, train both models, compare them, and write the report."""
    t0 = time.perf_counter()
    log = (lambda *a: None) if cfg.quiet else (lambda *a: print(*a, flush=True))
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)  # more threads oversubscribe small matmuls on a busy CPU
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    world_dir = out / "data"
    summary, reused = load_or_generate(world_dir, cfg.world)
    test = summary.splits["test"]
    log(
        f"world: {'reused' if reused else 'generated'} {world_dir} ({summary.splits['train'].samples}/"
        f"{summary.splits['val'].samples}/{test.samples} samples, {len(summary.relations)} labels); "
        f"{test.ambiguous / test.samples:.0%} of test posts are text-ambiguous, "
        f"text-only accuracy ceiling {test.text_only_accuracy_ceiling:.1%}"
    )
    run_dirs = {
        "text-only": out / "runs" / cfg.text_preset,
        "multimodal": out / "runs" / cfg.multimodal_preset,
    }
    metrics, model_dirs = {}, {}
    for key, preset in (("text-only", cfg.text_preset), ("multimodal", cfg.multimodal_preset)):
        m, model_dirs[key] = _train(preset, world_dir, run_dirs[key], cfg.overrides, log)
        metrics[key] = _test_metrics(m)
    gain = {k: round(metrics["multimodal"][k] - metrics["text-only"][k], 2) for k in METRICS}
    example = _predict_example(pick_example(world_dir), model_dirs)
    result = DemoResult(
        world_dir=world_dir,
        world_reused=reused,
        text_only=metrics["text-only"],
        multimodal=metrics["multimodal"],
        gain=gain,
        run_dirs=run_dirs,
        example=example,
        seconds=round(time.perf_counter() - t0, 1),
        text_only_accuracy_ceiling=round(100 * test.text_only_accuracy_ceiling, 2),
    )
    table = format_table(result, cfg)
    log("\n" + table)
    log(format_example(example))
    (out / "demo.json").write_text(json.dumps(result.to_dict(), indent=1))
    (out / "report.md").write_text(format_report(result, cfg, summary, table))
    log(f"\nreport: {out / 'report.md'}  ({result.seconds:.0f} s)")
    return result


# ------------------------------------------------------------------------------------------------ text


def format_table(r: DemoResult, cfg: DemoConfig) -> str:
    """A markdown table of test accuracy, P, R, F1 (percent, P/R/F1 micro over non-None labels) and the gain."""
    rows = [
        ("text only", cfg.text_preset, r.text_only),
        ("text + caption (CAM + MI)", cfg.multimodal_preset, r.multimodal),
    ]
    lines = ["| model | preset | accuracy | P | R | F1 |", "|---|---|---:|---:|---:|---:|"]
    for label, preset, m in rows:
        lines.append(f"| {label} | `{preset}` | " + " | ".join(f"{m[k]:.2f}" for k in METRICS) + " |")
    lines.append("| **gain** | | " + " | ".join(f"{r.gain[k]:+.2f}" for k in METRICS) + " |")
    return "\n".join(lines)


def format_example(e: dict[str, Any]) -> str:
    lines = [
        "",
        "example (test split; the sentence alone fits couple, peer, member_of and None alike):",
        f"  text:    {e['text']}",
        f"  head:    {e['head']}    tail: {e['tail']}",
        f"  caption: {e['caption']}",
        f"  gold:    {e['gold']}",
    ]
    for name, p in e["predictions"].items():
        lines.append(f"  {name + ':':12s} {p['relation']} (p={p['probability']:.2f})")
    return "\n".join(lines)


def format_report(r: DemoResult, cfg: DemoConfig, summary: WorldSummary, table: str) -> str:
    test = summary.splits["test"]
    runs = "\n".join(
        f"- {k}: `{v}` (its own `report.md`, `metrics.json`, `predictions.jsonl`, `model/`)"
        for k, v in r.run_dirs.items()
    )
    return f"""# camim demo

Synthetic world: `{r.world_dir}` (seed {cfg.world.seed}; {summary.splits["train"].samples} / {summary.splits["val"].samples} /
{test.samples} train / val / test posts, {len(summary.relations)} labels). {test.ambiguous} of the {test.samples} test posts
({test.ambiguous / test.samples:.0%}) are text-ambiguous: their sentence fits every relation of their group, and only the
image (and so its caption) decides. No text-only model can exceed about **{r.text_only_accuracy_ceiling:.1f}%** test
accuracy in expectation; a reader of text and caption can reach 100%.

## Test split

{table}

P, R and F1 are micro scores over the non-None labels, as in MNRE. Both models are compact encoders trained
from scratch (offline presets, overrides `{" ".join(cfg.overrides)}`); their numbers are not comparable with
the paper's.

## One prediction

```text
{format_example(r.example).strip()}
```

## Runs

{runs}

Total time: {r.seconds:.0f} s.
"""


# ------------------------------------------------------------------------------------------------ CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``camim demo`` to the ``camim`` command line."""
    from camim.typed import add_set_argument

    p = subparsers.add_parser(
        "demo",
        help="train text-only vs caption-aware models on the embedded synthetic world (offline, CPU minutes)",
        description=(
            "Generate a synthetic multimodal relation world in MNRE's layout (cached in OUTPUT/data), train the "
            f"offline text-only model ({TEXT_PRESET}) and the offline TMR + CAM + MI model ({MULTIMODAL_PRESET}), "
            "compare them on its test split and predict one example. Re-running reuses finished work."
        ),
    )
    p.add_argument(
        "--output", type=Path, default=Path("camim-demo"), help="output folder (default: camim-demo)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world (default: 0)")
    p.add_argument(
        "--train-size", type=int, default=WorldConfig.train, help="training posts (default: %(default)s)"
    )
    p.add_argument("--val-size", type=int, default=WorldConfig.val)
    p.add_argument("--test-size", type=int, default=WorldConfig.test)
    p.add_argument("--epochs", type=int, default=None, help="training epochs of both models (default: 4)")
    add_set_argument(p, "extra config override for both runs (repeatable), e.g. --set optim.lr=5e-4")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: fastest for the demo's tiny models)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    world = WorldConfig(seed=args.seed, train=args.train_size, val=args.val_size, test=args.test_size)
    overrides = list(DEMO_OVERRIDES)
    if args.epochs is not None:
        if args.epochs < 1:
            raise CamimError("--epochs must be >= 1")
        overrides.append(f"optim.epochs={args.epochs}")
    overrides += args.overrides
    if args.threads < 1:
        raise CamimError("--threads must be >= 1")
    cfg = DemoConfig(
        output=args.output, world=world, overrides=overrides, quiet=args.quiet, threads=args.threads
    )
    result = run_demo(cfg)
    if args.quiet:
        print(format_table(result, cfg))
    return 0

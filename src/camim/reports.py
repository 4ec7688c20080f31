"""Reports of finished runs: one run's ``report.md`` with its PNG plots (training curves, confusion matrix,
per-relation F1; matplotlib, Agg), and the tables and bar plots that compare runs (``camim experiment``).

Training, zero-shot and the experiments write their reports through here; the run folder's file names and
score keys come from :mod:`camim.runs`."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from camim.io import atomic_write_text  # noqa: E402
from camim.runs import PLOTS, REPORT, SCORE_KEYS, format_score  # noqa: E402


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a Lightning ``CSVLogger`` metrics file, numeric cells parsed, empty cells dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for k, v in row.items():
                if v not in ("", None):
                    try:
                        parsed[k] = float(v)
                    except ValueError:
                        continue
            rows.append(parsed)
    return rows


def read_run_logs(logs_dir: str | Path) -> list[dict[str, float]]:
    """Join ``logs/version_*/metrics.csv`` of a run that was resumed: each restart's rows replace the
    earlier rows from its first step on (steps after the resumed checkpoint were recomputed)."""
    versions = sorted(
        Path(logs_dir).glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    rows: list[dict[str, float]] = []
    for path in versions:
        new = read_metrics_csv(path)
        steps = [r["step"] for r in new if "step" in r]
        if steps:
            first = min(steps)
            rows = [r for r in rows if r.get("step", -1) < first]
        rows += new
    return rows


def plot_curves(rows: list[dict[str, float]], out: str | Path) -> Path | None:
    """Training loss per step and validation F1 per epoch (epochs before eval_begin_epoch are left out)."""
    steps = [(r["step"], r["train/loss_step"]) for r in rows if "train/loss_step" in r and "step" in r]
    mi = [(r["step"], r["train/mi_loss_step"]) for r in rows if "train/mi_loss_step" in r and "step" in r]
    val = [(r["epoch"] + 1, r["val/f1"]) for r in rows if r.get("val/f1", -1.0) >= 0 and "epoch" in r]
    if not steps and not val:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if steps:
        axes[0].plot(*zip(*steps), label="loss (CE + alpha MI)")
    if mi:
        axes[0].plot(*zip(*mi), label="MI (InfoNCE)", alpha=0.7)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss")
    if steps or mi:  # a run shorter than trainer.log_every_n_steps logs no step loss
        axes[0].legend()
    if val:
        axes[1].plot(*zip(*val), marker="o")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("dev micro-F1 (%)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_confusion(confusion: Sequence[Sequence[int]], names: Sequence[str], out: str | Path) -> Path:
    """Row-normalised confusion matrix (rows gold, columns predicted)."""
    n = len(names)
    norm = []
    for row in confusion:
        s = sum(row)
        norm.append([v / s if s else 0.0 for v in row])
    size = max(4.0, 0.35 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    short = [s.rsplit("/", 1)[-1] for s in names]
    ax.set_xticks(range(n), short, rotation=90, fontsize=7)
    ax.set_yticks(range(n), short, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.colorbar(im, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_per_relation(per_relation: dict[str, dict[str, float]], out: str | Path) -> Path:
    """Horizontal bars of per-relation F1 (support in the label)."""
    names = list(per_relation)
    f1 = [per_relation[k]["f1"] for k in names]
    labels = [f"{k} ({per_relation[k]['support']})" for k in names]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.28 * len(names) + 1)))
    ax.barh(range(len(names)), f1)
    ax.set_yticks(range(len(names)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("F1 (%)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def write_run_report(
    output_dir: str | Path,
    config_dict: dict,
    metrics: dict,
    label_names: Sequence[str],
    summary: str | None = None,
    sections: Sequence[str] = (),
) -> Path:
    """Write the PNG plots and ``report.md`` of one run folder. ``summary`` replaces the line of training
    settings (for runs that did not train, e.g. ``camim zero-shot``); ``sections`` are markdown lines added
    after the score table."""
    out = Path(output_dir)
    curves, confusion, per_relation = PLOTS
    # the evaluated split: test for training runs; a zero-shot run may score another one
    split = next((k for k in ("test", "val", "train") if metrics.get(k)), "test")
    scores = metrics.get(split) or {}
    lines = [f"# Run report: {config_dict.get('name', '')}", ""]
    if config_dict.get("description"):
        lines += [config_dict["description"], ""]
    lines += [summary or _settings_line(config_dict), "", *_scores_table(metrics), ""]
    lines += [f"Micro P/R/F1 {_excluded(metrics)}; accuracy counts every sample (percent).", ""]
    lines += [line for note in metrics.get("notes") or [] for line in (f"Note: {note}.", "")]
    lines += [*sections, *_selection_lines(metrics, config_dict.get("optim", {}))]
    if plot_curves(read_run_logs(out / "logs"), out / curves):
        lines += ["## Training curves", "", f"![training curves]({curves})", ""]
    title = split.capitalize()
    if scores.get("confusion"):
        plot_confusion(scores["confusion"], label_names, out / confusion)
        lines += [
            f"## {title} confusion matrix (row-normalised)",
            "",
            f"![confusion matrix]({confusion})",
            "",
        ]
    if scores.get("per_relation"):
        plot_per_relation(scores["per_relation"], out / per_relation)
        lines += [f"## {title} per-relation scores", "", f"![per-relation F1]({per_relation})", ""]
        lines += [*_per_relation_table(scores["per_relation"]), ""]
    if metrics.get("data_report"):
        lines += ["## Data fallbacks and skips", "", "```", str(metrics["data_report"]), "```", ""]
    return atomic_write_text(out / REPORT, "\n".join(lines))


def _settings_line(config: dict) -> str:
    o = config.get("optim", {})
    return (
        f"Model `{config.get('model', {}).get('name')}`; captions `{config.get('data', {}).get('caption_source')}`;"
        f" batch {o.get('batch_size')}, lr {o.get('lr')}, {o.get('epochs')} epochs, seed {o.get('seed')}."
        " Full settings: `config.yaml`."
    )


def _scores_table(metrics: dict) -> list[str]:
    lines = ["| split | accuracy | precision | recall | micro-F1 |", "|---|---|---|---|---|"]
    for split in ("train", "val", "test"):
        if metrics.get(split):
            lines.append(
                f"| {split} | " + " | ".join(format_score(metrics[split].get(k)) for k in SCORE_KEYS) + " |"
            )
    return lines


def _excluded(metrics: dict) -> str:
    """What micro P/R/F1 leave out, from ``metrics.json``'s ``negative_label``."""
    neg = metrics.get("negative_label") or {}
    if neg.get("name") is not None:
        return f"exclude the negative label `{neg['name']}` ({neg.get('origin')})"
    if neg:
        return f"count every label: no negative label ({neg.get('origin')})"
    return "exclude the negative label"


def _selection_lines(metrics: dict, optim: dict) -> list[str]:
    if not metrics.get("best_checkpoint"):
        return []
    criterion = (
        "lowest epoch training loss" if metrics.get("selected_on") == "train_loss" else "best dev micro-F1"
    )
    return [
        f"Selected checkpoint ({criterion}): epoch {metrics.get('best_epoch')} of"
        f" {optim.get('epochs')} (`checkpoints/{metrics['best_checkpoint']}`, Lightning's 0-based epoch name).",
        "",
    ]


def _per_relation_table(per_relation: dict) -> list[str]:
    lines = ["| relation | support | precision | recall | F1 |", "|---|---|---|---|---|"]
    for name, s in per_relation.items():
        cells = [format_score(s["precision"]), format_score(s["recall"]), format_score(s["f1"])]
        lines.append(f"| {name} | {s['support']} | " + " | ".join(cells) + " |")
    return lines


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{seed: test scores}`` -> ``{metric: {"mean", "std", "n"}}`` over the seeds."""
    out = {}
    for k in SCORE_KEYS:
        vals = [s[k] for s in per_seed.values() if s.get(k) is not None]
        m, sd = mean_std(vals)
        out[k] = {"mean": m, "std": sd, "n": len(vals)}
    return out


def mean_std_text(agg: dict) -> str:
    """``mean ± std`` of an :func:`aggregate` entry, or ``mean (1 seed)`` when one seed gave it (no spread was
    measured, which ``± 0.00`` would hide)."""
    if agg.get("n", 2) == 1:
        return f"{agg['mean']:.2f} (1 seed)"
    return f"{agg['mean']:.2f} ± {agg['std']:.2f}"


def comparison_table(
    rows: list[tuple[str, dict | None, dict | None]], keys: Sequence[str] = SCORE_KEYS
) -> str:
    """Markdown table: label, our mean ± std per metric, the paper's number beside it."""
    head = "| row | " + " | ".join(f"{k} (ours) | {k} (paper)" for k in keys) + " |"
    sep = "|---|" + "---|---|" * len(keys)
    lines = [head, sep]
    for label, ours, paper in rows:
        cells = []
        for k in keys:
            o = (ours or {}).get(k)
            cells.append("-" if not o else mean_std_text(o))
            cells.append(format_score((paper or {}).get(k)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_bars(
    labels: Sequence[str], ours: Sequence[dict | None], paper: Sequence[float | None], title: str, out
) -> Path:
    """Figure-4-style bars of test F1: ours (mean ± std) beside the paper's value."""
    fig = bars_figure(labels, ours, paper, title)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def bars_figure(
    labels: Sequence[str], ours: Sequence[dict | None], paper: Sequence[float | None], title: str
):
    """The figure of :func:`plot_bars`, wide enough for its longest row name (about 0.09 inch a character at
    the default 10 pt) so that neighbouring names do not overlap."""
    x = range(len(labels))
    slot = max([1.1, *(0.09 * len(label) + 0.2 for label in labels)])
    fig, ax = plt.subplots(figsize=(max(4.0, slot * len(labels) + 1), 3.4))
    width = 0.38
    means = [o["mean"] if o else 0.0 for o in ours]
    stds = [o["std"] if o else 0.0 for o in ours]
    ax.bar([i - width / 2 for i in x], means, width, yerr=stds, label="ours", capsize=3)
    ax.bar([i + width / 2 for i in x], [p if p is not None else 0.0 for p in paper], width, label="paper")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("test micro-F1 (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig

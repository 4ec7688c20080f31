"""Multi-seed experiments and the paper's grids (Table 1, Table 2, Fig. 4).

``run_seeds`` trains one preset per seed into ``<out>/seed<k>/`` and aggregates test scores (mean ± sample
std). ``run_grid`` runs every row of a grid (``camim/configs/grids.yaml``) that way and writes a markdown
table of our numbers beside the paper's (``camim/configs/paper_results.yaml``) plus figure-style plots.
A finished run (a ``metrics.json`` present) is reused when its resolved config (its ``config.yaml``) equals
the one requested, so an interrupted grid continues where it stopped; a finished run with another config is
refused, naming the keys that differ; an unfinished run resumes from its ``last.ckpt``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from camim.errors import CamimError
from camim.io import atomic_write_text
from camim.reports import aggregate, comparison_table, plot_bars
from camim.runs import SCORE_KEYS, RunFolder
from camim.training.config import CONFIG_DIR, load_config, load_paper_results
from camim.typed import read_yaml_mapping


def load_grids() -> dict:
    """The experiment grids (Table 1, Table 2, Fig. 4) from ``camim/configs/grids.yaml``."""
    return read_yaml_mapping(CONFIG_DIR / "grids.yaml")


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "row"


def run_seeds(
    preset: str,
    data_dir: str | Path,
    output_dir: str | Path,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> dict:
    """Train ``preset`` once per seed; returns and writes ``summary.json``/``summary.md`` (test mean ± std).

    A finished run with the same resolved config is reused; one with another config is refused, or with
    ``overwrite`` trained again in its place. On a non-zero DDP rank it only trains and returns ``{}``; rank 0
    scores and writes."""
    from camim.training.api import differences_from, resolve_run_config, train_run

    overrides = list(overrides or [])
    base = load_config(preset, overrides)  # a bad setting stops here, before any folder is made
    if not seeds:
        seeds = [base.optim.seed]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_seed: dict[int, dict] = {}
    primary = True
    for seed in seeds:
        folder = RunFolder(out / f"seed{seed}")
        run_overrides = [*overrides, f"optim.seed={seed}"]
        # a finished run is reused only when its resolved config equals this one
        differences = differences_from(resolve_run_config(preset, run_overrides, data_dir, folder.path))
        if folder.reusable(differences, overwrite):
            metrics = folder.read_metrics()
        else:
            result = train_run(preset, data_dir, folder.path, overrides=run_overrides, overwrite=overwrite)
            if not result.primary:  # a non-zero DDP rank: it trains every seed, rank 0 scores and writes
                primary = False
                continue
            metrics = result.metrics
        per_seed[seed] = {k: metrics["test"][k] for k in SCORE_KEYS}
    if not primary:
        return {}
    summary = {
        "preset": str(preset),
        "overrides": overrides,
        "seeds": list(seeds),
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "test": aggregate(per_seed),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# {preset} over seeds {', '.join(map(str, seeds))}",
        "",
        "| seed | " + " | ".join(SCORE_KEYS) + " |",
        "|---|" + "---|" * len(SCORE_KEYS),
    ]
    for s, v in per_seed.items():
        lines.append(f"| {s} | " + " | ".join(f"{v[k]:.2f}" for k in SCORE_KEYS) + " |")
    agg = summary["test"]
    lines.append(
        "| mean ± std | "
        + " | ".join(f"{agg[k]['mean']:.2f} ± {agg[k]['std']:.2f}" for k in SCORE_KEYS)
        + " |"
    )
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return summary


def grid_rows(grid: str) -> list[dict]:
    """Rows of a grid: ``{"label", "preset", "overrides", "paper"}`` with the paper's scores (or F1)."""
    grids, paper = load_grids(), load_paper_results()
    if grid == "table1":
        return [
            {
                "label": r["label"],
                "preset": r["preset"],
                "overrides": r.get("overrides", []),
                "paper": paper["table1"].get(r["label"]),
            }
            for r in grids["table1"]
        ]
    if grid == "table2":
        g = grids["table2"]
        return [
            {
                "label": f"{src}/{preset}",
                "preset": preset,
                "overrides": [f"{g['key']}={src}"],
                "paper": paper["table2"][src][preset],
                "group": preset,
                "x": src,
            }
            for preset in g["presets"]
            for src in g["sources"]
        ]
    if grid == "fig4":
        rows = []
        for panel, spec in grids["fig4"].items():
            for label, value in spec["values"].items():
                rows.append(
                    {
                        "label": f"{panel}:{label}",
                        "preset": spec["preset"],
                        "overrides": [f"{spec['key']}={json.dumps(value)}"],
                        "paper": {"f1": paper["fig4"][panel][label]},
                        "group": panel,
                        "x": label,
                    }
                )
        return rows
    raise CamimError(f"unknown grid {grid!r}; choose table1, table2 or fig4")


def run_grid(
    grid: str,
    data_dir: str | Path,
    output_dir: str | Path,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> Path | None:
    """Run every row of ``grid`` over ``seeds``; write ``<grid>.md`` (ours beside the paper) and plots.

    Returns the table's path (None on a non-zero DDP rank, which only trains)."""
    out = Path(output_dir)
    rows = grid_rows(grid)
    results = []
    for row in rows:
        summary = run_seeds(
            row["preset"],
            data_dir,
            out / _slug(row["label"]),
            seeds,
            [*row["overrides"], *(overrides or [])],
            overwrite=overwrite,
        )
        if summary:  # empty on the non-zero DDP ranks
            results.append((row, summary["test"]))
    if len(results) < len(rows):
        return None
    keys = ("f1",) if grid == "fig4" else SCORE_KEYS
    md = [f"# {grid}: ours (mean ± std over seeds) beside the paper", ""]
    if overrides:
        md += [f"Overrides: `{' '.join(overrides)}`.", ""]
    groups: dict[str, list] = {}
    for row, agg in results:
        groups.setdefault(row.get("group", grid), []).append((row, agg))
    for group, items in groups.items():
        if len(groups) > 1:
            md += [f"## {group}", ""]
        md.append(comparison_table([(r.get("x", r["label"]), a, r["paper"]) for r, a in items], keys))
        plot_bars(
            [r.get("x", r["label"]) for r, _ in items],
            [a["f1"] for _, a in items],
            [(r["paper"] or {}).get("f1") for r, _ in items],
            f"{grid} {group}" if group != grid else grid,
            out / f"{grid}_{_slug(group)}.png",
        )
        md += [f"![{group}]({grid}_{_slug(group)}.png)", ""]
    path = out / f"{grid}.md"
    atomic_write_text(path, "\n".join(md))
    return path

"""Multi-seed experiments and the grids of ``camim/configs/grids.yaml`` (the paper's Table 1, Table 2, Fig. 4
and their offline analogues).

``run_seeds`` trains one preset per seed into ``<out>/seed<k>/`` and aggregates test scores (mean ± sample
std). ``run_grid`` runs every row of a grid that way and writes a markdown table of our numbers beside the
paper's (``camim/configs/paper_results.yaml``), headed by the settings in which the runs differ from the
paper's (:mod:`camim.experiments.paper`), plus figure-style plots. Every run is planned before any trains: a
finished run (``metrics.json``) is reused when its resolved config (its ``config.yaml``) equals the one
requested, so an interrupted grid continues where it stopped; a run folder holding another config is refused,
naming the keys that differ; an unfinished run resumes from its ``last.ckpt``. The runs then train as
:class:`camim.experiments.launch.Launch` says (in this process, a local pool, or Ray); the summaries are
written from whatever finished, and the runs that failed are named.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from camim.errors import CamimError
from camim.experiments.launch import Launch, run_jobs
from camim.experiments.worker import JobOutcome, RunJob
from camim.io import atomic_write_text
from camim.progress import duration
from camim.reports import aggregate, comparison_table, mean_std_text, plot_bars
from camim.runs import SCORE_KEYS, RunFolder, format_scores
from camim.training.config import CONFIG_DIR, RunConfig, check_seed, load_config, load_paper_results
from camim.typed import parse, read_yaml_mapping, yaml_value

GRIDS_FILE = CONFIG_DIR / "grids.yaml"


@dataclass
class GridRowSpec:
    """An explicit row of a grid group (``grids.yaml``)."""

    label: str
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    paper_preset: str | None = None


@dataclass
class GridGroup:
    """One table section and plot of a grid: explicit ``rows``, or ``preset`` swept over ``key``'s ``values``
    (see the head of ``grids.yaml``)."""

    group: str
    preset: str | None = None
    paper_preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    rows: list[GridRowSpec] | None = None
    key: str | None = None
    values: dict[str, Any] | list[Any] | None = None
    label: str = "{x}"
    paper: list[str] | None = None
    scores: list[str] | None = None
    note: str | None = None


def load_grids() -> dict[str, list[GridGroup]]:
    """The experiment grids of ``camim/configs/grids.yaml``, each a list of groups; errors name the file
    and the dotted key."""
    raw = read_yaml_mapping(GRIDS_FILE)
    grids = {}
    for name, groups in raw.items():
        try:
            grids[name] = parse(groups, list[GridGroup], name)
            for i, g in enumerate(grids[name]):
                _check_group(g, f"{name}[{i}]")
        except CamimError as exc:
            raise CamimError(f"{GRIDS_FILE}: {exc}") from None
    return grids


def _check_group(g: GridGroup, where: str) -> None:
    if (g.rows is None) == (g.key is None or g.values is None):
        raise CamimError(f"{where}: give either rows, or key and values")
    if g.rows is None and not g.preset:
        raise CamimError(f"{where}.preset: a swept group needs a preset")
    for j, row in enumerate(g.rows or []):
        if not (row.preset or g.preset):
            raise CamimError(f"{where}.rows[{j}].preset: missing (and the group has none)")
    for key in g.scores or []:
        if key not in SCORE_KEYS:
            raise CamimError(f"{where}.scores: {key!r} is not one of {', '.join(SCORE_KEYS)}")


def grid_names() -> list[str]:
    """The names of the grids in ``grids.yaml``."""
    return list(load_grids())


def slug(label: str) -> str:
    """The folder name of a grid row (or a plot's name part): ``label`` with runs of other characters than
    letters, digits, ``.``, ``_`` and ``-`` made ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "row"


def _render(value: Any) -> str:
    """A swept value as ``--set`` writes it: plain when YAML reads it back as the same value
    (``model.cam=sentence``, ``model.mi_alpha=0.05``), else JSON (``"yes"``, quoted)."""
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        back = yaml_value(text)
    except Exception:  # noqa: BLE001 - not plain YAML: quote it
        back = None
    return text if type(back) is type(value) and back == value else json.dumps(value)


def _paper_number(paper: dict, path: list[str] | None) -> dict | None:
    """The paper's scores at ``path`` in paper_results.yaml (a bare number is the F1); None where it leads
    nowhere."""
    node: Any = paper
    for key in path or [None]:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return {"f1": float(node)} if isinstance(node, (int, float)) else node


def _entries(g: GridGroup):
    """``(x, label, preset, overrides, paper_preset template, swept overrides)`` of each row of group ``g``."""
    if g.rows is not None:
        for r in g.rows:
            preset = r.preset or g.preset
            yield r.label, r.label, preset, [*g.overrides, *r.overrides], r.paper_preset or g.paper_preset, []
        return
    values = g.values if isinstance(g.values, dict) else {str(v): v for v in g.values}
    for x, value in values.items():
        swept = [f"{g.key}={_render(value)}"]
        yield x, g.label.replace("{x}", x), g.preset, [*g.overrides, *swept], g.paper_preset, swept


def grid_rows(grid: str) -> list[dict]:
    """Rows of a grid: ``{"label", "preset", "overrides", "paper", "group", "x", "paper_preset",
    "paper_overrides", "scores", "note"}`` with the paper's scores (or F1) in ``paper`` (None: none)."""
    grids = load_grids()
    if grid not in grids:
        raise CamimError(f"unknown grid {grid!r}; grids: {', '.join(grids)}")
    paper, rows = load_paper_results(), []
    for g in grids[grid]:
        for x, label, preset, overrides, paper_preset, swept in _entries(g):
            fill = lambda s, x=x, label=label: s.replace("{x}", x).replace("{label}", label)  # noqa: E731
            rows.append(
                {
                    "label": label,
                    "preset": preset,
                    "overrides": overrides,
                    "paper": _paper_number(paper, [fill(p) for p in g.paper] if g.paper else None),
                    "group": g.group,
                    "x": x,
                    "paper_preset": fill(paper_preset) if paper_preset else preset,
                    "paper_overrides": swept,
                    "scores": tuple(g.scores or SCORE_KEYS),
                    "note": g.note,
                }
            )
    return rows


@dataclass
class SeedPlan:
    """A preset over seeds in one folder, planned: the runs to train (``jobs``) and the finished ones reused
    (``reused``: seed -> test scores). ``config``: the first seed's resolved run config."""

    label: str
    preset: str
    overrides: list[str]
    seeds: list[int]
    out: Path
    config: RunConfig
    jobs: list[RunJob] = field(default_factory=list)
    reused: dict[int, dict] = field(default_factory=dict)
    multi_device: bool = False


def plan_seeds(
    preset: str,
    data_dir,
    out: Path,
    seeds: list[int] | None,
    overrides: list[str],
    overwrite: bool,
    label: str,
) -> SeedPlan:
    """Resolve and check every seed's run of ``preset`` before anything trains: a finished run with the same
    resolved config is reused; a folder holding another run is refused (unless ``overwrite``)."""
    from camim.training.api import differences_from, resolve_run_config

    base = load_config(preset, overrides)  # a bad setting stops here, before any folder is made
    seeds = list(seeds or [base.optim.seed])
    twice = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if twice is not None:  # two processes would train one folder
        raise CamimError(f"--seeds: seed {twice} is listed twice")
    for seed in seeds:  # the range optim.seed's check has, named as the option the seed came from
        try:
            check_seed(seed, base.optim.epochs)
        except CamimError as exc:
            raise CamimError(f"--seeds: seed {seed}: {exc}") from None
    plan: SeedPlan | None = None
    for seed in seeds:
        folder = RunFolder(out / f"seed{seed}")
        run_overrides = [*overrides, f"optim.seed={seed}"]
        cfg = resolve_run_config(preset, run_overrides, data_dir, folder.path)
        if plan is None:
            plan = SeedPlan(label, str(preset), list(overrides), seeds, out, cfg)
        differences = differences_from(cfg)
        if folder.reusable(differences, overwrite):
            plan.reused[seed] = {k: folder.read_metrics()["test"][k] for k in SCORE_KEYS}
            continue
        conflict = folder.conflict(differences)
        if conflict and not overwrite:
            raise CamimError(f"{conflict}; use a new --output folder, or --overwrite to replace that run")
        plan.multi_device |= _multi_device(cfg.trainer.devices)
        plan.jobs.append(RunJob(label, seed, str(preset), str(cfg.data.data_dir), str(folder.path),
                                tuple(run_overrides), overwrite))  # fmt: skip
    return plan


def _multi_device(devices) -> bool:
    """``trainer.devices`` names several devices (one run under DDP)."""
    return (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1)


def run_plans(plans: list[SeedPlan], launch: Launch | None) -> list[list[JobOutcome]] | None:
    """Train the planned runs of every plan as ``launch`` says; their outcomes per plan (None on a non-zero
    DDP rank, which only trains). Runs spanning several devices (DDP) train only one after another."""
    launch = launch or Launch()
    jobs = [job for plan in plans for job in plan.jobs]
    if launch.parallel and any(p.multi_device for p in plans):
        raise CamimError(
            "trainer.devices > 1 trains one run over several devices (DDP), one run after another: "
            "drop --jobs/--launcher ray, or set trainer.devices=1 to train runs side by side"
        )
    if launch.parallel:  # several runs print at once: no progress bars (run-neutral)
        jobs = [replace(job, overrides=(*job.overrides, "trainer.progress_bar=false")) for job in jobs]
    use_gpus = all(p.config.trainer.accelerator != "cpu" for p in plans)
    outcomes = run_jobs(jobs, launch, use_gpus, _announce(len(jobs)))
    if any(not o.primary for o in outcomes):
        return None
    by_output = {o.job.output: o for o in outcomes}
    return [[by_output[job.output] for job in plan.jobs] for plan in plans]


def _announce(total: int):
    """A reporter printing one line per finished (or failed) run, with the time so far, an ETA from the runs
    done and the failures so far: the grid's progress, readable in a log file."""
    done, failed, start = [0], [0], time.monotonic()

    def report(o: JobOutcome) -> None:
        done[0] += 1
        failed[0] += bool(o.error)
        what = f"failed: {o.error}" if o.error else format_scores(o.scores or {})
        where = f" on GPU {o.device}" if o.device is not None else ""
        elapsed = time.monotonic() - start
        eta = f", ETA {duration(elapsed / done[0] * (total - done[0]))}" if done[0] < total else ""
        so_far = f", {failed[0]} failed so far" if failed[0] else ""
        print(
            f"[{done[0]}/{total}] {o.job.label} seed {o.job.seed}{where} ({o.seconds:.0f} s): {what}"
            f" ({duration(elapsed)} elapsed{eta}{so_far})",
            flush=True,
        )

    return report


def write_seed_summary(plan: SeedPlan, outcomes: list[JobOutcome]) -> dict:
    """``summary.json``/``summary.md`` of a preset over seeds from the seeds that finished (reused or
    trained); ``failed`` names the run folder and reason of each run that did not."""
    trained = {o.job.seed: o for o in outcomes}
    per_seed, failed = {}, []
    for seed in plan.seeds:
        outcome = trained.get(seed)
        if seed in plan.reused:
            per_seed[seed] = plan.reused[seed]
        elif outcome is not None and outcome.ok:
            per_seed[seed] = {k: outcome.scores[k] for k in SCORE_KEYS}
        elif outcome is not None:
            failed.append({"run": outcome.job.output, "reason": outcome.error})
    summary = {
        "preset": plan.preset,
        "overrides": plan.overrides,
        "seeds": plan.seeds,
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "test": aggregate(per_seed) if per_seed else None,
        "failed": failed,
    }
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(plan.out / "summary.md", _seed_markdown(plan, summary))
    return summary


def _seed_markdown(plan: SeedPlan, summary: dict) -> str:
    lines = [
        f"# {plan.preset} over seeds {', '.join(map(str, plan.seeds))}",
        "",
        "| seed | " + " | ".join(SCORE_KEYS) + " |",
        "|---|" + "---|" * len(SCORE_KEYS),
    ]
    for s, v in summary["per_seed"].items():
        lines.append(f"| {s} | " + " | ".join(f"{v[k]:.2f}" for k in SCORE_KEYS) + " |")
    if summary["test"]:
        agg = summary["test"]
        cells = " | ".join(mean_std_text(agg[k]) for k in SCORE_KEYS)
        lines.append(f"| mean ± std | {cells} |")
    lines += _failure_lines(summary["failed"])
    return "\n".join(lines) + "\n"


def _failure_lines(failed: list[dict]) -> list[str]:
    if not failed:
        return []
    return ["", "## Runs that failed", "", *(f"- `{f['run']}`: {f['reason']}" for f in failed), ""]


def run_seeds(
    preset: str,
    data_dir: str | Path,
    output_dir: str | Path,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    launch: Launch | None = None,
) -> dict:
    """Train ``preset`` once per seed; returns and writes ``summary.json``/``summary.md`` (test mean ± std
    over the seeds that finished; ``failed``: the others). A finished run with the same resolved config is
    reused; one with another config is refused, or with ``overwrite`` trained again in its place. On a
    non-zero DDP rank it only trains and returns ``{}``; rank 0 scores and writes."""
    plan = plan_seeds(
        preset, data_dir, Path(output_dir), seeds, list(overrides or []), overwrite, str(preset)
    )
    outcomes = run_plans([plan], launch)
    return {} if outcomes is None else write_seed_summary(plan, outcomes[0])


@dataclass
class GridReport:
    """What :func:`run_grid` wrote: the table's ``path``, the runs that failed (``{"run", "reason"}``), and
    the warning line when the runs differ from the paper's settings."""

    path: Path
    failed: list[dict]
    warning: str | None


def run_grid(
    grid: str,
    data_dir: str | Path,
    output_dir: str | Path,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    launch: Launch | None = None,
) -> GridReport | None:
    """Run every row of ``grid`` over ``seeds``; write ``<grid>.md`` (the settings that differ from the
    paper's, ours beside the paper, the runs that failed) and plots from the runs that finished.

    Returns None on a non-zero DDP rank, which only trains."""
    from camim.experiments.paper import row_differences, warning_line

    out = Path(output_dir)
    rows = grid_rows(grid)
    folders: dict[str, str] = {}
    for r in rows:  # two rows in one folder would train, or report, each other's runs
        name = slug(r["label"])
        first = folders.get(name)
        if first == r["label"]:
            raise CamimError(f"grid {grid}: row {first!r} is listed twice")
        if first is not None:
            raise CamimError(f"grid {grid}: rows {first!r} and {r['label']!r} share the folder {name}")
        folders[name] = r["label"]
    plans = [
        plan_seeds(
            r["preset"],
            data_dir,
            out / slug(r["label"]),
            seeds,
            [*r["overrides"], *(overrides or [])],
            overwrite,
            r["label"],
        )  # fmt: skip
        for r in rows
    ]
    outcomes = run_plans(plans, launch)
    if outcomes is None:
        return None
    summaries = [write_seed_summary(p, o) for p, o in zip(plans, outcomes)]
    diffs = [
        row_differences(r["label"], p.config, r["paper_preset"], r["paper_overrides"])
        for r, p in zip(rows, plans)
    ]
    failed = [f for s in summaries for f in s["failed"]]
    path = out / f"{grid}.md"
    atomic_write_text(path, _grid_markdown(grid, rows, summaries, diffs, overrides, failed, out))
    return GridReport(path, failed, warning_line(diffs, path))


def _grid_markdown(grid, rows, summaries, diffs, overrides, failed, out: Path) -> str:
    """``<grid>.md``: the differing settings, overrides, failures, then one table and plot per group."""
    from camim.experiments.paper import differences_section

    md = [f"# {grid}: ours (mean ± std over seeds) beside the paper", "", *differences_section(diffs)]
    if overrides:
        md += [f"Overrides: `{' '.join(overrides)}`.", ""]
    md += _failure_lines(failed)
    groups: dict[str, list] = {}
    for row, summary in zip(rows, summaries):
        groups.setdefault(row["group"], []).append((row, summary["test"]))
    for group, items in groups.items():
        if len(groups) > 1:
            md += [f"## {group}", ""]
        if items[0][0]["note"]:
            md += [items[0][0]["note"], ""]
        md.append(comparison_table([(r["x"], a, r["paper"]) for r, a in items], items[0][0]["scores"]))
        plot = f"{grid}_{slug(group)}.png"
        plot_bars(
            [r["x"] for r, _ in items],
            [(a or {}).get("f1") for _, a in items],
            [(r["paper"] or {}).get("f1") for r, _ in items],
            f"{grid} {group}" if group != grid else grid,
            out / plot,
        )
        md += [f"![{group}]({plot})", ""]
    return "\n".join(md)

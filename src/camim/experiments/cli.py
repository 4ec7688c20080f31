"""``camim experiment``: a preset over seeds, the paper's grids, or the case analysis of finished runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from camim.errors import CamimError
from camim.runs import add_overwrite_argument
from camim.typed import add_set_argument


def register(subparsers) -> None:
    """Add the ``experiment`` command."""
    from camim.experiments.cases import FILTERS

    grids = ", ".join(_grid_names())
    p = subparsers.add_parser(
        "experiment",
        help=f"multi-seed runs (mean ± std) of a preset, a grid ({grids}), or the case analysis of finished "
        "runs (cases)",
        description="`camim experiment --preset P --seeds 1 2 3`, `camim experiment GRID` (grids.yaml: "
        f"{grids}), or `camim experiment cases --runs A B [C ...] --split test --output DIR` (Fig. 5: "
        "per-sample predictions of each run side by side, flips counted per relation; cases.md, cases.html, "
        "cases.jsonl). Runs train one after another in this process, or with --jobs N up to N at once (one "
        "per GPU, else CPU slots), or as Ray tasks (--launcher ray).",
    )
    p.add_argument("grid", nargs="?", metavar="GRID", help=f"a grid ({grids}), or cases")
    p.add_argument("--preset", help="one preset (or YAML) to run over seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the preset's seed")
    p.add_argument(
        "--data-dir",
        help="MNRE-style data folder (required except for cases: default the runs' data.data_dir)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="experiment folder (one run folder per row and seed); cases: its folder",
    )
    p.add_argument("--runs", nargs="+", metavar="RUN", help="cases: finished run folders on the same data")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="cases: the split")
    p.add_argument("--filter", default="all", choices=FILTERS, help="cases: which samples to list")
    p.add_argument("--limit", type=int, default=None, help="cases: at most this many rows in .md/.html")
    add_launch_arguments(p)
    add_set_argument(p)
    add_overwrite_argument(p)
    p.set_defaults(func=cmd_experiment)


def _grid_names() -> list[str]:
    """The grids of ``camim/configs/grids.yaml``, read without importing the training stack (every command
    registers at start-up)."""
    from camim.typed import read_yaml_mapping

    return list(read_yaml_mapping(Path(__file__).resolve().parent.parent / "configs" / "grids.yaml"))


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    """--jobs, --launcher, --ray-address, --threads-per-run (:class:`camim.experiments.launch.Launch`)."""
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train up to N runs at once on this machine: one per GPU (each run sees only its GPU), else N "
        "CPU slots (default 1: one after another in this process); with --launcher ray and a local Ray, "
        "N x threads CPUs",
    )
    p.add_argument(
        "--launcher",
        choices=["local", "ray"],
        default="local",
        help="ray: each run is a Ray task asking for one GPU (or --threads-per-run CPUs); needs camim[ray]",
    )
    p.add_argument("--ray-address", help="a Ray cluster's address (default: start a local Ray)")
    p.add_argument(
        "--threads-per-run",
        type=int,
        default=None,
        metavar="T",
        help="torch threads of every run, whatever runs beside it (default: 1 on CPU, so that sequential "
        "and parallel runs compute alike; on GPUs, the CPUs per GPU)",
    )


def cmd_experiment(args: argparse.Namespace) -> int:
    from camim.experiments.grids import grid_names, run_grid, run_seeds
    from camim.experiments.launch import Launch
    from camim.reports import mean_std_text

    if args.grid == "cases":
        return cmd_cases(args)
    if args.runs:
        raise CamimError("--runs belongs to `camim experiment cases`")
    if bool(args.grid) == bool(args.preset):
        raise CamimError("give either a grid or --preset, not both")
    if args.grid and args.grid not in grid_names():
        raise CamimError(f"unknown grid {args.grid!r}; grids: {', '.join(grid_names())} (or cases)")
    if not args.data_dir:
        raise CamimError("--data-dir is required for --preset and the grids")
    launch = Launch(args.jobs, args.launcher, args.ray_address, args.threads_per_run)
    out = Path(args.output)
    if args.preset:
        summary = run_seeds(
            args.preset, args.data_dir, out, args.seeds, args.overrides, args.overwrite, launch
        )
        if not summary:  # a non-zero DDP rank: rank 0 reports
            return 0
        if summary["test"]:
            print(f"{args.preset} over seeds {[int(s) for s in summary['per_seed']]} (test):")
            print("  " + "  ".join(f"{k} {mean_std_text(v)}" for k, v in summary["test"].items()))
        failed, path, warning = summary["failed"], out / "summary.md", None
    else:
        report = run_grid(args.grid, args.data_dir, out, args.seeds, args.overrides, args.overwrite, launch)
        if report is None:
            return 0
        print(report.path.read_text(encoding="utf-8"))
        failed, path, warning = report.failed, report.path, report.warning
    print(f"wrote {path}")
    for f in failed:
        print(f"failed: {f['run']}: {f['reason']}")
    if warning:
        print(warning)
    return 1 if failed else 0


def cmd_cases(args: argparse.Namespace) -> int:
    from camim.experiments.cases import flip_table, run_cases

    if not args.runs or args.preset:
        raise CamimError("`camim experiment cases` needs --runs A B [C ...] (and no --preset)")
    res = run_cases(args.runs, args.output, args.split, args.data_dir, args.filter, args.limit)
    for note in res["notes"]:
        print(note)
    print(f"{args.split}: {res['total']} samples; {args.filter}: {res['selected']}")
    print(flip_table(res["counts"]))
    print("wrote " + ", ".join(str(f) for f in res["files"]))
    return 0

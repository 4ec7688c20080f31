"""``camim experiment``: a preset over seeds, the paper's grids, or the case analysis of finished runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from camim.errors import CamimError
from camim.runs import add_overwrite_argument
from camim.typed import add_set_argument

GRIDS = ("table1", "table2", "fig4")


def register(subparsers) -> None:
    """Add the ``experiment`` command."""
    from camim.experiments.cases import FILTERS

    p = subparsers.add_parser(
        "experiment",
        help="multi-seed runs (mean ± std) of a preset, the paper's grids (table1, table2, fig4), or the case "
        "analysis of finished runs (cases)",
        description="`camim experiment --preset P --seeds 1 2 3`, `camim experiment table1|table2|fig4`, or "
        "`camim experiment cases --runs A B [C ...] --split test --output DIR` (Fig. 5: per-sample predictions "
        "of each run side by side, flips counted per relation; cases.md, cases.html, cases.jsonl).",
    )
    p.add_argument("grid", nargs="?", choices=[*GRIDS, "cases"], help="a grid of the paper, or cases")
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
    add_set_argument(p)
    add_overwrite_argument(p)
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from camim.experiments.grids import run_grid, run_seeds

    if args.grid == "cases":
        return cmd_cases(args)
    if args.runs:
        raise CamimError("--runs belongs to `camim experiment cases`")
    if bool(args.grid) == bool(args.preset):
        raise CamimError("give either a grid (table1, table2, fig4) or --preset, not both")
    if not args.data_dir:
        raise CamimError("--data-dir is required for --preset and the grids")
    out = Path(args.output)
    if args.preset:
        summary = run_seeds(args.preset, args.data_dir, out, args.seeds, args.overrides, args.overwrite)
        if not summary:  # a non-zero DDP rank: rank 0 reports
            return 0
        agg = summary["test"]
        print(f"{args.preset} over seeds {summary['seeds']} (test):")
        print("  " + "  ".join(f"{k} {v['mean']:.2f} ± {v['std']:.2f}" for k, v in agg.items()))
        print(f"wrote {out / 'summary.md'}")
    else:
        path = run_grid(args.grid, args.data_dir, out, args.seeds, args.overrides, args.overwrite)
        if path is None:
            return 0
        print(path.read_text(encoding="utf-8"))
        print(f"wrote {path}")
    return 0


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

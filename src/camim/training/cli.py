"""``camim train``, ``camim evaluate``, ``camim experiment`` and ``camim pretrain``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SET_HELP = "override a config value (dotted key, YAML value), e.g. --set optim.lr=3e-5; repeatable"


def add_set_argument(p: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    """The repeatable ``--set KEY=VALUE`` config override (into ``args.overrides``) of every run command."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_overwrite_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="a run folder that holds another run (other settings, or finished with its checkpoints gone) is "
        "refused; with --overwrite that run is removed and trained afresh",
    )


def register(subparsers) -> None:
    """Add the ``train``, ``evaluate`` and ``experiment`` commands."""
    from camim.training.config import list_presets

    presets = ", ".join(list_presets())
    p = subparsers.add_parser("train", help="train a model with Lightning and evaluate it on test")
    p.add_argument("--config", required=True, help=f"a preset ({presets}) or a YAML file")
    p.add_argument("--data-dir", required=True, help="MNRE-style data folder")
    p.add_argument("--output", required=True, help="run folder (resumes from its checkpoints/last.ckpt)")
    add_set_argument(p)
    add_overwrite_argument(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="re-score a saved model on one split")
    p.add_argument("--model", required=True, help="a run folder or its model/ folder")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--caption-source", default=None, help="default: the run's config.yaml (else minicpm)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    from camim.training.cases import FILTERS

    p = subparsers.add_parser(
        "experiment",
        help="multi-seed runs (mean ± std) of a preset, the paper's grids (table1, table2, fig4), or the case "
        "analysis of finished runs (cases)",
        description="`camim experiment --preset P --seeds 1 2 3`, `camim experiment table1|table2|fig4`, or "
        "`camim experiment cases --runs A B [C ...] --split test --output DIR` (Fig. 5: per-sample predictions "
        "of each run side by side, flips counted per relation; cases.md, cases.html, cases.jsonl).",
    )
    p.add_argument(
        "grid", nargs="?", choices=["table1", "table2", "fig4", "cases"], help="a grid of the paper, or cases"
    )
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
    register_pretrain(subparsers)


def _fmt_scores(s: dict) -> str:
    from camim.training.report import format_scores

    return format_scores(s)


def cmd_train(args: argparse.Namespace) -> int:
    from camim.training.api import train_run

    result = train_run(
        args.config, args.data_dir, args.output, overrides=args.overrides, overwrite=args.overwrite
    )
    if not result.primary:  # a non-zero DDP rank: rank 0 reports
        return 0
    if result.metrics["val"] is not None:
        print(f"val   {_fmt_scores(result.metrics['val'])}")
    print(f"test  {_fmt_scores(result.metrics['test'])}")
    print(f"wrote {result.output_dir} (model: {result.model_dir}, report: {result.output_dir / 'report.md'})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from camim.training.api import evaluate_run

    kw = {} if args.caption_source is None else {"caption_source": args.caption_source}
    res = evaluate_run(args.model, args.data_dir, split=args.split, batch_size=args.batch_size, **kw)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.split} ({res['num_samples']} samples)  {_fmt_scores(res)}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from camim.errors import CamimError
    from camim.training.experiment import run_grid, run_seeds

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
    from camim.errors import CamimError
    from camim.training.cases import flip_table, run_cases

    if not args.runs or args.preset:
        raise CamimError("`camim experiment cases` needs --runs A B [C ...] (and no --preset)")
    res = run_cases(args.runs, args.output, args.split, args.data_dir, args.filter, args.limit)
    for note in res["notes"]:
        print(note)
    print(f"{args.split}: {res['total']} samples; {args.filter}: {res['selected']}")
    print(flip_table(res["counts"]))
    print("wrote " + ", ".join(str(f) for f in res["files"]))
    return 0


def register_pretrain(subparsers) -> None:
    """Add the ``pretrain`` command (domain-adaptive masked-LM pretraining)."""
    p = subparsers.add_parser(
        "pretrain",
        help="masked-LM pretraining of a text encoder on the training split's text and captions",
        description="Whole-word masked-LM training (Lightning, resumable) on the training split's sentences and "
        "chosen caption sources (never val/test), writing a from_pretrained folder with camim_pretrain.json. "
        "The offline presets start from it with --set offline.pretrained_encoder=ENC (offline-*-dapt presets).",
    )
    p.add_argument("--data-dir", required=True, help="MNRE-style data folder")
    p.add_argument("--output", required=True, help="encoder folder (resumes from its checkpoints/last.ckpt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text-encoder", help="a hub id or folder to continue pretraining")
    src.add_argument(
        "--from-scratch",
        action="store_true",
        help="the offline presets' compact BERT and WordPiece vocabulary",
    )
    p.add_argument(
        "--sources", nargs="+", default=None, metavar="SOURCE",
        help="text and/or caption:<source> (default: text caption:minicpm)",
    )  # fmt: skip
    add_set_argument(
        p, help="override a pretraining setting, e.g. --set epochs=5 --set offline.vocab_size=8000"
    )
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from camim.training.pretrain import pretrain, pretrain_config

    settings: dict = {"text_encoder": args.text_encoder, "from_scratch": bool(args.from_scratch)}
    if args.sources:
        settings["sources"] = args.sources
    cfg = pretrain_config(args.overrides, **settings)
    res = pretrain(cfg, args.data_dir, args.output)
    c = res.card
    samples = ", ".join(f"{k} {v}" for k, v in c["samples"].items())
    print(
        f"pretrained on the training split ({samples}): {c['steps']} steps, final MLM loss {c['final_mlm_loss']:.4f}"
    )
    print(f"wrote {res.output_dir} (card: {res.output_dir / 'camim_pretrain.json'})")
    return 0

"""``camim train`` and ``camim evaluate``."""

from __future__ import annotations

import argparse
import json

from camim.runs import add_overwrite_argument, format_scores
from camim.typed import add_set_argument


def register(subparsers) -> None:
    """Add the ``train`` and ``evaluate`` commands."""
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


def cmd_train(args: argparse.Namespace) -> int:
    from camim.training.api import train_run

    result = train_run(
        args.config, args.data_dir, args.output, overrides=args.overrides, overwrite=args.overwrite
    )
    if not result.primary:  # a non-zero DDP rank: rank 0 reports
        return 0
    if result.metrics["val"] is not None:
        print(f"val   {format_scores(result.metrics['val'])}")
    print(f"test  {format_scores(result.metrics['test'])}")
    print(f"wrote {result.output_dir} (model: {result.model_dir}, report: {result.folder.report_path})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from camim.training.api import evaluate_run

    kw = {} if args.caption_source is None else {"caption_source": args.caption_source}
    res = evaluate_run(args.model, args.data_dir, split=args.split, batch_size=args.batch_size, **kw)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.split} ({res['num_samples']} samples)  {format_scores(res)}")
    return 0

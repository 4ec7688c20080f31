"""``camim pretrain``: domain-adaptive masked-LM pretraining of a text encoder."""

from __future__ import annotations

import argparse

from camim.typed import add_set_argument


def register(subparsers) -> None:
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
    from camim.pretraining.pretrain import CARD, pretrain, pretrain_config

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
    print(f"wrote {res.output_dir} (card: {res.output_dir / CARD})")
    return 0

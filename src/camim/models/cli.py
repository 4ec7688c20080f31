"""``camim convert``: a released CAMIM / TMR / HVPNeT checkpoint -> a camim model folder (safetensors)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from camim.errors import CamimError


def _labels(path: str | None) -> list[str] | None:
    if path is None:
        return None
    p = Path(path)
    try:
        rel2id = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CamimError(f"{p}: cannot read the rel2id JSON: {exc}") from exc
    if not isinstance(rel2id, dict) or sorted(rel2id.values()) != list(range(len(rel2id))):
        raise CamimError(f"{p}: expected a {{label: id}} object with ids 0..N-1")
    return [name for name, _ in sorted(rel2id.items(), key=lambda kv: kv[1])]


def convert(args: argparse.Namespace) -> int:
    from camim.models.checkpoint import load_reference_checkpoint

    base = {"text_encoder": args.text_encoder, "vision_encoder": args.vision_encoder, "mi": not args.no_mi}
    model, report = load_reference_checkpoint(args.checkpoint, base, _labels(args.labels))
    out = model.save_pretrained(args.output)
    print(report.summary())
    print(f"wrote {out} ({model.config.name}, cam={model.config.cam}, mi={model.config.mi})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a released CAMIM/TMR or HVPNeT checkpoint into a camim model folder",
        description="Map the released checkpoint layout (CAMIM/TMR: sentence_encoder.bert.*, ..., fc; HVPNeT's "
        "HMNeTREModel: bert.*, image_model.resnet.*, encoder_conv.*, gates.*, classifier.*) onto camim's "
        "modules, opened with torch.load(weights_only=True); unmatched, missing or mis-shaped keys are an error.",
    )
    p.add_argument("checkpoint", help="released .pth/.pt file ({'state_dict': ...} or a flat state dict)")
    p.add_argument(
        "--output", required=True, help="folder to write (config.json, model.safetensors, tokenizer)"
    )
    p.add_argument(
        "--text-encoder", default="bert-base-uncased", help="hub id or folder of the BERT config/vocab"
    )
    p.add_argument(
        "--vision-encoder", default="microsoft/resnet-50", help="hub id or folder of the ResNet config"
    )
    p.add_argument("--labels", help="rel2id JSON (default: MNRE's 23 labels)")
    p.add_argument(
        "--no-mi",
        action="store_true",
        help="do not add the InfoNCE loss when fine-tuning a CAMIM/TMR model further (HVPNeT: always off)",
    )
    p.set_defaults(func=convert)

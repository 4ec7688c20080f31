"""``camim data``: ``inspect`` (statistics), ``validate`` (every file checked; exit 1 on problems),
``convert`` (released files to the canonical JSONL/JSON forms), and ``fetch`` when available."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from camim.data.auxiliary import read_box_dict, read_object_dict
from camim.data.captions import read_captions
from camim.data.inspection import ScanResult, discover_caption_sources, scan
from camim.data.layout import CAPTION_SOURCES, SPLITS, DataLayout
from camim.data.samples import read_samples
from camim.data.writers import write_captions_jsonl, write_index_dict_json, write_samples_jsonl
from camim.errors import DataError
from camim.io import DEFAULT_ENCODING, decode_text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the ``camim`` parser."""
    data = subparsers.add_parser("data", help="inspect, validate, convert and fetch MNRE-style data")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    p = data_sub.add_parser("inspect", help="per-split statistics of a data folder")
    p.add_argument("dir", type=Path, help="data folder (released CAMIM layout)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _scan_arguments(p)
    p.set_defaults(func=cmd_inspect)

    p = data_sub.add_parser("validate", help="check every file; exit 1 listing the problems, 0 when clean")
    p.add_argument("dir", type=Path)
    p.add_argument("--max-problems", type=int, default=50, help="problems listed (all are counted)")
    _scan_arguments(p)
    p.set_defaults(func=cmd_validate)

    p = data_sub.add_parser("convert", help="write the canonical JSONL/JSON forms of a data folder")
    p.add_argument("dir", type=Path)
    p.add_argument("out", type=Path, help="output folder (must not be the input folder)")
    _encoding_argument(p, "of the input's text files; the output is always UTF-8")
    p.set_defaults(func=cmd_convert)

    try:
        from camim.data.fetch import register as _register_fetch
    except ImportError:
        _register_fetch = None
    if _register_fetch is not None:
        _register_fetch(data_sub)


def _encoding_argument(p: argparse.ArgumentParser, what: str = "of the text files") -> None:
    p.add_argument(
        "--encoding",
        default=DEFAULT_ENCODING,
        help=f"text encoding {what} (default UTF-8, decoded strictly; a BOM is accepted), e.g. latin-1 or cp1252 "
        "for legacy files",
    )


def _scan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-images",
        "--no-image-check",
        dest="no_images",
        action="store_true",
        help="do not decode the images (by default every referenced image that exists is decoded, with the "
        "size limits of training)",
    )
    p.add_argument(
        "--negative-label",
        help="the label excluded from micro P/R/F1 (data.negative_label); default: found by name "
        "(None, none, NA, no_relation ...)",
    )
    _encoding_argument(p)


def _scan(args: argparse.Namespace) -> ScanResult:
    return scan(
        args.dir, check_images=not args.no_images, encoding=args.encoding, negative=args.negative_label
    )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_summary(result: ScanResult) -> str:
    """The human-readable report of ``camim data inspect``."""
    s = result.summary
    splits = s["splits"]
    names = list(splits)
    lines = [
        f"data folder: {s['data_dir']}",
        f"labels: {s['num_labels']} (negative: {s['negative']})",
        f"negative label (excluded from micro P/R/F1): {s['negative']}, {s['negative_origin']}",
        "",
    ]
    cols = ["samples", "images", "labels", "negative", "scores", "objects", "boxes", "phrases", "img files"]
    lines.append(f"{'split':<8}" + "".join(f"{c:>11}" for c in cols))
    for name, sp in splits.items():
        row = [
            str(sp["samples"]),
            str(sp["images"]),
            str(sp["labels"]),
            _pct(sp["negative_share"]),
            _pct(sp["scores"]["coverage"]),
            _pct(sp["objects"]["coverage"]),
            _pct(sp["generated_boxes"]["coverage"]),
            _pct(sp["phrases"]["coverage"]),
            _pct(sp["image_files"]["coverage"]) if sp["image_files"]["present"] else "absent",
        ]
        lines.append(f"{name:<8}" + "".join(f"{c:>11}" for c in row))
    lines += ["", "image ids: their form, and how they were resolved to files in the image folder"]
    for name, sp in splits.items():
        forms = ", ".join(f"{v} {k}" for k, v in sp["img_id_forms"].items()) or "-"
        files = sp["image_files"]
        how = (
            ", ".join(f"{v} {k}" for k, v in files.get("resolved", {}).items())
            if files["present"]
            else "absent"
        )
        lines.append(f"{name:<8}{forms}; {how}")
    lines += ["", "captions: coverage / mean words / empty"]
    lines.append(f"{'source':<11}" + "".join(f"{n:>22}" for n in names) + f"{'all':>22}")
    for src, tot in s["captions"].items():
        cells = []
        for n in names:
            c = splits[n]["captions"][src]
            cells.append(f"{_pct(c['coverage'])} / {c['mean_words']:.1f} / {c['empty']}")
        cells.append(f"{_pct(tot['coverage'])} / {tot['mean_words']:.1f} / {tot['empty']}")
        lines.append(f"{src:<11}" + "".join(f"{c:>22}" for c in cells))
    lines += ["", "label distribution"]
    lines.append(f"{'relation':<30}" + "".join(f"{n:>8}" for n in names))
    for label in s["labels"]:
        lines.append(
            f"{label:<30}" + "".join(f"{splits[n]['label_distribution'].get(label, 0):>8}" for n in names)
        )
    lines.append("")
    lines.append(
        f"problems: {len(result.problems)}, warnings: {len(result.warnings)} (see `camim data validate`)"
    )
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    result = _scan(args)
    if args.json:
        out = dict(result.summary)
        out["problems"] = len(result.problems)
        out["warnings"] = len(result.warnings)
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(format_summary(result))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    result = _scan(args)
    for w in result.warnings:
        print(f"warning: {w}")
    if result.problems:
        for p in result.problems[: args.max_problems]:
            print(f"problem: {p}")
        more = len(result.problems) - args.max_problems
        if more > 0:
            print(f"... and {more} more problems")
        print(f"{args.dir}: {len(result.problems)} problems, {len(result.warnings)} warnings")
        return 1
    total = result.summary["samples"]
    print(f"{args.dir}: clean ({total} samples, {len(result.warnings)} warnings)")
    return 0


def convert(
    src: Path, out: Path, layout: DataLayout | None = None, encoding: str = DEFAULT_ENCODING
) -> list[Path]:
    """Write the canonical forms of ``src`` into ``out``: ``{split}.jsonl`` samples, caption JSONL per
    source, object/box dictionaries as JSON; rel2id, scores and phrases are copied (re-encoded as UTF-8
    when ``encoding`` names a legacy encoding). Returns the files written. The result reads back with the
    default :class:`DataLayout` and UTF-8."""
    layout = layout or DataLayout()
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise DataError("output folder must differ from the input folder", out)
    written: list[Path] = []

    def copy(rel: str) -> None:  # text files, checked and re-encoded as UTF-8 (without a BOM)
        if (src / rel).is_file():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            text = decode_text((src / rel).read_bytes(), src / rel, encoding)
            (out / rel).write_bytes(text.encode("utf-8"))
            written.append(out / rel)

    copy(layout.rel2id)
    sources = discover_caption_sources(src, layout, SPLITS)
    for split in SPLITS:
        path = layout.first_existing(src, layout.samples, split)
        if path is None:
            continue
        written.append(write_samples_jsonl(read_samples(path, encoding=encoding), out / f"{split}.jsonl"))
        for source in sources:
            try:
                cap_path = layout.caption_path(src, source, split)
            except DataError:
                continue
            prefix = CAPTION_SOURCES.get(source, source)
            captions = read_captions(cap_path, encoding=encoding)
            written.append(write_captions_jsonl(captions.texts, out / "caption" / f"{prefix}_{split}.jsonl"))
        for templates, reader in (
            (layout.objects, read_object_dict),
            (layout.generated_boxes, read_box_dict),
        ):
            p = layout.first_existing(src, templates, split)
            if p is not None:
                written.append(
                    write_index_dict_json(
                        reader(p, encoding=encoding), (out / p.relative_to(src)).with_suffix(".json")
                    )
                )
        for t in (layout.strong_ori, layout.weak_ori, layout.strong_dif, layout.weak_dif, layout.phrases):
            copy(t.format(split=split))
    return written


def cmd_convert(args: argparse.Namespace) -> int:
    files = convert(args.dir, args.out, encoding=args.encoding)
    print(f"wrote {len(files)} files under {args.out}")
    return 0

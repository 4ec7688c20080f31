"""``camim data fetch`` and ``python -m camim.data.fetch pin FOLDER OUT``."""

from __future__ import annotations

import argparse

from camim.data.fetch.download import fetch_mnre
from camim.data.fetch.extract import IMAGE_KINDS, place_images
from camim.data.fetch.pinning import pin_folder, write_manifest
from camim.errors import CamimError
from camim.io import human_size


def register(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``fetch`` to the ``camim data`` sub-commands."""
    p = data_subparsers.add_parser(
        "fetch",
        help="download the MNRE text/caption/auxiliary files (sha256-verified) and place the images",
        description=(
            "Download the files of the CAMIM release (CAMIM/data at commit df328a3) into DEST, verifying each "
            "sha256, resuming interrupted downloads and skipping files already present; optionally place the "
            "images (which are hosted elsewhere, see docs/data.md) into the released layout."
        ),
    )
    p.add_argument("dataset", choices=["mnre"], help="the dataset to fetch")
    p.add_argument("--dest", required=True, help="destination folder (becomes the data dir, like CAMIM/data)")
    p.add_argument(
        "--source", default=None, help="mirror base URL or local folder (default: raw GitHub URLs)"
    )
    p.add_argument(
        "--images", default=None, metavar="ARCHIVE_OR_DIR", help="image archive or folder to place"
    )
    p.add_argument(
        "--images-kind",
        default="auto",
        choices=["auto", *IMAGE_KINDS],
        help="auto: the source has img_org/, img_vg/, diffusion_pic/ folders; else which kind its split folders hold",
    )
    p.add_argument("--copy", action="store_true", help="copy images from a folder instead of symlinking them")
    p.add_argument(
        "--images-only", action="store_true", help="only place --images, do not fetch the text files"
    )
    p.add_argument("--retries", type=int, default=3, help="retries per file after an interrupted transfer")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    if args.images_only and not args.images:
        raise CamimError("--images-only needs --images")
    if not args.images_only:
        fetch_mnre(args.dest, args.source, retries=args.retries, timeout=args.timeout)
    if args.images:
        place_images(args.images, args.dest, kind=args.images_kind, copy=args.copy)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m camim.data.fetch pin FOLDER OUT``: pin a copy of CAMIM/data (how the package list is made)."""
    parser = argparse.ArgumentParser(prog="python -m camim.data.fetch")
    sub = parser.add_subparsers(dest="command", required=True)
    pin = sub.add_parser("pin", help="write the pinned list (path, sha256, size) of a folder")
    pin.add_argument("folder")
    pin.add_argument("out")
    args = parser.parse_args(argv)
    files = pin_folder(args.folder)
    write_manifest(files, args.out)
    print(f"pinned {len(files)} files ({human_size(sum(f.size for f in files))}) into {args.out}")
    return 0

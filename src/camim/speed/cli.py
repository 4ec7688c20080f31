"""``camim cache-images``: build (or resume, or verify) the decoded-image cache of MNRE splits."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from camim.data.types import IMAGE_MODALITIES
from camim.errors import CamimError
from camim.io import human_size


def cache_images(args: argparse.Namespace) -> int:
    from camim.data import MNREDataset
    from camim.speed.image_cache import ImageCache, ImageCacheSpec

    spec = ImageCacheSpec(args.image_size, args.geometry)
    for split in args.splits:
        folder = Path(args.output) / split
        if args.verify_only:
            problems = ImageCache(folder).verify()
            for p in problems:
                print(p)
            if problems:
                raise CamimError(f"{folder}: {len(problems)} corrupt rows; delete the folder and rebuild")
            print(f"{folder}: intact")
            continue
        ds = MNREDataset(
            args.data_dir, split, caption_source=None, modalities=args.modalities, on_missing=args.on_missing
        )
        start = time.perf_counter()
        cache = ImageCache.build(ds, folder, spec, num_workers=args.workers, progress=None)
        print(
            f"{split}: {len(ds)} samples, {len(cache)} unique images, "
            f"{human_size(cache.data_path.stat().st_size)} in {folder} "
            f"({time.perf_counter() - start:.1f}s); fallbacks: {cache.report or 'none'}"
        )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache-images",
        help="decode and resize every image of MNRE splits once into a memory-mapped cache",
        description="Build the camim.speed image cache (docs/speed.md). Interrupted builds resume; a cache "
        "for a grown split is completed incrementally; --verify-only checks every row's CRC32.",
    )
    p.add_argument("data_dir", help="MNRE-style data folder")
    p.add_argument("--output", required=True, help="cache root; one sub-folder per split")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument(
        "--geometry",
        choices=("stretch", "crop"),
        default="stretch",
        help="full images: stretch (released TMR/CAMIM quirk) or crop (HVPNeT, clean fidelity)",
    )
    p.add_argument("--modalities", nargs="+", choices=IMAGE_MODALITIES, default=list(IMAGE_MODALITIES))
    p.add_argument("--on-missing", choices=("raise", "fallback"), default="raise")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--verify-only", action="store_true")
    p.set_defaults(func=cache_images)

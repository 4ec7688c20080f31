"""Samples/s through a torch DataLoader: naive (PIL decode + resize per item) vs the decoded-image cache.

Draws a synthetic MNRE-layout world with Pillow (``camim.synthetic``: original images, object crops,
generated images and their boxes, captions, scores, phrases), then loads the train split for a TMR + CAM
model (8 images per sample: original, generated, up to 3 crops of each) in one process, side by side:

- naive: ``MNREDataset`` with every image modality + the model's processor as collate (the plain path:
  each item decodes its JPEGs, crops, resizes and normalises);
- cached: ``CachedImageDataset`` (text modalities only) + ``CachedCollate`` over a ``camim.speed``
  ``ImageCache`` built once beforehand (its build time is printed separately; it is paid once per split).

- cached, uint8 batch: the same, but the collate leaves pixels uint8 and ``CachedCollate.finish`` makes the
  float tensors on the GPU after the transfer (that conversion is not part of the loader time measured).

All produce identical batches (tests/speed). Each path runs one warm-up epoch, then a timed epoch.

    python benchmarks/dataloader_speed.py [--samples 256] [--source-size 512] [--image-size 224]
                                          [--workers 0] [--batch-size 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from camim.data import MNREDataset
from camim.models.config import ModelConfig
from camim.models.processing import MREProcessor
from camim.speed.image_cache import ImageCache, ImageCacheSpec
from camim.speed.loading import CachedCollate, CachedImageDataset
from camim.synthetic import WorldConfig, generate_world

ALL = ("caption", "scores", "phrase", "image", "objects", "generated_image", "generated_objects")
TEXT = ("caption", "scores", "phrase")


def tokenizer_for(world: Path, folder: Path):
    """A WordPiece tokenizer trained by ``tokenizers`` on the world's text (bert-base-like special rows)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast

    ds = MNREDataset(world, "train", modalities=("caption",))
    texts = [" ".join(ex.tokens) + " " + (ex.caption or "") for ex in (ds[i] for i in range(len(ds)))]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]"] + [f"[unused{i}]" for i in range(4)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=special))
    vocab = tok.get_vocab()
    fast = BertTokenizerFast(vocab=dict(sorted(vocab.items(), key=lambda kv: kv[1])), do_lower_case=True)
    fast.save_pretrained(folder)
    return fast


def epoch_rate(loader: torch.utils.data.DataLoader, n: int) -> float:
    for _ in loader:  # warm-up epoch (worker start, page cache)
        pass
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += len(batch)
    elapsed = time.perf_counter() - start
    assert seen == n
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--source-size", type=int, default=512, help="side of the drawn JPEGs")
    ap.add_argument("--image-size", type=int, default=224, help="model input side (released 224)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = tmp / "world"
        t0 = time.perf_counter()
        generate_world(
            world,
            WorldConfig(
                train=args.samples,
                val=1,
                test=1,
                image_size=args.source_size,
                generated_size=args.source_size,
            ),
        )
        print(
            f"drew {args.samples} samples with {args.source_size}px images in {time.perf_counter() - t0:.1f}s"
        )
        config = ModelConfig(
            name="tmr", cam="both", mi=True, image_size=args.image_size, text_encoder=str(tmp)
        )
        processor = MREProcessor(config, tokenizer_for(world, tmp / "tok"), set(ALL))

        full = MNREDataset(world, "train", modalities=ALL)
        t0 = time.perf_counter()
        cache = ImageCache.build(
            full, tmp / "cache", ImageCacheSpec.for_model(config), num_workers=args.workers
        )
        build_s = time.perf_counter() - t0
        refs = sum(
            2 + len(cache.sample(p)["objects"]) + len(cache.sample(p)["generated_objects"])
            for p in range(len(full))
        )
        print(
            f"image cache: {len(cache)} unique rows for {refs} image references, "
            f"{cache.data_path.stat().st_size / 2**20:.1f} MiB, built in {build_s:.1f}s (once per split)"
        )

        common = {
            "batch_size": args.batch_size,
            "num_workers": args.workers,
            "persistent_workers": args.workers > 0,
        }
        naive = torch.utils.data.DataLoader(full, collate_fn=processor, **common)
        cached_ds = CachedImageDataset(MNREDataset(world, "train", modalities=TEXT), cache)
        cached = torch.utils.data.DataLoader(cached_ds, collate_fn=CachedCollate(processor), **common)
        deferred = torch.utils.data.DataLoader(
            cached_ds, collate_fn=CachedCollate(processor, uint8=True), **common
        )
        rate_naive = epoch_rate(naive, len(full))
        rate_cached = epoch_rate(cached, len(full))
        rate_uint8 = epoch_rate(deferred, len(full))

    print()
    print(
        f"DataLoader throughput, batch {args.batch_size}, {args.workers} workers, {args.threads} threads, "
        f"{args.image_size}px model input, 8 images per sample"
    )
    print(f"{'path':<34}{'samples/s':>12}{'ratio':>9}")
    print(f"{'naive (PIL decode + resize/item)':<34}{rate_naive:>12.1f}{1.0:>9.2f}")
    print(f"{'cached (uint8 memmap)':<34}{rate_cached:>12.1f}{rate_cached / rate_naive:>9.2f}")
    print(f"{'cached, uint8 batch (*)':<34}{rate_uint8:>12.1f}{rate_uint8 / rate_naive:>9.2f}")
    print("(*) float conversion deferred to the device (CachedCollate(uint8=True).finish), not timed here")


if __name__ == "__main__":
    main()

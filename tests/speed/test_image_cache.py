from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch
from tests.models.conftest import tiny_config
from tests.speed.conftest import ALL, TEXT, dataset

from camim.errors import CamimError, DataError
from camim.models import FidelityConfig, build_model
from camim.speed.image_cache import ImageCache, ImageCacheSpec, crop_lookup, to_pixels
from camim.speed.loading import CachedCollate, CachedImageDataset


def assert_same_batch(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert (x is None) == (y is None), f.name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), f.name


@pytest.mark.parametrize(
    "overrides",
    [{}, {"fidelity": dataclasses.asdict(FidelityConfig.clean())}, {"name": "hvpnet"}],
    ids=["tmr-released-bgr", "tmr-clean", "hvpnet"],
)
def test_cached_batches_equal_processor_batches_bit_for_bit(world, text_dir, vision_dir, tmp_path, overrides):
    full = dataset(world)
    model = build_model(tiny_config(text_dir, vision_dir, **overrides), list(full.labels.names))
    spec = ImageCacheSpec.for_model(model.config)
    assert spec.full_image_geometry == ("stretch" if not overrides else "crop")
    cache = ImageCache.build(full, tmp_path / "cache", spec)
    assert cache.complete and cache.verify() == []
    cached = CachedImageDataset(dataset(world, TEXT), cache)
    collate = CachedCollate(model.processor)
    idx = [0, 3, 4, 7]
    expected = model.processor([full[i] for i in idx])
    got = collate([cached[i] for i in idx])
    assert_same_batch(got, expected)
    deferred = CachedCollate(model.processor, uint8=True)([cached[i] for i in idx])
    assert deferred.image.dtype == torch.uint8 and deferred.objects.dtype == torch.uint8
    assert_same_batch(CachedCollate(model.processor).finish(deferred), expected)
    assert got.objects_mask.sum() < got.objects_mask.numel()  # the world has zero-padded crops
    loader = torch.utils.data.DataLoader(cached, batch_size=5, collate_fn=collate, num_workers=1)
    batches = list(loader)
    assert len(batches) == 2 and batches[1].image.shape[0] == 5


def test_rows_are_deduplicated_and_kinds_recorded(world, tmp_path):
    ds = dataset(world)
    cache = ImageCache.build(ds, tmp_path / "c", ImageCacheSpec(32, "stretch"))
    refs = 0
    for p in range(len(ds)):
        rec = cache.sample(p)
        refs += 2 + len(rec["objects"]) + len(rec["generated_objects"])
        assert cache.kinds[rec["image"]] == "full" and all(cache.kinds[r] == "crop" for r in rec["objects"])
    assert len(cache) <= refs
    assert cache.rows([0]).shape == (1, 32, 32, 3) and cache.rows([0]).dtype.name == "uint8"


def test_interrupted_build_resumes_to_the_same_cache(world, tmp_path):
    ds = dataset(world)
    spec = ImageCacheSpec(32, "crop")
    once = ImageCache.build(ds, tmp_path / "once", spec)
    part = ImageCache.build(ds, tmp_path / "resumed", spec, stop_after=3, commit_every=2)
    assert not part.complete and len(part.index["samples"]) == 3
    with open(part.data_path, "ab") as fh:  # a torn write after the last commit is dropped on resume
        fh.write(b"\x07" * 100)
    resumed = ImageCache.build(ds, tmp_path / "resumed", spec)
    assert resumed.complete and resumed.verify() == []
    assert resumed.index["samples"] == once.index["samples"]
    assert once.data_path.read_bytes() == resumed.data_path.read_bytes()


class _Slow:
    """A dataset whose samples take 20 ms to read (so that two builds started together overlap), counting
    the reads."""

    def __init__(self, ds):
        self.ds, self.modalities, self.reads = ds, ds.modalities, 0

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.reads += 1
        time.sleep(0.02)
        return self.ds[i]


def test_two_builds_side_by_side_make_one_cache(world, tmp_path):
    """Runs of a grid trained side by side (--jobs) with one image_cache_dir: the second build waits for the
    first (the folder's lock) and reads no sample, so each image is prepared once and the cache equals a
    single build, byte for byte (without the lock both builds prepare every sample and write the one file
    together, one truncating what the other wrote but had not committed yet)."""
    ds, spec = dataset(world), ImageCacheSpec(32, "crop")
    once = ImageCache.build(ds, tmp_path / "once", spec)
    slow = _Slow(ds)
    build = lambda: ImageCache.build(slow, tmp_path / "shared", spec, commit_every=1)  # noqa: E731
    builders = [threading.Thread(target=build) for _ in range(2)]
    for b in builders:
        b.start()
    for b in builders:
        b.join()
    assert slow.reads == len(ds)  # one build's reads
    shared = ImageCache(tmp_path / "shared")
    assert shared.complete and shared.verify() == []
    assert shared.index["samples"] == once.index["samples"]
    assert shared.data_path.read_bytes() == once.data_path.read_bytes()


def test_integrity_errors(world, tmp_path):
    ds = dataset(world)
    cache = ImageCache.build(ds, tmp_path / "c", ImageCacheSpec(32, "stretch"))
    data = bytearray(cache.data_path.read_bytes())
    data[5] ^= 0xFF
    cache.data_path.write_bytes(bytes(data))
    problems = ImageCache(tmp_path / "c").verify()
    assert len(problems) == 1 and "row 0" in problems[0]
    cache.data_path.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match="truncated"):
        ImageCache(tmp_path / "c")
    with pytest.raises(CamimError, match="use another folder"):
        ImageCache.build(ds, tmp_path / "c", ImageCacheSpec(48, "stretch"))
    (tmp_path / "c" / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="index.json:1"):
        ImageCache(tmp_path / "c")


def test_stale_cache_and_missing_images(world, tmp_path):
    ds = dataset(world)
    cache = ImageCache.build(ds, tmp_path / "c", ImageCacheSpec(32, "stretch"))
    cache.index["samples"]["1"]["img_id"] = "other.jpg"
    with pytest.raises(DataError, match="stale"):
        CachedImageDataset(dataset(world, TEXT), cache)[1]
    with pytest.raises(CamimError, match="still decodes"):
        CachedImageDataset(ds, cache)
    img = sorted((world / "img_org" / "train").iterdir())[0]
    moved = img.with_suffix(".bak")
    img.rename(moved)
    try:
        fallback = dataset_with_fallback(world)
        c2 = ImageCache.build(fallback, tmp_path / "c2", ImageCacheSpec(32, "stretch"))
        assert c2.report["missing_image"] >= 1
        assert sum(c2.sample(p)["image"] is None for p in range(len(fallback))) == c2.report["missing_image"]
    finally:
        moved.rename(img)


def dataset_with_fallback(world):
    from camim.data import MNREDataset

    return MNREDataset(world, "train", modalities=ALL, on_missing="fallback")


def test_cache_images_command(world, tmp_path, capsys):
    import argparse

    from camim.speed.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "cache"
    args = parser.parse_args(["cache-images", str(world), "--output", str(out), "--splits", "train", "val"])
    assert args.func(args) == 0
    assert ImageCache(out / "train").complete and ImageCache(out / "val").complete
    args = parser.parse_args(
        ["cache-images", str(world), "--output", str(out), "--splits", "val", "--verify-only"]
    )
    assert args.func(args) == 0 and "intact" in capsys.readouterr().out
    data = out / "val" / "pixels.u8"
    data.write_bytes(bytes(b ^ 1 for b in data.read_bytes()))
    with pytest.raises(CamimError, match="corrupt rows"):
        args.func(args)


def test_the_device_lookup_gives_the_processors_crop_pixels_for_every_byte():
    """Off the CPU, crop rows are converted by table lookup: a GPU's division by the Python scalar 255 is a
    multiplication by 1/255, which differs from the processor's division for 126 of the 256 byte values."""
    every = torch.arange(256, dtype=torch.uint8)
    rows = torch.stack([every, every.roll(85), every.roll(170)], dim=-1).view(1, 16, 16, 3)  # each channel
    expected = to_pixels(rows, "crop")  # the CPU path: bit-identical to the processor (tests above)
    got = crop_lookup(rows)
    assert got.dtype == torch.float32 and got.shape == (1, 3, 16, 16) and got.is_contiguous()
    assert torch.equal(got, expected)
    x = rows.permute(0, 3, 1, 2).float()
    assert int((x * (1 / 255.0) != x / 255.0).sum()) == 3 * 126  # what the table avoids

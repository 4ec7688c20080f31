from __future__ import annotations

import struct
import zlib

import pytest
import torch
from PIL import Image

from camim.data import ImageLimits, MNREDataset, crop_box, load_image
from camim.errors import DataError


def _png_claiming(path, width, height):
    """A valid small PNG whose IHDR is patched to claim ``width`` x ``height`` (a decompression bomb header)."""
    Image.new("L", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then chunk length + type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_load_image_rgb(tmp_path):
    Image.new("L", (5, 3), 7).save(tmp_path / "g.png")
    im = load_image(tmp_path / "g.png")
    assert im.mode == "RGB" and im.size == (5, 3) and im.getpixel((0, 0)) == (7, 7, 7)


def test_missing_corrupt_truncated(tmp_path):
    with pytest.raises(DataError, match="image not found") as info:
        load_image(tmp_path / "none.jpg")
    assert info.value.path == str(tmp_path / "none.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="corrupt or unreadable"):
        load_image(tmp_path / "bad.jpg")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "t.png")
    (tmp_path / "t.png").write_bytes((tmp_path / "t.png").read_bytes()[:60])
    with pytest.raises(DataError, match="t.png"):
        load_image(tmp_path / "t.png")


def test_bomb_rejected_from_header_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    _png_claiming(p, 60_000, 60_000)  # over Pillow's own hard limit
    with pytest.raises(DataError, match="too large"):
        load_image(p)
    _png_claiming(p, 9_000, 8_000)  # under Pillow's warning threshold, over ours: caught by our header check
    with pytest.raises(DataError, match="too large: 9000x8000"):
        load_image(p)
    Image.new("RGB", (20, 20)).save(tmp_path / "s.png")
    with pytest.raises(DataError, match="too large"):
        load_image(tmp_path / "s.png", ImageLimits(max_pixels=100))
    with pytest.raises(DataError, match="too large"):
        load_image(tmp_path / "s.png", ImageLimits(max_side=10))


def test_crop_box_clips_and_rejects_degenerate():
    im = Image.new("RGB", (10, 10))
    assert crop_box(im, (2.0, 3.0, 6.0, 9.0)).size == (4, 6)
    assert crop_box(im, (-5.0, -5.0, 50.0, 4.0)).size == (10, 4)
    assert crop_box(im, (1.5, 1.0, 2.4, 8.0)) is None
    assert crop_box(im, (11.0, 0.0, 20.0, 5.0)) is None


def test_dataset_images_objects_generated(tiny_mnre):
    mods = ("image", "objects", "generated_image", "generated_objects")
    ds = MNREDataset(tiny_mnre, "train", caption_source=None, modalities=mods, max_objects=3)
    ex = ds[2]
    assert ex.caption is None and ex.image.size == (40, 30) and ex.generated_image.size == (32, 32)
    assert [o.size for o in ex.objects] == [(8, 8)] * 3  # sample 2 lists 4 crops, max 3 kept
    # boxes: (0,0,20,10) ok, (5,5,5.5,30) degenerate -> skipped and counted, (2,2,12,22) ok
    assert [o.size for o in ex.generated_objects] == [(20, 10), (10, 20)]
    assert ex.generated_objects[0].getpixel((1, 1)) == ex.generated_image.getpixel((1, 1))
    assert ds.report["skipped_crop"] == 1
    assert len(ds[0].objects) == 2 and ds.report["skipped_crop"] == 2  # counted per load
    assert (
        len(MNREDataset(tiny_mnre, "train", caption_source=None, modalities=mods, max_objects=1)[2].objects)
        == 1
    )


def test_missing_and_corrupt_images_raise_or_fall_back(tiny_mnre):
    (tiny_mnre / "img_org" / "val" / "c.jpg").unlink()
    (tiny_mnre / "img_org" / "val" / "d.jpg").write_bytes(b"garbage")
    (tiny_mnre / "img_vg" / "val" / "crops" / "1_crop_0.png").unlink()
    ds = MNREDataset(tiny_mnre, "val", modalities=("image", "objects"))
    with pytest.raises(DataError, match="img_org/val/c.jpg: image not found"):
        ds[0]
    with pytest.raises(DataError, match=r"d.jpg: not a readable image \(corrupt"):
        ds[1]
    ds = MNREDataset(tiny_mnre, "val", modalities=("image", "objects"), on_missing="fallback")
    a, b = ds[0], ds[1]
    assert a.image is None and b.image is None and len(a.objects) == 2 and len(b.objects) == 2
    assert (
        ds.report["missing_image"] == 1 and ds.report["corrupt_image"] == 1 and ds.report["skipped_crop"] == 1
    )


def test_missing_generated_image_gives_no_generated_objects(tiny_mnre):
    (tiny_mnre / "diffusion_pic" / "test" / "e.jpg").unlink()
    ds = MNREDataset(tiny_mnre, "test", modalities=("generated_objects",), on_missing="fallback")
    ex = ds[0]
    assert ex.generated_objects == [] and ex.generated_image is None
    assert ds.report["missing_generated_image"] == 1


def test_missing_object_dictionaries_raise_or_count(tiny_mnre):
    (tiny_mnre / "txt" / "mre_val_dict.pth").unlink()
    torch.save({0: [torch.tensor([0.0, 0.0, 9.0, 9.0])]}, tiny_mnre / "txt" / "mre_dif_val_dict.pth")
    mods = ("objects", "generated_objects")
    with pytest.raises(DataError, match="mre_val_dict.pth"):
        MNREDataset(tiny_mnre, "val", modalities=mods)
    ds = MNREDataset(tiny_mnre, "val", modalities=mods, on_missing="fallback")
    a, b = ds[0], ds[1]
    assert a.objects == [] and b.objects == [] and len(a.generated_objects) == 1 and b.generated_objects == []
    assert ds.report["missing_objects"] == 3  # two crop entries, one box entry
    ds = MNREDataset(tiny_mnre, "val", modalities=("generated_objects",))
    with pytest.raises(DataError, match=r"sample 1 \(.*ours_val.txt:2\) has no box entry"):
        ds[1]

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from camim.captioning.images import ImageItem
from camim.captioning.testing import FakeChatServer


def draw_images(folder: Path, n: int, size: tuple[int, int] = (24, 16)) -> list[ImageItem]:
    """``n`` distinct small images (alternating JPEG and PNG), so each has its own server caption."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        ext = ".jpg" if i % 2 == 0 else ".png"
        path = folder / f"img_{i:03d}{ext}"
        im = Image.new("RGB", size, (i * 37 % 256, i * 91 % 256, i * 13 % 256))
        im.putpixel((i % size[0], 0), (255 - i % 256, 0, 0))
        im.save(path)
        items.append(ImageItem(path.name, path))
    return items


@pytest.fixture
def images(tmp_path: Path) -> list[ImageItem]:
    return draw_images(tmp_path / "images", 12)


@pytest.fixture
def server():
    with FakeChatServer() as srv:
        yield srv

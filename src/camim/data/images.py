"""Images of the data layer: :func:`find_image` resolves an ``img_id`` to its file (the name as given, then
with the usual image extensions: earlier MNRE releases store bare integer ids such as ``553009``);
:func:`load_image` is the shared safe opener (:func:`camim.io.open_image`: size checked from the header before
any pixel is decoded; missing, truncated, undecodable or too large files raise ``DataError`` naming the file),
and :func:`crop_box` cuts an object region out of an image."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from camim.io import IMAGE_SUFFIXES, ImageLimits, open_image


def image_candidates(img_id: str) -> list[str]:
    """The file names tried for ``img_id``: the name as given, then (when it has no image extension) the
    name with each of :data:`camim.io.IMAGE_SUFFIXES`, lower case then upper case."""
    names = [img_id]
    if Path(img_id).suffix.lower() not in IMAGE_SUFFIXES:
        names += [img_id + e for e in IMAGE_SUFFIXES] + [img_id + e.upper() for e in IMAGE_SUFFIXES]
    return names


def find_image(folder: str | Path, img_id: str, present: set[str] | None = None) -> Path | None:
    """The image file of ``img_id`` in ``folder`` (first existing of :func:`image_candidates`), or ``None``.
    ``present`` (the names in ``folder``, e.g. from one ``os.listdir``) avoids a file-system call per name."""
    folder = Path(folder)
    for name in image_candidates(img_id):
        if (name in present) if present is not None else (folder / name).is_file():
            return folder / name
    return None


def resolution(img_id: str, path: Path | None) -> str:
    """How ``img_id`` was resolved to ``path``: ``"as given"``, the extension added (``"+.jpg"``), or
    ``"unresolved"``."""
    if path is None:
        return "unresolved"
    return "as given" if path.name == img_id else "+" + path.name[len(img_id) :]


def load_image(path: str | Path, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Open ``path`` as an RGB image; ``DataError`` when missing, corrupt, or larger than ``limits``."""
    return open_image(Path(path), limits)


def crop_box(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image | None:
    """Cut ``box`` = (x1, y1, x2, y2) out of ``image``, clipped to the image; ``None`` when under 1 px."""
    x1, y1, x2, y2 = box
    x1, y1 = max(0.0, x1), max(0.0, y1)
    x2, y2 = min(float(image.width), x2), min(float(image.height), y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return image.crop((math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)))

"""Safe image loading: the size is checked from the header before any pixel is decoded, so decompression
bombs and absurd sizes are rejected cheaply; missing, truncated or undecodable files raise ``DataError``
naming the file. :func:`find_image` resolves an ``img_id`` to its file (the name as given, then with the
usual image extensions: earlier MNRE releases store bare integer ids such as ``553009``)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from camim.errors import DataError

# Extensions tried, in this order, after the name as given (lower case, then upper case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def image_candidates(img_id: str) -> list[str]:
    """The file names tried for ``img_id``: the name as given, then (when it has no image extension) the
    name with each of :data:`IMAGE_EXTENSIONS`, lower case then upper case."""
    names = [img_id]
    if Path(img_id).suffix.lower() not in IMAGE_EXTENSIONS:
        names += [img_id + e for e in IMAGE_EXTENSIONS] + [img_id + e.upper() for e in IMAGE_EXTENSIONS]
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


@dataclass(frozen=True)
class ImageLimits:
    """Largest image accepted: ``max_pixels`` (width x height) and ``max_side`` (either side), in pixels."""

    max_pixels: int = 64_000_000
    max_side: int = 20_000


def load_image(path: str | Path, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Open ``path`` as an RGB image; ``DataError`` when missing, corrupt, or larger than ``limits``."""
    path = Path(path)
    if not path.is_file():
        raise DataError("image not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise DataError(f"image has an empty size {w}x{h}", path)
                if w * h > limits.max_pixels or max(w, h) > limits.max_side:
                    raise DataError(
                        f"image too large: {w}x{h} (limit {limits.max_pixels} pixels, {limits.max_side} per side)",
                        path,
                    )
                im.load()
                return im.convert("RGB")
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image too large (decompression bomb guard): {exc}", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image: {exc}", path) from None


def crop_box(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image | None:
    """Cut ``box`` = (x1, y1, x2, y2) out of ``image``, clipped to the image; ``None`` when under 1 px."""
    x1, y1, x2, y2 = box
    x1, y1 = max(0.0, x1), max(0.0, y1)
    x2, y2 = min(float(image.width), x2), min(float(image.height), y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return image.crop((math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)))

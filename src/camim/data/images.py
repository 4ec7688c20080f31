"""Images of the data layer: :func:`load_image` is the shared safe opener (:func:`camim.io.open_image`: size
checked from the header before any pixel is decoded; missing, truncated, undecodable or too large files raise
``DataError`` naming the file), and :func:`crop_box` cuts an object region out of an image."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from camim.io import ImageLimits, open_image


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

"""Opening user images safely: size limits, decompression bombs and corrupt files give a clear error."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from camim.errors import CamimError

DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


class ImageError(CamimError):
    """An image that cannot be used: unreadable, corrupt, or over a size limit (``too_large`` is then True)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def open_image(
    source: Image.Image | bytes | str | Path,
    name: str = "image",
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Decode ``source`` (a PIL image, encoded bytes, or a file path) into a fully loaded RGB image.

    Raises :class:`ImageError` naming ``name`` (or the path) when the image is missing, corrupt, larger than
    ``max_bytes`` encoded, or has more than ``max_pixels`` pixels.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = str(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ImageError(f"{name}: cannot read the image ({exc.strerror or exc})") from None
        if size > max_bytes:
            raise ImageError(f"{name}: image is {size} bytes, over the limit of {max_bytes}", too_large=True)
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        raise ImageError(f"{name}: expected an image, bytes or a path, got {type(source).__name__}")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: image is {len(data)} bytes, over the limit of {max_bytes}", too_large=True)
    if not data:
        raise ImageError(f"{name}: the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"{name}: image is {w}x{h} pixels, over the limit of {max_pixels}", too_large=True
                )
            img.load()
            return img.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: image is too large to decode safely ({exc})", too_large=True) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}: not a readable image (corrupt, or a format Pillow does not know)"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: not a readable image (corrupt or unsupported format: {exc})") from None

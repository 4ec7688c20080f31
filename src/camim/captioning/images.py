"""The images to caption: those of an MNRE split (``img_org/{split}/<img_id>``) or of a folder.

Missing and unreadable images are not errors: a backend reports them as ``missing``/``corrupt`` results,
which the run counts and lists, and a later run retries them (nothing is written to the cache for them).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from camim.errors import CamimError, DataError, ImageError
from camim.io import IMAGE_SUFFIXES, checked_image, iter_lines, open_image

if TYPE_CHECKING:  # the data layer imports torch: only the split readers below load it
    from camim.data.layout import DataLayout

# Formats every OpenAI-compatible server accepts as-is; others are re-encoded as PNG.
_SENDABLE = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


@dataclass(frozen=True)
class ImageItem:
    """One image to caption: its id (the key in the cache, e.g. ``x.jpg``) and where it lives."""

    img_id: str
    path: Path


class ImageProblem(Exception):
    """An image that cannot be captioned: ``kind`` is ``missing`` or ``corrupt``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def split_image_ids(data_dir: str | Path, split: str, layout: DataLayout | None = None) -> list[str]:
    """The distinct ``img_id`` of a split's samples, in order of first appearance.

    Reads the split's sample file as the data layer does (``txt/ours_{split}.txt`` Python-literal lines or
    ``{split}.jsonl``); a malformed line raises ``DataError`` naming file and line.
    """
    from camim.data.layout import DataLayout
    from camim.data.samples import _Problem, is_json_lines, normalise_img_id, parse_record

    layout = layout or DataLayout()
    path = layout.samples_path(data_dir, split)
    json_lines = is_json_lines(path)
    seen: dict[str, None] = {}
    for lineno, line in iter_lines(path):
        try:
            obj = parse_record(line, json_lines)
        except _Problem as exc:
            raise DataError(str(exc), path, lineno) from None
        if not isinstance(obj, dict):
            raise DataError("sample has no string 'img_id'", path, lineno)
        try:  # file names, bare names and the integer ids of earlier MNRE releases
            seen.setdefault(normalise_img_id(obj.get("img_id")), None)
        except _Problem as exc:
            raise DataError(f"sample has no usable 'img_id': {exc}", path, lineno) from None
    return list(seen)


def split_items(data_dir: str | Path, split: str, layout: DataLayout | None = None) -> list[ImageItem]:
    """The images of a split, one item per distinct ``img_id`` (the files need not exist); a bare or integer
    id names the file found with the usual extensions (``camim.data.images.find_image``)."""
    from camim.data.images import find_image
    from camim.data.layout import DataLayout

    layout = layout or DataLayout()
    image_dir = layout.path(data_dir, layout.image_dir, split)
    ids = split_image_ids(data_dir, split, layout)
    return [ImageItem(i, find_image(image_dir, i) or image_dir / i) for i in ids]


def folder_items(folder: str | Path) -> list[ImageItem]:
    """Every image file directly in ``folder`` (by suffix), sorted by name; the id is the file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CamimError(f"{folder}: not a folder of images")
    return [
        ImageItem(p.name, p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]


def load_image(item: ImageItem) -> Image.Image:
    """The image as RGB (the safe opener :func:`camim.io.open_image`); ``ImageProblem`` when the file is
    missing, not a readable image, or over the size limits (counted as ``corrupt``)."""
    try:
        return open_image(item.path)
    except ImageError as exc:
        raise ImageProblem("corrupt" if item.path.is_file() else "missing", str(exc)) from None


def image_data_url(item: ImageItem, max_side: int | None = None) -> str:
    """The image as a ``data:`` URL for a chat-completions request.

    The file's own bytes are sent when it is a JPEG/PNG/WEBP/GIF no larger than ``max_side``; otherwise it
    is decoded, downscaled to ``max_side`` (aspect kept) if needed, and re-encoded (JPEG, or PNG with alpha).
    The size is checked from the header before decoding, as :func:`load_image` does.
    """
    if not item.path.is_file():
        raise ImageProblem("missing", f"{item.path}: no such image")
    raw = item.path.read_bytes()
    try:
        with checked_image(raw, name=str(item.path)) as im:
            im.load()  # decode fully: catches truncated files
            fmt = im.format
            if fmt in _SENDABLE and (max_side is None or max(im.size) <= max_side):
                return f"data:{_SENDABLE[fmt]};base64,{base64.b64encode(raw).decode('ascii')}"
            if max_side is not None and max(im.size) > max_side:
                im.thumbnail((max_side, max_side))
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            out = io.BytesIO()
            if has_alpha:
                im.convert("RGBA").save(out, format="PNG")
                mime = "image/png"
            else:
                im.convert("RGB").save(out, format="JPEG", quality=95)
                mime = "image/jpeg"
    except ImageError as exc:
        raise ImageProblem("corrupt", str(exc)) from None
    return f"data:{mime};base64,{base64.b64encode(out.getvalue()).decode('ascii')}"

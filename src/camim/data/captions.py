"""Image captions: the released ``.txt`` literal lines and ``.json`` dicts, and the captioner's JSONL.

Formats (all keyed by image):
- ``.txt``: one ``{'img_id': 'x.jpg', 'text': '...'}`` Python literal per line;
- ``.json``: one object ``{"x": "..."}`` keyed by the image name without extension;
- ``.jsonl``: one ``{"img_id": "x.jpg", "text": "...", "model": ..., ...}`` object per line, as written by
  ``camim.captioning``; optionally filtered by ``model``.
The last entry for an image wins (as in the released loader; ``camim caption import`` applies the same
rule); repeated entries whose text differs are counted in ``Captions.conflicts`` and reported as warnings
by ``camim data validate`` and ``camim caption import``. Whitespace is normalised (runs collapsed,
ends stripped), which removes the leading newline of every LLaVA-NeXT caption.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from camim.data.samples import OnError, _Problem, parse_record
from camim.errors import DataError
from camim.io import DEFAULT_ENCODING, iter_lines, read_json


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def image_stem(img_id: str) -> str:
    """``'x.jpg' -> 'x'`` (the key form of the ``.json`` caption files)."""
    return os.path.splitext(img_id)[0]


@dataclass
class Captions:
    """Captions of one file, looked up by ``img_id`` (exact key first, then the name without extension).

    ``conflicts`` lists the img_ids given more than once with different texts (the last one is kept)."""

    texts: dict[str, str]
    path: Path | None = None
    problems: list[DataError] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_stem = {image_stem(k): v for k, v in self.texts.items()}

    def get(self, img_id: str) -> str | None:
        text = self.texts.get(img_id)
        return text if text is not None else self._by_stem.get(image_stem(img_id))

    def __contains__(self, img_id: str) -> bool:
        return self.get(img_id) is not None

    def __len__(self) -> int:
        return len(self.texts)


def deranged_lookup(
    lookup: Callable[[str], str | None], img_ids: Iterable[str], seed: int
) -> Callable[[str], str | None]:
    """A control for what captions carry (``data.caption_shuffle_seed``): each image of ``img_ids`` that has a
    caption gets the caption of another such image. The images are put in a seeded random order and each
    takes the caption of the next one in that cycle, so no image keeps its own (a single image does).
    Images without a caption stay without one."""
    have = sorted({i for i in img_ids if lookup(i) is not None})
    order = random.Random(seed).sample(have, len(have))
    moved = {a: lookup(b) for a, b in zip(order, order[1:] + order[:1])}
    return lambda img_id: moved[img_id] if img_id in moved else lookup(img_id)


def _entry(record: object, json_lines: bool) -> tuple[str, str, object]:
    if not isinstance(record, dict):
        raise _Problem(f"not a dict (got {type(record).__name__})")
    img_id, text = record.get("img_id"), record.get("text")
    if not isinstance(img_id, str) or not img_id.strip():
        raise _Problem("img_id missing or empty")
    if not isinstance(text, str):
        raise _Problem(f"caption 'text' missing or not a string for {img_id!r}")
    return img_id, text, record.get("model")


def keep_last(entries, conflicts: list | None = None, value=None) -> dict:
    """``{key: item}`` of ``(key, item)`` pairs, the last pair of a key winning (the released readers'
    rule) and keeping the file position of its last occurrence; keys repeated with a different item (or
    ``value(item)``) are appended to ``conflicts`` (once each)."""
    out: dict = {}
    conflicting: dict = {}
    for key, item in entries:
        old = out.pop(key, None)
        if old is not None and (old != item if value is None else value(old) != value(item)):
            conflicting[key] = None
        out[key] = item
    if conflicts is not None:
        conflicts.extend(conflicting)
    return out


def read_captions(
    path: str | Path,
    model: str | None = None,
    on_error: OnError = "raise",
    encoding: str = DEFAULT_ENCODING,
) -> Captions:
    """Read a caption file (format from its extension). Bad lines raise ``DataError`` (file, line) or, with
    ``on_error="skip"``, are skipped and listed in ``Captions.problems``. The last caption of an img_id
    wins; img_ids repeated with different (whitespace-normalised) texts are listed in ``Captions.conflicts``."""
    path = Path(path)
    problems: list[DataError] = []
    if path.suffix.lower() == ".json":
        texts: dict[str, str] = {}
        data = read_json(path, encoding)
        if not isinstance(data, dict):
            raise DataError("caption .json must be one object {image_name: text}", path)
        for key, text in data.items():
            if not isinstance(text, str):
                err = DataError(f"caption of {key!r} is not a string", path)
                if on_error == "raise":
                    raise err
                problems.append(err)
                continue
            texts[key] = normalise_whitespace(text)
        return Captions(texts, path, problems)

    json_lines = path.suffix.lower() == ".jsonl"
    entries: list[tuple[str, str]] = []
    for lineno, line in iter_lines(path, encoding):
        try:
            img_id, text, line_model = _entry(parse_record(line, json_lines), json_lines)
        except _Problem as exc:
            err = DataError(str(exc), path, lineno)
            if json_lines and not line.endswith("\n"):
                # A captioner killed mid-write can leave an unfinished last line (the cache never does,
                # but a copy or another tool might): ignore it and report it, as the cache reader does.
                problems.append(DataError(f"unfinished last line ignored ({exc})", path, lineno))
                continue
            if on_error == "raise":
                raise err from None
            problems.append(err)
            continue
        if model is not None and line_model != model:
            continue
        entries.append((img_id, normalise_whitespace(text)))
    conflicts: list[str] = []
    return Captions(keep_last(entries, conflicts), path, problems, conflicts)

"""Image captions: the released ``.txt`` literal lines and ``.json`` dicts, and the captioner's JSONL.

Formats (all keyed by image):
- ``.txt``: one ``{'img_id': 'x.jpg', 'text': '...'}`` Python literal per line;
- ``.json``: one object ``{"x": "..."}`` keyed by the image name without extension;
- ``.jsonl``: one ``{"img_id": "x.jpg", "text": "...", "model": ..., ...}`` object per line, as written by
  ``camim.captioning``; optionally filtered by ``model``.
The last entry for an image wins (as in the released loader). Whitespace is normalised (runs collapsed,
ends stripped), which removes the leading newline of every LLaVA-NeXT caption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from camim.data.samples import OnError, _Problem, parse_record
from camim.errors import DataError
from camim.io import iter_lines, read_json


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def image_stem(img_id: str) -> str:
    """``'x.jpg' -> 'x'`` (the key form of the ``.json`` caption files)."""
    return os.path.splitext(img_id)[0]


@dataclass
class Captions:
    """Captions of one file, looked up by ``img_id`` (exact key first, then the name without extension)."""

    texts: dict[str, str]
    path: Path | None = None
    problems: list[DataError] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_stem = {image_stem(k): v for k, v in self.texts.items()}

    def get(self, img_id: str) -> str | None:
        text = self.texts.get(img_id)
        return text if text is not None else self._by_stem.get(image_stem(img_id))

    def __contains__(self, img_id: str) -> bool:
        return self.get(img_id) is not None

    def __len__(self) -> int:
        return len(self.texts)


def _entry(record: object, json_lines: bool) -> tuple[str, str, object]:
    if not isinstance(record, dict):
        raise _Problem(f"not a dict (got {type(record).__name__})")
    img_id, text = record.get("img_id"), record.get("text")
    if not isinstance(img_id, str) or not img_id.strip():
        raise _Problem("img_id missing or empty")
    if not isinstance(text, str):
        raise _Problem(f"caption 'text' missing or not a string for {img_id!r}")
    return img_id, text, record.get("model")


def read_captions(
    path: str | Path,
    model: str | None = None,
    on_error: OnError = "raise",
) -> Captions:
    """Read a caption file (format from its extension). Bad lines raise ``DataError`` (file, line) or, with
    ``on_error="skip"``, are skipped and listed in ``Captions.problems``."""
    path = Path(path)
    problems: list[DataError] = []
    texts: dict[str, str] = {}
    if path.suffix.lower() == ".json":
        data = read_json(path)
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
    for lineno, line in iter_lines(path):
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
        texts.pop(img_id, None)  # last line wins, and keeps file order of the winners
        texts[img_id] = normalise_whitespace(text)
    return Captions(texts, path, problems)

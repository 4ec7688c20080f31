"""Auxiliary per-sample files: TMR correlation scores, object dictionaries and grounding phrases.

- Scores: ``img_id<TAB>float`` lines; one file per (strong|weak) x (original|generated image). The released
  loader keys a dict by img_id, so the **last line for an img_id wins**; we reproduce that.
- Object dictionaries: ``{sample_index: [crop file names]}`` (``mre_{split}_dict.pth``) and
  ``{sample_index: [tensor (x1, y1, x2, y2)]}`` (``mre_dif_{split}_dict.pth``, boxes on the generated
  image), read with ``torch.load(weights_only=True)``; the JSON equivalent is ``{"0": [...], ...}``.
- Phrases: ``{"sample_index": "words"}`` JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from camim.data.captions import image_stem
from camim.data.samples import OnError
from camim.data.types import Scores
from camim.errors import DataError, first_line
from camim.io import DEFAULT_ENCODING, iter_lines, read_json

# The documented fallback for a sample without scores: both paths weighted equally.
UNIFORM_SCORE = 0.5

Box = tuple[float, float, float, float]


def _fail(err: DataError, on_error: OnError, problems: list[DataError]) -> None:
    if on_error == "raise":
        raise err
    problems.append(err)


def iter_score_lines(
    path: str | Path,
    on_error: OnError = "raise",
    problems: list[DataError] | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> Iterator[tuple[int, str, float]]:
    """(line number, img_id, score) of each valid ``img_id<TAB>float`` line; scores must lie in [0, 1]."""
    problems = [] if problems is None else problems
    for lineno, line in iter_lines(path, encoding):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or parts[0] != parts[0].strip():
            parts = line.split()
        if len(parts) != 2:
            _fail(DataError("expected 'img_id<TAB>score'", path, lineno), on_error, problems)
            continue
        try:
            value = float(parts[1])
        except ValueError:
            _fail(DataError(f"score {parts[1].strip()!r} is not a number", path, lineno), on_error, problems)
            continue
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            _fail(DataError(f"score {value} outside [0, 1]", path, lineno), on_error, problems)
            continue
        yield lineno, parts[0], value


def read_score_file(
    path: str | Path,
    on_error: OnError = "raise",
    problems: list[DataError] | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> dict[str, float]:
    """``{img_id: score}`` from ``img_id<TAB>float`` lines, the last line for an img_id winning."""
    return {img_id: value for _, img_id, value in iter_score_lines(path, on_error, problems, encoding)}


@dataclass
class ScoreTable:
    """The four score dicts of a split, looked up per img_id into :class:`Scores`."""

    weak_ori: dict[str, float]
    strong_ori: dict[str, float]
    weak_dif: dict[str, float]
    strong_dif: dict[str, float]
    problems: list[DataError] = field(default_factory=list)

    def __post_init__(self) -> None:
        dicts = (self.weak_ori, self.strong_ori, self.weak_dif, self.strong_dif)
        self._by_stem = [{image_stem(k): v for k, v in d.items()} for d in dicts]

    def lookup(self, img_id: str) -> tuple[Scores, bool]:
        """``(scores, complete)``; absent values are the uniform fallback 0.5 and ``complete`` is False.
        An ``img_id`` is looked up as given, then without extension (bare and integer ids of earlier
        releases), as captions are."""
        dicts = (self.weak_ori, self.strong_ori, self.weak_dif, self.strong_dif)
        stem = image_stem(img_id)
        values = [d[img_id] if img_id in d else s.get(stem) for d, s in zip(dicts, self._by_stem)]
        complete = all(v is not None for v in values)
        return Scores(*(UNIFORM_SCORE if v is None else v for v in values)), complete


def read_score_table(
    paths: dict[str, Path],
    on_missing_file: str = "raise",
    on_error: OnError = "raise",
    encoding: str = DEFAULT_ENCODING,
) -> ScoreTable:
    """Read the four files named by ``paths`` (keys weak_ori, strong_ori, weak_dif, strong_dif).

    A missing file raises ``DataError`` unless ``on_missing_file="fallback"`` (its dict is then empty).
    """
    problems: list[DataError] = []
    tables = {}
    for key in ("weak_ori", "strong_ori", "weak_dif", "strong_dif"):
        path = paths[key]
        if not path.is_file() and on_missing_file == "fallback":
            tables[key] = {}
            continue
        tables[key] = read_score_file(path, on_error, problems, encoding)
    return ScoreTable(**tables, problems=problems)


def _load_torch_dict(path: Path) -> dict:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notes on files we then reject
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError ...
        raise DataError(f"cannot load as a weights-only torch file: {first_line(exc)}", path) from None
    return data


def _load_dict(path: str | Path, encoding: str = DEFAULT_ENCODING) -> tuple[dict, Path]:
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json(path, encoding)
    else:
        data = _load_torch_dict(path)
    if not isinstance(data, dict):
        raise DataError(f"expected a dict keyed by sample index, got {type(data).__name__}", path)
    return data, path


def _index(key: object, path: Path) -> int:
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return key
    if isinstance(key, str) and key.isdigit():
        return int(key)
    raise DataError(f"key {key!r} is not a sample index", path)


def read_object_dict(path: str | Path, encoding: str = DEFAULT_ENCODING) -> dict[int, list[str]]:
    """``{sample_index: [crop file names]}`` from ``mre_{split}_dict.pth`` or its JSON equivalent."""
    data, path = _load_dict(path, encoding)
    out: dict[int, list[str]] = {}
    for key, names in data.items():
        idx = _index(key, path)
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise DataError(f"sample {idx}: expected a list of crop file names", path)
        out[idx] = list(names)
    return out


def _box(value: object) -> Box | None:
    if hasattr(value, "tolist"):  # torch tensor / numpy array
        value = value.tolist()
    if isinstance(value, (list, tuple)) and len(value) == 4:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            return tuple(float(v) for v in value)  # type: ignore[return-value]
    return None


def read_box_dict(path: str | Path, encoding: str = DEFAULT_ENCODING) -> dict[int, list[Box]]:
    """``{sample_index: [(x1, y1, x2, y2)]}`` boxes on the generated image, from ``mre_dif_{split}_dict.pth``
    or its JSON equivalent."""
    data, path = _load_dict(path, encoding)
    out: dict[int, list[Box]] = {}
    for key, boxes in data.items():
        idx = _index(key, path)
        if not isinstance(boxes, (list, tuple)):
            raise DataError(f"sample {idx}: expected a list of boxes", path)
        parsed = [_box(b) for b in boxes]
        if any(b is None for b in parsed):
            raise DataError(f"sample {idx}: every box must be 4 finite numbers (x1, y1, x2, y2)", path)
        out[idx] = parsed  # type: ignore[assignment]
    return out


def read_phrases(path: str | Path, encoding: str = DEFAULT_ENCODING) -> dict[int, str]:
    """``{sample_index: phrase}`` from ``phrase_text_{split}.json``."""
    data, path = _load_dict(path, encoding)
    out: dict[int, str] = {}
    for key, text in data.items():
        idx = _index(key, path)
        if not isinstance(text, str):
            raise DataError(f"sample {idx}: phrase is not a string", path)
        out[idx] = text
    return out

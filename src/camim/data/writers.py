"""Writers of the canonical JSONL/JSON forms, so released files can be converted and user data written in
a form every reader accepts. Files are written to a temporary name and renamed, so an interrupted write
never leaves a half-written file in place."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from camim.data.types import MNREExample
from camim.io import atomic_write_text


def sample_record(example: MNREExample) -> dict:
    """The canonical JSON record of a sample: ``{"token", "h": {"name", "pos"}, "t", "img_id", "relation"}``."""
    rec = {
        "token": list(example.tokens),
        "h": {"name": example.head.name, "pos": [example.head.start, example.head.end]},
        "t": {"name": example.tail.name, "pos": [example.tail.start, example.tail.end]},
        "img_id": example.img_id,
    }
    if example.relation is not None:
        rec["relation"] = example.relation
    return rec


def write_samples_jsonl(examples: Iterable[MNREExample], path: str | Path) -> Path:
    """Write samples as canonical JSONL (one object per line, in the given order)."""
    return atomic_write_text(
        path, (json.dumps(sample_record(ex), ensure_ascii=False) + "\n" for ex in examples)
    )


def write_captions_jsonl(
    captions: Mapping[str, str], path: str | Path, model: str | None = None, **fields: object
) -> Path:
    """Write ``{img_id: text}`` as caption JSONL ``{"img_id", "text"[, "model"], **fields}``."""

    def lines():
        for img_id, text in captions.items():
            rec = {"img_id": img_id, "text": text}
            if model is not None:
                rec["model"] = model
            rec.update(fields)
            yield json.dumps(rec, ensure_ascii=False) + "\n"

    return atomic_write_text(path, lines())


def write_index_dict_json(data: Mapping[int, object], path: str | Path) -> Path:
    """Write an object/box/phrase dictionary keyed by sample index as JSON ``{"0": ..., ...}``; tensors
    become lists (the JSON equivalent of ``mre_{split}_dict.pth`` / ``mre_dif_{split}_dict.pth``)."""

    def plain(v: object) -> object:
        if hasattr(v, "tolist"):
            return v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    obj = {str(int(k)): plain(v) for k, v in sorted(data.items())}
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False) + "\n")

"""Reading and validating sample files: MNRE's Python-dict-literal lines and the canonical JSONL form.

Each line is ``{'token': [...], 'h': {'name', 'pos': [start, end)}, 't': {...}, 'img_id': 'x.jpg',
'relation': str}``. A sample's ``index`` is its position among the non-blank lines of its file (bad lines
included), which is the key of the object and phrase dictionaries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from camim.data._literal import describe_literal_error, parse_literal
from camim.data.labels import LabelSet
from camim.data.types import Entity, MNREExample
from camim.errors import DataError
from camim.io import iter_lines

OnError = Literal["raise", "skip"]


class _Problem(Exception):
    """A validation failure of one record (turned into a DataError with file and line)."""


def is_json_lines(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".jsonl", ".json")


def parse_record(line: str, json_lines: bool):
    """Parse one line as JSON (``json_lines``) or as a Python literal; raises ``_Problem``."""
    try:
        return json.loads(line) if json_lines else parse_literal(line)
    except json.JSONDecodeError as exc:
        raise _Problem(f"syntax error: {exc.msg} (column {exc.colno})") from None
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
        raise _Problem(describe_literal_error(exc)) from None


def _entity(record: dict, key: str, role: str, n_tokens: int) -> Entity:
    ent = record.get(key)
    if not isinstance(ent, dict):
        raise _Problem(f"{role} entity {key!r} missing or not a dict with 'name' and 'pos'")
    pos = ent.get("pos")
    if (
        not isinstance(pos, (list, tuple))
        or len(pos) != 2
        or type(pos[0]) is not int
        or type(pos[1]) is not int
    ):
        raise _Problem(f"{role} span 'pos' must be [start, end] integers, got {pos!r}")
    start, end = pos
    if start >= end:
        raise _Problem(f"{role} span [{start}, {end}]: start >= end")
    if start < 0 or end > n_tokens:
        raise _Problem(f"{role} span [{start}, {end}] out of range for {n_tokens} tokens")
    name = ent.get("name", "")
    if not isinstance(name, str):
        raise _Problem(f"{role} name must be a string, got {type(name).__name__}")
    return Entity(name=name, start=start, end=end)


def validate_record(
    record: object, labels: LabelSet | None, require_relation: bool = True
) -> tuple[list[str], Entity, Entity, str, str | None, int | None]:
    """Check one parsed sample; returns (tokens, head, tail, img_id, relation, label) or raises ``_Problem``."""
    if not isinstance(record, dict):
        raise _Problem(f"not a dict (got {type(record).__name__})")
    tokens = record.get("token")
    if not isinstance(tokens, list) or (tokens and set(map(type, tokens)) != {str}):
        raise _Problem("'token' missing or not a list of strings")
    if not tokens:
        raise _Problem("tokens empty")
    head = _entity(record, "h", "head", len(tokens))
    tail = _entity(record, "t", "tail", len(tokens))
    img_id = record.get("img_id")
    if not isinstance(img_id, str) or not img_id.strip():
        raise _Problem("img_id missing or empty")
    relation = record.get("relation")
    label = None
    if relation is None:
        if require_relation:
            raise _Problem("relation missing")
    elif not isinstance(relation, str):
        raise _Problem(f"relation must be a string, got {type(relation).__name__}")
    elif labels is not None:
        if relation not in labels:
            raise _Problem(f"unknown relation {relation!r} (not among the {len(labels)} labels)")
        label = labels.to_id(relation)
    return tokens, head, tail, img_id, relation, label


def read_samples(
    path: str | Path,
    labels: LabelSet | None = None,
    on_error: OnError = "raise",
    problems: list[DataError] | None = None,
    require_relation: bool = True,
) -> list[MNREExample]:
    """Read and validate a sample file (``.txt`` literal lines or ``.jsonl``).

    A bad line raises ``DataError`` naming file, line and problem; with ``on_error="skip"`` it is skipped
    and its error appended to ``problems``. ``labels=None`` accepts any relation (``label`` stays ``None``).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    json_lines = is_json_lines(path)
    out: list[MNREExample] = []
    index = -1
    for lineno, line in iter_lines(path):
        index += 1
        try:
            record = parse_record(line, json_lines)
            tokens, head, tail, img_id, relation, label = validate_record(record, labels, require_relation)
        except _Problem as exc:
            err = DataError(str(exc), path, lineno)
            if on_error == "raise":
                raise err from None
            if problems is not None:
                problems.append(err)
            continue
        out.append(
            MNREExample(
                index=index,
                tokens=tokens,
                head=head,
                tail=tail,
                img_id=img_id,
                relation=relation,
                label=label,
                source=f"{path}:{lineno}",
            )
        )
    return out


def read_relations(path: str | Path) -> list[str]:
    """The relation strings of a sample file (unvalidated lines are ignored); used to infer a label set."""
    json_lines = is_json_lines(path)
    rels = []
    for _, line in iter_lines(path):
        try:
            rec = parse_record(line, json_lines)
        except _Problem:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("relation"), str):
            rels.append(rec["relation"])
    return rels

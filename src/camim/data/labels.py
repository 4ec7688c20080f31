"""The relation label set: names in id order and the negative ("no relation") label."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from camim.errors import DataError
from camim.io import atomic_write_text, read_json

# Names the negative label may have, in the order OpenNRE/HVPNeT's metric looks them up
# (the first one present in rel2id is the negative label).
NEGATIVE_NAMES: tuple[str, ...] = ("NA", "na", "no_relation", "Other", "Others", "none", "None")


def find_negative(names: Iterable[str]) -> str | None:
    """The first of :data:`NEGATIVE_NAMES` present in ``names``, or ``None``."""
    present = set(names)
    return next((n for n in NEGATIVE_NAMES if n in present), None)


@dataclass(frozen=True)
class LabelSet:
    """Relation names in id order. ``negative_name`` is excluded from micro-P/R/F1 (``None``: no negative)."""

    names: tuple[str, ...]
    negative_name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        if len(set(self.names)) != len(self.names):
            raise DataError(f"duplicate relation names in label set: {list(self.names)}")
        if not self.names:
            raise DataError("empty label set")
        if self.negative_name is not None and self.negative_name not in self.names:
            raise DataError(
                f"negative label {self.negative_name!r} is not one of the {len(self.names)} labels"
            )
        object.__setattr__(self, "_ids", {n: i for i, n in enumerate(self.names)})

    @classmethod
    def from_names(cls, names: Iterable[str], negative: str | None = None) -> LabelSet:
        """Labels in the given order; the negative label is ``negative`` or found by name."""
        names = tuple(names)
        return cls(names, negative if negative is not None else find_negative(names))

    @classmethod
    def from_rel2id(cls, path: str | Path, negative: str | None = None) -> LabelSet:
        """Read a rel2id JSON object ``{name: id}`` with ids 0..n-1."""
        path = Path(path)
        mapping = read_json(path)
        return cls.from_mapping(mapping, negative=negative, path=path)

    @classmethod
    def from_mapping(
        cls, mapping: dict, negative: str | None = None, path: str | Path | None = None
    ) -> LabelSet:
        """Build from a ``{name: id}`` dict with ids 0..n-1 (as in rel2id files and model configs)."""
        if not isinstance(mapping, dict) or not mapping:
            raise DataError("rel2id must be a non-empty JSON object {relation: id}", path)
        bad = [
            k
            for k, v in mapping.items()
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int)
        ]
        if bad:
            raise DataError(f"rel2id entries must be string: integer, bad entries: {bad[:5]}", path)
        if sorted(mapping.values()) != list(range(len(mapping))):
            raise DataError(f"rel2id ids must be 0..{len(mapping) - 1}, each once", path)
        names = sorted(mapping, key=mapping.__getitem__)
        return cls.from_names(names, negative)

    @classmethod
    def infer(cls, relations: Iterable[str], negative: str | None = None) -> LabelSet:
        """Infer labels from the relations seen in the data: the negative label gets id 0, the rest sorted."""
        seen = sorted(set(relations))
        neg = negative if negative is not None else find_negative(seen)
        if neg is not None and neg not in seen:
            raise DataError(f"negative label {neg!r} does not occur in the data")
        names = ([neg] if neg is not None else []) + [n for n in seen if n != neg]
        return cls(tuple(names), neg)

    def to_id(self, name: str) -> int:
        """The id of relation ``name`` (``KeyError`` when unknown)."""
        return self._ids[name]  # type: ignore[attr-defined]

    @property
    def negative_id(self) -> int | None:
        return None if self.negative_name is None else self.to_id(self.negative_name)

    def to_rel2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def save(self, path: str | Path) -> None:
        """Write a rel2id JSON file."""
        atomic_write_text(path, json.dumps(self.to_rel2id(), ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._ids  # type: ignore[attr-defined]

"""One-line descriptions of MNRE's relation labels (package data ``camim/resources/mnre_relations.yaml``).

``relation_descriptions(names)`` describes a label set when every label in it is one of MNRE's (the full
set, or a subset such as tiny test data); any other dataset's labels get no descriptions (``None``), so that
a prompt or card lists them bare rather than half described.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import yaml

DESCRIPTIONS_FILE = Path(__file__).resolve().parent.parent / "resources" / "mnre_relations.yaml"


@lru_cache(maxsize=1)
def mnre_descriptions() -> dict[str, str]:
    """MNRE label -> its one-line description (23 entries, ``"None"`` included)."""
    with open(DESCRIPTIONS_FILE, encoding="utf-8") as f:
        return dict(yaml.safe_load(f))


def relation_descriptions(names: Iterable[str]) -> dict[str, str] | None:
    """``{label: description}`` for ``names`` when all are MNRE labels, else ``None`` (list them bare)."""
    table = mnre_descriptions()
    names = list(names)
    if not names or any(n not in table for n in names):
        return None
    return {n: table[n] for n in names}

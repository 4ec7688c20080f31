"""The settings in which a grid's runs differ from the paper's, so no table made here passes for a
reproduction of the paper's numbers.

Each grid row names the paper preset it stands in for (``paper_preset`` in ``grids.yaml``; a paper preset is
one with ``paper_row`` set). The row's resolved run config is compared with that preset's config (with the
row's swept key, e.g. ``data.caption_source``, set alike on both sides: the paper varied it too); the keys that
differ, with both values, head the grid's ``<grid>.md``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from camim.training.config import RUN_NEUTRAL_KEYS, RunConfig, list_presets, load_config
from camim.typed import differing_keys, flatten, to_plain

#: not settings of the computation: names, where the data and run folders are, the seeds a grid draws
NOT_COMPARED = ("name", "description", "paper_row", "data.data_dir", "optim.seed", *RUN_NEUTRAL_KEYS)

HEADING = "## Settings that differ from the paper"


@dataclass
class RowDifferences:
    """One grid row against its paper preset: ``{dotted key: (paper value, our value)}``; ``paper_preset``
    None when the row names no paper preset."""

    label: str
    paper_preset: str | None
    differences: dict[str, tuple[Any, Any]]


@functools.cache
def paper_presets() -> dict[str, str]:
    """The presets that reproduce a row of the paper: name -> its ``paper_row``."""
    rows = {name: load_config(name).paper_row for name in list_presets()}
    return {name: row for name, row in rows.items() if row}


def differing_settings(ours: RunConfig, paper: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The dotted keys whose values differ (paper's, ours), :data:`NOT_COMPARED` left out."""
    a, b = flatten(to_plain(paper)), flatten(to_plain(ours))
    return {k: (a.get(k), b.get(k)) for k in differing_keys(paper, ours, ignore=NOT_COMPARED)}


def row_differences(label: str, ours: RunConfig, paper_preset: str, swept: list[str]) -> RowDifferences:
    """``label``'s run config against ``paper_preset`` (with the row's ``swept`` overrides); a preset without
    ``paper_row`` is no paper counterpart."""
    if paper_preset not in paper_presets():
        return RowDifferences(label, None, {})
    return RowDifferences(label, paper_preset, differing_settings(ours, load_config(paper_preset, swept)))


def _value(v: Any) -> str:
    return f"`{json.dumps(v)}`"


def differences_section(rows: list[RowDifferences]) -> list[str]:
    """The markdown section: which paper preset each row stands in for, then one table line per
    (setting, paper value, our value) with the rows that have it ("all rows" when every compared row does)."""
    compared = [r for r in rows if r.paper_preset]
    lines = [HEADING, ""]
    if not compared:
        return [
            *lines,
            "No row of this grid names a paper preset: nothing here is comparable with the paper.",
            "",
        ]
    by_preset: dict[str, list[str]] = {}
    for r in compared:
        by_preset.setdefault(r.paper_preset, []).append(r.label)
    pairs = "; ".join(
        f"{', '.join(labels)} -> `{p}` ({paper_presets()[p]})" for p, labels in by_preset.items()
    )
    lines += [f"Rows and the paper presets they are compared with: {pairs}."]
    alone = [r.label for r in rows if not r.paper_preset]
    if alone:
        lines += [f"No paper preset (not compared): {', '.join(alone)}."]
    lines.append("")
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in compared:
        for key, (paper, ours) in r.differences.items():
            groups.setdefault((key, _value(paper), _value(ours)), []).append(r.label)
    if not groups:
        return [
            *lines,
            "None: every compared row runs its paper preset's settings (seeds and folders aside).",
            "",
        ]
    lines += [
        "**Not a reproduction of the paper's numbers**: the runs differ from the paper's settings in these keys "
        "(seeds, data and run folders not compared).",
        "",
        "| setting | paper | ours | rows |",
        "|---|---|---|---|",
    ]
    everyone = [r.label for r in compared]
    for (key, paper, ours), labels in groups.items():
        who = "all rows" if labels == everyone and len(everyone) > 1 else ", ".join(labels)
        lines.append(f"| `{key}` | {paper} | {ours} | {who} |")
    return [*lines, ""]


def warning_line(rows: list[RowDifferences], md_path) -> str | None:
    """The one-line warning printed after a grid whose runs differ from the paper's settings, else None."""
    keys = sorted({k for r in rows for k in r.differences})
    if not keys:
        return None
    shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
    return (
        f"warning: not a reproduction of the paper: these runs differ from its settings in {len(keys)} key(s) "
        f"({shown}); see '{HEADING[3:]}' in {md_path}"
    )

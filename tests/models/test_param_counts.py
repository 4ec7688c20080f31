"""The parameter-count table of docs/models.md, computed: every extractor built on the meta device with
bert-base-uncased / ResNet-50 shapes and 23 labels. On a mismatch the failure shows the table to paste."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from camim.models import build_model
from camim.models.checkpoint import MNRE_LABELS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"
ROWS = {
    "BERT (text only)": {"name": "bert", "cam": "none", "mi": False},
    "TMR": {"name": "tmr", "cam": "none", "mi": False},
    "TMR + MI": {"name": "tmr", "cam": "none", "mi": True},
    "TMR + CAM": {"name": "tmr", "cam": "both", "mi": False},
    "TMR + CAM + MI (CAMIM)": {"name": "tmr", "cam": "both", "mi": True},
    "CAMIM, text-caption mode": {"name": "tmr", "cam": "both", "mi": True, "visual_mode": "text-caption"},
    "HVPNeT": {"name": "hvpnet", "cam": "none", "mi": False},
    "HVPNeT + MI": {"name": "hvpnet", "cam": "none", "mi": True},
    "HVPNeT + CAM": {"name": "hvpnet", "cam": "both", "mi": False},
    "HVPNeT + CAM + MI": {"name": "hvpnet", "cam": "both", "mi": True},
}


def computed_table(base_dirs: dict) -> list[str]:
    lines = []
    for label, cfg in ROWS.items():
        with torch.device("meta"):
            model = build_model({**base_dirs, **cfg}, MNRE_LABELS)
        params = sum(p.numel() for p in model.parameters())
        state = model.state_dict()
        with_buffers = sum(t.numel() for t in state.values())
        lines.append(f"| {label} | {params:,} | {with_buffers:,} | {len(state)} |")
    return lines


def test_docs_parameter_table_is_computed(base_dirs):
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Parameter counts", 1)[1].split("\n## ", 1)[0]
    documented = [
        line for line in section.splitlines() if re.match(r"^\| [A-Z]", line) and "parameters" not in line
    ]
    expected = computed_table(base_dirs)
    assert documented == expected, "docs/models.md parameter table should read:\n" + "\n".join(expected)

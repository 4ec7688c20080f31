"""``camim demo`` end to end on a small synthetic world: the caption-aware model must beat the text-only model
by a margin the world guarantees (text-only accuracy is capped at the world's ceiling; text + caption decide)."""

from __future__ import annotations

import json
import math

import pytest

from camim.cli import main
from camim.demo import DEMO_OVERRIDES, DemoConfig, run_demo
from camim.synthetic import WorldConfig

WORLD = WorldConfig(seed=5, train=600, val=100, test=200)
MARGIN = 20.0  # accuracy points; the world allows up to 100 - ceiling (about 39)


@pytest.mark.slow
def test_caption_aware_model_beats_text_only_by_the_worlds_margin(tmp_path):
    cfg = DemoConfig(output=tmp_path / "demo", world=WORLD, overrides=list(DEMO_OVERRIDES), quiet=True)
    r = run_demo(cfg)
    ceiling = r.text_only_accuracy_ceiling  # percent, recorded by the generator for this test split
    sigma = 100 * math.sqrt(0.25 / WORLD.test)  # binomial noise bound of one split's accuracy
    assert r.text_only["accuracy"] <= ceiling + 3 * sigma  # the text alone cannot do better
    assert r.text_only["accuracy"] >= ceiling - 15  # ... but it learns the text-decided relations
    assert r.multimodal["accuracy"] >= ceiling + MARGIN
    assert r.gain["accuracy"] >= MARGIN and r.gain["f1"] >= MARGIN / 2

    out = tmp_path / "demo"
    saved = json.loads((out / "demo.json").read_text())
    assert saved["multimodal"] == r.multimodal and saved["gain"] == r.gain
    assert "| **gain** |" in (out / "report.md").read_text()
    for run in r.run_dirs.values():
        assert (run / "metrics.json").is_file() and (run / "model" / "config.json").is_file()
        assert (run / "predictions.jsonl").is_file() and (run / "report.md").is_file()
    ex = r.example
    assert ex["caption"] and ex["gold"] in {"/per/per/couple", "/per/per/peer", "/per/org/member_of"}
    assert set(ex["predictions"]) == {"text-only", "multimodal"}

    again = run_demo(cfg)  # a second run reuses the world and both finished runs
    assert again.world_reused and again.multimodal == r.multimodal and again.text_only == r.text_only


def test_demo_cli_rejects_bad_options_and_foreign_folders(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "a"), "--threads", "0"]) == 1
    assert "--threads" in capsys.readouterr().err
    assert main(["demo", "--output", str(tmp_path / "b"), "--train-size", "0"]) == 1
    assert "split size" in capsys.readouterr().err
    foreign = tmp_path / "c" / "data"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("x")
    assert main(["demo", "--output", str(tmp_path / "c")]) == 1
    assert "not a synthetic world" in capsys.readouterr().err
    assert (foreign / "mine.txt").read_text() == "x"

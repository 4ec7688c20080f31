"""Zero-shot on the first 50 real MNRE test samples (no images are shipped: every post goes text-only)
against the scripted loopback server; the scores are recomputed here from the predictions by hand."""

from __future__ import annotations

import json

import pytest

from camim.captioning.testing import FakeChatServer
from camim.cli import main

from .conftest import examples, query_key

pytestmark = pytest.mark.integration


def scripted_answer(i: int, gold: str) -> str | int | None:
    """A fixed mix of what MLLMs answer: right, wrong, fenced, free text, malformed, empty, refusing, failing."""
    wrong = "/per/per/peer" if gold != "/per/per/peer" else "/loc/loc/contain"
    return [
        json.dumps({"relation": gold}),
        json.dumps({"relation": wrong}),
        f"```json\n{json.dumps({'relation': gold})}\n```",
        f"The relation is {gold}." if gold != "None" else "None",
        "",
        "I'm sorry, but I can't help with identifying people.",
        None,
        '{"relation": "/per/',
        json.dumps({"relation": gold}),
        json.dumps({"relation": gold}),
    ][i % 10]


def test_fifty_mnre_test_samples(mnre_dir, tmp_path, capsys):
    exs = examples(mnre_dir)[:50]
    script = {query_key(ex): scripted_answer(i, ex.relation) for i, ex in enumerate(exs)}
    out = tmp_path / "zs"
    with FakeChatServer(script=script) as server:
        args = [
            "zero-shot",
            "--data-dir",
            str(mnre_dir),
            "--split",
            "test",
            "--limit",
            "50",
            "--output",
            str(out),
        ]
        assert main([*args, "--base-url", server.base_url, "--model", "scripted", "--no-progress"]) == 0
        assert len(server.requests) == len({query_key(ex) for ex in exs})
    printed = capsys.readouterr().out
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 50 and not any(p["image"] for p in predictions)
    metrics = json.loads((out / "metrics.json").read_text())
    answers = metrics["answers"]
    assert (answers["empty"], answers["unparseable"]) == (10, 10)  # kinds 4, 6 and 5, 7 of each ten
    assert answers["scored_as_negative_without_label"] == 20 and answers["text_only"] == 50
    # the MNRE scores by hand from the predictions file
    pairs = [(p["gold"], p["predicted"]) for p in predictions]
    correct = sum(g == p for g, p in pairs)
    tp = sum(g == p != "None" for g, p in pairs)
    pred_pos, gold_pos = sum(p != "None" for _, p in pairs), sum(g != "None" for g, _ in pairs)
    precision, recall = tp / pred_pos, tp / gold_pos
    test = metrics["test"]
    assert test["accuracy"] == pytest.approx(100 * correct / 50)
    assert test["precision"] == pytest.approx(100 * precision)
    assert test["recall"] == pytest.approx(100 * recall)
    assert test["f1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    print(printed)  # shown with -s: the run's summary for the record

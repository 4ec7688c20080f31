"""``camim zero-shot`` against the loopback chat server answering from a scripted table: what each kind of
answer is scored as, the run folder, images, in-context examples, and resuming without repeated calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from tests.captioning.conftest import wait_for_lines

from camim.captioning.cache import read_cache
from camim.captioning.testing import FakeChatServer
from camim.cli import main

from .conftest import examples, gold_script, query_key, write_images

# What the server answers for test sample i (gold relation: None, couple, member_of, place_of_residence
# cycling), and how each answer reads.
ANSWERS = [
    ('{"relation": "None"}', "json"),
    ('{"relation": "/per/per/couple"}', "json"),
    ('```json\n{"relation": "/per/org/member_of"}\n```', "json"),
    ("The relation is /per/loc/place_of_residence.", "text"),
    ("", "empty"),  # scored as None: right by chance
    ("I'm sorry, but I can't help with that.", "unparseable"),  # a refusal
    (None, "empty"),  # no content: the content filter
    ('{"relation": "/per/per/cou', "unparseable"),  # malformed
    ('{"relation": "/per/per/couple"}', "json"),  # wrong (gold None)
    ("{'relation': 'couple'}", "json"),
    ('{"label": "per/org/member_of"}', "json"),
    ('{"relation": "/per/org/member_of"}', "json"),  # wrong (gold place_of_residence)
    ("None", "text"),
    ('{"relation": "/per/per/couple", "confidence": 0.9} (they are engaged)', "json"),
    ("Either /per/org/member_of or /per/per/couple.", "unparseable"),  # two labels
    (500, "failed"),  # the server fails every time
]
PREDICTED = ["None", "/per/per/couple", "/per/org/member_of", "/per/loc/place_of_residence", "None", "None"]
PREDICTED += [
    "None",
    "None",
    "/per/per/couple",
    "/per/per/couple",
    "/per/org/member_of",
    "/per/org/member_of",
]
PREDICTED += ["None", "/per/per/couple", "None", "None"]


def _args(data: Path, out: Path, server: FakeChatServer, *extra: str) -> list[str]:
    return [
        "zero-shot",
        "--data-dir",
        str(data),
        "--output",
        str(out),
        "--base-url",
        server.base_url,
        "--model",
        "tiny-vlm",
        "--backoff",
        "0.01",
        "--max-retries",
        "1",
        "--no-progress",
        *extra,
    ]


def test_scripted_answers_are_parsed_counted_and_scored(tiny_data, tmp_path, capsys):
    exs = examples(tiny_data)
    script = {query_key(ex): answer for ex, (answer, _) in zip(exs, ANSWERS)}
    out = tmp_path / "run"
    with FakeChatServer(script=script) as server:
        assert main(_args(tiny_data, out, server)) == 1  # one request failed: incomplete
        printed = capsys.readouterr().out
        assert "16 samples, 16 requests: 15 sent now, 0 from the cache, 1 failed, 1 retries" in printed
        assert (
            "answers: 8 as JSON, 2 as text, 2 empty, 3 unparseable (6 scored as the negative label)"
            in printed
        )
        # images: 0-11 sent with theirs, except 3 (unreadable: sent text-only); 12-15 have none
        answered = [r for r in server.requests if r.status == 200]
        assert sorted(len(r.image_hashes) for r in answered) == [0] * 4 + [1] * 11
        assert len(server.requests) == 17  # 15 answers + the failing one twice (one retry)

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["predicted"] for p in predictions] == PREDICTED
    assert [p["parsed"] for p in predictions] == [how for _, how in ANSWERS]
    assert (
        [p["answer"] for p in predictions]
        == [a if isinstance(a, str) else None for a, _ in ANSWERS[:6]]
        + [
            "",  # the content filter's answer is stored as an empty text
            *[a for a, _ in ANSWERS[7:15]],
            None,  # failed: no answer
        ]
    )
    assert [p["image"] for p in predictions] == [i < 12 and i != 3 for i in range(16)]
    assert [p["gold"] for p in predictions] == [ex.relation for ex in exs]
    assert all(p["probabilities"] is None for p in predictions)

    metrics = json.loads((out / "metrics.json").read_text())
    # by hand: 9 of 16 right; 8 non-None predictions of which 6 right; 12 non-None gold
    test = metrics["test"]
    assert test["accuracy"] == pytest.approx(100 * 9 / 16)
    assert test["precision"] == pytest.approx(100 * 6 / 8)
    assert test["recall"] == pytest.approx(100 * 6 / 12)
    assert test["f1"] == pytest.approx(60.0)
    assert sum(map(sum, test["confusion"])) == 16
    assert metrics["answers"] == {
        "json": 8,
        "text": 2,
        "empty": 2,
        "unparseable": 3,
        "failed": 1,
        "scored_as_negative_without_label": 6,
        "text_only": 5,
        "unreadable_images": 1,
        "truncated": 0,
    }
    assert metrics["complete"] is False
    report = (out / "report.md").read_text()
    assert "**Incomplete:** 1 requests failed" in report and "| 8 | 2 | 2 | 3 | 1 | 6 |" in report
    assert "## The prompt of the first sample" in report and "[image test_0.jpg]" in report
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["mode"] == "zero-shot" and config["model"]["model"] == "tiny-vlm"
    assert config["data"]["split"] == "test" and config["prompt"]["label_descriptions"] is True
    # the cache holds one line per answered request; the failed one is not cached
    cached = read_cache(out / "answers.jsonl")
    assert len(cached.records) == 15 and not cached.bad_lines

    # rerun: only the failed sample is asked again; then the server answers it and the run completes
    script[query_key(exs[15])] = '{"relation": "/per/loc/place_of_residence"}'
    with FakeChatServer(script=script) as server:
        assert main(_args(tiny_data, out, server)) == 0
        assert len(server.requests) == 1 and query_key(exs[15]) in server.requests[0].prompt
    assert "1 sent now, 15 from the cache, 0 failed" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == pytest.approx(100 * 10 / 16)
    assert metrics["test"]["f1"] == pytest.approx(100 * 2 * (7 / 9) * (7 / 12) / (7 / 9 + 7 / 12))
    assert metrics["complete"] is True and metrics["requests"] == {
        "distinct": 16,
        "sent": 1,
        "cached": 15,
        "retries": 0,
    }
    # and once more: nothing is sent at all
    with FakeChatServer(script=script) as server:
        assert main(_args(tiny_data, out, server)) == 0
        assert server.requests == []


def test_in_context_examples_with_images_and_captions(tiny_data, tmp_path, capsys):
    exs = examples(tiny_data)
    out = tmp_path / "run"
    with FakeChatServer(script=gold_script(exs)) as server:
        args = _args(tiny_data, out, server, "--shots", "6", "--max-images", "3", "--with-caption", "minicpm")
        assert main([*args, "--limit", "4"]) == 0
        requests = server.requests
    assert len(requests) == 4 and all(r.turns == 13 for r in requests)  # 6 x (user, assistant) + the query
    # the query's image (test 3 is unreadable: text-only) and the first two examples' images
    assert sorted(len(r.image_hashes) for r in requests) == [2, 3, 3, 3]
    shot_images = {tuple(r.image_hashes[:2]) for r in requests}
    assert len(shot_images) == 1  # the same examples for every sample
    config = yaml.safe_load((out / "config.yaml").read_text())
    shot_relations = [s["relation"] for s in config["prompt"]["shot_samples"]]
    assert sorted(Counter(shot_relations).values()) == [1, 1, 2, 2]  # 6 over 4 relations: balanced
    assert all(
        r.prompt.rstrip().split("\n")[-1].startswith("Image description: two people in") for r in requests
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == 100.0 and metrics["num_samples"] == 4
    # another seed draws other examples: other requests, none answered from the cache
    with FakeChatServer(script=gold_script(exs)) as server:
        args = _args(tiny_data, out, server, "--shots", "6", "--max-images", "3", "--with-caption", "minicpm")
        assert main([*args, "--limit", "4", "--seed", "7"]) == 0
        assert len(server.requests) == 4
    assert "4 sent now, 0 from the cache" in capsys.readouterr().out


def test_bad_settings_are_one_line_errors(tiny_data, tmp_path, capsys):
    with FakeChatServer(script={}) as server:
        assert main(_args(tiny_data, tmp_path / "r", server, "--shots", "-1")) == 1
        assert capsys.readouterr().err == "camim: error: --shots must be >= 0, got -1\n"
        assert main(_args(tiny_data, tmp_path / "r", server, "--with-caption", "nosuch")) == 1
        err = capsys.readouterr().err
        assert err.startswith("camim: error: ") and "no caption file for source 'nosuch'" in err
        assert err.count("\n") == 1


def test_a_killed_run_loses_nothing_and_the_rerun_repeats_no_call(tmp_path, capsys):
    from tests.training.conftest import write_tiny_mnre

    data = write_tiny_mnre(tmp_path / "data", n_train=8, n_eval=40)
    write_images(data, "test", [f"test_{i}.jpg" for i in range(40)])
    exs = examples(data)
    out = tmp_path / "run"
    # 0.3 s a request at concurrency 2: 40 samples take ~6 s, so the kill lands mid-run
    with FakeChatServer(script=gold_script(exs), delay=0.3) as server:
        args = _args(data, out, server, "--concurrency", "2")
        env = {**os.environ, "OPENAI_API_KEY": ""}
        proc = subprocess.Popen(
            [sys.executable, "-m", "camim", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        wait_for_lines(out / "answers.jsonl", 6, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        after_kill = read_cache(out / "answers.jsonl")
        assert not after_kill.partial_tail and not after_kill.bad_lines
        done = {r.img_id for r in after_kill.records}
        assert 6 <= len(done) < 40
        time.sleep(0.4)  # let the server finish what the dead client left in flight
        rerun_start = time.perf_counter()
        assert main(args) == 0
        resent = [r for r in server.requests if r.started >= rerun_start]
    assert f"{40 - len(done)} sent now, {len(done)} from the cache" in capsys.readouterr().out
    assert len(resent) == 40 - len(done)  # only the samples without an answer were asked
    asked_again = {(r.prompt, tuple(r.image_hashes)) for r in resent}
    assert len(asked_again) == len(resent)
    final = read_cache(out / "answers.jsonl")
    keys = [r.img_id for r in final.records]
    assert len(keys) == len(set(keys)) == 40  # nothing lost, nothing twice
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == 100.0 and metrics["answers"]["json"] == 40


def test_a_refusing_server_stops_the_run_in_its_words_and_a_rerun_resumes(tiny_data, tmp_path, capsys):
    """The issue's `transformers serve` case: every prompt too long for the model's context, refused with HTTP
    400 and FastAPI's ``detail`` (each prompt's own token count). After 5 answers the server starts refusing:
    the run stops after --max-refusals (3), says why in one line with the server's words, keeps the 5 answers;
    the rerun against a healthy server asks only for the other 11 and completes."""
    exs = examples(tiny_data)
    out = tmp_path / "run"
    detail = "The prompt has {tokens} tokens, but the model takes at most 100, prompt and answer "
    detail += "(`--max-model-len`)."
    refusing = {"refusal": (400, {"detail": detail}), "refuse_after": 5}
    with FakeChatServer(script=gold_script(exs), **refusing) as server:
        assert main(_args(tiny_data, out, server, "--concurrency", "1")) == 1
        statuses = [r.status for r in server.requests]
        tokens = [len(r.prompt.split()) for r in server.requests[5:]]
    assert statuses == [200] * 5 + [400] * 3  # 3 refusals, then no more requests: not the whole split
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("camim: error: ") and "Traceback" not in err
    assert "refused 3 requests in a row with HTTP 400, model 'tiny-vlm': \"The prompt has " in err
    assert f"The prompt has {tokens[-1]} tokens, but the model takes at most 100, prompt and answer" in err
    assert "what was answered before is kept (5 answers in this run)" in err
    assert not (out / "metrics.json").exists()  # no scores of a run that was cut short
    kept = read_cache(out / "answers.jsonl")
    assert len(kept.records) == 5 and not kept.bad_lines and not kept.partial_tail
    with FakeChatServer(script=gold_script(exs)) as server:
        assert main(_args(tiny_data, out, server)) == 0
        assert len(server.requests) == 11  # only the samples without an answer
    assert "16 samples, 16 requests: 11 sent now, 5 from the cache, 0 failed" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] is True and metrics["test"]["accuracy"] == 100.0


def test_transient_errors_are_retried_and_the_run_completes(tiny_data, tmp_path, capsys):
    exs = examples(tiny_data)
    with FakeChatServer(script=gold_script(exs), faults=[429, 503]) as server:
        assert main(_args(tiny_data, tmp_path / "run", server, "--limit", "3", "--max-retries", "2")) == 0
        assert [r.status for r in server.requests].count(200) == 3 and len(server.requests) == 9
    assert "3 sent now, 0 from the cache, 0 failed, 6 retries" in capsys.readouterr().out

"""`camim experiment cases` on two tiny finished runs: a text-only run and an offline caption-aware run."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from PIL import Image
from tests.training.conftest import TINY, write_tiny_mnre

from camim.cli import main
from camim.errors import CamimError
from camim.experiments.cases import run_cases
from camim.training.api import evaluate_run, train_run

WITH_IMAGE = (0, 3, 5)  # test samples whose original image exists in the data folder


@pytest.fixture(scope="module")
def case_runs(tmp_path_factory):
    """(data folder, text-only offline-bert run, offline-tmr-cam-mi run), one epoch each."""
    root = tmp_path_factory.mktemp("cases")
    data = write_tiny_mnre(root / "data", seed=3)
    (data / "img_org" / "test").mkdir(parents=True)
    for i in WITH_IMAGE:
        Image.new("RGB", (64, 48), (40 * i, 120, 200)).save(data / "img_org" / "test" / f"test_{i}.jpg")
    runs = []
    for preset in ("offline-bert", "offline-tmr-cam-mi"):
        train_run(preset, data, root / preset, overrides=[*TINY, "optim.epochs=1"])
        runs.append(root / preset)
    return data, runs[0], runs[1]


def predictions(run) -> dict[int, dict]:
    return {r["id"]: r for r in map(json.loads, (run / "predictions.jsonl").read_text().splitlines())}


def test_cases_cli_writes_md_html_jsonl(case_runs, tmp_path, capsys):
    data, bert, camim = case_runs
    out = tmp_path / "cases"
    assert (
        main(
            ["experiment", "cases", "--runs", str(bert), str(camim), "--split", "test", "--output", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "offline-bert: bert; reads text" in printed
    assert "offline-tmr-cam-mi: tmr, cam=both, mi=True, text-caption mode (no images); reads text, caption (minicpm)" in printed  # fmt: skip

    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(16))
    pb, pc = predictions(bert), predictions(camim)
    for r in rows:  # every field against the runs' own predictions.jsonl and the data folder
        b, c = r["predictions"]["offline-bert"], r["predictions"]["offline-tmr-cam-mi"]
        assert (b["relation"], c["relation"]) == (pb[r["id"]]["predicted"], pc[r["id"]]["predicted"])
        assert b["probability"] == pb[r["id"]]["probabilities"][b["relation"]]
        assert r["gold"] == pb[r["id"]]["gold"] and b["correct"] == (b["relation"] == r["gold"])
        assert r["captions"]["offline-bert"] is None
        assert r["captions"]["offline-tmr-cam-mi"].startswith("two people in ")
        assert (r["image"] is not None) == (r["id"] in WITH_IMAGE)
        assert r["tokens"][r["head"]["start"]] == r["head"]["name"]
        flags = r["flags"]
        assert flags["disagree"] == (b["relation"] != c["relation"])
        assert flags["caption-right"] == (c["correct"] and not b["correct"])
        assert flags["caption-free-right"] == (b["correct"] and not c["correct"])
        assert flags["all-wrong"] == (not b["correct"] and not c["correct"])

    # flip counts per gold relation, printed and in cases.md
    expected = Counter()
    for r in rows:
        if r["gold"] == "/per/per/couple":
            expected.update(k for k, on in r["flags"].items() if on)
    n = sum(r["gold"] == "/per/per/couple" for r in rows)
    line = f"| /per/per/couple | {n} | {expected['disagree']} | {expected['caption-right']} | {expected['caption-free-right']} | {expected['all-wrong']} |"  # fmt: skip
    assert line in printed and line in (out / "cases.md").read_text()

    md = (out / "cases.md").read_text()
    first = rows[0]
    head = first["head"]["name"]
    assert f"**[{head}]**ₕ" in md and md.count("![](thumbs/") == len(WITH_IMAGE)
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == [f"{i}.jpg" for i in WITH_IMAGE]
    page = (out / "cases.html").read_text()
    assert page.count("src='data:image/jpeg;base64,") == len(WITH_IMAGE)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert f"<mark class='h'>{head}</mark>" in page


@pytest.mark.parametrize("which", ["disagree", "caption-right", "all-wrong"])
def test_cases_filters(case_runs, tmp_path, which):
    _, bert, camim = case_runs
    res = run_cases([bert, camim], tmp_path, "test", which=which)
    rows = [json.loads(line) for line in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == res["selected"] == res["counts"]["total"][which]
    assert all(r["flags"][which] for r in rows)
    assert f"{which} ({len(rows)} of 16 samples)" in (tmp_path / "cases.md").read_text()


def test_cases_on_val_run_the_models(case_runs, tmp_path):
    """No predictions.jsonl for val: each saved model is run over the split with its own data settings."""
    data, bert, camim = case_runs
    run_cases([bert, camim], tmp_path, "val", data_dir=data)
    rows = [json.loads(line) for line in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(r["image"] is None for r in rows)  # no val images
    for name, run in (("offline-bert", bert), ("offline-tmr-cam-mi", camim)):
        acc = 100 * sum(r["predictions"][name]["correct"] for r in rows) / len(rows)
        assert acc == pytest.approx(evaluate_run(run, data, split="val")["accuracy"])


def test_cases_refuse_runs_on_other_data(case_runs, tmp_path):
    _, bert, camim = case_runs
    other = tmp_path / "other"
    shutil.copytree(camim, other)
    rows = [json.loads(line) for line in (other / "predictions.jsonl").read_text().splitlines()]
    rows[2]["gold"] = "None" if rows[2]["gold"] != "None" else "/per/per/couple"
    (other / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CamimError, match=r"other: sample 2 has gold .* not the same data"):
        run_cases([bert, other], tmp_path / "out")
    (other / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
    with pytest.raises(CamimError, match="predictions for 10 samples"):
        run_cases([bert, other], tmp_path / "out")
    with pytest.raises(CamimError, match="not a finished run folder"):
        run_cases([bert, tmp_path], tmp_path / "out")
    with pytest.raises(CamimError, match="at least two runs"):
        run_cases([bert], tmp_path / "out")


def test_cases_cli_errors_are_one_line(case_runs, tmp_path, capsys):
    _, bert, _ = case_runs
    assert main(["experiment", "cases", "--runs", str(bert), "--output", str(tmp_path)]) == 1
    assert "at least two runs" in capsys.readouterr().err
    assert main(["experiment", "table1", "--output", str(tmp_path)]) == 1
    assert "--data-dir is required" in capsys.readouterr().err

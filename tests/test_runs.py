"""The run folder (camim.runs, contract 3): names, atomic writes, reading back, reuse and conflict checks."""

from __future__ import annotations

import json

import pytest

from camim.errors import CamimError
from camim.runs import (
    OUTPUTS,
    SCORE_KEYS,
    RunFolder,
    different_run_message,
    format_score,
    format_scores,
    prediction_row,
)


def _finished(path, config=None, resumable=True) -> RunFolder:
    folder = RunFolder(path)
    path.mkdir(parents=True, exist_ok=True)
    folder.write_config(config or {"name": "x", "optim": {"lr": 0.1}})
    folder.write_predictions([prediction_row(0, "a.jpg", "None", "None", {"None": 0.75, "/per/loc": 0.25})])
    folder.write_metrics({"test": {k: 50.0 for k in SCORE_KEYS}})
    folder.model_dir.mkdir()
    (folder.model_dir / "config.json").write_text("{}")
    if resumable:
        folder.checkpoints_dir.mkdir()
        folder.last_checkpoint.write_bytes(b"ckpt")
    return folder


def test_scores_are_formatted_alike_everywhere():
    assert format_score(41.2345) == "41.23" and format_score(7) == "7.00"
    assert format_score(None) == "-" and format_score(float("nan")) == "-"
    assert format_scores({"f1": 1.0, "accuracy": 2.5, "other": 3}) == "accuracy 2.50  f1 1.00"


def test_prediction_rows_have_one_schema():
    row = prediction_row(3, "x.jpg", "/per/loc", "None", {"None": 0.1234567, "/per/loc": 0.8765433})
    assert row == {
        "id": 3,
        "img_id": "x.jpg",
        "gold": "/per/loc",
        "predicted": "None",
        "probabilities": {"None": 0.123457, "/per/loc": 0.876543},
    }
    extra = prediction_row(4, None, None, "None", None, answer="no idea", parsed="unparseable")
    assert list(extra) == ["id", "img_id", "gold", "predicted", "probabilities", "answer", "parsed"]
    assert extra["probabilities"] is None


def test_a_run_folder_is_found_from_itself_or_its_model_folder(tmp_path):
    folder = _finished(tmp_path / "run")
    assert RunFolder.of(folder.path) == folder
    from_model = RunFolder.of(folder.model_dir)
    assert from_model.path == folder.path and from_model.model_dir == folder.model_dir
    loose = tmp_path / "elsewhere" / "my-model"  # a model folder by itself: its parent holds no run
    loose.mkdir(parents=True)
    (loose / "config.json").write_text("{}")
    assert RunFolder.of(loose).model_dir == loose and RunFolder.of(loose).read_config() is None


def test_written_files_read_back(tmp_path):
    folder = _finished(tmp_path / "run", {"name": "tmr", "data": {"data_dir": "/d", "caption_source": "ünï"}})
    assert folder.finished and folder.resumable and folder.has_model
    assert folder.read_config() == {"name": "tmr", "data": {"data_dir": "/d", "caption_source": "ünï"}}
    assert folder.read_metrics()["test"]["f1"] == 50.0
    assert folder.read_predictions()[0]["probabilities"] == {"None": 0.75, "/per/loc": 0.25}
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes leave no temporary files


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"id": 0, "probabilities": null}\n{"id": 1, "probab', ":2: invalid JSON"),
        ('{"id": "0", "probabilities": null}\n', ":1: a prediction row needs 'id' and 'probabilities'"),
        ("[1, 2]\n", ":1: a prediction row needs"),
    ],
)
def test_a_bad_prediction_line_is_named_by_file_and_line(tmp_path, line, problem):
    folder = RunFolder(tmp_path)
    folder.predictions_path.write_text(line)
    with pytest.raises(CamimError, match="predictions.jsonl" + problem.replace("(", r"\(")):
        folder.read_predictions()


def test_metrics_that_are_not_an_object_are_refused(tmp_path):
    folder = RunFolder(tmp_path)
    folder.metrics_path.write_text("[1]")
    with pytest.raises(CamimError, match=r"metrics.json: not a run's metrics \(expected a JSON object\)"):
        folder.read_metrics()


@pytest.mark.parametrize("content", ["", '{"test": {"f1"', "[1]"])
def test_an_empty_or_unreadable_metrics_json_counts_as_unfinished_with_a_warning(tmp_path, caplog, content):
    """Issue 36: a power loss can leave a first-time metrics.json empty; it marked the run finished, and
    reusing it crashed on invalid JSON. Now the run is trained again (resumed from its checkpoint)."""
    folder = _finished(tmp_path / "run")
    folder.metrics_path.write_text(content)
    with caplog.at_level("WARNING", logger="camim.runs"):
        assert not folder.finished and not folder.finished
        assert folder.reusable(lambda p: []) is False and folder.conflict(lambda p: []) is None  # resumed
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1, warned  # once per file
    assert warned[0].startswith(str(folder.metrics_path))
    assert warned[0].endswith("; the run counts as unfinished and is trained again")


def test_conflicts_name_what_would_mix_two_runs(tmp_path):
    same, other = (lambda p: []), (lambda p: ["model.mi", "optim.lr"])
    empty = RunFolder(tmp_path / "new")
    assert empty.conflict(other) is None  # nothing there yet
    folder = _finished(tmp_path / "run")
    assert folder.conflict(same) is None  # the same run: resumed
    assert (
        folder.conflict(other)
        == f"{folder.path}: holds a different run (its config.yaml differs in model.mi, optim.lr)"
    )
    folder.last_checkpoint.unlink()
    assert "finished run whose checkpoints/ are gone" in folder.conflict(same)
    folder.config_path.unlink()
    assert folder.conflict(same) == f"{folder.path}: holds a run without config.yaml"
    many = different_run_message(folder.path, [f"k{i}" for i in range(10)])
    assert many.endswith("k6, k7 and 2 more)")


def test_a_finished_run_is_reused_only_with_the_same_settings(tmp_path):
    folder = _finished(tmp_path / "run")
    assert folder.reusable(lambda p: []) is True
    with pytest.raises(CamimError, match=r"differs in optim.lr\); use a new --output folder, or --overwrite"):
        folder.reusable(lambda p: ["optim.lr"])
    assert folder.reusable(lambda p: ["optim.lr"], overwrite=True) is False  # trained again in its place
    assert RunFolder(tmp_path / "unfinished").reusable(lambda p: ["anything"]) is False


def test_clearing_removes_the_run_outputs_and_nothing_else(tmp_path):
    folder = _finished(tmp_path / "run")
    (folder.path / "offline_encoder").mkdir()
    (folder.path / "notes.txt").write_text("mine")
    for name in ("report.md", "curves.png"):
        (folder.path / name).write_text("x")
    folder.clear_outputs()
    assert sorted(p.name for p in folder.path.iterdir()) == ["notes.txt", "offline_encoder"]
    assert "config.yaml" in OUTPUTS and "offline_encoder" not in OUTPUTS


def test_config_yaml_holds_plain_yaml(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_config({"b": [1, 2], "a": {"x": None}})
    assert folder.config_path.read_text().splitlines()[0] == "b:"  # the given order, not sorted
    assert json.loads(json.dumps(folder.read_config())) == {"b": [1, 2], "a": {"x": None}}

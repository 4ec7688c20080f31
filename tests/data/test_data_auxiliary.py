from __future__ import annotations

import json
import pickle

import pytest
import torch

from camim.data import MNREDataset, Scores, read_box_dict, read_object_dict, read_phrases, read_score_file
from camim.data.writers import write_index_dict_json
from camim.errors import DataError


def test_scores_last_line_wins(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("a.jpg\t0.25\nb.jpg\t0.5\na.jpg\t0.75\n")
    assert read_score_file(p) == {"a.jpg": 0.75, "b.jpg": 0.5}


@pytest.mark.parametrize(
    "bad,problem",
    [
        ("a.jpg", "expected 'img_id<TAB>score'"),
        ("a.jpg\tabc", "'abc' is not a number"),
        ("a.jpg\t1.5", "outside"),
        ("a.jpg\tnan", "outside"),
    ],
)
def test_bad_score_lines(tmp_path, bad, problem):
    p = tmp_path / "s.txt"
    p.write_text("z.jpg\t0.1\n" + bad + "\n")
    with pytest.raises(DataError, match=problem) as info:
        read_score_file(p)
    assert info.value.line == 2
    problems: list[DataError] = []
    assert read_score_file(p, on_error="skip", problems=problems) == {"z.jpg": 0.1}
    assert len(problems) == 1


def test_dataset_scores_in_released_column_order(tiny_mnre):
    ds = MNREDataset(tiny_mnre, "val", modalities=("scores",))
    s = ds[1].scores
    assert isinstance(s, Scores)
    assert s.as_list() == pytest.approx([0.8, 0.2, 0.8, 0.2])  # [weak_ori, strong_ori, weak_dif, strong_dif]
    assert ds[0].caption is None and ds[0].phrase is None  # not requested


def test_missing_scores_raise_or_uniform_fallback(tiny_mnre):
    (tiny_mnre / "txt" / "dif_val_weight_weak.txt").write_text("c.jpg\t0.9\n")
    with pytest.raises(DataError, match="no score for image 'd.jpg'.*dif_val_weight_weak"):
        MNREDataset(tiny_mnre, "val", modalities=("scores",))
    ds = MNREDataset(tiny_mnre, "val", modalities=("scores",), on_missing="fallback")
    assert ds[1].scores.as_list() == pytest.approx([0.8, 0.2, 0.5, 0.2])
    assert ds.report["missing_scores"] == 1
    (tiny_mnre / "txt" / "val_weight_strong.txt").unlink()
    with pytest.raises(DataError, match="val_weight_strong.txt: file not found"):
        MNREDataset(tiny_mnre, "val", modalities=("scores",))
    ds = MNREDataset(tiny_mnre, "val", modalities=("scores",), on_missing="fallback")
    assert ds.report["missing_scores"] == 2 and ds[0].scores.strong_ori == 0.5


def test_object_and_box_dicts_pth_and_json(tmp_path):
    torch.save({0: ["0_crop.png"], 1: []}, tmp_path / "o.pth")
    torch.save({0: [torch.tensor([1.0, 2.0, 3.0, 4.0])]}, tmp_path / "b.pth")
    objects, boxes = read_object_dict(tmp_path / "o.pth"), read_box_dict(tmp_path / "b.pth")
    assert objects == {0: ["0_crop.png"], 1: []} and boxes == {0: [(1.0, 2.0, 3.0, 4.0)]}
    write_index_dict_json(objects, tmp_path / "o.json")
    write_index_dict_json({0: [torch.tensor([1.0, 2.0, 3.0, 4.0])]}, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text()) == {"0": [[1.0, 2.0, 3.0, 4.0]]}
    assert read_object_dict(tmp_path / "o.json") == objects and read_box_dict(tmp_path / "b.json") == boxes


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_untrusted_pickle_rejected(tmp_path, capsys):
    p = tmp_path / "evil.pth"
    torch.save({0: Evil()}, p)
    with pytest.raises(DataError, match="weights-only"):
        read_object_dict(p)
    assert "pwned" not in capsys.readouterr().out
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({0: ["x"]}) + b"garbage")
    with pytest.raises(DataError, match="plain.pth"):
        read_object_dict(tmp_path / "plain.pth")


def test_a_torch_load_failure_with_an_empty_message_is_still_a_one_line_error(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("")  # some loaders fail without a message

    monkeypatch.setattr(torch, "load", fail)
    path = tmp_path / "o.pth"
    path.write_bytes(b"x")
    with pytest.raises(DataError) as err:
        read_object_dict(path)
    assert str(err.value) == f"{path}: cannot load as a weights-only torch file: RuntimeError"


@pytest.mark.parametrize(
    "data,reader,problem",
    [
        ({"x": ["a"]}, read_object_dict, "key 'x' is not a sample index"),
        ({"0": "a.png"}, read_object_dict, "list of crop file names"),
        ({"0": [[1, 2, 3]]}, read_box_dict, "4 finite numbers"),
        ({"0": 5}, read_phrases, "phrase is not a string"),
        ([1, 2], read_phrases, "expected a dict"),
    ],
)
def test_bad_index_dicts(tmp_path, data, reader, problem):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=problem):
        reader(p)


def test_phrases_by_sample_index_and_missing(tiny_mnre):
    ds = MNREDataset(tiny_mnre, "train", modalities=("phrase",))
    assert [ds[i].phrase for i in range(3)] == ["Alice met", "Carol joined", "It's a"]
    (tiny_mnre / "txt" / "phrase_text_train.json").write_text(json.dumps({"0": "x", "2": "z"}))
    with pytest.raises(DataError, match="no phrase for sample 1"):
        MNREDataset(tiny_mnre, "train", modalities=("phrase",))
    ds = MNREDataset(tiny_mnre, "train", modalities=("phrase",), on_missing="fallback")
    assert [ds[i].phrase for i in range(3)] == ["x", "", "z"] and ds.report["missing_phrase"] == 1


def test_missing_phrase_file(tiny_mnre):
    (tiny_mnre / "txt" / "phrase_text_val.json").unlink()
    with pytest.raises(DataError, match="phrase_text_val.json: phrase file not found"):
        MNREDataset(tiny_mnre, "val", modalities=("phrase",))
    ds = MNREDataset(tiny_mnre, "val", modalities=("phrase",), on_missing="fallback")
    assert [ds[i].phrase for i in range(2)] == ["", ""] and ds.report["missing_phrase"] == 2

from __future__ import annotations

import json

import pytest

from camim.data import NEGATIVE_NAMES, LabelSet
from camim.errors import DataError


def test_rel2id_order_and_negative(tmp_path):
    p = tmp_path / "rel2id.json"
    p.write_text(json.dumps({"/b": 2, "None": 0, "/a": 1}))
    labels = LabelSet.from_rel2id(p)
    assert labels.names == ("None", "/a", "/b")
    assert labels.negative_name == "None" and labels.negative_id == 0
    assert labels.to_id("/b") == 2 and len(labels) == 3 and "/a" in labels
    assert LabelSet.from_mapping(labels.to_rel2id()) == labels


@pytest.mark.parametrize("neg", ["None", "none", "NA", "na", "no_relation", "Other", "Others"])
def test_negative_found_by_name(neg):
    labels = LabelSet.from_names(["/x", neg, "/y"])
    assert labels.negative_name == neg and labels.negative_id == 1


def test_negative_lookup_order_and_override():
    assert NEGATIVE_NAMES.index("NA") < NEGATIVE_NAMES.index("None")
    assert LabelSet.from_names(["None", "NA", "/x"]).negative_id == 1  # OpenNRE order: NA first
    assert LabelSet.from_names(["None", "/x"], negative="/x").negative_id == 1
    assert LabelSet.from_names(["/x", "/y"]).negative_id is None
    with pytest.raises(DataError, match="negative label 'Z'"):
        LabelSet.from_names(["/x"], negative="Z")


def test_infer_puts_negative_first_and_sorts_rest():
    labels = LabelSet.infer(["/z", "no_relation", "/a", "/z"])
    assert labels.names == ("no_relation", "/a", "/z")
    assert LabelSet.infer(["/b", "/a"]).names == ("/a", "/b")


@pytest.mark.parametrize(
    "content,problem",
    [
        ('{"None": 0, "/a": 2}', "ids must be 0..1"),
        ('{"None": 0, "/a": 0}', "ids must be 0..1"),
        ('{"None": "0"}', "string: integer"),
        ('["None"]', "non-empty JSON object"),
        ('{"None": 0,', "not valid JSON"),
    ],
)
def test_bad_rel2id(tmp_path, content, problem):
    p = tmp_path / "r.json"
    p.write_text(content)
    with pytest.raises(DataError, match=problem) as info:
        LabelSet.from_rel2id(p)
    assert info.value.path == str(p)


def test_save_roundtrip(tmp_path):
    labels = LabelSet.from_names(["None", "/a"])
    labels.save(tmp_path / "r.json")
    assert LabelSet.from_rel2id(tmp_path / "r.json") == labels
    with pytest.raises(DataError, match="not found"):
        LabelSet.from_rel2id(tmp_path / "missing.json")

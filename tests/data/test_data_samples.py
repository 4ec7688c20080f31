from __future__ import annotations

import ast
import json

import pytest

from camim.data import LabelSet, read_samples
from camim.data._literal import parse_literal
from camim.errors import DataError

LABELS = LabelSet.from_names(["None", "/per/per/peer"])


def line(**over) -> str:
    d = {
        "token": ["Alice", "met", "Bob"],
        "h": {"name": "Alice", "pos": [0, 1]},
        "t": {"name": "Bob", "pos": [2, 3]},
        "img_id": "x.jpg",
        "relation": "/per/per/peer",
    }
    d.update(over)
    return repr(d)


@pytest.mark.parametrize(
    "text",
    [
        "{'a': 'plain', 'b': [1, 2, -3], 'c': 1.5e-3}",
        """{'q': "It's", 'd': 'say "hi"', 'e': 'back\\\\slash', 'n': 'tab\\there'}""",
        "{'u': '\\u00e9t\\xe9 \\U0001F600', 'x': 'caf\u00e9'}",
        "{'none': None, 'tuple': (1, 2), 'bool': True}",
        "[\"json-ish\", 'mixed', '', \"\"]",
        "{'k': 'a\\'b'}",
        "{'a': b'x'}",
    ],
)
def test_fast_literal_parser_agrees_with_ast(text):
    assert parse_literal(text) == ast.literal_eval(text)


@pytest.mark.parametrize("text", ["{'a': __import__('os')}", "{'a': 1", "{'a': NaN}", "{'a': 1,, }"])
def test_literal_parser_rejects_non_literals(text):
    with pytest.raises((SyntaxError, ValueError)):
        parse_literal(text)


def test_reads_literal_lines_with_labels(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text(line() + "\n\n" + line(relation="None", img_id="y.jpg") + "\n")
    out = read_samples(p, LABELS)
    assert [e.label for e in out] == [1, 0]
    assert [e.index for e in out] == [0, 1]  # blank lines do not count
    assert out[0].head.start == 0 and out[0].head.end == 1 and out[0].tail.name == "Bob"
    assert out[1].source == f"{p}:3"
    assert out[0].text == "Alice met Bob"


def test_reads_jsonl(tmp_path):
    p = tmp_path / "s.jsonl"
    rec = {
        "token": ["A", "b"],
        "h": {"name": "A", "pos": [0, 1]},
        "t": {"name": "b", "pos": [1, 2]},
        "img_id": "i.png",
    }
    p.write_text(json.dumps({**rec, "relation": "None"}) + "\n")
    (ex,) = read_samples(p, LABELS)
    assert ex.label == 0 and ex.img_id == "i.png"
    p.write_text(json.dumps(rec) + "\n")  # unlabelled: allowed only when asked
    assert read_samples(p, LABELS, require_relation=False)[0].relation is None
    with pytest.raises(DataError, match="relation missing"):
        read_samples(p, LABELS)


BAD_LINES = [
    ("{'token': [1", "syntax error"),
    ("['not', 'a', 'dict']", "not a dict"),
    (line(token=[]), "tokens empty"),
    (line(token="Alice met Bob"), "not a list of strings"),
    (line(h={"name": "x", "pos": [2, 5]}), r"head span \[2, 5\] out of range for 3 tokens"),
    (line(t={"name": "x", "pos": [-1, 1]}), r"tail span \[-1, 1\] out of range"),
    (line(h={"name": "x", "pos": [2, 2]}), r"head span \[2, 2\]: start >= end"),
    (line(t={"name": "x", "pos": [2, 1]}), "start >= end"),
    (line(h={"name": "x", "pos": [0]}), "must be \\[start, end\\] integers"),
    (line(h="Alice"), "head entity 'h' missing"),
    (line(relation="/per/per/unknown"), "unknown relation '/per/per/unknown'"),
    (line(img_id=""), "img_id missing"),
    (line(img_id=None), "img_id missing"),
    (
        "{'token': ['a'], 'h': {'name': 'a', 'pos': [0, 1]}, 't': {'name': 'a', 'pos': [0, 1]}, 'relation': 'None'}",
        "img_id missing",
    ),
    ("__import__('os').system('true')", "not a Python literal"),
]


@pytest.mark.parametrize("bad,problem", BAD_LINES)
def test_each_malformed_line_names_file_line_and_problem(tmp_path, bad, problem):
    p = tmp_path / "s.txt"
    p.write_text(line() + "\n" + bad + "\n" + line() + "\n")
    with pytest.raises(DataError, match=problem) as info:
        read_samples(p, LABELS)
    assert info.value.path == str(p) and info.value.line == 2
    assert str(info.value).startswith(f"{p}:2: ")


def test_skip_mode_counts_and_keeps_indices(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("\n".join([line(), BAD_LINES[0][0], line(relation="None"), BAD_LINES[2][0]]) + "\n")
    problems: list[DataError] = []
    out = read_samples(p, LABELS, on_error="skip", problems=problems)
    assert [e.index for e in out] == [0, 2]  # the index of a sample is its position, bad lines included
    assert [e.line for e in problems] == [2, 4]


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_samples(tmp_path / "nope.txt")
    p = tmp_path / "latin1.txt"
    p.write_bytes(line(img_id="caf\xe9.jpg").encode("latin-1") + b"\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_samples(p)

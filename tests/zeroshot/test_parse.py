"""The tolerant answer parser: what models write around the requested {"relation": ...}."""

from __future__ import annotations

import pytest

from camim.zeroshot.parse import AnswerParser

MNRE = [
    "None",
    "/per/per/couple",
    "/per/org/member_of",
    "/per/per/alternate_names",
    "/org/org/alternate_names",
    "/per/loc/place_of_residence",
]


@pytest.mark.parametrize(
    ("answer", "label", "how"),
    [
        ('{"relation": "/per/per/couple"}', "/per/per/couple", "json"),
        ('```json\n{"relation": "/per/org/member_of"}\n```', "/per/org/member_of", "json"),
        ('Sure! {"relation": "/per/per/couple"} is my answer.', "/per/per/couple", "json"),
        ("{'relation': '/per/per/couple'}", "/per/per/couple", "json"),  # a dict literal, not JSON
        ('{"Label": "PER/ORG/MEMBER_OF"}', "/per/org/member_of", "json"),  # key and case
        ('{"relation": "per per couple"}', "/per/per/couple", "json"),
        ('{"relation": "couple"}', "/per/per/couple", "json"),  # a last segment only one label has
        ('{"relation": "place of residence"}', "/per/loc/place_of_residence", "json"),
        ('{"relation": null}', "None", "json"),
        ('{"relation": "no relation"}', "None", "json"),
        ('{"relation": ["/per/per/couple"]}', "/per/per/couple", "json"),
        ('{"reasoning": "they married", "relation": "/per/per/couple"}', "/per/per/couple", "json"),
        ("/per/per/couple", "/per/per/couple", "text"),
        ("None.", "None", "text"),
        ("The relation is /per/org/member_of.", "/per/org/member_of", "text"),
        ("", None, "empty"),
        ("   \n", None, "empty"),
        (None, None, "empty"),
        ("I'm sorry, but I can't help with identifying people in images.", None, "unparseable"),
        ('{"relation": "/per/per/cou', None, "unparseable"),  # cut short
        ('{"relation": "alternate_names"}', None, "unparseable"),  # two labels end with it
        ('{"relation": "/per/per/friend"}', None, "unparseable"),  # not in the set
        ("Either /per/org/member_of or /per/per/couple.", None, "unparseable"),  # two labels
        ("None of these, I think it is /per/per/couple", "/per/per/couple", "text"),  # "None" the word
    ],
)
def test_answers(answer, label, how):
    parsed = AnswerParser(MNRE, "None").parse(answer)
    assert (parsed.label, parsed.how) == (label, how)
    assert parsed.parsed == (label is not None)


def test_bare_labels_of_another_dataset():
    parser = AnswerParser(["no_relation", "founded_by", "works_for"], "no_relation")
    assert parser.parse('{"relation": "Founded by"}').label == "founded_by"
    assert parser.parse("works_for").label == "works_for"
    assert parser.parse('{"relation": "none"}').label == "no_relation"
    assert parser.parse("They are unrelated.").label is None

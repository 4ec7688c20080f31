"""Predictor: reload fidelity, entity marks, distributions, batch = single, OpenNRE's infer, modality notes."""

from __future__ import annotations

import pytest
import torch

from camim.errors import CamimError
from camim.inference import Predictor, SpanError, char_span_to_token_span, find_mention, tokenize

from .conftest import LABELS, draw, training_examples

POST = "RT @cnnsport : Tennis star Rafael Nadal gets engaged to girlfriend of 14 years , Mery Perello"


def test_tokenize_keeps_handles_and_splits_punctuation():
    toks = tokenize("RT @cnnsport: New York's #bigday, see https://t.co/x1!")
    assert [t.text for t in toks] == [
        "RT", "@cnnsport", ":", "New", "York", "'s", "#bigday", ",", "see", "https://t.co/x1!",
    ]  # fmt: skip
    text = "RT @cnnsport: New York's"
    assert all(text[t.start : t.end] == t.text for t in tokenize(text))


def test_char_span_maps_to_covering_tokens():
    toks = tokenize(POST)
    s = POST.index("Rafael Nadal")
    assert char_span_to_token_span(toks, s, s + len("Rafael Nadal")) == (5, 7)
    assert char_span_to_token_span(toks, s + 2, s + 8) == (5, 7)  # partial words extend to whole tokens
    with pytest.raises(SpanError, match="covers no token"):
        char_span_to_token_span(toks, len(POST) + 5, len(POST) + 9)


def test_find_mention_unique_absent_and_ambiguous():
    tokens = "the man saw the man in New York".split()
    assert find_mention(tokens, "New York") == (6, 8)
    assert find_mention(tokens, "new york") == (6, 8)  # case-insensitive fallback
    with pytest.raises(SpanError, match="does not occur"):
        find_mention(tokens, "Boston")
    with pytest.raises(SpanError, match=r"occurs 2 times.*\[1, 2\), \[4, 5\)"):
        find_mention(tokens, "man")


def test_reload_gives_identical_outputs(bert_run, bert_predictor):
    examples = training_examples(6, seed=3)
    with torch.no_grad():
        expected = torch.softmax(bert_run.model.eval()(bert_run.model.processor(examples)).logits, -1)
    for source in (bert_run.path, bert_run.path / "model"):  # training output DIR and DIR/model
        pred = Predictor.from_pretrained(source) if source != bert_run.path else bert_predictor
        got = pred.predict_batch(
            [
                {"token": e.tokens, "head": (e.head.start, e.head.end), "tail": (e.tail.start, e.tail.end)}
                for e in examples
            ]
        )
        for row, res in zip(expected, got):
            by_label = dict(res.distribution)
            assert torch.allclose(torch.tensor([by_label[n] for n in LABELS]), row, atol=1e-6)


def test_trained_model_learned_the_cue(bert_predictor):
    # the tiny model was trained a few steps on "<a> <cue> <b>": its answers follow the cue word
    assert (
        bert_predictor.predict("rt jack plays titans today", "jack", "titans").relation
        == "/per/org/member_of"
    )
    assert (
        bert_predictor.predict("rt mery married nadal today", "mery", "nadal").relation == "/per/per/couple"
    )


def test_prediction_distribution_is_sorted_and_complete(bert_predictor):
    p = bert_predictor.predict(POST, head="Rafael Nadal", tail="Mery Perello")
    probs = [q for _, q in p.distribution]
    assert sorted({r for r, _ in p.distribution}) == sorted(LABELS)
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert (p.relation, p.probability) == p.distribution[0]
    assert (p.head.start, p.head.end, p.head.name) == (5, 7, "Rafael Nadal")
    assert (p.tail.start, p.tail.end) == (15, 17)
    d = p.to_dict()
    assert d["head"] == {"name": "Rafael Nadal", "pos": [5, 7]}
    assert d["distribution"][0] == {"relation": p.relation, "probability": p.probability}


def test_mentions_spans_and_char_spans_agree(bert_predictor):
    by_mention = bert_predictor.predict(POST, "Rafael Nadal", "Mery Perello")
    by_span = bert_predictor.predict(POST.split(), (5, 7), (15, 17))
    s, t = POST.index("Rafael Nadal"), POST.index("Mery Perello")
    by_char = bert_predictor.predict(POST, {"char": [s, s + 12]}, {"char": [t, t + 12]})
    for other in (by_span, by_char):
        assert other.relation == by_mention.relation
        assert other.probability == pytest.approx(by_mention.probability, abs=1e-6)


@pytest.mark.parametrize(
    ("head", "tail", "match"),
    [
        ("Roger Federer", "Mery Perello", "head: mention 'Roger Federer' does not occur"),
        ("Rafael Nadal", "Perello Mery", "tail: mention .Perello Mery. does not occur"),
        ((5, 99), "Mery Perello", r"head: token span \[5, 99\) is outside the post's 17 tokens"),
        ((7, 5), "Mery Perello", "outside"),
        ("Rafael Nadal", (6, 8), "overlap"),
        ([1.5, 2], "Mery Perello", "two integers"),
    ],
)
def test_bad_entity_marks_are_clear_errors(bert_predictor, head, tail, match):
    with pytest.raises(SpanError, match=match):
        bert_predictor.predict(POST, head, tail)


def test_ambiguous_mention_needs_a_span(bert_predictor):
    post = "jack plays with jack for the titans"
    with pytest.raises(SpanError, match="occurs 2 times"):
        bert_predictor.predict(post, "jack", "titans")
    assert bert_predictor.predict(post, (0, 1), "titans").head.start == 0


def test_batch_equals_single(bert_predictor):
    items = [
        {"text": POST, "head": "Rafael Nadal", "tail": "Mery Perello"},
        {"text": "jack plays for the titans", "head": "titans", "tail": "jack"},
        {"token": ["the", "festival", "held", "london"], "head": (1, 2), "tail": (3, 4)},
    ]
    batch = bert_predictor.predict_batch(items, batch_size=2)
    for item, res in zip(items, batch):
        single = bert_predictor.predict(item.get("text") or item["token"], item["head"], item["tail"])
        assert res.relation == single.relation
        assert res.probability == pytest.approx(single.probability, abs=1e-5)


def test_opennre_infer(bert_predictor):
    s, t = POST.index("Rafael Nadal"), POST.index("Mery Perello")
    expected = bert_predictor.predict(POST, "Rafael Nadal", "Mery Perello")
    rel, score = bert_predictor.infer({"text": POST, "h": {"pos": [s, s + 12]}, "t": {"pos": [t, t + 12]}})
    assert (rel, score) == pytest.approx((expected.relation, expected.probability))
    rel2, score2 = bert_predictor.infer({"token": POST.split(), "h": {"pos": [5, 7]}, "t": {"pos": [15, 17]}})
    assert rel2 == expected.relation and score2 == pytest.approx(expected.probability, abs=1e-6)
    with pytest.raises(SpanError, match="both 'h' and 't'"):
        bert_predictor.infer({"token": POST.split(), "h": {"pos": [5, 7]}})


def test_text_only_model_notes_an_unused_caption(bert_predictor):
    p = bert_predictor.predict(POST, "Rafael Nadal", "Mery Perello", caption="Two people smiling.")
    assert p.absent_modalities == []
    assert any("does not read captions" in n for n in p.notes)


def test_corrupt_image_is_a_clear_error(bert_predictor, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(CamimError, match="bad.jpg: not a readable image"):
        bert_predictor.predict(POST, "Rafael Nadal", "Mery Perello", image=bad)
    with pytest.raises(CamimError, match="cannot read the image"):
        bert_predictor.predict(POST, "Rafael Nadal", "Mery Perello", image=tmp_path / "absent.png")
    assert bert_predictor.predict(POST, "Rafael Nadal", "Mery Perello", image=draw(1)).relation in LABELS


def test_from_pretrained_errors_and_hub_ids(bert_run, tmp_path, monkeypatch):
    with pytest.raises(CamimError, match="no config.json"):
        Predictor.from_pretrained(tmp_path)
    calls = []

    def fake_snapshot_download(repo_id, revision=None):
        calls.append((repo_id, revision))
        return str(bert_run.path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    p = Predictor.from_pretrained("someone/camim-mnre", revision="v1")
    assert calls == [("someone/camim-mnre", "v1")] and p.labels == LABELS

    def failing(repo_id, revision=None):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(CamimError, match="downloading it from the hub failed: offline"):
        Predictor.from_pretrained("someone/missing")

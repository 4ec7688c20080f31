from __future__ import annotations

import json

import pytest

from camim.data import DataLayout, MNREDataset, read_captions
from camim.data.writers import write_captions_jsonl
from camim.errors import DataError


def test_txt_captions_normalised_and_last_wins(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text(
        "{'img_id': 'a.jpg', 'text': 'old'}\n"
        "{'img_id': 'b.jpg', 'text': '\\nA  dog\\t on grass '}\n"
        "{'img_id': 'a.jpg', 'text': \"it's new\"}\n"
    )
    caps = read_captions(p)
    assert caps.get("a.jpg") == "it's new"
    assert caps.get("b.jpg") == "A dog on grass"
    assert caps.get("b.png") == "A dog on grass"  # falls back to the name without extension
    assert caps.get("zzz.jpg") is None and len(caps) == 2


def test_json_captions_keyed_without_extension(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"a": " x  y ", "b": "z"}))
    caps = read_captions(p)
    assert caps.get("a.jpg") == "x y" and caps.get("b.jpg") == "z"
    p.write_text(json.dumps({"a": 3}))
    with pytest.raises(DataError, match="not a string"):
        read_captions(p)
    p.write_text("[1, 2]")
    with pytest.raises(DataError, match="one object"):
        read_captions(p)


def test_jsonl_captions_written_by_captioner_and_model_filter(tmp_path):
    p = tmp_path / "c.jsonl"
    write_captions_jsonl({"a.jpg": "from m1", "b.jpg": "b1"}, p, model="m1", prompt_hash="h")
    with p.open("a") as f:
        f.write(json.dumps({"img_id": "a.jpg", "text": "from m2", "model": "m2"}) + "\n")
    assert json.loads(p.read_text().splitlines()[0]) == {
        "img_id": "a.jpg",
        "text": "from m1",
        "model": "m1",
        "prompt_hash": "h",
    }
    assert read_captions(p).get("a.jpg") == "from m2"
    only_m1 = read_captions(p, model="m1")
    assert only_m1.get("a.jpg") == "from m1" and only_m1.get("b.jpg") == "b1"


@pytest.mark.parametrize(
    "bad,problem",
    [
        ("{'img_id': 'a.jpg'}", "caption 'text' missing"),
        ("{'text': 'x'}", "img_id missing"),
        ("['a.jpg', 'x']", "not a dict"),
        ("{'img_id': 'a.jpg', 'text': 'x'", "syntax error"),
    ],
)
def test_bad_caption_lines(tmp_path, bad, problem):
    p = tmp_path / "c.txt"
    p.write_text("{'img_id': 'z.jpg', 'text': 'ok'}\n" + bad + "\n")
    with pytest.raises(DataError, match=problem) as info:
        read_captions(p)
    assert info.value.line == 2
    caps = read_captions(p, on_error="skip")
    assert len(caps) == 1 and caps.problems[0].line == 2


@pytest.mark.parametrize(
    "source,prefix",
    [("minicpm", "minicpm"), ("qwenvl", "caption"), ("caption", "caption"), ("blip2", "BLIP")],
)
def test_source_names_select_files(tiny_mnre, source, prefix):
    path = DataLayout().caption_path(tiny_mnre, source, "train")
    assert path.name == f"{prefix}_train.txt"
    ds = MNREDataset(tiny_mnre, "train", caption_source=source)
    assert ds.caption_path == path and ds[0].caption == "two people shaking hands"


def test_llavanext_leading_newline_removed_and_json_when_only_json(tiny_mnre):
    assert MNREDataset(tiny_mnre, "val", caption_source="llavanext")[0].caption == "a park"
    (tiny_mnre / "caption" / "minicpm_val.txt").unlink()
    ds = MNREDataset(tiny_mnre, "val", caption_source="minicpm")
    assert ds.caption_path.suffix == ".json" and [ds[i].caption for i in range(2)] == ["a park", "a shop"]


def test_caption_path_and_unknown_source(tiny_mnre, tmp_path):
    own = tmp_path / "mine.jsonl"
    write_captions_jsonl({"c.jpg": "mine c", "d.jpg": "mine d"}, own)
    assert MNREDataset(tiny_mnre, "val", caption_source=own)[1].caption == "mine d"
    with pytest.raises(DataError, match="no caption file for source 'gpt9'"):
        MNREDataset(tiny_mnre, "val", caption_source="gpt9")


def test_missing_caption_raises_or_counts_empty(tiny_mnre):
    p = tiny_mnre / "caption" / "minicpm_train.txt"
    p.write_text("{'img_id': 'a.jpg', 'text': 'only a'}\n")
    with pytest.raises(DataError, match="no caption for image 'b.jpg'") as info:
        MNREDataset(tiny_mnre, "train")
    assert info.value.path == str(p)
    ds = MNREDataset(tiny_mnre, "train", on_missing="fallback")
    assert [ds[i].caption for i in range(3)] == ["only a", "", "only a"]
    assert ds.report["missing_caption"] == 1


def test_empty_caption_is_not_missing(tiny_mnre):
    ds = MNREDataset(tiny_mnre, "test", caption_source="blip2")
    assert ds[0].caption == "" and ds.report.get("missing_caption", 0) == 0


def test_jsonl_unfinished_last_line_is_ignored_and_reported(tmp_path):
    from camim.data.captions import read_captions

    path = tmp_path / "cap.jsonl"
    path.write_text('{"img_id": "a.jpg", "text": "one"}\n{"img_id": "b.jpg", "te', encoding="utf-8")
    caps = read_captions(path)
    assert caps.texts == {"a.jpg": "one"}
    assert len(caps.problems) == 1 and "unfinished last line" in str(caps.problems[0])
    # a broken line that is complete (ends with a newline) is still an error naming the line
    path.write_text('{"img_id": "a.jpg", "text": "one"}\n{"img_id": "b.jpg", "te\n', encoding="utf-8")
    with pytest.raises(DataError, match=":2"):
        read_captions(path)


def test_deranged_lookup_gives_every_captioned_image_another_images_caption():
    from camim.data.captions import deranged_lookup

    texts = {"a.jpg": "A", "b.jpg": "B", "c.jpg": "C", "d.jpg": "D"}
    ids = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "a.jpg", "none.jpg"]  # a repeated id, one without caption
    for seed in range(20):
        moved = deranged_lookup(texts.get, ids, seed)
        got = {i: moved(i) for i in texts}
        assert all(got[i] != texts[i] for i in texts)  # no image keeps its own caption
        assert sorted(got.values()) == ["A", "B", "C", "D"]  # each caption given exactly once
        assert moved("none.jpg") is None  # an image without a caption stays without one
        assert {i: deranged_lookup(texts.get, ids, seed)(i) for i in texts} == got  # seeded
    # the order is one cycle: following "whose caption did I get" from a visits every image
    moved = deranged_lookup(texts.get, ids, 3)
    owner = {t: i for i, t in texts.items()}
    seen, i = [], "a.jpg"
    for _ in range(4):
        seen.append(i)
        i = owner[moved(i)]
    assert sorted(seen) == sorted(texts) and i == "a.jpg"
    assert deranged_lookup({"a.jpg": "A"}.get, ["a.jpg"], 0)("a.jpg") == "A"  # one image keeps its own


def test_dataset_caption_shuffle_seed_moves_captions_between_images(tiny_mnre):
    plain = MNREDataset(tiny_mnre, "train", caption_source="minicpm")
    shuffled = MNREDataset(tiny_mnre, "train", caption_source="minicpm", caption_shuffle_seed=7)
    own = {plain[i].img_id: plain[i].caption for i in range(len(plain))}
    got = {shuffled[i].img_id: shuffled[i].caption for i in range(len(shuffled))}
    assert got.keys() == own.keys() and len(own) > 1
    assert all(got[i] != own[i] for i in own)
    assert sorted(got.values()) == sorted(own.values())
    for i in range(len(shuffled)):  # samples of one image share its (moved) caption
        assert shuffled[i].caption == got[shuffled[i].img_id]

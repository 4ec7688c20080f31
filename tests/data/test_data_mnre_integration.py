"""On the real MNRE text/caption folder (../shared/data/mnre); skipped when it is absent. Each file is read
once per module through module-scoped fixtures."""

from __future__ import annotations

import json

import pytest

from camim.data import MNREDataset, read_box_dict, read_object_dict
from camim.data.auxiliary import iter_score_lines
from camim.data.inspection import scan

pytestmark = pytest.mark.integration

COUNTS = {"train": 12247, "val": 1624, "test": 1614}
SOURCES = ("minicpm", "caption", "cogvlm", "llavanext", "instruct", "blip2")


@pytest.fixture(scope="module")
def mnre_scan(mnre_dir):
    return scan(mnre_dir)


@pytest.fixture(scope="module")
def train_ds(mnre_dir):
    return MNREDataset(mnre_dir, "train", modalities=("caption", "scores", "phrase"))


def test_counts_and_labels(mnre_scan):
    s = mnre_scan.summary
    assert {k: v["samples"] for k, v in s["splits"].items()} == COUNTS
    assert s["num_labels"] == 23 and s["negative"] == "None"
    assert {k: v["images"] for k, v in s["splits"].items()} == {"train": 7356, "val": 931, "test": 914}
    assert s["splits"]["train"]["label_distribution"]["None"] == 7744
    assert s["splits"]["test"]["labels"] == 21
    assert s["splits"]["val"]["negative_share"] == pytest.approx(1000 / 1624, abs=1e-5)


def test_validate_is_clean(mnre_scan):
    assert mnre_scan.problems == []


def test_caption_coverage_and_lengths(mnre_scan):
    caps = mnre_scan.summary["captions"]
    for src in SOURCES:
        assert caps[src]["coverage"] == 1.0, src
        for split in COUNTS:
            assert mnre_scan.summary["splits"][split]["captions"][src]["coverage"] == 1.0
    # mean words of the paper's Table 2 / reference-behaviour §4.6
    expected = {
        "blip2": 9.8,
        "instruct": 11.0,
        "llavanext": 19.6,
        "caption": 28.7,
        "cogvlm": 50.2,
        "minicpm": 67.4,
    }
    for src, words in expected.items():
        assert caps[src]["mean_words"] == pytest.approx(words, abs=0.05), src
    blip_empty = {split: mnre_scan.summary["splits"][split]["captions"]["blip2"]["empty"] for split in COUNTS}
    assert blip_empty == {"train": 30, "val": 4, "test": 1}


def test_aux_coverage_and_dict_shapes(mnre_scan):
    s = mnre_scan.summary
    for key in ("scores", "objects", "generated_boxes", "phrases"):
        assert s[key]["coverage"] == 1.0, key
    assert s["splits"]["test"]["objects"]["list_lengths"] == {"2": 988, "3": 107, "4": 519}
    assert s["splits"]["train"]["generated_boxes"]["degenerate"] == 6
    assert s["splits"]["train"]["scores"]["ori"]["images_with_conflicting_lines"] == 1803


@pytest.mark.parametrize("split", list(COUNTS))
def test_strong_plus_weak_is_one_on_every_line(mnre_dir, split):
    for prefix in ("", "dif_"):
        strong = list(iter_score_lines(mnre_dir / "txt" / f"{prefix}{split}_weight_strong.txt"))
        weak = list(iter_score_lines(mnre_dir / "txt" / f"{prefix}{split}_weight_weak.txt"))
        assert len(strong) == len(weak) == COUNTS[split]
        for (_, img_s, vs), (_, img_w, vw) in zip(strong, weak):
            assert img_s == img_w and vs + vw == pytest.approx(1.0, abs=1e-6)


def test_train_dataset_first_sample(train_ds):
    assert len(train_ds) == 12247 and dict(train_ds.report) == {}
    ex = train_ds[0]
    assert ex.relation == "/misc/misc/part_of" and ex.label == 21
    assert (ex.head.name, ex.head.start, ex.head.end) == ("Circle Undone", 8, 10)
    assert ex.phrase == "Circle Undone Arkham Horror LCG"
    assert ex.caption.startswith("The image depicts a mystical scene")
    assert sum(ex.scores.as_list()[:2]) == pytest.approx(1.0) and sum(
        ex.scores.as_list()[2:]
    ) == pytest.approx(1.0)


def test_scores_last_line_wins(mnre_dir, train_ds):
    lines = list(iter_score_lines(mnre_dir / "txt" / "train_weight_strong.txt"))
    first: dict[str, float] = {}
    conflict = None
    for _, img, v in lines:
        if img in first and first[img] != v:
            conflict = img
        first.setdefault(img, v)
    assert conflict is not None
    last = [v for _, img, v in lines if img == conflict][-1]
    ex = next(train_ds[i] for i in range(len(train_ds)) if train_ds.examples[i].img_id == conflict)
    assert ex.scores.strong_ori == last


def test_llavanext_newline_normalised_and_object_dicts(mnre_dir):
    ds = MNREDataset(mnre_dir, "test", caption_source="llavanext")
    assert all(not ds[i].caption.startswith((" ", "\n")) for i in range(0, len(ds), 97))
    assert read_object_dict(mnre_dir / "txt" / "mre_test_dict.pth")[0][0].endswith(".png")
    boxes = read_box_dict(mnre_dir / "txt" / "mre_dif_test_dict.pth")
    assert len(boxes) == 1614 and all(0 <= v <= 768 for v in boxes[0][0])


def test_real_val_split_in_an_older_release_form(mnre_dir, tmp_path, capsys):
    """MNRE's val split rewritten as an earlier release stores it (img_ids without extension, ``none`` as the
    negative label, no rel2id): read unchanged, captions found by stem, ``none`` excluded from scoring."""
    from camim.cli import main
    from camim.data._literal import parse_literal

    old = tmp_path / "old"
    (old / "txt").mkdir(parents=True)
    (old / "caption").mkdir()
    records = []
    for line in (mnre_dir / "txt" / "ours_val.txt").read_text(encoding="utf-8").splitlines():
        rec = parse_literal(line)
        rec["img_id"] = rec["img_id"].rsplit(".", 1)[0]
        rec["relation"] = "none" if rec["relation"] == "None" else rec["relation"]
        records.append(rec)
    (old / "txt" / "ours_val.txt").write_text("".join(repr(r) + "\n" for r in records), encoding="utf-8")
    (old / "caption" / "minicpm_val.txt").write_bytes((mnre_dir / "caption" / "minicpm_val.txt").read_bytes())

    ds = MNREDataset(old, "val", caption_source="minicpm")
    real = MNREDataset(mnre_dir, "val", caption_source="minicpm")
    assert len(ds) == 1624 and ds.labels.negative_name == "none" and ds.labels.names[0] == "none"
    assert [ds[i].caption for i in range(0, 1624, 101)] == [real[i].caption for i in range(0, 1624, 101)]
    assert main(["data", "inspect", str(old), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["negative"] == "none" and s["negative_origin"].startswith("inferred by name from the samples")
    assert s["splits"]["val"]["img_id_forms"] == {"bare name": 931}
    assert s["splits"]["val"]["negative_share"] == pytest.approx(1000 / 1624, abs=1e-5)
    assert s["splits"]["val"]["captions"]["minicpm"]["coverage"] == 1.0


def test_released_caption_sets_read_and_import_alike(mnre_dir, tmp_path):
    """One duplicate rule everywhere: importing a released set and reading it give the same captions, and
    the released sets have no conflicting duplicates."""
    from camim.captioning.cache import read_cache
    from camim.captioning.released import import_released
    from camim.data import read_captions

    source = mnre_dir / "caption" / "cogvlm_val.txt"
    read = read_captions(source)
    report = import_released([source], tmp_path / "c.jsonl")
    assert report.conflicts == {} and read.conflicts == []
    imported = read_cache(tmp_path / "c.jsonl").latest("cogvlm")
    assert {k: " ".join(r.text.split()) for k, r in imported.items()} == read.texts

"""Data in the forms it really comes in (issue 18 §1): earlier MNRE releases (integer or bare img_ids, a
``none`` negative label, no rel2id), empty or missing splits, truncated images, legacy text encodings,
duplicate captions, and the modalities that have no fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camim.cli import main
from camim.data import DataLayout, ImageLimits, LabelSet, MNREDataset, default_labels, read_captions
from camim.data.images import find_image, resolution
from camim.data.inspection import scan
from camim.errors import CamimError, DataError
from camim.io import iter_lines, read_json

from .conftest import draw


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def sample(tokens, img_id, relation="none", h=(0, 1), t=(2, 3)) -> dict:
    return {
        "token": tokens,
        "h": {"name": " ".join(tokens[h[0] : h[1]]), "pos": list(h)},
        "t": {"name": " ".join(tokens[t[0] : t[1]]), "pos": list(t)},
        "img_id": img_id,
        "relation": relation,
    }


def write_split(root: Path, split: str, records: list, literal: bool = True) -> Path:
    path = root / "txt" / f"ours_{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((repr(r) if literal else json.dumps(r)) + "\n" for r in records), encoding="utf-8"
    )
    return path


@pytest.fixture
def older_release(tmp_path: Path) -> Path:
    """An earlier MNRE release's form: integer img_ids without extension, a ``none`` negative label, no
    rel2id file, no captions, scores or object dictionaries; images named ``<id>.jpg`` / ``.png``."""
    root = tmp_path / "old"
    write_split(
        root,
        "train",
        [
            sample(["Ann", "met", "Bob"], 553009, "none"),
            sample(["Cid", "wed", "Dee"], 553010, "/per/per/couple"),
            sample(["Eve", "joined", "Acme"], "553011", "/per/org/member_of"),
        ],
    )
    write_split(root, "val", [sample(["Fay", "wed", "Gus"], 553012, "/per/per/couple")])
    write_split(root, "test", [sample(["Hal", "met", "Ida"], 553013, "none")])
    draw(root / "img_org" / "train" / "553009.jpg")
    draw(root / "img_org" / "train" / "553010.png")
    draw(root / "img_org" / "train" / "553011.tmp.png")
    (root / "img_org" / "train" / "553011.tmp.png").rename(
        root / "img_org" / "train" / "553011"
    )  # found as given
    draw(root / "img_org" / "val" / "553012.jpg")
    draw(root / "img_org" / "test" / "553013.JPG")
    return root


# ---- integer and bare img_ids ---------------------------------------------------------------------------
def test_integer_and_bare_img_ids_are_read_and_their_images_resolved(older_release, tmp_path):
    ds = MNREDataset(older_release, "train", caption_source=None, modalities=("image",))
    assert [ex.img_id for ex in ds.examples] == ["553009", "553010", "553011"]
    assert all(ds[i].image is not None and ds[i].image.size == (32, 24) for i in range(3))
    assert dict(ds.report) == {}
    folder = older_release / "img_org" / "train"
    assert find_image(folder, "553010") == folder / "553010.png"
    assert find_image(folder, "553011") == folder / "553011"  # as given first
    assert find_image(folder, "999") is None
    assert resolution("553010", folder / "553010.png") == "+.png" and resolution("x", None) == "unresolved"
    assert MNREDataset(older_release, "test", caption_source=None, modalities=("image",))[0].image is not None

    # a truly missing or empty id is still refused, naming file and line
    for bad, problem in (
        ("", "img_id missing or empty"),
        ("  ", "img_id missing or empty"),
        (None, "img_id missing"),
    ):
        rec = sample(["a", "b", "c"], bad)
        if bad is None:
            del rec["img_id"]
        path = write_split(tmp_path / "bad", "train", [sample(["a", "b", "c"], 1), rec])
        with pytest.raises(DataError, match=rf"ours_train\.txt:2: {problem}"):
            MNREDataset(
                path.parent.parent, "train", labels=LabelSet.from_names(["none"]), caption_source=None
            )
    for bad, problem in ((True, "img_id must be a string or an integer, got bool"), (1.5, "got float")):
        path = write_split(tmp_path / "bad2", "train", [sample(["a", "b", "c"], bad)], literal=False)
        with pytest.raises(DataError, match=rf"ours_train\.txt:1: .*{problem}"):
            MNREDataset(
                path.parent.parent, "train", labels=LabelSet.from_names(["none"]), caption_source=None
            )


def test_inspect_says_how_img_ids_were_resolved(older_release, capsys):
    rc, out, _ = run(capsys, "data", "inspect", str(older_release), "--json")
    s = json.loads(out)
    assert rc == 0 and s["problems"] == 0
    train = s["splits"]["train"]
    assert train["img_id_forms"] == {"integer": 3}
    assert train["image_files"]["resolved"] == {"+.jpg": 1, "+.png": 1, "as given": 1}
    assert train["image_files"]["coverage"] == 1.0
    assert s["splits"]["test"]["image_files"]["resolved"] == {"+.JPG": 1}
    rc, out, _ = run(capsys, "data", "inspect", str(older_release))
    assert "image ids: their form, and how they were resolved" in out
    assert "train   3 integer; 1 +.jpg, 1 +.png, 1 as given" in out


# ---- the negative label ---------------------------------------------------------------------------------
def test_inferred_negative_label_is_explicit_and_overridable(older_release, capsys):
    result = scan(older_release)
    s = result.summary
    assert s["negative"] == "none" and s["labels"][0] == "none"
    assert s["negative_origin"] == "inferred by name from the samples (no rel2id file)"
    assert any("negative label 'none' (excluded from micro P/R/F1)" in w for w in result.warnings)
    assert s["splits"]["train"]["negative_share"] == pytest.approx(1 / 3)
    rc, out, _ = run(capsys, "data", "inspect", str(older_release))
    assert "negative label (excluded from micro P/R/F1): none, inferred by name from the samples" in out

    # overridden (data.negative_label / --negative-label): that label is the one excluded
    over = scan(older_release, negative="/per/per/couple").summary
    assert over["negative"] == "/per/per/couple" and over["negative_origin"] == "set by data.negative_label"
    assert default_labels(older_release, negative="/per/per/couple").negative_name == "/per/per/couple"
    rc, out, _ = run(
        capsys, "data", "inspect", str(older_release), "--json", "--negative-label", "/per/per/couple"
    )
    assert json.loads(out)["negative"] == "/per/per/couple"
    with pytest.raises(DataError, match="negative label 'NA' does not occur"):
        default_labels(older_release, negative="NA")

    from camim.training.config import load_config

    assert load_config("offline-bert").data.negative_label is None
    assert load_config("offline-bert", ["data.negative_label=NA"]).data.negative_label == "NA"


# ---- empty and missing splits ---------------------------------------------------------------------------
def test_validate_reports_missing_and_empty_splits(older_release, capsys):
    (older_release / "txt" / "ours_val.txt").unlink()
    (older_release / "txt" / "ours_test.txt").write_text("\n")
    rc, out, _ = run(capsys, "data", "validate", str(older_release))
    assert rc == 1
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert any("no sample file for split 'val' (tried txt/ours_val.txt, val.jsonl" in p for p in problems)
    assert any(p.endswith("ours_test.txt: the 'test' split has no samples") for p in problems)


# ---- images are decoded by validate ---------------------------------------------------------------------
def test_validate_decodes_every_image_with_the_training_limits(older_release, capsys):
    assert run(capsys, "data", "validate", str(older_release))[0] == 0
    full = older_release / "img_org" / "train" / "553009.jpg"
    big = older_release / "img_org" / "train" / "553010.png"
    draw(full, (400, 300))
    full.write_bytes(full.read_bytes()[:-200])  # truncated: the header still reads, decoding fails
    rc, out, _ = run(capsys, "data", "validate", str(older_release))
    assert rc == 1
    assert (
        f"problem: {full}: unreadable image (training would stop on it): not a readable image (corrupt or "
        "unreadable: " in out
    )
    assert run(capsys, "data", "validate", str(older_release), "--no-images")[0] == 0  # not decoded: clean
    full.unlink()
    draw(full)
    draw(big, (300, 200))
    result = scan(older_release, limits=ImageLimits(max_pixels=50_000))
    assert [p for p in result.problems] == [
        f"{big}: image too large: 300x200 pixels, over the limit of 50000"
    ]


# ---- text encodings -------------------------------------------------------------------------------------
def test_text_is_decoded_strictly_as_utf8_with_bom_and_an_encoding_option(older_release, tmp_path, capsys):
    path = older_release / "txt" / "ours_val.txt"
    record = sample(["Zoë", "wed", "Gus"], 553012, "/per/per/couple")
    path.write_bytes(b"\xef\xbb\xbf" + (repr(record) + "\n").encode("utf-8"))  # a BOM
    assert MNREDataset(older_release, "val", caption_source=None)[0].tokens[0] == "Zoë"
    latin = repr(sample(["Café", "wed", "Gus"], 553012, "/per/per/couple")) + "\n"
    path.write_bytes((repr(record) + "\n").encode("utf-8") + latin.encode("latin-1"))
    with pytest.raises(
        DataError, match=r"ours_val\.txt:2: not UTF-8 text: undecodable byte 0xe9 at byte 16 of the line"
    ):
        MNREDataset(older_release, "val", caption_source=None)
    rc, out, _ = run(capsys, "data", "validate", str(older_release))
    assert rc == 1 and f"problem: {path}:2: not UTF-8 text: undecodable byte 0xe9" in out
    assert "--encoding" in out

    path.write_bytes(latin.encode("latin-1"))
    ds = MNREDataset(older_release, "val", caption_source=None, encoding="latin-1")
    assert ds[0].tokens[0] == "Café"
    assert run(capsys, "data", "validate", str(older_release), "--encoding", "latin-1")[0] == 0
    out_dir = tmp_path / "utf8"
    assert run(capsys, "data", "convert", str(older_release), str(out_dir), "--encoding", "latin-1")[0] == 0
    assert "Café" in (out_dir / "val.jsonl").read_text(encoding="utf-8")
    assert MNREDataset(out_dir, "val", caption_source=None)[0].tokens[0] == "Café"

    js = tmp_path / "x.json"
    js.write_bytes(b'{"a": 1,\n "b": "\xff"}')
    with pytest.raises(
        DataError, match=r"x\.json:2: not UTF-8 text: undecodable byte 0xff at byte 8 of the line"
    ):
        read_json(js)
    js.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert read_json(js) == {"a": 1}
    assert [n for n, _ in iter_lines(path, "cp1252")] == [1]
    with pytest.raises(CamimError, match="unknown text encoding 'klingon'"):
        list(iter_lines(path, "klingon"))
    with pytest.raises(CamimError, match="not ASCII-compatible"):
        list(iter_lines(path, "utf-16"))


# ---- duplicate captions ---------------------------------------------------------------------------------
def test_duplicate_captions_last_wins_and_conflicts_are_warned(older_release, capsys):
    cap = older_release / "caption" / "minicpm_train.txt"
    cap.parent.mkdir()
    rows = [
        ("553009", "a first  text"),
        ("553010", "same"),
        ("553009", "a second text"),
        ("553010", "same"),
        ("553011", "x"),
    ]
    cap.write_text("".join(repr({"img_id": i, "text": t}) + "\n" for i, t in rows), encoding="utf-8")
    captions = read_captions(cap)
    assert captions.get("553009") == "a second text"  # the last one, as the released reader
    assert captions.conflicts == ["553009"]  # 553010 is repeated with the same text: not a conflict
    assert list(captions.texts) == ["553009", "553010", "553011"]
    ds = MNREDataset(older_release, "train", caption_source="minicpm")
    assert ds[0].caption == "a second text"
    rc, out, _ = run(capsys, "data", "validate", str(older_release))
    assert (
        f"warning: {cap}: 1 img_ids have several different captions, the last one is used (first: '553009')"
        in out
    )


# ---- modalities without a fallback ----------------------------------------------------------------------
def test_fallback_never_covers_an_image_the_model_needs(older_release):
    (older_release / "img_org" / "train" / "553010.png").unlink()
    lenient = MNREDataset(
        older_release, "train", caption_source=None, modalities=("image",), on_missing="fallback"
    )
    assert lenient[1].image is None and lenient.report["missing_image"] == 1  # the data layer's fallback
    with pytest.raises(DataError) as err:
        MNREDataset(
            older_release,
            "train",
            caption_source=None,
            modalities=("image",),
            on_missing="fallback",
            no_fallback={"image"},
        )
    assert str(err.value).startswith(
        f"{older_release / 'img_org' / 'train'}: 1 of 3 samples have no image file"
    )
    assert "first: '553010'" in str(err.value) and "on_missing='fallback' does not apply" in str(err.value)

    # the training data module refuses it up front for a model that needs the image (TMR, HVPNeT)
    from camim.models import ModelConfig
    from camim.training.config import RunConfig
    from camim.training.datamodule import MNREDataModule

    cfg = RunConfig(model=ModelConfig(name="tmr"))
    cfg.data.on_missing = "fallback"
    cfg.data.caption_source = None
    labels = default_labels(older_release)
    dm = MNREDataModule(cfg, str(older_release), labels, {"image", "scores"}, collate_fn=None)
    with pytest.raises(DataError, match="1 of 3 samples have no image file"):
        dm.dataset("train")
    assert DataLayout().image_dir == "img_org/{split}"

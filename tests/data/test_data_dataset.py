from __future__ import annotations

import pickle

import pytest

from camim.data import MODALITIES, DataLayout, LabelSet, MNREDataset, MNREExample
from camim.data.cli import convert
from camim.errors import DataError


def test_contract_one_api(tiny_mnre):
    ds = MNREDataset(tiny_mnre, split="train", labels=None, caption_source="minicpm", modalities=("caption",))
    assert len(ds) == 3 and isinstance(ds[0], MNREExample)
    assert ds.labels.names == ("None", "/per/per/peer", "/per/org/member_of")
    assert ds.labels.negative_id == 0 and ds.labels.negative_name == "None" and len(ds.labels) == 3
    ex = ds[1]
    assert (ex.index, ex.img_id, ex.relation, ex.label) == (1, "b.jpg", "/per/org/member_of", 2)
    assert ex.tokens == ["Carol", "joined", "ACME", "today"] and (ex.head.start, ex.head.end) == (0, 1)
    assert ex.caption == "a logo"
    assert all(getattr(ex, m) is None for m in ("scores", "phrase", "image", "objects", "generated_image"))
    assert ds[-1].index == 2 and ds[2].tokens[2] == '"quoted"'
    assert dict(ds.report) == {}
    with pytest.raises(IndexError):
        ds[3]


def test_all_modalities_and_picklable(tiny_mnre):
    ds = MNREDataset(tiny_mnre, "val", modalities=MODALITIES)
    ex = ds[0]
    assert ex.caption and ex.scores and ex.phrase and ex.image and ex.objects and ex.generated_image
    assert ex.generated_objects
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers receive a copy
    assert clone[1].phrase == ds[1].phrase and clone[1].scores == ds[1].scores


def test_caption_source_none_means_no_captions(tiny_mnre):
    ds = MNREDataset(tiny_mnre, "val", caption_source=None)
    assert ds[0].caption is None and "caption" not in ds.modalities


def test_argument_errors(tiny_mnre, tmp_path):
    with pytest.raises(ValueError, match="unknown modalities"):
        MNREDataset(tiny_mnre, "val", modalities=("sound",))
    with pytest.raises(ValueError, match="on_missing"):
        MNREDataset(tiny_mnre, "val", on_missing="ignore")
    with pytest.raises(DataError, match="no sample file for split 'dev'"):
        MNREDataset(tiny_mnre, "dev")
    with pytest.raises(DataError, match="data folder not found"):
        MNREDataset(tmp_path / "absent")


def test_on_error_skip_counts_lines(tiny_mnre):
    p = tiny_mnre / "txt" / "ours_train.txt"
    lines = p.read_text().splitlines()
    lines[1] = "{'token': []}"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ours_train.txt:2: tokens empty"):
        MNREDataset(tiny_mnre, "train")
    ds = MNREDataset(tiny_mnre, "train", on_error="skip", modalities=("caption", "phrase"))
    assert len(ds) == 2 and ds.report["skipped_lines"] == 1 and ds.problems[0].line == 2
    assert [ds[i].index for i in range(2)] == [0, 2]  # keys of the dictionaries stay aligned
    assert [ds[i].phrase for i in range(2)] == ["Alice met", "It's a"]


def test_labels_inferred_without_rel2id_and_override(tiny_mnre):
    (tiny_mnre / "ours_rel2id.json").unlink()
    ds = MNREDataset(tiny_mnre, "test")
    assert ds.labels.names == (
        "None",
        "/per/org/member_of",
        "/per/per/peer",
    )  # from all splits, not just test
    assert ds[0].label == 2
    ds = MNREDataset(tiny_mnre, "test", negative="/per/org/member_of")
    assert ds.labels.negative_id == 0 and ds.labels.names[0] == "/per/org/member_of"
    own = LabelSet.from_names(["None", "/per/per/peer"])
    assert MNREDataset(tiny_mnre, "test", labels=own)[0].label == 1
    with pytest.raises(DataError, match="unknown relation '/per/org/member_of'"):
        MNREDataset(tiny_mnre, "train", labels=own)


def test_custom_layout(tiny_mnre):
    (tiny_mnre / "img_org").rename(tiny_mnre / "photos")
    layout = DataLayout(image_dir="photos/{split}")
    assert MNREDataset(tiny_mnre, "test", modalities=("image",), layout=layout)[0].image.size == (40, 30)


def test_convert_roundtrip_reads_back_identically(tiny_mnre, tmp_path):
    out = tmp_path / "canonical"
    convert(tiny_mnre, out)
    assert (out / "train.jsonl").is_file() and (out / "caption" / "BLIP_train.jsonl").is_file()
    assert (out / "txt" / "mre_train_dict.json").is_file() and not (
        out / "txt" / "mre_train_dict.pth"
    ).exists()
    for name in ("img_org", "img_vg", "diffusion_pic"):
        (out / name).symlink_to(tiny_mnre / name)
    mods = ("caption", "scores", "phrase", "objects", "generated_objects")
    for split in ("train", "val", "test"):
        a = MNREDataset(tiny_mnre, split, modalities=mods, caption_source="llavanext")
        b = MNREDataset(out, split, modalities=mods, caption_source="llavanext")
        assert b.samples_path.suffix == ".jsonl" and b.caption_path.suffix == ".jsonl"
        for i in range(len(a)):
            x, y = a[i], b[i]
            for f in ("tokens", "head", "tail", "img_id", "label", "caption", "scores", "phrase", "index"):
                assert getattr(x, f) == getattr(y, f)
            assert [o.size for o in x.generated_objects] == [o.size for o in y.generated_objects]
    with pytest.raises(DataError, match="must differ"):
        convert(tiny_mnre, tiny_mnre)


def test_unlabelled_samples_when_allowed(tiny_mnre):
    p = tiny_mnre / "txt" / "ours_test.txt"
    p.write_text(p.read_text().replace(", 'relation': '/per/per/peer'", ""))
    with pytest.raises(DataError, match="ours_test.txt:1: relation missing"):
        MNREDataset(tiny_mnre, "test")
    ex = MNREDataset(tiny_mnre, "test", require_labels=False)[0]
    assert ex.relation is None and ex.label is None and ex.caption == ""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camim.captioning.cache import read_cache
from camim.captioning.released import (
    export_released,
    import_released,
    read_released_json,
    read_released_txt,
    source_of,
)
from camim.errors import CamimError, DataError

ROWS = [
    {"img_id": "a.jpg", "text": 'A man\'s "quoted" hat, café'},
    {"img_id": "b.png", "text": "\nstarts with a newline"},
    {"img_id": "c.jpg", "text": ""},
]


def _txt(path: Path, rows=ROWS, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(repr(r) + newline for r in rows).encode("utf-8"))
    return path


def test_source_names_from_file_names_and_aliases(tmp_path: Path):
    assert source_of("caption/BLIP_train.txt") == "blip2"
    assert source_of("x/caption_val.json") == "caption"
    assert source_of("minicpm_test.txt") == "minicpm"
    assert source_of("whatever.txt", source="qwenvl") == "caption"
    with pytest.raises(CamimError, match="pass --source"):
        source_of("mine.txt")
    with pytest.raises(CamimError, match="unknown caption source"):
        source_of("mine.txt", source="gpt")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_txt_import_export_is_byte_identical(tmp_path: Path, newline: str):
    src = _txt(tmp_path / "cogvlm_val.txt", newline=newline)
    out = tmp_path / "c.jsonl"
    report = import_released([src], out)
    assert (report.read, report.written) == (3, 3)
    records = read_cache(out).records
    assert [r.model for r in records] == ["cogvlm"] * 3
    assert records[0].settings["mllm"].startswith("CogVLM2") and records[0].prompt is None
    assert records[1].text == ROWS[1]["text"]
    assert import_released([src], out).written == 0  # importing twice changes nothing
    assert export_released(out, tmp_path / "back.txt") == 3
    assert (tmp_path / "back.txt").read_bytes() == src.read_bytes()
    export_released(out, tmp_path / "lf.txt", newline="\n")
    assert (tmp_path / "lf.txt").read_bytes() == src.read_bytes().replace(b"\r\n", b"\n")


def test_json_form_takes_extensions_from_its_txt_twin(tmp_path: Path):
    as_json = {Path(r["img_id"]).stem: r["text"] for r in ROWS}
    (tmp_path / "llavanext_test.json").write_text(json.dumps(as_json))
    alone = read_released_json(tmp_path / "llavanext_test.json")
    assert [r.img_id for r in alone] == ["a.jpg", "b.jpg", "c.jpg"]  # no twin: --image-ext
    _txt(tmp_path / "llavanext_test.txt", newline="\r\n")
    out = tmp_path / "c.jsonl"
    import_released([tmp_path / "llavanext_test.json"], out)
    assert [r.img_id for r in read_cache(out).records] == ["a.jpg", "b.png", "c.jpg"]
    export_released(out, tmp_path / "back.json")
    assert (tmp_path / "back.json").read_bytes() == (tmp_path / "llavanext_test.json").read_bytes()
    export_released(out, tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_bytes() == (tmp_path / "llavanext_test.txt").read_bytes()


def test_bad_released_files_name_file_and_line(tmp_path: Path):
    bad = tmp_path / "minicpm_train.txt"
    bad.write_text("{'img_id': 'a.jpg', 'text': 'ok'}\n{'img_id': 'b.jpg', 'text': oops}\n")
    with pytest.raises(DataError, match=r"minicpm_train\.txt:2: "):
        import_released([bad], tmp_path / "c.jsonl")
    bad.write_text("{'img_id': 'a.jpg', 'text': 'ok'}\n{'img_id': 'b.jpg'}\n")
    with pytest.raises(DataError, match=r"minicpm_train\.txt:2: expected"):
        import_released([bad], tmp_path / "c.jsonl")
    bad_json = tmp_path / "minicpm_val.json"
    bad_json.write_text('{"a": "x",\n "b": 3}')
    with pytest.raises(DataError, match="minicpm_val.json"):
        import_released([bad_json], tmp_path / "c.jsonl")
    bad_json.write_text('{"a": "x",\n "b" "y"}')
    with pytest.raises(DataError, match=r"minicpm_val\.json:2: not JSON"):
        import_released([bad_json], tmp_path / "c.jsonl")


def test_export_needs_a_model_when_several_are_present(tmp_path: Path):
    out = tmp_path / "c.jsonl"
    import_released([_txt(tmp_path / "BLIP_val.txt"), _txt(tmp_path / "instruct_val.txt")], out)
    with pytest.raises(CamimError, match="several models"):
        export_released(out, tmp_path / "x.txt")
    with pytest.raises(CamimError, match="no captions of model 'gpt'"):
        export_released(out, tmp_path / "x.txt", model="gpt")
    assert export_released(out, tmp_path / "x.txt", model="blip2") == 3
    with pytest.raises(CamimError, match=".txt and .json"):
        export_released(out, tmp_path / "x.csv", model="blip2")


SETS = {
    "BLIP": "blip2",
    "instruct": "instruct",
    "llavanext": "llavanext",
    "caption": "caption",
    "cogvlm": "cogvlm",
    "minicpm": "minicpm",
}


@pytest.mark.integration
def test_released_sets_round_trip_byte_for_byte(mnre_dir: Path, tmp_path: Path):
    """All six released sets of the val split (.txt, and .json where released) -> JSONL -> released form."""
    caption_dir = mnre_dir / "caption"
    files = sorted(caption_dir.glob("*_val.txt")) + sorted(caption_dir.glob("*_val.json"))
    assert len(files) == 9
    out = tmp_path / "val.jsonl"
    report = import_released(files, out)
    assert report.written == 6 * 932  # the .json twins add nothing new
    contents = read_cache(out)
    assert not contents.bad_lines and len(contents.records) == 6 * 932
    for prefix, model in SETS.items():
        for suffix in (".txt", ".json"):
            original = caption_dir / f"{prefix}_val{suffix}"
            if original.exists():
                back = tmp_path / original.name
                assert export_released(out, back, model=model) == 932
                assert back.read_bytes() == original.read_bytes(), original.name


@pytest.mark.integration
def test_the_data_layer_reads_imported_captions_like_the_released_file(mnre_dir: Path, tmp_path: Path):
    """Contract 1: a JSONL written here gives MNREDataset the same captions as the released .txt."""
    from camim.data import MNREDataset

    data = tmp_path / "data"
    (data / "caption").mkdir(parents=True)
    (data / "txt").symlink_to(mnre_dir / "txt")
    (data / "ours_rel2id.json").symlink_to(mnre_dir / "ours_rel2id.json")
    caption_dir = mnre_dir / "caption"
    import_released(
        [caption_dir / "minicpm_val.txt", caption_dir / "BLIP_val.txt"], data / "caption" / "mine_val.jsonl"
    )
    ours = MNREDataset(data, "val", caption_source="mine", caption_model="minicpm")
    released = MNREDataset(mnre_dir, "val", caption_source="minicpm")
    assert len(ours) == len(released) == 1624
    assert [ours[i].caption for i in range(len(ours))] == [released[i].caption for i in range(len(released))]
    blip = MNREDataset(data, "val", caption_source="mine", caption_model="blip2")
    assert (
        blip[0].caption == MNREDataset(mnre_dir, "val", caption_source="blip2")[0].caption != ours[0].caption
    )


def test_import_keeps_the_last_of_duplicate_captions_and_warns(tmp_path: Path, capsys):
    """The data layer's rule (the last caption of an image wins) in `camim caption import` too; conflicting
    duplicates are counted and reported."""
    from camim.captioning.cli import main
    from camim.data import read_captions

    rows = [
        {"img_id": "a.jpg", "text": "first"},
        {"img_id": "b.jpg", "text": "same"},
        {"img_id": "a.jpg", "text": "second"},
        {"img_id": "b.jpg", "text": "same"},
    ]
    src = _txt(tmp_path / "minicpm_train.txt", rows)
    out = tmp_path / "c.jsonl"
    assert main(["caption", "import", str(src), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"warning: {src}: 1 img_ids have several different captions, the last one is used (first: 'a.jpg')"
        in printed
    )
    assert "4 captions read, 2 written" in printed
    imported = {r.img_id: r.text for r in read_cache(out).records}
    assert imported == {"a.jpg": "second", "b.jpg": "same"} == read_captions(src).texts
    assert read_captions(out).texts == imported
    (tmp_path / "latin").mkdir()
    legacy = tmp_path / "latin" / "minicpm_val.txt"
    legacy.write_bytes(repr({"img_id": "x.jpg", "text": "café"}).encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"minicpm_val\.txt:1: not UTF-8 text"):
        import_released([legacy], tmp_path / "l.jsonl")
    assert (
        main(
            ["caption", "import", str(legacy), "--output", str(tmp_path / "l.jsonl"), "--encoding", "latin-1"]
        )
        == 0
    )
    assert read_cache(tmp_path / "l.jsonl").records[0].text == "café"


def test_import_warns_on_captions_that_differ_across_files_as_validate_does(tmp_path: Path, capsys):
    """Of two files captioning the same image differently, import keeps the first (.txt before .json; then
    the order given; the output's own caption before any file's) and warns with `camim data validate`'s
    words for the same pair; texts equal up to whitespace are not a difference."""
    from tests.training.conftest import write_tiny_mnre

    from camim.cli import main

    data = write_tiny_mnre(tmp_path / "data", n_train=4, n_eval=2)
    txt = data / "caption" / "minicpm_train.txt"
    rows = [{"img_id": r.img_id, "text": r.text} for r in read_released_txt(txt)]
    texts = {Path(r["img_id"]).stem: r["text"] for r in rows}
    texts["train_1"] = "another caption"  # differs
    texts["train_2"] = "  " + texts["train_2"].replace(" ", "   ") + "\n"  # whitespace only: the same
    json_file = data / "caption" / "minicpm_train.json"
    json_file.write_text(json.dumps(texts))
    assert main(["data", "validate", str(data)]) in (0, 1)
    validate = [ln for ln in capsys.readouterr().out.splitlines() if "captions differ" in ln]
    assert validate == [f"warning: {json_file}: 1 captions differ from {txt}"]
    out = tmp_path / "c.jsonl"
    assert main(["caption", "import", str(json_file), str(txt), "--output", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [ln for ln in printed if "captions differ" in ln] == [
        f"{validate[0]}, whose captions are kept (first: 'train_1.jpg')"
    ]
    imported = {r.img_id: r.text for r in read_cache(out).records}
    assert imported == {r["img_id"]: r["text"] for r in rows}  # the .txt's captions: the first kept
    # a second .txt after the first, and the output itself as the earlier source
    other = _txt(tmp_path / "other" / "minicpm_train.txt", [{"img_id": "train_0.jpg", "text": "changed"}])
    report = import_released([other], out)
    assert report.written == 0 and report.differ == {str(other): {str(out): ["train_0.jpg"]}}
    assert f"warning: {other}: 1 captions differ from {out}, whose captions are kept" in report.summary()
    assert read_cache(out).latest()["train_0.jpg"].text == rows[0]["text"]

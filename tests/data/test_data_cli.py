from __future__ import annotations

import json

import pytest

from camim.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_inspect_json(tiny_mnre, capsys):
    rc, out, _ = run(capsys, "data", "inspect", str(tiny_mnre), "--json")
    assert rc == 0
    s = json.loads(out)
    assert s["num_labels"] == 3 and s["negative"] == "None"
    assert {k: v["samples"] for k, v in s["splits"].items()} == {"train": 3, "val": 2, "test": 1}
    train = s["splits"]["train"]
    assert train["images"] == 2 and train["labels"] == 3 and train["negative_share"] == pytest.approx(1 / 3)
    assert train["label_distribution"] == {"/per/org/member_of": 1, "/per/per/peer": 1, "None": 1}
    assert set(s["captions"]) == {"minicpm", "caption", "cogvlm", "llavanext", "instruct", "blip2"}
    assert s["captions"]["minicpm"]["coverage"] == 1.0
    # minicpm words: a.jpg "two people shaking hands" 4, b 2, c 2, d 2, e 0 -> 10 / 5 images
    assert s["captions"]["minicpm"]["mean_words"] == pytest.approx(2.0)
    assert s["captions"]["blip2"]["empty"] == 1 and train["captions"]["blip2"]["unused"] == 1
    for key in ("scores", "objects", "phrases", "images", "generated_images"):
        assert s[key]["coverage"] == 1.0, key
    assert train["generated_boxes"]["degenerate"] == 3 and s["problems"] == 0


def test_inspect_text(tiny_mnre, capsys):
    rc, out, _ = run(capsys, "data", "inspect", str(tiny_mnre))
    assert rc == 0
    assert "labels: 3 (negative: None)" in out
    row = next(line for line in out.splitlines() if line.startswith("train "))
    assert row.split()[:4] == ["train", "3", "2", "3"]


def test_validate_clean_then_broken(tiny_mnre, capsys):
    rc, out, _ = run(capsys, "data", "validate", str(tiny_mnre))
    assert rc == 0 and "clean (6 samples" in out and "degenerate boxes" in out
    (tiny_mnre / "txt" / "ours_val.txt").write_text(
        "{'token': ['a'], 'h': {'name': 'a', 'pos': [0, 1]}}\n" * 2
    )
    (tiny_mnre / "txt" / "test_weight_weak.txt").write_text("e.jpg\t0.5\n")
    (tiny_mnre / "caption" / "cogvlm_train.txt").write_text(
        "{'img_id': 'a.jpg', 'text': 'x'}\n{'img_id': 'b.jpg'}\n"
    )
    (tiny_mnre / "img_org" / "train" / "b.jpg").write_bytes(b"junk")
    (tiny_mnre / "img_vg" / "test" / "crops" / "0_crop_1.png").unlink()
    rc, out, _ = run(capsys, "data", "validate", str(tiny_mnre))
    assert rc == 1
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    text = "\n".join(problems)
    assert "ours_val.txt:1: tail entity 't' missing" in text and "ours_val.txt:2:" in text
    assert "test_weight_strong.txt:1: strong + weak != 1" in text
    assert "cogvlm_train.txt:2: caption 'text' missing" in text
    assert "cogvlm_train.txt: no caption for 1 of 3 samples" in text
    assert "b.jpg: unreadable image" in text
    assert "1 of 2 crops missing (first: 0_crop_1.png)" in text
    assert f"{len(problems)} problems" in out.splitlines()[-1]


def test_validate_limits_listing(tiny_mnre, capsys):
    (tiny_mnre / "txt" / "ours_train.txt").write_text("[]\n" * 5)
    rc, out, _ = run(capsys, "data", "validate", str(tiny_mnre), "--max-problems", "2")
    assert rc == 1 and "... and" in out and sum(line.startswith("problem:") for line in out.splitlines()) == 2


def test_missing_folder_is_one_line_error(tmp_path, capsys):
    rc, out, err = run(capsys, "data", "inspect", str(tmp_path / "nope"))
    assert rc == 1 and err.startswith("camim: error: ") and "data folder not found" in err
    assert "Traceback" not in err


def test_convert_command(tiny_mnre, tmp_path, capsys):
    rc, out, _ = run(capsys, "data", "convert", str(tiny_mnre), str(tmp_path / "c"))
    assert rc == 0 and "wrote" in out
    rc, out, _ = run(capsys, "data", "validate", str(tmp_path / "c"), "--no-image-check")
    assert rc == 0, out


def test_inspect_discovers_new_caption_sources(tiny_mnre, capsys):
    (tiny_mnre / "caption" / "qwen25vl_train.jsonl").write_text(
        '{"img_id": "a.jpg", "text": "x y z"}\n{"img_id": "b.jpg", "text": "w"}\n'
    )
    rc, out, _ = run(capsys, "data", "inspect", str(tiny_mnre), "--json", "--no-image-check")
    s = json.loads(out)
    assert s["splits"]["train"]["captions"]["qwen25vl"] == {
        "file": str(tiny_mnre / "caption" / "qwen25vl_train.jsonl"),
        "coverage": 1.0,
        "mean_words": 2.0,
        "empty": 0,
        "unused": 0,
    }
    assert s["captions"]["qwen25vl"]["coverage"] == 0.5  # 3 of the 6 samples (val/test have no file)

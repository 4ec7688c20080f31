"""``camim predict``: the JSONL file form (bad lines, order, resume) and the single-example form."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest

from camim.errors import CamimError
from camim.inference import cli

from .conftest import draw

POST_TOKENS = (
    "RT @cnnsport : Tennis star Rafael Nadal gets engaged to girlfriend of 14 years , Mery Perello".split()
)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="camim")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def input_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    draw(1).save(images / "a.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"not an image")
    lines = [
        {"token": POST_TOKENS, "h": {"name": "Rafael Nadal", "pos": [5, 7]}, "t": {"name": "Mery Perello", "pos": [15, 17]},
         "img_id": "a.jpg", "relation": "/per/per/couple"},
        "{'token': ['a'], 'h': {'pos': [0, 1]}}",  # a Python literal, not JSON
        {"token": ["jack", "plays", "titans"], "h": {"name": "jack", "pos": [0, 1]}, "t": {"pos": [2, 9]}, "img_id": "a.jpg"},
        "",
        {"text": "the festival was held in london", "h": {"pos": [4, 12]}, "t": {"pos": [25, 31]}, "caption": "a crowd"},
        {"token": ["jack", "plays", "titans"], "h": {"pos": [0, 1]}, "t": {"pos": [2, 3]}, "image": "corrupt.jpg"},
        {"token": ["mery", "married", "nadal"], "h": {"pos": [0, 1]}, "t": {"pos": [2, 3]}, "img_id": "missing.jpg"},
        {"token": ["mery", "married", "nadal"], "h": {"pos": [0, 1]}, "t": {"pos": [2, 3]}},
    ]  # fmt: skip
    path = tmp_path / "in.jsonl"
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8"
    )
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_predict_file_reports_bad_lines_and_writes_the_rest(
    bert_run, bert_predictor, input_file, tmp_path, capsys
):
    out = tmp_path / "out.jsonl"
    argv = ["predict", "--model", str(bert_run.path), "--input", str(input_file), "--output", str(out)]
    argv += ["--image-dir", str(tmp_path / "images"), "--batch-size", "2"]
    assert run(argv) == 1  # some lines failed
    err = capsys.readouterr().err
    records = read_jsonl(out)
    assert [r["line"] for r in records] == [1, 2, 3, 5, 6, 7, 8]  # every non-blank line, in order
    by_line = {r["line"]: r for r in records}
    assert f"{input_file}:2: invalid JSON" in by_line[2]["error"]
    assert f"{input_file}:3: tail: token span [2, 9) is outside the post's 3 tokens" in by_line[3]["error"]
    assert f"{input_file}:6:" in by_line[6]["error"] and "not a readable image" in by_line[6]["error"]
    assert f"{input_file}:7: image" in by_line[7]["error"] and "missing.jpg not found" in by_line[7]["error"]
    for n in (2, 3, 6, 7):
        assert by_line[n]["error"] in err
    assert "3 prediction(s), 4 failed line(s)" in err

    expected = bert_predictor.predict(POST_TOKENS, (5, 7), (15, 17))
    assert by_line[1]["relation"] == expected.relation
    assert by_line[1]["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert by_line[1]["gold"] == "/per/per/couple"
    assert by_line[5]["head"] == {"name": "festival", "pos": [1, 2]}  # with "text", pos counts characters
    assert by_line[5]["tail"] == {"name": "london", "pos": [5, 6]}
    assert by_line[5]["caption"] == "a crowd"
    assert (
        by_line[8]["relation"]
        == bert_predictor.predict(["mery", "married", "nadal"], (0, 1), (2, 3)).relation
    )


def same_records(a, b):
    ra, rb = read_jsonl(a), read_jsonl(b)
    assert [r["line"] for r in ra] == [r["line"] for r in rb]
    for x, y in zip(ra, rb):
        assert (
            x.keys() == y.keys()
            and x.get("error") == y.get("error")
            and x.get("relation") == y.get("relation")
        )
        if "probability" in x:
            assert x["probability"] == pytest.approx(y["probability"], abs=1e-5)


def test_predict_file_resumes_after_interruption(bert_run, input_file, tmp_path, capsys):
    argv = ["predict", "--model", str(bert_run.path), "--input", str(input_file)]
    argv += ["--image-dir", str(tmp_path / "images")]
    full = tmp_path / "full.jsonl"
    run([*argv, "--output", str(full)])
    complete = full.read_text(encoding="utf-8")

    partial = tmp_path / "partial.jsonl"
    lines = complete.splitlines(keepends=True)
    partial.write_text("".join(lines[:3]) + lines[3][:17], encoding="utf-8")  # killed mid-write of line 4
    capsys.readouterr()
    run([*argv, "--output", str(partial)])
    same_records(partial, full)  # batches differ after resuming: probabilities agree to float precision
    err = capsys.readouterr().err
    assert f"resuming {partial}: 3 line(s) already done (2 with an error record); cut off 1 torn line" in err
    assert (
        "3 prediction(s), 4 failed line(s) (2 predicted and 2 failed in this run, 1 torn line cut off)" in err
    )
    assert partial.read_text(encoding="utf-8").splitlines()[:3] == complete.splitlines()[:3]

    run([*argv, "--output", str(partial), "--overwrite"])
    assert partial.read_text(encoding="utf-8") == complete

    (tmp_path / "foreign.jsonl").write_text("hello\n")
    with pytest.raises(CamimError, match="foreign.jsonl:1: not a camim predictions line"):
        run([*argv, "--output", str(tmp_path / "foreign.jsonl")])


def test_a_rerun_counts_the_error_records_it_holds_and_retry_failed_predicts_them(
    bert_run, input_file, tmp_path, capsys
):
    """Issue 36: a rerun said "0 prediction(s), 0 failed" and exited 0 with an error record in the output."""
    images = tmp_path / "images"
    argv = ["predict", "--model", str(bert_run.path), "--input", str(input_file), "--image-dir", str(images)]
    argv += ["--batch-size", "4", "--output"]
    out = tmp_path / "out.jsonl"
    assert run([*argv, str(out)]) == 1
    first = out.read_bytes()
    capsys.readouterr()
    assert run([*argv, str(out)]) == 1  # nothing changed: the error records are still there
    err = capsys.readouterr().err
    assert "3 prediction(s), 4 failed line(s) (0 predicted and 0 failed in this run)" in err
    assert "failed input line(s): 2, 3, 6, 7 (--retry-failed predicts them again)" in err
    assert out.read_bytes() == first
    shutil.copy(images / "a.jpg", images / "missing.jpg")  # line 7's image restored
    assert run([*argv, str(out)]) == 1  # a plain rerun does not predict done lines again
    assert run([*argv, str(out), "--retry-failed"]) == 1  # lines 2, 3 and 6 still fail
    err = capsys.readouterr().err
    assert "predicting the 4 failed line(s) again (--retry-failed)" in err
    assert "4 prediction(s), 3 failed line(s) (1 predicted and 3 failed in this run)" in err
    assert "failed input line(s): 2, 3, 6 (" in err
    fresh = tmp_path / "fresh.jsonl"
    assert run([*argv, str(fresh)]) == 1
    same_records(out, fresh)  # line 7 predicted in its place, the records in input-line order
    assert read_jsonl(out)[5]["line"] == 7 and "relation" in read_jsonl(out)[5]
    shutil.copy(images / "a.jpg", tmp_path / "corrupt.jpg")
    assert run([*argv, str(out), "--retry-failed"]) == 1  # line 6 fixed; 2 and 3 are bad input lines
    assert "failed input line(s): 2, 3 (" in capsys.readouterr().err
    assert [r["line"] for r in read_jsonl(out)] == [1, 2, 3, 5, 6, 7, 8]
    with pytest.raises(CamimError, match="--retry-failed needs --input and the --output"):
        run(["predict", "--model", str(bert_run.path), "--input", str(input_file), "--retry-failed"])


def test_predict_refuses_an_output_that_is_the_input(bert_run, input_file, tmp_path):
    before = input_file.read_bytes()
    argv = ["predict", "--model", str(bert_run.path), "--input", str(input_file), "--overwrite"]
    for same in (
        input_file,
        tmp_path / "." / input_file.name,
        tmp_path / "link.jsonl",
        tmp_path / "hard.jsonl",
    ):
        if same.name == "link.jsonl":
            same.symlink_to(input_file)
        elif same.name == "hard.jsonl":
            os.link(input_file, same)
        with pytest.raises(CamimError, match="--output is the --input file"):
            run([*argv, "--output", str(same)])
        assert input_file.read_bytes() == before  # nothing emptied


def test_predict_refuses_to_resume_an_output_made_for_another_input(bert_run, input_file, tmp_path):
    argv = ["predict", "--model", str(bert_run.path), "--image-dir", str(tmp_path / "images")]
    out = tmp_path / "out.jsonl"
    run([*argv, "--input", str(input_file), "--output", str(out), "--limit", "3"])
    records = read_jsonl(out)
    assert all(len(r["input_sha256"]) == 16 for r in records)
    other = tmp_path / "other.jsonl"
    lines = input_file.read_text(encoding="utf-8").splitlines(keepends=True)
    other.write_text(lines[2] + lines[1] + lines[0] + "".join(lines[3:]), encoding="utf-8")  # same size
    assert other.stat().st_size == input_file.stat().st_size
    written = out.read_bytes()
    with pytest.raises(
        CamimError, match=r"out\.jsonl:1: this output belongs to another input file .*other\.jsonl:1"
    ):
        run([*argv, "--input", str(other), "--output", str(out)])
    assert out.read_bytes() == written  # untouched
    short = tmp_path / "short.jsonl"
    short.write_text(lines[0], encoding="utf-8")
    with pytest.raises(CamimError, match="is for line 2, but .*short.jsonl has only 1 lines"):
        run([*argv, "--input", str(short), "--output", str(out)])
    # the same input (appended to) resumes; --overwrite starts afresh for the other one
    with input_file.open("a", encoding="utf-8") as fh:
        fh.write(lines[0])
    assert run([*argv, "--input", str(input_file), "--output", str(out)]) == 1
    assert [r["line"] for r in read_jsonl(out)] == [1, 2, 3, 5, 6, 7, 8, 9]
    run([*argv, "--input", str(other), "--output", str(out), "--overwrite"])
    assert (
        read_jsonl(out)[0]["line"] == 1 and read_jsonl(out)[0]["input_sha256"] != records[0]["input_sha256"]
    )
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(json.dumps({"line": 1, "relation": "None"}) + "\n")
    with pytest.raises(CamimError, match="has no hash of its input line"):
        run([*argv, "--input", str(input_file), "--output", str(legacy)])


def test_predict_decodes_its_input_strictly_with_an_encoding_option(bert_run, tmp_path, capsys):
    post = {"token": ["café", "married", "nadal"], "h": {"pos": [0, 1]}, "t": {"pos": [2, 3]}}
    path = tmp_path / "latin.jsonl"
    ok = json.dumps({**post, "token": ["jack", "plays", "titans"]}) + "\n"
    path.write_bytes(ok.encode() + (json.dumps(post, ensure_ascii=False) + "\n").encode("latin-1"))
    out = tmp_path / "out.jsonl"
    argv = ["predict", "--model", str(bert_run.path), "--input", str(path), "--output", str(out)]
    with pytest.raises(
        CamimError, match=r"latin\.jsonl:2: not UTF-8 text: undecodable byte 0xe9 .*--encoding"
    ):
        run(argv)
    assert not out.exists()  # refused before anything was written (no U+FFFD predictions)
    assert run([*argv, "--encoding", "latin-1"]) == 0
    assert [r["head"]["name"] for r in read_jsonl(out)] == ["jack", "café"]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + ok.encode())
    assert (
        run(
            [
                "predict",
                "--model",
                str(bert_run.path),
                "--input",
                str(bom),
                "--output",
                str(tmp_path / "b.jsonl"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize("broken", ["model.safetensors", "tokenizer.json", "encoders"])
def test_a_corrupt_model_file_is_a_one_line_error_naming_it(bert_run, tmp_path, capsys, broken):
    from camim.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(bert_run.path, run_dir)
    model = run_dir / "model"
    if broken == "model.safetensors":
        target = model / broken
        target.write_bytes(target.read_bytes()[:100])  # truncated download
    elif broken == "tokenizer.json":
        target = model / broken
        target.write_text('{"version": "1.0", "truncation"', encoding="utf-8")
    else:
        target = next((model / "encoders").iterdir()) / "config.json"
        target.write_bytes(b"\x00\x01not json")
    argv = ["--text", "jack plays titans", "--head", "jack", "--tail", "titans"]
    assert main(["predict", "--model", str(run_dir), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"camim: error: {target}: ") and err.count("\n") == 1 and "Traceback" not in err
    data = tmp_path / "data"
    (data / "txt").mkdir(parents=True)
    (data / "txt" / "ours_test.txt").write_text(repr({**json.loads(json.dumps({"token": ["a", "b", "c"]})), "h": {"name": "a", "pos": [0, 1]}, "t": {"name": "c", "pos": [2, 3]}, "img_id": 1, "relation": "None"}) + "\n")  # fmt: skip
    assert (
        main(["evaluate", "--model", str(run_dir), "--data-dir", str(data), "--caption-source", "none"]) == 1
    )
    err = capsys.readouterr().err
    assert err.startswith(f"camim: error: {target}: ") and err.count("\n") == 1


def test_predict_single_form(bert_run, bert_predictor, tmp_path, capsys):
    image = tmp_path / "p.png"
    draw(2).save(image)
    text = " ".join(POST_TOKENS)
    argv = [
        "predict",
        "--model",
        str(bert_run.path),
        "--text",
        text,
        "--head",
        "Rafael Nadal",
        "--tail",
        "15:17",
    ]
    assert run([*argv, "--image", str(image), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = bert_predictor.predict(text, "Rafael Nadal", (15, 17))
    assert result["relation"] == expected.relation
    assert result["tail"] == {"name": "Mery Perello", "pos": [15, 17]}
    assert run(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"{expected.relation}\t{expected.probability:.4f}"
    with pytest.raises(CamimError, match="head: mention 'Federer' does not occur"):
        run(
            ["predict", "--model", str(bert_run.path), "--text", text, "--head", "Federer", "--tail", "15:17"]
        )
    with pytest.raises(CamimError, match="give --input"):
        run(["predict", "--model", str(bert_run.path)])


@pytest.mark.integration
def test_predict_on_released_mnre_txt(mnre_dir, bert_run, tmp_path, capsys):
    """MNRE's own txt/ours_test.txt (Python literals, real tweets) goes through `camim predict` unchanged."""
    import ast

    source = mnre_dir / "txt" / "ours_test.txt"
    out = tmp_path / "mnre.jsonl"
    argv = ["predict", "--model", str(bert_run.path), "--input", str(source), "--output", str(out)]
    assert run([*argv, "--limit", "25"]) == 0
    records = read_jsonl(out)
    lines = source.read_text(encoding="utf-8").splitlines()[:25]
    assert [r["line"] for r in records] == list(range(1, 26))
    for rec, line in zip(records, lines):
        sample = ast.literal_eval(line)
        assert rec["head"]["pos"] == sample["h"]["pos"] and rec["tail"]["pos"] == sample["t"]["pos"]
        assert rec["gold"] == sample["relation"]
    assert "25 prediction(s), 0 failed" in capsys.readouterr().err

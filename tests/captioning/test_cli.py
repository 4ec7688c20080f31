from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camim.captioning.cache import read_cache
from camim.captioning.cli import main
from camim.captioning.testing import FakeChatServer, expected_caption

from .conftest import draw_images, wait_for_lines


def _cli(*args: str) -> list[str]:
    # the caption commands alone, so that this test does not depend on the other command groups
    return [sys.executable, "-m", "camim.captioning.cli", "caption", *args]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_run_killed_halfway_resumes_with_no_duplicates_and_nothing_lost(tmp_path: Path, sig: int, capsys):
    items = draw_images(tmp_path / "images", 40)
    out = tmp_path / "captions.jsonl"
    # 0.3 s a request: 40 images at concurrency 4 take ~3 s, so the signal lands mid-run even on a busy machine
    with FakeChatServer(delay=0.3) as server:
        args = ["--images", str(tmp_path / "images"), "--base-url", server.base_url, "--model", "m"]
        args += ["--output", str(out), "--concurrency", "4", "--no-progress"]
        env = {**os.environ, "OPENAI_API_KEY": ""}
        proc = subprocess.Popen(
            _cli(*args),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # a terminal's Ctrl-C: undo an inherited SIG_IGN (a shell's background jobs ignore SIGINT)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        wait_for_lines(out, 8, proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
        if sig == signal.SIGINT:  # Ctrl-C
            assert proc.returncode == 130 and b"rerun to resume" in stderr
        else:
            assert proc.returncode == -signal.SIGKILL
        after_kill = read_cache(out)
        assert not after_kill.partial_tail and not after_kill.bad_lines
        done = {r.img_id for r in after_kill.records}
        assert 8 <= len(done) < 40
        time.sleep(0.3)  # let the server finish the requests the dead client left behind
        rerun_start = time.perf_counter()
        assert main(["caption", *args]) == 0  # the same command again, in this process
        printed = capsys.readouterr().out
        assert f"{40 - len(done)} captioned now" in printed and f"{len(done)} already cached" in printed
        resent = [r for r in server.requests if r.started >= rerun_start]
    # the rerun asked only for the images without a caption
    assert len(resent) == 40 - len(done)
    by_caption = {expected_caption(i.path): i.img_id for i in items}
    final = read_cache(out)
    ids = [r.img_id for r in final.records]
    assert len(ids) == len(set(ids)) == 40  # no duplicates, none lost
    assert all(by_caption[r.text] == r.img_id for r in final.records)


def test_cli_errors_are_one_line(tmp_path: Path, capsys):
    assert main(["caption", "--images", str(tmp_path), "--model", "m"]) == 1
    assert capsys.readouterr().err == "camim: error: camim caption needs --model and --output\n"
    assert main(["caption", "--model", "m", "--output", "x.jsonl"]) == 1
    assert "--data-dir DIR --split SPLIT, or --images DIR" in capsys.readouterr().err
    assert main(["caption", "export", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "x.txt")]) == 1
    err = capsys.readouterr().err
    assert "no captions" in err and err.count("\n") == 1
    assert (
        main(["caption", "--images", str(tmp_path), "--model", "m", "--output", "x", "--concurrency", "0"])
        == 1
    )
    assert "concurrency must be >= 1" in capsys.readouterr().err


def test_camim_caption_from_a_split_folder(tmp_path: Path, capsys):
    """``camim caption --data-dir D --split S``: the split's distinct img_ids, images under img_org/{split}/."""
    from camim.cli import main  # the real ``camim`` entry point

    data = tmp_path / "data"
    items = draw_images(data / "img_org" / "val", 3)
    (data / "txt").mkdir()
    ids = [items[0].img_id, items[1].img_id, items[0].img_id, "lost.jpg", items[2].img_id]
    lines = [
        repr(
            {
                "token": ["a", "b"],
                "h": {"name": "a", "pos": [0, 1]},
                "t": {"name": "b", "pos": [1, 2]},
                "img_id": i,
                "relation": "None",
            }
        )
        for i in ids
    ]
    (data / "txt" / "ours_val.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "val.jsonl"
    with FakeChatServer() as server:
        args = ["caption", "--data-dir", str(data), "--split", "val", "--base-url", server.base_url]
        rc = main([*args, "--model", "m", "--output", str(out), "--no-progress", "--prompt", "Describe."])
        assert rc == 0 and len(server.requests) == 3 and server.requests[0].prompt == "Describe."
    printed = capsys.readouterr().out
    assert "4 images: 3 captioned now" in printed and "1 missing" in printed and "lost.jpg" in printed
    records = read_cache(out).records
    assert sorted(r.img_id for r in records) == sorted(i.img_id for i in items)  # lost.jpg: missing
    assert all(r.text == expected_caption(data / "img_org" / "val" / r.img_id) for r in records)
    (data / "txt" / "ours_val.txt").write_text(lines[0] + "\n{'token': [\n")
    assert main([*args[:5], "--model", "m", "--output", str(out)]) == 1
    assert "ours_val.txt:2: " in capsys.readouterr().err  # a bad sample line: file and line, no traceback


def test_import_and_export_commands(tmp_path: Path, capsys):
    src = tmp_path / "instruct_test.txt"
    src.write_text("{'img_id': 'a.jpg', 'text': 'a dog'}\n{'img_id': 'b.jpg', 'text': 'a cat'}\n")
    out = tmp_path / "c.jsonl"
    assert main(["caption", "import", str(src), "--output", str(out)]) == 0
    assert "2 written" in capsys.readouterr().out
    assert (
        main(["caption", "export", str(out), "--output", str(tmp_path / "back.txt"), "--newline", "crlf"])
        == 0
    )
    assert (tmp_path / "back.txt").read_bytes() == src.read_bytes().replace(b"\n", b"\r\n")


def test_a_bad_sample_line_of_a_split_is_named_as_the_data_layer_names_it(tmp_path: Path):
    """The split's sample file is parsed as ``camim.data`` parses it: a JSONL syntax error is reported as
    one (not as a bad Python literal), with file and line."""
    from camim.captioning.images import split_image_ids
    from camim.errors import DataError

    data = tmp_path / "data"
    data.mkdir()
    (data / "val.jsonl").write_text('{"img_id": "a.jpg"}\n{"img_id": "b.jpg", oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"val\.jsonl:2: syntax error: Expecting property name"):
        split_image_ids(data, "val")
    (data / "val.jsonl").write_text('{"img_id": "a.jpg"}\n{"img_id": 553009}\n', encoding="utf-8")
    assert split_image_ids(data, "val") == ["a.jpg", "553009"]


@pytest.mark.parametrize(
    "refusal, said",
    [
        (
            {
                "refusal": (
                    400,
                    {"error": {"message": "The prompt has 2008 tokens, but the model takes at most 256"}},
                )
            },
            "HTTP 400, model 'm': \"The prompt has 2008 tokens, but the model takes at most 256\"",
        ),
        (
            {"api_key": "right"},
            "HTTP 401 (the API key was rejected), model 'm': \"Incorrect API key provided\"",
        ),
        (
            {"models": {"other"}},
            "HTTP 404 (unknown model or endpoint), model 'm': \"The model `m` does not exist.\"",
        ),
    ],
)
def test_caption_stops_on_refusals_in_its_words_keeps_the_cache_and_resumes(
    tmp_path: Path, capsys, monkeypatch, refusal: dict, said: str
):
    """`camim caption` against a server that refuses what retrying cannot fix: one line in the server's words
    after --max-refusals (3) requests, not one per image; the captions already cached stay; a rerun against a
    healthy server asks only for the missing images."""
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    items = draw_images(tmp_path / "images", 12)
    out = tmp_path / "captions.jsonl"
    args = ["caption", "--images", str(tmp_path / "images"), "--model", "m", "--output", str(out)]
    args += ["--concurrency", "1", "--no-progress"]
    with FakeChatServer() as server:
        assert main([*args, "--base-url", server.base_url, "--limit", "4"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    with FakeChatServer(**refusal) as server:
        assert main([*args, "--base-url", server.base_url]) == 1
        assert len(server.requests) == 3  # --max-refusals, then it stopped sending
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("camim: error: ")
    assert f"refused 3 requests in a row with {said}; stopped sending" in err
    assert "what was answered before is kept (0 answers in this run)" in err
    assert out.read_bytes() == before  # the cache is untouched
    with FakeChatServer() as server:
        assert main([*args, "--base-url", server.base_url]) == 0
        assert len(server.requests) == 8  # only the missing images
    assert "12 images: 8 captioned now" in capsys.readouterr().out
    final = read_cache(out)
    assert sorted(r.img_id for r in final.records) == sorted(i.img_id for i in items)
    assert not final.bad_lines and not final.partial_tail


def test_caption_retries_transient_errors_and_succeeds(tmp_path: Path, capsys):
    items = draw_images(tmp_path / "images", 4)
    out = tmp_path / "captions.jsonl"
    with FakeChatServer(faults=[429, 503]) as server:
        args = ["caption", "--images", str(tmp_path / "images"), "--model", "m", "--output", str(out)]
        assert main([*args, "--base-url", server.base_url, "--backoff", "0.01", "--no-progress"]) == 0
        assert [r.status for r in server.requests].count(200) == 4 and len(server.requests) == 12
    printed = capsys.readouterr().out
    assert "4 captioned now" in printed and "0 failed; 8 retries" in printed
    assert {r.img_id for r in read_cache(out).records} == {i.img_id for i in items}

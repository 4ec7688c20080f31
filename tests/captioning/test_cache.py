from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from camim.captioning.cache import PAPER_PROMPT, CaptionCache, CaptionRecord, prompt_hash, read_cache
from camim.errors import CamimError


def _record(i: int, model: str = "m", text: str | None = None) -> CaptionRecord:
    return CaptionRecord(
        img_id=f"{i}.jpg",
        text=text if text is not None else f'caption {i} é "quoted"\nsecond line',
        model=model,
        prompt=PAPER_PROMPT,
        prompt_hash=prompt_hash(PAPER_PROMPT),
        settings={"backend": "openai", "max_tokens": 16, "temperature": 0.0},
    )


def test_prompt_hash_is_stable_and_distinguishes_prompts():
    assert prompt_hash(PAPER_PROMPT) == prompt_hash("Please give me a detailed description of the picture")
    assert prompt_hash(PAPER_PROMPT) != prompt_hash(PAPER_PROMPT + ".")
    assert len(prompt_hash("x")) == 12 and prompt_hash(None) is None


def test_append_then_read_round_trips_and_skips_existing_keys(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    with CaptionCache(path) as cache:
        assert cache.append(_record(1)) and cache.append(_record(2))
        assert not cache.append(_record(1, text="another text"))  # same key: not written again
        assert cache.append(_record(1, model="other"))  # another model is another key
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4  # three complete lines
    contents = read_cache(path)
    assert [r.key for r in contents.records] == [
        ("1.jpg", "m", prompt_hash(PAPER_PROMPT)),
        ("2.jpg", "m", prompt_hash(PAPER_PROMPT)),
        ("1.jpg", "other", prompt_hash(PAPER_PROMPT)),
    ]
    first = contents.records[0]
    assert first.text == _record(1).text and first.settings["max_tokens"] == 16 and first.created
    assert json.loads(lines[0])["prompt"] == PAPER_PROMPT
    # a reopened cache knows what is done
    with CaptionCache(path) as again:
        assert _record(2).key in again.done and not again.append(_record(2))


def test_unfinished_last_line_is_ignored_by_readers_and_cut_off_and_counted_by_the_next_writer(
    tmp_path: Path,
):
    path = tmp_path / "c.jsonl"
    with CaptionCache(path) as cache:
        cache.append(_record(1))
        assert cache.torn_lines == 0
    whole = path.read_bytes()
    with open(path, "ab") as f:  # a writer died halfway through a line
        f.write(b'{"img_id": "2.jpg", "te')
    contents = read_cache(path)
    assert contents.partial_tail and [r.img_id for r in contents.records] == ["1.jpg"]
    assert "unfinished" in contents.problems()
    with CaptionCache(path) as cache:
        assert cache.torn_lines == 1 and path.read_bytes() == whole  # cut off under the lock, counted
        assert cache.append(_record(2))
    contents = read_cache(path, strict=True)  # one record per line: the data layer reads it strictly
    assert not contents.partial_tail and not contents.bad_lines
    assert [r.img_id for r in contents.records] == ["1.jpg", "2.jpg"]
    with CaptionCache(path) as cache:
        assert cache.torn_lines == 0


def test_malformed_records_are_listed_with_line_numbers(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"img_id": "a.jpg", "text": "ok"}\n[1, 2]\n{"img_id": "b.jpg"}\n{"img_id": "c.jpg", "text": 3}\n'
    )
    contents = read_cache(path)
    assert [r.img_id for r in contents.records] == ["a.jpg"]
    assert [n for n, _ in contents.bad_lines] == [2, 3, 4]
    assert "'text' missing" in contents.bad_lines[1][1]
    assert read_cache(tmp_path / "absent.jsonl").records == []


def test_latest_keeps_the_last_caption_per_image_in_first_seen_order(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    rows = [("a.jpg", "x", "old a"), ("b.jpg", "x", "b"), ("a.jpg", "y", "a by y"), ("a.jpg", "x2", "new a")]
    path.write_text("".join(json.dumps({"img_id": i, "model": m, "text": t}) + "\n" for i, m, t in rows))
    contents = read_cache(path)
    assert {k: r.text for k, r in contents.latest().items()} == {"a.jpg": "new a", "b.jpg": "b"}
    assert list(contents.latest()) == ["a.jpg", "b.jpg"]
    assert {k: r.text for k, r in contents.latest("y").items()} == {"a.jpg": "a by y"}


def _writer(path: str, ids: list[int], tag: str) -> None:
    with CaptionCache(path) as cache:
        for i in ids:
            cache.append(_record(i, text=f"{tag} " + "x" * 3000))  # long lines: interleaving would show


def test_concurrent_writers_never_interleave_or_duplicate(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    ctx = mp.get_context("fork")
    # overlapping id ranges: every id in 0..59 is wanted by two or three processes
    procs = [
        ctx.Process(target=_writer, args=(str(path), list(range(k * 15, k * 15 + 30)), f"w{k}"))
        for k in range(3)
    ]
    procs += [ctx.Process(target=_writer, args=(str(path), list(range(0, 60, 2)), "w3"))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    contents = read_cache(path)
    assert not contents.bad_lines and not contents.partial_tail
    ids = [r.img_id for r in contents.records]
    assert len(ids) == len(set(ids)) == 60
    assert all(len(r.text) == 3003 for r in contents.records)


def test_unwritable_or_unreadable_paths_are_clear_errors(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CamimError, match="cannot open the caption file"):
        CaptionCache(tmp_path / "file" / "c.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(CamimError, match="cannot read the caption file"):
        read_cache(tmp_path / "dir.jsonl")

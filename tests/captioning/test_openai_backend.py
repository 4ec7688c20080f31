from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from camim.captioning.base import GenerationConfig
from camim.captioning.cache import PAPER_PROMPT, prompt_hash, read_cache
from camim.captioning.images import ImageItem
from camim.captioning.openai_backend import OpenAIBackendConfig, OpenAICaptioner, Refusals, RefusalStop
from camim.captioning.runner import caption_images
from camim.captioning.testing import FakeChatServer, expected_caption
from camim.errors import CamimError


def _captioner(server, **kw) -> OpenAICaptioner:
    generation = GenerationConfig(max_tokens=kw.pop("max_tokens", 64), temperature=kw.pop("temperature", 0.0))
    kw.setdefault("backoff", 0.01)
    return OpenAICaptioner(OpenAIBackendConfig(model="tiny-vlm", base_url=server.base_url, **kw), generation)


def _assert_all_captioned(path: Path, items: list[ImageItem]) -> None:
    contents = read_cache(path)
    assert not contents.bad_lines and not contents.partial_tail
    by_id = {r.img_id: r for r in contents.records}
    assert len(by_id) == len(contents.records) == len(items)  # no duplicates, none lost
    for item in items:
        assert by_id[item.img_id].text == expected_caption(item.path)  # each caption on its own image


def test_captions_every_image_with_the_paper_prompt_and_records_settings(server, images, tmp_path):
    server.state.delay = 0.05
    out = tmp_path / "c.jsonl"
    report = caption_images(images, _captioner(server, concurrency=4, max_tokens=77), out, progress=False)
    assert (report.total, report.captioned, report.failed, report.retries) == (12, 12, 0, 0)
    _assert_all_captioned(out, images)
    assert 2 <= server.state.max_in_flight <= 4  # concurrent, and bounded
    req = server.requests[0]
    assert (req.model, req.prompt, req.max_tokens, req.temperature) == ("tiny-vlm", PAPER_PROMPT, 77, 0.0)
    assert req.authorization == "Bearer EMPTY"  # no key needed by a local server
    record = read_cache(out).records[0]
    assert record.model == "tiny-vlm" and record.prompt_hash == prompt_hash(PAPER_PROMPT)
    assert record.settings["backend"] == "openai" and record.settings["max_tokens"] == 77
    assert record.settings["base_url"] == server.base_url
    # the image went as a base64 data URL of the file's own bytes
    sent = {r.image_hash for r in server.requests}
    assert sent == {hashlib.sha1(i.path.read_bytes()).hexdigest() for i in images}


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_in_flight_never_exceeds_the_concurrency_limit(server, images, tmp_path, limit):
    # the server holds each request until min(limit, 12) are in flight together (10 s at most): a client that
    # never fills its slots shows a lower count, one that exceeds the limit a higher one, whatever the load
    server.state.delay, server.state.gather = 0.05, min(limit, len(images))
    caption_images(images, _captioner(server, concurrency=limit), tmp_path / "c.jsonl", progress=False)
    assert server.state.max_in_flight == min(limit, len(images))


def test_rate_limits_and_server_errors_are_retried(server, images, tmp_path):
    server.state.faults = [429, 500, 503]  # every image: three failures, then success
    out = tmp_path / "c.jsonl"
    report = caption_images(images, _captioner(server, concurrency=4), out, progress=False)
    assert report.captioned == 12 and report.failed == 0 and report.retries == 36
    statuses = [r.status for r in server.requests]
    assert len(statuses) == 48 and statuses.count(200) == 12
    _assert_all_captioned(out, images)


def test_backoff_grows_exponentially_and_honours_retry_after(server, images, tmp_path):
    item = images[:1]
    server.state.faults = [500, 500, 500]
    caption_images(item, _captioner(server, backoff=0.1), tmp_path / "a.jsonl", progress=False)
    reqs = server.requests
    gaps = [b.started - a.ended for a, b in zip(reqs, reqs[1:])]
    # 0.1, 0.2, 0.4 s less up to 25 % jitter
    assert [0.07 <= g for g in gaps] == [True] * 3 and gaps[2] > 0.29 and gaps[1] > 0.14
    server.state.faults = [429]
    server.state.retry_after_ms = 300
    server.state.attempts.clear()
    server.state.requests.clear()
    caption_images(item, _captioner(server, backoff=0.001), tmp_path / "b.jsonl", progress=False)
    first, second = server.requests
    assert second.started - first.ended >= 0.28


def test_timeouts_are_retried(server, images, tmp_path):
    server.state.faults = ["hang"]
    server.state.hang_seconds = 3.0
    out = tmp_path / "c.jsonl"
    report = caption_images(images[:4], _captioner(server, concurrency=4, timeout=0.5), out, progress=False)
    assert report.captioned == 4 and report.retries == 4
    _assert_all_captioned(out, images[:4])


def test_exhausted_retries_fail_the_image_and_a_rerun_completes(server, images, tmp_path):
    server.state.faults = [500] * 3
    out = tmp_path / "c.jsonl"
    report = caption_images(images[:5], _captioner(server, max_retries=1), out, progress=False)
    assert (report.captioned, report.failed, report.retries) == (0, 5, 5) and not report.complete
    assert "HTTP 500 after 1 retries" in report.summary()
    assert read_cache(out).records == []
    again = caption_images(images[:5], _captioner(server, max_retries=1), out, progress=False)
    assert again.captioned == 5 and again.complete
    _assert_all_captioned(out, images[:5])


def test_bad_key_and_unknown_model_stop_the_run(server, images, tmp_path, monkeypatch):
    server.state.api_key = "right"
    monkeypatch.setenv("MY_KEY", "wrong")
    with pytest.raises(CamimError, match='API key was rejected.*: "Incorrect API key provided"; stopped'):
        caption_images(
            images,
            _captioner(server, api_key_env="MY_KEY", concurrency=2),
            tmp_path / "c.jsonl",
            progress=False,
        )
    assert 3 <= len(server.requests) <= 4  # max_refusals (3) plus the other request in flight, not 12
    monkeypatch.setenv("MY_KEY", "right")
    server.state.models = {"other-model"}
    with pytest.raises(CamimError, match='unknown model.*: "The model `tiny-vlm` does not exist."'):
        caption_images(images, _captioner(server, api_key_env="MY_KEY"), tmp_path / "c.jsonl", progress=False)
    server.state.models = None
    report = caption_images(
        images[:2], _captioner(server, api_key_env="MY_KEY"), tmp_path / "c.jsonl", progress=False
    )
    assert report.captioned == 2 and server.requests[-1].authorization == "Bearer right"


@pytest.mark.parametrize(
    "body, said",
    [
        ({"error": {"message": "image too large"}}, "image too large"),  # OpenAI, vLLM
        ({"object": "error", "message": "image too large", "code": 400}, "image too large"),
        ({"detail": "image too large"}, "image too large"),  # FastAPI: transformers serve
        (
            {"detail": [{"loc": ["body", "max_tokens"], "msg": "must be > 0"}, {"msg": "bad"}]},
            "must be > 0; bad",
        ),
        ("image\n   too large", "image too large"),  # a text body, on one line
        ({"error": {"code": 400}}, "Error code: 400"),  # nothing said: the client's words
    ],
)
def test_a_refusal_fails_its_request_with_the_servers_words(server, images, tmp_path, body, said):
    server.state.refusal = (400, body)
    out = tmp_path / "c.jsonl"
    report = caption_images(images[:2], _captioner(server, concurrency=1), out, progress=False)
    assert (report.failed, report.retries, len(server.requests)) == (2, 0, 2)  # no retry, no stop (2 < 3)
    assert report.problems["failed"] == [f"{i.img_id}: HTTP 400: {said}" for i in images[:2]]
    assert read_cache(out).records == []


def test_refusals_in_a_row_stop_sending_and_keep_what_was_answered(server, images, tmp_path):
    out = tmp_path / "c.jsonl"
    message = "The prompt has 2008 tokens, but the model takes at most 256 tokens"
    server.state.refusal, server.state.refuse_after = (400, {"error": {"message": message}}), 4
    with pytest.raises(RefusalStop) as stop:
        caption_images(images, _captioner(server, concurrency=1), out, progress=False)
    said = str(stop.value)
    assert (
        f"refused 3 requests in a row with HTTP 400, model 'tiny-vlm': \"{message}\"; stopped sending" in said
    )
    assert "what was answered before is kept (4 answers in this run)" in said and "\n" not in said
    assert len(server.requests) == 4 + 3  # 4 answers, then 3 refusals: not the 8 images left
    _assert_all_captioned(out, images[:4])
    # more requests in flight: the run stops within max_refusals + concurrency - 1 requests
    server.state.requests.clear()
    with pytest.raises(RefusalStop):
        caption_images(images, _captioner(server, concurrency=4, max_refusals=2), out, progress=False)
    assert 2 <= len(server.requests) <= 2 + 4 - 1
    # a healthy server: the rerun asks only for the 8 missing images. A fresh one, because a request the
    # stopped run had sent before it cancelled is recorded when the server gets to it, which on a busy
    # machine can be after the rerun began
    with FakeChatServer() as healthy:
        report = caption_images(images, _captioner(healthy), out, progress=False)
        assert (report.skipped_done, report.captioned, len(healthy.requests)) == (4, 8, 8)
    _assert_all_captioned(out, images)


def test_only_identical_refusals_in_a_row_count_numbers_aside():
    refusals = Refusals(3)
    assert not refusals.refused(400, "The prompt has 2008 tokens, at most 256")
    assert not refusals.refused(400, "The prompt has 2011 tokens, at most 256")  # another prompt's length
    assert refusals.refused(400, "The prompt has 1999 tokens, at most 256")
    refusals.answer()  # an answer breaks the row
    assert [refusals.refused(400, "image too large") for _ in range(3)] == [False, False, True]
    refusals.refused(401, "image too large")  # another status starts a new row
    assert (refusals.row, refusals.answered) == (1, 1)
    assert not refusals.refused(400, "image too large") and not refusals.refused(
        400, "no image in the request"
    )


def test_no_key_and_no_server_is_a_clear_error(images, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    captioner = OpenAICaptioner(OpenAIBackendConfig(model="gpt-4o"))
    with pytest.raises(CamimError, match="OPENAI_API_KEY"):
        caption_images(images, captioner, tmp_path / "c.jsonl", progress=False)


def test_missing_and_corrupt_images_are_counted_not_fatal(server, images, tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    truncated = tmp_path / "half.png"
    truncated.write_bytes(images[1].path.read_bytes()[:40])
    items = [*images[:3], ImageItem("gone.jpg", tmp_path / "gone.jpg"), ImageItem("broken.jpg", corrupt)]
    items.append(ImageItem("half.png", truncated))
    out = tmp_path / "c.jsonl"
    report = caption_images(items, _captioner(server), out, progress=False)
    assert (report.captioned, report.missing, report.corrupt, report.failed) == (3, 1, 2, 0)
    assert report.complete and "gone.jpg" in report.summary() and "broken.jpg" in report.summary()
    assert {r.img_id for r in read_cache(out).records} == {i.img_id for i in images[:3]}
    assert len(server.requests) == 3


def test_rerun_sends_only_what_is_missing_and_a_new_prompt_is_a_new_key(server, images, tmp_path):
    out = tmp_path / "c.jsonl"
    first = caption_images(images, _captioner(server), out, limit=5, progress=False)
    assert first.captioned == 5
    second = caption_images(images, _captioner(server), out, progress=False)
    assert (second.skipped_done, second.captioned) == (5, 7) and len(server.requests) == 12
    assert caption_images(images, _captioner(server), out, progress=False).captioned == 0
    other = OpenAICaptioner(
        OpenAIBackendConfig(model="tiny-vlm", base_url=server.base_url),
        GenerationConfig(prompt="Describe it."),
    )
    assert caption_images(images[:2], other, out, progress=False).captioned == 2
    assert server.requests[-1].prompt == "Describe it."
    assert len(read_cache(out).records) == 14


def test_downscaling_re_encodes_large_images(server, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (300, 120), "green").save(big)
    out = tmp_path / "c.jsonl"
    report = caption_images(
        [ImageItem("big.png", big)], _captioner(server, max_image_side=64), out, progress=False
    )
    assert report.captioned == 1
    assert read_cache(out).records[0].text != expected_caption(big)  # the server saw other (smaller) bytes
    assert read_cache(out).records[0].settings["max_image_side"] == 64


def test_a_captioning_run_in_a_log_prints_plain_progress_lines(server, images, tmp_path, capsys):
    """stderr is not a terminal here (captured): no bar frames, a line at the end (and every 30 s)."""
    caption_images(images, _captioner(server), tmp_path / "c.jsonl", progress=None)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert f"captioning (tiny-vlm): {len(images)}/{len(images)} img (100.0%), " in err

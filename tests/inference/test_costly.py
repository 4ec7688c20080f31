"""``camim serve`` and :class:`Predictor` against costly requests (issue 36): decoded pixels are budgeted and
reduced while decoding (item 1); the work of an answered request stops, and readiness tells a saturated
server (item 4)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image, ImageFile

from camim.inference import ImageError, Predictor

from .conftest import png_bytes, save_tiny_tmr
from .server_util import GatedCaptioner, running_server, wait_until

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

POST = {"text": "rt jack plays for the titans today", "head": "jack", "tail": "titans"}


def bomb() -> bytes:
    """A one-bit 6320 x 6320 PNG: a few KB encoded, 40 MB in Pillow's own mode, 160 MB as RGB."""
    data = png_bytes(Image.new("1", (6320, 6320)))
    assert len(data) < 10_000
    return data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth random field with fine noise on top: resizing it is not trivially exact."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    noise = rng.integers(-20, 21, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@contextmanager
def recorded_decodes(monkeypatch):
    """The (format, size) of every image Pillow decodes from a file or bytes, and the size of every
    conversion to RGB."""
    decodes, conversions = [], []
    load, convert = ImageFile.ImageFile.load, Image.Image.convert

    def spy_load(im):
        if im.tile:  # something left to decode
            decodes.append((im.format, im.size))
        return load(im)

    def spy_convert(im, mode=None, *args, **kwargs):
        if mode == "RGB":
            conversions.append(im.size)
        return convert(im, mode, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    monkeypatch.setattr(Image.Image, "convert", spy_convert)
    yield decodes, conversions


def config(**overrides):
    from camim.inference.server import ServeConfig

    return ServeConfig(**{"max_wait_ms": 0, **overrides})


# ------------------------------------------------------------------ item 1: decoded pixels
def test_pixel_bombs_sent_to_a_model_without_images_are_never_decoded(bert_run, monkeypatch):
    predictor = Predictor.from_pretrained(bert_run.path)
    body = {"items": [{**POST, "image": b64(bomb())} for _ in range(8)]}
    with running_server(predictor, config()) as url, recorded_decodes(monkeypatch) as (decodes, _):
        r = httpx.post(url + "/api/predict_batch", json=body, timeout=60)
        assert r.status_code == 200, r.text
        one = predictor.predict(POST["text"], "jack", "titans", image=bomb())  # camim predict's way
    assert decodes == []
    notes = [n for res in r.json()["results"] for n in res["notes"]] + one.notes
    assert notes == ["image given, but neither this model nor its helpers use it: not decoded"] * 9
    with pytest.raises(ImageError, match="not a readable image"):  # still checked, at no decoding cost
        predictor.predict(POST["text"], "jack", "titans", image=bomb()[:60])


def test_a_request_over_the_decoded_budget_is_413_and_the_server_budget_503(tmr_dir, monkeypatch):
    tmr = Predictor.from_pretrained(tmr_dir)
    big = b64(png_bytes(photo((1600, 1200))))  # RGB: 7.3 MiB to decode
    small = b64(png_bytes(photo((160, 120))))
    limits = config(max_request_decoded_bytes=6 * 2**20, max_decoded_bytes=8 * 2**20, max_wait_ms=10_000)
    with running_server(tmr, limits) as url, recorded_decodes(monkeypatch) as (decodes, _):
        over = httpx.post(url + "/api/predict", json={**POST, "image": big, "caption": "x"}, timeout=30)
        assert decodes == []  # refused from the header
        assert over.status_code == 413, over.text
        assert over.json()["error"] == (
            "images: decoding them takes 7.4 MiB, over the limit of 6.0 MiB per request (max_request_decoded_bytes)"
        )
        five = b64(png_bytes(photo((1150, 1000))))  # 4.4 MiB: two do not fit in 8 MiB together
        results: list = []
        first = threading.Thread(
            target=lambda: results.append(
                httpx.post(url + "/api/predict", json={**POST, "image": five, "caption": "x"}, timeout=30)
            )
        )
        with tmr.engine.expect(2):  # the first request waits in the engine, holding its decoded bytes
            first.start()
            wait_until(lambda: tmr.engine.depth == 1, what="the first request queued")
            refused = httpx.post(
                url + "/api/predict", json={**POST, "image": five, "caption": "x"}, timeout=30
            )
            tmr.engine.max_wait_ms = 0
        first.join(30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert (
            "budget of 8.0 MiB decoded (max_decoded_bytes) is held by other requests"
            in refused.json()["error"]
        )
        assert results[0].status_code == 200, results[0].text
        for _ in range(2):  # the bytes were given back: both fit again, one after the other
            again = httpx.post(url + "/api/predict", json={**POST, "image": five, "caption": "x"}, timeout=30)
            assert again.status_code == 200, again.text
        ok = httpx.post(url + "/api/predict", json={**POST, "image": small, "caption": "x"}, timeout=30)
        assert ok.status_code == 200


def test_the_decoded_budget_must_hold_the_largest_request():
    """A request allowed to decode more than the whole server's budget would be answered 503 ("retry")
    forever: such limits are refused when the server is configured."""
    from camim.errors import CamimError

    with pytest.raises(
        CamimError,
        match=r"max_decoded_bytes \(1000\) must be at least max_request_decoded_bytes \(2000\)",
    ):
        config(max_request_decoded_bytes=2000, max_decoded_bytes=1000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_images_are_reduced_while_decoding_and_predict_as_before(tmr_dir, monkeypatch, fmt):
    """The tiny TMR reads 32-pixel images (a 37-pixel short side): a 480 x 360 image is decoded at 1/4
    (JPEG, by libjpeg) or reduced 4x in its own mode (PNG) before any RGB image of its full size exists;
    its prediction stays within 2e-3 of the full-size decoding's."""
    from camim.io import Fit

    tmr = Predictor.from_pretrained(tmr_dir)
    data = encoded(photo((480, 360), seed=4), fmt)
    kwargs = {"image": data, "caption": "a man on a field"}
    with recorded_decodes(monkeypatch) as (decodes, conversions):
        new = tmr.predict(POST["text"], "jack", "titans", **kwargs)
    expected = [(fmt, (120, 90))] if fmt == "JPEG" else [(fmt, (480, 360))]
    assert decodes == expected
    assert (480, 360) not in conversions and (120, 90) in conversions
    monkeypatch.setattr(Fit, "factor", lambda self, w, h: 1)  # the old path: decoded at full size
    with recorded_decodes(monkeypatch) as (decodes, conversions):
        old = tmr.predict(POST["text"], "jack", "titans", **kwargs)
    assert decodes == [(fmt, (480, 360))] and (480, 360) in conversions
    assert new.relation == old.relation
    got, want = dict(new.distribution), dict(old.distribution)
    assert max(abs(got[k] - want[k]) for k in want) < 2e-3
    assert max(abs(got[k] - want[k]) for k in want) > 0  # another path, not the same one twice


def test_a_mode_1_bomb_for_an_image_model_never_becomes_a_full_size_rgb_image(tmr_dir, monkeypatch):
    tmr = Predictor.from_pretrained(tmr_dir)
    with recorded_decodes(monkeypatch) as (decodes, conversions):
        p = tmr.predict(POST["text"], "jack", "titans", image=bomb(), caption="x")
    assert decodes == [("PNG", (6320, 6320))]  # in mode 1: one byte a pixel
    side = -(-6320 // 85)  # reduced 85 times (a 74-pixel side is twice the 37 needed), then RGB
    assert conversions[0] == (side, side)
    assert p.relation in dict(p.distribution)


def test_a_captioner_gets_the_image_reduced_to_twice_its_max_image_side(
    tmp_path, tiny_text_dir, tiny_vision_dir, monkeypatch
):
    """A text-caption model reads no image, but its captioner does: the image is decoded for it, reduced
    to no less than twice the long side the captioner downscales to itself."""
    folder = save_tiny_tmr(tmp_path / "m", tiny_text_dir, tiny_vision_dir, seed=1, visual_mode="text-caption")
    seen = []

    class Captioner:
        max_image_side = 100

        def __call__(self, image):
            seen.append(image.size)
            return "a picture"

    captioned = Predictor.from_pretrained(folder, captioner=Captioner())
    with recorded_decodes(monkeypatch) as (decodes, conversions):
        p = captioned.predict(POST["text"], "jack", "titans", image=bomb())
    side = -(-6320 // 31)  # 6320 // 31: the largest factor keeping 200 pixels (twice 100)
    assert decodes == [("PNG", (6320, 6320))] and seen == [(side, side)] and conversions[0] == (side, side)
    assert p.caption == "a picture" and p.caption_source == "generated"


def test_predictor_refuses_an_image_whose_decoding_alone_is_over_its_limit(tmr_dir, tmp_path):
    """``Predictor`` and ``camim predict``: what decoding takes is read from the header; over the limit, the
    post (the line) fails with the limit named, before a pixel is decoded."""
    from camim.inference.files import predict_file

    tmr = Predictor.from_pretrained(tmr_dir, max_decoded_bytes=16 * 2**20)
    # mode 1, 6320 x 6320: one byte a pixel decoded, one more converted to L to be reduced; 75 x 75 RGB kept
    assert tmr.decode_cost({"image": bomb()}) == (2 * 6320 * 6320, 75 * 75 * 4)
    with pytest.raises(
        ImageError, match=r"image too large to decode: it takes 76\.2 MiB, over the limit of 16\.0"
    ):
        tmr.predict(POST["text"], "jack", "titans", image=bomb(), caption="x")
    (tmp_path / "bomb.png").write_bytes(bomb())
    (tmp_path / "in.jsonl").write_text(
        '{"text": "jack plays titans", "h": {"name": "jack"}, "t": {"name": "titans"}, "image": "bomb.png"}\n'
    )
    assert predict_file(tmr, tmp_path / "in.jsonl", tmp_path / "out.jsonl") == 1
    error = json.loads((tmp_path / "out.jsonl").read_text())["error"]
    assert error.startswith(f"{tmp_path / 'in.jsonl'}:1: {tmp_path / 'bomb.png'}: image too large to decode")


# ------------------------------------------------------------------ item 4: answered requests stop
# a deadline long enough for the preparing thread to reach the captioner on a loaded machine
DEADLINE = 3.0


def test_a_timed_out_request_stops_captioning_and_readiness_tells_saturation(tmr_dir):
    gated = GatedCaptioner()
    tmr = Predictor.from_pretrained(tmr_dir, captioner=gated)
    body = {"items": [{**POST, "image": b64(png_bytes(photo((64, 48))))}] * 3}
    with running_server(tmr, config(request_timeout_s=DEADLINE, max_preparing=1)) as url:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200, what="ready")
        answer: list = []
        thread = threading.Thread(
            target=lambda: answer.append(httpx.post(url + "/api/predict_batch", json=body, timeout=30))
        )
        thread.start()
        wait_until(gated.running.is_set, what="the captioner running")
        busy = httpx.get(url + "/readyz", timeout=10)  # the only preparing thread is captioning
        assert busy.status_code == 503
        assert (
            busy.json()["error"]
            == "saturated: all 1 threads preparing requests are busy (0 request(s) waiting)"
        )
        thread.join(30)
        assert answer[0].status_code == 504
        wait_until(lambda: not gated.running.is_set(), timeout=2, what="the captioner stopping")
        wait_until(lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200, timeout=2, what="ready")
    assert (gated.calls, gated.stopped, gated.finished) == (1, 1, 0)  # the two other posts: never captioned


def test_a_captioner_without_stop_is_not_called_again_after_the_answer(tmr_dir):
    """Its thread finishes the call it is in, keeping its place among the preparing threads (readiness says
    so) until then; nothing after it runs."""
    gated = GatedCaptioner()
    tmr = Predictor.from_pretrained(tmr_dir, captioner=lambda image: gated(image))  # cannot be stopped
    body = {"items": [{**POST, "image": b64(png_bytes(photo((64, 48))))}] * 3}
    with running_server(tmr, config(request_timeout_s=DEADLINE, max_preparing=1)) as url:
        r = httpx.post(url + "/api/predict_batch", json=body, timeout=30)
        assert r.status_code == 504
        assert gated.running.is_set()  # the 504 came while the first caption was being made
        busy = httpx.get(url + "/readyz", timeout=10)
        assert busy.status_code == 503 and busy.json()["error"].startswith("saturated: all 1 threads")
        gated.release.set()
        wait_until(lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200, timeout=3, what="ready")
    assert (gated.calls, gated.finished) == (1, 1)  # the thread has ended: no other post will be captioned


def test_the_openai_captioner_closes_its_request_when_stopped():
    testing = pytest.importorskip("camim.captioning.testing")
    pytest.importorskip("openai")
    from camim.errors import Cancelled
    from camim.inference.captioners import openai_captioner

    stop = threading.Event()
    with testing.FakeChatServer(delay=10) as server:
        captioner = openai_captioner("fake-minicpm", base_url=server.base_url, timeout=30)
        threading.Timer(0.5, stop.set).start()
        start = time.monotonic()
        with pytest.raises(Cancelled, match="stopped: the request was answered"):
            captioner(photo((64, 48)), stop=stop)
        assert time.monotonic() - start < 2  # stopped 0.5 s in, polled every 50 ms; the server takes 10 s
        assert len(server.requests) <= 1

"""``camim serve`` over real HTTP: good requests, bad spans, size limits, corrupt images, concurrency."""

from __future__ import annotations

import base64
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import LABELS, draw, png_bytes
from .server_util import running_server

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

POST = "RT @cnnsport : Tennis star Rafael Nadal gets engaged to girlfriend of 14 years , Mery Perello"
MAX_IMAGE = 64 * 1024


@pytest.fixture(scope="module")
def server(bert_predictor):
    from camim.inference.server import ServeConfig

    config = ServeConfig(max_image_bytes=MAX_IMAGE, max_request_bytes=512 * 1024, max_batch=8)
    with running_server(bert_predictor, config) as url:
        yield url


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(server, path="/api/predict", **body):
    return httpx.post(server + path, json=body, timeout=30)


def test_good_request_matches_the_predictor(server, bert_predictor):
    image = png_bytes(draw(3))
    r = post(
        server,
        text=POST,
        head="Rafael Nadal",
        tail={"name": "Mery Perello"},
        image=b64(image),
        caption="Two people.",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    expected = bert_predictor.predict(
        POST, "Rafael Nadal", "Mery Perello", image=image, caption="Two people."
    )
    assert body["relation"] == expected.relation
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert [d["relation"] for d in body["distribution"]] == [r for r, _ in expected.distribution]
    assert body["head"] == {"name": "Rafael Nadal", "pos": [5, 7]}
    assert body["caption"] == "Two people." and body["caption_source"] == "given"


def test_spans_data_url_and_top_k(server):
    s = POST.index("Rafael")
    r = post(
        server,
        token=POST.split(),
        head={"pos": [5, 7]},
        tail={"pos": [15, 17]},
        image="data:image/png;base64," + b64(png_bytes(draw(4))),
        top_k=2,
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["distribution"]) == 2
    r2 = post(server, text=POST, head={"char": [s, s + 12]}, tail="Mery Perello")
    assert r2.json()["head"]["pos"] == [5, 7]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"text": POST, "head": "Roger Federer", "tail": "Mery Perello"},
            400,
            "head: mention 'Roger Federer' does not occur",
        ),
        (
            {"text": POST, "head": {"pos": [5, 40]}, "tail": "Mery Perello"},
            400,
            r"head: token span \[5, 40\) is outside",
        ),
        ({"text": POST, "head": {"pos": [5, 7]}, "tail": {"pos": [6, 8]}}, 400, "overlap"),
        ({"text": POST, "head": {"pos": [5]}, "tail": "Mery Perello"}, 422, "head"),
        ({"text": POST, "tail": "Mery Perello"}, 422, "head: Field required"),
        ({"head": "a", "tail": "b"}, 422, "give exactly one of 'text' and 'token'"),
        ({"text": "   ", "head": "a", "tail": "b"}, 422, "the post is empty"),
        (
            {"text": POST, "head": "Rafael Nadal", "tail": "Mery Perello", "image": "@@@"},
            400,
            "not valid base64",
        ),
    ],
)
def test_bad_requests_are_4xx_json(server, body, status, message):
    r = post(server, **body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert re.search(message, r.json()["error"]), r.json()


def test_oversized_image_and_body(server):
    big = os.urandom(MAX_IMAGE + 1024)  # over the image limit, under the body limit
    r = post(server, text=POST, head="Rafael Nadal", tail="Mery Perello", image=b64(big))
    assert r.status_code == 413 and "over the limit" in r.json()["error"]
    huge = "x" * (600 * 1024)  # over the body limit
    r = httpx.post(
        server + "/api/predict", content=huge, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 413 and "request body" in r.json()["error"]
    chunked = iter([b'{"text": "' + b"x" * (300 * 1024), b"x" * (300 * 1024) + b'"}'])  # no content-length
    r = httpx.post(
        server + "/api/predict", content=chunked, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 413 and "request body is over the limit" in r.json()["error"]


def test_image_with_too_many_pixels_is_413(server):
    from PIL import Image

    from camim.inference.server import ServeConfig

    assert ServeConfig().max_image_pixels == 40_000_000
    small_file_many_pixels = png_bytes(Image.new("1", (9000, 5000)))  # a few KB of PNG, 45 Mpx
    assert len(small_file_many_pixels) < MAX_IMAGE
    r = post(server, text=POST, head="Rafael Nadal", tail="Mery Perello", image=b64(small_file_many_pixels))
    assert r.status_code == 413 and "pixels" in r.json()["error"]


def test_corrupt_image_is_400(server):
    corrupt = png_bytes(draw(5))[:60]  # a truncated PNG
    r = post(server, text=POST, head="Rafael Nadal", tail="Mery Perello", image=b64(corrupt))
    assert r.status_code == 400 and "not a readable image" in r.json()["error"]


def test_twenty_concurrent_requests(server, bert_predictor):
    posts = [
        (f"rt {a} {cue} {b} today", a, b)
        for a, b in [
            ("jack", "titans"),
            ("mery", "nadal"),
            ("london", "festival"),
            ("wales", "crocodile"),
            ("rafael", "perello"),
        ]
        for cue in ("plays", "married", "held", "likes")
    ]
    assert len(posts) == 20
    expected = [bert_predictor.predict(t, h, tl) for t, h, tl in posts]

    def call(args):
        text, h, t = args
        return httpx.post(server + "/api/predict", json={"text": text, "head": h, "tail": t}, timeout=60)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(call, posts))
    assert [r.status_code for r in responses] == [200] * 20
    for r, e in zip(responses, expected):
        assert r.json()["relation"] == e.relation
        assert r.json()["probability"] == pytest.approx(e.probability, abs=1e-5)


def test_batch_endpoint_and_limits(server):
    items = [
        {"text": POST, "head": "Rafael Nadal", "tail": "Mery Perello"},
        {"text": "jack plays titans", "head": "jack", "tail": "titans"},
    ]
    r = post(server, "/api/predict_batch", items=items)
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    r = post(server, "/api/predict_batch", items=[items[0], {**items[1], "head": "nobody"}])
    assert r.status_code == 400 and r.json()["error"].startswith("items[1]: head: mention 'nobody'")
    r = post(server, "/api/predict_batch", items=items * 5)
    assert r.status_code == 413


def test_page_info_and_openapi(server):
    page = httpx.get(server + "/", timeout=10)
    assert page.status_code == 200 and 'id="post"' in page.text and "/static/app.js" in page.text
    assert httpx.get(server + "/static/app.js", timeout=10).status_code == 200
    info = httpx.get(server + "/api/info", timeout=10).json()
    assert info["labels"] == LABELS and info["required_modalities"] == []
    schema = httpx.get(server + "/openapi.json", timeout=10).json()
    assert "/api/predict" in schema["paths"]
    assert "PredictRequest" in schema["components"]["schemas"]
    answer = schema["paths"]["/api/predict"]["post"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"] == {"$ref": "#/components/schemas/PredictResponse"}
    assert {"/healthz", "/readyz", "/metrics"} <= set(schema["paths"])

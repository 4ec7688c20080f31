"""``camim serve`` under traffic, over real HTTP: batching across requests, a bounded queue (503), deadlines
(504), clients that leave, probes and Prometheus metrics, the access log, and the API key."""

from __future__ import annotations

import base64
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from camim.inference import Predictor

from .conftest import LABELS, draw, png_bytes
from .server_util import metric, running_server, wait_until

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

GOOD = [
    {"text": "rt jack plays for the titans today", "head": "jack", "tail": "titans"},
    {"text": "mery married nadal", "head": "mery", "tail": "nadal"},
    {"token": ["the", "festival", "was", "held", "in", "london", "on", "sunday"], "head": {"pos": [1, 2]}, "tail": {"pos": [5, 6]}},
    {"text": "rafael likes wales", "head": "rafael", "tail": "wales", "caption": "a man on a beach"},
]  # fmt: skip
BAD = [
    (
        {"text": "jack plays titans", "head": {"pos": [0, 1]}, "tail": {"pos": [2, 9]}},
        400,
        "outside the post",
    ),
    (
        {"text": "jack plays titans", "head": "jack", "tail": "titans", "image": None},
        400,
        "not a readable image",
    ),
]


@pytest.fixture(scope="module")
def predictor(bert_run):
    """A predictor of its own: these tests change its batching settings and hold its engine."""
    return Predictor.from_pretrained(bert_run.path)


def config(**overrides):
    from camim.inference.server import ServeConfig

    return ServeConfig(**{"max_wait_ms": 10_000, "max_batch_size": 64, **overrides})


@contextmanager
def held(predictor, n: int = 100):
    """Keep the engine's worker waiting for announced posts (up to ``max_wait_ms``): requests queue up.
    Afterwards the worker waits no more (nor for the callers it answers, who do not come back here)."""
    with predictor.engine.expect(n):
        yield
        predictor.engine.max_wait_ms = 0


def post(url, body, path="/api/predict", **kw):
    return httpx.post(url + path, json=body, timeout=30, **kw)


def scrape(url, **kw) -> str:
    r = httpx.get(url + "/metrics", timeout=10, **kw)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


# ------------------------------------------------------------------ item 1: batching across requests
def test_concurrent_requests_share_one_forward_and_bad_ones_fail_alone(predictor, caplog):
    corrupt = base64.b64encode(png_bytes(draw(5))[:60]).decode()
    bodies = [*GOOD, BAD[0][0], {**BAD[1][0], "image": corrupt}]
    expected = [
        predictor.predict(
            b.get("text") or b["token"], *(_entity(b, k) for k in ("head", "tail")), caption=b.get("caption")
        )
        for b in GOOD
    ]
    with running_server(predictor, config(max_batch_size=len(GOOD))) as url:
        with caplog.at_level(logging.INFO, logger="camim.access"), held(predictor, len(bodies)):
            with ThreadPoolExecutor(len(bodies)) as pool:
                responses = list(pool.map(lambda b: post(url, b), bodies))
        text = scrape(url)
    assert [r.status_code for r in responses] == [200] * len(GOOD) + [400, 400], [r.text for r in responses]
    assert "outside the post" in responses[4].json()["error"]
    assert "not a readable image" in responses[5].json()["error"]
    for r, e in zip(responses, expected):
        got = {d["relation"]: d["probability"] for d in r.json()["distribution"]}
        assert max(abs(got[rel] - p) for rel, p in e.distribution) <= 1e-5
    assert metric(text, "camim_batch_size_count") == 1.0  # one forward ...
    assert metric(text, "camim_batch_size_sum") == len(GOOD)  # ... of the four good posts
    assert metric(text, 'camim_requests_total{endpoint="/api/predict",status="200"}') == len(GOOD)
    assert metric(text, 'camim_requests_total{endpoint="/api/predict",status="400"}') == 2.0
    lines = [r.getMessage() for r in caplog.records if r.name == "camim.access"]
    assert (
        sum(line.startswith("POST /api/predict 200 ") and line.endswith(" ms batch=4") for line in lines) == 4
    )
    assert sum(line.startswith("POST /api/predict 400 ") and line.endswith("batch=-") for line in lines) == 2


def _entity(body, key):
    value = body[key]
    return tuple(value["pos"]) if isinstance(value, dict) else value


def test_batch_endpoint_posts_join_other_requests_forwards(predictor):
    with running_server(predictor, config(max_batch_size=3)) as url:
        with held(predictor, 3), ThreadPoolExecutor(2) as pool:
            one = pool.submit(post, url, GOOD[0])
            two = pool.submit(post, url, {"items": GOOD[1:3]}, "/api/predict_batch")
            responses = [one.result(), two.result()]
        text = scrape(url)
    assert [r.status_code for r in responses] == [200, 200]
    assert len(responses[1].json()["results"]) == 2
    assert metric(text, "camim_batch_size_count") == 1.0 and metric(text, "camim_batch_size_sum") == 3.0


# ------------------------------------------------------------------ item 2: overload and faults
def test_beyond_max_queue_the_answer_is_503_with_retry_after_at_once(predictor):
    with running_server(predictor, config(max_queue=2)) as url:
        with ThreadPoolExecutor(2) as pool:
            with held(predictor):
                waiting = [pool.submit(post, url, GOOD[k]) for k in range(2)]
                wait_until(lambda: predictor.engine.depth == 2, what="two requests queued")
                assert metric(scrape(url), "camim_queue_depth") == 2.0
                assert metric(scrape(url), "camim_requests_in_flight") == 2.0
                refused = post(url, GOOD[2])  # answered while the two are still held
                assert all(not f.done() for f in waiting)
        assert [f.result().status_code for f in waiting] == [200, 200]
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "limit of 2 requests in flight" in refused.json()["error"]
        assert post(url, GOOD[2]).status_code == 200  # room again
        assert httpx.get(url + "/api/info", timeout=10).status_code == 200  # only predictions are counted


def test_a_request_past_its_deadline_gets_504_and_costs_no_forward(predictor):
    sizes = []
    with running_server(predictor, config(request_timeout_s=0.5)) as url:
        predictor.engine.on_batch = lambda n, s: sizes.append(n)
        with held(predictor):
            late = post(url, GOOD[0])
            assert late.status_code == 504 and "deadline of 0.5 s" in late.json()["error"]
        assert predictor.engine.drain(10) and sizes == []  # withdrawn before any forward
        assert post(url, GOOD[1]).status_code == 200 and sizes == [1]


def test_a_client_that_leaves_costs_nothing_and_breaks_nothing(predictor):
    sizes = []
    with running_server(predictor, config()) as url:
        predictor.engine.on_batch = lambda n, s: sizes.append(n)
        port = int(url.rsplit(":", 1)[1])
        body = b'{"text": "jack plays titans", "head": "jack", "tail": "titans"}'
        with held(predictor):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(
                    b"POST /api/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    + b"content-length: %d\r\n\r\n" % len(body)
                    + body
                )
                wait_until(lambda: predictor.engine.depth == 1, what="the request queued")
            # the connection is closed: the server withdraws the post from its queue
            wait_until(
                lambda: (
                    metric(scrape(url), 'camim_requests_total{endpoint="/api/predict",status="499"}') == 1.0
                ),
                what="the server noticing the disconnect",
            )
        assert predictor.engine.drain(10) and sizes == []  # its post never reached the model
        assert post(url, GOOD[0]).status_code == 200 and sizes == [1]


# ------------------------------------------------------------------ item 3: probes and metrics
def test_probes_metrics_and_separate_registries(predictor):
    with running_server(predictor, config(max_wait_ms=0)) as url:
        assert httpx.get(url + "/healthz", timeout=10).json() == {"status": "ok"}
        wait_until(lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200, what="ready")
        assert post(url, GOOD[0]).status_code == 200
        assert httpx.get(url + "/nowhere", timeout=10).status_code == 404
        with running_server(predictor, config()) as other:  # a second app in the process: its own registry
            assert metric(scrape(other), 'camim_requests_total{endpoint="/api/predict",status="200"}') is None
        text = scrape(url)
    assert metric(text, 'camim_requests_total{endpoint="/api/predict",status="200"}') == 1.0
    assert metric(text, 'camim_requests_total{endpoint="other",status="404"}') == 1.0
    assert metric(text, 'camim_request_duration_seconds_count{endpoint="/api/predict"}') == 1.0
    assert metric(text, 'camim_request_duration_seconds_bucket{endpoint="/api/predict",le="30.0"}') == 1.0
    assert metric(text, "camim_queue_depth") == 0.0 and metric(text, "camim_captioner_failures_total") == 0.0
    assert metric(text, 'camim_batch_size_bucket{le="1.0"}') == 1.0


def test_readyz_says_why_the_model_is_not_ready(bert_run, monkeypatch):
    broken = Predictor.from_pretrained(bert_run.path)

    def fail(items, batch_size=32):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(broken, "predict_batch", fail)
    with running_server(broken, config()) as url:
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200  # alive ...
        wait_until(lambda: "warm-up failed" in httpx.get(url + "/readyz", timeout=10).text, what="warm-up")
        r = httpx.get(url + "/readyz", timeout=10)
    assert r.status_code == 503 and r.json()["error"] == "warm-up failed: RuntimeError: CUDA out of memory"


def test_captioner_failures_are_counted(tmr_dir):
    def down(image):
        raise ConnectionError("captioning server unreachable")

    tmr = Predictor.from_pretrained(tmr_dir, captioner=down)
    image = base64.b64encode(png_bytes(draw(2))).decode()
    with running_server(tmr, config(max_wait_ms=0)) as url:
        r = post(url, {**GOOD[0], "image": image})
        text = scrape(url)
    assert r.status_code == 200 and r.json()["caption_source"] == "none"
    assert any("captioning failed (ConnectionError" in n for n in r.json()["notes"])
    assert metric(text, "camim_captioner_failures_total") == 1.0


# ------------------------------------------------------------------ item 5: the API key
def test_the_api_key_guards_the_api_and_metrics_not_the_probes_or_page(predictor):
    key = "s3cret-Key"
    with running_server(predictor, config(max_wait_ms=0), api_key=key) as url:
        good = {"authorization": f"Bearer {key}"}
        for path in ("/api/info", "/metrics"):
            missing = httpx.get(url + path, timeout=10)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer <key>" in missing.json()["error"]
            wrong = httpx.get(url + path, headers={"authorization": f"Bearer {key}x"}, timeout=10)
            assert wrong.status_code == 401 and wrong.json()["error"] == "wrong API key"
            assert httpx.get(url + path, headers=good, timeout=10).status_code == 200
        assert post(url, GOOD[0]).status_code == 401
        assert post(url, GOOD[0], headers={"authorization": key}).status_code == 401  # no "Bearer "
        r = post(url, GOOD[0], headers=good)
        assert r.status_code == 200 and r.json()["relation"] in LABELS
        for path in ("/healthz", "/readyz", "/", "/static/app.js"):
            wait_until(lambda p=path: httpx.get(url + p, timeout=10).status_code == 200, what=f"{path} open")


def test_api_key_env_and_the_warning_for_open_public_addresses(bert_run, monkeypatch, capsys):
    import argparse

    from camim.errors import CamimError
    from camim.inference import cli, process

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    served = []
    monkeypatch.setattr(process, "serve", lambda app, **kw: served.append((app, kw)))
    monkeypatch.setattr(cli, "build_app", lambda args: "app")

    def run(*flags):
        args = parser.parse_args(["serve", "--model", str(bert_run.path), *flags])
        return args.func(args)

    monkeypatch.delenv("CAMIM_TEST_KEY", raising=False)
    with pytest.raises(
        CamimError, match="--api-key-env CAMIM_TEST_KEY: the environment variable CAMIM_TEST_KEY is not set"
    ):
        run("--api-key-env", "CAMIM_TEST_KEY")
    assert run("--host", "0.0.0.0") == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "camim serve: warning: listening on 0.0.0.0 without --api-key-env: anyone who can reach it can use the API"
    )
    monkeypatch.setenv("CAMIM_TEST_KEY", "k")
    for flags in (("--host", "0.0.0.0", "--api-key-env", "CAMIM_TEST_KEY"), ("--host", "::1"), ()):
        assert run(*flags) == 0
        assert "warning" not in capsys.readouterr().err
    assert served[-1][1]["host"] == "127.0.0.1" and served[-1][1]["graceful_timeout_s"] == 30.0
    assert served[-1][1]["header_timeout_s"] == 10.0
    with pytest.raises(CamimError, match="--max-queue must be at least 1"):
        run("--max-queue", "0")
    with pytest.raises(CamimError, match="--body-timeout must be positive"):
        run("--body-timeout", "0")
    with pytest.raises(CamimError, match="--drain-delay must be 0 or more"):
        run("--drain-delay", "-1")
    with pytest.raises(CamimError, match=r"--max-reading-mb \(8\) must be at least --max-request-mb \(16\)"):
        run("--max-reading-mb", "8")
    with pytest.raises(
        CamimError, match=r"--max-decoded-mb \(100\) must be at least --max-request-decoded-mb \(256\)"
    ):
        run("--max-decoded-mb", "100")


def test_workers_with_cuda_validate_the_model_without_touching_cuda_in_the_supervisor(
    bert_run, monkeypatch, tmp_path
):
    """``--workers 2 --device cuda``: the supervisor checks the model (a bad one fails there, once) without
    initialising CUDA, which would hold a context and model-sized memory on the card for the server's life."""
    import argparse

    import torch

    from camim.errors import CamimError
    from camim.inference import cli, process

    touched = []

    def record(name):
        def touch(*args, **kwargs):
            touched.append(name)
            raise RuntimeError(f"the supervisor touched CUDA ({name})")

        return touch

    for name in ("_lazy_init", "init", "is_available", "device_count", "current_device", "set_device"):
        monkeypatch.setattr(torch.cuda, name, record(name))
    served = []
    monkeypatch.setattr(process, "serve", lambda app, **kw: served.append((app, kw)))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())

    def run(model, *flags):
        args = parser.parse_args(
            ["serve", "--model", str(model), "--workers", "2", "--device", "cuda", *flags]
        )
        return args.func(args)

    assert run(bert_run.path) == 0
    assert touched == [] and served == [("camim.inference.cli:app_from_environment", served[0][1])]
    assert served[0][1]["workers"] == 2
    with pytest.raises(CamimError, match="no config.json"):  # a bad model still fails in the supervisor
        run(tmp_path)
    assert touched == []

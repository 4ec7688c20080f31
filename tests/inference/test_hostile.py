"""Hostile and slow clients against ``camim serve`` over real HTTP (issue 36): bodies refused on their headers
alone, deadlines on headers and bodies (408) that keep slow senders out of the admission slots, and an access
log that a URL cannot forge lines in."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
import threading
import time

import pytest

from camim.inference import Predictor

from .conftest import draw, png_bytes
from .server_util import GatedCaptioner, assert_closed, metric, read_answer, running_server, wait_until

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

KEY = "s3cret"
GOOD = b'{"text": "rt jack plays for the titans today", "head": "jack", "tail": "titans"}'
MIB16 = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def predictor(bert_run):
    return Predictor.from_pretrained(bert_run.path)


def config(**overrides):
    from camim.inference.server import ServeConfig

    return ServeConfig(**{"max_request_bytes": MIB16, **overrides})


def connect(url: str, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=timeout)


def head(method: str, path: str, length: int, extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n{extra}\r\n"
    ).encode()


# ------------------------------------------------------------------ item 3: any path read any body
@pytest.fixture(scope="module")
def keyed(predictor):
    """A server with an API key and the default 16 MiB body limit."""
    with running_server(predictor, config(), api_key=KEY) as url:
        yield url


@pytest.mark.parametrize(
    "method, path, extra, status, message",
    [
        ("POST", "/healthz", "", 405, "POST /healthz: method not allowed"),
        ("POST", "/", "", 405, "POST /: method not allowed"),
        ("POST", "/docs", "", 405, "POST /docs: method not allowed"),
        ("POST", "/nowhere", "", 404, "POST /nowhere: no such route"),
        ("GET", "/healthz", "", 413, "GET /healthz: takes no request body"),
        ("POST", "/api/predict", "", 401, "give the API key"),
        ("POST", "/api/nowhere", "", 401, "give the API key"),
        ("POST", "/api/predict", f"authorization: Bearer {KEY}\r\n", 413, "over the limit of 16777216"),
    ],
)
def test_a_body_is_refused_on_the_headers_alone_without_reading_it(
    predictor, method, path, extra, status, message
):
    """16 MiB announced (17 MiB to the prediction route, with the key); not one byte of it sent: the answer
    comes at once and the connection is closed (the body is never read)."""
    length = MIB16 + (MIB16 // 16 if status == 413 and path == "/api/predict" else 0)
    with running_server(predictor, config(), api_key=KEY) as url, connect(url, timeout=3) as s:
        s.sendall(head(method, path, length, extra))
        got, headers, body = read_answer(s)
        assert (got, headers["connection"]) == (status, "close")
        assert message in body.decode()
        assert_closed(s)


def test_a_connection_closed_with_unread_data_lingers_so_the_answer_is_not_reset():
    """The server answers after the first chunk of a 2 MiB body and closes: through a
    :class:`LingeringTransport` the client reads the answer and an end of file, and may still send for a
    moment; a plain close would answer the unread data with a reset (the client reads an error instead)."""
    from camim.inference.process import LingeringTransport

    async def run() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        closed = loop.create_future()

        class Refuser(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = LingeringTransport(transport, loop, linger_s=0.5)

            def data_received(self, data):
                if not self.transport.is_closing():
                    self.transport.write(b"refused")
                    self.transport.close()
                    self.closing = loop.time()

            def connection_lost(self, exc):
                closed.set_result(loop.time() - self.closing)

        server = await loop.create_server(Refuser, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(bytes(2 * 1024 * 1024))
        answer = await asyncio.wait_for(reader.read(), 10)  # up to the end of file
        lingered = await asyncio.wait_for(closed, 10)
        writer.close()
        server.close()
        return answer, lingered

    answer, lingered = asyncio.run(run())
    assert answer == b"refused" and 0.4 < lingered < 3


# ------------------------------------------------------------------ item 2: slow clients
def test_a_slow_body_holds_no_admission_slot_and_gets_408(predictor):
    """One admission slot; a client sends its headers and 10 bytes of its body, then nothing: a normal
    request is still answered, and the slow one gets 408 at its body deadline."""
    with running_server(predictor, config(max_queue=1, body_timeout_s=1.0)) as url, connect(url) as slow:
        slow.sendall(head("POST", "/api/predict", len(GOOD)) + GOOD[:10])
        time.sleep(0.2)  # the server has it: its body is being read
        started = time.monotonic()
        r = httpx.post(
            url + "/api/predict", content=GOOD, headers={"content-type": "application/json"}, timeout=10
        )
        assert r.status_code == 200, r.text
        status, headers, body = read_answer(slow)
        assert time.monotonic() - started < 3
        assert (status, headers["connection"]) == (408, "close")
        assert "request body not received within the deadline of 1 s" in body.decode()
        assert_closed(slow)


def predict(url: str, body: bytes) -> httpx.Response:
    return httpx.post(
        url + "/api/predict", content=body, headers={"content-type": "application/json"}, timeout=20
    )


def held(url: str) -> float | None:
    return metric(httpx.get(url + "/metrics", timeout=10).text, "camim_body_bytes_held")


def test_bodies_being_read_share_a_budget_and_its_bytes_return_however_a_read_ends(predictor):
    """A budget of 100,000 body bytes held at once: a slow client has sent 60,000 of the 80,000 it announced,
    so a request announcing 50,000 gets 503 at once (unread, connection closed), and a chunked one at its
    first chunk that does not fit, while a small request is answered. The slow one's 408, and a client that
    leaves in the middle of its body, return their bytes: a 60,000-byte request then succeeds."""
    limits = config(max_request_bytes=80_000, max_reading_bytes=100_000, body_timeout_s=2.0)
    with running_server(predictor, limits) as url, connect(url) as slow:
        slow.sendall(head("POST", "/api/predict", 80_000) + b" " * 60_000)
        wait_until(lambda: held(url) == 60_000, timeout=5, what="the slow body's bytes held")
        # each refusal names the slow body's 60,000 bytes (it still holds them) and comes before the 2 s body
        # deadline that its unsent body would reach if it were read
        with connect(url, timeout=1.5) as big:
            big.sendall(head("POST", "/api/predict", 50_000))
            status, headers, body = read_answer(big)
            assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
            assert body.decode() == (
                '{"error": "the server holds 60000 bytes of request bodies and 50000 more would pass its '
                'budget of 100000 (max_reading_bytes, --max-reading-mb); retry shortly"}'
            )
            assert_closed(big)
        with connect(url, timeout=1.5) as chunked:
            chunked.sendall(
                head("POST", "/api/predict", 0).replace(b"content-length: 0", b"transfer-encoding: chunked")
            )
            chunked.sendall(b"%x\r\n%s\r\n" % (50_000, b" " * 50_000))
            status, _, body = read_answer(chunked)
            assert status == 503  # at the piece that did not fit beside the slow body's (and its own first)
            # what is held: the slow body's 60,000 and the pieces of this one that fitted before it
            found = re.search(r"holds (\d+) bytes of request bodies and (\d+) more", body.decode())
            held_then, more = int(found[1]), int(found[2])
            assert 60_000 <= held_then < 100_000 < held_then + more
        small = httpx.post(url + "/api/predict", content=GOOD, headers={"content-type": "application/json"})
        assert small.status_code == 200, small.text
        assert read_answer(slow)[0] == 408
        wait_until(lambda: held(url) == 0, timeout=5, what="the timed-out body's bytes returned")
        with connect(url) as leaving:
            leaving.sendall(head("POST", "/api/predict", 80_000) + GOOD[:10])
            wait_until(lambda: held(url) == 10, timeout=5, what="the leaving body's bytes held")
        wait_until(lambda: held(url) == 0, timeout=5, what="the left body's bytes returned")
        padded = GOOD + b" " * (60_000 - len(GOOD))
        third = httpx.post(url + "/api/predict", content=padded, headers={"content-type": "application/json"})
        assert third.status_code == 200, third.text
        text = httpx.get(url + "/metrics", timeout=10).text
    assert metric(text, "camim_body_budget_refusals_total") == 2
    assert metric(text, 'camim_requests_total{endpoint="/api/predict",status="503"}') == 2
    assert metric(text, "camim_body_bytes_held") == 0


def test_slow_clients_hold_only_the_bytes_they_have_sent_so_they_cannot_lock_others_out(predictor):
    """Two connections announce 50,000 bytes each (together the whole 100,000 budget) and send one byte: they
    hold two bytes, not 100,000, and a 60,000-byte request is answered beside them (a reservation of the
    announced lengths let four such connections to a default server answer every prediction 503)."""
    limits = config(max_request_bytes=80_000, max_reading_bytes=100_000, body_timeout_s=10.0)
    padded = GOOD + b" " * (60_000 - len(GOOD))
    with running_server(predictor, limits) as url, connect(url) as one, connect(url) as two:
        for slow in (one, two):
            slow.sendall(head("POST", "/api/predict", 50_000) + b"{")
        wait_until(lambda: held(url) == 2, timeout=5, what="the slow bodies' bytes held")
        r = httpx.post(url + "/api/predict", content=padded, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert held(url) == 2


def test_a_body_stays_in_the_budget_until_its_request_is_answered(tmr_dir):
    """A body read whole and admitted still holds its bytes while its request is prepared (the budget bounds
    the bodies in memory, not only those on the wire): held in the captioner, in a worker thread (the event
    loop stays free to answer), its 60,000 bytes are counted, and a second body of 60,000 that would not fit
    beside them in 100,000 is refused on its headers; once the first is answered, the second fits.

    Held in a worker thread, not in ``Predictor.prepare`` itself: a text-only post is prepared on the event
    loop, where a hook that waits blocks every request (``/metrics`` included: the earlier version of this
    test waited there, and its metrics read lasted the hook's 10 s, racing the client's 10 s timeout)."""
    gated = GatedCaptioner()
    tmr = Predictor.from_pretrained(tmr_dir, captioner=gated)
    post = json.dumps({**json.loads(GOOD), "image": base64.b64encode(png_bytes(draw(0))).decode()}).encode()
    padded = post + b" " * (60_000 - len(post))
    limits = config(max_request_bytes=80_000, max_reading_bytes=100_000)
    answers: list = []
    with running_server(tmr, limits) as url:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200, what="the warm-up")
        first = threading.Thread(target=lambda: answers.append(predict(url, padded)))
        first.start()
        try:
            wait_until(gated.running.is_set, what="the first request being captioned")
            text = httpx.get(url + "/metrics", timeout=10).text  # read and admitted: its body is still held
            assert metric(text, "camim_requests_in_flight") == 1
            assert metric(text, "camim_body_bytes_held") == 60_000
            with connect(url, timeout=3) as second:  # refused on its headers, not one byte of it read
                second.sendall(head("POST", "/api/predict", len(padded)))
                status, _, body = read_answer(second)
            assert status == 503 and "holds 60000 bytes of request bodies and 60000 more" in body.decode()
            assert gated.running.is_set()  # the first request was still being prepared all along
        finally:
            gated.release.set()
            first.join(20)
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].json()["caption"] == "a slow caption"
        wait_until(lambda: held(url) == 0, timeout=5, what="the answered body's bytes returned")
        assert predict(url, padded).status_code == 200  # its caption is made at once: released
    assert gated.calls == gated.finished == 2


def test_the_reading_budget_must_hold_the_largest_request():
    from camim.errors import CamimError

    assert config().max_reading_bytes == 4 * MIB16
    with pytest.raises(
        CamimError, match=r"max_reading_bytes \(1000\) must be at least max_request_bytes \(2000\)"
    ):
        config(max_request_bytes=2000, max_reading_bytes=1000)


def test_headers_must_arrive_in_time_and_in_bounded_size(predictor):
    """A request line with a header now and then is cut at the header deadline (408); 70 KB of headers
    sent at once get 431; a connection that completed its headers in time is served."""
    with running_server(predictor, config(), header_timeout_s=0.5) as url:
        with connect(url) as s:
            s.sendall(b"POST /api/predict HTTP/1.1\r\nhost: t\r\n")
            time.sleep(0.3)
            s.sendall(b"x-slow: 1\r\n")  # still trickling when the deadline passes
            status, headers, body = read_answer(s)
            assert (status, headers["connection"]) == (408, "close")
            assert "request headers not received within 0.5 s" in body.decode()
            assert_closed(s)
        with connect(url) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n" + b"x-pad: " + b"a" * 70_000 + b"\r\n")
            status, _, body = read_answer(s)
            assert status == 431 and "over the limit of 65536 bytes" in body.decode()
        with connect(url) as s:  # keep-alive: two requests on one connection, each well within the deadline
            for _ in range(2):
                s.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
                assert read_answer(s)[0] == 200
                time.sleep(0.3)  # idle between requests: the next one's headers are timed from the answer


# ------------------------------------------------------------------ item 7: access-log injection
def test_the_access_log_writes_the_path_escaped(predictor, caplog):
    """``%0A`` in a URL stays ``%0A`` in the log (uvicorn's own access log does the same): no forged line."""
    forged = "/x%0AINFO:%20%20%20%20%20GET%20/admin%20200%20%221%22"
    with running_server(predictor, config()) as url:
        with caplog.at_level(logging.INFO, logger="camim.access"):
            assert httpx.get(url + forged, timeout=10).status_code == 404
    (line,) = [r.getMessage() for r in caplog.records if r.name == "camim.access"]
    assert line.startswith(f"GET {forged} 404 ")
    assert "\n" not in line and '"' not in line

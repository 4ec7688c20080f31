"""Graceful shutdown of a real ``camim serve`` process (as a container orchestrator stops it): SIGTERM makes
``/readyz`` answer 503 at once while the server goes on serving for ``--drain-delay`` seconds; then (at once
on SIGINT) it stops accepting connections, finishes the requests in flight within ``--graceful-timeout``,
exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import LABELS
from .server_util import free_port, wait_until

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

BODY = json.dumps({"text": "rt jack plays for the titans today", "head": "jack", "tail": "titans"}).encode()
JSON = {"content-type": "application/json"}
SRC = str(Path(__file__).resolve().parents[2] / "src")


@contextmanager
def serve_process(model: Path, log: Path, *flags: str, env: dict | None = None):
    """``camim serve`` in a process of its own on 127.0.0.1 (a free port), ready; killed by PID if the test
    did not stop it."""
    port = free_port()
    environ = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    cmd = [sys.executable, "-m", "camim", "serve", "--model", str(model), "--port", str(port), *flags]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, f"camim serve exited: {log.read_text()}"
            try:
                return httpx.get(url + "/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=120, what="camim serve becoming ready")
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def start_request(port: int, headers: str = "") -> socket.socket:
    """A prediction request whose body is only half sent: in flight until :func:`finish_request`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /api/predict HTTP/1.1\r\nhost: test\r\n{headers}content-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    )
    s.sendall(head.encode() + BODY[:10])
    return s


def finish_request(s: socket.socket) -> tuple[int, dict]:
    """Send the rest of the body; the status and JSON body of the answer (the server closes afterwards)."""
    s.sendall(BODY[10:])
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def probe(url: str) -> int:
    """The status of ``/readyz`` (a probe that finds the port closed fails the test)."""
    return httpx.get(url + "/readyz", timeout=5).status_code


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def test_sigterm_not_ready_first_then_stops_accepting_finishes_the_request_in_flight_and_exits_0(
    bert_run, tmp_path
):
    """`camim serve` as a user runs it (a process of its own, the training-output folder, a chosen port, an
    API key from the environment), stopped as an orchestrator stops it: probes see 503 during the drain
    delay, new requests are still served, then the port closes."""
    log = tmp_path / "serve.log"
    env = {"CAMIM_TEST_KEY": "k3y"}
    flags = ("--api-key-env", "CAMIM_TEST_KEY", "--drain-delay", "2")
    with serve_process(bert_run.path, log, *flags, env=env) as (proc, port):
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(url + "/api/predict", content=BODY, headers=JSON, timeout=30).status_code == 401
        auth = {"authorization": "Bearer k3y", **JSON}
        assert httpx.get(url + "/api/info", headers=auth, timeout=30).json()["labels"] == LABELS
        assert httpx.post(url + "/api/predict", content=BODY, headers=auth, timeout=30).status_code == 200
        s = start_request(port, "authorization: Bearer k3y\r\n")
        time.sleep(0.3)  # the server has the request (headers, part of the body)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: probe(url) == 503, timeout=10, what="/readyz answering 503")
        assert httpx.post(url + "/api/predict", content=BODY, headers=auth, timeout=30).status_code == 200
        wait_until(lambda: refused(port), timeout=20, what="the server to stop accepting connections")
        assert time.monotonic() - signalled >= 2.0  # not before the drain delay
        assert proc.poll() is None  # still finishing the request in flight
        with s:
            status, answer = finish_request(s)
        assert status == 200 and answer["relation"] in LABELS
        assert proc.wait(timeout=60) == 0
    text = log.read_text()
    assert "Shutting down" in text and "Finished server process" in text
    assert text.count("POST /api/predict 200 ") == 3 and "Traceback" not in text
    assert "GET /readyz 503 " in text and "serving 2 s more before closing (--drain-delay)" in text


def test_sigint_with_workers_exits_0_within_the_graceful_bound(bert_run, tmp_path):
    """Two worker processes; a request that never completes is cut off after --graceful-timeout."""
    log = tmp_path / "serve.log"
    flags = ("--workers", "2", "--graceful-timeout", "1", "--drain-delay", "0")
    with serve_process(bert_run.path, log, *flags) as (proc, port):
        r = httpx.post(f"http://127.0.0.1:{port}/api/predict", content=BODY, headers=JSON, timeout=30)
        assert r.status_code == 200 and r.json()["relation"] in LABELS
        stuck = start_request(port)
        time.sleep(0.3)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            stuck.close()
        assert time.monotonic() - signalled < 30
    text = log.read_text()
    assert "Started parent process" in text and text.count("Finished server process") == 2

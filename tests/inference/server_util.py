"""Start ``camim serve``'s app with uvicorn on 127.0.0.1 (a free port) in a background thread; read its
answers and metrics; hold a request in its preparation (:class:`GatedCaptioner`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(predictor, config=None, api_key=None, header_timeout_s: float = 10.0) -> Iterator[str]:
    """Yield the base URL of a live server for ``predictor`` (on uvicorn as ``camim serve`` runs it, with
    its header deadline); stop it afterwards."""
    uvicorn = pytest.importorskip("uvicorn")
    from camim.inference.process import http_protocol
    from camim.inference.server import create_app

    port = free_port()
    app = create_app(predictor, config, api_key=api_key)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", http=http_protocol(header_timeout_s)
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until(condition, timeout: float = 30, what: str = "the condition") -> None:
    """Poll ``condition()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def metric(text: str, name: str) -> float | None:
    """The value of one sample (``name`` with its labels, as written) in Prometheus' text format."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def read_answer(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one answer on ``s`` (its Content-Length), read within
    the socket's timeout."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("content-length", 0)):
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, body


def assert_closed(s: socket.socket) -> None:
    """The server closes ``s``: nothing more to read (raises the socket's timeout while it stays open)."""
    try:
        assert s.recv(65536) == b"", "the server sent more after its answer"
    except ConnectionResetError:
        pass


class GatedCaptioner:
    """Captions once ``release`` is set (20 s at most); called with ``stop``, it stops as soon as that is set
    (checked every 10 ms). Records its calls."""

    def __init__(self):
        self.release = threading.Event()
        self.running = threading.Event()
        self.calls = self.stopped = self.finished = 0

    def __call__(self, image, stop=None):
        self.calls += 1
        self.running.set()
        try:
            deadline = time.monotonic() + 20
            while not self.release.is_set() and time.monotonic() < deadline:
                if stop is not None and stop.is_set():
                    self.stopped += 1
                    return "stopped"
                time.sleep(0.01)
            self.finished += 1
            return "a slow caption"
        finally:
            self.running.clear()

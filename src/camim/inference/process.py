"""The ``camim serve`` process around the app: uvicorn with a deadline and a size limit on request headers
(:class:`HeaderDeadlineProtocol`), and the shutdown on SIGTERM: not ready first, then, after a drain delay,
uvicorn's graceful stop (:func:`drain_on_sigterm`, :func:`serve`).

uvicorn times neither the headers of a request nor, with httptools, their size (its ``timeout_keep_alive``
only runs between requests, ``h11_max_incomplete_event_size`` only binds the h11 parser): a client sending a
header byte now and then would hold its connection forever.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from camim.errors import CamimError

LOG = logging.getLogger("camim.serve")
MAX_HEADER_BYTES = 64 * 1024  # request line and headers of one request (gunicorn: 8190 per line, 100 lines)
LINGER_S = 1.0  # after the answer: how long a closing connection discards what its client still sends

try:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
except ModuleNotFoundError:  # pragma: no cover - exercised only without the extra
    AutoHTTPProtocol = None  # type: ignore[assignment,misc]


class LingeringTransport:
    """A connection's transport whose ``close()`` sends what is buffered and a FIN, then leaves the
    connection open at most ``linger_s`` seconds (the protocol discards what arrives) before closing it.

    Closed at once, a socket with unread data answers with a reset, and a reset destroys the answer the
    client has not read yet: a client still sending a body that the server refused on its headers would see
    "connection reset" instead of its 401 or 413 (Go's net/http waits the same way before closing)."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop, linger_s: float = LINGER_S):
        self._transport = transport
        self._loop = loop
        self._linger_s = linger_s
        self._closing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        self._closing = True
        transport = self._transport
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # after the buffered answer
        transport.resume_reading()  # flow control may have paused it: read on to discard
        self._loop.call_later(self._linger_s, transport.close)


class HeaderDeadlineProtocol(AutoHTTPProtocol or object):  # type: ignore[misc]
    """uvicorn's HTTP/1.1 protocol (httptools, else h11) whose requests must send their line and headers
    within ``header_timeout_s`` of the connection opening or the previous answer, and in at most
    ``max_header_bytes``: past either the client gets 408 or 431 and the connection is closed. Connections
    close through a :class:`LingeringTransport`.

    A request's headers are complete when uvicorn starts a new request-response cycle (``self.cycle``),
    which both of its parsers do."""

    def __init__(
        self, *args: Any, header_timeout_s: float, max_header_bytes: int = MAX_HEADER_BYTES, **kw: Any
    ):
        super().__init__(*args, **kw)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_after: Any = None  # the cycle answered last when the wait for headers began
        self._header_bytes = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(LingeringTransport(transport, self.loop))
        self._wait_for_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # lingering before the close: discarded
        super().data_received(data)
        if self._deadline is None or self.transport.is_closing():
            return
        if self._headers_arrived():
            self._stop_waiting()
            return
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes:
            self._refuse(431, f"request headers over the limit of {self.max_header_bytes} bytes")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:  # none pipelined behind it
            self._wait_for_headers()  # keep-alive: the next request's headers are timed from here

    def _headers_arrived(self) -> bool:
        """A request is under way that was not when the wait began (pipelined ones included)."""
        cycle = self.cycle
        return cycle is not None and cycle is not self._waiting_after and not cycle.response_complete

    def _wait_for_headers(self) -> None:
        self._stop_waiting()
        self._waiting_after, self._header_bytes = self.cycle, 0
        self._deadline = self.loop.call_later(self.header_timeout_s, self._on_deadline)

    def _stop_waiting(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if not self.transport.is_closing() and not self._headers_arrived():
            self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        LOG.info("camim serve: %s (%s), connection closed", message, status)
        self._stop_waiting()
        self.transport.write(head.encode() + body)
        self.transport.close()


def http_protocol(header_timeout_s: float) -> Callable[..., Any]:
    """The ``http`` argument of ``uvicorn.Config``: :class:`HeaderDeadlineProtocol` with this deadline (a
    ``functools.partial`` of a module-level class, so that ``--workers`` processes can unpickle it)."""
    return functools.partial(HeaderDeadlineProtocol, header_timeout_s=header_timeout_s)


def drain_on_sigterm(on_signal: Callable[[], None], delay_s: float) -> bool:
    """Wrap the SIGTERM handler that the server installed (uvicorn's graceful stop): on SIGTERM call
    ``on_signal()`` at once (the app stops saying it is ready), then the server's handler after ``delay_s``
    seconds, during which connections are still accepted and served. A second SIGTERM stops at once.

    Call it on the event loop in the main thread, after the server installed its handlers (an ASGI lifespan
    startup); elsewhere, or without a callable handler to wrap, nothing is changed and False is returned."""
    if threading.current_thread() is not threading.main_thread():
        return False
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop):
        return False
    loop = asyncio.get_running_loop()
    state = {"signalled": False, "stopped": False}

    def stop_once(signum: int, frame: Any) -> None:
        if not state["stopped"]:
            state["stopped"] = True
            stop(signum, frame)

    def on_sigterm(signum: int, frame: Any) -> None:
        on_signal()
        if state["signalled"] or delay_s <= 0:
            stop_once(signum, frame)
            return
        state["signalled"] = True
        LOG.info("camim serve: SIGTERM: not ready; serving %g s more before closing (--drain-delay)", delay_s)
        loop.call_soon_threadsafe(loop.call_later, delay_s, stop_once, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    graceful_timeout_s: float = 30.0,
    workers: int = 1,
    header_timeout_s: float = 10.0,
) -> None:
    """Run ``app`` with uvicorn until SIGTERM or SIGINT, then shut down gracefully and return.

    On SIGTERM the app's drain delay runs first (``ServeConfig.drain_delay_s``: not ready, still serving);
    then, as at once on SIGINT, uvicorn stops accepting connections, lets the requests in flight finish (at
    most ``graceful_timeout_s``; the rest are cancelled), then runs the app's shutdown (the batching engine
    is drained). Request headers must arrive within ``header_timeout_s`` (:class:`HeaderDeadlineProtocol`).
    ``workers > 1`` needs ``app`` as an import string of an app factory (``"module:function"``): uvicorn then
    runs that many processes on one socket, each with its own model.
    """
    try:
        import uvicorn
        from uvicorn.config import LOGGING_CONFIG
    except ModuleNotFoundError:
        raise CamimError("`camim serve` needs uvicorn: pip install 'camim[serve]'") from None
    log_config = {**LOGGING_CONFIG, "loggers": {**LOGGING_CONFIG["loggers"]}}
    for name in ("camim.access", "camim.serve"):  # one access line per request, in uvicorn's format
        log_config["loggers"][name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt) if main else None
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info",
            log_config=log_config,
            access_log=False,
            http=http_protocol(header_timeout_s),
            timeout_graceful_shutdown=graceful_timeout_s,
            workers=workers,
            factory=isinstance(app, str),
        )
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
    """SIGTERM as KeyboardInterrupt. uvicorn handles SIGTERM itself while it serves (graceful shutdown), then
    re-raises the signal to the handler found before it: raising KeyboardInterrupt there lets ``uvicorn.run``
    return normally (exit 0), where the default handler would kill the process (status 143)."""
    raise KeyboardInterrupt

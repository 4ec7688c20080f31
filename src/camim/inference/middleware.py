"""The ASGI middlewares of ``camim serve``, outermost first: :class:`ObserveMiddleware` (access log and
metrics), :class:`AuthMiddleware` (Bearer key), :class:`AdmissionMiddleware` (bounded queue: 503 at once),
:class:`BodyLimitMiddleware` (413 before the body is read in full).

Plain ASGI (no ``BaseHTTPMiddleware``, which would buffer responses and hide client disconnects from the
endpoint); each answers its refusals itself with the API's ``{"error": message}`` body.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ACCESS_LOG = logging.getLogger("camim.access")
PREDICT_PATHS = ("/api/predict", "/api/predict_batch")
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the answer


def is_protected(path: str) -> bool:
    """Routes that need the API key: the JSON API and the metrics (the page, its files, the probes and the
    OpenAPI schema stay open)."""
    return path.startswith("/api/") or path == "/metrics"


async def send_json(send: Any, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer with ``body`` as JSON."""
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


class ObserveMiddleware:
    """One access-log line per request (method, path, status, ms, batch size) and ``observe(endpoint, status,
    seconds)`` for the metrics. The batch size is what the endpoint left in ``scope["state"]["batch_size"]``
    (the largest forward the request's posts ran in)."""

    def __init__(self, app: Any, observe: Callable[[str, str, float], None]):
        self.app = app
        self.observe = observe

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = CLIENT_CLOSED  # no response at all: the client left while its body was being read
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            seconds = time.perf_counter() - start
            batch = (scope.get("state") or {}).get("batch_size", "-")
            ACCESS_LOG.info(
                "%s %s %d %.1f ms batch=%s", scope["method"], scope["path"], status, 1000 * seconds, batch
            )
            self.observe(scope["path"], str(status), seconds)

        async def observed_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the last byte leaves: a client that got its answer finds it counted
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            status = 500 if status == CLIENT_CLOSED else status  # what the server answers for an exception
            raise
        finally:
            record()


class AuthMiddleware:
    """401 for a protected route (:func:`is_protected`) without ``Authorization: Bearer <key>``; the key is
    compared in constant time."""

    def __init__(self, app: Any, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_protected(scope["path"]):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = (
                    "give the API key as 'Authorization: Bearer <key>'" if not given else "wrong API key"
                )
                await send_json(send, 401, {"error": message}, [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


@dataclass
class InFlight:
    """The prediction requests admitted and not yet answered (read by the metrics)."""

    count: int = 0  # only touched on the event loop: no lock needed


class AdmissionMiddleware:
    """At most ``limit`` prediction requests at once (decoding, waiting for a forward or in one); the next is
    answered 503 with ``Retry-After`` at once, before its body is read, instead of queueing without bound."""

    def __init__(self, app: Any, in_flight: InFlight, limit: int, retry_after_s: int = 1):
        self.app = app
        self.in_flight = in_flight
        self.limit = limit
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in PREDICT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight.count >= self.limit:
            body = {"error": f"the server is at its limit of {self.limit} requests in flight; retry shortly"}
            await send_json(send, 503, body, [(b"retry-after", self.retry_after)])
            return
        self.in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.count -= 1


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes (declared length, or counted while streaming)."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send_json(
                send,
                413,
                {"error": f"request body of {int(declared)} bytes is over the limit of {self.limit}"},
            )
            return
        # Read the body here (at most `limit` bytes), then replay it: FastAPI turns errors raised while it
        # reads the body into a generic 400, so the limit must be enforced before the app sees the request.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await send_json(send, 413, {"error": f"request body is over the limit of {self.limit} bytes"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, which the endpoint watches for

        await self.app(scope, replay, send)

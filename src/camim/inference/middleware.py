"""The ASGI middlewares of ``camim serve``, outermost first: :class:`ObserveMiddleware` (access log and
metrics), :class:`AuthMiddleware` (Bearer key), :class:`BodyGateMiddleware` (route, method and size decided
before the first body byte; the body read whole within its deadline and the process's :class:`BodyBudget`),
:class:`AdmissionMiddleware` (bounded queue of requests whose body has arrived: 503 at once).

Plain ASGI (no ``BaseHTTPMiddleware``, which would buffer responses and hide client disconnects from the
endpoint); each answers its refusals itself with the API's ``{"error": message}`` body. A refusal sent before
an announced body was read closes the connection (``Connection: close``): the server then reads no more of it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from camim.inference.budget import Budget

ACCESS_LOG = logging.getLogger("camim.access")
PREDICT_PATHS = ("/api/predict", "/api/predict_batch")
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the answer
CLOSE = [(b"connection", b"close")]
_UNLOGGABLE = re.compile(r'[\x00-\x20\x7f"]')  # would end or split an access-log line or its fields


def is_protected(path: str) -> bool:
    """Routes that need the API key: the JSON API and the metrics (the page, its files, the probes and the
    OpenAPI schema stay open)."""
    return path.startswith("/api/") or path == "/metrics"


def announces_body(scope: dict) -> bool:
    """The request says a body follows (a non-zero ``Content-Length``, or chunked)."""
    headers = dict(scope.get("headers") or [])
    return headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers


def declared_length(scope: dict) -> int | None:
    """The request's ``Content-Length`` (None without one, or when it is not a number: h11 refuses those)."""
    declared = dict(scope.get("headers") or []).get(b"content-length", b"").strip()
    return int(declared) if declared.isdigit() else None


def loggable_path(scope: dict) -> str:
    """The request's path as the client sent it, escapes kept (``%0A`` stays three characters), with any
    quote, space or control character left percent-escaped: what uvicorn's own access log writes, so a URL
    cannot forge an access-log line or shift its fields."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else urllib.parse.quote(scope["path"], safe="/%")
    return _UNLOGGABLE.sub(lambda m: f"%{ord(m.group()):02X}", path)


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
                "%s %s %d %.1f ms batch=%s",
                scope["method"],
                loggable_path(scope),
                status,
                1000 * seconds,
                batch,
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
                close = CLOSE if announces_body(scope) else []
                await send_json(send, 401, {"error": message}, [(b"www-authenticate", b"Bearer"), *close])
                return
        await self.app(scope, receive, send)


@dataclass
class InFlight:
    """The prediction requests admitted and not yet answered (read by the metrics)."""

    count: int = 0  # only touched on the event loop: no lock needed


class AdmissionMiddleware:
    """At most ``limit`` prediction requests at once (decoding, waiting for a forward or in one); the next is
    answered 503 with ``Retry-After`` at once instead of queueing without bound. It sits inside
    :class:`BodyGateMiddleware`: a request takes a slot only once its whole body has arrived, so clients
    that send slowly hold no slot."""

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


class BodyBudget(Budget):
    """The bytes of request bodies the server holds, process-wide: at most ``limit``, from the first byte read
    until the request is answered (a body read and waiting for admission or for the model costs what one
    being read does).

    A body's bytes are held as they arrive (:class:`BodyShare`), so a client that sends slowly holds only what
    it has sent (a reservation of its announced length would let a few connections that announce large bodies
    and send nothing lock every other request out until their body deadline). A ``Content-Length`` that does
    not fit beside the bytes held now is refused (503) before its first byte is read, and a body is refused at
    the chunk that does not fit; its share returns when it is answered, refused, timed out or abandoned."""

    def refusal(self, size: int) -> str:
        """The one-line message of a request refused for want of ``size`` bytes."""
        return (
            f"the server holds {self.held} bytes of request bodies and {size} more would pass its "
            f"budget of {self.limit} (max_reading_bytes, --max-reading-mb); retry shortly"
        )


@dataclass
class BodyShare:
    """One body's bytes held in a :class:`BodyBudget`: grows with what arrives, all returned by :meth:`release`."""

    budget: BodyBudget
    held: int = 0

    def grow_to(self, size: int) -> bool:
        """Hold ``size`` bytes in all (True if it already does); False if the budget cannot give them."""
        if size > self.held:
            if not self.budget.take(size - self.held):
                return False
            self.held = size
        return True

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


async def _within(seconds: float, awaitable: Any) -> Any:
    """``await awaitable``, cancelled after ``seconds`` (``asyncio.TimeoutError``). ``asyncio.timeout`` where it
    exists (Python 3.11+: a timer in this task), else ``asyncio.wait_for``, which runs it as a task of its own
    (tens of microseconds more per request body)."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


def _replaying(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that gives ``body`` whole, then what the client sends next (its disconnect, which
    the endpoint watches for)."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodyGateMiddleware:
    """Decides a request's route, method and size before its first body byte is read, then reads the body
    of a route that takes one whole, within ``timeout_s``, ``limit`` bytes and the process's ``budget``, and
    hands it on.

    A body is read only for a route of ``routes`` that takes one (a FastAPI route with a body parameter);
    announced to any other path, it is refused unread: 404 (no such route), 405 (not this method) or 413 (the
    route takes no body). A request without a body goes on untouched (the app answers its 404 and 405).
    Over ``limit`` (declared, or counted while streaming): 413; not all there after ``timeout_s``: 408; its
    declared length not fitting beside what ``budget`` holds, or what has arrived no longer fitting: 503 with
    ``Retry-After``.
    """

    def __init__(
        self,
        app: Any,
        routes: list[Any],
        limit: int,
        timeout_s: float,
        budget: BodyBudget,
        retry_after_s: int = 1,
    ):
        self.app = app
        self.routes = routes
        self.limit = limit
        self.timeout_s = timeout_s
        self.budget = budget
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, allowed = self._route(scope)
        takes_body = allowed and getattr(route, "body_field", None) is not None
        refusal = self._refusal(scope, route, allowed, takes_body) if announces_body(scope) else None
        if refusal is not None:
            await send_json(send, refusal[0], {"error": refusal[1]}, CLOSE)
            return
        if not takes_body:
            await self.app(scope, receive, send)
            return
        share = BodyShare(self.budget)
        try:  # the body's bytes stay counted until the request is answered, however it ends
            body = await self._read_in_budget(scope, receive, send, share)
            if body is None:  # refused, or the client left
                return
            await self.app(scope, _replaying(body, receive), send)
        finally:
            share.release()

    async def _read_in_budget(self, scope: dict, receive: Any, send: Any, share: BodyShare) -> bytes | None:
        """The whole body, read within the deadline and the budget (held in ``share``); None when it was
        refused (answered) or the client left."""
        declared = declared_length(scope) or 0
        if not self.budget.admits(declared):  # refused unread; nothing is held for bytes not yet sent
            await self._over_budget(send, declared)
            return None
        try:
            return await _within(self.timeout_s, self._read(receive, send, share))
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            message = f"request body not received within the deadline of {self.timeout_s:g} s"
            await send_json(send, 408, {"error": message}, CLOSE)
            return None

    async def _over_budget(self, send: Any, size: int) -> None:
        message = self.budget.refusal(size)
        await send_json(send, 503, {"error": message}, [(b"retry-after", self.retry_after), *CLOSE])

    def _route(self, scope: dict) -> tuple[Any, bool]:
        """The route serving the request (None if none) and whether it takes the request's method."""
        from starlette.routing import Match

        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route, True
            if match == Match.PARTIAL and partial is None:
                partial = route
        return partial, False

    def _refusal(self, scope: dict, route: Any, allowed: bool, takes_body: bool) -> tuple[int, str] | None:
        """Status and message for a request with a body refused on its headers alone (None: read it)."""
        where = f"{scope['method']} {loggable_path(scope)}"
        if route is None:
            return 404, f"{where}: no such route"
        if not allowed:
            return 405, f"{where}: method not allowed"
        if not takes_body:
            return 413, f"{where}: takes no request body"
        declared = declared_length(scope)
        if declared is not None and declared > self.limit:
            return 413, f"request body of {declared} bytes is over the limit of {self.limit}"
        return None

    async def _read(self, receive: Any, send: Any, share: BodyShare) -> bytes | None:
        """The whole body; None when it went over the limit (answered 413) or the budget (503: ``share`` grows
        as the body arrives), or the client left."""
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await send_json(
                    send, 413, {"error": f"request body is over the limit of {self.limit} bytes"}, CLOSE
                )
                return None
            if not share.grow_to(seen):
                await self._over_budget(send, seen - share.held)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

"""``camim serve``: a JSON API (with an OpenAPI schema at ``/docs`` and ``/openapi.json``) and a web page.

Endpoints:

- ``GET /`` -- the web page (plain HTML/JS in ``static/``, no build step).
- ``GET /api/info`` -- labels, required modalities and configured helpers of the loaded model.
- ``POST /api/predict`` -- one post; ``POST /api/predict_batch`` -- up to ``max_batch`` posts.
- ``GET /healthz`` (alive), ``GET /readyz`` (model loaded and warmed up), ``GET /metrics`` (Prometheus).

Images travel as base64 (optionally a ``data:`` URL) in the JSON body. A body is read only for the two
prediction routes (to any other path it is refused unread: 404, 405 or 413), after the API key is checked,
whole and within ``body_timeout_s`` (408 past it) before the request takes an admission slot; requests over
``max_request_bytes`` are refused with 413 before they are read in full, and one whose bytes (counted as
they arrive, held until it is answered) would take the request bodies held past ``max_reading_bytes`` gets
503 with ``Retry-After`` (before its first byte is read when its declared length does not fit beside those
held); images over ``max_image_bytes`` / ``max_image_pixels`` give 413, corrupt images and bad entity marks
400, schema violations 422; every error body is ``{"error": message}``.

Decoded pixels are budgeted, not only encoded bytes: only the images the model or a helper uses are decoded,
each reduced while decoding to the size its users need (:meth:`Predictor.image_fits`); what a request's
images take to decode, read from their headers first, must fit ``max_request_decoded_bytes`` (else 413)
and what the requests being prepared hold together ``max_decoded_bytes`` (else 503 with ``Retry-After``).

A request's posts are decoded (and captioned) in worker threads (at most ``max_preparing`` at once, counted
apart from the default thread pool's 40, which stay free for the page), in parallel with other requests, then handed to the
predictor's :class:`~camim.inference.batching.BatchEngine`, which runs the posts of concurrent requests as
one forward (``max_batch_size``, ``max_wait_ms``). Beyond ``max_queue`` requests in flight the server
answers 503 with ``Retry-After`` at once; a request without its answer after ``request_timeout_s`` gets
504; a request whose client left is withdrawn before its forward. Either way its preparation stops at the
next step (a captioner that takes ``stop`` stops mid-call), and ``/readyz`` answers 503 while every
preparing thread is busy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from camim.errors import CamimError, ImageError
from camim.inference.batching import BatchFuture
from camim.inference.budget import Budget
from camim.inference.metrics import ServerMetrics
from camim.inference.middleware import (
    AdmissionMiddleware,
    AuthMiddleware,
    BodyBudget,
    BodyGateMiddleware,
    InFlight,
    ObserveMiddleware,
)
from camim.inference.predictor import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_IMAGE_BYTES,
    Prediction,
    Predictor,
)
from camim.inference.process import drain_on_sigterm
from camim.inference.schema import BatchRequest, BatchResponse, ErrorResponse, PredictRequest, PredictResponse
from camim.io import MAX_IMAGE_PIXELS, human_size

try:
    from anyio import CapacityLimiter, to_thread
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise CamimError(
        f"`camim serve` needs the optional serve extra ({exc.name} is missing): pip install 'camim[serve]'"
    ) from None

LOG = logging.getLogger("camim.serve")


@dataclass
class ServeConfig:
    """Limits and batching of the HTTP API."""

    max_request_bytes: int = 16 * 1024 * 1024
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_text_chars: int = 5000
    max_caption_chars: int = 2000
    max_batch: int = 64  # posts in one /api/predict_batch request
    max_batch_size: int = 16  # posts in one model forward (1: batching off)
    max_wait_ms: float = 5.0  # how long a forward may wait for posts on their way (batching.py)
    max_queue: int = 256  # prediction requests in flight; the next one gets 503
    request_timeout_s: float = 30.0  # a request without its answer by then gets 504
    body_timeout_s: float = 30.0  # a request body not all there by then (after the headers) gets 408
    drain_delay_s: float = 5.0  # after SIGTERM: seconds of not ready and still serving before closing
    # what decoding a request's images may take (camim.io.decode_cost), and all requests' together
    max_request_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    max_decoded_bytes: int = 4 * DEFAULT_MAX_DECODED_BYTES
    max_preparing: int = 32  # requests decoded / captioned at once (threads beside the default pool's 40)
    # bytes of request bodies held at once (from the first byte read until answered), process-wide (None: 4 x max_request_bytes); beyond: 503
    max_reading_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_reading_bytes is None:
            self.max_reading_bytes = 4 * self.max_request_bytes
        if self.max_reading_bytes < self.max_request_bytes:
            raise CamimError(
                f"max_reading_bytes ({self.max_reading_bytes}) must be at least max_request_bytes "
                f"({self.max_request_bytes}): a request of the largest size could never be read"
            )
        if self.max_decoded_bytes < self.max_request_decoded_bytes:
            raise CamimError(
                f"max_decoded_bytes ({self.max_decoded_bytes}) must be at least max_request_decoded_bytes "
                f"({self.max_request_decoded_bytes}): a request within its own limit would get 503 forever"
            )


class HTTPFailure(Exception):
    """A request refused with ``status`` and a one-line ``message`` (sent as ``{"error": message}``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class Readiness:
    """What ``/readyz`` answers: ready once the model has run a warm-up post, until the server is told to
    stop (SIGTERM, or its shutdown), and while a thread is free to prepare another request (``preparing``: the
    limiter of those threads)."""

    ready: bool = False
    error: str | None = "warming up"
    stopping: bool = False
    preparing: CapacityLimiter | None = None

    def stop(self) -> None:
        self.stopping = True

    def problem(self) -> str | None:
        """Why the server is not ready, or None."""
        if self.stopping:
            return "shutting down"
        if not self.ready:
            return self.error or "not ready"
        limiter = self.preparing
        if limiter is not None and limiter.borrowed_tokens >= limiter.total_tokens:
            return (
                f"saturated: all {int(limiter.total_tokens)} threads preparing requests are busy "
                f"({limiter.statistics().tasks_waiting} request(s) waiting)"
            )
        return None


# ---------------------------------------------------------------------------- app
def create_app(
    predictor: Predictor, config: ServeConfig | None = None, api_key: str | None = None
) -> FastAPI:
    """The FastAPI application serving ``predictor`` with the limits of ``config``; with ``api_key``, the API
    and the metrics need ``Authorization: Bearer <api_key>``. The app sets the predictor's batching to the
    config's and reports its forwards to the app's metrics (one app per predictor)."""
    config = config or ServeConfig()
    predictor.max_image_bytes = config.max_image_bytes
    predictor.max_image_pixels = config.max_image_pixels
    predictor.max_decoded_bytes = config.max_request_decoded_bytes
    predictor.engine.max_batch_size = config.max_batch_size
    predictor.engine.max_wait_ms = config.max_wait_ms
    in_flight = InFlight()
    budget = BodyBudget(config.max_reading_bytes)
    metrics = ServerMetrics(
        queue_depth=lambda: predictor.engine.depth,
        in_flight=lambda: in_flight.count,
        captioner_failures=lambda: predictor.caption_failures,
        body_bytes_held=lambda: budget.held,
        body_budget_refusals=lambda: budget.refused,
    )
    predictor.engine.on_batch = metrics.observe_batch
    readiness = Readiness(preparing=CapacityLimiter(config.max_preparing))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(
            target=_warm_up, args=(predictor, readiness), name="camim-warm-up", daemon=True
        ).start()
        drain_on_sigterm(readiness.stop, config.drain_delay_s)
        yield
        readiness.stop()
        await run_in_threadpool(predictor.engine.drain, config.request_timeout_s)

    app = FastAPI(
        title="camim",
        description="Multimodal relation extraction (CAMIM / TMR / HVPNeT) on a post, its entities and its image.",
        version=_version(),
        lifespan=lifespan,
    )
    _add_error_handlers(app)
    _add_page(app)
    _add_probes(app, readiness, metrics)
    _add_api(app, predictor, config, readiness.preparing)
    app.add_middleware(AdmissionMiddleware, in_flight=in_flight, limit=config.max_queue)
    app.add_middleware(
        BodyGateMiddleware,
        routes=app.router.routes,
        limit=config.max_request_bytes,
        timeout_s=config.body_timeout_s,
        budget=budget,
    )
    if api_key:
        app.add_middleware(AuthMiddleware, key=api_key)
    app.add_middleware(ObserveMiddleware, observe=metrics.observe_request)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(HTTPFailure)
    async def _on_http_failure(_request: Request, exc: HTTPFailure) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


def _add_page(app: FastAPI) -> None:
    static_dir = resources.files("camim.inference") / "static"

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static_dir / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")


def _add_probes(app: FastAPI, readiness: Readiness, metrics: ServerMetrics) -> None:
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Alive: the process answers (open even with an API key)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def readyz() -> Any:
        """Ready: the model is loaded and has answered a warm-up post (503 before, from SIGTERM on, and
        while every thread preparing requests is busy)."""
        problem = readiness.problem()
        if problem is None:
            return {"status": "ready"}
        return JSONResponse({"error": problem}, status_code=503)

    @app.get("/metrics", tags=["operations"])
    async def prometheus_metrics() -> Response:
        """The metrics in Prometheus' text format."""
        return Response(metrics.render(), media_type=metrics.content_type)


def _add_api(app: FastAPI, predictor: Predictor, config: ServeConfig, preparing: CapacityLimiter) -> None:
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 503, 504)
    }
    dispatch = _Dispatch(predictor, config, preparing)

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        """The loaded model: its labels, the modalities it reads and the helpers that fill missing ones."""
        return {**predictor.info(), "limits": asdict(config)}

    # The answers are built from Prediction.to_dict and sent as they are: response_model documents them in
    # the OpenAPI schema without FastAPI validating every answer against it again.
    @app.post("/api/predict", response_model=PredictResponse, responses=errors)
    async def predict(req: PredictRequest, request: Request) -> JSONResponse:
        """Predict the relation between ``head`` and ``tail`` in one post."""
        return JSONResponse((await dispatch(request, [req]))[0])

    @app.post("/api/predict_batch", response_model=BatchResponse, responses=errors)
    async def predict_batch(req: BatchRequest, request: Request) -> JSONResponse:
        """Predict several posts in one call (at most ``max_batch``)."""
        if not req.items:
            raise HTTPFailure(422, "items: give at least one post")
        if len(req.items) > config.max_batch:
            raise HTTPFailure(413, f"items: {len(req.items)} posts is over the limit of {config.max_batch}")
        return JSONResponse({"results": await dispatch(request, req.items)})


# ---------------------------------------------------------------------------- requests
class _Dispatch:
    """Runs a request's posts through the batching engine, within the deadline, while its client waits."""

    def __init__(self, predictor: Predictor, config: ServeConfig, preparing: CapacityLimiter):
        self.predictor = predictor
        self.config = config
        self.preparing = preparing
        self.budget = Budget(config.max_decoded_bytes)

    async def __call__(self, request: Request, reqs: list[PredictRequest]) -> list[dict[str, Any]]:
        job = _Job(self.predictor, self.config, reqs, self.budget, self.preparing)
        work = asyncio.ensure_future(job.run())
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait(
                {work, gone}, timeout=self.config.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:  # an answer not waited for is withdrawn: its posts never reach a forward, its preparation stops
            gone.cancel()
            if not work.done() and job.cancel():
                work.cancel()
            elif not work.done():  # it ends with its thread, which keeps its place in the limiter until then
                work.add_done_callback(_retrieve)
        if work not in done:
            if gone in done:
                raise HTTPFailure(499, "the client closed the request")
            raise HTTPFailure(
                504, f"no answer within the request deadline of {self.config.request_timeout_s} s"
            )
        results, batch_size = work.result()
        request.state.batch_size = batch_size
        return [_response(res, req.top_k) for res, req in zip(results, reqs)]


def _retrieve(task: asyncio.Future) -> None:
    """Take the outcome of an abandoned task (asyncio would log an exception nobody took)."""
    if not task.cancelled():
        task.exception()


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Job:
    """One request's posts: checked, decoded and prepared in a worker thread, then submitted to the engine
    together. The decoded bytes its images take are held in ``budget`` until both its waiter and its thread
    are done; cancel() stops its preparation at the next step and withdraws the posts not yet in a forward
    (or stops them from being submitted at all)."""

    def __init__(
        self,
        predictor: Predictor,
        config: ServeConfig,
        reqs: list[PredictRequest],
        budget: Budget,
        preparing: CapacityLimiter,
    ):
        self.predictor = predictor
        self.config = config
        self.reqs = reqs
        self.budget = budget
        self.preparing = preparing
        self.wheres = [f"items[{k}]: " if len(reqs) > 1 else "" for k in range(len(reqs))]
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[BatchFuture] = []
        self._held = 0  # bytes held in the budget
        self._holders = 2  # run() and _prepare_and_submit(): the bytes are given back when both are done
        self._running = False  # _prepare_and_submit is running

    async def run(self) -> tuple[list[Prediction], int]:
        """The predictions, and the largest forward they ran in."""
        try:
            if any(req.image for req in self.reqs) or self.predictor.image_generator is not None:
                # decoding, helpers: in parallel, in at most max_preparing threads; a thread holds its token
                # until it returns, also after its request was answered
                futures = await to_thread.run_sync(self._prepare_and_submit, limiter=self.preparing)
            else:  # text and spans only: cheaper here than the hop to a worker thread and back
                futures = self._prepare_and_submit()
            outcomes = await asyncio.gather(
                *(asyncio.wrap_future(f) for f in futures), return_exceptions=True
            )
        finally:
            self._let_go()
        for outcome, where in zip(outcomes, self.wheres):
            if isinstance(outcome, CamimError):
                raise _as_http_failure(outcome, where)
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes, max((f.batch_size or 0 for f in futures), default=0)

    def _prepare_and_submit(self) -> list[BatchFuture]:
        engine = self.predictor.engine
        with self._lock:
            if self.stop.is_set():  # answered while it waited for a thread
                return []
            self._running = True
        try:
            with engine.expect(len(self.reqs)):  # the engine may wait for these while they are decoded
                items = [_to_item(req, self.config, where) for req, where in zip(self.reqs, self.wheres)]
                self._hold_decoded(items)
                prepared = []
                for k, (item, where) in enumerate(zip(items, self.wheres)):
                    try:
                        prepared.append(self.predictor.prepare(item, index=k, stop=self.stop))
                    except CamimError as exc:
                        raise _as_http_failure(exc, where) from None
                with self._lock:
                    if not self.stop.is_set():
                        self._futures = engine.submit_many(prepared)
                    return self._futures
        finally:
            with self._lock:
                self._running = False
            self._let_go()

    def _hold_decoded(self, items: list[dict[str, Any]]) -> None:
        """Hold what decoding the request's images takes (read from their headers; they are decoded one at
        a time, and their reduced copies kept): 413 over ``max_request_decoded_bytes``, 503 when the
        requests being prepared hold too much of ``max_decoded_bytes`` to add it."""
        largest, kept = 0, 0
        for item, where in zip(items, self.wheres):
            try:
                one, keep = self.predictor.decode_cost(item)
            except CamimError as exc:
                raise _as_http_failure(exc, where) from None
            largest, kept = max(largest, one), kept + keep
        size, limit = largest + kept, self.config.max_request_decoded_bytes
        if size > limit:
            raise HTTPFailure(
                413,
                f"images: decoding them takes {human_size(size)}, over the limit of {human_size(limit)} "
                "per request (max_request_decoded_bytes)",
            )
        if size and not self.budget.take(size):
            raise HTTPFailure(
                503,
                f"images: decoding them takes {human_size(size)}; the server's budget of "
                f"{human_size(self.budget.limit)} decoded (max_decoded_bytes) is held by other requests: "
                "retry",
                {"Retry-After": "1"},
            )
        self._held = size

    def _let_go(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._held:
                self.budget.give(self._held)
                self._held = 0

    def cancel(self) -> bool:
        """Stop the preparation and withdraw the posts; True when no thread runs for the job (its waiter may
        then be cancelled), False while one does: its waiter should end with it, so that the thread keeps its
        place in ``preparing`` until it has stopped."""
        with self._lock:
            self.stop.set()
            for future in self._futures:
                future.cancel()
            return not self._running


def _warm_up(predictor: Predictor, readiness: Readiness) -> None:
    """One post through the model (a given caption: no captioner call), then ready."""
    from PIL import Image

    item: dict[str, Any] = {
        "token": ["warm", "up", "post"],
        "head": (0, 1),
        "tail": (2, 3),
        "caption": "a picture",
    }
    if "image" in predictor.required_modalities:
        item["image"] = Image.new("RGB", (64, 64), (128, 128, 128))
    try:
        predictor.predict_batch([item])
    except Exception as exc:  # the server stays up and says why it is not ready
        readiness.error = f"warm-up failed: {type(exc).__name__}: {exc}"
        LOG.error("camim serve: %s", readiness.error)
        return
    readiness.ready, readiness.error = True, None


def _response(result: Prediction, top_k: int | None) -> dict[str, Any]:
    d = result.to_dict()
    if top_k:
        d["distribution"] = d["distribution"][:top_k]
    return d


def _as_http_failure(exc: CamimError, where: str) -> HTTPFailure:
    status = 413 if isinstance(exc, ImageError) and exc.too_large else 400
    return HTTPFailure(status, where + str(exc))


def _to_item(req: PredictRequest, config: ServeConfig, where: str) -> dict[str, Any]:
    if (req.text is None) == (req.token is None):
        raise HTTPFailure(422, where + "give exactly one of 'text' and 'token'")
    if req.text is not None and not req.text.strip():
        raise HTTPFailure(422, where + "text: the post is empty")
    if req.text is not None and len(req.text) > config.max_text_chars:
        raise HTTPFailure(
            413, where + f"text: {len(req.text)} characters is over the limit of {config.max_text_chars}"
        )
    if req.token is not None and sum(len(t) + 1 for t in req.token) > config.max_text_chars:
        raise HTTPFailure(
            413, where + f"token: the post is over the limit of {config.max_text_chars} characters"
        )
    if req.caption is not None and len(req.caption) > config.max_caption_chars:
        raise HTTPFailure(
            413,
            where + f"caption: {len(req.caption)} characters is over the limit of {config.max_caption_chars}",
        )
    item: dict[str, Any] = {
        "head": req.head if isinstance(req.head, str) else req.head.model_dump(exclude_none=True),
        "tail": req.tail if isinstance(req.tail, str) else req.tail.model_dump(exclude_none=True),
        "caption": req.caption or None,
    }
    item["text" if req.text is not None else "token"] = req.text if req.text is not None else req.token
    if req.image:
        item["image"] = _decode_image(req.image, config, where)
    return item


def _decode_image(data: str, config: ServeConfig, where: str) -> bytes:
    if data.startswith("data:"):
        data = data.partition(",")[2]
    # base64 inflates by 4/3: refuse before decoding what is certainly too large
    if len(data) * 3 // 4 > config.max_image_bytes + 3:
        raise HTTPFailure(413, where + f"image: over the limit of {config.max_image_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPFailure(400, where + "image: not valid base64") from None


def _version() -> str:
    from camim import __version__

    return __version__

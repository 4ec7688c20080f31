"""``camim serve``: a JSON API (with an OpenAPI schema at ``/docs`` and ``/openapi.json``) and a web page.

Endpoints:

- ``GET /`` -- the web page (plain HTML/JS in ``static/``, no build step).
- ``GET /api/info`` -- labels, required modalities and configured helpers of the loaded model.
- ``POST /api/predict`` -- one post; ``POST /api/predict_batch`` -- up to ``max_batch`` posts.
- ``GET /healthz`` (alive), ``GET /readyz`` (model loaded and warmed up), ``GET /metrics`` (Prometheus).

Images travel as base64 (optionally a ``data:`` URL) in the JSON body. A body is read only for the two
prediction routes (to any other path it is refused unread: 404, 405 or 413), after the API key is checked,
whole and within ``body_timeout_s`` (408 past it) before the request takes an admission slot; requests over
``max_request_bytes`` are refused with 413 before they are read in full, and one whose declared length (or,
chunked, what has arrived) would take the bytes of bodies being read at once past ``max_reading_bytes`` gets
503 with ``Retry-After`` (with a declared length, before its first byte is read); images over ``max_image_bytes`` / ``max_image_pixels``
give 413, corrupt images and bad entity marks 400, schema violations 422; every error body is
``{"error": message}``.

A request's posts are decoded (and captioned) in FastAPI's thread pool, in parallel with other requests, then
handed to the predictor's :class:`~camim.inference.batching.BatchEngine`, which runs the posts of concurrent
requests as one forward (``max_batch_size``, ``max_wait_ms``). Beyond ``max_queue`` requests in flight the
server answers 503 with ``Retry-After`` at once; a request without its answer after ``request_timeout_s``
gets 504; a request whose client left is withdrawn before its forward.
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
from camim.inference.metrics import ServerMetrics
from camim.inference.middleware import (
    AdmissionMiddleware,
    AuthMiddleware,
    BodyBudget,
    BodyGateMiddleware,
    InFlight,
    ObserveMiddleware,
)
from camim.inference.predictor import DEFAULT_MAX_IMAGE_BYTES, Prediction, Predictor
from camim.inference.process import drain_on_sigterm
from camim.inference.schema import BatchRequest, BatchResponse, ErrorResponse, PredictRequest, PredictResponse
from camim.io import MAX_IMAGE_PIXELS

try:
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
    # bytes of request bodies being read at once, process-wide (None: 4 x max_request_bytes); beyond: 503
    max_reading_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_reading_bytes is None:
            self.max_reading_bytes = 4 * self.max_request_bytes
        if self.max_reading_bytes < self.max_request_bytes:
            raise CamimError(
                f"max_reading_bytes ({self.max_reading_bytes}) must be at least max_request_bytes "
                f"({self.max_request_bytes}): a request of the largest size could never be read"
            )


class HTTPFailure(Exception):
    """A request refused with ``status`` and a one-line ``message`` (sent as ``{"error": message}``)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Readiness:
    """What ``/readyz`` answers: ready once the model has run a warm-up post, until the server is told to
    stop (SIGTERM, or its shutdown)."""

    ready: bool = False
    error: str | None = "warming up"
    stopping: bool = False

    def stop(self) -> None:
        self.stopping = True


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
    predictor.engine.max_batch_size = config.max_batch_size
    predictor.engine.max_wait_ms = config.max_wait_ms
    in_flight = InFlight()
    budget = BodyBudget(config.max_reading_bytes)
    metrics = ServerMetrics(
        queue_depth=lambda: predictor.engine.depth,
        in_flight=lambda: in_flight.count,
        captioner_failures=lambda: predictor.caption_failures,
        body_bytes_reading=lambda: budget.reading,
        body_budget_refusals=lambda: budget.refused,
    )
    predictor.engine.on_batch = metrics.observe_batch
    readiness = Readiness()

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
    _add_api(app, predictor, config)
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
        return JSONResponse({"error": exc.message}, status_code=exc.status)


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
        """Ready: the model is loaded and has answered a warm-up post (503 before, and from SIGTERM on)."""
        if readiness.stopping:
            return JSONResponse({"error": "shutting down"}, status_code=503)
        if readiness.ready:
            return {"status": "ready"}
        return JSONResponse({"error": readiness.error or "not ready"}, status_code=503)

    @app.get("/metrics", tags=["operations"])
    async def prometheus_metrics() -> Response:
        """The metrics in Prometheus' text format."""
        return Response(metrics.render(), media_type=metrics.content_type)


def _add_api(app: FastAPI, predictor: Predictor, config: ServeConfig) -> None:
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 503, 504)
    }
    dispatch = _Dispatch(predictor, config)

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

    def __init__(self, predictor: Predictor, config: ServeConfig):
        self.predictor = predictor
        self.config = config

    async def __call__(self, request: Request, reqs: list[PredictRequest]) -> list[dict[str, Any]]:
        job = _Job(self.predictor, self.config, reqs)
        work = asyncio.ensure_future(job.run())
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait(
                {work, gone}, timeout=self.config.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:  # an answer not waited for is withdrawn: its posts never reach a forward
            gone.cancel()
            if not work.done():
                job.cancel()
                work.cancel()
        if work not in done:
            if gone in done:
                raise HTTPFailure(499, "the client closed the request")
            raise HTTPFailure(
                504, f"no answer within the request deadline of {self.config.request_timeout_s} s"
            )
        results, batch_size = work.result()
        request.state.batch_size = batch_size
        return [_response(res, req.top_k) for res, req in zip(results, reqs)]


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Job:
    """One request's posts: checked, decoded and prepared in a worker thread, then submitted to the engine together; cancel()
    withdraws those not yet in a forward (or stops them from being submitted at all)."""

    def __init__(self, predictor: Predictor, config: ServeConfig, reqs: list[PredictRequest]):
        self.predictor = predictor
        self.config = config
        self.reqs = reqs
        self.wheres = [f"items[{k}]: " if len(reqs) > 1 else "" for k in range(len(reqs))]
        self._lock = threading.Lock()
        self._cancelled = False
        self._futures: list[BatchFuture] = []

    async def run(self) -> tuple[list[Prediction], int]:
        """The predictions, and the largest forward they ran in."""
        if any(req.image for req in self.reqs) or self.predictor.image_generator is not None:
            futures = await run_in_threadpool(self._prepare_and_submit)  # decoding, helpers: in parallel
        else:  # text and spans only: cheaper here than the hop to a worker thread and back
            futures = self._prepare_and_submit()
        outcomes = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        for outcome, where in zip(outcomes, self.wheres):
            if isinstance(outcome, CamimError):
                raise _as_http_failure(outcome, where)
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes, max((f.batch_size or 0) for f in futures)

    def _prepare_and_submit(self) -> list[BatchFuture]:
        engine = self.predictor.engine
        with engine.expect(len(self.reqs)):  # the engine may wait for these while they are decoded
            prepared = []
            for k, (req, where) in enumerate(zip(self.reqs, self.wheres)):
                item = _to_item(req, self.config, where)  # base64 decoding here, off the event loop
                try:
                    prepared.append(self.predictor.prepare(item, index=k))
                except CamimError as exc:
                    raise _as_http_failure(exc, where) from None
            with self._lock:
                if not self._cancelled:
                    self._futures = engine.submit_many(prepared)
                return self._futures

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            for future in self._futures:
                future.cancel()


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

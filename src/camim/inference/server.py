"""``camim serve``: a JSON API (with an OpenAPI schema at ``/docs`` and ``/openapi.json``) and a web page.

Endpoints:

- ``GET /`` -- the web page (plain HTML/JS in ``static/``, no build step).
- ``GET /api/info`` -- labels, required modalities and configured helpers of the loaded model.
- ``POST /api/predict`` -- one post; ``POST /api/predict_batch`` -- up to ``max_batch`` posts.

Images travel as base64 (optionally a ``data:`` URL) in the JSON body. Requests over ``max_request_bytes``
are refused with 413 before they are read in full; images over ``max_image_bytes`` / ``max_image_pixels``
give 413, corrupt images and bad entity marks 400, schema violations 422; every error body is
``{"error": message}``. Requests run in FastAPI's thread pool; image decoding and captioning run there in
parallel, and the :class:`Predictor` serialises the model forward with a lock, so concurrent requests are safe.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from camim.errors import CamimError, ImageError
from camim.inference.predictor import DEFAULT_MAX_IMAGE_BYTES, Predictor
from camim.io import MAX_IMAGE_PIXELS

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise CamimError(
        f"`camim serve` needs the optional serve extra ({exc.name} is missing): pip install 'camim[serve]'"
    ) from None


@dataclass
class ServeConfig:
    """Limits of the HTTP API."""

    max_request_bytes: int = 16 * 1024 * 1024
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_text_chars: int = 5000
    max_caption_chars: int = 2000
    max_batch: int = 64


# ---------------------------------------------------------------------------- schema
class EntityIn(BaseModel):
    """An entity: a token span ``pos`` [start, end), a character span ``char`` [start, end), or a mention ``name``
    (which must occur exactly once in the post)."""

    pos: list[int] | None = Field(None, min_length=2, max_length=2, examples=[[0, 2]])
    char: list[int] | None = Field(None, min_length=2, max_length=2, examples=[[0, 12]])
    name: str | None = Field(None, max_length=500, examples=["Rafael Nadal"])


class PredictRequest(BaseModel):
    """One post. Give ``text`` (raw post, tokenised MNRE-style) or ``token`` (a token list)."""

    text: str | None = Field(None, examples=["Rafael Nadal gets engaged to Mery Perello"])
    token: list[str] | None = None
    head: EntityIn | str
    tail: EntityIn | str
    image: str | None = Field(None, description="base64 of the encoded image, or a data: URL")
    caption: str | None = Field(None, description="a caption of the image; generated or omitted when absent")
    top_k: int | None = Field(None, ge=1, description="return only the k most probable relations")


class RelationScore(BaseModel):
    relation: str
    probability: float


class EntityOut(BaseModel):
    name: str
    pos: list[int]


class PredictResponse(BaseModel):
    relation: str
    probability: float
    distribution: list[RelationScore]
    tokens: list[str]
    head: EntityOut
    tail: EntityOut
    caption: str | None
    caption_source: str
    absent_modalities: list[str]
    notes: list[str]


class BatchRequest(BaseModel):
    items: list[PredictRequest]


class BatchResponse(BaseModel):
    results: list[PredictResponse]


class ErrorResponse(BaseModel):
    error: str


class HTTPFailure(Exception):
    """A request refused with ``status`` and a one-line ``message`` (sent as ``{"error": message}``)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------- app
class BodyLimitMiddleware:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared length, or counted while streaming)."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(
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
                await _send_json(
                    send, 413, {"error": f"request body is over the limit of {self.limit} bytes"}
                )
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
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send: Any, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def create_app(predictor: Predictor, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``predictor`` with the limits of ``config``."""
    config = config or ServeConfig()
    predictor.max_image_bytes = config.max_image_bytes
    predictor.max_image_pixels = config.max_image_pixels
    static_dir = resources.files("camim.inference") / "static"

    app = FastAPI(
        title="camim",
        description="Multimodal relation extraction (CAMIM / TMR / HVPNeT) on a post, its entities and its image.",
        version=_version(),
    )
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
    }

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

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static_dir / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        """The loaded model: its labels, the modalities it reads and the helpers that fill missing ones."""
        return {**predictor.info(), "limits": asdict(config)}

    @app.post("/api/predict", response_model=PredictResponse, responses=errors)
    def predict(req: PredictRequest) -> dict[str, Any]:
        """Predict the relation between ``head`` and ``tail`` in one post."""
        return _run(predictor, [req], config)[0]

    @app.post("/api/predict_batch", response_model=BatchResponse, responses=errors)
    def predict_batch(req: BatchRequest) -> dict[str, Any]:
        """Predict several posts in one call (at most ``max_batch``)."""
        if not req.items:
            raise HTTPFailure(422, "items: give at least one post")
        if len(req.items) > config.max_batch:
            raise HTTPFailure(413, f"items: {len(req.items)} posts is over the limit of {config.max_batch}")
        return {"results": _run(predictor, req.items, config)}

    app.add_middleware(BodyLimitMiddleware, limit=config.max_request_bytes)
    return app


def _run(predictor: Predictor, reqs: list[PredictRequest], config: ServeConfig) -> list[dict[str, Any]]:
    prepared = []
    for k, req in enumerate(reqs):
        where = f"items[{k}]: " if len(reqs) > 1 else ""
        item = _to_item(req, config, where)
        try:
            prepared.append(predictor.prepare(item, index=k))
        except CamimError as exc:
            raise _as_http_failure(exc, where) from None
    try:
        results = predictor.predict_prepared(prepared)
    except CamimError as exc:
        raise _as_http_failure(exc, "") from None
    out = []
    for req, res in zip(reqs, results):
        d = res.to_dict()
        if req.top_k:
            d["distribution"] = d["distribution"][: req.top_k]
        out.append(d)
    return out


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


def serve(
    predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None
) -> None:
    """Run the API and page with uvicorn until interrupted."""
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise CamimError("`camim serve` needs uvicorn: pip install 'camim[serve]'") from None
    uvicorn.run(create_app(predictor, config), host=host, port=port, log_level="info")

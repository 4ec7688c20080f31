"""Captioners for the :class:`~camim.inference.Predictor`: any callable ``captioner(image) -> str`` works.

:class:`BackendCaptioner` adapts a ``camim.captioning`` backend (which captions batches of image files, e.g.
an OpenAI-compatible server running MiniCPM-V, as the paper's captions were made) to that call, so inference
captions an uploaded image with the same prompt (Eq. 3) as the training captions. ``camim.captioning`` is
imported only when such a captioner is built.
"""

from __future__ import annotations

import inspect
import tempfile
import threading
from pathlib import Path

from PIL import Image

from camim.errors import CamimError, Cancelled


class BackendCaptioner:
    """``captioner(image, stop=None) -> str`` over a ``camim.captioning`` backend (``backend.caption(items,
    on_results[, stop])``); ``max_image_side`` is the backend's (the long side it downscales images to, which
    the predictor decodes images to no less than; None: it sends them whole). With a backend whose
    ``caption`` takes ``stop``, setting that event stops the call (its requests are closed) with
    :class:`~camim.errors.Cancelled`."""

    def __init__(self, backend: object):
        self.backend = backend
        self.name = f"{type(backend).__name__}({getattr(backend, 'model', '?')})"
        self.max_image_side = getattr(getattr(backend, "config", None), "max_image_side", None)
        self._takes_stop = "stop" in inspect.signature(backend.caption).parameters

    def __call__(self, image: Image.Image, stop: threading.Event | None = None) -> str:
        from camim.captioning.images import ImageItem

        results: list = []

        def collect(got: object) -> None:  # backends hand over a list of results (older ones: one result)
            results.extend(got if isinstance(got, list) else [got])

        with tempfile.TemporaryDirectory(prefix="camim-caption-") as tmp:
            path = Path(tmp) / "input.png"
            image.convert("RGB").save(path, format="PNG")
            items = [ImageItem("input.png", path)]
            if self._takes_stop and stop is not None:
                self.backend.caption(items, collect, stop=stop)
            else:
                self.backend.caption(items, collect)
        if stop is not None and stop.is_set():
            raise Cancelled(f"captioning with {self.name} stopped: the request was answered")
        if not results or results[0].kind != "ok" or not results[0].text:
            why = (results[0].error or results[0].kind) if results else "no result"
            raise CamimError(f"captioning with {self.name} failed: {why}")
        return results[0].text.strip()


def openai_captioner(
    model: str,
    base_url: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 2,
    max_tokens: int = 512,
) -> BackendCaptioner:
    """A captioner calling an OpenAI-compatible chat-completions server with the paper's prompt (Eq. 3)."""
    from camim.captioning.base import GenerationConfig
    from camim.captioning.openai_backend import OpenAIBackendConfig, OpenAICaptioner

    config = OpenAIBackendConfig(
        model=model, base_url=base_url, timeout=timeout, max_retries=max_retries, concurrency=1
    )
    return BackendCaptioner(OpenAICaptioner(config, GenerationConfig(max_tokens=max_tokens)))

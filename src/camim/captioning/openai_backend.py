"""Captioning through any OpenAI-compatible chat-completions server (vLLM, DashScope compatible mode, OpenAI).

Each image goes as a base64 ``data:`` URL next to the prompt in one user message (``answer`` sends any
:class:`~camim.captioning.base.ChatRequest`, e.g. the zero-shot extractor's). Requests run on one asyncio
loop with at most ``concurrency`` in flight. Rate limits (429), server errors (5xx, 408, 409),
timeouts and dropped connections are retried with exponential backoff and jitter (honouring a server's
``Retry-After``); the ``openai`` client's own retries are switched off so that retries are counted per image
and the backoff is configurable. Any other 4xx answer is a refusal that retrying cannot fix: it fails that
request only (say, an image too large), with the server's own words (:func:`server_message`), unless
``max_refusals`` refusals come in a row with the same status and message (numbers aside: a prompt-length
refusal names each prompt's token count), as a bad API key, an unknown model or a context too short for every
prompt gives. Then the run stops sending (:class:`RefusalStop`, a ``CamimError`` of one line with the
server's words); the answers received so far have been handed over, so a rerun resumes.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from camim.captioning.base import CaptionResult, ChatRequest, GenerationConfig
from camim.captioning.images import ImageItem, ImageProblem, image_data_url
from camim.errors import CamimError


@dataclass
class OpenAIBackendConfig:
    """Where and how to send requests. ``base_url`` ``None`` means the ``OPENAI_BASE_URL`` environment
    variable, else OpenAI itself. The API key is read from the environment variable ``api_key_env``; when it is
    unset and ``base_url`` is given (a local vLLM needs no key) the placeholder ``EMPTY`` is sent."""

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 120.0  # seconds per request
    max_retries: int = 5
    backoff: float = 1.0  # delay before the first retry; doubled for each further retry
    max_backoff: float = 30.0
    max_image_side: int | None = None  # downscale larger images before sending (None: send the file as is)
    extra_body: dict = field(default_factory=dict)  # server-specific request fields, e.g. vLLM's top_k
    max_refusals: int = 3  # refusals in a row with the same status and message that stop the run

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.max_refusals < 1:
            raise ValueError(f"max_refusals must be >= 1, got {self.max_refusals}")


_REFUSAL_HINT = {401: "the API key was rejected", 403: "access denied", 404: "unknown model or endpoint"}
_MAX_MESSAGE = 300  # characters of a server's message kept in one line


def _status(status: int) -> str:
    """``HTTP 401 (the API key was rejected)``: a status, with what it means when that is always the same."""
    return f"HTTP {status}" + (f" ({_REFUSAL_HINT[status]})" if status in _REFUSAL_HINT else "")


class RefusalStop(CamimError):
    """The run stopped sending after ``max_refusals`` refusals in a row that retrying cannot fix."""


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def server_message(body: object) -> str | None:
    """The server's own words in an error body, on one line: ``error.message`` (OpenAI, vLLM), ``message``,
    ``detail`` (FastAPI, e.g. ``transformers serve``; of a list of validation errors, their messages), an
    ``error`` string, or a text body; ``None`` when it has none."""
    if isinstance(body, str):
        return _one_line(body) if body.strip() else None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    said_in = (
        error.get("message") if isinstance(error, dict) else error,
        body.get("message"),
        body.get("detail"),
    )
    for said in said_in:
        if isinstance(said, list):  # FastAPI's validation errors
            said = "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in said)
        if isinstance(said, str) and said.strip():
            return _one_line(said)
    return None


class Refusals:
    """Counts refusals in a row across one run's requests (the decision to stop, in one place): an answer
    breaks the row, and so does a refusal with another status or message (numbers masked)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.row = 0
        self.last: tuple[int, str] | None = None
        self.answered = 0

    def answer(self) -> None:
        self.row, self.last = 0, None
        self.answered += 1

    def refused(self, status: int, message: str) -> bool:
        """Count one refusal; ``True`` when it makes ``limit`` in a row of the same kind."""
        kind = (status, re.sub(r"\d+", "#", message))
        self.row = self.row + 1 if kind == self.last else 1
        self.last = kind
        return self.row >= self.limit


def _is_retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


async def _cancel_when(stop: threading.Event, tasks: list[asyncio.Task]) -> None:
    """Cancel ``tasks`` (closing their requests) once ``stop`` is set (checked every 50 ms)."""
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()


def _retry_after(exc: Exception) -> float | None:
    """The server's requested delay in seconds (``retry-after-ms`` or numeric ``retry-after``), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name, ""))
        except ValueError:
            continue
        if 0 <= value * scale <= 120:
            return value * scale
    return None


class OpenAICaptioner:
    """The ``openai`` backend (see the module docstring)."""

    def __init__(self, config: OpenAIBackendConfig, generation: GenerationConfig | None = None):
        import openai  # the optional dependency, imported where needed

        self._openai = openai
        self.config = config
        self.generation = generation or GenerationConfig()
        self.model = config.model

    def settings(self) -> dict:
        return {
            "backend": "openai",
            "base_url": self._base_url(),
            "max_tokens": self.generation.max_tokens,
            "temperature": self.generation.temperature,
            "max_image_side": self.config.max_image_side,
            **({"extra_body": self.config.extra_body} if self.config.extra_body else {}),
        }

    def _base_url(self) -> str | None:
        return self.config.base_url or os.environ.get("OPENAI_BASE_URL")

    def _client(self):
        base_url = self._base_url()
        key = os.environ.get(self.config.api_key_env)
        if not key:
            if base_url is None:
                raise CamimError(
                    f"no API key: set the environment variable {self.config.api_key_env} "
                    "(or name another with --api-key-env), or pass --base-url for a local server"
                )
            key = "EMPTY"
        return self._openai.AsyncOpenAI(
            api_key=key, base_url=base_url, timeout=self.config.timeout, max_retries=0
        )

    def render(self, request: ChatRequest) -> list[dict]:
        """``request``'s messages in the chat-completions form: each image as a base64 ``data:`` URL
        (``ImageProblem`` when one is missing or unreadable)."""
        out = []
        for message in request.messages:
            content = []
            for part in message["content"]:
                if part["type"] == "image":
                    url = image_data_url(part["image"], self.config.max_image_side)
                    content.append({"type": "image_url", "image_url": {"url": url}})
                else:
                    content.append(part)
            out.append({"role": message["role"], "content": content})
        return out

    def caption(
        self,
        items: Sequence[ImageItem],
        on_results: Callable[[list[CaptionResult]], None],
        stop: threading.Event | None = None,
    ) -> None:
        self.answer([ChatRequest.caption(item, self.generation.prompt) for item in items], on_results, stop)

    def answer(
        self,
        requests: Sequence[ChatRequest],
        on_results: Callable[[list[CaptionResult]], None],
        stop: threading.Event | None = None,
    ) -> None:
        """Answer ``requests``, handing results to ``on_results`` as they come; once ``stop`` is set, the
        requests in flight are closed and no more are sent (what finished is handed over)."""
        if requests:
            asyncio.run(self._answer_all(list(requests), on_results, stop))

    async def _answer_all(
        self,
        requests: list[ChatRequest],
        on_results: Callable[[list[CaptionResult]], None],
        stop: threading.Event | None = None,
    ) -> None:
        client = self._client()
        pending = iter(requests)
        ready: list[CaptionResult] = []  # finished, not yet handed over
        wake = asyncio.Event()
        refusals = Refusals(self.config.max_refusals)

        async def worker() -> None:
            for request in pending:  # the shared iterator hands each request to exactly one worker
                ready.append(await self._answer_one(client, request, refusals))
                wake.set()

        def flush() -> None:
            if ready:
                batch = ready[:]
                ready.clear()
                on_results(batch)

        async def writer() -> None:
            # Group commit: results that finish together are written with one write + fsync, so the
            # fsync latency is paid once per batch, not once per request, while requests keep flowing.
            while True:
                await wake.wait()
                wake.clear()
                await asyncio.sleep(0)  # let the other responses already received join this batch
                flush()

        workers = [
            asyncio.ensure_future(worker()) for _ in range(min(self.config.concurrency, len(requests)))
        ]
        writer_task = asyncio.ensure_future(writer())
        watcher = asyncio.ensure_future(_cancel_when(stop, workers)) if stop is not None else None
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled():
                    task.result()  # re-raise a fatal error
        finally:
            for task in [*workers, writer_task, *([watcher] if watcher else [])]:
                task.cancel()
            await asyncio.gather(
                *workers, writer_task, *([watcher] if watcher else []), return_exceptions=True
            )
            flush()  # what finished before an interruption is kept
            await client.close()

    async def _answer_one(self, client, request: ChatRequest, refusals: Refusals) -> CaptionResult:
        openai = self._openai
        key = request.key
        try:
            messages = await asyncio.to_thread(self.render, request)
        except ImageProblem as exc:
            return CaptionResult(key, exc.kind, error=str(exc))
        retries = 0
        while True:
            try:
                response = await client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    max_tokens=self.generation.max_tokens,
                    temperature=self.generation.temperature,
                    **({"extra_body": self.config.extra_body} if self.config.extra_body else {}),
                )
            except openai.APIStatusError as exc:
                status, said = exc.status_code, server_message(exc.body) or exc.message
                if not _is_retryable_status(status):
                    if refusals.refused(status, said):
                        raise self._stop(status, said, refusals) from None
                    return CaptionResult(key, "failed", error=f"{_status(status)}: {said}", retries=retries)
                error, detail, failure = f"HTTP {status}", f": {said}", exc
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                error = "timeout" if isinstance(exc, openai.APITimeoutError) else f"connection error: {exc}"
                detail, failure = "", exc
            else:
                if not response.choices:
                    return CaptionResult(key, "failed", error="response has no choices", retries=retries)
                refusals.answer()
                choice = response.choices[0]
                return CaptionResult(
                    key,
                    "ok",
                    text=choice.message.content or "",
                    retries=retries,
                    finish_reason=choice.finish_reason,
                )
            if retries >= self.config.max_retries:
                error = f"{error} after {retries} retries{detail}"
                return CaptionResult(key, "failed", error=error, retries=retries)
            delay = _retry_after(failure)
            if delay is None:
                delay = min(self.config.backoff * 2.0**retries, self.config.max_backoff)
                delay *= 1.0 - 0.25 * random.random()  # jitter keeps concurrent retries apart
            retries += 1
            await asyncio.sleep(delay)

    def _stop(self, status: int, said: str, refusals: Refusals) -> RefusalStop:
        """The one-line reason a run stops sending, in the server's words."""
        return RefusalStop(
            f"{self._base_url() or 'api.openai.com'} refused {refusals.row} requests in a row with "
            f'{_status(status)}, model {self.model!r}: "{said}"; stopped sending (retrying cannot fix '
            f"this); what was answered before is kept ({refusals.answered} answers in this run); fix the "
            "cause, then rerun the same command to resume"
        )

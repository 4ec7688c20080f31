"""Captioning through any OpenAI-compatible chat-completions server (vLLM, DashScope compatible mode, OpenAI).

Each image goes as a base64 ``data:`` URL next to the prompt in one user message (``answer`` sends any
:class:`~camim.captioning.base.ChatRequest`, e.g. the zero-shot extractor's). Requests run on one asyncio
loop with at most ``concurrency`` in flight. Rate limits (429), server errors (5xx, 408, 409),
timeouts and dropped connections are retried with exponential backoff and jitter (honouring a server's
``Retry-After``); the ``openai`` client's own retries are switched off so that retries are counted per image
and the backoff is configurable. A bad API key, a forbidden or unknown model stops the run (``CamimError``);
any other rejected request (say, an image too large) fails that image only.
"""

from __future__ import annotations

import asyncio
import os
import random
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

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")


_FATAL_STATUS = {401: "the API key was rejected", 403: "access denied", 404: "unknown model or endpoint"}


def _is_retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


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

    def caption(self, items: Sequence[ImageItem], on_results: Callable[[list[CaptionResult]], None]) -> None:
        self.answer([ChatRequest.caption(item, self.generation.prompt) for item in items], on_results)

    def answer(
        self, requests: Sequence[ChatRequest], on_results: Callable[[list[CaptionResult]], None]
    ) -> None:
        if requests:
            asyncio.run(self._answer_all(list(requests), on_results))

    async def _answer_all(
        self, requests: list[ChatRequest], on_results: Callable[[list[CaptionResult]], None]
    ) -> None:
        client = self._client()
        pending = iter(requests)
        ready: list[CaptionResult] = []  # finished, not yet handed over
        wake = asyncio.Event()

        async def worker() -> None:
            for request in pending:  # the shared iterator hands each request to exactly one worker
                ready.append(await self._answer_one(client, request))
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
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise a fatal error
        finally:
            for task in [*workers, writer_task]:
                task.cancel()
            await asyncio.gather(*workers, writer_task, return_exceptions=True)
            flush()  # what finished before an interruption is kept
            await client.close()

    async def _answer_one(self, client, request: ChatRequest) -> CaptionResult:
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
                status = exc.status_code
                if status in _FATAL_STATUS:
                    raise CamimError(
                        f"{self._base_url() or 'api.openai.com'}: {_FATAL_STATUS[status]} "
                        f"(HTTP {status}, model {self.model!r}): {exc.message}"
                    ) from None
                if not _is_retryable_status(status):
                    return CaptionResult(key, "failed", error=f"HTTP {status}: {exc.message}")
                error, failure = f"HTTP {status}", exc
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                error = "timeout" if isinstance(exc, openai.APITimeoutError) else f"connection error: {exc}"
                failure = exc
            else:
                if not response.choices:
                    return CaptionResult(key, "failed", error="response has no choices", retries=retries)
                choice = response.choices[0]
                return CaptionResult(
                    key,
                    "ok",
                    text=choice.message.content or "",
                    retries=retries,
                    finish_reason=choice.finish_reason,
                )
            if retries >= self.config.max_retries:
                return CaptionResult(key, "failed", error=f"{error} after {retries} retries", retries=retries)
            delay = _retry_after(failure)
            if delay is None:
                delay = min(self.config.backoff * 2.0**retries, self.config.max_backoff)
                delay *= 1.0 - 0.25 * random.random()  # jitter keeps concurrent retries apart
            retries += 1
            await asyncio.sleep(delay)

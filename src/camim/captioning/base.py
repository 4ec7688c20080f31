"""What every captioning backend shares: the generation settings, one request, one result, and the backend
interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from camim.captioning.cache import PAPER_PROMPT, prompt_hash
from camim.captioning.images import ImageItem


@dataclass
class GenerationConfig:
    """The prompt and decoding settings of C = MLLM(prompt, V) (§3.1.2, Eq. 3-4).

    ``temperature`` 0 means greedy decoding (the transformers backend) or the server's most deterministic
    sampling (OpenAI-compatible servers).
    """

    prompt: str = PAPER_PROMPT  # Eq. (3)
    max_tokens: int = 512
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("the prompt is empty")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.prompt)  # type: ignore[return-value]


@dataclass
class CaptionResult:
    """The outcome for one image: ``kind`` is ``ok`` (``text`` set), ``missing``, ``corrupt`` or ``failed``
    (the request failed after ``retries`` retries; ``error`` says why)."""

    img_id: str
    kind: str
    text: str | None = None
    error: str | None = None
    retries: int = 0
    finish_reason: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    """One chat request of a run: ``key`` names its result (the cache key's first part), ``messages`` are
    chat turns ``{"role": "user" | "assistant" | "system", "content": [part, ...]}`` whose parts are
    ``{"type": "text", "text": str}`` or ``{"type": "image", "image": ImageItem}``; each backend renders the
    images its own way (a base64 ``data:`` URL, or a decoded image beside the chat template's placeholder)."""

    key: str
    messages: tuple[dict, ...]

    @classmethod
    def caption(cls, item: ImageItem, prompt: str) -> ChatRequest:
        """The captioning request of Eq. (4), C = MLLM(prompt, V): one user turn, the image then the prompt."""
        content = ({"type": "image", "image": item}, {"type": "text", "text": prompt})
        return cls(item.img_id, ({"role": "user", "content": content},))

    def images(self) -> list[ImageItem]:
        """The request's images in message order."""
        return [p["image"] for m in self.messages for p in m["content"] if p["type"] == "image"]


class CaptionBackend(Protocol):
    """A captioner: hands every item's result to ``on_results`` exactly once, in batches of results that
    are ready together (in any order, one call at a time, from the calling thread)."""

    model: str
    generation: GenerationConfig

    def settings(self) -> dict:
        """The settings recorded with every caption (backend name, max tokens, temperature, ...)."""
        ...

    def caption(self, items: Sequence[ImageItem], on_results: Callable[[list[CaptionResult]], None]) -> None:
        """Caption ``items``; raises ``CamimError`` on a fatal problem (bad key, unknown model)."""
        ...

    def answer(
        self, requests: Sequence[ChatRequest], on_results: Callable[[list[CaptionResult]], None]
    ) -> None:
        """Answer any chat ``requests`` (one result per request, ``img_id`` = the request's key), with the
        same concurrency, retries and failure kinds as ``caption``."""
        ...

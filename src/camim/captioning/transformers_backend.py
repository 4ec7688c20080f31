"""Captioning with a local Hugging Face image-text-to-text model (``AutoModelForImageTextToText`` +
``AutoProcessor``), e.g. ``llava-hf/llama3-llava-next-8b-hf``, ``Qwen/Qwen2.5-VL-7B-Instruct`` or a local
folder. The prompt goes through the processor's chat template; images are captioned in batches with left
padding, greedily when ``temperature`` is 0."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from camim.captioning.base import CaptionResult, ChatRequest, GenerationConfig
from camim.captioning.images import ImageItem, ImageProblem, load_image
from camim.errors import CamimError

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class TransformersBackendConfig:
    """Which model (hub id or local folder) and where to run it. ``device`` ``auto`` picks CUDA, then MPS,
    then CPU; ``dtype`` ``auto`` uses the checkpoint's own dtype."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 4
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def _resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class TransformersCaptioner:
    """The ``transformers`` backend (see the module docstring). The model loads on first use."""

    def __init__(self, config: TransformersBackendConfig, generation: GenerationConfig | None = None):
        self.config = config
        self.generation = generation or GenerationConfig()
        self.model = config.model
        self.device = _resolve_device(config.device)
        self._processor = None
        self._network = None

    def settings(self) -> dict:
        return {
            "backend": "transformers",
            "max_tokens": self.generation.max_tokens,
            "temperature": self.generation.temperature,
            "device": self.device,
            "dtype": self.config.dtype,
            "batch_size": self.config.batch_size,
        }

    def load(self) -> None:
        """Load processor and model (``from_pretrained``); ``CamimError`` when the name/folder is unusable."""
        if self._network is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = "auto" if self.config.dtype == "auto" else getattr(torch, self.config.dtype)
        try:
            processor = AutoProcessor.from_pretrained(
                self.config.model, trust_remote_code=self.config.trust_remote_code
            )
            network = AutoModelForImageTextToText.from_pretrained(
                self.config.model, dtype=dtype, trust_remote_code=self.config.trust_remote_code
            )
        except (OSError, ValueError, KeyError) as exc:
            raise CamimError(f"cannot load image-text-to-text model {self.config.model!r}: {exc}") from None
        if getattr(processor, "chat_template", None) is None:
            raise CamimError(f"{self.config.model}: the processor has no chat template")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only generation needs the prompts right-aligned
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        self._processor = processor
        self._network = network.to(self.device).eval()

    def chat_text(self, request: ChatRequest) -> str:
        """``request`` rendered by the processor's chat template, an image placeholder where each image goes."""
        messages = [
            {
                "role": m["role"],
                "content": [{"type": "image"} if p["type"] == "image" else p for p in m["content"]],
            }
            for m in request.messages
        ]
        return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_text(self) -> str:
        """The caption prompt rendered by the processor's chat template (one image, then the text)."""
        return self.chat_text(ChatRequest.caption(ImageItem("", Path()), self.generation.prompt))

    def generate(self, images: list) -> list[str]:
        """Captions of a batch of PIL images, in order."""
        return [text for text, _ in self._generate(images)]

    def _generate(self, images: list) -> list[tuple[str, str]]:
        """(caption, finish reason) per image: ``stop`` when the model ended it, ``length`` at max tokens."""
        self.load()
        return self._generate_texts([self.prompt_text()] * len(images), images)

    def _generate_texts(self, texts: list[str], images: list) -> list[tuple[str, str]]:
        """(answer, finish reason) per rendered prompt; ``images`` are all the prompts' images in order."""
        import torch

        inputs = self._processor(images=images or None, text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        pixels = inputs.get("pixel_values")
        if pixels is not None and pixels.is_floating_point():
            inputs["pixel_values"] = pixels.to(self._network.dtype)
        sampling = self.generation.temperature > 0
        kwargs = {"do_sample": sampling, "max_new_tokens": self.generation.max_tokens}
        if sampling:
            kwargs["temperature"] = self.generation.temperature
        with torch.inference_mode():
            out = self._network.generate(**inputs, **kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        eos = self._network.generation_config.eos_token_id
        eos = set([eos] if isinstance(eos, int) else (eos or []))
        reasons = [
            "stop" if eos & set(row.tolist()) or len(row) < self.generation.max_tokens else "length"
            for row in new_tokens
        ]
        return list(zip(self._processor.batch_decode(new_tokens, skip_special_tokens=True), reasons))

    def caption(self, items: Sequence[ImageItem], on_results: Callable[[list[CaptionResult]], None]) -> None:
        self.answer([ChatRequest.caption(item, self.generation.prompt) for item in items], on_results)

    def answer(
        self, requests: Sequence[ChatRequest], on_results: Callable[[list[CaptionResult]], None]
    ) -> None:
        """Answer ``requests`` in batches of ``batch_size`` (greedy when temperature is 0); a request whose
        image is missing or unreadable gets that result at once and is not sent."""
        if not requests:
            return
        self.load()
        batch: list[tuple[ChatRequest, list]] = []
        for i, request in enumerate(requests):
            try:
                batch.append((request, [load_image(item) for item in request.images()]))
            except ImageProblem as exc:
                on_results([CaptionResult(request.key, exc.kind, error=str(exc))])
            if batch and (len(batch) == self.config.batch_size or i == len(requests) - 1):
                texts = [self.chat_text(r) for r, _ in batch]
                answers = self._generate_texts(texts, [im for _, ims in batch for im in ims])
                on_results(
                    [
                        CaptionResult(r.key, "ok", text=text, finish_reason=reason)
                        for (r, _), (text, reason) in zip(batch, answers)
                    ]
                )
                batch = []

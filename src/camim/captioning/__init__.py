"""MLLM captions of the images (§3.1.2, Eq. 3-4): C = MLLM(prompt, V).

Backends: ``openai`` (any OpenAI-compatible chat-completions server) and ``transformers`` (a local
image-text-to-text model). Captions go to an append-only, resumable JSONL cache that the data layer reads;
the six caption sets released with CAMIM convert to and from it (``camim caption import/export``).
"""

from camim.captioning.base import CaptionBackend, CaptionResult, GenerationConfig
from camim.captioning.cache import PAPER_PROMPT, CaptionCache, CaptionRecord, prompt_hash, read_cache
from camim.captioning.images import ImageItem, folder_items, split_items
from camim.captioning.runner import CaptionRunReport, caption_images


def __getattr__(name: str):
    # released.py needs the data layer (and so torch): imported on first use, not with the package
    if name in ("export_released", "import_released"):
        from camim.captioning import released

        return getattr(released, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PAPER_PROMPT",
    "CaptionBackend",
    "CaptionCache",
    "CaptionRecord",
    "CaptionResult",
    "CaptionRunReport",
    "GenerationConfig",
    "ImageItem",
    "caption_images",
    "export_released",
    "folder_items",
    "import_released",
    "prompt_hash",
    "read_cache",
    "split_items",
]

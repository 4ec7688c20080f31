"""A multimodal LLM as the relation extractor (``camim zero-shot``): a baseline beside the trained models.

For each sample an MLLM is asked, in one chat, for the relation between the marked head and tail entity of
the post, with the image when it exists (text-only otherwise, and said so), optionally the image's caption,
the label set (with one-line descriptions for MNRE's 23 relations) and K in-context examples from train.
The answer is parsed into one label (:mod:`camim.zeroshot.parse`), scored with the training metrics, and
written as a run folder (:mod:`camim.zeroshot.run`). The requests go through the captioning backends
(OpenAI-compatible servers or local transformers models) and their resumable answer cache.
"""

from camim.zeroshot.parse import AnswerParser, ParsedAnswer
from camim.zeroshot.prompt import PromptBuilder, PromptInput, sample_key, select_shots
from camim.zeroshot.run import ZeroShotConfig, ZeroShotReport, ZeroShotResult, zero_shot

__all__ = [
    "AnswerParser",
    "ParsedAnswer",
    "PromptBuilder",
    "PromptInput",
    "ZeroShotConfig",
    "ZeroShotReport",
    "ZeroShotResult",
    "sample_key",
    "select_shots",
    "zero_shot",
]

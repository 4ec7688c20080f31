"""Running trained extractors on new posts: :class:`Predictor`, ``camim predict`` and ``camim serve``."""

from camim.errors import ImageError
from camim.inference.predictor import Prediction, Predictor, PreparedInput, resolve_model_dir
from camim.inference.text import SpanError, char_span_to_token_span, find_mention, tokenize
from camim.io import open_image

__all__ = [
    "ImageError",
    "Prediction",
    "Predictor",
    "PreparedInput",
    "SpanError",
    "char_span_to_token_span",
    "find_mention",
    "open_image",
    "resolve_model_dir",
    "tokenize",
]

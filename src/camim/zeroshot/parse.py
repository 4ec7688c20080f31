"""Reading one relation label out of an MLLM's answer.

The prompt asks for ``{"relation": "<label>"}``. The parser tolerates what models actually write around it:
code fences, prose before or after the object, single quotes, another key name (``label``), a label written
in another case, without its leading slash or with spaces for underscores, the last path segment of a label
when only one label ends with it (``couple`` -> ``/per/per/couple``), and "no relation" for the negative
label. Without a JSON object, an answer naming exactly one label is read as that label. Anything else (a
refusal, an empty answer, two labels, a label not in the set) is unparseable: the run scores it as the
negative label and counts it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

# how an answer was read
JSON, TEXT, EMPTY, UNPARSEABLE = "json", "text", "empty", "unparseable"
_KEYS = ("relation", "label", "answer", "relation_type", "type")
_NEGATIVE_WORDS = {
    "none",
    "no relation",
    "no_relation",
    "norelation",
    "null",
    "n/a",
    "na",
    "other",
    "unknown",
}
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


@dataclass(frozen=True)
class ParsedAnswer:
    """``label`` is a label of the set, or ``None`` when the answer is ``empty`` or ``unparseable``;
    ``how`` says which (``json``: from the requested object, ``text``: named in free text)."""

    label: str | None
    how: str

    @property
    def parsed(self) -> bool:
        return self.label is not None


def _norm(text: str) -> str:
    text = text.strip().strip("\"'`*.,;:!?()[]{}<> \t\n").lower()
    return re.sub(r"[\s_\-]+", "_", text)


class AnswerParser:
    """Maps answers to labels of ``labels`` (``negative``: the label meaning "no relation", if any)."""

    def __init__(self, labels: Sequence[str], negative: str | None = None):
        self.labels = list(labels)
        self.negative = negative
        self._exact: dict[str, str] = {}
        tails: dict[str, list[str]] = {}
        for name in self.labels:
            for form in (name, name.lstrip("/"), name.replace("/", " ").strip()):
                self._exact.setdefault(_norm(form), name)
            tails.setdefault(_norm(name.rstrip("/").rsplit("/", 1)[-1]), []).append(name)
        # a last segment names a label only when no other label ends with it
        self._tails = {t: names[0] for t, names in tails.items() if len(names) == 1 and t not in self._exact}

    def label_of(self, value: object) -> str | None:
        """The label a JSON value names (``null`` and "no relation" words: the negative label), or ``None``."""
        if value is None:
            return self.negative
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            return None
        key = _norm(value)
        if key in self._exact:
            return self._exact[key]
        if key in self._tails:
            return self._tails[key]
        if self.negative is not None and key.replace("_", " ") in _NEGATIVE_WORDS | {"no relation"}:
            return self.negative
        return None

    def _objects(self, text: str) -> list[dict]:
        """Every JSON (or Python-literal) object in ``text``, in order."""
        found, decoder = [], json.JSONDecoder()
        for start in [m.start() for m in re.finditer(r"\{", text)]:
            try:
                obj, _ = decoder.raw_decode(text[start:])
            except json.JSONDecodeError:
                end = text.find("}", start)
                if end < 0:
                    continue
                try:  # {'relation': '...'}: a dict literal, parsed as data (never evaluated)
                    obj = ast.literal_eval(text[start : end + 1])
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    continue
            if isinstance(obj, dict):
                found.append(obj)
        return found

    def parse(self, answer: str | None) -> ParsedAnswer:
        """One answer -> :class:`ParsedAnswer`."""
        if answer is None or not answer.strip():
            return ParsedAnswer(None, EMPTY)
        text = answer.strip()
        fenced = _FENCE.findall(text)
        candidates = [*fenced, text] if fenced else [text]
        for chunk in candidates:
            for obj in self._objects(chunk):
                lowered = {str(k).lower(): v for k, v in obj.items()}
                for key in _KEYS:
                    if key in lowered:
                        label = self.label_of(lowered[key])
                        if label is not None:
                            return ParsedAnswer(label, JSON)
        whole = self.label_of(text)
        if whole is not None:
            return ParsedAnswer(whole, TEXT)
        # labels named in free text (not the negative one: "None" is also an English word)
        named = {
            name
            for name in self.labels
            if name != self.negative and re.search(rf"(?<![\w/]){re.escape(name)}(?![\w/])", text, re.I)
        }
        if len(named) == 1:
            return ParsedAnswer(named.pop(), TEXT)
        return ParsedAnswer(None, UNPARSEABLE)

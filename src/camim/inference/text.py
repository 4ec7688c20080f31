"""Turning a user's post and entity marks into MNRE tokens and token spans.

MNRE posts are tokenised tweets: ``@handles`` and ``#tags`` stay whole, punctuation and clitics (``'s``) are
separate tokens. :func:`tokenize` reproduces that for raw text and keeps each token's character offsets, so
that a selection in the web page (character offsets) maps onto a token span. An entity is given as a token
span ``(start, end)`` (end exclusive, as MNRE's ``pos``), as a character span, or as a mention string that
must occur exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from camim.data.types import Entity
from camim.errors import CamimError

_TOKEN_RE = re.compile(r"https?://\S+|\.?[@#]\w+|\w+|['’]\w+|[^\w\s]")


class SpanError(CamimError):
    """An entity mark that does not fit the post (out of range, empty, not found, or ambiguous)."""


@dataclass(frozen=True)
class Token:
    text: str
    start: int  # character offset in the post
    end: int


def tokenize(text: str) -> list[Token]:
    """Split a raw post into MNRE-style tokens with character offsets."""
    return [Token(m.group(), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def char_span_to_token_span(
    tokens: Sequence[Token], start: int, end: int, what: str = "entity"
) -> tuple[int, int]:
    """The smallest token span covering the non-blank characters ``[start, end)`` of the post."""
    if not (0 <= start < end):
        raise SpanError(f"{what}: character span [{start}, {end}) is empty or negative")
    covered = [i for i, t in enumerate(tokens) if t.start < end and t.end > start]
    if not covered:
        raise SpanError(f"{what}: character span [{start}, {end}) covers no token of the post")
    return covered[0], covered[-1] + 1


def find_mention(tokens: Sequence[str], mention: str, what: str = "entity") -> tuple[int, int]:
    """The unique token span whose tokens spell ``mention``; exact case first, then case-insensitive.

    Raises :class:`SpanError` when the mention is absent or occurs more than once (then a span is needed).
    """
    needle = [t.text for t in tokenize(mention)] or mention.split()
    if not needle:
        raise SpanError(f"{what}: the mention is empty")
    n = len(needle)
    for fold in (False, True):
        key = (lambda s: s.casefold()) if fold else (lambda s: s)
        want = [key(t) for t in needle]
        hits = [i for i in range(len(tokens) - n + 1) if [key(t) for t in tokens[i : i + n]] == want]
        if len(hits) == 1:
            return hits[0], hits[0] + n
        if len(hits) > 1:
            where = ", ".join(f"[{i}, {i + n})" for i in hits)
            raise SpanError(
                f"{what}: mention {mention!r} occurs {len(hits)} times (token spans {where}); give its span instead"
            )
    raise SpanError(f"{what}: mention {mention!r} does not occur in the post")


def resolve_entity(
    tokens: Sequence[str], spec: object, what: str, char_tokens: Sequence[Token] | None = None
) -> Entity:
    """Make an :class:`Entity` from a token span ``(start, end)``, a mention string or an Entity.

    ``spec`` may also be a dict ``{"pos": [s, e]}`` (token span), ``{"char": [s, e]}`` (character span, needs
    ``char_tokens``), or ``{"name": mention}``; a dict with both ``name`` and ``pos`` uses ``pos``.
    """
    if isinstance(spec, Entity):
        start, end = spec.start, spec.end
    elif isinstance(spec, str):
        start, end = find_mention(tokens, spec, what)
    elif isinstance(spec, dict):
        if spec.get("pos") is not None:
            start, end = _pair(spec["pos"], what)
        elif spec.get("char") is not None:
            if char_tokens is None:
                raise SpanError(f"{what}: a character span needs the post as text, not tokens")
            start, end = char_span_to_token_span(char_tokens, *_pair(spec["char"], what), what=what)
        elif spec.get("name"):
            start, end = find_mention(tokens, str(spec["name"]), what)
        else:
            raise SpanError(f"{what}: give 'pos' (token span), 'char' (character span) or 'name' (mention)")
    elif isinstance(spec, (tuple, list)):
        start, end = _pair(spec, what)
    else:
        raise SpanError(
            f"{what}: expected a (start, end) token span or a mention string, got {type(spec).__name__}"
        )
    if not (0 <= start < end <= len(tokens)):
        raise SpanError(f"{what}: token span [{start}, {end}) is outside the post's {len(tokens)} tokens")
    return Entity(name=" ".join(tokens[start:end]), start=start, end=end)


def _pair(value: object, what: str) -> tuple[int, int]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise SpanError(f"{what}: a span is two integers [start, end), got {value!r}")
    return int(value[0]), int(value[1])

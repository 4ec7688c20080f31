"""The zero-shot prompt: instructions with the label set, K in-context examples, then the query.

One chat per sample. The first user turn starts with the instructions (the task, the labels with their
one-line descriptions for MNRE, or bare for other label sets, and the answer format ``{"relation": ...}``).
Each in-context example is a user turn (its image when the image budget allows, its post with the head and
tail marked, its caption when captions are used) and an assistant turn with its gold answer; the query is
the last user turn, built the same way. A post whose image is not available goes text-only, and its turn
says so.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from camim.captioning.base import ChatRequest
from camim.captioning.images import ImageItem
from camim.data.types import MNREExample
from camim.io import short_hash

HEAD_OPEN, HEAD_CLOSE, TAIL_OPEN, TAIL_CLOSE = "<head>", "</head>", "<tail>", "</tail>"


def sample_key(ex: MNREExample) -> str:
    """A stable id of a sample's content (tokens, entity spans, image id): the cache key of its answer."""
    content = [ex.tokens, [ex.head.start, ex.head.end], [ex.tail.start, ex.tail.end], ex.img_id]
    return short_hash(json.dumps(content, ensure_ascii=False), 16)


def request_hash(request: ChatRequest) -> str:
    """A short hash of everything a request sends (texts, and images by path): the cache key's prompt part."""
    content = [
        [m["role"], [p["text"] if p["type"] == "text" else f"image:{p['image'].path}" for p in m["content"]]]
        for m in request.messages
    ]
    return short_hash(json.dumps(content, ensure_ascii=False))


def select_shots(examples: Sequence[MNREExample], k: int, seed: int) -> list[MNREExample]:
    """``k`` labelled examples balanced by relation (per-relation counts differ by at most one, as far as
    each relation has examples), drawn with ``random.Random(seed)``: relations in a seeded order, round-robin
    over each relation's seeded shuffle."""
    if k <= 0:
        return []
    rng = random.Random(seed)
    by_relation: dict[str, list[MNREExample]] = defaultdict(list)
    for ex in examples:
        if ex.relation is not None:
            by_relation[ex.relation].append(ex)
    relations = sorted(by_relation)
    rng.shuffle(relations)
    for name in relations:
        rng.shuffle(by_relation[name])
    picked: list[MNREExample] = []
    depth = 0
    while len(picked) < k and any(depth < len(v) for v in by_relation.values()):
        for name in relations:
            if depth < len(by_relation[name]) and len(picked) < k:
                picked.append(by_relation[name][depth])
        depth += 1
    return picked


def marked_text(ex: MNREExample) -> str:
    """The post with the head and tail mentions wrapped in ``<head>...</head>`` and ``<tail>...</tail>``."""
    out = []
    for i, token in enumerate(ex.tokens):
        if i == ex.head.start:
            out.append(HEAD_OPEN)
        if i == ex.tail.start:
            out.append(TAIL_OPEN)
        out.append(token)
        if i == ex.tail.end - 1:
            out.append(TAIL_CLOSE)
        if i == ex.head.end - 1:
            out.append(HEAD_CLOSE)
    return (
        " ".join(out)
        .replace(f"{HEAD_OPEN} ", HEAD_OPEN)
        .replace(f"{TAIL_OPEN} ", TAIL_OPEN)
        .replace(f" {HEAD_CLOSE}", HEAD_CLOSE)
        .replace(f" {TAIL_CLOSE}", TAIL_CLOSE)
    )


def answer_json(label: str) -> str:
    """The answer the prompt asks for."""
    return json.dumps({"relation": label}, ensure_ascii=False)


@dataclass
class PromptInput:
    """One post as the prompt shows it: the sample, its image (``None``: not available) and its caption
    (``None``: captions not used; ``""``: used but missing for this image)."""

    example: MNREExample
    image: ImageItem | None = None
    caption: str | None = None


class PromptBuilder:
    """Builds the :class:`~camim.captioning.base.ChatRequest` of each sample (see the module docstring).

    ``descriptions`` maps each label to its one-line description (``None``: list the labels bare);
    ``shots`` are the in-context examples; ``max_images`` is how many images one request may carry (the
    query's first, the rest to the examples in order); ``with_caption`` adds the image captions.
    """

    def __init__(
        self,
        labels: Sequence[str],
        descriptions: dict[str, str] | None = None,
        shots: Sequence[PromptInput] = (),
        max_images: int = 1,
        with_caption: bool = False,
    ):
        if max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}")
        self.labels = list(labels)
        self.descriptions = descriptions
        self.max_images = max_images
        self.with_caption = with_caption
        budget = max(0, max_images - 1)  # the query keeps the first image slot
        self.shots: list[PromptInput] = []
        for shot in shots:
            image = shot.image if budget > 0 else None
            budget -= image is not None
            self.shots.append(PromptInput(shot.example, image, shot.caption))
        self.instructions = self._instructions()

    def _instructions(self) -> str:
        what = "a social-media post, two entity mentions in it (the head entity and the tail entity)"
        what += " and, when available, the image posted with it"
        if self.with_caption:
            what += " and a description of that image"
        if self.descriptions:
            listing = "\n".join(f"- {name}: {self.descriptions[name]}" for name in self.labels)
        else:
            listing = "\n".join(f"- {name}" for name in self.labels)
        return (
            f"You are given {what}. Decide which relation holds between the head entity and the tail entity, "
            f"choosing exactly one label from this list:\n{listing}\n\n"
            'Answer with one JSON object and nothing else: {"relation": "<a label from the list, written '
            'exactly as above>"}.'
        )

    def post_text(self, post: PromptInput) -> str:
        """The text of one post's user turn."""
        ex = post.example
        if post.image is not None:
            image_line = "Image: attached."
        else:
            image_line = "Image: not available for this post; answer from the text."
        lines = [
            f"Post: {marked_text(ex)}",
            f"Head entity: {ex.head.name}",
            f"Tail entity: {ex.tail.name}",
            image_line,
        ]
        if self.with_caption:
            caption = (post.caption or "").strip()
            lines.append(f"Image description: {caption}" if caption else "Image description: not available.")
        return "\n".join(lines)

    def _user_turn(self, post: PromptInput, prefix: str | None = None) -> dict:
        content: list[dict] = []
        if post.image is not None:
            content.append({"type": "image", "image": post.image})
        text = self.post_text(post)
        content.append({"type": "text", "text": f"{prefix}\n\n{text}" if prefix else text})
        return {"role": "user", "content": tuple(content)}

    def request(self, key: str, query: PromptInput) -> ChatRequest:
        """The chat of one query post (``query.image`` is dropped when ``max_images`` is 0)."""
        if self.max_images < 1 and query.image is not None:
            query = PromptInput(query.example, None, query.caption)
        messages: list[dict] = []
        prefix: str | None = self.instructions
        for shot in self.shots:
            messages.append(self._user_turn(shot, prefix))
            assert shot.example.relation is not None
            messages.append(
                {
                    "role": "assistant",
                    "content": ({"type": "text", "text": answer_json(shot.example.relation)},),
                }
            )
            prefix = None
        messages.append(self._user_turn(query, prefix))
        return ChatRequest(key, tuple(messages))

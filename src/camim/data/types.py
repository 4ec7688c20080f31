"""Typed records shared by the data layer, the models and the tools.

An :class:`MNREExample` is one (post, head, tail, image) sample with every optional modality either present
or ``None``. Models never receive these directly: a processor (``camim.models.processing``) turns a list
of examples into an :class:`camim.models.batch.MREBatch` of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

# What an MNREDataset can load besides the text (``MNREDataset(modalities=...)``), and those that are images.
MODALITIES: tuple[str, ...] = (
    "caption",
    "scores",
    "phrase",
    "image",
    "objects",
    "generated_image",
    "generated_objects",
)
IMAGE_MODALITIES: tuple[str, ...] = ("image", "objects", "generated_image", "generated_objects")


@dataclass(frozen=True)
class Entity:
    """An entity mention: ``tokens[start:end]`` (end exclusive), as in MNRE's ``{'name', 'pos'}``."""

    name: str
    start: int
    end: int


@dataclass
class Scores:
    """TMR correlation scores of one sample, in the released column order [weak_ori, strong_ori, weak_dif, strong_dif]."""

    weak_ori: float
    strong_ori: float
    weak_dif: float
    strong_dif: float

    def as_list(self) -> list[float]:
        return [self.weak_ori, self.strong_ori, self.weak_dif, self.strong_dif]


@dataclass
class MNREExample:
    """One sample. ``index`` is the sample's position in its split file (the key of the object dictionaries).

    Optional modalities are ``None`` when absent; ``objects``/``generated_objects`` are lists of up to m
    crops (possibly empty lists when the dictionaries list none for this sample).
    """

    index: int
    tokens: list[str]
    head: Entity
    tail: Entity
    img_id: str
    relation: str | None = None
    label: int | None = None
    caption: str | None = None
    scores: Scores | None = None
    phrase: str | None = None
    image: Image.Image | None = None
    objects: list[Image.Image] | None = None
    generated_image: Image.Image | None = None
    generated_objects: list[Image.Image] | None = None
    source: str | None = None  # "file:line" the sample was read from
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

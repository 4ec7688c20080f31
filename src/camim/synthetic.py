"""A synthetic multimodal relation world in MNRE's released layout, where the picture decides the relation.

``camim demo``, the learning tests and any user without MNRE's images or pretrained weights use it. The
generator is deterministic: the same :class:`WorldConfig` (seed included) writes byte-identical files.

The world's rules
-----------------
Nine relations of MNRE's label set plus ``None``. Every sample belongs to one *group*; the group fixes the
sentence templates, the name pools and the picture's scene kinds:

==========  ========================================================  =======================================
group       relations (scene that the original image shows)            text
==========  ========================================================  =======================================
``pair``    couple (two people holding hands, a heart above them),     two person-or-organisation handles in a
            peer (two people in matching numbered jerseys),            neutral sentence ("@Kestrel and Marlow
            member_of (a person under an organisation's logo banner),  at the weekend")
            None (two people standing far apart, unrelated)
``place``   place_of_residence (a person at the door of a house),      a person handle and a place name
            present_in (a person on a stage before a crowd)            ("Kestrel back in Velmora today")
``venue``   locate_at (an office building with a company sign),        an organisation/event name and a place
            held_on (festival tents and flags)                         name ("Orvix in Velmora this week")
``clear``   parent (an adult and a small child), awarded (a person     the sentence names the relation
            holding a trophy), None (a landscape with no people)       ("Proud dad X and little Y",
                                                                       "X wins the Y Award", "X retweeted Y")
==========  ========================================================  =======================================

Within an ambiguous group (``pair``, ``place``, ``venue``), the sentence template, the entity names, their
order and the phrase are drawn from one distribution that does not depend on the relation, and the
relations of a split are balanced exactly (largest-remainder rounding). Hence:

* **Text-only ceiling.** Given the text, the relation of an ambiguous sample is uniform over its group's
  k relations (k = 4, 2, 2). Any text-only model's expected accuracy on a group is at most
  ``max_c n_c / n_group`` (1/4 or 1/2); on a split this gives the accuracy ceiling
  ``(n_clear + sum_g max_c n_gc) / n`` that ``synthetic_world.json`` records per split (about 0.61 with
  the default mix, where 60% of the samples are ambiguous). On a finite split a model can exceed it only
  by sampling noise (binomial, about ``sqrt(p(1-p)/n_group)``).
* **The image and its caption decide.** Each original image draws the decisive scene, and its caption
  (``caption/minicpm_{split}.txt``) states the decisive visual fact in its first sentence, using exactly one
  cue phrase of that scene (:data:`SCENE_CUES`, starting within the first 10 words). Text (for the group)
  plus caption (for the scene) determine the relation: a rule reader reaches accuracy 1.0.
* Clear samples are decided by the text alone; their images agree with it.

Auxiliary files follow the released formats (``reference-behaviour.md`` §4): TMR scores (one line per
sample, in a shuffled order, strong + weak = 1; ``strong_ori`` is high where the image is decisive and small
otherwise), object crops of the drawn figures (``img_vg/{split}/crops``, listed by sample index in
``mre_{split}_dict.pth``), a generated-image stand-in drawn *from the text only* (so it never shows the
decisive fact; ``diffusion_pic/{split}``, ``generated_size`` pixels instead of SD-2's 768) with its object boxes
(``mre_dif_{split}_dict.pth``), and phrases (the two names, ``@`` stripped). Symmetric relations (couple,
peer) sometimes share an image between a sample and its head/tail-swapped twin, as MNRE posts do.

The folder is written to a temporary sibling and renamed into place, with ``synthetic_world.json`` (config,
counts, ceilings) as its completion marker; an interrupted run leaves no half-written world.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from camim.errors import CamimError

GENERATOR_VERSION = 1
MARKER = "synthetic_world.json"
SPLITS = ("train", "val", "test")

NONE = "None"
COUPLE = "/per/per/couple"
PEER = "/per/per/peer"
PARENT = "/per/per/parent"
MEMBER_OF = "/per/org/member_of"
RESIDENCE = "/per/loc/place_of_residence"
PRESENT_IN = "/per/misc/present_in"
LOCATE_AT = "/org/loc/locate_at"
HELD_ON = "/misc/loc/held_on"
AWARDED = "/per/misc/awarded"

#: Label order of ``ours_rel2id.json`` (MNRE's names; ``None`` is id 0 as in MNRE).
RELATIONS = [NONE, COUPLE, PEER, PARENT, MEMBER_OF, RESIDENCE, PRESENT_IN, LOCATE_AT, HELD_ON, AWARDED]

#: group -> {relation: scene}. Ambiguous groups share their text distribution across relations.
GROUPS: dict[str, dict[str, str]] = {
    "pair": {COUPLE: "hands", PEER: "jerseys", MEMBER_OF: "logo", NONE: "apart"},
    "place": {RESIDENCE: "house", PRESENT_IN: "stage"},
    "venue": {LOCATE_AT: "office", HELD_ON: "festival"},
    "clear": {PARENT: "child", AWARDED: "trophy", NONE: "landscape"},
}
AMBIGUOUS_GROUPS = ("pair", "place", "venue")

#: Decisive cue phrases: the first caption sentence of a scene contains (case-insensitively) exactly one of its
#: cues and no cue of another scene.
SCENE_CUES: dict[str, tuple[str, ...]] = {
    "hands": ("holding hands", "hand in hand"),
    "jerseys": ("matching jerseys", "identical team jerseys"),
    "logo": ("under a large logo banner", "beneath the banner of an organisation"),
    "apart": ("standing far apart", "ignoring each other"),
    "house": ("front door of a house", "doorstep of a small house"),
    "stage": ("on a stage", "on a concert stage"),
    "office": ("office building", "office tower"),
    "festival": ("festival tents", "fair with tents"),
    "child": ("an adult and a small child", "a grown-up with a little child"),
    "trophy": ("holding a golden trophy", "raising a trophy"),
    "landscape": ("a landscape with hills", "an empty countryside view"),
}

# Templates: {h} and {t} are replaced by the entity tokens. Ambiguous groups: the same lists for every relation.
TEMPLATES: dict[str, list[str]] = {
    "pair": [
        "{h} and {t} at the weekend",
        "Great afternoon with {h} and {t} !",
        "{h} posing with {t} # tbt",
        "RT @citynews : {h} and {t} spotted downtown",
        "{h} , {t} and the sunset",
        "Look who we met : {h} with {t}",
    ],
    "place": [
        "{h} back in {t} today",
        "Good times for {h} in {t}",
        "{h} : {t} tonight !",
        "Sunday in {t} with {h}",
    ],
    "venue": [
        "{h} in {t} this week",
        "{h} comes to {t}",
        "Next stop for {h} : {t}",
        "{t} welcomes {h}",
    ],
    PARENT: ["Proud dad {h} and little {t}", "{h} with her son {t}", "{h} and his daughter {t} at home"],
    AWARDED: ["{h} wins the {t}", "Congratulations to {h} on the {t}", "{h} receives the {t} tonight"],
    NONE: ["{h} retweeted {t}", "{h} replying to {t} about the weather", "Not sure why {h} follows {t}"],
}

_SYLLABLES = [
    "ka",
    "mar",
    "lo",
    "ves",
    "tri",
    "do",
    "ren",
    "sa",
    "quin",
    "bel",
    "or",
    "zu",
    "fen",
    "ta",
    "gri",
]
_PLACE_END = ["ton", "ford", "mora", "vik", "dale", "port"]
_ORG_END = ["ix", "corp", "labs", "tek", "works"]
_COLOURS = {
    "red": (200, 40, 40),
    "blue": (40, 80, 200),
    "green": (40, 150, 60),
    "orange": (230, 130, 30),
    "purple": (130, 60, 160),
    "grey": (120, 120, 120),
}
_BACKGROUNDS = {
    "pale blue": (200, 220, 240),
    "light green": (205, 235, 205),
    "sand-coloured": (235, 225, 195),
    "lavender": (225, 215, 240),
}
_DISTRACTORS = [
    "The background is {bg} and the lighting is soft.",
    "It looks like a casual snapshot taken in daylight with a {bg} backdrop.",
    "The colours are bright, with a {bg} sky behind the scene.",
    "The picture is simple and slightly blurred, the backdrop {bg}.",
]


@dataclass
class WorldConfig:
    """Sizes and mix of a synthetic world. ``mix`` gives each (group, relation) cell's share of the samples."""

    seed: int = 0
    train: int = 1500
    val: int = 300
    test: int = 300
    image_size: int = 96
    generated_size: int = 96
    caption_source: str = "minicpm"
    twin_rate: float = 0.2  # chance that a couple/peer sample reuses an earlier same-relation image, swapped
    mix: dict[str, float] = field(
        default_factory=lambda: {
            f"pair:{COUPLE}": 0.09,
            f"pair:{PEER}": 0.09,
            f"pair:{MEMBER_OF}": 0.09,
            f"pair:{NONE}": 0.09,
            f"place:{RESIDENCE}": 0.06,
            f"place:{PRESENT_IN}": 0.06,
            f"venue:{LOCATE_AT}": 0.06,
            f"venue:{HELD_ON}": 0.06,
            f"clear:{PARENT}": 0.12,
            f"clear:{AWARDED}": 0.12,
            f"clear:{NONE}": 0.16,
        }
    )

    def __post_init__(self) -> None:
        for name in SPLITS:
            if getattr(self, name) < 1:
                raise CamimError(f"synthetic world: split size {name}={getattr(self, name)} must be >= 1")
        if self.image_size < 48 or self.generated_size < 48:
            raise CamimError("synthetic world: image sizes must be >= 48 pixels")
        for cell, share in self.mix.items():
            group, _, rel = cell.partition(":")
            if group not in GROUPS or rel not in GROUPS[group] or share < 0:
                raise CamimError(f"synthetic world: bad mix cell {cell!r}={share}")
        if sum(self.mix.values()) <= 0:
            raise CamimError("synthetic world: mix shares sum to 0")
        if not 0.0 <= self.twin_rate <= 1.0:
            raise CamimError("synthetic world: twin_rate must be in [0, 1]")


@dataclass
class SplitSummary:
    samples: int
    images: int
    ambiguous: int
    per_relation: dict[str, int]
    per_group: dict[str, dict[str, int]]
    text_only_accuracy_ceiling: float  # (n_clear + sum_g max_c n_gc) / n
    ambiguous_text_only_ceiling: float  # sum_g max_c n_gc / n_ambiguous (0 when none)


@dataclass
class WorldSummary:
    """What :func:`generate_world` wrote; serialised as ``synthetic_world.json``."""

    generator_version: int
    config: dict
    relations: list[str]
    splits: dict[str, SplitSummary]


# --------------------------------------------------------------------------------------------- counting


def split_counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Largest-remainder allocation of ``n`` samples to the mix cells (deterministic, sums to ``n``)."""
    total = sum(mix.values())
    raw = {cell: n * share / total for cell, share in mix.items()}
    counts = {cell: math.floor(v) for cell, v in raw.items()}
    rest = n - sum(counts.values())
    order = sorted(mix, key=lambda c: (-(raw[c] - counts[c]), list(mix).index(c)))
    for cell in order[:rest]:
        counts[cell] += 1
    return counts


def _summarise(samples: list[dict], groups: list[str], images: int) -> SplitSummary:
    per_group: dict[str, Counter] = {g: Counter() for g in GROUPS}
    for s, g in zip(samples, groups):
        per_group[g][s["relation"]] += 1
    n = len(samples)
    amb = sum(sum(per_group[g].values()) for g in AMBIGUOUS_GROUPS)
    best = sum(max(per_group[g].values(), default=0) for g in AMBIGUOUS_GROUPS)
    clear = sum(per_group["clear"].values())
    return SplitSummary(
        samples=n,
        images=images,
        ambiguous=amb,
        per_relation=dict(sorted(Counter(s["relation"] for s in samples).items())),
        per_group={g: dict(sorted(c.items())) for g, c in per_group.items()},
        text_only_accuracy_ceiling=round((clear + best) / n, 6),
        ambiguous_text_only_ceiling=round(best / amb, 6) if amb else 0.0,
    )


# --------------------------------------------------------------------------------------------- text


def _name_pools() -> dict[str, list[str]]:
    """Deterministic invented names: handles for people/organisations, places, organisations/events, awards."""
    stems = [a.capitalize() + b for a in _SYLLABLES for b in _SYLLABLES if a != b]
    people = stems[::2]
    return {
        "handle": people,
        "place": [s + e for s in stems[1::7] for e in _PLACE_END][:240],
        "org": [s + e for s in stems[3::9] for e in _ORG_END][:240],
        "award": stems[5::11],
    }


def _entity_tokens(kind: str, rng: random.Random, pools: dict[str, list[str]]) -> list[str]:
    if kind == "handle":
        name = rng.choice(pools["handle"])
        r = rng.random()
        if r < 0.35:
            return ["@" + name]
        if r < 0.6:
            return [rng.choice(pools["handle"]), name]
        return [name]
    if kind == "award":
        return [rng.choice(pools["award"]), rng.choice(["Award", "Prize", "Medal"])]
    return [rng.choice(pools[kind])]


_ENTITY_KINDS = {
    "pair": ("handle", "handle"),
    "place": ("handle", "place"),
    "venue": ("org", "place"),
    PARENT: ("handle", "handle"),
    AWARDED: ("handle", "award"),
    NONE: ("handle", "handle"),
}


def _fill(template: str, h: list[str], t: list[str]) -> tuple[list[str], list[int], list[int]]:
    """Tokens of a template with the two entities placed, and their [start, end) spans."""
    tokens: list[str] = []
    hpos = tpos = [0, 0]
    for word in template.split():
        if word in ("{h}", "{t}"):
            ent = h if word == "{h}" else t
            span = [len(tokens), len(tokens) + len(ent)]
            tokens.extend(ent)
            if word == "{h}":
                hpos = span
            else:
                tpos = span
        else:
            tokens.append(word)
    return tokens, hpos, tpos


def _template(text_key: str, rng: random.Random) -> str:
    template = rng.choice(TEMPLATES[text_key])
    if text_key == "pair" and rng.random() < 0.5:  # the head is not always named first
        template = template.replace("{h}", "{X}").replace("{t}", "{h}").replace("{X}", "{t}")
    return template


def _text(text_key: str, rng: random.Random, pools: dict[str, list[str]]) -> tuple[list[str], dict, dict]:
    """Draw one sentence for ``text_key`` (a group name, or a relation of the clear group)."""
    hk, tk = _ENTITY_KINDS[text_key]
    h = _entity_tokens(hk, rng, pools)
    t = _entity_tokens(tk, rng, pools)
    while " ".join(t) == " ".join(h):
        t = _entity_tokens(tk, rng, pools)
    tokens, hpos, tpos = _fill(_template(text_key, rng), h, t)
    return tokens, {"name": " ".join(h), "pos": hpos}, {"name": " ".join(t), "pos": tpos}


# --------------------------------------------------------------------------------------------- captions


_SCENE_SENTENCES: dict[str, list[str]] = {
    "hands": [
        "two people {cue} in a park, a small red heart above them.",
        "two smiling people {cue}, in {c1} and {c2}.",
    ],
    "jerseys": [
        "two people in {cue}, both {c1} with white numbers.",
        "two people wearing {cue} stand side by side.",
    ],
    "logo": ["a person {cue}, a round {c2} logo printed on it.", "a person in {c1} standing {cue}."],
    "apart": ["two people {cue}, one in {c1} and one in {c2}.", "two strangers {cue} on an open square."],
    "house": [
        "a person at the {cue}, with a red roof and a garden.",
        "a person in {c1} at the {cue}.",
    ],
    "stage": ["a person {cue} under yellow spotlights before a crowd.", "a person in {c1} performing {cue}."],
    "office": [
        "a tall {cue} with many windows and a company sign.",
        "a glass {cue} rising above the street.",
    ],
    "festival": [
        "colourful {cue} and flags on a field full of visitors.",
        "a busy {cue} and small flags on the grass.",
    ],
    "child": [
        "{cue} standing together, the child reaching up.",
        "{cue}, the adult in {c1} and the child in {c2}.",
    ],
    "trophy": ["a person {cue} above the head.", "a happy person in {c1} {cue} before a cheering audience."],
    "landscape": [
        "{cue}, a round tree and the sun in the sky.",
        "{cue} with green fields and a single tree.",
    ],
}


def _caption(scene: str, rng: random.Random, c1: str, c2: str, bg: str) -> str:
    """A MiniCPM-style caption: the decisive sentence first (its cue starting within the first 10 words), then one or
    two distractor sentences."""
    cue = rng.choice(SCENE_CUES[scene])
    first = rng.choice(_SCENE_SENTENCES[scene]).format(cue=cue, c1=c1, c2=c2)
    first = "The image shows " + first if rng.random() < 0.5 else first[0].upper() + first[1:]
    rest = rng.sample(_DISTRACTORS, k=rng.choice([1, 2]))
    return " ".join([first] + [r.format(bg=bg) for r in rest])


# --------------------------------------------------------------------------------------------- drawing

Box = tuple[int, int, int, int]


def _person(
    d: ImageDraw.ImageDraw, cx: float, feet: float, h: float, shirt: tuple, number: bool = False
) -> Box:
    """A simple figure (head, shirt, legs, arms) of height ``h`` standing at ``(cx, feet)``; returns its box."""
    r = h * 0.13
    head_cy = feet - h + r
    skin = (240, 200, 160)
    d.ellipse([cx - r, head_cy - r, cx + r, head_cy + r], fill=skin, outline=(60, 40, 30))
    top, bottom, w = head_cy + r, feet - h * 0.35, h * 0.17
    d.rectangle([cx - w, top, cx + w, bottom], fill=shirt, outline=(30, 30, 30))
    if number:
        d.rectangle(
            [cx - w * 0.35, top + (bottom - top) * 0.25, cx + w * 0.35, top + (bottom - top) * 0.6],
            fill="white",
        )
    d.line([cx - w * 0.5, bottom, cx - w * 0.6, feet], fill=(40, 40, 60), width=max(1, int(h * 0.06)))
    d.line([cx + w * 0.5, bottom, cx + w * 0.6, feet], fill=(40, 40, 60), width=max(1, int(h * 0.06)))
    d.line([cx - w, top + 2, cx - w * 1.9, bottom], fill=skin, width=max(1, int(h * 0.05)))
    d.line([cx + w, top + 2, cx + w * 1.9, bottom], fill=skin, width=max(1, int(h * 0.05)))
    return (int(cx - w * 2), int(head_cy - r), int(cx + w * 2) + 1, int(feet) + 1)


def _draw_scene(
    scene: str, size: int, rng: random.Random, c1: str, c2: str, bg: str
) -> tuple[Image.Image, list[Box]]:
    """Draw ``scene`` on a ``size`` x ``size`` canvas; returns the image and the boxes of its key objects."""
    img = Image.new("RGB", (size, size), _BACKGROUNDS[bg])
    d = ImageDraw.Draw(img)
    u = size / 100.0
    canvas = _Canvas(d, u, rng.uniform(-4, 4) * u, 88 * u, _COLOURS[c1], _COLOURS[c2])  # small x jitter
    d.rectangle([0, canvas.ground, size, size], fill=(150, 190, 120))
    if scene in ("hands", "jerseys", "apart", "people"):  # "people": two undistinguished figures (no cue)
        boxes = _draw_two_people(canvas, scene)
    elif scene in _SCENE_DRAWERS:
        boxes = _SCENE_DRAWERS[scene](canvas)
    else:  # pragma: no cover - SCENE_CUES and the drawers list the same scenes
        raise ValueError(scene)
    return img, [_clip(b, size) for b in boxes]


@dataclass
class _Canvas:
    """What a scene drawer draws with: the pen, the unit (1/100 of the side), the jitter, the ground line and
    the scene's two colours."""

    d: ImageDraw.ImageDraw
    u: float
    j: float
    ground: float
    col1: tuple[int, int, int]
    col2: tuple[int, int, int]


def _draw_two_people(c: _Canvas, scene: str) -> list[Box]:
    d, u, j = c.d, c.u, c.j
    gap = {"hands": 14, "jerseys": 18, "apart": 34, "people": 22}[scene] * u
    shirt2 = c.col1 if scene == "jerseys" else c.col2
    boxes = [
        _person(d, 50 * u - gap + j, c.ground, 50 * u, c.col1, number=scene == "jerseys"),
        _person(d, 50 * u + gap + j, c.ground, 50 * u, shirt2, number=scene == "jerseys"),
    ]
    if scene == "hands":
        d.line(
            [50 * u - 4 * u + j, 62 * u, 50 * u + 4 * u + j, 62 * u],
            fill=(240, 200, 160),
            width=max(2, int(3 * u)),
        )
        hx, hy = 50 * u + j, 22 * u
        d.polygon([(hx - 6 * u, hy), (hx + 6 * u, hy), (hx, hy + 8 * u)], fill=(220, 20, 60))
        d.ellipse([hx - 6 * u, hy - 3 * u, hx, hy + 3 * u], fill=(220, 20, 60))
        d.ellipse([hx, hy - 3 * u, hx + 6 * u, hy + 3 * u], fill=(220, 20, 60))
    return boxes


def _draw_logo(c: _Canvas) -> list[Box]:
    d, u = c.d, c.u
    d.rectangle([15 * u, 6 * u, 85 * u, 30 * u], fill=(250, 250, 250), outline=(20, 20, 20))
    d.ellipse([42 * u, 9 * u, 58 * u, 27 * u], fill=c.col2)
    d.polygon([(50 * u, 11 * u), (44 * u, 24 * u), (56 * u, 24 * u)], fill=(255, 255, 255))
    return [
        (int(15 * u), int(6 * u), int(85 * u) + 1, int(30 * u) + 1),
        _person(d, 50 * u + c.j, c.ground, 52 * u, c.col1),
    ]


def _draw_house(c: _Canvas) -> list[Box]:
    d, u, ground = c.d, c.u, c.ground
    d.rectangle([10 * u, 40 * u, 55 * u, ground], fill=(230, 210, 170), outline=(60, 40, 30))
    d.polygon([(6 * u, 40 * u), (32 * u, 18 * u), (59 * u, 40 * u)], fill=(180, 40, 30))
    d.rectangle([27 * u, 62 * u, 38 * u, ground], fill=(110, 70, 40))
    return [
        (int(6 * u), int(18 * u), int(59 * u) + 1, int(ground) + 1),
        _person(d, 70 * u + c.j, ground, 48 * u, c.col1),
    ]


def _draw_stage(c: _Canvas) -> list[Box]:
    d, u = c.d, c.u
    d.rectangle([10 * u, 60 * u, 90 * u, 72 * u], fill=(110, 60, 30))
    for x in (20, 80):
        d.polygon([(x * u, 0), ((x - 8) * u, 60 * u), ((x + 8) * u, 60 * u)], fill=(250, 235, 120))
    boxes = [_person(d, 50 * u + c.j, 60 * u, 44 * u, c.col1)]
    for k in range(7):
        d.ellipse([(8 + 12 * k) * u, 78 * u, (16 + 12 * k) * u, 86 * u], fill=(70, 70, 90))
    return [*boxes, (int(8 * u), int(78 * u), int(92 * u) + 1, int(86 * u) + 1)]


def _draw_office(c: _Canvas) -> list[Box]:
    d, u, j = c.d, c.u, c.j
    d.rectangle([30 * u + j, 10 * u, 70 * u + j, c.ground], fill=(150, 160, 175), outline=(40, 40, 50))
    for row in range(6):
        for col in range(3):
            x0, y0 = 35 * u + col * 12 * u + j, 22 * u + row * 10 * u
            d.rectangle([x0, y0, x0 + 6 * u, y0 + 6 * u], fill=(200, 230, 250))
    d.rectangle([34 * u + j, 12 * u, 66 * u + j, 19 * u], fill=c.col1)
    return [
        (int(30 * u + j), int(10 * u), int(70 * u + j) + 1, int(c.ground) + 1),
        (int(34 * u + j), int(12 * u), int(66 * u + j) + 1, int(19 * u) + 1),
    ]


def _draw_festival(c: _Canvas) -> list[Box]:
    d, u, ground = c.d, c.u, c.ground
    boxes = []
    for k, x in enumerate((22, 50, 78)):
        col = c.col1 if k % 2 == 0 else c.col2
        d.polygon(
            [((x - 13) * u, ground), (x * u, 55 * u), ((x + 13) * u, ground)], fill=col, outline=(30, 30, 30)
        )
        d.line([x * u, 55 * u, x * u, 40 * u], fill=(30, 30, 30), width=max(1, int(u)))
        d.polygon([(x * u, 40 * u), ((x + 7) * u, 43 * u), (x * u, 46 * u)], fill=(250, 220, 0))
        boxes.append((int((x - 13) * u), int(40 * u), int((x + 13) * u) + 1, int(ground) + 1))
    return boxes


def _draw_child(c: _Canvas) -> list[Box]:
    return [
        _person(c.d, 38 * c.u + c.j, c.ground, 56 * c.u, c.col1),
        _person(c.d, 62 * c.u + c.j, c.ground, 28 * c.u, c.col2),
    ]


def _draw_trophy(c: _Canvas) -> list[Box]:
    d, u, j = c.d, c.u, c.j
    boxes = [_person(d, 50 * u + j, c.ground, 50 * u, c.col1)]
    d.rectangle([44 * u + j, 22 * u, 56 * u + j, 32 * u], fill=(240, 190, 20))
    d.rectangle([48 * u + j, 32 * u, 52 * u + j, 37 * u], fill=(200, 150, 10))
    return [*boxes, (int(42 * u + j), int(20 * u), int(58 * u + j) + 1, int(38 * u) + 1)]


def _draw_landscape(c: _Canvas) -> list[Box]:
    d, u, j = c.d, c.u, c.j
    d.ellipse([-20 * u, 60 * u, 60 * u, 110 * u], fill=(110, 170, 90))
    d.ellipse([40 * u, 65 * u, 130 * u, 115 * u], fill=(95, 155, 80))
    d.ellipse([75 * u, 8 * u, 92 * u, 25 * u], fill=(250, 210, 40))
    d.rectangle([28 * u + j, 50 * u, 32 * u + j, 75 * u], fill=(110, 70, 40))
    d.ellipse([18 * u + j, 32 * u, 42 * u + j, 56 * u], fill=(40, 120, 50))
    return [
        (int(18 * u + j), int(32 * u), int(42 * u + j) + 1, int(75 * u) + 1),
        (int(75 * u), int(8 * u), int(92 * u) + 1, int(25 * u) + 1),
    ]


_SCENE_DRAWERS = {
    "logo": _draw_logo,
    "house": _draw_house,
    "stage": _draw_stage,
    "office": _draw_office,
    "festival": _draw_festival,
    "child": _draw_child,
    "trophy": _draw_trophy,
    "landscape": _draw_landscape,
}


def _clip(b: Box, size: int) -> Box:
    x0, y0, x1, y1 = (max(0, min(size, v)) for v in b)
    return (x0, y0, max(x0 + 1, x1), max(y0 + 1, y1))


#: What the generated-image stand-in shows: the scene implied by the text alone.
_TEXT_SCENE = {
    "pair": "apart",
    "place": "landscape",
    "venue": "landscape",
    PARENT: "child",
    AWARDED: "trophy",
    NONE: "landscape",
}


def _draw_generated(text_key: str, size: int, rng: random.Random) -> tuple[Image.Image, list[Box]]:
    """Stand-in for TMR's text-to-image translation: a grey, neutral drawing of what the text states.

    For ambiguous groups it shows two undistinguished grey figures (or an empty landscape), never the
    decisive fact, because the text does not contain it.
    """
    scene = _TEXT_SCENE[text_key]
    img, boxes = _draw_scene(scene, size, rng, "grey", "grey", "lavender")
    return img, boxes


# --------------------------------------------------------------------------------------------- writer


def _save_jpeg(img: Image.Image, path: Path) -> None:
    img.save(path, format="JPEG", quality=90, optimize=False, progressive=False)


@dataclass
class _SplitParts:
    """What a split's files hold, collected sample by sample (dicts keep first-appearance order)."""

    samples: list[dict] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)  # img_id -> caption
    image_boxes: dict[str, list[Box]] = field(default_factory=dict)
    generated_boxes: dict[str, list[Box]] = field(default_factory=dict)
    open_twin: dict[str, int] = field(default_factory=dict)  # relation -> a sample whose image is reused once
    crops: dict[int, list[str]] = field(default_factory=dict)
    dif_boxes: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    scores: list[tuple[str, float, float]] = field(default_factory=list)  # (img_id, strong_ori, strong_dif)
    phrases: dict[str, str] = field(default_factory=dict)


def _write_split(
    root: Path, split: str, n: int, cfg: WorldConfig, pools: dict[str, list[str]]
) -> SplitSummary:
    rng = random.Random(f"camim-synthetic/{cfg.seed}/{split}")
    counts = split_counts(n, cfg.mix)
    cells = [cell for cell, k in counts.items() for _ in range(k)]
    rng.shuffle(cells)
    dirs = (root / "img_org" / split, root / "img_vg" / split / "crops", root / "diffusion_pic" / split)
    for p in dirs:
        p.mkdir(parents=True, exist_ok=True)
    parts = _SplitParts()
    crop_counter = rng.randrange(10_000, 20_000)
    for idx, cell in enumerate(cells):
        img_id, group = _add_sample(parts, idx, cell, split, cfg, pools, rng, dirs)
        crop_counter = _crop_objects(parts, idx, img_id, dirs, crop_counter, rng)
        decisive = group in AMBIGUOUS_GROUPS
        strong_ori = rng.uniform(0.35, 0.95) if decisive else 10 ** rng.uniform(-4, -1)
        strong_dif = 10 ** rng.uniform(-3, -0.5)
        parts.scores.append((img_id, strong_ori, strong_dif))
        head, tail = parts.samples[-1]["h"], parts.samples[-1]["t"]
        parts.phrases[str(idx)] = " ".join(w.lstrip("@") for w in (head["name"] + " " + tail["name"]).split())
    _write_split_files(root, split, cfg, parts, rng)
    return _summarise(parts.samples, parts.groups, images=len(parts.captions))


def _add_sample(
    parts: _SplitParts, idx: int, cell: str, split: str, cfg: WorldConfig, pools, rng, dirs
) -> tuple[str, str]:
    """Sample ``idx`` of its cell ("group:relation"): a new drawn post with its caption and generated image,
    or (``cfg.twin_rate``) a couple/peer twin that reuses an earlier picture with its entities swapped and a
    fresh sentence. Returns its img_id and group."""
    img_dir, _, gen_dir = dirs
    group, _, rel = cell.partition(":")
    scene = GROUPS[group][rel]
    text_key = group if group in AMBIGUOUS_GROUPS else rel
    twin_of = (
        parts.open_twin.pop(rel, None) if rel in (COUPLE, PEER) and rng.random() < cfg.twin_rate else None
    )
    if twin_of is not None:
        base = parts.samples[twin_of]
        h_tokens, t_tokens = base["t"]["name"].split(), base["h"]["name"].split()
        tokens, hpos, tpos = _fill(_template("pair", rng), h_tokens, t_tokens)
        head, tail = {"name": " ".join(h_tokens), "pos": hpos}, {"name": " ".join(t_tokens), "pos": tpos}
        img_id = base["img_id"]
    else:
        tokens, head, tail = _text(text_key, rng, pools)
        img_id = f"synth_{split}_{idx:05d}.jpg"
        c1, c2 = rng.sample(list(_COLOURS)[:-1], 2)
        bg = rng.choice(list(_BACKGROUNDS))
        img, boxes = _draw_scene(scene, cfg.image_size, rng, c1, c2, bg)
        _save_jpeg(img, img_dir / img_id)
        parts.captions[img_id] = _caption(scene, rng, c1, c2, bg)
        parts.image_boxes[img_id] = boxes
        gen, gboxes = _draw_generated(text_key, cfg.generated_size, rng)
        _save_jpeg(gen, gen_dir / img_id)
        parts.generated_boxes[img_id] = gboxes
        if rel in (COUPLE, PEER):
            parts.open_twin[rel] = idx
    parts.samples.append({"token": tokens, "h": head, "t": tail, "img_id": img_id, "relation": rel})
    parts.groups.append(group)
    return img_id, group


def _crop_objects(parts: _SplitParts, idx: int, img_id: str, dirs, crop_counter: int, rng) -> int:
    """Object crops of the original image, one file per (sample, object) as in HVPNeT's crops folder, and the
    generated image's boxes; returns the crop counter for the next sample."""
    img_dir, crop_dir, _ = dirs
    names = []
    with Image.open(img_dir / img_id) as original:
        for box in parts.image_boxes[img_id][:3]:
            crop_counter += rng.randrange(1, 50)
            name = f"{idx}_pred_yolo_crop_{crop_counter}.png"
            original.crop(box).save(crop_dir / name, format="PNG", optimize=False)
            names.append(name)
    parts.crops[idx] = names
    parts.dif_boxes[idx] = [torch.tensor(b, dtype=torch.float32) for b in parts.generated_boxes[img_id][:3]]
    return crop_counter


def _write_split_files(
    root: Path, split: str, cfg: WorldConfig, parts: _SplitParts, rng: random.Random
) -> None:
    """The split's files in the released layout: samples, captions (.txt and .json), correlation scores
    (a permutation of the samples, as released), object dictionaries and phrases."""
    txt, cap_dir = root / "txt", root / "caption"
    with open(txt / f"ours_{split}.txt", "w", encoding="utf-8") as f:
        f.writelines(repr(s) + "\n" for s in parts.samples)
    with open(cap_dir / f"{cfg.caption_source}_{split}.txt", "w", encoding="utf-8") as f:
        f.writelines(repr({"img_id": i, "text": t}) + "\n" for i, t in parts.captions.items())
    with open(cap_dir / f"{cfg.caption_source}_{split}.json", "w", encoding="utf-8") as f:
        json.dump({Path(k).stem: v for k, v in parts.captions.items()}, f, ensure_ascii=False)
    scores = parts.scores
    order = list(range(len(scores)))
    rng.shuffle(order)  # score lines are a permutation of the samples, as released
    for prefix, col in ((f"{split}_weight", 1), (f"dif_{split}_weight", 2)):
        with (
            open(txt / f"{prefix}_strong.txt", "w", encoding="utf-8") as fs,
            open(txt / f"{prefix}_weak.txt", "w", encoding="utf-8") as fw,
        ):
            for i in order:
                strong = scores[i][col]
                fs.write(f"{scores[i][0]}\t{strong!r}\n")
                fw.write(f"{scores[i][0]}\t{1.0 - strong!r}\n")
    torch.save(parts.crops, txt / f"mre_{split}_dict.pth")
    torch.save(parts.dif_boxes, txt / f"mre_dif_{split}_dict.pth")
    with open(txt / f"phrase_text_{split}.json", "w", encoding="utf-8") as f:
        json.dump(parts.phrases, f, ensure_ascii=False)


def generate_world(output_dir: str | Path, config: WorldConfig | None = None) -> WorldSummary:
    """Write a complete synthetic MNRE-layout dataset to ``output_dir`` (which must not exist yet).

    The world is written into ``<output_dir>.partial`` and renamed into place once complete.
    """
    cfg = config or WorldConfig()
    out = Path(output_dir)
    if out.exists():
        raise CamimError(f"{out}: already exists; generate_world writes a new folder (use load_or_generate)")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # left behind by an interrupted run
    (tmp / "txt").mkdir(parents=True)
    (tmp / "caption").mkdir()
    with open(tmp / "ours_rel2id.json", "w", encoding="utf-8") as f:
        json.dump({r: i for i, r in enumerate(RELATIONS)}, f, separators=(",", ":"))
    pools = _name_pools()
    splits = {s: _write_split(tmp, s, getattr(cfg, s), cfg, pools) for s in SPLITS}
    summary = WorldSummary(GENERATOR_VERSION, asdict(cfg), list(RELATIONS), splits)
    with open(tmp / MARKER, "w", encoding="utf-8") as f:
        json.dump(_summary_dict(summary), f, indent=1, sort_keys=True)
    tmp.rename(out)
    return summary


def _summary_dict(summary: WorldSummary) -> dict:
    d = asdict(summary)
    d["splits"] = {k: asdict(v) for k, v in summary.splits.items()}
    return d


def read_summary(world_dir: str | Path) -> WorldSummary | None:
    """The summary of a complete world in ``world_dir``, or ``None`` when it holds none."""
    marker = Path(world_dir) / MARKER
    if not marker.is_file():
        return None
    try:
        d = json.loads(marker.read_text(encoding="utf-8"))
        splits = {k: SplitSummary(**v) for k, v in d["splits"].items()}
        return WorldSummary(d["generator_version"], d["config"], d["relations"], splits)
    except (ValueError, KeyError, TypeError) as exc:
        raise CamimError(f"{marker}: unreadable synthetic world marker ({exc})") from exc


def load_or_generate(world_dir: str | Path, config: WorldConfig | None = None) -> tuple[WorldSummary, bool]:
    """Reuse the world in ``world_dir`` when it was made by this generator with ``config``; else write it.

    Returns ``(summary, reused)``. A folder that exists but is not a synthetic world is never overwritten.
    A synthetic world made with another config or generator version is replaced.
    """
    cfg = config or WorldConfig()
    path = Path(world_dir)
    summary = read_summary(path)
    if (
        summary is not None
        and summary.generator_version == GENERATOR_VERSION
        and summary.config == asdict(cfg)
    ):
        return summary, True
    if path.exists():
        if summary is None:
            raise CamimError(
                f"{path}: exists and is not a synthetic world ({MARKER} missing); choose another folder"
            )
        shutil.rmtree(path)
    return generate_world(path, cfg), False

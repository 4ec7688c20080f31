"""Tiny backbones saved to temp folders, and examples with drawn images, for the model tests."""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from tests.factories import TINY_BERT, TINY_RESNET, bert_folder, resnet_folder

from camim.data.types import Entity, MNREExample, Scores

WORDS = (
    "the latest ark horror lc deluxe expansion circle undone has been released a photo of man woman "
    "with at in on and is was to his her new york city team player plays for visit from dog red blue"
).split()
LABELS = ["None", "/per/per/peer", "/per/org/member_of", "/misc/misc/part_of"]


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32, random weights) with a WordPiece vocab whose first rows mimic
    bert-base-uncased."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(6)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += sorted(set(WORDS)) + ["##ham", "##g", ":", "##s"]
    vocab += list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    return bert_folder(tmp_path_factory.mktemp("tiny_bert"), vocab, weights=True, **TINY_BERT)


@pytest.fixture(scope="session")
def vision_dir(tmp_path_factory) -> Path:
    """A tiny transformers ResNet (4 stages, 8..32 channels, random weights)."""
    return resnet_folder(tmp_path_factory.mktemp("tiny_resnet"), weights=True, **TINY_RESNET)


@pytest.fixture(scope="session")
def base_dirs(tmp_path_factory) -> dict:
    """Model-config keys for bert-base-uncased / ResNet-50 shapes (``BertConfig()``, ``ResNetConfig()``, a
    30,522-entry vocabulary with bert-base's special rows), random weights: build on ``torch.device("meta")``
    unless the test needs values."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"w{i}" for i in range(30522 - len(vocab))]
    text = bert_folder(tmp_path_factory.mktemp("bert_base"), vocab)  # BertConfig()'s sizes
    vision = resnet_folder(tmp_path_factory.mktemp("resnet50"))  # ResNetConfig()'s sizes
    return {
        "text_encoder": str(text),
        "vision_encoder": str(vision),
        "text_encoder_pretrained": False,
        "vision_encoder_pretrained": False,
    }


def draw(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    img = Image.new("RGB", size, (seed * 37 % 255, seed * 91 % 255, seed * 53 % 255))
    d = ImageDraw.Draw(img)
    d.rectangle([seed % 10, 3, 20 + seed % 15, 30], fill=(200, 30 * (seed % 5), 90))
    d.ellipse([25, 5 + seed % 7, 44, 35], fill=(10, 220, seed * 11 % 255))
    return img


def make_examples(n: int = 4, images: bool = True, seed: int = 0) -> list[MNREExample]:
    out = []
    for i in range(n):
        k = i + seed
        tokens = ["the", "man", "plays", "for", "new", "york", "team", "with", "his", "dog"][: 7 + k % 4]
        head = Entity("man", 1, 2)
        tail = Entity("new york", 4, 6) if k % 2 == 0 else Entity("team", 6, 7)
        if k % 3 == 2:
            head, tail = tail, head
        ex = MNREExample(
            index=i,
            tokens=tokens,
            head=head,
            tail=tail,
            img_id=f"img{k}.jpg",
            relation=LABELS[k % len(LABELS)],
            label=k % len(LABELS),
            caption=" ".join(
                ["a", "photo", "of", "a", "man", "with", "a", "dog", "in", "the", "city"][: 4 + k % 8]
            ),
            scores=Scores(0.9 - 0.1 * (k % 3), 0.1 + 0.1 * (k % 3), 0.8, 0.2),
            phrase="Man New York person",
        )
        if images:
            ex.image = draw(k)
            ex.objects = [draw(k + 10), draw(k + 20)][: 1 + k % 3]
            ex.generated_image = draw(k + 30, (40, 40))
            ex.generated_objects = [draw(k + 40)]
        out.append(ex)
    return out


def tiny_config(text_dir: Path, vision_dir: Path, **overrides) -> dict:
    cfg = {
        "name": "tmr",
        "text_encoder": str(text_dir),
        "vision_encoder": str(vision_dir),
        "max_length": 32,
        "caption_max_length": 12,
        "text_window": 12,
        "image_size": 32,
    }
    cfg.update(overrides)
    return cfg


IMAGE_FIELDS = ("image", "objects", "generated_image", "generated_objects")


@torch.no_grad()
def frozen_visual_batch(model, batch):
    """Frozen-visual form of a pixel ``batch`` by hand (no camim.speed): every image of its pixel fields through
    ``model.resnet.features`` (run it in eval mode) once into a table whose last row is an all-zero image;
    returns (table, the batch with ``*_rows`` instead of pixels; padded object slots -> the zero row)."""
    present = [f for f in IMAGE_FIELDS if getattr(batch, f) is not None]
    pixels = [getattr(batch, f) for f in present]
    flat = torch.cat([p.reshape(-1, *p.shape[-3:]) for p in pixels] + [torch.zeros(1, *pixels[0].shape[-3:])])
    table = model.resnet.features(flat, model.visual_feature_kind)
    zero_row, start, changes = flat.shape[0] - 1, 0, {}
    for name, p in zip(present, pixels, strict=True):
        lead = p.shape[:-3]
        rows = torch.arange(start, start + lead.numel()).view(lead)
        start += lead.numel()
        mask = getattr(batch, f"{name}_mask", None)
        if mask is not None:
            rows[mask == 0] = zero_row
        changes.update({name: None, f"{name}_rows": rows})
    return table, dataclasses.replace(batch, **changes)

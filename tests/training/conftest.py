"""Tiny MNRE-format data written by the tests, and tiny-model overrides for the presets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

RELATIONS = ["None", "/per/per/couple", "/per/org/member_of", "/per/loc/place_of_residence"]
CUES = {
    "None": ["saw", "met"],
    "/per/per/couple": ["married", "wed"],
    "/per/org/member_of": ["joined", "works at"],
    "/per/loc/place_of_residence": ["lives in", "moved to"],
}
NAMES = ["Anna", "Bob", "Carl", "Dora", "Emil", "Fay", "Gus", "Hana", "Ivo", "Jon", "Kim", "Lea"]
SCENES = ["a wedding hall", "an office building", "a city street", "a park", "a beach"]

# Compact encoders for tests: small enough to train a few steps in well under a second.
TINY = [
    "offline.vocab_size=300",
    "offline.min_frequency=1",
    "offline.hidden_size=32",
    "offline.num_hidden_layers=1",
    "offline.num_attention_heads=2",
    "offline.intermediate_size=64",
    "offline.max_position_embeddings=80",
    "optim.batch_size=8",
    "optim.epochs=2",
    "optim.lr=3e-3",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
]

# Issue 18 §2's settings, each refused with the dotted key (config-level and `camim train` CLI-level tests).
ISSUE18_BAD_SETTINGS = [
    ("optim.bootstrap_train=flase", "optim.bootstrap_train: expected true or false, got 'flase'"),
    ("trainer.progress_bar=flase", "trainer.progress_bar: expected true or false, got 'flase'"),
    ("speed.fast=nope", "speed.fast: expected true or false, got 'nope'"),
    ("optim.batch_size=abc", "optim.batch_size: expected an integer, got 'abc'"),
    ("model.mi_alpha=abc", "model.mi_alpha: expected a number, got 'abc'"),
    ("model.mi_temperature=abc", "model.mi_temperature: expected a number, got 'abc'"),
    ("optim.epochs=1.5", "optim.epochs: expected an integer, got 1.5"),
    ("offline.model_keys=text_encoder", "offline.model_keys: expected a list of strings, got 'text_encoder'"),
    ("model.colour=red", "model.colour: unknown key"),
]


def write_tiny_mnre(root: Path, n_train: int = 48, n_eval: int = 16, seed: int = 0) -> Path:
    """An MNRE-layout folder (rel2id, txt/ours_*.txt dict lines, caption/minicpm_*.txt) whose relation is
    decided by a cue word between the two names."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "ours_rel2id.json").write_text(json.dumps({r: i for i, r in enumerate(RELATIONS)}))
    (root / "txt").mkdir(exist_ok=True)
    (root / "caption").mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        lines, caps = [], []
        for i in range(n):
            rel = RELATIONS[i % len(RELATIONS)]
            a, b = rng.sample(NAMES, 2)
            cue = rng.choice(CUES[rel]).split()
            tokens = ["RT", "@news", ":", a, *cue, b, "today"]
            h = {"name": a, "pos": [3, 4]}
            t = {"name": b, "pos": [4 + len(cue), 5 + len(cue)]}
            img = f"{split}_{i}.jpg"
            lines.append(repr({"token": tokens, "h": h, "t": t, "img_id": img, "relation": rel}))
            caps.append(repr({"img_id": img, "text": f"two people in {rng.choice(SCENES)} smiling"}))
        (root / "txt" / f"ours_{split}.txt").write_text("\n".join(lines) + "\n")
        (root / "caption" / f"minicpm_{split}.txt").write_text("\n".join(caps) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_mnre(tmp_path_factory) -> Path:
    return write_tiny_mnre(tmp_path_factory.mktemp("tiny_mnre"))

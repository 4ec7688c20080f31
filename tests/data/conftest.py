"""A tiny MNRE-style folder in the released layout, written by the tests (text, captions, scores, object
dictionaries, phrases and images drawn with Pillow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

RELATIONS = ["None", "/per/per/peer", "/per/org/member_of"]

# Per split: (tokens, head pos, tail pos, img_id, relation)
SAMPLES = {
    "train": [
        (["Alice", "met", "Bob", "in", "Paris"], [0, 1], [2, 3], "a.jpg", "/per/per/peer"),
        (["Carol", "joined", "ACME", "today"], [0, 1], [2, 3], "b.jpg", "/per/org/member_of"),
        (["It's", "a", '"quoted"', "day"], [0, 1], [3, 4], "a.jpg", "None"),
    ],
    "val": [
        (["Dan", "and", "Eve"], [0, 1], [2, 3], "c.jpg", "/per/per/peer"),
        (["Fay", "at", "Gap"], [0, 1], [2, 3], "d.jpg", "None"),
    ],
    "test": [
        (["Gus", "with", "Hal"], [2, 3], [0, 1], "e.jpg", "/per/per/peer"),
    ],
}

CAPTIONS = {
    "a.jpg": "two  people\tshaking hands",
    "b.jpg": "a logo",
    "c.jpg": "a park",
    "d.jpg": "a shop",
    "e.jpg": "",
}


def sample_line(tokens, h, t, img_id, relation) -> str:
    d = {
        "token": tokens,
        "h": {"name": " ".join(tokens[h[0] : h[1]]), "pos": h},
        "t": {"name": " ".join(tokens[t[0] : t[1]]), "pos": t},
        "img_id": img_id,
        "relation": relation,
    }
    return repr(d) + "\n"


def draw(path: Path, size=(32, 24), color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    img.putpixel((0, 0), (0, 255, 0))
    img.save(path)


def build_tiny_mnre(root: Path, images: bool = True) -> Path:
    """Write the tiny folder under ``root`` and return it."""
    (root / "txt").mkdir(parents=True)
    (root / "caption").mkdir()
    (root / "ours_rel2id.json").write_text(json.dumps({r: i for i, r in enumerate(RELATIONS)}))
    for split, samples in SAMPLES.items():
        (root / "txt" / f"ours_{split}.txt").write_text("".join(sample_line(*s) for s in samples))
        img_ids = list(dict.fromkeys(s[3] for s in samples))
        for prefix in ("minicpm", "caption", "cogvlm", "llavanext", "instruct", "BLIP"):
            lines = [
                repr({"img_id": i, "text": ("\n" if prefix == "llavanext" else "") + CAPTIONS[i]})
                for i in img_ids
            ]
            lines.append(repr({"img_id": "inf.png", "text": "nothing"}))
            (root / "caption" / f"{prefix}_{split}.txt").write_text("\n".join(lines) + "\n")
        (root / "caption" / f"minicpm_{split}.json").write_text(
            json.dumps({i.rsplit(".", 1)[0]: CAPTIONS[i] for i in img_ids})
        )
        for kind in ("", "dif_"):
            strong = [f"{s[3]}\t{0.1 * (k + 1):.2f}" for k, s in enumerate(samples)]
            weak = [f"{s[3]}\t{1 - 0.1 * (k + 1):.2f}" for k, s in enumerate(samples)]
            (root / "txt" / f"{kind}{split}_weight_strong.txt").write_text("\n".join(strong) + "\n")
            (root / "txt" / f"{kind}{split}_weight_weak.txt").write_text("\n".join(weak) + "\n")
        crops = {k: [f"{k}_crop_{j}.png" for j in range(k + 2)] for k in range(len(samples))}
        torch.save(crops, root / "txt" / f"mre_{split}_dict.pth")
        boxes = {
            k: [
                torch.tensor([0.0, 0.0, 20.0, 10.0]),
                torch.tensor([5.0, 5.0, 5.5, 30.0]),
                torch.tensor([2.0, 2.0, 12.0, 22.0]),
            ]
            for k in range(len(samples))
        }
        torch.save(boxes, root / "txt" / f"mre_dif_{split}_dict.pth")
        phrases = {str(k): " ".join(s[0][:2]) for k, s in enumerate(samples)}
        (root / "txt" / f"phrase_text_{split}.json").write_text(json.dumps(phrases))
        if images:
            for i in img_ids:
                draw(root / "img_org" / split / i, (40, 30))
                draw(root / "diffusion_pic" / split / i, (32, 32), (10, 10, 200))
            for names in crops.values():
                for n in names:
                    draw(root / "img_vg" / split / "crops" / n, (8, 8), (0, 0, 0))
    return root


@pytest.fixture
def tiny_mnre(tmp_path: Path) -> Path:
    return build_tiny_mnre(tmp_path / "mnre")

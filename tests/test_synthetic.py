"""The synthetic world: deterministic, in the released MNRE layout, and ambiguous in text where the image decides."""

from __future__ import annotations

import ast
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from camim.errors import CamimError
from camim.synthetic import (
    AMBIGUOUS_GROUPS,
    GROUPS,
    MARKER,
    RELATIONS,
    SCENE_CUES,
    SPLITS,
    WorldConfig,
    generate_world,
    load_or_generate,
    read_summary,
    split_counts,
)

SMALL = WorldConfig(seed=3, train=48, val=16, test=16, image_size=64, generated_size=64)
MEDIUM = WorldConfig(seed=11, train=600, val=8, test=300, image_size=48, generated_size=48)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "world"
    generate_world(out, SMALL)
    return out


@pytest.fixture(scope="module")
def medium_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic_medium") / "world"
    generate_world(out, MEDIUM)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _samples(root: Path, split: str) -> list[dict]:
    with open(root / "txt" / f"ours_{split}.txt", encoding="utf-8") as f:
        return [ast.literal_eval(line) for line in f]


def _captions(root: Path, split: str) -> dict[str, str]:
    with open(root / "caption" / f"minicpm_{split}.txt", encoding="utf-8") as f:
        rows = [ast.literal_eval(line) for line in f]
    return {r["img_id"]: r["text"] for r in rows}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(small_world, tmp_path):
    again = tmp_path / "again"
    generate_world(again, SMALL)
    assert _files(again) == _files(small_world)
    other = tmp_path / "other"
    generate_world(other, WorldConfig(**{**SMALL.__dict__, "seed": 4}))
    assert (other / "txt/ours_train.txt").read_bytes() != (small_world / "txt/ours_train.txt").read_bytes()


def test_layout_and_formats_match_the_released_files(small_world):
    rel2id = json.loads((small_world / "ours_rel2id.json").read_text())
    assert list(rel2id) == RELATIONS and rel2id["None"] == 0 and len(rel2id) == 10
    for split in SPLITS:
        samples = _samples(small_world, split)
        assert len(samples) == getattr(SMALL, split)
        for s in samples:
            assert list(s) == ["token", "h", "t", "img_id", "relation"]
            for ent in (s["h"], s["t"]):
                start, end = ent["pos"]
                assert 0 <= start < end <= len(s["token"])
                assert " ".join(s["token"][start:end]) == ent["name"]
            assert (small_world / "img_org" / split / s["img_id"]).is_file()
            assert (small_world / "diffusion_pic" / split / s["img_id"]).is_file()
        captions = _captions(small_world, split)
        assert set(captions) == {s["img_id"] for s in samples}  # one caption per image
        as_json = json.loads((small_world / "caption" / f"minicpm_{split}.json").read_text())
        assert as_json == {Path(k).stem: v for k, v in captions.items()}
        # scores: one line per sample, a permutation of the sample order, strong + weak = 1
        for prefix in (f"{split}_weight", f"dif_{split}_weight"):
            strong = [
                ln.split("\t")
                for ln in (small_world / "txt" / f"{prefix}_strong.txt").read_text().splitlines()
            ]
            weak = [
                ln.split("\t") for ln in (small_world / "txt" / f"{prefix}_weak.txt").read_text().splitlines()
            ]
            assert Counter(i for i, _ in strong) == Counter(s["img_id"] for s in samples)
            assert [i for i, _ in strong] == [i for i, _ in weak]
            assert all(abs(float(a) + float(b) - 1.0) < 1e-7 for (_, a), (_, b) in zip(strong, weak))
        crops = torch.load(small_world / "txt" / f"mre_{split}_dict.pth", weights_only=True)
        assert sorted(crops) == list(range(len(samples)))
        for idx, names in crops.items():
            assert 1 <= len(names) <= 3
            for name in names:
                assert name.startswith(f"{idx}_pred_yolo_crop_") and name.endswith(".png")
                assert (small_world / "img_vg" / split / "crops" / name).is_file()
        boxes = torch.load(small_world / "txt" / f"mre_dif_{split}_dict.pth", weights_only=True)
        assert sorted(boxes) == list(range(len(samples)))
        for bs in boxes.values():
            for b in bs:
                assert b.dtype == torch.float32 and b.shape == (4,)
                assert 0 <= b[0] < b[2] <= SMALL.generated_size and 0 <= b[1] < b[3] <= SMALL.generated_size
        phrases = json.loads((small_world / "txt" / f"phrase_text_{split}.json").read_text())
        assert sorted(phrases, key=int) == [str(i) for i in range(len(samples))]
        assert "@" not in "".join(phrases.values())


def test_the_data_layer_reads_every_modality(small_world):
    from camim.data import MNREDataset
    from camim.data.dataset import MODALITIES

    for split in SPLITS:
        ds = MNREDataset(small_world, split, caption_source="minicpm", modalities=MODALITIES)
        assert len(ds) == getattr(SMALL, split)
        assert list(ds.labels.names) == RELATIONS and ds.labels.negative_name == "None"
        for i in (0, len(ds) - 1):
            ex = ds[i]
            assert ex.caption and ex.scores is not None and ex.phrase
            assert ex.image.size == (SMALL.image_size, SMALL.image_size)
            assert ex.generated_image.size == (SMALL.generated_size, SMALL.generated_size)
            assert 1 <= len(ex.objects) <= 3 and 1 <= len(ex.generated_objects) <= 3
            assert ds.labels.to_id(ex.relation) == ex.label
        assert not any(ds.report.values()), ds.report
    from camim.cli import main

    assert main(["data", "validate", str(small_world)]) == 0


def _scene_of(caption: str) -> list[str]:
    return [scene for scene, cues in SCENE_CUES.items() if any(c in caption.lower() for c in cues)]


def test_the_caption_states_the_decisive_fact(medium_world):
    relation_of_scene = {scene: rel for g in GROUPS.values() for rel, scene in g.items()}
    assert len(relation_of_scene) == sum(len(g) for g in GROUPS.values())  # every scene names one relation
    for split in ("train", "test"):
        captions = _captions(medium_world, split)
        for s in _samples(medium_world, split):
            caption = captions[s["img_id"]].lower()
            first_sentence = caption.split(". ")[0]
            assert _scene_of(caption) == _scene_of(first_sentence)  # the cue is in the first sentence
            (scene,) = _scene_of(caption)  # exactly one scene's cue
            assert relation_of_scene[scene] == s["relation"]
            cue = next(c for c in SCENE_CUES[scene] if c in caption)
            assert len(caption[: caption.index(cue)].split()) <= 10  # early: survives truncation


def _group_of(sample: dict) -> str:
    """The group a sample's text belongs to, read from its template (entity spans masked)."""
    from camim.synthetic import TEMPLATES

    tokens = list(sample["token"])
    spans = sorted(
        [("{h}", *sample["h"]["pos"]), ("{t}", *sample["t"]["pos"])], key=lambda x: x[1], reverse=True
    )
    for mark, start, end in spans:
        tokens[start:end] = [mark]
    text = " ".join(tokens)
    swapped = text.replace("{h}", "{X}").replace("{t}", "{h}").replace("{X}", "{t}")
    keys = {k for k, ts in TEMPLATES.items() for t in ts if t in (text, swapped)}
    assert len(keys) == 1, text
    (key,) = keys
    return key if key in GROUPS else "clear"


def test_text_alone_is_capped_on_ambiguous_groups(medium_world):
    """A multinomial naive Bayes text classifier (words + entity names) learns the clear relations but
    stays at the world's guaranteed ceiling on the ambiguous groups."""
    summary = read_summary(medium_world)
    train, test = _samples(medium_world, "train"), _samples(medium_world, "test")
    counts: dict[str, Counter] = defaultdict(Counter)
    prior = Counter(s["relation"] for s in train)
    for s in train:
        counts[s["relation"]].update(s["token"])
    vocab = {w for c in counts.values() for w in c}

    def predict(tokens: list[str]) -> str:
        def score(rel: str) -> float:
            total = sum(counts[rel].values()) + len(vocab)
            return math.log(prior[rel]) + sum(math.log((counts[rel][w] + 1) / total) for w in tokens)

        return max(prior, key=score)

    by_group: dict[str, list[bool]] = defaultdict(list)
    for s in test:
        by_group[_group_of(s)].append(predict(s["token"]) == s["relation"])
    assert sum(by_group["clear"]) / len(by_group["clear"]) >= 0.95  # the text decides these
    amb = [ok for g in AMBIGUOUS_GROUPS for ok in by_group[g]]
    ceiling = summary.splits["test"].ambiguous_text_only_ceiling
    assert len(amb) == summary.splits["test"].ambiguous
    assert 0.3 <= ceiling <= 0.4
    assert sum(amb) / len(amb) <= ceiling + 3 * math.sqrt(ceiling * (1 - ceiling) / len(amb))
    for g in AMBIGUOUS_GROUPS:  # the relations of a group are balanced exactly
        per_rel = summary.splits["test"].per_group[g]
        assert max(per_rel.values()) - min(per_rel.values()) <= 1


def test_split_counts_are_exact_and_recorded(medium_world):
    cfg = WorldConfig()
    for n in (1, 7, 300, 1501):
        c = split_counts(n, cfg.mix)
        assert sum(c.values()) == n and all(v >= 0 for v in c.values())
    summary = read_summary(medium_world)
    for split in ("train", "test"):
        samples = _samples(medium_world, split)
        rec = summary.splits[split]
        assert rec.per_relation == dict(sorted(Counter(s["relation"] for s in samples).items()))
        clear = sum(rec.per_group["clear"].values())
        best = sum(max(rec.per_group[g].values()) for g in AMBIGUOUS_GROUPS)
        assert rec.text_only_accuracy_ceiling == pytest.approx((clear + best) / rec.samples, abs=1e-6)
        assert rec.images == len({s["img_id"] for s in samples}) < rec.samples  # some images are shared


def test_load_or_generate_reuses_and_protects_folders(small_world, tmp_path):
    summary, reused = load_or_generate(small_world, SMALL)
    assert reused and summary.splits["train"].samples == SMALL.train
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CamimError, match="not a synthetic world"):
        load_or_generate(foreign, SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # a half-written world from an interrupted run is discarded and rebuilt; a changed config regenerates
    target = tmp_path / "w"
    (target.with_name("w.partial") / "txt").mkdir(parents=True)
    tiny = WorldConfig(seed=1, train=5, val=3, test=3, image_size=48, generated_size=48)
    _, reused = load_or_generate(target, tiny)
    assert not reused and (target / MARKER).is_file() and not target.with_name("w.partial").exists()
    bigger = WorldConfig(**{**tiny.__dict__, "train": 6})
    summary, reused = load_or_generate(target, bigger)
    assert not reused and summary.splits["train"].samples == 6
    assert len(_samples(target, "train")) == 6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"train": 0},
        {"image_size": 10},
        {"twin_rate": 1.5},
        {"mix": {"pair:/per/per/parent": 1.0}},
        {"mix": {"x": 1.0}},
    ],
)
def test_bad_configs_are_rejected(kwargs):
    with pytest.raises(CamimError):
        WorldConfig(**kwargs)

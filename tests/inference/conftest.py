"""A tiny trained checkpoint (2-layer BERT, WordPiece vocab trained by ``tokenizers``) in a training-output
layout (``run/model/``), and drawn images, for the inference tests."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from tests.factories import TINY_BERT, TINY_RESNET, bert_folder, resnet_folder

from camim.data.types import Entity, MNREExample

LABELS = ["None", "/per/per/couple", "/per/org/member_of", "/misc/loc/held_on"]
# Posts whose relation is signalled by one cue word, so that a few training steps give a real signal.
CUES = {"married": 1, "plays": 2, "held": 3, "likes": 0}
NAMES = ["rafael", "nadal", "mery", "perello", "titans", "jack", "london", "festival", "crocodile", "wales"]
CORPUS = [
    "rt @cnnsport : tennis star rafael nadal gets engaged to girlfriend of 14 years , mery perello",
    "jack plays for the titans in practice",
    "the festival was held in london on sunday",
    "new breed of crocodile discovered in south wales woodland",
    "a man and a woman married at a photo of the city",
] + [f"{a} {cue} {b}" for cue in CUES for a in NAMES for b in NAMES[:3]]


def _train_wordpiece(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = [
        "[PAD]",
        "[unused0]",
        "[unused1]",
        "[unused2]",
        "[unused3]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.model.save(str(folder))  # writes vocab.txt
    return folder / "vocab.txt"


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32, config only: random weights) and a WordPiece vocab trained on a small
    corpus."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = _train_wordpiece(folder).read_text(encoding="utf-8").splitlines()
    bert_folder(folder, words, **{**TINY_BERT, "num_attention_heads": 2, "max_position_embeddings": 128})
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    assert tokenizer.tokenize("jack plays titans") == ["jack", "plays", "titans"]
    return folder


@pytest.fixture(scope="session")
def tiny_vision_dir(tmp_path_factory) -> Path:
    """A tiny transformers ResNet config (random weights are built from it)."""
    return resnet_folder(tmp_path_factory.mktemp("tiny_resnet"), **TINY_RESNET)


def training_examples(n: int = 32, seed: int = 0) -> list[MNREExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cue = rng.choice(list(CUES))
        a, b = rng.sample(NAMES, 2)
        tokens = ["rt", a, cue, b, "today"]
        out.append(
            MNREExample(
                index=i,
                tokens=tokens,
                head=Entity(a, 1, 2),
                tail=Entity(b, 3, 4),
                img_id=f"img{i}.jpg",
                relation=LABELS[CUES[cue]],
                label=CUES[cue],
                caption=f"a photo of {a} and {b}",
            )
        )
    return out


def train_few_steps(model: torch.nn.Module, steps: int = 40, seed: int = 0) -> torch.nn.Module:
    """A few Adam steps on the cue-word task (enough to move every weight away from its initialisation)."""
    torch.manual_seed(seed)
    batch = model.processor(training_examples())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = model(batch).loss
        loss.backward()
        opt.step()
    return model.eval()


@dataclass
class TrainedRun:
    path: Path  # the training-output folder; the model is in path / "model"
    model: torch.nn.Module  # the in-memory model that was saved


@pytest.fixture(scope="session")
def bert_run(tmp_path_factory, tiny_text_dir) -> TrainedRun:
    """A training-output folder whose ``model/`` holds a tiny text-only BERT trained a few steps."""
    from camim.models import build_model

    torch.manual_seed(0)
    model = build_model(
        {
            "name": "bert",
            "text_encoder": str(tiny_text_dir),
            "text_encoder_pretrained": False,
            "max_length": 32,
            "text_window": 16,
            "dropout": 0.1,
        },
        labels=LABELS,
    )
    train_few_steps(model)
    run = tmp_path_factory.mktemp("run")
    model.save_pretrained(run / "model")
    return TrainedRun(run, model)


def save_tiny_tmr(folder: Path, text_dir: Path, vision_dir: Path, seed: int, **settings) -> Path:
    """A tiny TMR + CAM (images mode: reads the image, caption, objects and scores) with ``settings`` on top,
    saved as a model folder."""
    from camim.models import build_model

    torch.manual_seed(seed)
    config = {
        "name": "tmr",
        "text_encoder": str(text_dir),
        "text_encoder_pretrained": False,
        "vision_encoder": str(vision_dir),
        "vision_encoder_pretrained": False,
        "max_length": 32,
        "caption_max_length": 12,
        "text_window": 12,
        "image_size": 32,
        "missing_scores": "uniform",
        **settings,
    }
    build_model(config, labels=LABELS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tmr_dir(tmp_path_factory, tiny_text_dir, tiny_vision_dir):
    """A tiny TMR + CAM saved as a model folder (:func:`save_tiny_tmr`)."""
    return save_tiny_tmr(tmp_path_factory.mktemp("tmr") / "model", tiny_text_dir, tiny_vision_dir, seed=1)


@pytest.fixture(scope="session")
def bert_predictor(bert_run):
    from camim.inference import Predictor

    return Predictor.from_pretrained(bert_run.path)


def draw(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    img = Image.new("RGB", size, (seed * 37 % 255, seed * 91 % 255, seed * 53 % 255))
    d = ImageDraw.Draw(img)
    d.rectangle([seed % 10, 3, 20 + seed % 15, 30], fill=(200, 30 * (seed % 5), 90))
    d.ellipse([25, 5 + seed % 7, 44, 35], fill=(10, 220, seed * 11 % 255))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()

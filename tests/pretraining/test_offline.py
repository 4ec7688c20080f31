"""Offline encoder folders: deterministic WordPiece vocabulary, markers kept whole, reuse by signature."""

from __future__ import annotations

import json

from tests.training.conftest import TINY
from transformers import AutoConfig, AutoTokenizer

from camim.pretraining.offline import (
    SPECIAL_TOKENS,
    build_offline_encoder,
    vocabulary_corpus,
    wordpiece_vocabulary,
)
from camim.training.config import load_config


def test_vocabulary_is_deterministic_and_covers_every_character(tiny_mnre):
    corpus = vocabulary_corpus(tiny_mnre, "minicpm")
    assert len(corpus) == 48 + 48  # 48 sentences + 48 distinct images' captions
    a = wordpiece_vocabulary(corpus, 120, 1, True)
    assert a == wordpiece_vocabulary(list(corpus), 120, 1, True)
    assert len(a) == 120 and len(set(a)) == 120 and a[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert a[:5] == ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[unused3]"]  # bert-base-uncased ids
    assert {"a", "##a", "w", "##w"} <= set(a)


def test_encoder_folder_tokenizes_and_is_reused(tiny_mnre, tmp_path):
    cfg = load_config("offline-bert", TINY)
    folder = build_offline_encoder(cfg.offline, tiny_mnre, tmp_path / "enc")
    tok = AutoTokenizer.from_pretrained(folder)
    conf = AutoConfig.from_pretrained(folder)
    assert conf.vocab_size == len(tok) <= 300 and conf.hidden_size == 32  # "at most": the corpus is tiny
    pieces = tok.tokenize("Anna married Bob in a wedding hall")
    assert "[UNK]" not in pieces and "married" in pieces
    assert tok.convert_tokens_to_ids(["[unused0]", "[unused2]"]) == [1, 3]
    stamp = (folder / "camim_offline.json").stat().st_mtime_ns
    assert build_offline_encoder(cfg.offline, tiny_mnre, folder) == folder
    assert (folder / "camim_offline.json").stat().st_mtime_ns == stamp  # same settings: not rebuilt
    cfg2 = load_config("offline-bert", [*TINY, "offline.vocab_size=150"])
    build_offline_encoder(cfg2.offline, tiny_mnre, folder)
    assert json.loads((folder / "camim_offline.json").read_text())["offline"]["vocab_size"] == 150
    assert AutoConfig.from_pretrained(folder).vocab_size == 150

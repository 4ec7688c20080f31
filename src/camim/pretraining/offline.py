"""Offline encoders: a WordPiece vocabulary built (with ``tokenizers``' BERT normaliser and pre-tokeniser) from
the training split's text and captions, plus a compact BERT config with random weights, written to one folder that the model config
points to (``text_encoder``). Used by the ``offline-*`` presets on machines without pretrained weights.

A dataset without the vocabulary's caption file (``offline.vocab_caption_source``) gets a vocabulary of its
training text alone when the run reads no captions (the text-only ``offline-bert``; a warning says so and the
encoder folder's ``camim_offline.json`` records it); a run that reads captions stops with the error that names
the ``camim caption`` command making them.

Numbers from these encoders are not comparable with the paper's (no pretraining, no images).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from camim.data import DataLayout, MNREDataset
from camim.errors import DataError
from camim.io import DEFAULT_ENCODING

log = logging.getLogger(__name__)


@dataclass
class OfflineConfig:
    """Offline presets: a WordPiece vocabulary built from the training split's text and captions, and a
    compact BERT config with random weights, written to a folder the model config points to. The defaults
    are the ``offline-*`` presets' sizes."""

    enabled: bool = False
    # captions added to the vocabulary corpus (the same for every offline preset)
    vocab_caption_source: str | None = "minicpm"
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 80
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    encoder_dir: str | None = None  # default: <output>/offline_encoder
    # a `camim pretrain` folder (domain-adaptive MLM weights + tokenizer) used as the encoder folder instead of
    # a randomly initialised one; needs model.text_encoder_pretrained: true (the *-dapt presets)
    pretrained_encoder: str | None = None
    # model keys set to the encoder folder when the run starts (a list, e.g. [text_encoder, caption_encoder])
    model_keys: list[str] = field(default_factory=lambda: ["text_encoder"])


# [PAD] first and the OpenNRE markers at ids 1..4 as in bert-base-uncased; HVPNeT's markers as well.
SPECIAL_TOKENS = [
    "[PAD]",
    *[f"[unused{i}]" for i in range(10)],
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "<s>",
    "</s>",
    "<o>",
    "</o>",
]


def vocabulary_caption_file(
    data_dir: str | Path, caption_source: str | None, require_captions: bool
) -> Path | None:
    """The training split's caption file of ``caption_source`` (a source name or a file), or ``None`` when
    there is none and ``require_captions`` is false; else the data layer's ``DataError`` (which names the
    ``camim caption`` command that makes the file)."""
    if not caption_source:
        return None
    if Path(caption_source).is_file():
        return Path(caption_source)
    try:
        return DataLayout().caption_path(data_dir, caption_source, "train")
    except DataError:
        if require_captions:
            raise
        return None


def training_texts(
    data_dir: str | Path,
    caption_source: str | Path | None,
    limit: int | None = None,
    encoding: str = DEFAULT_ENCODING,
    on_error: str = "raise",
) -> tuple[list[str], list[str], list[Path]]:
    """The training split's sentences, its (unique, one per image) captions of ``caption_source`` and the
    files they came from (``on_error="skip"``: malformed sample lines left out, as the run's data.on_error
    does). Only the training split is read: a caption file that is the val or test split's (a file path given
    as ``caption_source``) is refused, so no evaluation text reaches a vocabulary or a pretraining corpus."""
    ds = MNREDataset(
        data_dir,
        split="train",
        caption_source=caption_source,
        modalities=("caption",) if caption_source else (),
        on_missing="fallback",
        encoding=encoding,
        on_error=on_error,
    )
    files = [ds.samples_path] + ([ds.caption_path] if ds.caption_path else [])
    check_training_files(data_dir, files)
    n = len(ds) if limit is None else min(limit, len(ds))
    texts, captions = [], {}
    for i in range(n):
        ex = ds[i]
        texts.append(ex.text)
        if ex.caption:
            captions.setdefault(ex.img_id, ex.caption)
    return texts, list(captions.values()), files


def check_training_files(data_dir: str | Path, files: list[Path]) -> None:
    """``DataError`` when one of ``files`` is a val or test split file (sample or caption file) of the data
    folder: what a vocabulary or a pretraining corpus is built from must be the training split's."""
    layout = DataLayout()
    evaluation = set()
    for split in ("val", "test"):
        evaluation |= {layout.path(data_dir, t, split).resolve() for t in layout.samples}
        caption_dir = layout.path(data_dir, layout.caption, split, prefix="x").parent
        if caption_dir.is_dir():
            evaluation |= {p.resolve() for p in caption_dir.glob(f"*_{split}.*")}
    for f in files:
        if Path(f).resolve() in evaluation:
            raise DataError("a val or test split file; only the training split may be read here", f)


def vocabulary_corpus(
    data_dir: str | Path,
    caption_source: str | Path | None,
    limit: int | None = None,
    encoding: str = DEFAULT_ENCODING,
    on_error: str = "raise",
) -> list[str]:
    """The training split's sentences followed by its (unique) captions (:func:`training_texts`)."""
    texts, captions, _ = training_texts(data_dir, caption_source, limit, encoding, on_error)
    return texts + captions


def wordpiece_vocabulary(
    corpus: list[str], vocab_size: int, min_frequency: int, lowercase: bool
) -> list[str]:
    """A WordPiece vocabulary of at most ``vocab_size`` entries, a deterministic function of the corpus.

    Text is normalised and pre-tokenised by ``tokenizers``' BERT components (the pipeline the tokenizer
    applies at run time). The vocabulary is the special tokens, every character as a word-initial piece and
    as a ``##`` continuation, then the most frequent word-initial prefixes (whole words included) and
    ``##`` suffixes of the corpus words (count >= ``min_frequency``; ties broken by length, then
    alphabetically). ``tokenizers``' own ``WordPieceTrainer`` breaks frequency ties in hash order, so two
    trainings on the same corpus give different vocabularies (different ids, and near the size limit
    different tokens), which would make two runs with the same seed differ.
    """
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in corpus:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    pieces: Counter[str] = Counter()
    for w, n in words.items():
        for k in range(2, len(w) + 1):
            pieces[w[:k]] += n  # word-initial prefixes, the whole word included
        for k in range(1, len(w) - 1):
            pieces["##" + w[k:]] += n  # continuation suffixes of length >= 2
    vocab = list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars]
    seen = set(vocab)
    ranked = sorted(
        (p for p, n in pieces.items() if n >= min_frequency and p not in seen),
        key=lambda p: (-pieces[p], -len(p), p),
    )
    return vocab + ranked[: max(0, vocab_size - len(vocab))]


def _signature(cfg: OfflineConfig, data_dir: str | Path, limit: int | None, captions: Path | None) -> dict:
    return {
        # where the folder goes and which pretrained folder replaces it do not change what is built
        "offline": {k: v for k, v in vars(cfg).items() if k not in ("encoder_dir", "pretrained_encoder")},
        "data": str(data_dir),
        "limit": limit,
        # the caption file the vocabulary was built from (None: the training text alone)
        "vocab_captions": None if captions is None else str(captions),
    }


def build_offline_encoder(
    cfg: OfflineConfig,
    data_dir: str | Path,
    folder: str | Path,
    limit: int | None = None,
    require_captions: bool = False,
    encoding: str = DEFAULT_ENCODING,
    on_error: str = "raise",
) -> Path:
    """Write ``vocab.txt`` + tokenizer files + a ``BertConfig`` to ``folder`` (reused when already built with
    the same settings; written to a temporary folder first and renamed, so an interruption leaves nothing
    half-written).

    Without the caption file of ``cfg.vocab_caption_source`` the vocabulary is built from the training text
    alone (logged as a warning, recorded as ``"vocab_captions": null`` in ``camim_offline.json``), unless
    ``require_captions`` (the run reads captions), which raises the ``DataError`` naming ``camim caption``."""
    from transformers import AutoTokenizer, BertConfig

    folder = Path(folder)
    captions = vocabulary_caption_file(data_dir, cfg.vocab_caption_source, require_captions)
    if captions is None and cfg.vocab_caption_source:
        log.warning(
            "offline encoder: no %r caption file in %s; the vocabulary is built from the training text "
            "alone (this run reads no captions)",
            cfg.vocab_caption_source,
            data_dir,
        )
    signature = _signature(cfg, data_dir, limit, captions)
    stamp = folder / "camim_offline.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == signature:
        return folder
    corpus = vocabulary_corpus(data_dir, captions, limit, encoding, on_error)
    vocab = wordpiece_vocabulary(corpus, cfg.vocab_size, cfg.min_frequency, cfg.lowercase)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".offline_encoder.", dir=folder.parent))
    try:
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": cfg.lowercase}), encoding="utf-8"
        )
        tok = AutoTokenizer.from_pretrained(str(tmp))
        if len(tok) != len(vocab):
            raise RuntimeError(f"tokenizer reloaded with {len(tok)} tokens, expected {len(vocab)}")
        tok.save_pretrained(str(tmp))
        BertConfig(
            vocab_size=len(tok),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            hidden_dropout_prob=cfg.hidden_dropout_prob,
            attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        ).save_pretrained(str(tmp))
        (tmp / "camim_offline.json").write_text(json.dumps(signature), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder

"""The one builder of the small encoder folders the tests load (``text_encoder`` / ``vision_encoder`` of a
model config): a BERT folder (WordPiece tokenizer + ``config.json``) and a transformers ResNet folder, with
random weights saved when asked, else config only (camim then builds random weights from the config).

The conftests of models/, inference/, training/ and preprocess/ call these under their own fixture names.
"""

from __future__ import annotations

from pathlib import Path

# hidden 32, 2 layers: the BERT of the model tests (the inference tests use 2 heads and 128 positions)
TINY_BERT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=160,
)
# 4 basic stages of 8..32 channels, one block each
TINY_RESNET = dict(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic")


def bert_folder(folder: Path, vocab: list[str], *, weights: bool = False, **config) -> Path:
    """``folder`` with a lower-casing WordPiece tokenizer over ``vocab`` (ids in list order) and a BERT
    ``config.json`` (``BertConfig(**config)``, ``vocab_size=len(vocab)``); ``weights``: also random weights of
    a ``BertModel`` without its pooler (``model.safetensors``)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    # transformers 5 takes the vocabulary as `vocab` (a dict); the 4.x `vocab_file=` keyword is ignored there
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    cfg = BertConfig(vocab_size=len(vocab), **config)
    if weights:
        BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    else:
        cfg.save_pretrained(folder)
    return folder


def resnet_folder(folder: Path, *, weights: bool = False, **config) -> Path:
    """``folder`` with a transformers ``ResNetConfig(**config)`` and, with ``weights``, random weights of a
    ``ResNetModel``. ``TINY_RESNET`` is the usual ``config``; none gives ResNet-50's shapes."""
    from transformers import ResNetConfig, ResNetModel

    folder.mkdir(parents=True, exist_ok=True)
    cfg = ResNetConfig(**config)
    if weights:
        ResNetModel(cfg).save_pretrained(folder)
    else:
        cfg.save_pretrained(folder)
    return folder

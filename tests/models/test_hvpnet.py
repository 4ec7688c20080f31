from __future__ import annotations

import pytest
import torch
from tests.models.conftest import LABELS, draw, make_examples, tiny_config

from camim.errors import CamimError
from camim.models import build_model, load_model

VARIANTS = [
    {"cam": "none", "mi": False},
    {"cam": "both", "mi": False},
    {"cam": "none", "mi": True},
    {"cam": "both", "mi": True},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"cam={v['cam']},mi={v['mi']}")
def test_hvpnet_variants(text_dir, vision_dir, variant):
    torch.manual_seed(0)
    model = build_model(tiny_config(text_dir, vision_dir, name="hvpnet", image_size=64, **variant), LABELS)
    batch = model.processor(make_examples(3))
    assert batch.objects.shape == (3, 3, 3, 64, 64) and batch.objects_mask.tolist() == [
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 0],
    ]
    past, _ = model.visual_prefix(batch, None) if variant["cam"] == "none" else (None, None)
    if past is not None:
        assert len(past) == 2 and past[0][0].shape == (
            3,
            4,
            16,
            8,
        )  # (B, heads, 4 tokens x 4 images, d/heads)
    out = model(batch)
    assert out.logits.shape == (3, len(LABELS)) and out.logits.dtype == torch.float32
    assert (out.mi_loss is not None) == variant["mi"]
    model.zero_grad()
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    model.eval()
    torch.testing.assert_close(model(batch).logits, model(batch).logits, rtol=0, atol=0)


def test_hvpnet_marking_and_prefix_effect(text_dir, vision_dir):
    model = build_model(
        tiny_config(text_dir, vision_dir, name="hvpnet", image_size=64, cam="none", mi=False), LABELS
    ).eval()
    exs = make_examples(2)
    batch = model.processor(exs)
    tok = model.tokenizer
    ids = batch.input_ids[0].tolist()
    assert ids[batch.head_pos[0]] == tok.convert_tokens_to_ids("<s>")
    assert ids[batch.tail_pos[0]] == tok.convert_tokens_to_ids("<o>")
    # "the <s> man </s> plays for <o> new york </o> team": closing markers before the span end words
    words = tok.convert_ids_to_tokens([i for i in ids if i != tok.pad_token_id])
    assert words[:12] == [
        "[CLS]",
        "the",
        "<s>",
        "man",
        "</s>",
        "plays",
        "for",
        "<o>",
        "new",
        "york",
        "</o>",
        "team",
    ]
    a = model(batch).logits
    exs[0].image = draw(99)
    b = model(model.processor(exs)).logits
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-6)


def test_hvpnet_text_padding_invariance(text_dir, vision_dir):
    torch.manual_seed(0)
    model = build_model(
        tiny_config(text_dir, vision_dir, name="hvpnet", image_size=64, cam="none", mi=False), LABELS
    ).eval()
    batch = model.processor(make_examples(2))
    short = model(batch).logits
    model.config.max_length = 40
    longer = model(model.processor(make_examples(2))).logits
    torch.testing.assert_close(short, longer, rtol=1e-4, atol=1e-5)


def test_hvpnet_requires_image_and_save_load(text_dir, vision_dir, tmp_path):
    model = build_model(tiny_config(text_dir, vision_dir, name="hvpnet", image_size=64), LABELS).eval()
    with pytest.raises(CamimError, match="'image'"):
        model.processor(make_examples(1, images=False))
    with pytest.raises(CamimError, match="visual_mode"):
        build_model(
            tiny_config(text_dir, vision_dir, name="hvpnet", image_size=64, visual_mode="text-caption"),
            LABELS,
        )
    batch = model.processor(make_examples(2))
    model.save_pretrained(tmp_path / "h")
    loaded = load_model(tmp_path / "h")
    assert len(loaded.tokenizer) == len(model.tokenizer)
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)


def test_prefix_enters_every_layer_as_leading_keys_and_values(text_dir, vision_dir):
    """The DynamicCache route equals a hand-written BERT whose self-attention prepends the prefix k/v."""
    torch.manual_seed(0)
    model = build_model(
        tiny_config(text_dir, vision_dir, name="hvpnet", image_size=64, cam="none", mi=False), LABELS
    )
    model.eval()
    batch = model.processor(make_examples(2))
    past, _ = model.visual_prefix(batch, None)
    bert = model.bert
    heads, hd = model.n_heads, bert.config.hidden_size // model.n_heads
    x = bert.embeddings(input_ids=batch.input_ids)  # position ids from 0, as HVPNeT forces
    mask = torch.cat([torch.ones(2, 16), batch.attention_mask.float()], dim=1)
    bias = (1 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
    for layer, (pk, pv) in zip(bert.encoder.layer, past):
        att = layer.attention.self

        def split(t):
            return t.view(2, -1, heads, hd).transpose(1, 2)

        q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5 + bias, dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(2, -1, heads * hd)
        a = layer.attention.output(ctx, x)
        x = layer.output(layer.intermediate(a), a)
    rows = torch.arange(2)
    expected = model.classifier(torch.cat([x[rows, batch.head_pos], x[rows, batch.tail_pos]], dim=-1))
    torch.testing.assert_close(model(batch).logits, expected, rtol=1e-4, atol=1e-5)


def test_the_visual_prefix_cache_goes_to_the_keyword_the_encoder_takes():
    """transformers renamed BERT's ``past_key_values`` to ``cache`` (5.2x); an older release swallows an
    unknown ``cache=`` and would run without the visual prefix (seen on 5.17 as a mask/key size mismatch)."""
    from torch import nn

    from camim.models.hvpnet import _cache_keyword

    class Old(nn.Module):
        def forward(self, input_ids, attention_mask=None, past_key_values=None, **kwargs): ...

    class New(nn.Module):
        def forward(self, input_ids, attention_mask=None, cache=None, **kwargs): ...

    assert _cache_keyword(Old()) == "past_key_values"
    assert _cache_keyword(New()) == "cache"


@pytest.mark.parametrize("name", ["tmr", "hvpnet"])
def test_models_from_pretrained_folders_are_built_in_train_mode(text_dir, vision_dir, tmp_path, name):
    """transformers' from_pretrained gives eval mode; a camim model is built in train mode (BERT dropout on,
    ResNet BatchNorm training as in the released loops), and a saved model loads for inference in eval mode."""
    model = build_model(tiny_config(text_dir, vision_dir, name=name), LABELS)
    assert [n for n, m in model.named_modules() if not m.training] == []
    model.save_pretrained(tmp_path / "m")
    assert not any(m.training for m in load_model(tmp_path / "m").modules())

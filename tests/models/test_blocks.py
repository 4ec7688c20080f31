"""Building blocks: InfoNCE (Eq. 20-22), the cross-attention block (Eq. 7-11), CAM levels, processor marking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.models.conftest import LABELS, tiny_config

from camim.data.types import Entity, MNREExample
from camim.models import build_model, cross_attention
from camim.models.caption_aware import CaptionAwareModule
from camim.models.cross_attention import CrossAttentionLayer, attend
from camim.models.mutual_information import info_nce


def test_info_nce_equals_cross_entropy_over_similarity_matrix():
    torch.manual_seed(0)
    o, g = torch.randn(6, 5), torch.randn(6, 5)
    x, y = F.normalize(o, dim=-1), F.normalize(g, dim=-1)
    sim = y @ x.t() / 0.5
    expected = -(sim.diag() - sim.logsumexp(dim=1)).mean()
    torch.testing.assert_close(info_nce(o, g, temperature=0.5), expected)
    sym = 0.5 * (expected + F.cross_entropy(sim.t(), torch.arange(6)))
    torch.testing.assert_close(info_nce(o, g, temperature=0.5, symmetric=True), sym)


def test_info_nce_aligned_lower_than_shuffled_and_floor():
    torch.manual_seed(1)
    o = torch.randn(8, 16)
    g = o + 0.05 * torch.randn(8, 16)
    assert info_nce(o, g) < info_nce(o, g[torch.randperm(8)])
    b = 8
    eye = torch.eye(b)  # perfectly aligned unit vectors, orthogonal negatives: cosine 1 vs 0
    anti = torch.cat([torch.eye(b // 2), -torch.eye(b // 2)])  # cosines in {-1, 0, 1}
    assert info_nce(eye, eye).item() == pytest.approx(math.log(1 + (b - 1) * math.exp(-1)), rel=1e-6)
    # the floor log(1 + (B-1) e^-2) is reached when every negative has cosine -1: B = 2 antipodal pairs
    two = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert info_nce(two, two).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert info_nce(anti, anti).item() >= math.log(1 + (b - 1) * math.exp(-2))


def test_cross_attention_matches_released_formula():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(8, dropout=0.3).eval()
    x, y = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    out, mask = layer(x, y)
    assert out.shape == (2, 8, 8) and mask.shape == (2, 8) and mask.all()

    def att(q, k, v):
        return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), -1) @ v

    qx, kx, vx = layer.linear_q(x), layer.linear_k(x), layer.linear_v(x)
    qy, ky, vy = layer.linear_q2(y), layer.linear_k2(y), layer.linear_v2(y)
    z1 = F.layer_norm(att(qx, kx, vx) + att(qx, ky, vy), (8,))
    z2 = F.layer_norm(att(ky, qy, vy) + att(qy, kx, vx), (8,))  # K·Qᵀ swap on the word side
    expected = F.elu(layer.merge_fr[0](torch.cat([z1, z2], dim=1)))
    torch.testing.assert_close(out, expected)
    assert not any(p.numel() for p in layer.layer_norm.parameters())  # parameter-free LN


def test_cross_attention_mask_makes_padding_irrelevant():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(8).eval()
    x, y = torch.randn(1, 4, 8), torch.randn(1, 3, 8)
    y_pad = torch.cat([y, torch.randn(1, 2, 8)], dim=1)
    m = torch.tensor([[1, 1, 1, 0, 0]])
    a, _ = layer(x, y, torch.ones(1, 3))
    b, mask = layer(x, y_pad, m)
    torch.testing.assert_close(a, b[:, :7])
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1, 1, 0, 0]]
    c, _ = layer(x, y_pad)  # released: unmasked, padding leaks into the visual rows
    assert not torch.allclose(a[:, :4], c[:, :4])


def test_sdpa_attention_equals_the_released_matmul_softmax():
    """speed.sdpa's path of attend(): scaled_dot_product_attention, to rounding, with and without a key mask,
    including a row whose keys are all padding (the released masked_fill averages every key there)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 4, 16), torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    for key_mask in (None, mask):
        torch.testing.assert_close(attend(q, k, v, key_mask, sdpa=True), attend(q, k, v, key_mask))
    by_hand = torch.softmax(q[0] @ k[0, :3].T / 4.0, -1) @ v[0, :3]  # sqrt(16) = 4
    torch.testing.assert_close(attend(q, k, v, mask, sdpa=True)[0], by_hand)
    torch.testing.assert_close(attend(q, k, v, mask, sdpa=True)[2], v[2].mean(0).expand(4, 16))
    layer = CrossAttentionLayer(16).eval()
    x, y = torch.randn(3, 4, 16), torch.randn(3, 5, 16)
    expected, _ = layer(x, y, mask)
    layer.sdpa_attention = True
    torch.testing.assert_close(layer(x, y, mask)[0], expected)


def test_cross_attention_builds_each_sdpa_mask_once(monkeypatch):
    """With speed.sdpa CAM's layer attends twice with each padding mask and builds each additive mask once;
    the mask: 0 on keys, a quarter of the dtype's lowest value on padding, rows allocated 8-aligned."""
    bias = cross_attention.sdpa_bias(torch.tensor([[1, 0, 1]]), torch.float32)
    lowest = torch.finfo(torch.float32).min
    assert bias.shape == (1, 1, 1, 3) and bias.stride(0) == 8
    assert bias.flatten().tolist() == [0.0, lowest / 4, 0.0]
    assert cross_attention.sdpa_bias(None, torch.float32) is None
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16).eval()
    x, y = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    x_mask, y_mask = (
        torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]),
    )
    expected, _ = layer(x, y, y_mask, x_mask)
    built = []
    real = cross_attention.sdpa_bias
    monkeypatch.setattr(cross_attention, "sdpa_bias", lambda m, dt: built.append(m) or real(m, dt))
    layer.sdpa_attention = True
    got, _ = layer(x, y, y_mask, x_mask)
    assert [m is x_mask for m in built] == [True, False] and built[1] is y_mask
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("level", "length"), [("both", 9), ("word", 9), ("sentence", 4)])
def test_caption_aware_module_levels(level, length):
    cam = CaptionAwareModule(8, level).eval()
    out, mask = cam(torch.randn(2, 4, 8), torch.randn(2, 8), torch.randn(2, 5, 8))
    assert out.shape == (2, length, 8) and mask.shape == (2, length)
    names = {n.split(".")[0] for n, _ in cam.named_parameters()}
    expected = {
        "both": {"encoder_conv_sentence", "encoder_conv_back", "encoder_conv_word", "attention"},
        "word": {"encoder_conv_word", "attention"},
        "sentence": {"encoder_conv_sentence", "encoder_conv_back"},
    }[level]
    assert names == expected


def reference_example() -> MNREExample:
    """MNRE train[0] (reference §3): 'The latest Arkham Horror LCG deluxe expansion the Circle Undone ...'."""
    tokens = "The latest Arkham Horror LCG deluxe expansion the Circle Undone has been released :".split()
    return MNREExample(
        index=0,
        tokens=tokens,
        head=Entity("Circle Undone", 8, 10),
        tail=Entity("Arkham Horror LCG", 2, 5),
        img_id="twitter_19_31_16_6.jpg",
        phrase="Circle Undone Arkham Horror LCG",
    )


def test_processor_marking_matches_reference_example(text_dir, vision_dir):
    model = build_model(tiny_config(text_dir, vision_dir, name="bert"), LABELS)
    batch = model.processor([reference_example()])
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    tokens = model.tokenizer.convert_ids_to_tokens(ids)
    expected = (
        "[CLS] the latest [unused2] ark ##ham horror lc ##g [unused3] deluxe expansion the [unused0] "
        "circle undone [unused1] has been released : [SEP]"
    ).split()
    assert tokens == expected
    assert (batch.head_pos.item(), batch.tail_pos.item()) == (13, 3)
    assert ids[1:4] == [model.tokenizer.convert_tokens_to_ids(t) for t in ("the", "latest", "[unused2]")]
    assert (
        batch.attention_mask[0].sum().item() == len(expected)
        and batch.input_ids[0, len(expected) :].eq(0).all()
    )


def test_processor_phrase_lookup_case_options(text_dir, vision_dir):
    sensitive = build_model(tiny_config(text_dir, vision_dir), LABELS)
    ids, mask = sensitive.processor.encode_phrases(["Circle undone person"])
    unk = sensitive.tokenizer.unk_token_id
    assert ids[0, :3].tolist() == [unk, sensitive.tokenizer.convert_tokens_to_ids("undone"), unk]
    assert mask.all()  # released all-zero mask read as all-ones (4.11.3 numerics)
    clean = build_model(
        tiny_config(
            text_dir, vision_dir, fidelity={"phrase_case_sensitive": False, "phrase_unmasked": False}
        ),
        LABELS,
    )
    ids, mask = clean.processor.encode_phrases(["Circle undone"])
    circle = clean.tokenizer.convert_tokens_to_ids("circle")
    assert ids[0, 0].item() == circle and mask[0].tolist() == [1, 1, 0, 0, 0, 0]


def test_full_image_pipelines(text_dir, vision_dir):
    from PIL import Image

    from camim.models.processing import crop_pixels, released_full_image_pixels

    img = Image.new("RGB", (40, 20), (10, 100, 200))
    bgr = released_full_image_pixels(img, 16)
    assert bgr.shape == (3, 16, 16) and bgr[:, 0, 0].tolist() == [200.0, 100.0, 10.0]
    rgb = crop_pixels(img, 16)
    assert rgb.shape == (3, 16, 16)
    torch.testing.assert_close(rgb[0, 0, 0], torch.tensor((10 / 255 - 0.485) / 0.229))

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.models.conftest import LABELS, make_examples, tiny_config

from camim.errors import CamimError
from camim.models import FidelityConfig, build_model, load_model

VARIANTS = [
    {"cam": "none", "mi": False},  # TMR
    {"cam": "both", "mi": False},  # TMR + CAM
    {"cam": "none", "mi": True},  # TMR + MI
    {"cam": "both", "mi": True},  # TMR + CAM + MI (CAMIM)
]


def used_params_have_grad(model, loss):
    model.zero_grad()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("mode", ["images", "text-caption"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"cam={v['cam']},mi={v['mi']}")
def test_tmr_variants_shapes_grads_determinism(text_dir, vision_dir, mode, variant):
    torch.manual_seed(0)
    model = build_model(tiny_config(text_dir, vision_dir, visual_mode=mode, **variant), LABELS)
    batch = model.processor(make_examples(4, images=mode == "images"))
    out = model(batch)
    assert out.logits.shape == (4, len(LABELS)) and out.logits.dtype == torch.float32
    for name in ("O_final", "G_final"):
        assert out.features[name].shape == (4, 32)
    assert out.features["F_final"].shape == (4, 64)
    assert (out.mi_loss is not None) == variant["mi"]
    if variant["mi"]:
        assert out.mi_loss.ndim == 0 and torch.isfinite(out.mi_loss)
        torch.testing.assert_close(out.loss, out.ce_loss + 0.1 * out.mi_loss)
    used_params_have_grad(model, out.loss)
    model.eval()
    torch.testing.assert_close(model(batch).logits, model(batch).logits, rtol=0, atol=0)
    if mode == "text-caption":
        assert model.required_modalities == {"caption"}
        assert not hasattr(model, "resnet")
    else:
        assert {"image", "objects", "generated_image", "scores"} <= model.required_modalities


@pytest.mark.parametrize("level", ["word", "sentence"])
def test_cam_levels(text_dir, vision_dir, level):
    model = build_model(tiny_config(text_dir, vision_dir, cam=level), LABELS).eval()
    out = model(model.processor(make_examples(2)))
    assert out.logits.shape == (2, len(LABELS))


def test_caption_changes_logits_in_text_caption_mode(text_dir, vision_dir):
    torch.manual_seed(0)
    model = build_model(tiny_config(text_dir, vision_dir, visual_mode="text-caption"), LABELS).eval()
    exs = make_examples(2, images=False)
    a = model(model.processor(exs)).logits
    for ex in exs:
        ex.caption = "red blue dog"
    b = model(model.processor(exs)).logits
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("mode", ["images", "text-caption"])
def test_padding_invariance_with_masks_and_not_with_reference(text_dir, vision_dir, mode):
    def logits(fidelity, max_length, caption_len):
        torch.manual_seed(0)
        cfg = tiny_config(text_dir, vision_dir, visual_mode=mode, fidelity=fidelity)
        cfg.update(max_length=max_length, caption_max_length=caption_len)
        model = build_model(cfg, LABELS).eval()
        return model(model.processor(make_examples(3, images=mode == "images"))).logits

    clean = dataclasses.asdict(FidelityConfig.clean())
    torch.testing.assert_close(logits(clean, 24, 16), logits(clean, 40, 30), rtol=1e-4, atol=1e-5)
    ref = {}
    assert not torch.allclose(logits(ref, 24, 16), logits(ref, 40, 30), atol=1e-4)


@pytest.mark.parametrize("name,mode", [("tmr", "images"), ("tmr", "text-caption"), ("bert", "text-caption")])
def test_pad_to_longest_same_logits_shorter_batches(text_dir, vision_dir, name, mode):
    clean = dataclasses.asdict(FidelityConfig.clean())
    exs = make_examples(3, images=mode == "images")
    out = {}
    for longest in (False, True):
        torch.manual_seed(0)
        cfg = tiny_config(text_dir, vision_dir, name=name, visual_mode=mode, fidelity=clean)
        model = build_model({**cfg, "pad_to_longest": longest}, LABELS).eval()
        batch = model.processor(exs)
        out[longest] = (batch, model(batch).logits)
    fixed, short = out[False][0], out[True][0]
    assert fixed.input_ids.shape[1] == 32 and short.input_ids.shape[1] == int(
        fixed.attention_mask.sum(1).max()
    )
    if name == "tmr":
        assert short.caption_input_ids.shape[1] == int(fixed.caption_attention_mask.sum(1).max()) < 12
        assert short.phrase_input_ids.shape[1] <= fixed.phrase_input_ids.shape[1]
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-4, atol=1e-5)


def test_pad_to_longest_refuses_padding_sensitive_quirks(text_dir, vision_dir):
    with pytest.raises(CamimError, match="pad_to_longest needs masked attention.*unmasked_attention"):
        build_model({**tiny_config(text_dir, vision_dir), "pad_to_longest": True}, LABELS)


def test_missing_modalities_raise_clear_errors(text_dir, vision_dir):
    model = build_model(tiny_config(text_dir, vision_dir), LABELS)
    with pytest.raises(CamimError, match="needs the 'image' modality"):
        model.processor(make_examples(2, images=False))
    exs = make_examples(2)
    exs[1].scores = None
    with pytest.raises(CamimError, match="'scores'"):
        model.processor(exs)
    uni = build_model(tiny_config(text_dir, vision_dir, missing_scores="uniform"), LABELS)
    batch = uni.processor(exs)
    assert batch.scores[1].tolist() == [0.5] * 4 and uni.processor.report["missing_scores_uniform"] == 1


def test_tmr_save_load_identical_logits(text_dir, vision_dir, tmp_path):
    model = build_model(tiny_config(text_dir, vision_dir), LABELS).eval()
    batch = model.processor(make_examples(3))
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)

from __future__ import annotations

import copy

import pytest
import torch
from tests.lockstep import assert_same_parameters, record_gradients, take_gradients
from tests.models.conftest import tiny_config
from tests.speed.conftest import dataset

from camim.models import build_model
from camim.optim import ForeachReleasedAdamW, ReleasedAdamW, build_optimizer
from camim.speed.config import SpeedConfig
from camim.speed.fast import FastStep, FastVisionBackbone, apply_fast_mode

FAST_CPU = SpeedConfig(
    fast=True, bf16=False, sdpa=True, fused_optimizer=True, channels_last=True, compile="none"
)


@pytest.fixture(scope="module")
def plain_and_batch(world, text_dir, vision_dir):
    torch.manual_seed(0)
    full = dataset(world)
    model = build_model(tiny_config(text_dir, vision_dir), list(full.labels.names))
    apply_fast_mode(model, SpeedConfig.released())
    assert model.bert.config._attn_implementation == "eager"
    batch = model.processor([full[i] for i in range(6)])
    assert (batch.objects_mask == 0).any() and (batch.generated_objects_mask == 0).any()
    return model, batch


@pytest.mark.parametrize("skip", [False, True], ids=["sdpa+channels_last", "sdpa+channels_last+skip_crops"])
def test_fast_path_logits_equal_plain_path_fp32(plain_and_batch, skip):
    plain, batch = plain_and_batch
    plain.eval()
    fast = apply_fast_mode(
        copy.deepcopy(plain), SpeedConfig(**{**FAST_CPU.__dict__, "skip_padded_crops": skip})
    )
    fast.eval()
    assert isinstance(fast.resnet, FastVisionBackbone) and fast.bert.config._attn_implementation == "sdpa"
    assert fast.cam.attention.sdpa_attention and fast.fusion.sdpa_attention  # CAM and fusion too
    assert not plain.fusion.sdpa_attention
    assert fast.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        expected, got = plain(batch), fast(batch)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.mi_loss, expected.mi_loss, rtol=1e-5, atol=1e-5)
    n_pads = int((batch.objects_mask == 0).sum() + (batch.generated_objects_mask == 0).sum())
    assert fast.resnet.zero_images_skipped == (n_pads - 2 if skip else 0)  # one zero image run per side


def test_merged_caption_encoder_call_equals_the_two_released_calls(plain_and_batch):
    """speed.merge_encoder_calls: bert2 runs once on [captions ; text windows]; logits, the InfoNCE loss and
    every gradient equal the two calls' (dropout off: the masks are the only thing drawn differently)."""
    plain, batch = plain_and_batch
    assert batch.caption_input_ids.shape == batch.input_ids[:, : plain.config.text_window].shape
    merged = apply_fast_mode(
        copy.deepcopy(plain), SpeedConfig(**{**FAST_CPU.__dict__, "merge_encoder_calls": True})
    )
    ref = apply_fast_mode(copy.deepcopy(plain), FAST_CPU)  # auto: off on CPU
    assert merged.merge_encoder_calls and not ref.merge_encoder_calls
    assert SpeedConfig.released().merge_encoder_calls is False  # the released step keeps two calls
    calls = {id(merged): [], id(ref): []}
    for m in (merged, ref):
        m.eval()  # dropout off; gradients still flow
        m.bert2.register_forward_hook(lambda mod, args, kw, out, k=id(m): calls[k].append(kw["input_ids"].shape),
                                      with_kwargs=True)  # fmt: skip
    got, expected = merged(batch), ref(batch)
    b, n = batch.input_ids.shape[0], plain.config.text_window
    assert calls[id(merged)] == [torch.Size([2 * b, n])] and calls[id(ref)] == [torch.Size([b, n])] * 2
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.mi_loss, expected.mi_loss, rtol=1e-5, atol=1e-5)
    got.loss.backward()
    expected.loss.backward()
    grads = dict(ref.named_parameters())
    for name, p in merged.named_parameters():
        if p.grad is not None or grads[name].grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert merged.bert2.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_skip_crops_in_train_mode_changes_only_batchnorm_statistics(plain_and_batch):
    """Documented difference: in train mode BN batch statistics no longer include every zero pad."""
    plain, batch = plain_and_batch
    skip_cfg = SpeedConfig(**{**FAST_CPU.__dict__, "skip_padded_crops": True})
    fast = apply_fast_mode(copy.deepcopy(plain), skip_cfg)
    ref = apply_fast_mode(copy.deepcopy(plain), FAST_CPU)
    for m in (fast, ref):
        m.eval()
        m.resnet.train()  # dropout off, BatchNorm on batch statistics
    with torch.no_grad():
        assert not torch.allclose(fast(batch).logits, ref(batch).logits, atol=1e-4)
    full = copy.copy(batch)
    full.objects = torch.randn_like(batch.objects)  # no pads: both paths run the same images
    full.generated_objects = torch.randn_like(batch.generated_objects)
    with torch.no_grad():
        torch.testing.assert_close(fast(full).logits, ref(full).logits, rtol=1e-5, atol=1e-5)


def test_foreach_released_adamw_matches_released_adamw():
    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(7)]
    a = [p.clone().requires_grad_() for p in params]
    b = [p.clone().requires_grad_() for p in params]
    kw = {"lr": 1e-2, "eps": 1e-6, "weight_decay": 0.01, "correct_bias": False}
    opt_a, opt_b = ReleasedAdamW(a, **kw), ForeachReleasedAdamW(b, **kw)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(a, b, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert not any(torch.equal(p, p0) for p, p0 in zip(a, params, strict=True))


def test_fast_step_updates_like_the_plain_step(plain_and_batch, deterministic):
    """The fast step's gradients equal the plain step's, and so does its update from them (tests/lockstep.py:
    the plain optimiser is handed the fast step's gradients)."""
    plain, batch = plain_and_batch
    ref = copy.deepcopy(plain).eval()  # eval: no dropout, so the two steps see the same function
    fast = apply_fast_mode(copy.deepcopy(plain), FAST_CPU).eval()
    opt_ref = build_optimizer(ref, lr=1e-3, multi_tensor=False)
    opt_fast = build_optimizer(fast, lr=1e-3, multi_tensor=True)
    assert isinstance(opt_ref, ReleasedAdamW) and isinstance(opt_fast, ForeachReleasedAdamW)
    take_gradients(opt_ref, ref, record_gradients(opt_fast, fast))
    step = FastStep(fast, opt_fast, FAST_CPU, "cpu")
    assert step.cfg.compile == "none" and not step.cfg.bf16
    loss = step(batch)
    ref_loss = ref(batch).loss
    ref_loss.backward()
    opt_ref.step()
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-5, atol=1e-5)
    assert_same_parameters(ref, fast)
    assert all(p.grad is None for p in fast.parameters())


def test_auto_switches_are_off_on_cpu_and_on_for_cuda():
    cpu = SpeedConfig().resolved("cpu")
    assert (cpu.bf16, cpu.fused_optimizer, cpu.channels_last, cpu.cuda_graphs, cpu.compile) == (
        False,
        False,
        False,
        False,
        "none",
    )
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        gpu = SpeedConfig().resolved("cuda")
        assert (gpu.bf16, gpu.fused_optimizer, gpu.channels_last, gpu.cuda_graphs, gpu.compile) == (
            True,
            True,
            True,
            True,
            "none",
        )
    with pytest.raises(Exception, match="compile must be"):
        SpeedConfig(compile="fast")


@pytest.mark.parametrize(
    ("world_size", "precision", "off"),
    [
        (1, "32-true", False),
        (1, "bf16-true", False),  # weights cast once, no autocast around the step
        (2, "32-true", True),  # DDP
        (1, "bf16-mixed", True),  # Lightning's autocast (cast cache on) is entered outside the capture
        (1, "16-mixed", True),
        (1, "bf16", True),  # Lightning's alias of bf16-mixed
        (1, 16, True),
    ],
)
def test_cuda_graphs_are_turned_off_where_the_step_cannot_be_replayed(world_size, precision, off):
    from camim.speed.training import graphs_off_reason

    reason = graphs_off_reason(world_size, precision)
    assert (reason is not None) is off
    if off and world_size == 1:
        assert "trainer.precision=32-true" in reason

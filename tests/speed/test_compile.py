"""What CPU can check of the GPU speed path: no graph breaks, compiled = eager, regional compilation, and the
step that owns its backward (the CUDA-graph path's contract) training exactly like the plain step."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.models.conftest import LABELS, frozen_visual_batch, make_examples, tiny_config

from camim.errors import CamimError
from camim.models import build_model
from camim.optim import build_optimizer
from camim.speed.config import SpeedConfig
from camim.speed.fast import FastStep, apply_fast_mode, compile_cache_dir, compile_regions
from camim.speed.graphs import ForwardBackward, GraphedForwardBackward, batch_signature

VARIANTS = [
    ("bert", {}),
    ("tmr", {"cam": "none", "mi": False}),
    ("tmr", {"cam": "both", "mi": True}),
    ("tmr", {"cam": "both", "mi": True, "visual_mode": "text-caption"}),
    ("hvpnet", {"cam": "none", "mi": False}),
    ("hvpnet", {"cam": "both", "mi": True}),
]


def _model_and_batch(text_dir, vision_dir, name: str, extra: dict):
    torch.manual_seed(0)
    size = {"image_size": 64} if name == "hvpnet" else {}  # HVPNeT pools every stage map to 2x2
    cfg = tiny_config(text_dir, vision_dir, name=name, **size, **extra)
    model = build_model(cfg, labels=LABELS)
    images = name != "bert" and extra.get("visual_mode", "images") == "images"
    batch = model.processor(make_examples(4, images=images))
    return model.eval(), batch


def _forward_loss(model):
    def run(batch):
        out = model(batch)
        return out.logits, out.loss

    return run


@pytest.mark.parametrize("name,extra", VARIANTS, ids=lambda v: str(v))
def test_forward_and_loss_have_no_graph_breaks(text_dir, vision_dir, name, extra):
    """A graph break is where dynamo falls back to Python: a host sync (``.item()``), a data-dependent branch
    or an untraceable call. None may exist in forward + loss, or the CUDA-graph capture would fail."""
    torch._dynamo.reset()
    model, batch = _model_and_batch(text_dir, vision_dir, name, extra)
    explanation = torch._dynamo.explain(_forward_loss(model))(batch)
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_frozen_visual_forward_and_loss_have_no_graph_breaks(text_dir, vision_dir):
    """Frozen-visual TMR (rows looked up in the backbone's attached table) is replayed from CUDA graphs too:
    the lookup must be a plain index, no host sync (the range check runs on CPU tensors only)."""
    torch._dynamo.reset()
    model, batch = _model_and_batch(text_dir, vision_dir, "tmr", {"cam": "both", "mi": True})
    table, rows_batch = frozen_visual_batch(model, batch)
    model.resnet.attach_features("tokens", table)
    model.train()  # the training step's mode (the frozen backbone's BatchNorm stays in eval)
    explanation = torch._dynamo.explain(_forward_loss(model))(rows_batch)
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.parametrize("name,extra", [VARIANTS[0], VARIANTS[2], VARIANTS[5]], ids=lambda v: str(v))
def test_compiled_logits_equal_eager(text_dir, vision_dir, name, extra):
    torch._dynamo.reset()
    model, batch = _model_and_batch(text_dir, vision_dir, name, extra)
    with torch.no_grad():
        ref = model(batch)
        compiled = torch.compile(model, backend="inductor", dynamic=False)(batch)
    torch.testing.assert_close(compiled.logits, ref.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.loss, ref.loss, rtol=1e-4, atol=1e-5)


def test_regional_compile_covers_the_repeated_blocks_and_keeps_logits(text_dir, vision_dir):
    torch._dynamo.reset()
    model, batch = _model_and_batch(text_dir, vision_dir, "tmr", {"cam": "both", "mi": True})
    with torch.no_grad():
        ref = model(batch).logits
    names = compile_regions(model)
    # 2 layers in each of the two BERTs + CAM's cross-attention block; the vision backbone is left to cuDNN
    assert sorted(names) == [
        "bert.encoder.layer.0",
        "bert.encoder.layer.1",
        "bert2.encoder.layer.0",
        "bert2.encoder.layer.1",
        "cam.attention",
    ]
    with torch.no_grad():
        out = model(batch).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert model.state_dict().keys() == build_model(model.config.to_dict(), labels=LABELS).state_dict().keys()


def test_compile_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache_dir() == tmp_path / "xdg" / "camim" / "torch-compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "ind"))
    assert compile_cache_dir() == tmp_path / "ind"
    assert compile_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"


def test_speed_config_refuses_inconsistent_switches():
    with pytest.raises(CamimError, match="cuda_graphs needs fixed shapes"):
        SpeedConfig(fast=True, cuda_graphs=True, skip_padded_crops=True)
    for mode in ("reduce-overhead", "regional", "default"):
        with pytest.raises(CamimError, match=f"speed.compile={mode} cannot run inside speed.cuda_graphs"):
            SpeedConfig(fast=True, cuda_graphs=True, compile=mode)
    with pytest.raises(CamimError, match=r"need speed.fast: true \(speed.cuda_graphs is set\)"):
        SpeedConfig(cuda_graphs=True)
    # skipping crops makes shapes vary: graphs are never chosen automatically then, even on CUDA
    assert SpeedConfig(fast=True, skip_padded_crops=True).resolved("cuda").cuda_graphs is False


def test_cuda_graphs_refuse_cpu(text_dir, vision_dir):
    model, _ = _model_and_batch(text_dir, vision_dir, "bert", {})
    with pytest.raises(CamimError, match="CUDA graphs need a CUDA device"):
        GraphedForwardBackward(model, model, "cpu")


def test_batch_signature_names_the_tensor_fields(text_dir, vision_dir):
    _, batch = _model_and_batch(text_dir, vision_dir, "bert", {})
    sig = dict((name, (shape, dtype)) for name, shape, dtype in batch_signature(batch))
    assert sig["input_ids"] == (tuple(batch.input_ids.shape), batch.input_ids.dtype)
    assert "image" not in sig  # None fields are not part of the signature


def test_step_that_owns_backward_updates_like_the_plain_step(text_dir, vision_dir):
    """The CUDA-graph path's contract, checked eagerly: forward_backward leaves this step's gradients in
    param.grad (replacing, never accumulating) and the optimiser then makes the plain step's update."""
    model, batch = _model_and_batch(text_dir, vision_dir, "tmr", {"cam": "both", "mi": True})
    ref = copy.deepcopy(model)
    cfg = SpeedConfig(fast=True, bf16=False, fused_optimizer=True, channels_last=False, compile="none")
    fast = apply_fast_mode(copy.deepcopy(model), cfg)
    opt_ref = build_optimizer(ref, lr=1e-3, multi_tensor=False)
    opt_fast = build_optimizer(fast, lr=1e-3, multi_tensor=True)
    step = ForwardBackward(fast, fast)
    for _ in range(2):  # the second step must not accumulate onto the first one's gradients
        opt_ref.zero_grad(set_to_none=True)
        ref_loss = ref(batch).loss
        ref_loss.backward()
        opt_ref.step()
        out = step(batch)
        assert not out.loss.requires_grad
        opt_fast.step()
        torch.testing.assert_close(out.loss, ref_loss.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    assert step.stats.eager_steps == 2


def test_fast_step_with_regional_compile_trains_like_eager(text_dir, vision_dir, tmp_path):
    torch._dynamo.reset()
    model, batch = _model_and_batch(text_dir, vision_dir, "bert", {})
    eager, compiled = copy.deepcopy(model), copy.deepcopy(model)
    base = {"fast": True, "bf16": False, "fused_optimizer": True, "channels_last": False}
    cfg_c = SpeedConfig(**base, compile="regional", compile_cache_dir=str(tmp_path / "cache"))
    cfg_e = SpeedConfig(**base, compile="none")
    step_e = FastStep(eager, build_optimizer(eager, lr=1e-3), cfg_e, "cpu")
    step_c = FastStep(compiled, build_optimizer(compiled, lr=1e-3), cfg_c, "cpu")
    assert len(step_c.compiled_regions) == 2 and step_e.compiled_regions == []
    for _ in range(2):
        torch.testing.assert_close(step_c(batch), step_e(batch), rtol=1e-4, atol=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert any((tmp_path / "cache").iterdir())  # inductor wrote its cache where it was told


def test_graph_warm_up_restores_the_persistent_buffers_only(text_dir, vision_dir):
    """BatchNorm statistics are restored after the capture's warm-up; a frozen-visual feature table (a
    non-persistent buffer of possibly several GB) is never copied."""
    from camim.speed.graphs import _state_buffers

    model, _ = _model_and_batch(text_dir, vision_dir, "tmr", {"cam": "none", "mi": False})
    model.resnet.attach_features("tokens", [torch.zeros(5, 4, model.resnet.out_channels)])
    ids = {id(b) for b in _state_buffers(model)}
    assert id(model.resnet.features_0) not in ids
    running = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert running and all(id(r) in ids for r in running)

"""What CPU can check of the GPU speed path: no graph breaks, compiled = eager, regional compilation, and the
step that owns its backward (the CUDA-graph path's contract) training exactly like the plain step. The tests
marked ``gpu`` check the same on CUDA: graph replay and compiled code against the eager step (they are
skipped without a CUDA device; ``pytest -m gpu`` runs them alone)."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.lockstep import assert_same_parameters, record_gradients, take_gradients
from tests.models.conftest import LABELS, frozen_visual_batch, make_examples, tiny_config

from camim.errors import CamimError
from camim.models import build_model
from camim.optim import build_optimizer
from camim.speed.config import SpeedConfig
from camim.speed.fast import FastStep, apply_fast_mode, compile_cache_dir, compile_regions
from camim.speed.graphs import ForwardBackward, GraphedForwardBackward, batch_signature

FP32 = {"fast": True, "bf16": False, "fused_optimizer": True, "channels_last": False}  # the fast step, fp32

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


def test_cuda_graphs_are_chosen_on_cuda_unless_crops_are_skipped(monkeypatch):
    """What ``resolved("cuda")`` decides, checked without a GPU by making CUDA look available (the config
    only asks ``torch.cuda.is_available()``; no tensor is moved)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_cuda = SpeedConfig(fast=True).resolved("cuda")
    assert (on_cuda.cuda_graphs, on_cuda.bf16, on_cuda.fused_optimizer, on_cuda.channels_last) == (True,) * 4
    # skipping crops makes shapes vary: graphs are never chosen automatically then, even on CUDA
    assert SpeedConfig(fast=True, skip_padded_crops=True).resolved("cuda").cuda_graphs is False
    assert SpeedConfig(fast=True).resolved("cpu").cuda_graphs is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert SpeedConfig(fast=True).resolved("cuda").cuda_graphs is False  # asked for CUDA, none there


def test_cuda_graphs_refuse_cpu(text_dir, vision_dir):
    model, _ = _model_and_batch(text_dir, vision_dir, "bert", {})
    with pytest.raises(CamimError, match="CUDA graphs need a CUDA device"):
        GraphedForwardBackward(model, model, "cpu")


def test_batch_signature_names_the_tensor_fields(text_dir, vision_dir):
    _, batch = _model_and_batch(text_dir, vision_dir, "bert", {})
    sig = dict((name, (shape, dtype)) for name, shape, dtype in batch_signature(batch))
    assert sig["input_ids"] == (tuple(batch.input_ids.shape), batch.input_ids.dtype)
    assert "image" not in sig  # None fields are not part of the signature


def test_step_that_owns_backward_updates_like_the_plain_step(text_dir, vision_dir, deterministic):
    """The CUDA-graph path's contract, checked eagerly: forward_backward leaves this step's gradients in
    param.grad (replacing, never accumulating) and the optimiser then makes the plain step's update. Compared
    step by step (tests/lockstep.py): the gradients, then the update from equal gradients."""
    model, batch = _model_and_batch(text_dir, vision_dir, "tmr", {"cam": "both", "mi": True})
    ref = copy.deepcopy(model)
    cfg = SpeedConfig(fast=True, bf16=False, fused_optimizer=True, channels_last=False, compile="none")
    fast = apply_fast_mode(copy.deepcopy(model), cfg)
    opt_ref = build_optimizer(ref, lr=1e-3, multi_tensor=False)
    opt_fast = build_optimizer(fast, lr=1e-3, multi_tensor=True)
    take_gradients(opt_ref, ref, record_gradients(opt_fast, fast))
    step = ForwardBackward(fast, fast)
    for _ in range(2):  # the second step must not accumulate onto the first one's gradients
        out = step(batch)
        assert not out.loss.requires_grad
        opt_fast.step()
        opt_ref.zero_grad(set_to_none=True)
        ref_loss = ref(batch).loss
        ref_loss.backward()
        opt_ref.step()
        torch.testing.assert_close(out.loss, ref_loss.detach(), rtol=1e-5, atol=1e-6)
    assert_same_parameters(ref, fast)
    assert step.stats.eager_steps == 2


def test_fast_step_with_regional_compile_trains_like_eager(text_dir, vision_dir, tmp_path, deterministic):
    """Each step's gradients of the compiled blocks equal the eager ones, and so does the update from them
    (tests/lockstep.py: the eager step's optimiser is handed the compiled step's gradients)."""
    torch._dynamo.reset()
    model, batch = _model_and_batch(text_dir, vision_dir, "bert", {})
    eager, compiled = copy.deepcopy(model), copy.deepcopy(model)
    base = {"fast": True, "bf16": False, "fused_optimizer": True, "channels_last": False}
    cfg_c = SpeedConfig(**base, compile="regional", compile_cache_dir=str(tmp_path / "cache"))
    cfg_e = SpeedConfig(**base, compile="none")
    step_e = FastStep(eager, build_optimizer(eager, lr=1e-3), cfg_e, "cpu")
    step_c = FastStep(compiled, build_optimizer(compiled, lr=1e-3), cfg_c, "cpu")
    assert len(step_c.compiled_regions) == 2 and step_e.compiled_regions == []
    take_gradients(step_e.optimizer, eager, record_gradients(step_c.optimizer, compiled))
    for _ in range(2):  # the compiled step first: the eager one takes its gradients
        torch.testing.assert_close(step_c(batch), step_e(batch), rtol=1e-4, atol=1e-5)
    assert_same_parameters(eager, compiled)
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


# ------------------------------------------------------------------------------------------ on CUDA only


def _fast_steps(model, **switches) -> tuple[FastStep, FastStep]:
    """An eager fp32 fast step and one with ``switches``, each on its own copy of ``model`` on CUDA (the
    other switches resolved for CUDA alike)."""
    steps = []
    for cfg in (SpeedConfig(**FP32, compile="none", cuda_graphs=False), SpeedConfig(**FP32, **switches)):
        copy_ = apply_fast_mode(copy.deepcopy(model), cfg, "cuda")
        steps.append(FastStep(copy_, build_optimizer(copy_, lr=1e-3), cfg, "cuda"))
    return steps[0], steps[1]


@pytest.mark.gpu
def test_cuda_graph_replay_trains_like_the_eager_step(text_dir, vision_dir):
    """Replayed steps give the eager step's losses, gradients and updates (tests/lockstep.py): on a new batch
    of the same shapes (the static inputs are refilled), and on a smaller batch (a graph of its own,
    param.grad pointed at its buffers). Eval mode: no dropout, whose masks a replay draws at other RNG
    offsets than the eager step."""
    model, batch_a = _model_and_batch(text_dir, vision_dir, "tmr", {"cam": "both", "mi": True})
    batch_b = model.processor(make_examples(4, seed=1))
    batch_c = model.processor(make_examples(3, seed=2))
    assert batch_signature(batch_b) == batch_signature(batch_a) != batch_signature(batch_c)
    eager, graphed = _fast_steps(model, compile="none", cuda_graphs=True)
    assert isinstance(graphed.forward_backward, GraphedForwardBackward)
    take_gradients(eager.optimizer, eager.model, record_gradients(graphed.optimizer, graphed.model))
    for batch in (
        batch_a,
        batch_b,
        batch_a,
        batch_c,
    ):  # the graphed step first: the eager one takes its grads
        torch.testing.assert_close(graphed(batch), eager(batch), rtol=1e-4, atol=1e-6)
    assert_same_parameters(eager.model, graphed.model)
    stats = graphed.forward_backward.stats
    assert (stats.captures, stats.replays, stats.eager_steps) == (2, 4, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("name,extra", [VARIANTS[0], VARIANTS[2], VARIANTS[5]], ids=lambda v: str(v))
def test_compiled_logits_equal_eager_on_cuda(text_dir, vision_dir, name, extra):
    torch._dynamo.reset()
    model, batch = _model_and_batch(text_dir, vision_dir, name, extra)
    model, batch = model.to("cuda"), batch.to("cuda")
    with torch.no_grad():
        ref = model(batch)
        compiled = torch.compile(model, backend="inductor", dynamic=False)(batch)
    torch.testing.assert_close(compiled.logits, ref.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.loss, ref.loss, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["regional", "default"])
def test_compiled_training_step_equals_eager_on_cuda(text_dir, vision_dir, tmp_path, monkeypatch, mode):
    """Forward, loss and backward through the compiled model give the eager losses and gradients (compared
    before any optimiser step: AdamW's first update is about lr * sign(g), which would magnify rounding in a
    near-zero gradient into a visible parameter change)."""
    torch._dynamo.reset()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))  # restored after the test
    model, batch = _model_and_batch(text_dir, vision_dir, "tmr", {"cam": "both", "mi": True})
    # cuda_graphs stated: left automatic it would resolve on, and compile inside graphs is refused
    eager, compiled = _fast_steps(
        model, compile=mode, cuda_graphs=False, compile_cache_dir=str(tmp_path / "cache")
    )
    assert compiled.cfg.compile == mode
    assert (len(compiled.compiled_regions) == 5) == (mode == "regional")
    for seed in (0, 1):  # the second call runs the compiled code again (no recompile for equal shapes)
        batch = model.processor(make_examples(4, seed=seed))
        ref, out = (step.forward_backward(step.prepare(batch)) for step in (eager, compiled))
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)
        for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)

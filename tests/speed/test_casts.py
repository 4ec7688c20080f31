"""speed.foreach_casts: autocast's weight casts made in multi-tensor copies compute exactly what autocast
(with its cache on) computes, without a cast per weight."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from tests.models.conftest import tiny_config
from tests.speed.conftest import dataset
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from camim.errors import CamimError
from camim.models import build_model
from camim.speed.casts import WeightCasts
from camim.speed.config import SpeedConfig
from camim.speed.fast import FastStep, apply_fast_mode

BF16_CPU = SpeedConfig(fast=True, bf16=True, channels_last=True, fused_optimizer=True, compile="none")


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


class Toy(nn.Module):
    """A Linear used twice (like TMR's text encoder on text and phrases), one never called, one called but not
    part of the loss (like an unused pooler), one frozen, and modules autocast does not cast (LayerNorm,
    Embedding)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.shared = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.unused = nn.Linear(8, 8)
        self.aside = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        h = self.shared(x) + self.shared(self.norm(x))
        self.aside(h)  # runs, but nothing of it reaches the loss
        return self.out(torch.tanh(self.frozen(h))).float().pow(2).mean()


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


def _recorded(toy: type[nn.Module]) -> tuple[nn.Module, torch.Tensor, nn.Module, WeightCasts]:
    """A toy model, its input, a copy of it whose WeightCasts has recorded (one call) and that WeightCasts."""
    torch.manual_seed(0)
    ref, ids = toy(), torch.randint(0, 10, (4, 5))
    got = copy.deepcopy(ref)
    casts = WeightCasts(got, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        casts(ids).backward()  # the first call records which weights autocast casts
    for p in got.parameters():
        p.grad = None
    return ref, ids, got, casts


def _assert_same_gradients(ref: nn.Module, got: nn.Module) -> dict:
    want, have = _grads(ref), _grads(got)
    for name in want:
        if want[name] is None:
            assert have[name] is None, name
        else:
            assert have[name].dtype == want[name].dtype and torch.equal(have[name], want[name]), name
    return have


def test_toy_model_equals_autocast_with_its_cache_bit_for_bit():
    ref, ids, got, casts = _recorded(Toy)
    assert casts.names == ["shared.weight", "shared.bias", "aside.weight", "aside.bias", "frozen.weight",
                           "frozen.bias", "out.weight"]  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's cache is on by default
        expected = ref(ids)
        loss = casts(ids)
    expected.backward()
    loss.backward()
    assert casts.calls == 1 and torch.equal(loss, expected)
    have = _assert_same_gradients(ref, got)
    # untouched, so AdamW neither updates nor decays them: never called, called off the loss, frozen
    assert have["unused.weight"] is None and have["aside.weight"] is None and have["frozen.weight"] is None
    assert have["shared.weight"].abs().sum() > 0


def test_toy_model_casts_no_weight_one_at_a_time():
    ref, ids, _, casts = _recorded(Toy)
    counts = {}
    for key, call in (("autocast", lambda: ref(ids)), ("foreach", lambda: casts(ids))):
        with OpCounter() as c:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = call()
            loss.backward()
        counts[key] = c.ops
    # autocast (cache on): each of the 3 trainable weights of the loss cast once forward and once backward,
    # aside's 2 and the 2 frozen ones once forward; activations are cast the same way in both
    n_backward, n_forward = 3, 3 + 2 + 2
    assert counts["autocast"]["_to_copy"] - counts["foreach"]["_to_copy"] == n_forward + n_backward
    assert counts["autocast"]["_foreach_copy_"] == 0
    assert counts["foreach"]["_foreach_copy_"] == 3  # trainable forward, frozen forward, gradients back
    # the fp32 gradients are kept as they come, not copied
    assert counts["foreach"]["clone"] == counts["foreach"]["copy_"] == 0


class Tied(nn.Module):
    """An embedding whose weight is also the output layer's (it must stay fp32 for the embedding), and one
    weight shared by two Linears; an fp64 Linear, which autocast leaves alone."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.dec = nn.Linear(8, 10, bias=False)
        self.dec.weight = self.emb.weight
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.wide = nn.Linear(8, 8).double()

    def forward(self, ids):
        h = self.b(self.a(self.emb(ids)))
        h = h + self.wide(h.double()).float()
        return self.dec(h).float().pow(2).mean()


def test_tied_shared_and_fp64_weights_are_handled_as_autocast_handles_them():
    ref, ids, got, casts = _recorded(Tied)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, loss = ref(ids), casts(ids)  # a second call with the copies
    # the shared weight once under its first name; the tied embedding weight and the fp64 ones left to autocast
    assert casts.names == ["a.weight", "a.bias", "b.bias"] and casts.calls == 1
    expected.backward()
    loss.backward()
    assert torch.equal(loss, expected)
    have = _assert_same_gradients(ref, got)
    assert all(g is not None for g in have.values())


@pytest.fixture(scope="module")
def models_and_batch(world, text_dir, vision_dir):
    full = dataset(world)
    out = {}
    for name in ("tmr", "hvpnet"):
        torch.manual_seed(0)
        size = 64 if name == "hvpnet" else 32  # HVPNeT pools every stage map to 2x2
        cfg = tiny_config(text_dir, vision_dir, name=name, cam="both", mi=True, image_size=size)
        model = build_model(cfg, list(full.labels.names))
        out[name] = (model, model.processor([full[i] for i in range(4)]))
    return out


@pytest.mark.parametrize("name", ["tmr", "hvpnet"])
def test_fast_step_with_foreach_casts_equals_autocast_bit_for_bit(models_and_batch, name):
    """The real models, fine-tuned backbone included (its convolutions are cast too), dropout on: loss and
    every gradient equal the eager bf16 step's bit for bit."""
    plain, batch = models_and_batch[name]
    steps, results = {}, {}
    for key, on in (("autocast", False), ("foreach", True)):
        model = apply_fast_mode(copy.deepcopy(plain), BF16_CPU).train()
        step = FastStep(model, None, SpeedConfig(**{**BF16_CPU.__dict__, "foreach_casts": on}), "cpu")
        assert (step.weight_casts is not None) == on
        for seed in (1, 2):  # the first call records what autocast casts; the second uses the copies
            torch.manual_seed(seed)
            out = step.forward_backward(batch)
        results[key] = (out.loss, _grads(model))
        steps[key] = step
    names = steps["foreach"].weight_casts.names
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert any(n.startswith("resnet.") and n.endswith(".weight") for n in names)  # convolutions
    assert not any("LayerNorm" in n or "embeddings" in n or ".normalization." in n for n in names)
    assert torch.equal(results["foreach"][0], results["autocast"][0])
    want, have = results["autocast"][1], results["foreach"][1]
    assert sum(g is not None for g in want.values()) > 50
    for n in want:
        assert (want[n] is None) == (have[n] is None), n
        if want[n] is not None:
            assert torch.equal(have[n], want[n]), n


def test_foreach_casts_are_off_under_ddp(models_and_batch):
    """Under DDP every gradient would come out at the end of backward (no all-reduce overlapping it)."""
    from camim.speed.training import TrainingSpeed

    plain, _ = models_and_batch["tmr"]
    cfg = SpeedConfig(fast=True, bf16=True, foreach_casts=True)
    one = TrainingSpeed(cfg, copy.deepcopy(plain), torch.device("cpu"))
    two = TrainingSpeed(cfg, copy.deepcopy(plain), torch.device("cpu"), world_size=2)
    assert one.step.weight_casts is not None and not one.notes
    assert two.step.weight_casts is None and two.step.cfg.bf16
    assert two.notes == [next(n for n in two.notes if n.startswith("speed.foreach_casts is off: DDP"))]


def test_foreach_casts_switch():
    assert SpeedConfig.released().foreach_casts is False
    cpu = SpeedConfig(fast=True).resolved("cpu")
    assert cpu.foreach_casts is False  # auto: CUDA only (and only with bf16)
    assert SpeedConfig(fast=True, bf16=False, foreach_casts=True).resolved("cpu").foreach_casts is False
    assert SpeedConfig(fast=True, bf16=True, foreach_casts=True).resolved("cpu").foreach_casts is True
    with pytest.raises(CamimError, match="foreach_casts"):
        SpeedConfig(fast=True, foreach_casts=True, compile="regional")
    with pytest.raises(CamimError, match="need speed.fast"):
        SpeedConfig(foreach_casts=True)

import math

import pytest
import torch
from torch import nn

from camim.optim import (
    ForeachReleasedAdamW,
    ReleasedAdamW,
    build_optimizer,
    build_scheduler,
    parameter_groups,
    warmup_steps_for,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(3, 3)
        self.LayerNorm = nn.LayerNorm(3)
        self.norm2 = nn.LayerNorm(3)  # named differently: still no decay
        self.bn = nn.BatchNorm1d(3)  # BN weight IS decayed (released), its bias is not
        self.frozen = nn.Linear(3, 1)
        self.frozen.weight.requires_grad_(False)


def test_parameter_groups_no_decay_on_bias_and_layernorm():
    m = Tiny()
    groups = parameter_groups(m, 0.01)
    ids = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert ids[id(m.dense.weight)] == 0.01
    assert ids[id(m.bn.weight)] == 0.01
    for p in (m.dense.bias, m.LayerNorm.weight, m.LayerNorm.bias, m.norm2.weight, m.bn.bias, m.frozen.bias):
        assert ids[id(p)] == 0.0
    assert id(m.frozen.weight) not in ids


def test_released_adamw_first_step_without_bias_correction():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = ReleasedAdamW([p], lr=0.1, betas=(0.9, 0.999), eps=0.0, correct_bias=False)
    p.grad = torch.tensor([0.5, -3.0])
    opt.step()
    # m = 0.1 g, v = 0.001 g^2 -> update = lr * 0.1 / sqrt(0.001) * sign(g)
    step = 0.1 * 0.1 / math.sqrt(0.001)
    assert p.detach().tolist() == pytest.approx([1.0 - step, -2.0 + step])


def test_released_adamw_with_bias_correction_matches_torch_adamw_without_decay():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5))
    b = nn.Parameter(a.detach().clone())
    o1 = ReleasedAdamW([a], lr=0.01, eps=1e-12, correct_bias=True)
    o2 = torch.optim.AdamW([b], lr=0.01, eps=1e-12, weight_decay=0.0)
    for _ in range(5):
        g = torch.randn(5)
        a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_released_adamw_decoupled_weight_decay_after_update():
    p = nn.Parameter(torch.tensor([2.0]))
    opt = ReleasedAdamW([p], lr=0.1, eps=0.0, weight_decay=0.5, correct_bias=True)
    p.grad = torch.tensor([1.0])
    opt.step()
    # Adam step of exactly lr (bias-corrected, unit gradient), then p -= lr * wd * p
    assert p.item() == pytest.approx((2.0 - 0.1) * (1 - 0.1 * 0.5))


def test_build_optimizer_switch():
    m = Tiny()
    assert isinstance(build_optimizer(m, 1e-3, adam_bias_correction=False), ReleasedAdamW)
    assert isinstance(build_optimizer(m, 1e-3, adam_bias_correction=True), torch.optim.AdamW)


def test_warmup_then_linear_decay():
    assert warmup_steps_for(1000, 300, None) == 300
    assert warmup_steps_for(1000, None, 0.1) == 100
    with pytest.raises(ValueError):
        warmup_steps_for(1000, 300, 0.1)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "foreach"])
def test_both_multi_tensor_kernels_make_the_released_update(fused):
    """The fused kernel is handed step 1e9 (bias corrections exactly 1) and decays after the update; the
    foreach kernel is the released update op for op. Both equal the per-parameter ReleasedAdamW."""
    torch.manual_seed(0)
    params = [torch.randn(7, 5), torch.randn(5), torch.randn(3, 2, 2)]
    a = [p.clone().requires_grad_() for p in params]
    b = [p.clone().requires_grad_() for p in params]
    opt_a = ReleasedAdamW([{"params": a, "weight_decay": 0.01}], lr=1e-2, eps=1e-6, correct_bias=False)
    opt_b = ForeachReleasedAdamW([{"params": b, "weight_decay": 0.01}], lr=1e-2, eps=1e-6, correct_bias=False,
                                 fused=fused)  # fmt: skip
    for step in range(4):
        grads = [torch.randn_like(p) * (step + 1) for p in params]
        for p, q, g in zip(a, b, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert not any(torch.equal(p.detach(), p0) for p, p0 in zip(a, params, strict=True))
    with pytest.raises(ValueError, match="correct_bias=False"):
        ForeachReleasedAdamW(b, lr=1e-2, correct_bias=True)

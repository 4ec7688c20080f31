"""Optimiser and learning-rate schedule of the paper (§4.2) and the released trainers (reference §2, §7.7).

- AdamW, weight decay 0.01 on every parameter except biases and LayerNorm weights (no-decay by name, as the
  released code: names containing ``bias``, ``LayerNorm.bias`` or ``LayerNorm.weight``; parameters of any
  ``nn.LayerNorm`` module are also kept out of decay, which matters only for encoders that name them
  differently). BatchNorm weights *are* decayed, as released.
- ``adam_bias_correction=False`` reproduces ``transformers.AdamW(correct_bias=False)`` of the released TMR /
  CAMIM trainer (that class was removed in transformers 5, so :class:`ReleasedAdamW` ports its update rule);
  ``True`` is the clean reading and uses ``torch.optim.AdamW``.
- Linear warmup then linear decay to 0 (``transformers.get_linear_schedule_with_warmup``); warmup is either a
  ratio of the total steps (paper: 10%) or a fixed number of steps (released: 300).
- The released HVPNeT trainer (reference §5.1) is reproduced by three group options: ``no_decay_split=False``
  (weight decay on every parameter, biases and LayerNorm included: its two groups ``bert`` and
  ``encoder_conv``/``gates`` share one lr and one weight decay, so they act as one group) and ``exclude``
  (parameters left out of the optimiser: its classifier Linear and its ResNet, see :func:`left_out`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

NO_DECAY_NAMES = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def left_out(model: nn.Module, train_classifier: bool = True, train_vision_backbone: bool = True) -> list:
    """The parameters a run keeps out of its optimiser (released HVPNeT: the classifier Linear and the ResNet).

    The classifier Linear is ``model.output_layer()`` (the layer giving the logits); the vision backbone is
    ``model.resnet``. Both stay at their initial values; BatchNorm statistics still update in train mode."""
    out = []
    if not train_classifier:
        out += list(model.output_layer().parameters())
    backbone = getattr(model, "resnet", None)
    if not train_vision_backbone and backbone is not None:
        out += list(backbone.parameters())
    return out


def parameter_groups(
    model: nn.Module, weight_decay: float, no_decay_split: bool = True, exclude: Iterable = ()
) -> list[dict]:
    """Two AdamW groups: decayed parameters and (biases, LayerNorm) with weight decay 0.

    Only parameters with ``requires_grad`` and not in ``exclude`` are included. ``no_decay_split=False``
    (released HVPNeT) puts every parameter in one group with ``weight_decay``.
    """
    layer_norm_params = {
        id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)
    }
    skip = {id(p) for p in exclude}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in skip:
            continue
        if no_decay_split and (any(nd in name for nd in NO_DECAY_NAMES) or id(p) in layer_norm_params):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class ReleasedAdamW(torch.optim.Optimizer):
    """AdamW as in ``transformers.AdamW`` 4.x (used by the released TMR/CAMIM trainer).

    With ``correct_bias=False`` (the released setting) the first-step update is ``lr * m / (sqrt(v) + eps)``
    without Adam's bias correction, i.e. about ``lr * sqrt(1 - beta2) / (1 - beta1) ≈ 3.16 lr`` per unit-sign
    gradient on step 1. Decoupled weight decay is applied after the Adam step: ``p -= lr * wd * p``.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
    ):
        if lr < 0.0 or eps < 0.0 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid AdamW settings: lr={lr}, eps={eps}, betas={betas}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "correct_bias": correct_bias,
        }
        super().__init__(params, defaults)

    def _advance(self, p: torch.Tensor, group: dict) -> tuple[dict, float]:
        """Counts one step for ``p`` (creating its moments on the first) -> (its state, this step's size)."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step_size = group["lr"]
        if group["correct_bias"]:
            beta1, beta2 = group["betas"]
            step_size = step_size * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
        return state, step_size

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = _run_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("ReleasedAdamW does not support sparse gradients")
                state, step_size = self._advance(p, group)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
        return loss


def warmup_steps_for(
    total_steps: int, warmup_steps: int | None, warmup_ratio: float | None, unrounded: bool = False
) -> float:
    """Number of warmup steps: a fixed count (released: 300) or ``ratio * total`` (paper: 10%), rounded down;
    ``unrounded=True`` keeps ``ratio * total`` as a float, as the released HVPNeT trainer passes it."""
    if warmup_steps is not None and warmup_ratio is not None:
        raise ValueError("set either warmup_steps or warmup_ratio, not both")
    if warmup_steps is not None:
        return int(warmup_steps)
    if warmup_ratio is not None:
        return warmup_ratio * total_steps if unrounded else int(warmup_ratio * total_steps)
    return 0


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: float):
    """Linear warmup from 0 to the peak LR over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )


class ForeachReleasedAdamW(ReleasedAdamW):
    """:class:`ReleasedAdamW` (``transformers.AdamW`` 4.x, no bias correction) with multi-tensor updates.

    Same update rule in a handful of kernel launches per group instead of ~10 per parameter. Two kernels:

    - ``fused=True`` (the default): ``torch._fused_adamw_``, one pass over parameters, gradients and moments
      per group (CUDA and CPU). It always bias-corrects with its step tensors, so it is handed a step count
      of 1e9, where ``1 - beta ** step`` is exactly 1 in fp32 and the update is the released
      ``lr * m / (sqrt(v) + eps)``; weight decay goes to zero there and is applied after the update, as
      released (``p -= lr * wd * p`` on the updated ``p``), with one ``_foreach_mul_``;
    - ``fused=False``: ``torch._foreach_*``, the released update op for op.

    Both equal :class:`ReleasedAdamW` to rounding (tests/training/test_optim.py, tests/speed)."""

    _NO_BIAS_CORRECTION_STEP = 1e9  # 1 - 0.9 ** 1e9 == 1 - 0.999 ** 1e9 == 1.0 exactly

    def __init__(self, params: Iterable, *args, fused: bool = True, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.fused = fused
        if any(g["correct_bias"] for g in self.param_groups):
            raise ValueError(
                "ForeachReleasedAdamW ports the released correct_bias=False; use torch.optim.AdamW"
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = _run_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("ForeachReleasedAdamW does not support sparse gradients")
            exp_avgs, exp_avg_sqs = [], []
            for p in params:
                state, _ = self._advance(p, group)  # the same state as ReleasedAdamW
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            lr, wd = group["lr"], group["weight_decay"]
            if self.fused and len({(p.device, p.dtype) for p in params}) == 1:
                steps = self._fused_steps(params)
                torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1,
                                    beta2=beta2, weight_decay=0.0, eps=group["eps"], amsgrad=False,
                                    maximize=False)  # fmt: skip
                if wd > 0.0:
                    torch._foreach_mul_(params, 1.0 - lr * wd)
                continue
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denoms, group["eps"])
            torch._foreach_addcdiv_(params, exp_avgs, denoms, -lr)
            if wd > 0.0:
                torch._foreach_add_(params, params, alpha=-lr * wd)
        return loss

    def _fused_steps(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """One step tensor per parameter for the fused kernel, fixed at 1e9 (no bias correction)."""
        key = (params[0].device, len(params))
        cache = self.__dict__.setdefault("_steps_cache", {})
        if key not in cache:
            one = torch.tensor(self._NO_BIAS_CORRECTION_STEP, dtype=torch.float32, device=params[0].device)
            cache[key] = [one] * len(params)
        return cache[key]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    adam_eps: float = 1e-6,
    adam_bias_correction: bool = False,
    multi_tensor: bool = True,
    betas: tuple[float, float] = (0.9, 0.999),
    no_decay_split: bool = True,
    exclude: Iterable = (),
) -> torch.optim.Optimizer:
    """AdamW over :func:`parameter_groups` (the trainer's groups; ``no_decay_split``/``exclude`` as configured).

    Released quirk (no bias correction): :class:`ForeachReleasedAdamW` (its fused kernel) when
    ``multi_tensor`` else the per-parameter :class:`ReleasedAdamW` -- the same update, to rounding; the
    per-parameter loop launches ~10 kernels per parameter, about half of the released step's time on a GPU
    (docs/speed.md). With bias correction: ``torch.optim.AdamW`` (``fused=True`` on CUDA, else foreach)."""
    groups = parameter_groups(model, weight_decay, no_decay_split, exclude)
    if not adam_bias_correction:
        cls = ForeachReleasedAdamW if multi_tensor else ReleasedAdamW
        return cls(groups, lr=lr, betas=betas, eps=adam_eps, weight_decay=weight_decay, correct_bias=False)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    kwargs = {"fused": True} if multi_tensor and on_cuda else {"foreach": multi_tensor}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=adam_eps, **kwargs)


def _run_closure(closure: Callable[[], float] | None):
    """``torch.optim``'s closure protocol: re-evaluate the loss with gradients on (inside ``step``'s no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()

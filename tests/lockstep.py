"""Two code paths trained side by side, compared where the comparison is deterministic.

Parameters after AdamW steps do not compare fairly across two code paths: where a gradient is about as small
as its rounding error, the update ``lr * m / (sqrt(v) + eps)`` turns a last-bit difference of the gradient
into a parameter difference up to ``0.1 * lr / eps`` times larger (the released first step; 100 at lr 1e-3,
eps 1e-6). A test comparing parameters after two steps at rtol 1e-4 failed in 3 runs of 4 that way (issue 36).

So each step's gradients, computed by both paths on equal parameters, are compared at a float tolerance and
then *handed over*: the reference path's optimiser updates from the tested path's gradients. Both optimisers
then update from equal inputs, and the parameters stay equal up to the optimisers' own rounding, which is
compared tightly. A step that computes other gradients (or accumulates them) fails the first comparison, an
optimiser that updates otherwise fails the second. Run these under the ``deterministic`` fixture.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

GRADIENTS = {"rtol": 1e-4, "atol": 1e-5}  # two arithmetics of one function (SDPA, compiled code, graphs)
PARAMETERS = {"rtol": 4e-6, "atol": 4e-8}  # two AdamW kernels on equal inputs: at most ~30 ulps apart


def _named(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The parameters ``optimizer`` updates that have a gradient now, named as in ``model``."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return [(names[id(p)], p) for p in params]


def gradients(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of each gradient ``optimizer`` would use now, by name."""
    return {name: p.grad.detach().clone() for name, p in _named(optimizer, model)}


def hand_over(
    optimizer: torch.optim.Optimizer, model: nn.Module, want: dict[str, torch.Tensor], step: int
) -> None:
    """The gradients of ``model`` must equal ``want`` (the tested path's at this step, same parameters); then
    they are replaced by them, so that ``optimizer`` updates from the tested path's gradients."""
    have = dict(_named(optimizer, model))
    assert have.keys() == want.keys(), f"step {step}: gradients of {sorted(have.keys() ^ want.keys())}"
    for name, p in have.items():
        msg = f"step {step}: gradient of {name}"
        torch.testing.assert_close(p.grad, want[name], **GRADIENTS, msg=lambda m, msg=msg: f"{msg}: {m}")
        p.grad.copy_(want[name])


def record_gradients(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """A list that gets, before every ``optimizer.step()``, the :func:`gradients` it will use."""
    steps: list[dict[str, torch.Tensor]] = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: steps.append(gradients(opt, model)))
    return steps


def take_gradients(
    optimizer: torch.optim.Optimizer, model: nn.Module, recorded: list[dict[str, torch.Tensor]]
) -> None:
    """Before every ``optimizer.step()``: :func:`hand_over` the ``recorded`` gradients of the same step (the
    tested path steps first)."""
    taken = []

    def hook(opt, args, kwargs):
        assert len(taken) < len(recorded), f"step {len(taken)}: the tested path made {len(recorded)} step(s)"
        hand_over(opt, model, recorded[len(taken)], len(taken))
        taken.append(True)

    optimizer.register_step_pre_hook(hook)


class Lockstep(L.Callback):
    """The same in a Lightning fit, whose optimiser runs the training step (a closure) inside ``step``: the
    gradients are recorded or handed over at ``on_before_optimizer_step``, before clipping. ``Lockstep()``
    records them in :attr:`steps`; ``Lockstep(recorded)`` takes the recorded ones (that fit runs second)."""

    def __init__(self, recorded: list[dict[str, torch.Tensor]] | None = None):
        self.recorded, self.steps = recorded, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = len(self.steps)
        if self.recorded is not None:
            assert step < len(self.recorded), f"step {step}: the tested fit made {len(self.recorded)} step(s)"
            hand_over(optimizer, pl_module.model, self.recorded[step], step)
        self.steps.append(gradients(optimizer, pl_module.model))


def assert_same_parameters(ref: nn.Module, got: nn.Module) -> None:
    """Parameters of two models whose optimisers updated from equal gradients (:func:`take_gradients`)."""
    for (name, p), q in zip(ref.named_parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(q, p, **PARAMETERS, msg=lambda m, name=name: f"{name}: {m}")


def assert_same_weights(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Two saved state dicts of fits in :class:`Lockstep`: the parameters of ``model`` compared as updates from
    equal gradients, the buffers (BatchNorm statistics) as two arithmetics of one forward."""
    params = {name for name, _ in model.named_parameters()}
    assert ref.keys() == got.keys()
    for name in ref:
        tol = PARAMETERS if name in params else GRADIENTS
        torch.testing.assert_close(got[name], ref[name], **tol, msg=lambda m, name=name: f"{name}: {m}")

"""The weight casts of a bf16 autocast forward, made in a few multi-tensor kernels instead of one per weight.

Under ``torch.autocast(bfloat16)`` every ``nn.Linear`` and convolution casts its fp32 weight and bias to bf16
when it runs, and backward casts each of their bf16 gradients back to fp32: two small kernels per weight and
step (four BERT calls of 12 layers hold ~300 such tensors). Inside a CUDA graph the autocast cache is off, so
a weight used twice (TMR's text encoder runs on the text and on the phrases) is cast twice.

:class:`WeightCasts` makes those copies up front, all of them in one ``torch._foreach_copy_`` (a few
multi-tensor launches on a GPU), runs the model on them with ``torch.func.functional_call`` (the module's own
parameters are untouched), and turns their gradients back into fp32 with one more ``torch._foreach_copy_``.
What is computed is exactly what autocast with its cache on computes (the eager ``speed.fast`` step): the
same bf16 values in every matmul and convolution (both round to nearest even), the gradients of a weight used
twice summed in bf16 and cast once, the same fp32 gradients. Tested bit for bit on CPU
(tests/speed/test_casts.py).

Which weights: the fp32 / fp16 ones of the ``nn.Linear`` / ``nn.Conv1d/2d/3d`` modules that ran under a bf16
autocast in the first forward (recorded with forward pre-hooks), so a module that never runs (a frozen
backbone whose features come from a table) is not cast. A module that runs later for the first time is cast by
autocast, as before. A weight that another kind of module holds too (an embedding tied to an output layer) is
left to autocast: that module must keep reading it in fp32. Trainable weights go through one autograd
function; frozen ones are copied without a graph.

Not under DDP (``camim.speed.training`` turns it off there): every gradient would come out at the end of
backward, so DDP could not overlap its all-reduce with backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CAST_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CASTABLE = (torch.float32, torch.float16)  # the weight dtypes autocast casts


class _CastWithGrad(torch.autograd.Function):
    """``dtype`` copies of ``params`` in one multi-tensor copy; their gradients back in another."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)  # unused copies get None (their parameter keeps .grad None)
        ctx.dtypes = [p.dtype for p in params]
        return tuple(foreach_cast(list(params), dtype))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        out: list[torch.Tensor | None] = [None] * len(grads)
        for dtype in set(ctx.dtypes):
            idx = [i for i, g in enumerate(grads) if g is not None and ctx.dtypes[i] == dtype]
            for i, g in zip(idx, foreach_cast([grads[i] for i in idx], dtype)):
                out[i] = g
        return (None, *out)


def foreach_cast(tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """``[t.to(dtype) for t in tensors]`` (same strides, same rounding) in one ``torch._foreach_copy_``: a few
    multi-tensor kernels on a GPU when the sources share a dtype, a copy per tensor otherwise."""
    if not tensors:
        return []
    out = [torch.empty_like(t, dtype=dtype) for t in tensors]
    torch._foreach_copy_(out, tensors)
    return out


class WeightCasts:
    """``casts(batch)``: ``model(batch)`` with the weights autocast casts made once, in multi-tensor copies
    (module docstring). Call it inside the ``torch.autocast(dtype)`` region."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.model, self.dtype = model, dtype
        self.names: list[str] | None = None  # parameter names, decided by the first call
        self.calls = 0

    def __call__(self, batch: Any) -> Any:
        if self.names is None:
            return self._record(batch)
        self.calls += 1
        params = dict(self.model.named_parameters())
        trainable = [n for n in self.names if params[n].requires_grad]
        frozen = [n for n in self.names if not params[n].requires_grad]
        copies = dict(zip(trainable, _CastWithGrad.apply(self.dtype, *(params[n] for n in trainable))))
        with torch.no_grad():
            copies.update(zip(frozen, foreach_cast([params[n] for n in frozen], self.dtype)))
        return torch.func.functional_call(self.model, copies, (batch,), strict=False)

    def _record(self, batch: Any) -> Any:
        """The first forward, plain autocast: note which weights autocast casts to ``dtype``."""
        seen: dict[int, None] = {}  # id(parameter), in the order the modules ran

        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            dev = x.device.type if x is not None else "cuda"
            if not (torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == self.dtype):
                return
            for p in module.parameters(recurse=False):
                if p.dtype in CASTABLE and p.dtype != self.dtype:  # autocast never casts fp64
                    seen[id(p)] = None

        handles = [
            m.register_forward_pre_hook(hook) for m in self.model.modules() if isinstance(m, CAST_MODULES)
        ]
        try:
            out = self.model(batch)
        finally:
            for h in handles:
                h.remove()
        held_elsewhere = {  # e.g. an embedding tied to an output layer: it reads the weight in fp32
            id(p)
            for m in self.model.modules()
            if not isinstance(m, CAST_MODULES)
            for p in m.parameters(recurse=False)
        }
        names = {id(p): n for n, p in self.model.named_parameters()}  # a shared weight under its first name
        self.names = [names[i] for i in seen if i in names and i not in held_elsewhere]
        return out

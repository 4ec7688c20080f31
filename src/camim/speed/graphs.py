"""CUDA graphs for the fixed-shape training step: forward, loss and backward replayed as one graph.

At batch 16 the released-shape step is bound by kernel launches and Python, not arithmetic (four BERT calls,
four ResNet calls, CAM, fusion: thousands of small kernels). :class:`GraphedForwardBackward` captures the
forward (under the step's autocast), the loss and ``loss.backward()`` once per batch signature (the set of
tensor fields with their shapes and dtypes) with ``torch.cuda.graph`` and replays it afterwards, so a step
costs one graph launch plus the optimiser's few multi-tensor kernels. The optimiser step itself stays outside
the graph (eager ``torch._foreach_*`` / fused AdamW), which keeps Lightning's loop, LR scheduler, gradient
clipping, step counting and checkpoints exactly as they are.

How it stays the same computation:

- static input buffers: each batch is copied into the graph's own tensors (``copy_``, same values);
- gradients: the graph is captured with ``.grad`` unset, so each replay *writes* fresh gradients into its
  static buffers (no accumulation) and ``param.grad`` points at them for the optimiser;
- warm-up: a capture needs a few eager iterations first (lazy cuBLAS/cuDNN initialisation, autograd's
  stream bookkeeping). They run on a side stream and their side effects are undone: gradients are dropped
  and every buffer (BatchNorm running statistics, ``num_batches_tracked``) is restored, so the first replay
  sees the same model state as an eager step would. Only the RNG stream (dropout masks) moves on;
- dropout inside the graph draws fresh masks on every replay (CUDA graphs advance the Philox offset).

What it needs: CUDA, fixed shapes (the released processor pads text, captions, phrases and crops to fixed
lengths), no host synchronisation in the forward (tests/speed check zero graph breaks, which rules out
``.item()`` and data-dependent Python branches), one process (with DDP the gradient all-reduce hooks run
inside backward; the step then stays eager). A batch with a new signature (e.g. the last, smaller batch of
an epoch) gets its own graph, up to ``max_graphs``; beyond that the step runs eagerly and the reason is
counted in :attr:`GraphedForwardBackward.stats`. A capture that fails stops the run with a one-line error
naming the batch shape and ``speed.cuda_graphs: false`` (a failed capture can leave CUDA's RNG in its
capture state, so continuing eagerly in the same process is not safe).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from camim.errors import CamimError
from camim.models.batch import MREBatch, MREOutput

Signature = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]
_OUTPUTS = ("logits", "loss", "ce_loss", "mi_loss")


def batch_signature(batch: MREBatch) -> Signature:
    """The tensor fields of ``batch`` with their shapes and dtypes (what a captured graph is specific to)."""
    out = []
    for f in fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor):
            out.append((f.name, tuple(v.shape), v.dtype))
    return tuple(out)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # static input buffers, filled before each replay
    outputs: dict[str, torch.Tensor | None]  # static logits / loss / ce_loss / mi_loss
    grads: list[torch.Tensor | None]  # the static gradient buffer of each trainable parameter


@dataclass
class GraphStats:
    captures: int = 0
    replays: int = 0
    eager_steps: int = 0
    capture_seconds: float = 0.0
    eager_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "captures": self.captures,
            "replays": self.replays,
            "eager_steps": self.eager_steps,
            "capture_seconds": round(self.capture_seconds, 3),
            "eager_reasons": dict(self.eager_reasons),
        }


class ForwardBackward:
    """``step(batch) -> MREOutput``: forward + loss + backward of ``model`` through ``forward``, eagerly; the
    gradients are left in ``param.grad`` (replacing any earlier ones) for the optimiser.

    This is the step the training module runs when the step owns its backward (``speed.cuda_graphs``); on
    CUDA :class:`GraphedForwardBackward` replays the same thing from a graph. Outputs are detached."""

    def __init__(self, model: nn.Module, forward: Callable[[MREBatch], MREOutput]):
        self.model, self.forward = model, forward
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.stats = GraphStats()

    def __call__(self, batch: MREBatch) -> MREOutput:
        return self._eager(batch, "eager step")

    def _eager(self, batch: MREBatch, reason: str) -> MREOutput:
        self.stats.eager_steps += 1
        self.stats.eager_reasons[reason] = self.stats.eager_reasons.get(reason, 0) + 1
        for p in self.params:
            p.grad = None
        out = self._body(batch)
        return MREOutput(**{k: _detach(getattr(out, k)) for k in _OUTPUTS})

    def _body(self, inputs: MREBatch) -> MREOutput:
        out = self.forward(inputs)
        if out.loss is None:
            raise CamimError("the batch has no labels; a training step needs them")
        out.loss.backward()
        return out


class GraphedForwardBackward(ForwardBackward):
    """:class:`ForwardBackward` replayed from a CUDA graph per batch signature (module docstring).

    The returned output holds *copies* of the graph's static tensors, so callers may keep them across steps."""

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[MREBatch], MREOutput],
        device: torch.device | str,
        warmup: int = 2,
        max_graphs: int = 4,
    ):
        super().__init__(model, forward)
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise CamimError("CUDA graphs need a CUDA device; use the eager step on CPU")
        self.warmup, self.max_graphs = warmup, max_graphs
        self.graphs: dict[Signature, _Captured] = {}
        self.current: Signature | None = None  # whose gradient buffers param.grad points at
        self.pool = None  # one memory pool shared by all graphs (they never run concurrently)

    def __call__(self, batch: MREBatch) -> MREOutput:
        sig = batch_signature(batch)
        captured = self.graphs.get(sig)
        if captured is None:
            if len(self.graphs) >= self.max_graphs:
                return self._eager(batch, "max_graphs reached")
            captured = self._capture(batch, sig)
        for name, buf in captured.inputs.items():
            buf.copy_(getattr(batch, name), non_blocking=True)
        captured.graph.replay()
        self.stats.replays += 1
        if self.current != sig:  # point param.grad at this graph's gradient buffers
            for p, g in zip(self.params, captured.grads):
                p.grad = g
            self.current = sig
        out = {k: (v.detach().clone() if v is not None else None) for k, v in captured.outputs.items()}
        return MREOutput(**out)

    def _eager(self, batch: MREBatch, reason: str) -> MREOutput:
        self.current = None
        return super()._eager(batch, reason)

    def _capture(self, batch: MREBatch, sig: Signature) -> _Captured:
        t0 = time.perf_counter()
        static = MREBatch(
            **{
                f.name: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
                for f in fields(batch)
                for v in [getattr(batch, f.name)]
            }
        )
        buffers = _state_buffers(self.model)
        saved = [b.detach().clone() for b in buffers]
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    for p in self.params:
                        p.grad = None
                    self._body(static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            with torch.no_grad():  # undo the warm-up's side effects (BN statistics, counters)
                for b, s in zip(buffers, saved):
                    b.copy_(s)
            for p in self.params:
                p.grad = None
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._body(static)
            if self.pool is None:
                self.pool = graph.pool()
        except Exception as exc:
            # A failed capture can leave CUDA's RNG in its capture state, so no eager step may follow in
            # this process: stop with what failed and the switch that avoids it.
            raise CamimError(
                f"CUDA graph capture failed for batch shape {dict((n, s) for n, s, _ in sig)}: "
                f"{type(exc).__name__}: {exc}; train with speed.cuda_graphs: false"
            ) from exc
        grads = [p.grad for p in self.params]
        captured = _Captured(
            graph,
            {name: getattr(static, name) for name, _, _ in sig},
            {k: getattr(out, k) for k in _OUTPUTS},
            grads,
        )
        self.graphs[sig] = captured
        self.current = sig
        self.stats.captures += 1
        self.stats.capture_seconds += time.perf_counter() - t0
        return captured


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.detach() if t is not None else None


def _state_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The persistent buffers a forward may change (BatchNorm statistics, counters). Non-persistent ones --
    a frozen-visual feature table of several GB, BERT's position ids -- are never written by a step, so the
    warm-up need not copy them."""
    out = []
    for module in model.modules():
        skip = getattr(module, "_non_persistent_buffers_set", set())
        out += [b for name, b in module.named_buffers(recurse=False) if name not in skip]
    return out

"""The fast training step: the same computation as the released step, arranged to run faster.

:class:`FastStepConfig` switches (``None`` = automatic: on for CUDA, off on CPU):

- ``bf16``: ``torch.autocast(bfloat16)`` around the forward (GPU; the released step is fp32);
- ``sdpa``: ``attn_implementation="sdpa"`` for the Hugging Face text encoders (the released BERT is eager);
- ``fused_optimizer``: the multi-tensor (``torch._foreach_*``) port of the released AdamW (no bias
  correction, same update to rounding), or ``torch.optim.AdamW(fused=True)`` with bias correction;
- ``channels_last``: channels-last weights and inputs for the vision backbone's convolutions;
- ``compile``: ``torch.compile`` of the model; ``"reduce-overhead"`` captures the fixed-shape step in CUDA
  graphs (the released step at batch 16 is launch-bound), ``"default"`` compiles without graphs,
  ``"none"`` runs eagerly; ``"auto"`` = reduce-overhead on CUDA (default when skipping crops), none on CPU;
- ``skip_padded_crops`` (off by default; documented fast mode): the released code runs the backbone on the
  all-zero images that pad each sample to ``max_objects`` crops. This mode runs it on the real images plus
  *one* all-zero image and gives every all-zero input that image's features. With BatchNorm in eval mode
  (frozen backbone, evaluation, prediction) the result equals the released path up to numerical noise. In
  train mode BatchNorm's batch statistics are taken over the real images + one zero image instead of over
  all crops including every pad, so the features (and training) differ slightly from the released run.

Results of the fp32 fast path equal the plain path's up to numerical noise (tests/speed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from camim.errors import CamimError
from camim.models.batch import MREBatch, MREOutput
from camim.models.encoders import VisionBackbone

COMPILE_MODES = ("auto", "none", "default", "reduce-overhead", "max-autotune")


@dataclass
class FastStepConfig:
    """Speed switches of the fast step (``None`` = on for CUDA only); see the module docstring."""

    bf16: bool | None = None
    sdpa: bool = True
    fused_optimizer: bool | None = None
    channels_last: bool | None = None
    compile: str = "auto"
    skip_padded_crops: bool = False

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise CamimError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")

    def resolved(self, device: torch.device | str) -> FastStepConfig:
        """The switches with every ``None`` / ``"auto"`` decided for ``device``."""
        cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
        auto = lambda v: cuda if v is None else bool(v)  # noqa: E731
        mode = self.compile
        if mode == "auto":
            mode = ("default" if self.skip_padded_crops else "reduce-overhead") if cuda else "none"
        return FastStepConfig(
            auto(self.bf16), self.sdpa, auto(self.fused_optimizer), auto(self.channels_last), mode,
            self.skip_padded_crops,
        )  # fmt: skip

    @classmethod
    def released(cls) -> FastStepConfig:
        """The released step: eager attention, fp32, per-parameter AdamW, no compile, all crops run."""
        return cls(bf16=False, sdpa=False, fused_optimizer=False, channels_last=False, compile="none")


class FastVisionBackbone(VisionBackbone):
    """``model.resnet`` with channels-last inputs and (optionally) all-zero images run once.

    Keeps the wrapped backbone's module as ``self.model`` so state-dict keys are unchanged."""

    def __init__(self, backbone: VisionBackbone, channels_last: bool, skip_zero_images: bool):
        nn.Module.__init__(self)
        self.model = backbone.model
        self.is_timm, self.config, self.channels = backbone.is_timm, backbone.config, list(backbone.channels)
        self.channels_last, self.skip_zero_images = channels_last, skip_zero_images
        self.zero_images_skipped = 0
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def stages(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        x = pixels.contiguous(memory_format=torch.channels_last) if self.channels_last else pixels
        if not self.skip_zero_images:
            return VisionBackbone.stages(self, x)
        zero = x.flatten(1).abs().amax(dim=1) == 0  # the released zero-padded crops (N,)
        n_zero = int(zero.sum())
        if n_zero <= 1:
            return VisionBackbone.stages(self, x)
        keep = (~zero).nonzero().squeeze(1)
        run = torch.cat([x[keep], x.new_zeros(1, *x.shape[1:])])
        if self.channels_last:
            run = run.contiguous(memory_format=torch.channels_last)
        gather = torch.full((x.shape[0],), keep.numel(), dtype=torch.long, device=x.device)
        gather[keep] = torch.arange(keep.numel(), device=x.device)
        self.zero_images_skipped += n_zero - 1
        return [fmap[gather] for fmap in VisionBackbone.stages(self, run)]


def set_attention(model: nn.Module, implementation: str) -> list[str]:
    """Set ``attn_implementation`` ("sdpa" / "eager") on every Hugging Face text encoder; returns their keys."""
    done = []
    for key, module in model.named_children():
        if hasattr(module, "set_attn_implementation") and not isinstance(module, VisionBackbone):
            module.set_attn_implementation(implementation)
            done.append(key)
    return done


def apply_fast_mode(model: nn.Module, cfg: FastStepConfig, device: torch.device | str = "cpu") -> nn.Module:
    """Move ``model`` to ``device`` and apply SDPA, channels-last and crop skipping in place; returns it.

    State-dict keys are unchanged (``save_pretrained`` / ``load_model`` work as before)."""
    cfg = cfg.resolved(device)
    model.to(device)
    set_attention(model, "sdpa" if cfg.sdpa else "eager")
    backbone = getattr(model, "resnet", None)
    if type(backbone) is VisionBackbone and (cfg.channels_last or cfg.skip_padded_crops):
        model.resnet = FastVisionBackbone(backbone, cfg.channels_last, cfg.skip_padded_crops)
    return model


class FastStep:
    """One optimisation step (forward, loss, backward, optimizer step) with the :class:`FastStepConfig`.

    ``model`` should have gone through :func:`apply_fast_mode`. ``forward(batch)`` alone (e.g. for
    evaluation) uses the same autocast and compiled module; ``on_device`` runs on each batch after the
    transfer (e.g. ``CachedCollate(processor, uint8=True).finish``)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        cfg: FastStepConfig,
        device: torch.device | str,
        on_device: Callable[[MREBatch], MREBatch] | None = None,
    ):
        self.device = torch.device(device)
        self.on_device = on_device  # e.g. CachedCollate(..., uint8=True).finish: pixels made on the GPU
        self.cfg = cfg.resolved(self.device)
        self.model, self.optimizer = model, optimizer
        self._forward: Callable[[MREBatch], MREOutput] = model
        if self.cfg.compile != "none":
            dynamic = None if self.cfg.skip_padded_crops else False  # fixed shapes unless crops are skipped
            self._forward = torch.compile(model, mode=self.cfg.compile, dynamic=dynamic)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.cfg.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def forward(self, batch: MREBatch) -> MREOutput:
        batch = batch.to(self.device)
        if self.on_device is not None:
            batch = self.on_device(batch)
        with self.autocast():
            return self._forward(batch)

    def __call__(self, batch: MREBatch) -> torch.Tensor:
        if self.optimizer is None:
            raise CamimError("FastStep was built without an optimizer; use forward() for inference")
        out = self.forward(batch)
        if out.loss is None:
            raise CamimError("the batch has no labels; a training step needs them")
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out.loss.detach()

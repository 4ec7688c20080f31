"""The fast training step: the same computation as the released step, arranged to run faster.

The switches live in :class:`camim.speed.config.SpeedConfig` (``None`` = automatic: on for CUDA only):

- ``bf16``: ``torch.autocast(bfloat16)`` around the forward (default on CUDA; on the CPU when set, docs/speed.md "bf16 on the CPU"; the released step is fp32);
- ``sdpa``: ``attn_implementation="sdpa"`` for the Hugging Face text encoders (the released BERT is eager),
  and ``F.scaled_dot_product_attention`` for CAM's and the fusion's single-head attentions;
- ``merge_encoder_calls``: TMR's caption encoder runs once over captions and text windows (2B x 40);
- ``foreach_casts``: with ``bf16``, the weights autocast casts are cast once per forward in multi-tensor
  copies and their gradients back in one more (:mod:`camim.speed.casts`; autocast's own result, fewer kernels);
- ``fused_optimizer``: the multi-tensor (``torch._foreach_*``) port of the released AdamW (no bias
  correction, same update to rounding), or ``torch.optim.AdamW(fused=True)`` with bias correction;
- ``channels_last``: channels-last weights and inputs for the vision backbone's convolutions;
- ``cuda_graphs``: forward + loss + backward replayed from one CUDA graph per batch shape
  (:mod:`camim.speed.graphs`; the released step at batch 16 is launch-bound);
- ``compile``: ``"regional"`` compiles each repeated block once (:func:`compile_regions`: the text
  encoders' layers and CAM's cross-attention block, shapes symbolic so each block type compiles once), with
  inductor's caches kept in ``compile_cache_dir`` across runs; ``"default"`` / ``"reduce-overhead"`` /
  ``"max-autotune"`` compile the whole model; ``"none"`` runs eagerly;
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
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from camim.errors import CamimError
from camim.models.batch import MREBatch, MREOutput
from camim.models.cross_attention import CrossAttentionLayer, SDPAttention
from camim.models.encoders import VisionBackbone
from camim.speed.casts import WeightCasts
from camim.speed.config import SpeedConfig
from camim.speed.graphs import ForwardBackward, GraphedForwardBackward


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


def apply_fast_mode(model: nn.Module, cfg: SpeedConfig, device: torch.device | str = "cpu") -> nn.Module:
    """Move ``model`` to ``device`` and apply SDPA (text encoders, CAM and fusion attentions), channels-last,
    merged encoder calls and crop skipping in place; returns it.

    State-dict keys are unchanged (``save_pretrained`` / ``load_model`` work as before)."""
    cfg = cfg.resolved(device)
    model.to(device)
    set_attention(model, "sdpa" if cfg.sdpa else "eager")
    for module in model.modules():  # CAM's cross-attention and the fusion attentions (camim.models)
        if isinstance(module, SDPAttention):
            module.sdpa_attention = bool(cfg.sdpa)
    if hasattr(model, "merge_encoder_calls"):  # TMR: captions and text windows through bert2 in one call
        model.merge_encoder_calls = bool(cfg.merge_encoder_calls)
    backbone = getattr(model, "resnet", None)
    # a backbone with a feature table attached (frozen-visual mode) runs on no pixel in a step: left as it is
    wrap = cfg.channels_last or cfg.skip_padded_crops
    if type(backbone) is VisionBackbone and backbone.feature_kind is None and wrap:
        model.resnet = FastVisionBackbone(backbone, cfg.channels_last, cfg.skip_padded_crops)
    return model


def compile_cache_dir(configured: str | None = None) -> Path:
    """Where inductor keeps its FX-graph, autograd and Triton caches across runs: ``configured``, else
    ``$TORCHINDUCTOR_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/camim/torch-compile``."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "camim" / "torch-compile"


def use_compile_cache(configured: str | None = None) -> Path:
    """Point inductor's on-disk caches (FX graph cache, AOT autograd cache, Triton kernels) at
    :func:`compile_cache_dir` so that a second run loads its compiled blocks instead of compiling them."""
    folder = compile_cache_dir(configured)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return folder


def compile_regions(model: nn.Module, dynamic: bool = True) -> list[str]:
    """PyTorch's regional compilation: ``torch.compile`` each repeated block of ``model`` in place, once per
    block type (``Module.compile``; parameters are graph inputs, so the 12 layers of a BERT share one compiled
    graph). Regions: every element of a Hugging Face encoder's ``layer`` list (BertLayer, RobertaLayer, ...)
    and every :class:`CrossAttentionLayer` (CAM). With ``dynamic=True`` batch and sequence sizes are symbolic,
    so the text (128 tokens), the caption (40) and the phrase (6) share one compile of a layer. The vision
    backbone is left to cuDNN. Returns the compiled modules' names."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, VisionBackbone):
            continue
        regions: list[tuple[str, nn.Module]] = []
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layer" and ".resnet" not in name:
            regions = [(f"{name}.{i}", m) for i, m in enumerate(module)]
        elif isinstance(module, CrossAttentionLayer):
            regions = [(name, module)]
        for region_name, region in regions:
            region.compile(dynamic=dynamic)
            names.append(region_name)
    return names


class FastStep:
    """One optimisation step (forward, loss, backward, optimizer step) with a :class:`SpeedConfig`.

    ``model`` should have gone through :func:`apply_fast_mode`. ``forward(batch)`` alone (e.g. for
    evaluation) uses the same autocast and compiled module; :attr:`forward_backward` is the training part
    (replayed from CUDA graphs when ``cuda_graphs`` is on); ``on_device`` runs on each batch after the
    transfer (e.g. ``CachedCollate(processor, uint8=True).finish``)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        cfg: SpeedConfig,
        device: torch.device | str,
        on_device: Callable[[MREBatch], MREBatch] | None = None,
    ):
        self.device = torch.device(device)
        self.on_device = on_device  # e.g. CachedCollate(..., uint8=True).finish: pixels made on the GPU
        self.cfg = cfg.resolved(self.device)
        self.model, self.optimizer = model, optimizer
        self._forward: Callable[[MREBatch], MREOutput] = model
        self.compiled_regions: list[str] = []
        self.weight_casts: WeightCasts | None = None
        if self.cfg.compile != "none":
            use_compile_cache(self.cfg.compile_cache_dir)
        if self.cfg.compile == "regional":
            self.compiled_regions = compile_regions(model)
        elif self.cfg.compile != "none":
            dynamic = None if self.cfg.skip_padded_crops else False  # fixed shapes unless crops are skipped
            self._forward = torch.compile(model, mode=self.cfg.compile, dynamic=dynamic)
        if self.cfg.foreach_casts:  # resolved on only with bf16 and without compile
            self._forward = self.weight_casts = WeightCasts(model, torch.bfloat16)
        self.forward_backward: ForwardBackward = (
            GraphedForwardBackward(model, self._autocast_forward, self.device)
            if self.cfg.cuda_graphs
            else ForwardBackward(model, self._autocast_forward)
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.cfg.bf16:
            return contextlib.nullcontext()
        # the autocast weight cache would hold casts across graph replays; CUDA graphs need it off
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.cfg.cuda_graphs)

    def _autocast_forward(self, batch: MREBatch) -> MREOutput:
        with self.autocast():
            return self._forward(batch)

    def prepare(self, batch: MREBatch) -> MREBatch:
        batch = batch.to(self.device)
        return self.on_device(batch) if self.on_device is not None else batch

    def forward(self, batch: MREBatch) -> MREOutput:
        return self._autocast_forward(self.prepare(batch))

    def __call__(self, batch: MREBatch) -> torch.Tensor:
        if self.optimizer is None:
            raise CamimError("FastStep was built without an optimizer; use forward() for inference")
        out = self.forward_backward(self.prepare(batch))
        self.optimizer.step()
        if not self.cfg.cuda_graphs:  # graphs keep param.grad as their static buffers (replaced each replay)
            self.optimizer.zero_grad(set_to_none=True)
        return out.loss

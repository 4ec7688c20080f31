"""``SpeedConfig``: the one owner of every speed switch (the ``speed`` section of a run config).

All switches are off by default (the released step). ``None`` / ``"auto"`` values are decided per device by
:meth:`SpeedConfig.resolved` (on for CUDA, off on CPU). docs/speed.md describes each regime and its numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from camim.errors import CamimError

# "regional": torch.compile each repeated block once (text-encoder layers, CAM's cross-attention block);
# "default" / "reduce-overhead" / "max-autotune": the whole model as one graph in that inductor mode.
COMPILE_MODES = ("auto", "none", "regional", "default", "reduce-overhead", "max-autotune")


@dataclass
class SpeedConfig:
    """Speed switches (``None`` = automatic: on for CUDA only).

    - ``fast``: train with the fast step (the switches below); off = the released step.
    - ``bf16``: ``torch.autocast(bfloat16)`` around the forward (the released step is fp32).
    - ``sdpa``: ``attn_implementation="sdpa"`` for the Hugging Face text encoders (released: eager), and
      ``F.scaled_dot_product_attention`` for CAM's cross-attention and the fusion attentions.
    - ``fused_optimizer``: the multi-tensor port of the released AdamW (``camim.optim``), or fused
      ``torch.optim.AdamW`` when bias correction is on.
    - ``channels_last``: channels-last weights and inputs for the vision backbone.
    - ``merge_encoder_calls``: TMR's caption encoder encodes the captions and the text windows (both 40
      tokens) in one call instead of two: the same encodings per sample, half the launches; dropout masks
      are drawn in another order than the released two calls'.
    - ``foreach_casts``: with ``bf16``, the weights autocast casts (``nn.Linear`` and convolutions) are cast
      once per forward in multi-tensor copies, and their gradients back in one more
      (:mod:`camim.speed.casts`): what autocast with its cache on computes, in a few kernels instead of two
      per weight; not with ``compile``.
    - ``cuda_graphs``: forward, loss and backward replayed from a CUDA graph per batch shape
      (:mod:`camim.speed.graphs`); needs fixed shapes (not ``skip_padded_crops``) and one process.
    - ``compile``: ``torch.compile``, opt-in ("auto" = none): ``"regional"`` compiles each repeated block
      once, the other modes the whole model; not together with ``cuda_graphs``. ``compile_cache_dir`` keeps
      inductor's FX-graph and autograd caches across runs (default: ``$XDG_CACHE_HOME/camim/torch-compile``).
    - ``skip_padded_crops`` (documented fast mode): the backbone runs once for all zero-padded crops.
    - ``keep_freed_memory`` (automatic: on for CPU runs): freed memory stays in the process for reuse (glibc,
      :mod:`camim.speed.memory`): the large tensors a CPU step allocates anew skip fresh pages' faults; what is
      computed is unchanged (run-neutral), and does not need ``fast``.
    - ``frozen_visual``: the vision backbone is frozen (BatchNorm on running statistics) and its features
      are computed once per cached image into safetensors shards under ``feature_cache_dir`` (default
      ``<data.image_cache_dir>/features``); a different regime from the released one (which fine-tunes it).
    """

    fast: bool = False
    bf16: bool | None = None
    sdpa: bool = True
    fused_optimizer: bool | None = None
    channels_last: bool | None = None
    merge_encoder_calls: bool | None = None
    foreach_casts: bool | None = None
    cuda_graphs: bool | None = None
    compile: str = "auto"
    compile_cache_dir: str | None = None
    skip_padded_crops: bool = False
    frozen_visual: bool = False
    feature_cache_dir: str | None = None
    feature_batch_size: int = 64
    keep_freed_memory: bool | None = None

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise CamimError(f"speed.compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.feature_batch_size < 1:
            raise CamimError(f"speed.feature_batch_size must be >= 1, got {self.feature_batch_size}")
        if not self.fast:
            keys = ("bf16", "fused_optimizer", "channels_last", "merge_encoder_calls", "foreach_casts",
                    "cuda_graphs", "skip_padded_crops")  # fmt: skip
            on = [k for k in keys if getattr(self, k)]
            if on:
                raise CamimError(f"speed.{'/'.join(keys)} need speed.fast: true (speed.{on[0]} is set)")
        if self.cuda_graphs and self.skip_padded_crops:
            raise CamimError("speed.cuda_graphs needs fixed shapes; speed.skip_padded_crops makes them vary")
        if self.cuda_graphs and self.compile not in ("auto", "none"):
            # reduce-overhead captures graphs of its own; regional/default compiled code inside our capture
            # failed on an H200 (torch 2.11: "Offset increment outside graph capture", the RNG state) -- pending
            raise CamimError(f"speed.compile={self.compile} cannot run inside speed.cuda_graphs; set "
                             "speed.cuda_graphs: false to compile, or speed.compile: none")  # fmt: skip
        if self.foreach_casts and self.compile not in ("auto", "none"):
            raise CamimError(f"speed.foreach_casts runs the model through torch.func.functional_call, which "
                             f"speed.compile={self.compile} would recompile for; set one of them off")  # fmt: skip
        if self.feature_cache_dir and not self.frozen_visual:
            raise CamimError("speed.feature_cache_dir is set but speed.frozen_visual is false")

    def resolved(self, device: torch.device | str) -> SpeedConfig:
        """A copy with every ``None`` / ``"auto"`` decided for ``device``."""
        cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
        auto = lambda v: cuda if v is None else bool(v)  # noqa: E731
        graphs = auto(self.cuda_graphs) and cuda and not self.skip_padded_crops
        mode = "none" if self.compile == "auto" else self.compile  # compile is opt-in (docs/speed.md)
        bf16 = auto(self.bf16)
        return dataclasses.replace(
            self,
            bf16=bf16,
            fused_optimizer=auto(self.fused_optimizer),
            channels_last=auto(self.channels_last),
            merge_encoder_calls=auto(self.merge_encoder_calls),
            foreach_casts=auto(self.foreach_casts) and bf16 and mode == "none",
            cuda_graphs=graphs,
            compile=mode,
            keep_freed_memory=not cuda if self.keep_freed_memory is None else bool(self.keep_freed_memory),
        )

    @classmethod
    def released(cls) -> SpeedConfig:
        """The released step: eager attention, fp32, per-parameter AdamW, no compile, no graphs, all crops."""
        return cls(fast=True, bf16=False, sdpa=False, fused_optimizer=False, channels_last=False,
                   merge_encoder_calls=False, foreach_casts=False, cuda_graphs=False, compile="none")  # fmt: skip

"""The one entry point through which a training run uses ``camim.speed``: :class:`TrainingSpeed`.

The Lightning module (``camim.training.module``) asks it for three things and nothing else:

- ``forward(batch)``: the evaluation forward (autocast, compiled regions);
- ``forward_backward(batch)``: the training forward + loss + backward when the speed path owns backward
  (``owns_backward``: CUDA graphs replay backward themselves, so Lightning's backward and ``zero_grad`` are
  skipped; each step *replaces* ``param.grad``); otherwise the module runs its usual step;
- ``fused_optimizer``: whether the optimiser is the multi-tensor one.

Frozen-visual mode (the features of every cached image computed once) is set up here too: the data module
provides the store (it owns the image caches), this class attaches it to the model's own backbone
(``VisionBackbone.attach_features``; no module is replaced).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from camim.data import IMAGE_MODALITIES
from camim.errors import CamimError
from camim.models.batch import MREBatch, MREOutput
from camim.speed.config import SpeedConfig
from camim.speed.fast import FastStep, apply_fast_mode
from camim.speed.features import (
    FeatureStore,
    build_feature_store,
    combine_stores,
    feature_kind_for,
    use_cached_features,
)
from camim.speed.image_cache import ImageCache, ImageCacheSpec, open_or_build
from camim.speed.loading import CachedCollate, CachedImageDataset, FeatureRowsCollate
from camim.speed.memory import keep_freed_memory

# the resolved speed.* switches a run's metrics.json["speed"]["resolved"] records
REPORTED_SWITCHES = (
    "bf16",
    "sdpa",
    "fused_optimizer",
    "channels_last",
    "merge_encoder_calls",
    "foreach_casts",
    "cuda_graphs",
    "compile",
)

# attach_feature_store(backbone, kind, device) -> FeatureStore, provided by the run's data module
FeatureStoreProvider = Callable[[nn.Module, str, torch.device], FeatureStore]


def graphs_off_reason(world_size: int, precision: str | int) -> str | None:
    """Why a run cannot replay its step from CUDA graphs, or None.

    - DDP: the gradient all-reduce runs in backward, outside what a graph may hold.
    - A mixed ``trainer.precision``: Lightning's autocast is entered around the training step, outside the
      capture, with its cast cache on; the graph would read bf16/fp16 weight copies cast before the capture,
      which that cache frees when the step ends (``speed.fast`` autocasts in bf16 itself at ``32-true``)."""
    if world_size > 1:
        return "DDP (the gradient all-reduce runs in backward)"
    p = str(precision)
    if p.endswith("-mixed") or p in ("16", "bf16") or p.startswith("transformer-engine"):
        return (
            f"trainer.precision={p} autocasts outside the graph (its cast cache would outlive the capture); "
            "use trainer.precision=32-true, where speed.fast autocasts in bf16 inside the graph"
        )
    return None


class TrainingSpeed:
    """``speed.*`` of one run applied to ``model`` on ``device`` (see the module docstring)."""

    def __init__(
        self,
        cfg: SpeedConfig,
        model: nn.Module,
        device: torch.device,
        feature_store: FeatureStoreProvider | None = None,
        world_size: int = 1,
        trainer_precision: str | int = "32-true",
    ):
        self.cfg, self.model, self.device = cfg, model, torch.device(device)
        self.store: FeatureStore | None = None
        self.notes: list[str] = []
        self.kept_freed_memory = cfg.resolved(self.device).keep_freed_memory and keep_freed_memory()
        if cfg.keep_freed_memory and not self.kept_freed_memory:
            self.notes.append("speed.keep_freed_memory is off: the C library is not glibc (nothing changed)")
        if cfg.frozen_visual:
            if feature_store is None:
                raise CamimError(
                    "speed.frozen_visual: the run has no data module that can build a feature store"
                )
            try:
                kind = feature_kind_for(model)  # refuses a model without a vision backbone
            except CamimError as exc:
                raise CamimError(f"speed.frozen_visual: {exc}") from None
            self.store = feature_store(model.resnet, kind, self.device)
            use_cached_features(model, self.store)
        self.step: FastStep | None = None
        if cfg.fast:
            resolved = cfg
            off = graphs_off_reason(world_size, trainer_precision)
            if off and cfg.resolved(self.device).cuda_graphs:
                resolved = dataclasses.replace(cfg, cuda_graphs=False)
                self.notes.append(f"speed.cuda_graphs is off: {off}")
            # the trainer's precision plugin already casts (bf16-mixed, bf16-true ...): no autocast of our own
            if str(trainer_precision) not in ("32-true", "32"):
                resolved = dataclasses.replace(resolved, bf16=False)
            if world_size > 1 and resolved.resolved(self.device).foreach_casts:
                resolved = dataclasses.replace(resolved, foreach_casts=False)
                self.notes.append(
                    "speed.foreach_casts is off: DDP (every gradient would come out at the end of backward, so "
                    "the all-reduce could not overlap it)"
                )
            # moves the model; Lightning's later move is a no-op
            apply_fast_mode(model, resolved, self.device)
            self.step = FastStep(model, None, resolved, self.device)

    @property
    def owns_backward(self) -> bool:
        """True when ``forward_backward`` runs backward itself (CUDA graphs)."""
        return self.step is not None and bool(self.step.cfg.cuda_graphs)

    @property
    def fused_optimizer(self) -> bool:
        return self.step is not None and bool(self.step.cfg.fused_optimizer)

    def forward(self, model: nn.Module, batch: MREBatch) -> MREOutput:
        if self.step is None:
            return model(batch)
        return self.step.forward(batch)  # autocast (bf16 on CUDA) + compiled regions

    def forward_backward(self, batch: MREBatch) -> MREOutput:
        if self.step is None:
            raise CamimError("forward_backward needs speed.fast")
        return self.step.forward_backward(self.step.prepare(batch))

    def report(self) -> dict:
        """What the speed path did (graph captures, eager fallbacks, compiled regions, features computed)."""
        out: dict = {"notes": list(self.notes), "kept_freed_memory": self.kept_freed_memory}
        if self.step is not None:
            out["resolved"] = {k: getattr(self.step.cfg, k) for k in REPORTED_SWITCHES}
            out["compiled_regions"] = len(self.step.compiled_regions)
            out["graphs"] = self.step.forward_backward.stats.as_dict()
        if self.store is not None:
            out["features_computed"] = self.store.computed_images
        return out


class SpeedData:
    """The data side of ``camim.speed`` for one run: per-split decoded-image caches under ``cache_dir``,
    and in frozen-visual mode one combined feature store whose row ids the loaders carry.

    ``images(split)`` returns the split's dataset loading only its image modalities (to build a cache);
    ``processor`` is the model's processor (the cache geometry and the collates follow it)."""

    def __init__(
        self, cache_dir: str, speed: SpeedConfig, processor: Any, num_workers: int = 0, uint8: bool = False
    ):
        self.cache_dir, self.speed, self.processor, self.num_workers = (
            Path(cache_dir),
            speed,
            processor,
            num_workers,
        )
        # uint8 pixels in the batches, made float by ``finish`` once on the device (CachedCollate(uint8=True))
        self.uint8 = uint8
        self._finisher: CachedCollate | None = None
        self.caches: dict[str, ImageCache] = {}
        self.offsets: dict[str, int] | None = None  # split -> row offset in the combined feature store
        self.zero_row: int | None = None

    def image_cache(self, split: str, images: Callable[[], Dataset]) -> ImageCache:
        """The split's decoded-image cache, built (or completed) on first use."""
        if split not in self.caches:
            spec = ImageCacheSpec.for_model(self.processor.config)
            self.caches[split] = open_or_build(
                images(), self.cache_dir / split, spec, num_workers=self.num_workers
            )
        return self.caches[split]

    def feature_store(
        self, backbone: nn.Module, kind: str, device, caches: dict[str, ImageCache]
    ) -> FeatureStore:
        """Frozen-visual mode: every image of ``caches`` (split -> cache) through the frozen ``backbone`` once
        (or loaded from ``speed.feature_cache_dir``), joined into one store; the loaders then carry its rows."""
        root = Path(self.speed.feature_cache_dir or self.cache_dir / "features")
        stores = [build_feature_store(backbone, cache, root, kind=kind, batch_size=self.speed.feature_batch_size,
                                      device=device) for cache in caches.values()]  # fmt: skip
        store, offsets = combine_stores(stores)
        self.offsets = dict(zip(caches, offsets))
        self.zero_row = store.zero_row
        return store

    def dataset(self, text_only: Dataset, split: str) -> Dataset:
        """What a split's loader reads: its text dataset joined with its image cache (no pixels in
        frozen-visual mode: the rows are enough)."""
        return CachedImageDataset(text_only, self.caches[split], read_pixels=self.offsets is None)

    def collate(self, split: str) -> Callable:
        if self.offsets is None:
            return CachedCollate(self.processor, uint8=self.uint8)
        if split not in self.offsets:
            raise CamimError(f"frozen-visual mode: no features were computed for the {split!r} split")
        return FeatureRowsCollate(self.processor, self.zero_row, self.offsets[split])

    def finish(self, batch: MREBatch) -> MREBatch:
        """A batch on its device with uint8 pixels -> float pixels, the processor's tensors (no-op otherwise)."""
        if not self.uint8 or self.offsets is not None:
            return batch
        if self._finisher is None:
            self._finisher = CachedCollate(self.processor, uint8=True)
        return self._finisher.finish(batch)

    @staticmethod
    def image_modalities(modalities) -> tuple[str, ...]:
        return tuple(m for m in modalities if m in IMAGE_MODALITIES)

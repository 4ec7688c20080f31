"""Speed: decoded-image cache, frozen-visual feature cache and the fast training step (docs/speed.md).

- :mod:`camim.speed.image_cache` -- each image decoded and resized once into a memory-mapped uint8 array;
- :mod:`camim.speed.loading` -- dataset wrapper and collates reading that cache (bit-identical batches);
- :mod:`camim.speed.features` -- frozen-visual mode: backbone features cached as safetensors shards;
- :mod:`camim.speed.config` -- :class:`SpeedConfig`, every speed switch (the run config's ``speed`` section);
- :mod:`camim.speed.fast` -- bf16, SDPA, channels-last, regional torch.compile, and the documented
  skip-padded-crops mode;
- :mod:`camim.speed.graphs` -- forward + loss + backward replayed from CUDA graphs.
"""

from __future__ import annotations

from camim.speed.config import SpeedConfig
from camim.speed.fast import (
    FastStep,
    FastVisionBackbone,
    apply_fast_mode,
)
from camim.speed.features import (
    FeatureStore,
    build_feature_store,
    combine_stores,
    feature_kind_for,
    use_cached_features,
)
from camim.speed.image_cache import ImageCache, ImageCacheSpec, open_or_build
from camim.speed.loading import CachedCollate, CachedImageDataset, FeatureRowsCollate

__all__ = [
    "CachedCollate",
    "CachedImageDataset",
    "FastStep",
    "FastVisionBackbone",
    "FeatureRowsCollate",
    "FeatureStore",
    "ImageCache",
    "ImageCacheSpec",
    "SpeedConfig",
    "apply_fast_mode",
    "build_feature_store",
    "combine_stores",
    "feature_kind_for",
    "open_or_build",
    "use_cached_features",
]

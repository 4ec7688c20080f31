"""Datasets and collates that read images from an :class:`ImageCache` instead of decoding them.

- :class:`CachedImageDataset` wraps an ``MNREDataset`` that loads *no* image modality (text, captions,
  scores, phrases only) and attaches the cache rows of each sample.
- :class:`CachedCollate` turns those items into the same :class:`MREBatch` the model's processor makes from
  PIL images (bit-identical pixels; same zero-padding, ``objects_mask`` and counted fallbacks).
- :class:`FeatureRowsCollate` (frozen-visual mode) puts *row ids* of the feature store in the batch's
  ``*_rows`` fields, ``(B,)`` / ``(B, m)``; the model's backbone, with the store attached
  (:func:`camim.speed.features.use_cached_features`), maps them to cached features, so no pixel is read.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from camim.errors import CamimError, DataError
from camim.models.batch import MREBatch
from camim.speed.image_cache import IMAGE_MODALITIES, ImageCache, ImageCacheSpec, to_pixels


@dataclass
class CachedItem:
    """One sample: the example (no images loaded) and its cache rows per image modality."""

    example: Any
    rows: dict[str, Any]  # modality -> row | None | [rows]
    pixels: dict[str, Any] | None = None  # modality -> (kind, uint8 (S,S,3)) | None | [(kind, uint8)]


class CachedImageDataset(torch.utils.data.Dataset):
    """``dataset`` (loading no image modality) + the image cache built from the same split.

    ``read_pixels=False`` skips reading pixels (frozen-visual mode only needs the row ids)."""

    def __init__(self, dataset: Any, cache: ImageCache, read_pixels: bool = True):
        loaded = [m for m in IMAGE_MODALITIES if m in getattr(dataset, "modalities", ())]
        if loaded:
            raise CamimError(
                f"the wrapped dataset still decodes {loaded}; build it without image modalities "
                "(the cache provides them)"
            )
        self.dataset, self.cache, self.read_pixels = dataset, cache, read_pixels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> CachedItem:
        ex = self.dataset[i]
        pos = i if i >= 0 else len(self) + i
        rec = self.cache.sample(pos)
        if rec["img_id"] != ex.img_id or rec["index"] != ex.index:
            raise DataError(
                f"cache row for position {pos} is for sample {rec['index']} ({rec['img_id']}), the dataset has "
                f"sample {ex.index} ({ex.img_id}): the cache is stale, rebuild it",
                self.cache.index_path,
            )
        rows = {m: rec.get(m) for m in self.cache.index["modalities"]}
        pixels = None
        if self.read_pixels:
            kinds = self.cache.kinds
            pixels = {}
            for m, r in rows.items():
                if r is None:
                    pixels[m] = None
                elif isinstance(r, list):
                    pixels[m] = list(zip([kinds[j] for j in r], self.cache.rows(r))) if r else []
                else:
                    pixels[m] = (kinds[r], self.cache.rows([r])[0])
        return CachedItem(ex, rows, pixels)


def _text_processor(processor: Any) -> Any:
    """A copy of ``processor`` that encodes everything but the image modalities (it shares the tokenizer)."""
    text = copy.copy(processor)
    text.needs = set(processor.needs) - set(IMAGE_MODALITIES)
    text.report = processor.report
    return text


class _CollateBase:
    def __init__(self, processor: Any):
        self.processor = processor
        self.text = _text_processor(processor)
        self.config = processor.config

    @property
    def report(self) -> Counter:
        return self.processor.report

    def _require(self, items: list[CachedItem], modality: str) -> None:
        for it in items:
            if it.rows.get(modality) is None:
                where = it.example.source or f"sample {it.example.index}"
                raise CamimError(
                    f"{where}: this {self.config.name} model needs the {modality!r} modality, which the "
                    "cache holds no image for"
                )

    def _check_cached(self, items: list[CachedItem]) -> None:
        for m in IMAGE_MODALITIES:
            if m in self.processor.needs and any(m not in it.rows for it in items):
                raise CamimError(f"the image cache holds no {m!r}; rebuild it with that modality loaded")


class CachedCollate(_CollateBase):
    """items -> :class:`MREBatch` with pixels from the cache, identical to ``processor(examples)``.

    ``uint8=True`` defers the float conversion to the device: image fields stay uint8 (B, S, S, 3) /
    (B, m, S, S, 3) (4x less to copy, no float math in loader workers); call :meth:`finish` on the batch
    after ``batch.to(device)`` to get the same float tensors as the processor's."""

    def __init__(self, processor: Any, uint8: bool = False):
        super().__init__(processor)
        self.uint8 = uint8
        self.full_kind = ImageCacheSpec.for_model(self.config).full_kind

    def __call__(self, items: list[CachedItem]) -> MREBatch:
        self._check_cached(items)
        batch = self.text([it.example for it in items])
        needs, m, s = self.processor.needs, self.config.max_objects, self.config.image_size
        for name in ("image", "generated_image"):
            if name in needs:
                self._require(items, name)
                if any(it.pixels[name][0] != self.full_kind for it in items):
                    raise CamimError(
                        f"the image cache's full-image geometry does not match this {self.config.name} model"
                    )
                raw = torch.from_numpy(np.stack([it.pixels[name][1] for it in items]))
                setattr(batch, name, raw if self.uint8 else to_pixels(raw, self.full_kind))
        for name in ("objects", "generated_objects"):
            if name not in needs:
                continue
            raw = torch.zeros(len(items), m, s, s, 3, dtype=torch.uint8)
            mask = torch.zeros(len(items), m, dtype=torch.long)
            for i, it in enumerate(items):
                crops = (it.pixels[name] or [])[:m]
                if len(crops) < m:
                    self.report["zero_padded_object_crops"] += m - len(crops)
                mask[i, : len(crops)] = 1
                if crops:
                    raw[i, : len(crops)] = torch.from_numpy(np.stack([a for _, a in crops]))
            setattr(batch, name, raw if self.uint8 else self._objects(raw, mask))
            setattr(batch, f"{name}_mask", mask)
        return batch

    @staticmethod
    def _objects(raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, m, S, S, 3) uint8 -> (B, m, 3, S, S) float; padded slots are all-zero images (released).

        Every slot is converted and the padded ones then set to exactly 0.0: no boolean indexing and no
        ``.any()``, so on a GPU this never waits for the device (the values are those of converting only the
        present slots: the conversion is element-wise)."""
        b, m, s = raw.shape[0], raw.shape[1], raw.shape[2]
        pixels = to_pixels(raw.reshape(b * m, s, s, 3), "crop").view(b, m, 3, s, s)
        return pixels.masked_fill_(~mask.bool().view(b, m, 1, 1, 1), 0.0)

    def finish(self, batch: MREBatch) -> MREBatch:
        """Convert a ``uint8=True`` batch's image fields to float pixels, in place, on their device."""
        for name in ("image", "generated_image"):
            value = getattr(batch, name)
            if value is not None and value.dtype == torch.uint8:
                setattr(batch, name, to_pixels(value, self.full_kind))
        for name in ("objects", "generated_objects"):
            value = getattr(batch, name)
            if value is not None and value.dtype == torch.uint8:
                setattr(batch, name, self._objects(value, getattr(batch, f"{name}_mask")))
        return batch


class FeatureRowsCollate(_CollateBase):
    """items -> :class:`MREBatch` carrying feature-store row ids instead of pixels (frozen-visual mode).

    ``image_rows`` / ``generated_image_rows``: (B,) int64; ``objects_rows`` / ``generated_objects_rows``:
    (B, m) int64 with ``zero_row`` (the feature store's row of an all-zero image) where the released code
    zero-pads, and the usual ``*_mask``. The pixel fields stay ``None``. ``row_offset`` is added to every
    real row id (a split's place in a combined store, see :func:`camim.speed.features.combine_stores`)."""

    def __init__(self, processor: Any, zero_row: int, row_offset: int = 0):
        super().__init__(processor)
        self.zero_row, self.row_offset = zero_row, row_offset

    def __call__(self, items: list[CachedItem]) -> MREBatch:
        self._check_cached(items)
        batch = self.text([it.example for it in items])
        needs, m = self.processor.needs, self.config.max_objects
        for name in ("image", "generated_image"):
            if name in needs:
                self._require(items, name)
                rows = [it.rows[name] + self.row_offset for it in items]
                setattr(batch, f"{name}_rows", torch.tensor(rows, dtype=torch.long))
        for name in ("objects", "generated_objects"):
            if name not in needs:
                continue
            ids = torch.full((len(items), m), self.zero_row, dtype=torch.long)
            mask = torch.zeros(len(items), m, dtype=torch.long)
            for i, it in enumerate(items):
                rows = (it.rows[name] or [])[:m]
                if len(rows) < m:
                    self.report["zero_padded_object_crops"] += m - len(rows)
                ids[i, : len(rows)] = torch.tensor(rows, dtype=torch.long) + self.row_offset
                mask[i, : len(rows)] = 1
            setattr(batch, f"{name}_rows", ids)
            setattr(batch, f"{name}_mask", mask)
        return batch

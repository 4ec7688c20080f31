"""Frozen-visual mode: the vision backbone's features computed once per cached image and reused.

When the visual backbone is not fine-tuned (frozen, BatchNorm on its running statistics), its output for an
image never changes, so it is computed once per row of an :class:`ImageCache` and stored as safetensors
shards under ``root/<kind>-<fingerprint>/``. The fingerprint hashes the backbone id *and weights*, the
image-cache preprocessing (:meth:`ImageCacheSpec.digest`), the cache's rows (their kinds and CRC32s: which
images the row ids stand for), the feature kind and dtype, so a store is reused across epochs and runs exactly
when it is valid, and a different backbone, preprocessing or image cache (another split) gets a new one.

Feature kinds (``VisionBackbone.features``; what each extractor consumes, ``MREModel.visual_feature_kind``):

- ``"tokens"`` (TMR): the last stage map as (N, h*w, C) patch tokens;
- ``"pyramid"`` (HVPNeT): each of the 4 stage maps average-pooled to 2x2 with kernel = stride = floor(H/2),
  exactly HVPNeT's prefix pooling.

:func:`use_cached_features` attaches a store to the model's own backbone (``VisionBackbone.attach_features``:
frozen, the features as non-persistent buffers, so state dicts, ``save_pretrained`` and checkpoints are
unchanged); the model then reads the row ids that :class:`camim.speed.loading.FeatureRowsCollate` puts in
the batch's ``*_rows`` fields. The build is resumable: each shard is written atomically and skipped when
already present.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from camim.errors import CamimError
from camim.io import atomic_path
from camim.models.encoders import FEATURE_KINDS, VisionBackbone
from camim.speed.image_cache import ImageCache


def feature_kind_for(model: nn.Module) -> str:
    """The feature kind an extractor consumes ("pyramid" for HVPNeT, "tokens" for TMR)."""
    kind = getattr(model, "visual_feature_kind", None)
    if kind is None or not isinstance(getattr(model, "resnet", None), VisionBackbone):
        raise CamimError(
            f"this {getattr(model, 'model_name', type(model).__name__)} model has no vision backbone "
            "(model.resnet); frozen-visual mode does not apply"
        )
    return kind


def backbone_fingerprint(backbone: VisionBackbone) -> str:
    """sha256 of the backbone's id and every tensor of its state dict (weights and BN statistics)."""
    h = hashlib.sha256()
    name = getattr(backbone.config, "name_or_path", None) or type(backbone.model).__name__
    h.update(str(name).encode())
    for key, t in sorted(backbone.model.state_dict().items()):
        h.update(key.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_rows_digest(cache: ImageCache) -> str:
    """sha256 of an image cache's row kinds and CRC32s: which images its row ids stand for, in order (two
    caches of the same size, e.g. two splits, must not share a feature store)."""
    text = json.dumps({"kinds": cache.kinds, "crc": cache.index["crc"]}, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class FeatureStore:
    """Features of every image-cache row plus one last row for an all-zero image (``zero_row``)."""

    kind: str
    tensors: list[torch.Tensor]
    directory: Path | None = None
    computed_images: int = 0  # images run through the backbone when this store was built/loaded
    meta: dict = field(default_factory=dict)

    @property
    def zero_row(self) -> int:
        return self.tensors[0].shape[0] - 1

    def __len__(self) -> int:
        return self.tensors[0].shape[0]


def _shard_rows(path: Path) -> int | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("rows", -1))
    except Exception:  # noqa: BLE001 - a torn or foreign file is simply recomputed
        return None


def _write_shard(path: Path, tensors: list[torch.Tensor], rows: int) -> None:
    with atomic_path(path) as tmp:  # a temporary name per call: DDP ranks may race
        save_file(
            {f"f{i}": t.contiguous() for i, t in enumerate(tensors)}, str(tmp), metadata={"rows": str(rows)}
        )


def _load_shard(path: Path, n: int) -> list[torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        out = [f.get_tensor(f"f{i}") for i in range(n)]
    return out


@torch.no_grad()
def build_feature_store(
    backbone: VisionBackbone,
    cache: ImageCache,
    root: str | Path,
    kind: str = "tokens",
    batch_size: int = 64,
    shard_rows: int = 4096,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    stop_after_shards: int | None = None,
) -> FeatureStore:
    """Compute (or load) the features of every row of ``cache`` with the frozen ``backbone``.

    The backbone runs in eval mode under ``no_grad`` (BN running statistics); ``device`` defaults to the
    backbone's. Existing shards with the right row count are loaded, not recomputed; ``stop_after_shards``
    stops after that many new shards (used to test resumption)."""
    if kind not in FEATURE_KINDS:
        raise CamimError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")
    if len(cache) == 0:
        raise CamimError(f"{cache.directory}: the image cache is empty")
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "backbone": backbone_fingerprint(backbone),
                "preprocessing": cache.spec.digest(),
                "rows": cache_rows_digest(cache),
                "kind": kind,
                "dtype": str(dtype),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:20]
    directory = Path(root) / f"{kind}-{fingerprint}"
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "fingerprint": fingerprint, "image_cache": str(cache.directory), "rows": len(cache)}
    (directory / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    computed, new_shards = 0, 0
    n_out = 1 if kind == "tokens" else 4
    parts: list[list[torch.Tensor]] = []
    try:
        for start in range(0, len(cache), shard_rows):
            stop = min(start + shard_rows, len(cache))
            path = directory / f"shard-{start // shard_rows:05d}.safetensors"
            if _shard_rows(path) == stop - start:
                parts.append(_load_shard(path, n_out))
                continue
            if stop_after_shards is not None and new_shards >= stop_after_shards:
                raise CamimError(f"stopped after {new_shards} new shards (stop_after_shards)")
            chunks: list[list[torch.Tensor]] = []
            for b in range(start, stop, batch_size):
                ids = list(range(b, min(b + batch_size, stop)))
                feats = backbone.features(cache.pixels(ids).to(device), kind)
                chunks.append([f.to(dtype).cpu() for f in feats])
                computed += len(ids)
            shard = [torch.cat([c[i] for c in chunks]) for i in range(n_out)]
            _write_shard(path, shard, stop - start)
            new_shards += 1
            parts.append(shard)
        zero_path = directory / "zero.safetensors"
        if _shard_rows(zero_path) == 1:
            zero = _load_shard(zero_path, n_out)
        else:
            s = cache.spec.image_size
            zero = [
                f.to(dtype).cpu() for f in backbone.features(torch.zeros(1, 3, s, s, device=device), kind)
            ]
            _write_shard(zero_path, zero, 1)
            computed += 1
    finally:
        backbone.train(was_training)
    tensors = [torch.cat([p[i] for p in parts] + [zero[i]]) for i in range(n_out)]
    return FeatureStore(kind, tensors, directory, computed, meta)


def combine_stores(stores: list[FeatureStore]) -> tuple[FeatureStore, list[int]]:
    """One store holding the rows of several (e.g. one per split) and a single all-zero row (the last).

    Returns it and each input store's row offset (pass it to ``FeatureRowsCollate(row_offset=...)``)."""
    if not stores:
        raise CamimError("no feature store to combine")
    kinds = {s.kind for s in stores}
    if len(kinds) != 1:
        raise CamimError(f"cannot combine feature stores of different kinds: {sorted(kinds)}")
    offsets, start = [], 0
    for s in stores:
        offsets.append(start)
        start += s.zero_row
    n_out = len(stores[0].tensors)
    tensors = [
        torch.cat([s.tensors[i][: s.zero_row] for s in stores] + [stores[0].tensors[i][-1:]])
        for i in range(n_out)
    ]
    combined = FeatureStore(
        stores[0].kind,
        tensors,
        None,
        sum(s.computed_images for s in stores),
        {"parts": [s.meta for s in stores]},
    )
    return combined, offsets


def use_cached_features(model: nn.Module, store: FeatureStore) -> nn.Module:
    """Frozen-visual mode: attach ``store`` to ``model.resnet`` (``VisionBackbone.attach_features``: frozen,
    BatchNorm on running statistics); returns ``model``. Feed it batches from
    :class:`camim.speed.loading.FeatureRowsCollate`; batches with pixels still run the (frozen) backbone."""
    kind = feature_kind_for(model)
    if store.kind != kind:
        raise CamimError(f"{model.model_name} needs {kind!r} features; the store holds {store.kind!r}")
    model.resnet.attach_features(store.kind, store.tensors)
    return model

"""``MNREDataModule``: the three MNRE splits as DataLoaders, with the model's processor as ``collate_fn``.

Shuffling uses :class:`EpochSeededSampler`, whose order depends only on (seed, epoch), so a run resumed from
an end-of-epoch checkpoint sees exactly the batches an uninterrupted run sees. Under DDP, Lightning's
``DistributedSampler`` (also seeded per epoch) takes its place.

``bootstrap_train`` reproduces the released TMR/CAMIM loader (reference §2, §7.3): the training split is
redrawn *with replacement* at ratio 1.0 (``random.choices``), keeping about 63% unique samples; the clean
reading (HVPNeT, and ``bootstrap_train: false``) uses every training sample once per epoch.

Speed (docs/speed.md, off by default): with ``data.image_cache_dir`` each split's images are decoded once into
``<image_cache_dir>/<split>`` (``camim.speed`` memmap cache, built on first use, reused after) and batches are
made by ``CachedCollate`` (bit-identical to the processor's); with ``speed.frozen_visual`` the loaders carry
feature-store row ids in the batch's ``*_rows`` fields (``FeatureRowsCollate``), which the model's backbone
maps to stored features (the store attached by ``camim.speed.training.TrainingSpeed``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from camim.data import IMAGE_MODALITIES, LabelSet, MNREDataset
from camim.errors import CamimError, DataError
from camim.models.batch import MREBatch
from camim.speed.training import SpeedData
from camim.training.config import RunConfig


def bootstrap_indices(n: int, seed: int) -> list[int]:
    """``random.choices(range(n), k=n)`` with Python's ``random`` seeded by ``seed`` (the released draw)."""
    return random.Random(seed).choices(range(n), k=n)


class EpochSeededSampler(Sampler[int]):
    """A random permutation of ``range(n)`` drawn from a generator seeded by (seed, epoch).

    The permutation is drawn lazily, on the first index requested, so that an iterator created before
    ``set_epoch`` (Lightning does this when it resumes) still follows the epoch it is used in.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0):
        self.n, self.seed, self.epoch = n, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.randperm(self.n, generator=g).tolist()

    def __len__(self) -> int:
        return self.n


def _limit(ds: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return Subset(ds, range(limit))


class MNREDataModule(L.LightningDataModule):
    """Train/val/test :class:`MNREDataset` splits of ``data_dir`` for one model (its modalities and processor)."""

    def __init__(
        self,
        cfg: RunConfig,
        data_dir: str,
        labels: LabelSet,
        modalities: set[str] | tuple[str, ...],
        collate_fn: Callable,
        test_split: str = "test",
    ):
        super().__init__()
        self.cfg, self.data_dir, self.labels = cfg, data_dir, labels
        self.modalities = tuple(sorted(modalities))
        self.collate_fn = collate_fn
        self.test_split = test_split  # the split the test loop scores (evaluate_run may pick val or train)
        self.datasets: dict[str, MNREDataset] = {}
        on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
        # page-locked batches for asynchronous host-to-GPU copies (speed.fast on a CUDA machine)
        self.pin_memory = bool(cfg.speed.fast) and on_gpu
        self.cached_images = bool(cfg.data.image_cache_dir) and bool(
            set(self.modalities) & set(IMAGE_MODALITIES)
        )
        uint8 = on_gpu if cfg.data.image_cache_uint8 is None else cfg.data.image_cache_uint8
        # camim.speed's data side: image caches, the frozen-visual feature store, their loaders' pieces
        self.speed_data = (
            SpeedData(cfg.data.image_cache_dir, cfg.speed, collate_fn, cfg.data.num_workers, uint8=uint8)
            if self.cached_images
            else None
        )

    def _mnre(self, split: str, modalities: tuple[str, ...]) -> MNREDataset:
        from camim.models.processing import NO_FALLBACK_MODALITIES

        d = self.cfg.data
        ds = MNREDataset(
            self.data_dir,
            split=split,
            labels=self.labels,
            caption_source=d.caption_source,
            modalities=modalities,
            max_objects=self.cfg.model.max_objects,  # the model's setting (its processor pads to it)
            on_error=d.on_error,
            on_missing=d.on_missing,
            no_fallback=NO_FALLBACK_MODALITIES & set(modalities),
            encoding=d.encoding,
            caption_shuffle_seed=d.caption_shuffle_seed,
        )
        if len(ds) == 0:
            skipped = f" ({len(ds.problems)} malformed line(s) skipped)" if ds.problems else ""
            hint = (
                " (or set optim.select_on: train_loss to train without validation)" if split == "val" else ""
            )
            raise DataError(
                f"the {split!r} split has no samples{skipped}; give it samples{hint}", ds.samples_path
            )
        return ds

    def dataset(self, split: str) -> MNREDataset:
        """The (cached) :class:`MNREDataset` of one split (without image modalities when they are cached);
        ``DataError`` naming the split and its file when the split is missing or has no samples."""
        if split not in self.datasets:
            mods = self.modalities
            if self.cached_images:
                mods = tuple(m for m in mods if m not in IMAGE_MODALITIES)
            self.datasets[split] = self._mnre(split, mods)
        return self.datasets[split]

    def image_cache(self, split: str):
        """The decoded-image cache of one split, built (or completed) on first use (``data.image_cache_dir``)."""
        if self.speed_data is None:
            raise CamimError("data.image_cache_dir is not set (or this model loads no image)")
        images = lambda: self._mnre(split, SpeedData.image_modalities(self.modalities))  # noqa: E731
        return self.speed_data.image_cache(split, images)

    def attach_feature_store(self, backbone: torch.nn.Module, kind: str, device: torch.device | None = None):
        """Frozen-visual mode: the features of every image of the train/val/test caches, computed once with the
        frozen ``backbone`` (or loaded from ``speed.feature_cache_dir``), as one combined store; the loaders
        then carry its row ids. Returns the store (``TrainingSpeed`` attaches it to the model's backbone)."""
        if self.speed_data is None:
            raise CamimError("speed.frozen_visual needs data.image_cache_dir and a model that reads images")
        splits = list(dict.fromkeys((*self.fit_splits(), self.test_split)))
        return self.speed_data.feature_store(backbone, kind, device, {s: self.image_cache(s) for s in splits})

    def _split_dataset(self, split: str) -> Dataset:
        """What a split's loader reads: the dataset, or it joined with its image cache."""
        ds = self.dataset(split)
        if self.speed_data is None:
            return ds
        self.image_cache(split)
        return self.speed_data.dataset(ds, split)

    def _collate(self, split: str) -> Callable:
        return self.collate_fn if self.speed_data is None else self.speed_data.collate(split)

    def cache_splits(self, stage: str | None) -> list[str]:
        """The splits whose image caches a stage reads (frozen-visual fits also need the test split's)."""
        wanted = {"fit": list(self.fit_splits()), "validate": ["val"], "test": [self.test_split]}.get(
            stage or "", []
        )
        if stage == "fit" and self.cfg.speed.frozen_visual:
            wanted.append(self.test_split)
        return list(dict.fromkeys(wanted))

    def prepare_data(self) -> None:
        """Build the image caches a run needs (Lightning runs this in one process per node, before setup, so
        DDP ranks never write a cache concurrently; they open the finished folders)."""
        if not self.cached_images:
            return
        fn = self.trainer.state.fn if self.trainer is not None else None
        for split in self.cache_splits(fn.value if fn is not None else "fit"):
            self.image_cache(split)

    def fit_splits(self) -> tuple[str, ...]:
        """The splits a fit reads: train and val, or train alone when selecting on the training loss."""
        return ("train",) if self.cfg.optim.select_on == "train_loss" else ("train", "val")

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": self.fit_splits(), "validate": ("val",), "test": (self.test_split,)}.get(
            stage or "", ()
        )
        for split in wanted:
            self.dataset(split)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 cached pixels (``data.image_cache_uint8``) become the processor's float pixels on the device,
        then get what the precision plugin gave the other float tensors before the transfer (``bf16-true``...)."""
        if self.speed_data is not None and self.speed_data.uint8 and isinstance(batch, MREBatch):
            batch = self.speed_data.finish(batch)
            if self.trainer is not None:
                batch = self.trainer.precision_plugin.convert_input(batch)
        return batch

    def data_report(self) -> dict[str, dict]:
        """Counted fallbacks and skipped lines of every loaded split (``MNREDataset.report``), with the image
        cache's counted absences (``missing_image`` ...) when images come from the cache."""
        out = {split: dict(ds.report) for split, ds in self.datasets.items()}
        for split, cache in (self.speed_data.caches if self.speed_data else {}).items():
            out.setdefault(split, {}).update(cache.report)
        return out

    def train_dataset(self) -> Dataset:
        ds: Dataset = _limit(self._split_dataset("train"), self.cfg.data.train_limit)
        if self.cfg.optim.bootstrap_train:
            ds = Subset(ds, bootstrap_indices(len(ds), self.cfg.optim.seed))
        return ds

    def _loader(self, ds: Dataset, batch_size: int, split: str, sampler: Sampler | None = None) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False if sampler is not None else None,
            collate_fn=self._collate(split),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset()
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # Lightning swaps in a DistributedSampler(seed=...) with per-epoch shuffling.
            workers = self.cfg.data.num_workers
            return DataLoader(
                ds,
                batch_size=self.cfg.optim.batch_size,
                shuffle=True,
                collate_fn=self._collate("train"),
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=self.pin_memory,
            )
        epoch = trainer.current_epoch if trainer is not None else 0
        return self._loader(
            ds, self.cfg.optim.batch_size, "train", EpochSeededSampler(len(ds), self.cfg.optim.seed, epoch)
        )

    def _eval_loader(self, split: str) -> DataLoader:
        bs = self.cfg.optim.eval_batch_size or self.cfg.optim.batch_size
        return self._loader(_limit(self._split_dataset(split), self.cfg.data.eval_limit), bs, split)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split)

"""``MNREDataModule``: the three MNRE splits as DataLoaders, with the model's processor as ``collate_fn``.

Shuffling uses :class:`EpochSeededSampler`, whose order depends only on (seed, epoch), so a run resumed from
an end-of-epoch checkpoint sees exactly the batches an uninterrupted run sees. Under DDP, Lightning's
``DistributedSampler`` (also seeded per epoch) takes its place.

``bootstrap_train`` reproduces the released TMR/CAMIM loader (reference §2, §7.3): the training split is
redrawn *with replacement* at ratio 1.0 (``random.choices``), keeping about 63% unique samples; the clean
reading (HVPNeT, and ``bootstrap_train: false``) uses every training sample once per epoch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from camim.data import LabelSet, MNREDataset
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

    def dataset(self, split: str) -> MNREDataset:
        """The (cached) :class:`MNREDataset` of one split."""
        if split not in self.datasets:
            d = self.cfg.data
            self.datasets[split] = MNREDataset(
                self.data_dir,
                split=split,
                labels=self.labels,
                caption_source=d.caption_source,
                modalities=self.modalities,
                max_objects=d.max_objects,
                on_error=d.on_error,
                on_missing=d.on_missing,
            )
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": (self.test_split,)}.get(
            stage or "", ()
        )
        for split in wanted:
            self.dataset(split)

    def data_report(self) -> dict[str, dict]:
        """Counted fallbacks and skipped lines of every loaded split (``MNREDataset.report``)."""
        return {split: dict(ds.report) for split, ds in self.datasets.items()}

    def train_dataset(self) -> Dataset:
        ds: Dataset = _limit(self.dataset("train"), self.cfg.data.train_limit)
        if self.cfg.optim.bootstrap_train:
            ds = Subset(ds, bootstrap_indices(len(ds), self.cfg.optim.seed))
        return ds

    def _loader(self, ds: Dataset, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False if sampler is not None else None,
            collate_fn=self.collate_fn,
            num_workers=workers,
            persistent_workers=workers > 0,
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
                collate_fn=self.collate_fn,
                num_workers=workers,
                persistent_workers=workers > 0,
            )
        epoch = trainer.current_epoch if trainer is not None else 0
        return self._loader(
            ds, self.cfg.optim.batch_size, EpochSeededSampler(len(ds), self.cfg.optim.seed, epoch)
        )

    def _eval_loader(self, split: str) -> DataLoader:
        bs = self.cfg.optim.eval_batch_size or self.cfg.optim.batch_size
        return self._loader(_limit(self.dataset(split), self.cfg.data.eval_limit), bs)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split)

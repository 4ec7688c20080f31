"""Decoded-image cache: every image of a split decoded and resized once into a memory-mapped uint8 array.

Layout of a cache folder (one per split and image geometry)::

    pixels.u8    rows of (S, S, 3) uint8 RGB, S = image_size, back to back (read with numpy.memmap)
    index.json   spec, row kinds ("full" / "crop"), CRC32 per row, and per dataset position the rows of its
                 image / objects / generated_image / generated_objects (null = absent)

A row holds the image after the geometric part of the processor's pipeline, so the float tensors made from
it are bit-identical to what :class:`camim.models.processing.MREProcessor` makes from the PIL image:

- "full" rows (full images, released TMR quirk): RGB stretched to S x S with area (BOX) resampling; the
  tensor is BGR, 0-255 floats, not normalised (``released_full_image_pixels``);
- "crop" rows (object crops, and full images when the quirk is off or for HVPNeT): Resize(S*256/224),
  CenterCrop(S); the tensor is ImageNet-normalised (``crop_pixels``).

Rows are de-duplicated by content (a row kind + pixel digest), so an image shared by several samples is
stored once. The build is atomic and resumable: rows are appended to ``pixels.u8`` and committed by
atomically replacing ``index.json`` every ``commit_every`` samples; an interrupted build resumes from the
last commit, and a dataset that grew later is cached incrementally. ``verify()`` recomputes every CRC.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from camim.data.types import IMAGE_MODALITIES
from camim.errors import CamimError, DataError
from camim.io import atomic_write_text, flocked, no_space_is_an_error
from camim.models.processing import resize_center_crop
from camim.progress import progress as progress_display

FORMAT = "camim-image-cache/1"
FULL_GEOMETRIES = ("stretch", "crop")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageCacheSpec:
    """What a cache holds: the square side ``image_size`` and the geometry of full images.

    ``full_image_geometry="stretch"`` is the released TMR/CAMIM quirk (cv2 stretch, BGR, unnormalised);
    ``"crop"`` is the crop pipeline (HVPNeT's main image, or ``full_image_bgr_unnormalised=False``).
    """

    image_size: int = 224
    full_image_geometry: str = "stretch"

    def __post_init__(self) -> None:
        if self.full_image_geometry not in FULL_GEOMETRIES:
            raise CamimError(f"full_image_geometry must be one of {FULL_GEOMETRIES}")
        if self.image_size < 1:
            raise CamimError(f"image_size must be >= 1, got {self.image_size}")

    @classmethod
    def for_model(cls, config: Any) -> ImageCacheSpec:
        """The spec matching a :class:`camim.models.ModelConfig` (same rule as the processor's ``_full``)."""
        stretch = config.fidelity.full_image_bgr_unnormalised and config.name == "tmr"
        return cls(config.image_size, "stretch" if stretch else "crop")

    @property
    def full_kind(self) -> str:
        return "full" if self.full_image_geometry == "stretch" else "crop"

    def digest(self) -> str:
        """A short hash of the preprocessing (used to key feature caches built on this image cache)."""
        text = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------- geometry
def stretch_uint8(img: Image.Image, size: int) -> np.ndarray:
    """Released full-image geometry: RGB stretched to (size, size) with area resampling -> (S, S, 3) uint8."""
    return np.asarray(img.convert("RGB").resize((size, size), Image.BOX), dtype=np.uint8)


def crop_uint8(img: Image.Image, size: int) -> np.ndarray:
    """Crop-pipeline geometry (the models' :func:`resize_center_crop`) -> (S, S, 3) uint8."""
    return np.asarray(resize_center_crop(img, size), dtype=np.uint8)


def to_pixels(rows: np.ndarray | torch.Tensor, kind: str) -> torch.Tensor:
    """(N, S, S, 3) uint8 rows -> (N, 3, S, S) float32 (on their device), bit-identical to the processor's.

    ``kind="full"``: BGR 0-255 floats (released quirk); ``kind="crop"``: ImageNet-normalised RGB. Off the CPU,
    crop rows are looked up in a table of the 3 x 256 values the CPU computes (:func:`crop_lookup`)."""
    t = torch.as_tensor(rows)
    if kind == "full":
        return t.permute(0, 3, 1, 2).flip(1).to(torch.float32, memory_format=torch.contiguous_format)
    if kind != "crop":
        raise CamimError(f"unknown row kind {kind!r}")
    if t.device.type != "cpu":
        return crop_lookup(t)
    x = t.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    x.div_(255.0).sub_(mean).div_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    return x


def crop_lookup(t: torch.Tensor) -> torch.Tensor:
    """Crop rows (N, S, S, 3) uint8 -> (N, 3, S, S) float32 by table lookup, on ``t``'s device.

    A GPU divides by a Python scalar as a multiplication by its reciprocal, one bit off the processor's
    division for about half of the byte values; the table holds the CPU's (the processor's) value of every
    (channel, byte) pair, so the lookup is exact by construction. One gather, no host synchronisation after
    the table's first copy to the device."""
    table, offsets = _crop_table(t.device)
    return table[t.int() + offsets].permute(0, 3, 1, 2).contiguous()


@functools.lru_cache(maxsize=16)
def _crop_table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(3 * 256,) float32 values of ``to_pixels(..., "crop")`` on the CPU, and the channel offsets (3,) int32,
    both on ``device`` (made once per device, outside inference mode: they outlive the call)."""
    with torch.inference_mode(False), torch.no_grad():
        every_byte = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, 1, 256, 3).contiguous()
        table = to_pixels(every_byte, "crop").reshape(3, 256)  # (1, 3, 1, 256): table[channel, byte]
        offsets = torch.arange(3, dtype=torch.int32) * 256
        return table.reshape(-1).to(device), offsets.to(device)


# ---------------------------------------------------------------------------------------- build
def _prepare(spec: ImageCacheSpec, position: int, ex: Any) -> dict[str, Any]:
    """One example -> {modality: (kind, uint8) | None | [(kind, uint8), ...]} (runs in loader workers)."""
    size = spec.image_size
    full = stretch_uint8 if spec.full_image_geometry == "stretch" else crop_uint8
    out: dict[str, Any] = {"position": position, "index": ex.index, "img_id": ex.img_id}
    for name in ("image", "generated_image"):
        img = getattr(ex, name)
        out[name] = None if img is None else (spec.full_kind, full(img, size))
    for name in ("objects", "generated_objects"):
        crops = getattr(ex, name)
        out[name] = None if crops is None else [("crop", crop_uint8(c, size)) for c in crops]
    return out


class _Prepare:
    def __init__(self, dataset: Any, spec: ImageCacheSpec):
        self.dataset, self.spec = dataset, spec

    def __call__(self, positions: list[int]) -> list[dict[str, Any]]:
        return [_prepare(self.spec, p, self.dataset[p]) for p in positions]


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt cache index: {exc.msg}", path, exc.lineno) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"not a {FORMAT} index", path)
    missing = [k for k in ("spec", "modalities", "kinds", "crc", "digests", "samples") if k not in index]
    if missing or len(index["kinds"]) != len(index["crc"]):
        raise DataError(f"incomplete cache index (missing {missing} or rows/CRC count mismatch)", path)
    return index


class ImageCache:
    """A built (or partly built) cache folder; ``rows(ids)`` reads uint8 rows through a memory map."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.index_path = self.directory / "index.json"
        self.data_path = self.directory / "pixels.u8"
        if not self.index_path.is_file():
            raise DataError("no image cache here (index.json missing)", self.directory)
        self.index = _read_index(self.index_path)
        self.spec = ImageCacheSpec(**self.index["spec"])
        s = self.spec.image_size
        self.row_shape = (s, s, 3)
        self.row_bytes = s * s * 3
        n = len(self.index["kinds"])
        size = self.data_path.stat().st_size if self.data_path.is_file() else 0
        if size < n * self.row_bytes:
            raise DataError(f"cache data truncated: {size} bytes for {n} rows", self.data_path)
        self._mm: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.index["kinds"])

    @property
    def complete(self) -> bool:
        return bool(self.index.get("complete"))

    @property
    def report(self) -> dict[str, int]:
        """Counted absences met while building (missing images, empty crop lists ...)."""
        return dict(self.index.get("report", {}))

    @property
    def kinds(self) -> list[str]:
        return self.index["kinds"]

    def sample(self, position: int) -> dict[str, Any]:
        """The rows of dataset position ``position``: {modality: row | None | [rows]}."""
        rec = self.index["samples"].get(str(position))
        if rec is None:
            raise DataError(
                f"dataset position {position} is not in the cache (build it first)", self.index_path
            )
        return rec

    def _memmap(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=(len(self), *self.row_shape))
        return self._mm

    def rows(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 copies of rows ``ids``."""
        if len(self) == 0:
            return np.zeros((0, *self.row_shape), dtype=np.uint8)
        return np.array(self._memmap()[np.asarray(ids, dtype=np.int64)])

    def pixels(self, ids: list[int]) -> torch.Tensor:
        """Float pixel tensors of rows ``ids`` (each converted by its own row kind)."""
        raw = self.rows(ids)
        kinds = [self.kinds[i] for i in ids]
        out = torch.empty(len(ids), 3, *self.row_shape[:2], dtype=torch.float32)
        for kind in set(kinds):
            sel = [j for j, k in enumerate(kinds) if k == kind]
            out[sel] = to_pixels(raw[sel], kind)
        return out

    def verify(self) -> list[str]:
        """Recompute every row's CRC32; returns a list of problems (empty = intact)."""
        problems = []
        mm = self._memmap() if len(self) else None
        for row, crc in enumerate(self.index["crc"]):
            if zlib.crc32(mm[row].tobytes()) != crc:
                problems.append(f"{self.data_path}: row {row} fails its CRC32 check")
        return problems

    def __getstate__(self) -> dict:  # memmaps are reopened in each DataLoader worker
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    # ------------------------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        dataset: Any,
        directory: str | Path,
        spec: ImageCacheSpec,
        num_workers: int = 0,
        batch_size: int = 16,
        commit_every: int = 256,
        stop_after: int | None = None,
        progress: bool | None = False,
    ) -> ImageCache:
        """Cache the image modalities of ``dataset`` (an ``MNREDataset`` loading some of them).

        Resumes an interrupted build and adds positions missing from an earlier one; ``stop_after`` stops
        after that many newly cached samples (used to test resumption). Samples are read through the
        dataset, so its fallbacks (``on_missing``) apply; absent images are recorded and counted. ``progress``:
        ``None`` a bar on a terminal and a line every 30 s in a log (``camim cache-images``), ``False`` none.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with (
            open(directory / "build.lock", "ab") as lock,
            flocked(lock.fileno()),
        ):  # runs side by side (--jobs)
            return cls._build(
                dataset, directory, spec, num_workers, batch_size, commit_every, stop_after, progress
            )

    @classmethod
    def _build(
        cls, dataset, directory: Path, spec, num_workers, batch_size, commit_every, stop_after, progress
    ):
        """:meth:`build` while holding the directory's lock: the index is read after the wait, so a run that
        waited for another's build finds it complete and adds nothing."""
        index_path, data_path = directory / "index.json", directory / "pixels.u8"
        modalities = [m for m in IMAGE_MODALITIES if m in getattr(dataset, "modalities", IMAGE_MODALITIES)]
        if not modalities:
            raise CamimError("the dataset loads no image modality; nothing to cache")
        index = _open_index(index_path, spec, modalities)
        row_bytes = spec.image_size**2 * 3
        _truncate_to_committed(data_path, len(index["kinds"]), row_bytes)
        pending = [p for p in range(len(dataset)) if str(p) not in index["samples"]]
        report = Counter(index["report"])
        loader = torch.utils.data.DataLoader(
            pending, batch_size=batch_size, num_workers=num_workers, collate_fn=_Prepare(dataset, spec)
        )
        done = 0
        full_disk = no_space_is_an_error(
            data_path, "the rows committed before are intact; the build resumes there"
        )
        with full_disk, open(data_path, "r+b") as fh, progress_display(len(pending), f"caching {directory.name}",
                                                                      "sample", enabled=progress) as shown:  # fmt: skip
            fh.seek(len(index["kinds"]) * row_bytes)
            rows = _RowWriter(fh, index)
            for item in (item for items in loader for item in items):
                shown.update(1)
                index["samples"][str(item["position"])] = _sample_record(item, modalities, rows, report)
                done += 1
                if done % commit_every == 0:
                    cls._commit(fh, index, report, index_path)
                if stop_after is not None and done >= stop_after:
                    cls._commit(fh, index, report, index_path)
                    return cls(directory)
            index["complete"] = len(index["samples"]) >= len(dataset)
            cls._commit(fh, index, report, index_path)
        return cls(directory)

    @staticmethod
    def _commit(fh, index: dict, report: Counter, index_path: Path) -> None:
        fh.flush()
        os.fsync(fh.fileno())
        index["report"] = dict(report)
        atomic_write_text(index_path, json.dumps(index))


def _open_index(index_path: Path, spec: ImageCacheSpec, modalities: list[str]) -> dict:
    """The index of the cache being built: the committed one (same spec and modalities, else refused) or a
    new empty one."""
    if not index_path.is_file():
        return {"format": FORMAT, "spec": asdict(spec), "modalities": modalities, "kinds": [], "crc": [],
                "digests": {}, "samples": {}, "report": {}, "complete": False}  # fmt: skip
    index = _read_index(index_path)
    if index["spec"] != asdict(spec):
        raise CamimError(
            f"{index_path}: cache built with {index['spec']}, asked for {asdict(spec)}; use another folder"
        )
    if index["samples"] and set(modalities) != set(index["modalities"]):
        raise CamimError(
            f"{index_path}: cache holds {index['modalities']}, the dataset loads {modalities}; "
            "load the same image modalities or use another folder"
        )
    index["modalities"] = modalities
    return index


def _truncate_to_committed(data_path: Path, n_rows: int, row_bytes: int) -> None:
    """Drop the rows written after the last commit (an interrupted build); a file shorter than its committed
    rows is refused."""
    with open(data_path, "ab"):
        pass
    if data_path.stat().st_size < n_rows * row_bytes:
        raise DataError(
            f"cache data truncated below its {n_rows} committed rows; delete the folder", data_path
        )
    os.truncate(data_path, n_rows * row_bytes)


class _RowWriter:
    """Appends pixel rows to the data file, each distinct (kind, pixels) once: a repeated image (MNRE reuses
    an image for every entity pair of its post) gets the row of its first copy."""

    def __init__(self, fh, index: dict):
        self.fh, self.index = fh, index

    def add(self, kind: str, arr: np.ndarray) -> int:
        raw = arr.tobytes()
        digest = hashlib.blake2b(kind.encode() + raw, digest_size=16).hexdigest()
        row = self.index["digests"].get(digest)
        if row is None:
            row = len(self.index["kinds"])
            self.fh.write(raw)
            self.index["kinds"].append(kind)
            self.index["crc"].append(zlib.crc32(raw))
            self.index["digests"][digest] = row
        return row


def _sample_record(item: dict, modalities: list[str], rows: _RowWriter, report: Counter) -> dict[str, Any]:
    """One sample's index entry: the row (or rows, for object crops) of each modality; absent images are
    ``None``, counted as ``missing_<modality>``."""
    rec: dict[str, Any] = {"index": item["index"], "img_id": item["img_id"]}
    for m in modalities:
        value = item[m]
        if value is None:
            report[f"missing_{m}"] += 1
            rec[m] = None
        elif isinstance(value, list):
            rec[m] = [rows.add(k, a) for k, a in value]
        else:
            rec[m] = rows.add(*value)
    return rec


def open_or_build(dataset: Any, directory: str | Path, spec: ImageCacheSpec, **kwargs: Any) -> ImageCache:
    """The cache in ``directory``, built or completed first when some dataset position is missing."""
    directory = Path(directory)
    if (directory / "index.json").is_file():
        cache = ImageCache(directory)
        if cache.complete and len(cache.index["samples"]) == len(dataset):
            return cache
    return ImageCache.build(dataset, directory, spec, **kwargs)

"""A full disk corrupts nothing (issue 29 §4): a write that fails with ENOSPC ends with one line naming the file
and "no space left", and every earlier output is intact (atomic writes, whole JSONL lines), in the run folder,
the caches and the JSONL logs.

Where the machine lets a test mount a small tmpfs (root), the disk really fills up; the JSONL and atomic-write
cases also run everywhere with a writer that fails as a full disk does.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.speed.conftest import dataset
from tests.speed.conftest import world as world  # noqa: F401 - the speed tests' small drawn world (a fixture)
from tests.training.conftest import TINY, write_tiny_mnre

import camim.io
from camim.errors import CamimError
from camim.io import JsonlLog, atomic_write_text


class SmallDisk:
    """A tmpfs of ``kb`` kilobytes mounted at ``path`` (unmounted by the fixture)."""

    def __init__(self, path: Path, kb: int):
        self.path = path
        path.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(path)], capture_output=True
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")

    def grow(self, kb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kb}k", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    disks: list[SmallDisk] = []

    def make(kb: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", kb))
        return disks[-1]

    yield make
    for disk in disks:
        subprocess.run(["umount", str(disk.path)], capture_output=True)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_jsonl_append_that_finds_no_space_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    log = JsonlLog(tmp_path / "c.jsonl")
    log.append([{"img_id": "a", "text": "first"}])
    before = log.path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(
        camim.io.os, "write", lambda fd, data: real_write(fd, data[:3])
    )  # a full disk took 3 bytes
    with pytest.raises(
        CamimError, match=r"c\.jsonl: no space left on device; the lines appended before are intact"
    ):
        log.append([{"img_id": "b", "text": "second"}])
    assert log.path.read_bytes() == before  # the torn part is cut off again
    monkeypatch.undo()
    log.append([{"img_id": "b", "text": "second"}])
    assert [v for _, v in JsonlLog(log.path).read()] == [
        {"img_id": "a", "text": "first"},
        {"img_id": "b", "text": "second"},
    ]


def test_an_atomic_write_that_finds_no_space_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, '{"f1": 1}')
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode:
            handle.write = _no_space
        return handle

    monkeypatch.setattr(camim.io, "open", full_open, raising=False)  # the module's own writes only
    with pytest.raises(CamimError, match=r"metrics\.json: no space left on device; not written"):
        atomic_write_text(target, '{"f1": 2}')
    assert target.read_text() == '{"f1": 1}' and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json"
    ]


def test_a_full_tmpfs_stops_writes_with_one_line_and_keeps_what_was_there(small_disk):
    disk = small_disk(64)
    atomic_write_text(disk.path / "config.yaml", "name: x\n")
    with pytest.raises(CamimError, match=r"big\.txt: no space left on device; not written"):
        atomic_write_text(disk.path / "big.txt", "x" * 200_000)
    log = JsonlLog(disk.path / "answers.jsonl")
    with pytest.raises(CamimError, match=r"answers\.jsonl: no space left on device"):
        for i in range(10_000):
            log.append([{"img_id": str(i), "text": "a caption " * 20}])
    lines = (disk.path / "answers.jsonl").read_text().splitlines()
    assert lines and all(
        json.loads(line)["img_id"] == str(i) for i, line in enumerate(lines)
    )  # whole lines only
    assert (disk.path / "config.yaml").read_text() == "name: x\n"
    assert not [p for p in disk.path.iterdir() if p.name.endswith(".tmp")]


def test_camim_train_on_a_full_disk_says_so_in_one_line_and_resumes_once_there_is_space(small_disk, tmp_path):
    data = write_tiny_mnre(tmp_path / "mnre")
    sets = [x for o in TINY for x in ("--set", o)]
    reference = tmp_path / "reference"
    cmd = [sys.executable, "-m", "camim", "train", "--config", "offline-bert", "--data-dir", str(data)]
    assert subprocess.run([*cmd, "--output", str(reference), *sets], capture_output=True).returncode == 0
    disk = small_disk(400)  # the run's first checkpoint does not fit
    run = disk.path / "run"
    full = subprocess.run([*cmd, "--output", str(run), *sets], capture_output=True, text=True, timeout=300)
    assert full.returncode == 1
    assert full.stderr.splitlines() == [
        f"camim: error: {run}/checkpoints/last.ckpt: no space left on device; not written: the file is as it was "
        "before (or absent)"
    ]
    assert "offline_encoder" in (run / "config.yaml").read_text()  # the outputs before it are whole
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    disk.grow(20_000)
    again = subprocess.run([*cmd, "--output", str(run), *sets], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in (reference, run)]
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["val"] == metrics[1]["val"]


def test_the_image_cache_on_a_full_disk_keeps_its_committed_rows_and_resumes(small_disk, world):
    from camim.speed.image_cache import ImageCache, ImageCacheSpec

    disk = small_disk(160)
    ds = dataset(world)
    with pytest.raises(CamimError, match=r"no space left on device"):
        ImageCache.build(ds, disk.path / "cache", ImageCacheSpec(64, "stretch"), commit_every=2)
    disk.grow(20_000)
    cache = ImageCache.build(ds, disk.path / "cache", ImageCacheSpec(64, "stretch"), commit_every=2)
    assert cache.complete and cache.verify() == []

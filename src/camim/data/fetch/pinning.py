"""The pinned file list of the CAMIM release (``camim/resources/mnre_files.json``): every file's relative
path, sha256 and size; reading and validating it, and pinning a folder (how the packaged list was made).
Also the small helpers the fetch steps share (progress messages)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from camim.errors import DataError
from camim.io import atomic_write_text

MANIFEST_RESOURCE = "mnre_files.json"
DEFAULT_REPOSITORY = "zefanZhang-cn/CAMIM"
DEFAULT_COMMIT = "df328a3948426007cfc93b0ece7f7a14212b0988"
DEFAULT_BASE_PATH = "CAMIM/data"
RAW_URL_TEMPLATE = "https://raw.githubusercontent.com/{repository}/{commit}/{base_path}/"
CHUNK_BYTES = 1 << 16

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[str], None]


def say_on_stderr(message: str) -> None:
    """The default progress sink of the fetch steps."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PinnedFile:
    """One file of the release: ``path`` relative to ``CAMIM/data`` (POSIX), its sha256 and size in bytes."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The pinned file list of a release and where its raw files live."""

    files: tuple[PinnedFile, ...]
    repository: str = DEFAULT_REPOSITORY
    commit: str = DEFAULT_COMMIT
    base_path: str = DEFAULT_BASE_PATH

    @property
    def default_source(self) -> str:
        """Base URL of the raw files at the pinned commit (a file's URL is this plus its relative path)."""
        return RAW_URL_TEMPLATE.format(
            repository=self.repository, commit=self.commit, base_path=self.base_path
        )

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def check_relpath(relpath: str, where: str | None = None) -> str:
    """Return ``relpath`` if it is a safe relative POSIX path (no absolute path, drive, ``..`` or ``\\``)."""
    parts = relpath.replace("\\", "/").split("/")
    if (
        not relpath
        or "\\" in relpath
        or relpath.startswith("/")
        or re.match(r"^[A-Za-z]:", relpath)
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise DataError(f"unsafe relative path {relpath!r}", where)
    return relpath


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    """Read a pinned file list (default: the packaged ``camim/resources/mnre_files.json``) and validate it."""
    if path is None:
        ref = resources.files("camim") / "resources" / MANIFEST_RESOURCE
        where, text = f"camim/resources/{MANIFEST_RESOURCE}", ref.read_text(encoding="utf-8")
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot read pinned file list: {exc.strerror or exc}", where) from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", where, exc.lineno) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("files"), list):
        raise DataError('expected an object with a "files" list', where)
    files = []
    seen = set()
    for i, entry in enumerate(raw["files"]):
        if not isinstance(entry, dict) or set(entry) < {"path", "sha256", "size"}:
            raise DataError(f"files[{i}]: expected {{path, sha256, size}}", where)
        relpath, digest, size = entry["path"], entry["sha256"], entry["size"]
        if not isinstance(relpath, str):
            raise DataError(f"files[{i}]: path must be a string", where)
        check_relpath(relpath, where)
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise DataError(f"files[{i}] ({relpath}): sha256 must be 64 lower-case hex digits", where)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DataError(f"files[{i}] ({relpath}): size must be a non-negative integer", where)
        if relpath in seen:
            raise DataError(f"files[{i}]: {relpath} listed twice", where)
        seen.add(relpath)
        files.append(PinnedFile(relpath, digest, size))
    return Manifest(
        files=tuple(files),
        repository=str(raw.get("repository", DEFAULT_REPOSITORY)),
        commit=str(raw.get("commit", DEFAULT_COMMIT)),
        base_path=str(raw.get("base_path", DEFAULT_BASE_PATH)),
    )


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pin_folder(folder: str | os.PathLike, exclude: tuple[str, ...] = ("README.md",)) -> list[PinnedFile]:
    """Pin every file under ``folder`` (sorted relative paths), leaving out the top-level names in ``exclude``.

    This is how ``mnre_files.json`` was made from a copy of ``CAMIM/data`` at the pinned commit (the
    top-level README.md of that copy is not part of the release).
    """
    root = Path(folder)
    pinned = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relpath = path.relative_to(root).as_posix()
        if relpath in exclude:
            continue
        pinned.append(PinnedFile(relpath, sha256_of(path), path.stat().st_size))
    return pinned


def write_manifest(files: list[PinnedFile], out: str | os.PathLike, **meta: str) -> None:
    """Write a pinned file list as JSON (``meta`` overrides repository/commit/base_path)."""
    head = {
        "dataset": "mnre",
        "repository": meta.get("repository", DEFAULT_REPOSITORY),
        "commit": meta.get("commit", DEFAULT_COMMIT),
        "base_path": meta.get("base_path", DEFAULT_BASE_PATH),
    }
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    rows = [json.dumps({"path": f.path, "sha256": f.sha256, "size": f.size}) for f in files]
    body = ",\n".join(f"    {row}" for row in rows)
    atomic_write_text(out, "{\n" + "\n".join(lines) + '\n  "files": [\n' + body + "\n  ]\n}\n")

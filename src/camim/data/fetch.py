"""``camim data fetch mnre``: download the MNRE text, labels, captions and auxiliary files of the CAMIM
release, verified against pinned sha256 sums, and hand in the images in the released folder layout.

Every file of the authors' ``CAMIM/data`` folder at commit df328a3 is pinned in
``camim/resources/mnre_files.json`` (relative path, sha256, size). A download goes to ``<file>.part``,
resumes from there with an HTTP ``Range`` request after an interruption, and is renamed into place only
once its checksum matches; a mismatch removes the partial file and raises :class:`CamimError`.

The images are not in that repository (see ``docs/data.md`` for where each kind comes from). They are
handed in with ``--images ARCHIVE_OR_DIR`` and placed into the released layout::

    img_org/{split}/<img_id>            MNRE original images
    img_vg/{split}/crops/<crop>         HVPNeT/MKGformer visual-grounding crops of the original image
    diffusion_pic/{split}/<img_id>      TMR generated ("translation") images

Archives are extracted safely: members with absolute paths, ``..`` components or links leading out of the
destination are refused before anything is written.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO

from camim import __version__
from camim.errors import CamimError, DataError

MANIFEST_RESOURCE = "mnre_files.json"
DEFAULT_REPOSITORY = "zefanZhang-cn/CAMIM"
DEFAULT_COMMIT = "df328a3948426007cfc93b0ece7f7a14212b0988"
DEFAULT_BASE_PATH = "CAMIM/data"
RAW_URL_TEMPLATE = "https://raw.githubusercontent.com/{repository}/{commit}/{base_path}/"

CHUNK_BYTES = 1 << 16
IMAGE_KINDS = ("img_org", "img_vg", "diffusion_pic")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
# Larger members are refused: MNRE photos are a few MB, crops and 768 px generated images far less.
DEFAULT_MAX_IMAGE_BYTES = 100 * 1024 * 1024

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Interruptions after which a transfer is retried (resuming from the ``.part`` file).
_TRANSIENT = (http.client.IncompleteRead, http.client.HTTPException, ConnectionError, TimeoutError, OSError)

Progress = Callable[[str], None]


class _TransientHTTPError(ConnectionError):
    """An HTTP 5xx/429 answer: retried like a dropped connection."""


class _RangeNotSatisfiable(CamimError):
    """HTTP 416 to a resume request: the partial file cannot be a prefix of what the server has."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------
# The pinned list
# --------------------------------------------------------------------------------------------------------


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


def _check_relpath(relpath: str, where: str | None = None) -> str:
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
        _check_relpath(relpath, where)
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
    Path(out).write_text(
        "{\n" + "\n".join(lines) + '\n  "files": [\n' + body + "\n  ]\n}\n", encoding="utf-8"
    )


# --------------------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------------------


@dataclass
class FileResult:
    """What happened to one pinned file: ``present`` (already there, checksum ok), ``downloaded``,
    ``resumed`` (continued from a ``.part`` file) or ``replaced`` (an existing copy had a wrong checksum)."""

    path: str
    status: str
    bytes_transferred: int = 0


@dataclass
class FetchReport:
    """Result of :func:`fetch_mnre`; ``files`` in pinned-list order."""

    dest: Path
    source: str
    files: list[FileResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def bytes_transferred(self) -> int:
        return sum(f.bytes_transferred for f in self.files)

    def summary(self) -> str:
        counts = Counter(f.status for f in self.files)
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return (
            f"{len(self.files)} files in {self.dest} ({parts}; {_human(self.bytes_transferred)} transferred)"
        )


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


class _Source:
    """Where pinned files are read from: a base URL (http/https) or a local folder."""

    def __init__(self, source: str):
        self.text = source
        parsed = urllib.parse.urlparse(source)
        if parsed.scheme in ("http", "https"):
            self.base_url: str | None = source if source.endswith("/") else source + "/"
            self.folder: Path | None = None
        else:
            folder = (
                Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(source)
            )
            if not folder.is_dir():
                raise CamimError(f"--source {source}: not an http(s) URL or an existing folder")
            self.base_url, self.folder = None, folder

    def describe(self, relpath: str) -> str:
        if self.base_url is not None:
            return self.base_url + urllib.parse.quote(relpath)
        return str(self.folder / relpath)

    def open(self, relpath: str, start: int, timeout: float) -> tuple[IO[bytes], int]:
        """Open ``relpath`` at byte ``start``; returns the stream and the offset it actually starts from
        (0 when a server ignores the Range request)."""
        if self.folder is not None:
            path = self.folder / relpath
            try:
                fh = open(path, "rb")
            except FileNotFoundError as exc:
                raise CamimError(f"{relpath}: not found in --source folder ({path})") from exc
            fh.seek(start)
            return fh, start
        headers = {"User-Agent": f"camim/{__version__}", "Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        request = urllib.request.Request(self.describe(relpath), headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:  # server-side trouble: worth retrying
                raise _TransientHTTPError(f"HTTP {exc.code} {exc.reason}") from exc
            if exc.code == 416:  # the server has no more bytes than our partial file
                raise _RangeNotSatisfiable(
                    f"{relpath}: {self.describe(relpath)} is shorter than {start} bytes"
                ) from exc
            raise CamimError(
                f"{relpath}: HTTP {exc.code} {exc.reason} from {self.describe(relpath)}"
            ) from exc
        if start and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                response.close()
                raise CamimError(
                    f"{relpath}: server answered Range {start}- with Content-Range {content_range!r}"
                )
            return response, start
        return response, 0


def _progress_bar(total: int, initial: int, desc: str):
    """A byte progress bar on interactive terminals (tqdm disables itself when stderr is not a TTY)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        disable=None,
        file=sys.stderr,
    )


def _fetch_one(pinned: PinnedFile, dest: Path, source: _Source, timeout: float, moved: list[int]) -> bool:
    """Transfer one file into ``<dest>/<path>.part`` (resuming it), verify, and rename it into place.

    Adds the bytes transferred to ``moved[0]`` as they arrive and returns whether a partial file was
    resumed. Raises :class:`CamimError` on a checksum or size mismatch (after removing the partial file) and
    lets transient network errors through, keeping the partial file for the next attempt.
    """
    final = dest / pinned.path
    part = final.with_name(final.name + ".part")
    final.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    if start > pinned.size:  # cannot be a prefix of the pinned file
        part.unlink()
        start = 0
    digest = hashlib.sha256()
    if start:
        with open(part, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    resumed, too_long, written = False, False, start
    if start < pinned.size or pinned.size == 0:
        try:
            stream, offset = source.open(pinned.path, start, timeout)
        except _RangeNotSatisfiable as exc:
            part.unlink(missing_ok=True)
            raise CamimError(f"{exc}; partial file removed, nothing written") from exc
        with stream:
            if offset != start:  # the server ignored the Range request: start over
                digest, start = hashlib.sha256(), 0
            resumed = start > 0
            written = start
            with (
                open(part, "ab" if start else "wb") as out,
                _progress_bar(pinned.size, start, pinned.path) as bar,
            ):
                while chunk := stream.read(CHUNK_BYTES):
                    written += len(chunk)
                    if written > pinned.size:
                        too_long = True  # cannot match the pinned file; stop reading
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    moved[0] += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        if source.base_url is not None and written < pinned.size:
            # http.client returns b"" when a connection drops before Content-Length: keep the partial
            # file and let the caller retry with a Range request.
            raise http.client.IncompleteRead(b"", pinned.size - written)
    size = part.stat().st_size
    got = digest.hexdigest()
    if too_long or size != pinned.size or got != pinned.sha256:
        part.unlink(missing_ok=True)
        where = source.describe(pinned.path)
        if too_long:
            problem = f"longer than the pinned {pinned.size} bytes"
        elif size != pinned.size:  # a stream that ended early without an error (e.g. a short local file)
            problem = f"{size} bytes, expected {pinned.size}"
        else:
            problem = f"checksum mismatch (sha256 {got[:16]}..., expected {pinned.sha256[:16]}...)"
        raise CamimError(f"{pinned.path}: {problem} from {where}; partial file removed, nothing written")
    os.replace(part, final)
    return resumed


def fetch_mnre(
    dest: str | os.PathLike,
    source: str | None = None,
    *,
    manifest: Manifest | None = None,
    retries: int = 3,
    retry_wait: float = 1.0,
    timeout: float = 60.0,
    progress: Progress | None = _stderr,
) -> FetchReport:
    """Fetch every pinned file into ``dest`` (the equivalent of ``CAMIM/data``) and verify its sha256.

    ``source``: a base URL (a mirror of ``CAMIM/data``) or a local folder; default: raw GitHub URLs at the
    pinned commit. ``manifest``: the pinned list (default: the packaged one). Files already present with the
    right checksum are skipped; an interrupted transfer is retried ``retries`` times, resuming from its
    ``.part`` file with a Range request, and the ``.part`` file is kept for the next run when all fail.
    Raises :class:`CamimError` naming the file on a checksum mismatch, an HTTP error or a missing file.
    """
    manifest = manifest if manifest is not None else load_manifest()
    dest = Path(dest)
    src = _Source(source or manifest.default_source)
    say = progress or (lambda _message: None)
    dest.mkdir(parents=True, exist_ok=True)
    report = FetchReport(dest=dest, source=src.text)
    n = len(manifest.files)
    say(f"fetching {n} files ({_human(manifest.total_bytes)}) from {src.text} into {dest}")
    for i, pinned in enumerate(manifest.files, 1):
        _check_relpath(pinned.path)
        final = dest / pinned.path
        tag = f"[{i}/{n}] {pinned.path}"
        replacing = False
        if final.is_file():
            if final.stat().st_size == pinned.size and sha256_of(final) == pinned.sha256:
                report.files.append(FileResult(pinned.path, "present"))
                say(f"{tag}: present, checksum ok")
                continue
            replacing = True
            say(f"{tag}: present with a different checksum, fetching it again")
        attempt, moved, resumed_any = 0, [0], False
        while True:
            try:
                resumed_any = _fetch_one(pinned, dest, src, timeout, moved) or resumed_any
                break
            except _TRANSIENT as exc:
                part = final.with_name(final.name + ".part")
                have = part.stat().st_size if part.exists() else 0
                if attempt >= retries and isinstance(exc, urllib.error.URLError) and not have:
                    raise CamimError(
                        f"{pinned.path}: cannot reach {src.describe(pinned.path)} ({exc.reason}) after "
                        f"{attempt + 1} attempt(s); check the network or pass --source MIRROR_URL_OR_FOLDER"
                    ) from exc
                if attempt >= retries:
                    raise CamimError(
                        f"{pinned.path}: transfer from {src.describe(pinned.path)} interrupted "
                        f"({type(exc).__name__}: {exc}) after {attempt + 1} attempt(s); {have} of {pinned.size} "
                        "bytes kept in the .part file, run the command again to resume"
                    ) from exc
                attempt += 1
                say(f"{tag}: failed at {have}/{pinned.size} bytes ({type(exc).__name__}: {exc}), retrying")
                time.sleep(retry_wait * attempt)
        status = "replaced" if replacing else "resumed" if resumed_any else "downloaded"
        report.files.append(FileResult(pinned.path, status, moved[0]))
        say(f"{tag}: {status}, {_human(pinned.size)}, sha256 ok")
    say(report.summary())
    return report


# --------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------


@dataclass
class ImagesReport:
    """Result of :func:`place_images`: files placed per ``kind/split``, already present, and skipped."""

    dest: Path
    placed: Counter = field(default_factory=Counter)
    present: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def tick(self, key: str, placed: bool, say: Progress, every: int = 1000) -> None:
        """Count one image under ``key`` (``kind/split``) and report progress every ``every`` images."""
        (self.placed if placed else self.present)[key] += 1
        done = self.placed.total() + self.present.total()
        if done % every == 0:
            say(f"  {done} images ({self.placed.total()} new)")

    def summary(self) -> str:
        keys = sorted(set(self.placed) | set(self.present))
        per = ", ".join(f"{k}: {self.placed[k]} new + {self.present[k]} present" for k in keys) or "no images"
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"images in {self.dest}: {per}" + (f"; skipped {skipped}" if skipped else "")


def _split_parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _unsafe_member(name: str) -> str | None:
    """Why an archive member name is refused (absolute, drive letter, ``..``), or None if it is safe."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if ".." in norm.split("/"):
        return "path traversal ('..')"
    return None


def layout_target(name: str, kind: str = "auto") -> str | None:
    """Where an archive/folder member goes in the released layout, or None if it is not an image there.

    ``kind="auto"``: the member path must contain ``<kind>/<split>/`` with kind one of img_org, img_vg,
    diffusion_pic (any prefix, e.g. ``data/img_org/train/x.jpg`` or ``RE_data/img_vg/val/crops/y.png``).
    An explicit kind: the path must contain ``<split>/`` (e.g. ``mnre_images/train/x.jpg``).
    For img_vg the crops go to ``img_vg/<split>/crops/`` whether or not the source has a ``crops`` folder.
    """
    parts = _split_parts(name)
    if not parts or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    for i in range(len(parts) - 2, -1, -1):
        if kind == "auto":
            if parts[i] not in IMAGE_KINDS or i + 2 >= len(parts) or parts[i + 1] not in SPLITS:
                continue
            found, split, rest = parts[i], parts[i + 1], parts[i + 2 :]
        else:
            if parts[i] not in SPLITS:
                continue
            found, split, rest = kind, parts[i], parts[i + 1 :]
        if found == "img_vg" and len(rest) == 2 and rest[0] == "crops":
            rest = rest[1:]
        if len(rest) != 1:
            return None
        sub = "crops/" if found == "img_vg" else ""
        return f"{found}/{split}/{sub}{rest[0]}"
    return None


def _copy_capped(src: IO[bytes], target: Path, size: int, max_bytes: int, label: str) -> None:
    """Stream ``src`` into ``target`` via ``target.part`` (at most ``max_bytes``), then rename atomically."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with open(part, "wb") as out:
            while chunk := src.read(CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise CamimError(
                        f"{label}: larger than {_human(max_bytes)}; refused (decompression bomb?)"
                    )
                out.write(chunk)
        if size >= 0 and written != size:
            raise CamimError(f"{label}: {written} bytes read, the archive says {size}")
        os.replace(part, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise CamimError(f"{label}: cannot extract ({exc})") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise


@dataclass
class _Member:
    name: str
    size: int
    is_file: bool
    link_target: str | None = None  # for symbolic/hard links
    hard_link: bool = False


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            yield _Member(info.filename, info.file_size, False, zf.read(info).decode("utf-8", "replace"))
        else:
            yield _Member(info.filename, info.file_size, not info.is_dir())


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.issym() or info.islnk():
        return _Member(info.name, info.size, False, info.linkname, hard_link=info.islnk())
    return _Member(info.name, info.size, info.isfile())


def _link_escapes(member: str, link_target: str, from_root: bool) -> bool:
    """Whether a link member would point outside the extraction folder (symlinks resolve from the
    member's folder, tar hard links from the archive root)."""
    target = link_target.replace("\\", "/")
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        return True
    depth = 0 if from_root else len(_split_parts(member)) - 1
    for p in _split_parts(target):
        depth = depth - 1 if p == ".." else depth + 1
        if depth < 0:
            return True
    return False


def _check_members(members: list[_Member], archive: Path, max_bytes: int) -> None:
    """Refuse the whole archive before writing anything if a member could land outside the destination."""
    for m in members:
        why = _unsafe_member(m.name)
        if why is None and m.link_target is not None and _link_escapes(m.name, m.link_target, m.hard_link):
            why = f"link to {m.link_target!r} outside the destination"
        if why:
            raise CamimError(f"{archive}: member {m.name!r} refused: {why}; nothing extracted")
        if m.is_file and m.size > max_bytes and layout_target(m.name) is not None:
            raise CamimError(
                f"{archive}: member {m.name!r} is {_human(m.size)}, over {_human(max_bytes)}; refused"
            )


def _place_from_archive(
    archive: Path, dest: Path, kind: str, report: ImagesReport, max_bytes: int, say: Progress
) -> None:
    name = archive.name.lower()
    if name.endswith(".zip"):
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CamimError(f"{archive}: not a readable zip archive ({exc})") from exc
        with zf:
            members = list(_zip_members(zf))
            _check_members(members, archive, max_bytes)
            by_name = {info.filename: info for info in zf.infolist()}
            for m in members:
                if m.is_file:
                    opener = lambda m=m: zf.open(by_name[m.name])  # noqa: E731
                    _place_member(m, opener, archive, dest, kind, report, max_bytes, say)
                elif m.link_target is not None:
                    report.skipped["links"] += 1
    elif name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
        try:
            tf = tarfile.open(archive, "r:*")
            infos = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise CamimError(f"{archive}: not a readable tar archive ({exc})") from exc
        with tf:
            members = [_tar_member(info) for info in infos]
            _check_members(members, archive, max_bytes)
            for info, m in zip(infos, members):
                if m.is_file:
                    opener = lambda info=info: tf.extractfile(info)  # noqa: E731
                    _place_member(m, opener, archive, dest, kind, report, max_bytes, say)
                elif m.link_target is not None:
                    report.skipped["links"] += 1
                elif not info.isdir():
                    report.skipped["special files"] += 1
    else:
        raise CamimError(f"{archive}: unsupported archive type (use .zip, .tar.gz, .tgz, .tar or a folder)")


def _place_member(
    m: _Member,
    opener: Callable[[], IO[bytes] | None],
    archive: Path,
    dest: Path,
    kind: str,
    report: ImagesReport,
    max_bytes: int,
    say: Progress,
) -> None:
    rel = layout_target(m.name, kind)
    if rel is None:
        report.skipped["not in the image layout"] += 1
        return
    target = dest / rel
    key = "/".join(rel.split("/")[:2])
    if target.is_file() and target.stat().st_size == m.size:
        report.tick(key, False, say)
        return
    stream = opener()
    if stream is None:  # pragma: no cover - tarfile returns None only for non-regular members
        report.skipped["special files"] += 1
        return
    with stream:
        _copy_capped(stream, target, m.size, max_bytes, f"{archive}: {m.name}")
    report.tick(key, True, say)


def _place_from_folder(
    folder: Path, dest: Path, kind: str, report: ImagesReport, copy: bool, say: Progress
) -> None:
    root = folder.resolve()
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath) / filename
            rel_in_src = path.relative_to(root).as_posix()
            rel = layout_target(rel_in_src, kind)
            if rel is None:
                report.skipped["not in the image layout"] += 1
                continue
            real = path.resolve()
            if not real.is_relative_to(root) or not real.is_file():
                report.skipped["links leaving the folder"] += 1
                continue
            target = dest / rel
            key = "/".join(rel.split("/")[:2])
            if target.is_symlink() and Path(os.readlink(target)) == real:
                report.tick(key, False, say)
                continue
            if target.is_file() and not target.is_symlink() and target.stat().st_size == real.stat().st_size:
                report.tick(key, False, say)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            tmp.unlink(missing_ok=True)
            if copy:
                shutil.copyfile(real, tmp)
            else:
                os.symlink(real, tmp)
            os.replace(tmp, target)
            report.tick(key, True, say)


def place_images(
    images: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    kind: str = "auto",
    copy: bool = False,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    progress: Progress | None = _stderr,
) -> ImagesReport:
    """Place the images of an archive (.zip/.tar.gz/.tgz/.tar) or folder into ``dest`` in the released layout.

    ``kind``: ``auto`` (the source has ``img_org/``, ``img_vg/``, ``diffusion_pic/`` folders, at any depth)
    or one of those names (the source holds ``{train,val,test}/`` folders of that kind). Archive members are
    extracted (atomically, via ``.part``); folder files are symlinked, or copied with ``copy=True``. Files
    already in place with the same size are kept, so an interrupted run resumes. Members outside the layout
    are skipped and counted; unsafe archives are refused (see the module docstring).
    """
    if kind != "auto" and kind not in IMAGE_KINDS:
        raise CamimError(f"unknown image kind {kind!r}; expected auto or one of {', '.join(IMAGE_KINDS)}")
    source, dest = Path(images), Path(dest)
    say = progress or (lambda _message: None)
    if not source.exists():
        raise CamimError(f"--images {source}: no such file or folder")
    dest.mkdir(parents=True, exist_ok=True)
    report = ImagesReport(dest=dest)
    say(f"placing images from {source} into {dest} (layout: {kind})")
    if source.is_dir():
        _place_from_folder(source, dest, kind, report, copy, say)
    else:
        _place_from_archive(source, dest, kind, report, max_image_bytes, say)
    if not report.placed and not report.present:
        raise CamimError(
            f"--images {source}: no image found in the expected layout "
            "(img_org/<split>/, img_vg/<split>/crops/, diffusion_pic/<split>/; or <split>/ with --images-kind)"
        )
    say(report.summary())
    return report


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def register(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``fetch`` to the ``camim data`` sub-commands."""
    p = data_subparsers.add_parser(
        "fetch",
        help="download the MNRE text/caption/auxiliary files (sha256-verified) and place the images",
        description=(
            "Download the files of the CAMIM release (CAMIM/data at commit df328a3) into DEST, verifying each "
            "sha256, resuming interrupted downloads and skipping files already present; optionally place the "
            "images (which are hosted elsewhere, see docs/data.md) into the released layout."
        ),
    )
    p.add_argument("dataset", choices=["mnre"], help="the dataset to fetch")
    p.add_argument("--dest", required=True, help="destination folder (becomes the data dir, like CAMIM/data)")
    p.add_argument(
        "--source", default=None, help="mirror base URL or local folder (default: raw GitHub URLs)"
    )
    p.add_argument(
        "--images", default=None, metavar="ARCHIVE_OR_DIR", help="image archive or folder to place"
    )
    p.add_argument(
        "--images-kind",
        default="auto",
        choices=["auto", *IMAGE_KINDS],
        help="auto: the source has img_org/, img_vg/, diffusion_pic/ folders; else which kind its split folders hold",
    )
    p.add_argument("--copy", action="store_true", help="copy images from a folder instead of symlinking them")
    p.add_argument(
        "--images-only", action="store_true", help="only place --images, do not fetch the text files"
    )
    p.add_argument("--retries", type=int, default=3, help="retries per file after an interrupted transfer")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    if args.images_only and not args.images:
        raise CamimError("--images-only needs --images")
    if not args.images_only:
        fetch_mnre(args.dest, args.source, retries=args.retries, timeout=args.timeout)
    if args.images:
        place_images(args.images, args.dest, kind=args.images_kind, copy=args.copy)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m camim.data.fetch pin FOLDER OUT``: pin a copy of CAMIM/data (how the package list is made)."""
    parser = argparse.ArgumentParser(prog="python -m camim.data.fetch")
    sub = parser.add_subparsers(dest="command", required=True)
    pin = sub.add_parser("pin", help="write the pinned list (path, sha256, size) of a folder")
    pin.add_argument("folder")
    pin.add_argument("out")
    args = parser.parse_args(argv)
    files = pin_folder(args.folder)
    write_manifest(files, args.out)
    print(f"pinned {len(files)} files ({_human(sum(f.size for f in files))}) into {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Resumable, verified downloads of the pinned files: each goes to ``<file>.part``, resumes from there with
an HTTP ``Range`` request after an interruption, and is renamed into place only once its sha256 matches; a
mismatch removes the partial file and raises :class:`CamimError`. A local folder can stand in for the URL."""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from camim import __version__
from camim.data.fetch.pinning import (
    CHUNK_BYTES,
    Manifest,
    PinnedFile,
    Progress,
    check_relpath,
    load_manifest,
    say_on_stderr,
    sha256_of,
)
from camim.errors import CamimError
from camim.io import fsync_path, human_size

# Interruptions after which a transfer is retried (resuming from the ``.part`` file).
_TRANSIENT = (http.client.IncompleteRead, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


class _TransientHTTPError(ConnectionError):
    """An HTTP 5xx/429 answer: retried like a dropped connection."""


class _RangeNotSatisfiable(CamimError):
    """HTTP 416 to a resume request: the partial file cannot be a prefix of what the server has."""


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
        return f"{len(self.files)} files in {self.dest} ({parts}; {human_size(self.bytes_transferred)} transferred)"


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
    fsync_path(part)  # verified: on disk before its final name says the download is done
    os.replace(part, final)
    fsync_path(final.parent)
    return resumed


def fetch_mnre(
    dest: str | os.PathLike,
    source: str | None = None,
    *,
    manifest: Manifest | None = None,
    retries: int = 3,
    retry_wait: float = 1.0,
    timeout: float = 60.0,
    progress: Progress | None = say_on_stderr,
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
    say(f"fetching {n} files ({human_size(manifest.total_bytes)}) from {src.text} into {dest}")
    for i, pinned in enumerate(manifest.files, 1):
        check_relpath(pinned.path)
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
        say(f"{tag}: {status}, {human_size(pinned.size)}, sha256 ok")
    say(report.summary())
    return report

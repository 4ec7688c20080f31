"""Shared file I/O: strict text and JSON reading, atomic writes, short hashes, the append-only JSONL log
that long jobs resume from, and the safe image opener. Everything here raises :class:`camim.errors.CamimError`
(mostly :class:`~camim.errors.DataError`) with the file, and the line where there is one, in the message.

This module sits just above ``camim.errors``: it imports nothing else of camim, so every layer can use it.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from camim.errors import CamimError, DataError, ImageError

try:  # POSIX only; elsewhere a single writer per file is assumed.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ reading
DEFAULT_ENCODING = "utf-8"


def check_encoding(encoding: str) -> str:
    """The codec name of ``encoding``; ``CamimError`` when unknown or not line-compatible with ASCII (lines
    are split on the byte ``\\n``, so UTF-16/32 files must be converted first)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise CamimError(f"unknown text encoding {encoding!r}") from None
    try:
        ascii_compatible = "\n{}:'\"".encode(name) == b"\n{}:'\""
    except (UnicodeError, LookupError):
        ascii_compatible = False
    if not ascii_compatible:
        raise CamimError(
            f"text encoding {encoding!r} is not ASCII-compatible; convert the file to UTF-8 first"
        )
    return name


def _decode(raw: bytes, path: Path, codec: str, line: int | None) -> str:
    if codec == "utf-8" and line in (None, 1) and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        start = raw.rfind(b"\n", 0, exc.start) + 1
        lineno = (line or 1) + raw.count(b"\n", 0, exc.start)
        label = "UTF-8" if codec == DEFAULT_ENCODING else codec
        hint = "; for a legacy file name its encoding with --encoding" if codec == DEFAULT_ENCODING else ""
        raise DataError(
            f"not {label} text: undecodable byte 0x{raw[exc.start : exc.start + 1].hex()} at byte "
            f"{exc.start - start + 1} of the line ({exc.reason}{hint})",
            path,
            lineno,
        ) from None


def decode_text(
    raw: bytes, path: str | Path, encoding: str = DEFAULT_ENCODING, line: int | None = None
) -> str:
    """``raw`` (a whole file, or its line ``line``) decoded strictly, a leading UTF-8 byte-order mark dropped;
    ``DataError`` naming the file and the line of the first undecodable byte."""
    return _decode(raw, Path(path), check_encoding(encoding), line)


def iter_lines(path: str | Path, encoding: str = DEFAULT_ENCODING) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines of a text file, decoded strictly as ``encoding``
    (UTF-8 with an optional byte-order mark by default); ``DataError`` naming file and line when a line does
    not decode, or when the file is missing or unreadable."""
    path = Path(path)
    codec = check_encoding(encoding)
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = _decode(raw, path, codec, lineno)
                if line.strip():
                    yield lineno, line.replace("\r\n", "\n")
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a folder, not a file", path) from None


def read_json(path: str | Path, encoding: str = DEFAULT_ENCODING) -> object:
    """The JSON value in ``path``; DataError (with the line of a syntax error or of an undecodable byte)
    when missing or invalid."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a folder, not a file", path) from None
    text = _decode(raw, path, check_encoding(encoding), None)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg} (column {exc.colno})", path, exc.lineno) from None


def read_jsonl(path: str | Path, encoding: str = DEFAULT_ENCODING) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line (strict decoding as :func:`iter_lines`);
    ``DataError`` naming the file and the line of the first line that is not JSON or not an object. For a
    finished file read whole; a log that may end in a torn line is read with :class:`JsonlLog`."""
    rows = []
    for lineno, line in iter_lines(path, encoding):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg} (column {exc.colno})", path, lineno) from None
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path, lineno)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ a full disk
#: the errors of a write that found no room: the device is full, or the user's quota is spent
NO_SPACE = frozenset(
    e for e in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None)) if e is not None
)


def no_space_message(path: str | Path | None, kept: str) -> str:
    """``<path>: no space left on device; <kept>``: the one line a full disk gives."""
    return f"{path}: no space left on device; {kept}" if path else f"no space left on device; {kept}"


@contextmanager
def no_space_is_an_error(path: str | Path, kept: str | Callable[[], str]) -> Iterator[None]:
    """A write inside that fails for want of space (:data:`NO_SPACE`) ends as one ``CamimError`` naming
    ``path`` and saying what was kept (``kept``, or what it returns then), instead of an ``OSError`` traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise CamimError(no_space_message(path, kept if isinstance(kept, str) else kept())) from None
        raise


# --------------------------------------------------------------------------------------------- failpoints
#: the test hook naming where a process kills itself (docs/architecture.md, "Failpoints"); not a user setting
FAILPOINT_ENV = "CAMIM_FAILPOINT"
_failpoint_spec: tuple[str, dict[str, int]] | None = None  # (the variable's value, name -> N), parsed once
_failpoint_hits: dict[str, int] = {}  # name -> times this process reached it
_failpoint_lock = threading.Lock()


def failpoint(name: str, before_kill: Callable[..., object] | None = None, *args: object) -> None:
    """A named point where a test can SIGKILL this process (in the style of etcd's gofail and FoundationDB's
    buggify). Nothing happens unless the environment variable ``CAMIM_FAILPOINT`` names the point as
    ``name:N`` (several separated by commas): the N-th time this process reaches it, ``before_kill(*args)``
    runs (e.g. writes half a line) and the process kills itself. Unset, it costs one environment lookup."""
    spec = os.environ.get(FAILPOINT_ENV)
    if spec:
        _failpoint_reached(spec, name, before_kill, args)


def _failpoint_reached(spec: str, name: str, before_kill: Callable[..., object] | None, args: tuple) -> None:
    global _failpoint_spec
    if _failpoint_spec is None or _failpoint_spec[0] != spec:
        _failpoint_spec = (spec, _parse_failpoints(spec))
    target = _failpoint_spec[1].get(name)
    if target is None:
        return
    with _failpoint_lock:
        _failpoint_hits[name] = reached = _failpoint_hits.get(name, 0) + 1
    if reached != target:
        return
    if before_kill is not None:
        before_kill(*args)
    os.write(2, f"camim: failpoint {name}:{target} reached: SIGKILL\n".encode())
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _parse_failpoints(spec: str) -> dict[str, int]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.rpartition(":")
        if not name or not count.isdigit() or int(count) < 1:
            raise CamimError(f"{FAILPOINT_ENV}: {item!r} is not name:N (N >= 1)")
        points[name] = int(count)
    return points


# ------------------------------------------------------------------------------------------ atomic writes
@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed onto ``path`` when the block ends normally and
    removed when it raises, so readers never see a half-written file. The parent folder is created.

    Durable beyond SIGKILL: the file is flushed to disk (``fsync``) before the rename and its folder after
    it, so that after a power loss ``path`` holds the whole new file or what it held before. Without that a
    first-time file can come back empty (ext4 and XFS flush before a rename only over an existing file), and
    an empty ``metrics.json`` or ``last.ckpt`` would mark work finished or break its resume.

    The name is unique per call (``.<name>.<pid>@<host>.<random>.tmp``: the writer's process id and host,
    and a random part), so concurrent writers (e.g. DDP ranks, runs on two nodes) never share one; the file
    gets the usual permissions (it is created by the caller, not ``mkstemp``). The first write of a process
    into a folder removes the temporaries that killed writers left there (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    with no_space_is_an_error(path, "not written: the file is as it was before (or absent)"):
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.path.abspath(path.parent)
        if folder not in _swept_folders:
            _swept_folders.add(folder)
            remove_stale_temporaries(folder)
        tmp = path.with_name(f".{path.name}.{os.getpid()}@{_host()}.{secrets.token_hex(4)}.tmp")
        try:
            yield tmp
            fsync_path(tmp)  # the data on disk before the name points at it
            failpoint("atomic_path.before_replace")
            os.replace(tmp, path)
            fsync_path(path.parent)  # the rename itself on disk
            failpoint("atomic_path.after_replace")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (a rename, a new name), to disk. A file system that cannot
    sync a folder (``EINVAL``: some network and FUSE mounts; Windows) is left as it is."""
    folder = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    except OSError:
        if folder:
            return  # e.g. Windows, where a folder cannot be opened
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not folder or exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


# atomic_path's names: .<name>.<pid>@<host>.<random>.tmp (before hosts were named: .<name>.<pid>.<random>.tmp)
_TEMPORARY = re.compile(r"\..+\.(\d+)(?:@([A-Za-z0-9_-]+))?\.[0-9a-f]{8}\.tmp")
_swept_folders: set[str] = set()  # the folders this process has removed stale temporaries from


def _host() -> str:
    """This machine's name as temporaries carry it: letters, digits, ``-`` and ``_`` (``node1.lab`` ->
    ``node1-lab``), so that the name parses back unambiguously."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "localhost"


def remove_stale_temporaries(folder: str | Path) -> int:
    """Remove :func:`atomic_path`'s temporary files in ``folder`` whose writer is gone, and return how many:
    a SIGKILL between writing one and renaming it leaves it behind (for a checkpoint or a model's weights,
    the size of the model each time). A temporary names its writer by process id and host: those of a live
    process of this machine are kept, and so are those of another host (a folder shared by several nodes,
    e.g. a Ray cluster's), whose processes this machine cannot see; that host's own next write into the
    folder removes its dead writers' temporaries. A name without a host (written before hosts were named)
    counts as this machine's."""
    try:
        found = [(e.name, int(m.group(1)), m.group(2)) for e in os.scandir(folder)
                 if (m := _TEMPORARY.fullmatch(e.name))]  # fmt: skip
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed, here = 0, _host()
    for name, pid, host in found:
        if host in (None, here) and not _process_alive(pid):
            Path(folder, name).unlink(missing_ok=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists (POSIX; elsewhere every process counts as alive)."""
    if os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | Path, text: str | Iterable[str]) -> Path:
    """Write UTF-8 ``text`` (a string, or an iterable of strings written in turn) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        if isinstance(text, str):
            f.write(text)
        else:
            f.writelines(text)
    return path


def atomic_save_image(image: Image.Image, path: str | Path) -> Path:
    """Save a PIL image to ``path`` atomically; the format follows the extension (PNG when unknown)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    img = image.convert("RGB") if fmt == "JPEG" and image.mode != "RGB" else image
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


# ------------------------------------------------------------------------------------------------ hashing
def short_hash(text: str | bytes, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text`` (UTF-8; bytes as they are): a stable key,
    not a secret."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:length]


def settings_hash(settings: dict, length: int = 12) -> str:
    """:func:`short_hash` of a JSON-serialisable dict, independent of key order."""
    return short_hash(json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str), length)


# -------------------------------------------------------------------------------------- sizes for people
def human_size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


# -------------------------------------------------------------------------------- append-only JSONL logs
#: what ``flock`` fails with on a file system that does not lock (e.g. Lustre mounted without ``flock``)
_NO_LOCKS = frozenset(getattr(errno, n) for n in ("ENOLCK", "ENOSYS", "EOPNOTSUPP") if hasattr(errno, n))


@contextmanager
def flocked(fd: int, busy: str | None = None, where: str | Path | None = None) -> Iterator[None]:
    """Hold an exclusive POSIX ``flock`` on the open file ``fd`` (``where``, for messages), waiting for other
    processes that hold it. With ``busy`` (a one-line message), do not wait: a lock held elsewhere (another
    process, or another open file in this one) raises ``CamimError(busy)``. Where there is no lock (no
    ``fcntl``, or a file system that does not lock: logged as a warning) a single writer is assumed."""
    locked = False
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
            locked = True
        except BlockingIOError:
            raise CamimError(busy) from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            name = f"{where}: " if where else ""
            log.warning(
                "%sthe file system does not lock files (%s); one writer is assumed", name, exc.strerror
            )
    try:
        yield
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)


class JsonlLog:
    """An append-only JSONL file that a long job resumes from (captions, preprocessing progress,
    predictions): one JSON value per line, each batch of lines written by a single ``os.write`` on an
    ``O_APPEND`` descriptor.

    A killed writer loses at most the batch it had in flight. A line cut short by a crash is the file's
    last line: :meth:`read` leaves it unread and sets ``partial_tail``; the one writer of the file, or a
    writer holding :meth:`locked`, cuts it off with :meth:`drop_partial_tail` (and counts it), otherwise the
    next :meth:`append` starts a fresh line after it (it then reads as one undecodable line, listed in
    ``bad_lines``). :meth:`locked` holds an exclusive ``fcntl`` lock so that several processes can re-read
    and append without writing a key twice; with ``fsync=True`` every append is flushed to disk before it
    returns. ``what`` names the file in errors.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False, what: str = "file"):
        self.path = Path(path)
        self.fsync = fsync
        self.what = what
        self.bad_lines: list[tuple[int, str]] = []  # (1-based line, problem) of lines that are not JSON
        self.partial_tail = False  # the last read ended at an unfinished line (a write cut short)
        self._fd = -1
        self._offset = 0  # bytes already read
        self._next_line = 1

    # -- opening
    def open(self) -> JsonlLog:
        """Open the file for appending now (creating it and its folder), so that errors show up early and
        :meth:`locked` can be used; without it each :meth:`append` opens and closes the file."""
        if self._fd < 0:
            self._fd = self._open()
        return self

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CamimError(
                f"{self.path}: cannot open the {self.what} for appending ({exc.strerror})"
            ) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlLog:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the file (POSIX ``flock``) for a read-then-append."""
        self.open()
        with flocked(self._fd):
            yield

    # -- reading
    def read(self) -> list[tuple[int, object]]:
        """The (1-based line number, decoded value) of the complete lines appended since the last read (the
        whole file the first time; a missing file reads as empty). Lines that are not JSON are skipped and
        listed in ``bad_lines``; an unfinished last line is left for later and flags ``partial_tail``."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CamimError(f"{self.path}: cannot read the {self.what} ({exc.strerror})") from None
        end = data.rfind(b"\n") + 1
        self.partial_tail = bool(data[end:].strip())
        values = []
        for offset, raw in enumerate(data[:end].split(b"\n")[:-1]):
            if not raw.strip():
                continue
            lineno = self._next_line + offset
            try:
                values.append((lineno, json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self.bad_lines.append((lineno, f"not JSON ({exc.__class__.__name__})"))
        self._offset += end
        self._next_line += data[:end].count(b"\n")
        return values

    def drop_partial_tail(self) -> bool:
        """Cut an unfinished last line (a write cut short) off the file; whether there was one. Only for the
        file's one writer, or one holding :meth:`locked`: another writer's line may still be arriving."""
        if not self.path.exists():
            self.partial_tail = False
            return False
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1
        cut = keep < len(data)
        if cut:
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        self.partial_tail = False
        return cut

    # -- writing
    def append(self, values: Iterable[object]) -> int:
        """Append one JSON line per value (non-ASCII kept as UTF-8) in a single write; the number of lines."""
        lines = [json.dumps(v, ensure_ascii=False) + "\n" for v in values]
        if not lines:
            return 0
        data = "".join(lines).encode("utf-8")
        fd = self._fd if self._fd >= 0 else self._open()
        size = os.fstat(fd).st_size
        try:
            if self._ends_mid_line(fd):  # a previous writer died mid-line: start a fresh line after it
                data = b"\n" + data
            with no_space_is_an_error(self.path, "the lines appended before are intact"):
                try:
                    failpoint("jsonl.torn_line", _write_torn, fd, data)  # a test's kill mid-write
                    written = os.write(fd, data)
                    if written != len(data):  # a full disk can take part of a write
                        raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
                    failpoint("jsonl.before_flush")  # written, not yet flushed to disk
                    if self.fsync:
                        os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, size)  # no torn line left behind: the file as it was before this append
                    raise
        finally:
            if fd != self._fd:
                os.close(fd)
        return len(lines)

    def _ends_mid_line(self, fd: int) -> bool:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) != b"\n"


def _write_torn(fd: int, data: bytes) -> None:
    """Write the first half of ``data``, never ending at a line's end: what a kill mid-write leaves."""
    cut = len(data) // 2
    os.write(fd, data[: cut + (data[cut - 1 : cut] == b"\n")])


# ------------------------------------------------------------------------------------------------- images
# Files taken as images, in the order an image id without an extension is tried against them
# (camim.data.images.find_image: earlier MNRE releases store bare ids such as ``553009``).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 100 * 1024 * 1024  # MNRE photos are a few MB; crops and generated images far less


@dataclass(frozen=True)
class ImageLimits:
    """Largest image accepted: ``max_pixels`` (width x height), ``max_side`` (either side, in pixels),
    ``max_bytes`` (encoded size) and ``max_decoded_bytes`` (what decoding it takes, :func:`decode_cost`)."""

    max_pixels: int = MAX_IMAGE_PIXELS
    max_side: int = 20_000
    max_bytes: int = MAX_IMAGE_BYTES
    max_decoded_bytes: int | None = None  # bytes one image may take to decode (decode_cost); None: no limit

    def check_size(self, width: int, height: int, where: str | Path | None = None) -> None:
        """``ImageError`` (``too_large``) when a ``width`` x ``height`` image is over the limits."""
        if width <= 0 or height <= 0:
            raise ImageError(f"image has an empty size {width}x{height}", where)
        if width * height > self.max_pixels:
            raise ImageError(
                f"image too large: {width}x{height} pixels, over the limit of {self.max_pixels}",
                where,
                too_large=True,
            )
        if max(width, height) > self.max_side:
            raise ImageError(
                f"image too large: {width}x{height}, over the limit of {self.max_side} pixels per side",
                where,
                too_large=True,
            )

    def check_decoded(self, size: int, where: str | Path | None = None) -> None:
        """``ImageError`` (``too_large``) when decoding an image takes ``size`` bytes, over ``max_decoded_bytes``."""
        if self.max_decoded_bytes is not None and size > self.max_decoded_bytes:
            raise ImageError(
                f"image too large to decode: it takes {human_size(size)}, over the limit of "
                f"{human_size(self.max_decoded_bytes)} decoded per image",
                where,
                too_large=True,
            )

    def check_bytes(self, size: int, where: str | Path | None = None) -> None:
        if size > self.max_bytes:
            raise ImageError(
                f"image is {size} bytes, over the limit of {self.max_bytes}", where, too_large=True
            )


ImageSource = Image.Image | bytes | bytearray | str | Path


@contextmanager
def checked_image(
    source: ImageSource, limits: ImageLimits = ImageLimits(), name: str = "image"
) -> Iterator[Image.Image]:
    """Open ``source`` (encoded bytes or a file path) and check its size from the header, before any pixel
    is decoded; yield the (lazily decoding) PIL image. Decompression bombs, files over ``limits``, missing,
    corrupt and truncated images (also when decoded inside the block) raise :class:`ImageError` naming the
    file (or ``name`` for bytes)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        where: str = str(path)
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise IsADirectoryError(21, "not a file")
        except FileNotFoundError as exc:
            raise ImageError(f"image not found (cannot read the image: {exc.strerror})", where) from None
        except OSError as exc:
            raise ImageError(f"cannot read the image ({exc.strerror or exc})", where) from None
        limits.check_bytes(size, where)
        stream: object = path
    elif isinstance(source, (bytes, bytearray)):
        where = name
        limits.check_bytes(len(source), where)
        if not source:
            raise ImageError("the image is empty", where)
        stream = io.BytesIO(bytes(source))
    else:
        raise ImageError(f"expected an image, bytes or a path, got {type(source).__name__}", name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as im:  # reads the header only
                limits.check_size(*im.size, where)
                yield im
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large to decode safely ({exc})", where, too_large=True) from None
    except UnidentifiedImageError:
        raise ImageError(
            "not a readable image (corrupt or unreadable, or a format Pillow does not know)", where
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"not a readable image (corrupt or unreadable: {exc})", where) from None


def open_image(
    source: ImageSource, limits: ImageLimits = ImageLimits(), name: str = "image", fit: Fit | None = None
) -> Image.Image:
    """``source`` (a PIL image, encoded bytes or a file path) as a decoded RGB image, checked as in
    :func:`checked_image`; a PIL image (already decoded) is only converted (and reduced to ``fit``).

    With ``fit``, the image is reduced while it is decoded to the smallest size ``fit`` allows (JPEG: decoded
    at 1/2, 1/4 or 1/8 scale by libjpeg; others: decoded in their own mode, then ``Image.reduce``), before the
    RGB image exists; the bytes the decoding takes (:func:`decode_cost`) are checked against
    ``limits.max_decoded_bytes`` first."""
    if isinstance(source, Image.Image):
        return _reduced(source, fit).convert("RGB")
    with checked_image(source, limits, name) as im:
        _draft(im, fit)
        where = str(source) if isinstance(source, (str, Path)) else name
        limits.check_decoded(sum(decode_cost(im, fit)), where)
        im.load()
        return _reduced(im, fit).convert("RGB")


def verify_image(source: ImageSource, limits: ImageLimits = ImageLimits(), name: str = "image") -> None:
    """Check ``source`` as :func:`checked_image` does, and its encoded data as far as Pillow can without
    decoding a pixel (``Image.verify``: a PNG's chunks and their checksums), for an image that will not be
    used: a corrupt or oversized one is still refused, at no decoding cost."""
    if isinstance(source, Image.Image):
        return
    with checked_image(source, limits, name) as im:
        im.verify()


def image_cost(
    source: ImageSource, limits: ImageLimits = ImageLimits(), name: str = "image", fit: Fit | None = None
) -> tuple[int, int]:
    """:func:`decode_cost` of ``source`` opened with ``fit``, read from its header (nothing decoded); (0, 0)
    for a PIL image (decoded already)."""
    if isinstance(source, Image.Image):
        return 0, 0
    with checked_image(source, limits, name) as im:
        _draft(im, fit)
        return decode_cost(im, fit)


REDUCING_GAP = 2.0  # an image is reduced while decoding to no less than this many times the size needed
# Modes Image.reduce works in; the others are converted first (1 -> L, the rest -> RGB)
_REDUCIBLE = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F", "PA"})


@dataclass(frozen=True)
class Fit:
    """The smallest image its user needs: the short side at least ``short`` pixels, the long side at least
    ``long`` (0: no need on that side). :func:`open_image` reduces an image by the largest integer factor that
    keeps both at :data:`REDUCING_GAP` times these, so that the user's own resize still averages over the
    original pixels; ``None`` in place of a ``Fit`` means the full resolution."""

    short: int = 0
    long: int = 0

    def factor(self, width: int, height: int) -> int:
        """How many times ``width`` x ``height`` may be reduced (1: not at all)."""
        factors = [
            side // max(1, math.ceil(REDUCING_GAP * need))
            for side, need in ((min(width, height), self.short), (max(width, height), self.long))
            if need
        ]
        return max(1, min(factors, default=1))

    def union(self, other: Fit | None) -> Fit | None:
        """What satisfies both users (``None``, full resolution, when either needs it)."""
        if other is None:
            return None
        return Fit(max(self.short, other.short), max(self.long, other.long))


def decode_cost(im: Image.Image, fit: Fit | None = None) -> tuple[int, int]:
    """``(decoding, kept)``: the bytes Pillow allocates to decode ``im`` (opened, not loaded) and reduce it to
    ``fit`` (its own mode's pixels, plus a converted copy for modes ``Image.reduce`` does not take), and the
    bytes of the RGB image kept afterwards (Pillow stores RGB in 4 bytes a pixel)."""
    width, height = im.size
    pixels = width * height
    factor = fit.factor(width, height) if fit is not None else 1
    own = 1 if im.mode in ("1", "L", "P") else 2 if im.mode.startswith("I;16") else 4
    converted = 0 if factor == 1 or im.mode in _REDUCIBLE else 1 if im.mode == "1" else 4
    kept = math.ceil(width / factor) * math.ceil(height / factor) * 4
    return pixels * (own + converted), kept


def _draft(im: Image.Image, fit: Fit | None) -> None:
    """Let a JPEG decoder scale down (1/2, 1/4, 1/8) to no less than ``fit`` allows; other formats ignore it."""
    factor = fit.factor(*im.size) if fit is not None else 1
    if factor > 1 and im.format == "JPEG":
        im.draft(im.mode, (math.ceil(im.size[0] / factor), math.ceil(im.size[1] / factor)))


def _reduced(im: Image.Image, fit: Fit | None) -> Image.Image:
    """``im`` (loaded) reduced by :meth:`Fit.factor` (box average), in a mode ``Image.reduce`` takes."""
    factor = fit.factor(*im.size) if fit is not None else 1
    if factor == 1:
        return im
    if im.mode not in _REDUCIBLE:
        im = im.convert("L" if im.mode == "1" else "RGB")
    return im.reduce(factor)

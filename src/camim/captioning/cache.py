"""The caption cache: an append-only JSONL file, one line per (img_id, model, prompt hash).

Each line is one JSON object (Contract 1 in docs/architecture.md)::

    {"img_id": "x.jpg", "text": "...", "model": "Qwen/Qwen2.5-VL-7B-Instruct", "prompt": "...",
     "prompt_hash": "3f0c9a1be2d4", "settings": {"backend": "openai", "max_tokens": 512, ...},
     "created": "2026-11-26T19:52:22+00:00"}

Durability: each record, or each batch of records that finished together, is written with a single
``os.write`` on an ``O_APPEND`` descriptor while holding an exclusive ``fcntl`` lock, then ``fsync``-ed. A killed writer therefore loses at most the requests it had
in flight; a line cut short by a crash (power loss, full disk) is the file's last line, which readers ignore
and count (``partial_tail``), and the next writer starts a fresh line after it. Concurrent writers (several
processes on one file) never interleave bytes, and a writer re-reads what others appended before writing,
so the same key is never written twice.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:  # POSIX only; elsewhere a single writer per file is assumed.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from camim.errors import CamimError, DataError

# The paper's prompt, §3.1.2 Eq. (3).
PAPER_PROMPT = "Please give me a detailed description of the picture"

CacheKey = tuple[str, "str | None", "str | None"]


def prompt_hash(prompt: str | None) -> str | None:
    """A short stable hash of a prompt (first 12 hex digits of its SHA-256); ``None`` for an unknown prompt."""
    if prompt is None:
        return None
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12]


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string (second resolution)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class CaptionRecord:
    """One caption of one image by one model under one prompt."""

    img_id: str
    text: str
    model: str | None = None
    prompt: str | None = None
    prompt_hash: str | None = None
    settings: dict = field(default_factory=dict)
    created: str | None = None

    @property
    def key(self) -> CacheKey:
        return (self.img_id, self.model, self.prompt_hash)

    def to_json(self) -> str:
        """The record as one JSON line (no trailing newline; non-ASCII kept as UTF-8)."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_obj(cls, obj: object, path: str | Path | None = None, line: int | None = None) -> CaptionRecord:
        """Validate a decoded JSON object; ``DataError`` naming ``path:line`` when it is not a caption."""
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path, line)
        for name in ("img_id", "text"):
            if not isinstance(obj.get(name), str):
                raise DataError(f"field {name!r} missing or not a string", path, line)
        for name in ("model", "prompt", "prompt_hash", "created"):
            if obj.get(name) is not None and not isinstance(obj[name], str):
                raise DataError(f"field {name!r} is not a string", path, line)
        settings = obj.get("settings") or {}
        if not isinstance(settings, dict):
            raise DataError("field 'settings' is not an object", path, line)
        return cls(
            img_id=obj["img_id"],
            text=obj["text"],
            model=obj.get("model"),
            prompt=obj.get("prompt"),
            prompt_hash=obj.get("prompt_hash"),
            settings=settings,
            created=obj.get("created"),
        )


@dataclass
class CacheContents:
    """What a read of the cache found: the valid records in file order and what was skipped."""

    records: list[CaptionRecord]
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, problem)
    partial_tail: bool = False  # the last line had no newline (a write cut short) and was ignored

    def keys(self) -> set[CacheKey]:
        return {r.key for r in self.records}

    def latest(self, model: str | None = None) -> dict[str, CaptionRecord]:
        """img_id -> its last record (optionally only ``model``'s), like the data layer's reader."""
        out: dict[str, CaptionRecord] = {}
        for r in self.records:
            if model is None or r.model == model:
                out[r.img_id] = r
        return out

    def problems(self) -> str | None:
        """A one-line summary of skipped lines, or ``None`` when the file was clean."""
        parts = []
        if self.bad_lines:
            shown = ", ".join(f"line {n}: {p}" for n, p in self.bad_lines[:3])
            more = f" (+{len(self.bad_lines) - 3} more)" if len(self.bad_lines) > 3 else ""
            parts.append(f"{len(self.bad_lines)} malformed line(s) skipped ({shown}{more})")
        if self.partial_tail:
            parts.append("1 unfinished last line ignored")
        return "; ".join(parts) or None


def _parse_lines(data: bytes, path: Path, first_line: int, contents: CacheContents) -> None:
    """Parse complete lines of ``data`` (which ends at a newline) into ``contents``."""
    for offset, raw in enumerate(data.split(b"\n")[:-1]):
        lineno = first_line + offset
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
            contents.records.append(CaptionRecord.from_obj(obj, path, lineno))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            contents.bad_lines.append((lineno, f"not JSON ({exc.__class__.__name__})"))
        except DataError as exc:
            contents.bad_lines.append((lineno, exc.problem))


def read_cache(path: str | Path, strict: bool = False) -> CacheContents:
    """Read a caption JSONL file. Malformed lines are skipped and listed (``strict=True``: ``DataError``);
    an unfinished last line is ignored and flagged. A missing file reads as empty."""
    path = Path(path)
    contents = CacheContents(records=[])
    if not path.exists():
        return contents
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CamimError(f"{path}: cannot read the caption file ({exc.strerror})") from None
    end = data.rfind(b"\n") + 1
    if end < len(data) and data[end:].strip():
        contents.partial_tail = True
    _parse_lines(data[:end], path, 1, contents)
    if strict and contents.bad_lines:
        line, problem = contents.bad_lines[0]
        raise DataError(problem, path, line)
    return contents


class CaptionCache:
    """Append-only caption store with resume support.

    ``cache.done`` is the set of keys already present; ``cache.append(record)`` writes one record durably and
    returns ``False`` (writing nothing) when its key is already in the file, including when another process
    wrote it since this one last looked.
    """

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CamimError(
                f"{self.path}: cannot open the caption file for appending ({exc.strerror})"
            ) from None
        self._offset = 0  # bytes of the file already parsed into self.done
        self._next_line = 1
        self.done: set[CacheKey] = set()
        self.bad_lines: list[tuple[int, str]] = []
        with self._locked():
            self._catch_up()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CaptionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        """Parse the complete lines appended since the last look (call with the lock held)."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end:
            contents = CacheContents(records=[])
            _parse_lines(data[:end], self.path, self._next_line, contents)
            self.done.update(contents.keys())
            self.bad_lines.extend(contents.bad_lines)
            self._offset += end
            self._next_line += data[:end].count(b"\n")

    def _ends_mid_line(self) -> bool:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return False
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) != b"\n"

    def append(self, record: CaptionRecord) -> bool:
        """Write ``record`` as one line (one ``os.write``, then ``fsync``); ``False`` if its key exists."""
        return self.extend([record]) == 1

    def extend(self, records: Iterable[CaptionRecord]) -> int:
        """Append records whose keys are new, all in one locked ``os.write`` + ``fsync`` (a bulk import);
        the number written. Records repeating a key (in the file or among ``records``) are dropped."""
        with self._locked():
            self._catch_up()
            chunks, keys = [], set()
            for record in records:
                if record.key in self.done or record.key in keys:
                    continue
                if record.created is None:
                    record.created = utc_now()
                keys.add(record.key)
                chunks.append(record.to_json() + "\n")
            if not chunks:
                return 0
            data = "".join(chunks).encode("utf-8")
            if self._ends_mid_line():  # a previous writer died mid-line: start a fresh line after it
                data = b"\n" + data
            written = os.write(self._fd, data)
            if written != len(data):  # pragma: no cover - only on a full disk
                raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
            if self.fsync:
                os.fsync(self._fd)
            self.done.update(keys)
        return len(keys)

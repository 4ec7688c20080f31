"""The caption cache: an append-only JSONL file, one line per (img_id, model, prompt hash).

Each line is one JSON object (Contract 1 in docs/architecture.md)::

    {"img_id": "x.jpg", "text": "...", "model": "Qwen/Qwen2.5-VL-7B-Instruct", "prompt": "...",
     "prompt_hash": "3f0c9a1be2d4", "settings": {"backend": "openai", "max_tokens": 512, ...},
     "created": "2026-11-26T19:52:22+00:00"}

Durability (:class:`camim.io.JsonlLog`): each record, or each batch of records that finished together, is
written with a single ``os.write`` on an ``O_APPEND`` descriptor while holding an exclusive ``fcntl`` lock,
then ``fsync``-ed. A killed writer therefore loses at most the requests it had in flight; a line cut short by
a crash (SIGKILL mid-write, power loss, full disk) is the file's last line, which readers ignore and count
(``partial_tail``), and which the next :class:`CaptionCache` cuts off under the lock when it opens the file
(counted in ``torn_lines``; ``camim caption`` and ``camim zero-shot`` say so), so the file stays one record
per line for the data layer's strict reader. Concurrent writers (several processes on one file) never
interleave bytes, and a writer re-reads what others appended before writing, so the same key is never written
twice.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from camim.errors import DataError
from camim.io import JsonlLog, short_hash

# The paper's prompt, §3.1.2 Eq. (3).
PAPER_PROMPT = "Please give me a detailed description of the picture"

CacheKey = tuple[str, "str | None", "str | None"]


def prompt_hash(prompt: str | None) -> str | None:
    """A short stable hash of a prompt (first 12 hex digits of its SHA-256); ``None`` for an unknown prompt."""
    return None if prompt is None else short_hash(prompt)


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


def _parse(log: JsonlLog) -> CacheContents:
    """The caption records among the lines ``log`` has not read yet; the others go to ``log.bad_lines``."""
    contents = CacheContents(records=[])
    for lineno, obj in log.read():
        try:
            contents.records.append(CaptionRecord.from_obj(obj, log.path, lineno))
        except DataError as exc:
            log.bad_lines.append((lineno, exc.problem))
    contents.bad_lines = sorted(log.bad_lines)
    contents.partial_tail = log.partial_tail
    return contents


def read_cache(path: str | Path, strict: bool = False) -> CacheContents:
    """Read a caption JSONL file. Malformed lines are skipped and listed (``strict=True``: ``DataError``);
    an unfinished last line is ignored and flagged. A missing file reads as empty."""
    contents = _parse(JsonlLog(path, what="caption file"))
    if strict and contents.bad_lines:
        line, problem = contents.bad_lines[0]
        raise DataError(problem, path, line)
    return contents


class CaptionCache:
    """Append-only caption store with resume support.

    ``cache.done`` is the set of keys already present; ``cache.append(record)`` writes one record durably and
    returns ``False`` (writing nothing) when its key is already in the file, including when another process
    wrote it since this one last looked. ``torn_lines`` is 1 when opening it cut off a last line that a killed
    writer left unfinished (its image is captioned again).
    """

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self._log = JsonlLog(self.path, fsync=fsync, what="caption file").open()
        self.done: set[CacheKey] = set()
        self.bad_lines: list[tuple[int, str]] = self._log.bad_lines
        with self._log.locked():
            self._catch_up()
            # every writer appends under this lock: an unfinished last line now is one whose writer died
            self.torn_lines = int(self._log.partial_tail and self._log.drop_partial_tail())

    def close(self) -> None:
        self._log.close()

    def __enter__(self) -> CaptionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _catch_up(self) -> None:
        """Parse the complete lines appended since the last look (call with the lock held)."""
        self.done.update(_parse(self._log).keys())

    def append(self, record: CaptionRecord) -> bool:
        """Write ``record`` as one line (one ``os.write``, then ``fsync`` unless disabled); ``False`` if its
        key exists."""
        return self.extend([record]) == 1

    def extend(self, records: Iterable[CaptionRecord]) -> int:
        """Append records whose keys are new, all in one locked ``os.write`` (+ ``fsync``) (a bulk import);
        the number written. Records repeating a key (in the file or among ``records``) are dropped."""
        with self._log.locked():
            self._catch_up()
            new, keys = [], set()
            for record in records:
                if record.key in self.done or record.key in keys:
                    continue
                if record.created is None:
                    record.created = utc_now()
                keys.add(record.key)
                new.append(asdict(record))
            self._log.append(new)
            self.done.update(keys)
        return len(keys)

"""Reading text and JSON files with errors that name the file (and line).

Text is decoded strictly: UTF-8 by default (a leading byte-order mark is accepted and dropped), or the
``encoding`` a caller names for a legacy file. An undecodable byte is a ``DataError`` naming the file, the
line and the byte; nothing is replaced by U+FFFD.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path

from camim.errors import CamimError, DataError

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

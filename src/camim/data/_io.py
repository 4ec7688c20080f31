"""Reading text and JSON files with errors that name the file (and line)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from camim.errors import DataError


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines of a UTF-8 file; DataError when unreadable."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path) from None


def read_json(path: str | Path) -> object:
    """The JSON value in ``path``; DataError (with the line of a syntax error) when missing or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg} (column {exc.colno})", path, exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path) from None

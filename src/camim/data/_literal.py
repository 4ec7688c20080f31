"""Safe, fast parsing of the one-Python-literal-per-line files of MNRE/CAMIM (no ``eval``).

``ast.literal_eval`` is safe but slow (~2 s for the 12,247 train lines). A line whose strings need no
escapes is rewritten to JSON and decoded by the C JSON decoder; any line the fast path cannot prove
equivalent (prefixes, tuples, ``None``, sets, odd numbers ...) falls back to ``ast.literal_eval``, which
also supplies the exact syntax error. Neither path executes code.
"""

from __future__ import annotations

import ast
import json
import re

# A Python short string literal, single or double quoted, with backslash escapes (no prefixes, no newlines).
_STRING = re.compile(r"""'[^'\\\n]*(?:\\.[^'\\\n]*)*'|"[^"\\\n]*(?:\\.[^"\\\n]*)*\"""")
_DECODER = json.JSONDecoder(strict=False, parse_constant=lambda name: _reject(name))


def _reject(name: str):
    raise ValueError(f"{name} is not a Python literal")


def _string_to_json(match: re.Match) -> str:
    s = match.group(0)
    if "\\" in s:
        return json.dumps(ast.literal_eval(s))
    if s[0] == '"':  # no escapes: a double-quoted Python string is already a JSON string
        return s
    return '"' + s[1:-1].replace('"', '\\"') + '"'


def parse_literal(line: str):
    """Parse one Python literal (dict, list, str, number ...) from ``line``.

    Raises ``SyntaxError`` or ``ValueError`` (from ``ast.literal_eval``) when the line is not a literal.
    """
    try:
        if '"' not in line and "\\" not in line:
            return _DECODER.decode(line.replace("'", '"'))
        return _DECODER.decode(_STRING.sub(_string_to_json, line))
    except (ValueError, SyntaxError):
        return ast.literal_eval(line.strip())


def describe_literal_error(exc: Exception) -> str:
    """A one-line description of a literal parsing failure."""
    if isinstance(exc, SyntaxError):
        return f"syntax error: {exc.msg}" + (f" (column {exc.offset})" if exc.offset else "")
    return "not a Python literal (only dicts, lists, tuples, strings, numbers, booleans and None are allowed)"

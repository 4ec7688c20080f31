"""The one-line user errors and the helper that shortens a library's message to one line."""

from __future__ import annotations

import pytest

from camim.errors import DataError, first_line


@pytest.mark.parametrize(
    "exc,line",
    [
        (OSError("no file named config.json\nSee the docs at ..."), "no file named config.json"),
        (ValueError("\n  padded first line  \nsecond"), "padded first line"),
        (RuntimeError(""), "RuntimeError"),  # ''.splitlines()[0] would be an IndexError
        (OSError(), "OSError"),
        (ValueError("   \n "), "ValueError"),
    ],
)
def test_first_line_is_the_first_message_line_or_the_type_name(exc, line):
    assert first_line(exc) == line


def test_data_error_names_file_and_line():
    assert str(DataError("bad", "a.txt", 3)) == "a.txt:3: bad"
    assert str(DataError("bad", "a.txt")) == "a.txt: bad"
    assert str(DataError("bad")) == "bad"

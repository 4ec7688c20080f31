"""camim.typed: the one strict loader every config goes through (types, unknown keys, dotted keys in errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from camim.errors import CamimError
from camim.typed import differing_keys, from_mapping, parse, to_plain


@dataclass
class Inner:
    flag: bool = True
    ratio: float = 0.5


@dataclass
class Outer:
    count: int = 1
    rate: float = 1e-3
    name: str = "x"
    maybe: float | None = None
    mode: Literal["raise", "skip"] = "raise"
    devices: int | list[int] | Literal["auto"] = 1
    keys: list[str] = field(default_factory=lambda: ["a"])
    betas: tuple[float, float] = (0.9, 0.999)
    table: dict[str, int] = field(default_factory=dict)
    anything: Any = None
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), ("true", True), ("False", False), ("yes", True), ("no", False),
     ("on", True), ("off", False), ("1", True), ("0", False), (1, True), (0, False)],
)  # fmt: skip
def test_bool_accepts_the_yaml_spellings(value, expected):
    assert parse(value, bool, "k") is expected


@pytest.mark.parametrize("value", ["flase", "nope", "ture", 2, 0.0, None, [], ""])
def test_bool_refuses_anything_else(value):
    with pytest.raises(CamimError, match=r"^k: expected true or false, got "):
        parse(value, bool, "k")


def test_int_refuses_fractions_text_and_bools():
    assert parse(8, int, "k") == 8 and parse("-12", int, "k") == -12
    for bad in (1.5, 2.0, "abc", "1.5", True, None):
        with pytest.raises(CamimError, match=r"^k: expected an integer, got "):
            parse(bad, int, "k")


def test_float_takes_exponent_strings_and_ints():
    assert parse("1e-1", float, "k") == 0.1 and parse("3e-5", float, "k") == 3e-5
    assert parse(".5", float, "k") == 0.5 and parse("2.", float, "k") == 2.0
    three = parse(3, float, "k")
    assert three == 3.0 and isinstance(three, float)
    for bad in ("abc", "nan", True, None, "1e"):
        with pytest.raises(CamimError, match="expected a number"):
            parse(bad, float, "k")


def test_a_scalar_is_not_a_list_and_items_are_checked():
    with pytest.raises(CamimError, match=r"^k: expected a list of strings, got 'text_encoder' \(a list is"):
        parse("text_encoder", list[str], "k")
    assert parse(("a", "b"), list[str], "k") == ["a", "b"]
    with pytest.raises(CamimError, match=r"^k\[1\]: expected a string, got 3"):
        parse(["a", 3], list[str], "k")
    assert parse([0.9, "0.98"], tuple[float, float], "k") == (0.9, 0.98)
    with pytest.raises(CamimError, match="expected a list of 2 numbers"):
        parse([0.9], tuple[float, float], "k")


def test_unions_optional_and_literals():
    t = int | list[int] | Literal["auto"]
    assert parse(2, t, "d") == 2 and parse([0, 1], t, "d") == [0, 1] and parse("auto", t, "d") == "auto"
    with pytest.raises(CamimError, match=r"^d\[1\]: expected an integer, got 'x'"):  # the list's item
        parse([0, "x"], t, "d")
    with pytest.raises(CamimError, match=r"^d: expected an integer, a list of integers or 'auto', got 'al'"):
        parse("al", t, "d")
    assert parse(None, float | None, "k") is None and parse("1e-2", float | None, "k") == 0.01
    with pytest.raises(CamimError, match="expected a number or null"):
        parse("x", float | None, "k")
    with pytest.raises(CamimError, match="expected one of 'raise', 'skip'"):
        parse("ignore", Literal["raise", "skip"], "k")
    with pytest.raises(CamimError, match="got True"):  # True == 1, but a bool is not the choice 1
        parse(True, Literal[1, 2], "k")


def test_dataclass_from_mapping_names_dotted_keys():
    o = from_mapping(Outer, {"count": "3", "rate": "1e-1", "inner": {"flag": "no"}, "table": {"a": 1}})
    assert (o.count, o.rate, o.inner, o.table) == (3, 0.1, Inner(flag=False, ratio=0.5), {"a": 1})
    with pytest.raises(CamimError, match=r"^sec\.inner\.flag: expected true or false, got 'flase'$"):
        from_mapping(Outer, {"inner": {"flag": "flase"}}, "sec")
    with pytest.raises(CamimError, match=r"^sec\.inner\.colour: unknown key; known: flag, ratio$"):
        from_mapping(Outer, {"inner": {"colour": 1}}, "sec")
    with pytest.raises(CamimError, match=r"^unknown top-level config key\(s\): bogus"):
        from_mapping(Outer, {"bogus": 1})
    with pytest.raises(CamimError, match=r"^sec\.inner: expected a mapping, got 3"):
        from_mapping(Outer, {"inner": 3}, "sec")
    with pytest.raises(CamimError, match=r"^sec\.table\.a: expected an integer, got 'x'"):
        from_mapping(Outer, {"table": {"a": "x"}}, "sec")
    assert from_mapping(Outer, {"anything": {"free": [1]}}).anything == {"free": [1]}
    assert from_mapping(Outer, {"inner": None}).inner == Inner()  # an empty YAML section: its defaults


def test_to_plain_round_trips_and_differing_keys_are_dotted():
    o = from_mapping(Outer, {"devices": [0, 1], "inner": {"ratio": 2}})
    plain = to_plain(o)
    assert plain["betas"] == [0.9, 0.999] and plain["inner"] == {"flag": True, "ratio": 2.0}
    assert from_mapping(Outer, plain) == o
    other = from_mapping(Outer, {**plain, "rate": 0.5, "inner": {"flag": False}})
    assert differing_keys(o, other) == ["inner.flag", "inner.ratio", "rate"]
    assert differing_keys(o, other, ignore=("rate",)) == ["inner.flag", "inner.ratio"]

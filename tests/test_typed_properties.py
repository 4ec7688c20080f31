"""Properties of the typed loader (camim.typed) through the run config, checked with hypothesis on values
drawn from every leaf's declared type: a valid config survives its YAML round trip, a valid ``--set`` value
arrives as the same typed value, and a value of a wrong type is refused with a message that starts with the
dotted key. Derandomised (the same examples on every run) and without an example database."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from camim.errors import CamimError
from camim.models.registry import model_names
from camim.training.config import RunConfig, config_from_dict, load_config
from camim.typed import apply_overrides, dump_yaml, field_types, yaml_value

PRESET = "tmr-cam-mi"  # the paper's full model: every section in use
BASE = load_config(PRESET).to_dict()
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


def leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> declared type of every field of dataclass ``cls`` that is not itself a dataclass."""
    out = {}
    for name, tp in field_types(cls).items():
        key = f"{prefix}{name}"
        out.update(leaf_types(tp, key + ".") if dataclasses.is_dataclass(tp) else {key: tp})
    return out


LEAVES = leaf_types(RunConfig)
# settings whose values are checked against a list when the config is validated
NAMED = {
    "model.name": model_names(),  # the registry's: a new extractor is drawn too
    "model.cam": ("none", "word", "sentence", "both"),
    "model.mi": (False, True),  # not None (the extractor's default): the value read back is the resolved one
    "model.mi_pair": ("O&G", "(O+G)&F", "T&F", "(O+G)&T"),
    "model.visual_mode": ("images", "text-caption"),
    "model.missing_scores": ("error", "uniform"),
    "data.encoding": ("utf-8", "latin-1", "cp1252", "utf-16"),
}


def valid(tp: Any, key: str = "") -> st.SearchStrategy:
    """Values of declared type ``tp`` (as the loader's table lists them, in their canonical form)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if key in NAMED:
        return st.sampled_from(NAMED[key])
    if key == "trainer.loggers":
        return st.lists(st.sampled_from(["csv", "tensorboard", "mlflow", "wandb"]), unique=True, max_size=2)
    if origin in (Union, types.UnionType):
        return st.one_of(*(valid(a) for a in args))
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-(2**40), 2**40)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(max_size=12)
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(valid(args[0]), max_size=3)
    if origin is tuple:
        return st.tuples(*(valid(a) for a in args))
    raise NotImplementedError(f"{key}: no strategy for {tp!r}")


_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def accepts(value: Any, tp: Any) -> bool:
    """Whether the loader's table (camim.typed's docstring) accepts ``value`` for ``tp``: the oracle of the
    wrong-type property, written from the documentation rather than the code."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(accepts(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        words = isinstance(value, str) and value.strip().lower() in _BOOL_WORDS
        return isinstance(value, bool) or (type(value) is int and value in (0, 1)) or words
    if tp is int:
        return type(value) is int or (isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value.strip()))
    if tp is float:
        return type(value) in (int, float) or (isinstance(value, str) and _NUMBER.fullmatch(value.strip()))
    if tp is str:
        return isinstance(value, str)
    if origin is Literal:
        return any(type(value) is type(c) and value == c for c in args)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(accepts(v, args[0]) for v in value)
    if origin is tuple:
        fits = isinstance(value, (list, tuple)) and len(value) == len(args)
        return fits and all(accepts(v, a) for v, a in zip(value, args))
    raise NotImplementedError(repr(tp))


# scalars and containers of every kind, ASCII text so that digits are the ones int() and float() read
ANY_VALUE = st.one_of(
    st.booleans(),
    st.integers(-5, 100),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text("abcdefnorstuwxyz0123456789.-+ ", max_size=6),
    st.lists(st.one_of(st.integers(-2, 2), st.text("abc", max_size=2)), max_size=3),
    st.dictionaries(st.text("ab", min_size=1, max_size=2), st.integers(0, 2), min_size=1, max_size=2),
)


def set_text(value: Any) -> str:
    """``value`` written as the right-hand side of ``--set key=...`` (one YAML flow value)."""
    text = dump_yaml(value, default_flow_style=True, width=10**9)
    return text.removesuffix("\n...\n").removesuffix("\n")


def dotted(cfg: RunConfig, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def valid_config(overrides: dict[str, Any]) -> RunConfig:
    """The preset with ``overrides``; the example is rejected when the combination is not a valid run
    (a setting checked against another, e.g. optim.warmup_steps with optim.warmup_ratio)."""
    try:
        return config_from_dict(apply_overrides(BASE, overrides))
    except CamimError:
        reject()


def overrides_strategy() -> st.SearchStrategy:
    pair = st.sampled_from(sorted(LEAVES)).flatmap(lambda k: st.tuples(st.just(k), valid(LEAVES[k], k)))
    return st.lists(pair, min_size=1, max_size=4).map(dict)


@PROPERTY
@given(overrides=overrides_strategy())
def test_any_valid_config_survives_its_yaml_round_trip(tmp_path_factory, overrides):
    cfg = valid_config(overrides)
    path = tmp_path_factory.getbasetemp() / "round_trip.yaml"  # one file, rewritten by every example
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    assert load_config(path) == cfg


@PROPERTY
@given(
    key_value=st.sampled_from(sorted(LEAVES)).flatmap(lambda k: st.tuples(st.just(k), valid(LEAVES[k], k)))
)
def test_a_valid_set_value_arrives_as_the_typed_value(key_value):
    key, value = key_value
    cfg = valid_config({key: value})
    assert load_config(PRESET, [f"{key}={set_text(value)}"]) == cfg
    assert dotted(cfg, key) == value


@PROPERTY
@given(key_value=st.sampled_from(sorted(LEAVES)).flatmap(lambda k: st.tuples(st.just(k), ANY_VALUE)))
def test_a_value_of_a_wrong_type_is_refused_naming_the_dotted_key(key_value):
    key, value = key_value
    if accepts(value, LEAVES[key]):
        reject()
    with pytest.raises(CamimError) as err:
        config_from_dict(apply_overrides(BASE, {key: value}))
    assert re.match(rf"{re.escape(key)}(\[\d+\])?: expected ", str(err.value)), str(err.value)
    text = set_text(value)
    if not accepts(yaml_value(text), LEAVES[key]):  # the --set route: the same value written as YAML
        with pytest.raises(CamimError) as err:
            load_config(PRESET, [f"{key}={text}"])
        assert re.match(rf"{re.escape(key)}(\[\d+\])?: expected ", str(err.value)), str(err.value)


def test_a_string_that_reads_as_a_yaml12_number_survives_the_round_trip(tmp_path):
    cfg = load_config(PRESET, {"description": "1e5"})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    assert load_config(path).description == "1e5"

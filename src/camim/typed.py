"""One strict loader that builds a dataclass from a plain mapping by its declared field types.

Every config of camim (``camim.training.config.RunConfig`` and its sections, ``camim.models.ModelConfig``
and the ``config.json`` of saved models) is parsed here, so a value means the same wherever it is written
(YAML preset, ``--set key=value``, a dict in Python, a saved model). :func:`from_mapping` accepts:

========================  ===========================================================================
declared type             accepted values
========================  ===========================================================================
``bool``                  ``true``/``false`` and the strings ``true false yes no on off 1 0`` (any case);
                          ``0``/``1``. Anything else (``flase``, ``nope``, ``2``) is refused.
``int``                   integers and integer strings (``"8"``); not ``1.5``, ``"abc"`` or a bool
``float``                 numbers (an int becomes a float) and number strings, ``"1e-1"`` and ``"3e-5"``
                          included (YAML 1.1 reads those as strings); not ``"abc"`` or a bool
``str``                   strings only
``list[T]`` / ``tuple``   a list (or tuple) whose items parse as ``T``; a single value is refused, not
                          iterated; ``tuple[float, float]`` needs exactly two items
``dict[K, V]``            a mapping whose keys and values parse as ``K`` and ``V``
``Literal[...]``          one of the listed values (same type: ``1`` is not ``True``)
``X | None``              ``null`` or an ``X``; other unions take the first member that accepts the value
dataclass                 a mapping (or an instance) parsed field by field; unknown keys are refused,
                          missing keys take the field's default (``null``: all defaults)
``Any``                   anything, unchanged
========================  ===========================================================================

Errors are :class:`camim.errors.CamimError` naming the dotted key, e.g. ``optim.epochs: expected an integer,
got 1.5`` or ``model.colour: unknown key; known: cam, ...``. A class adds no parsing code of its own: a new
field is parsed by its annotation. :func:`to_plain` is the inverse (tuples become lists), so
``from_mapping(cls, to_plain(x)) == x``.

Configs come from YAML read with YAML 1.2 numbers (:func:`yaml_value`, :func:`read_yaml_mapping`), merged
(:func:`deep_merge`) and changed by dotted ``key=value`` overrides (:func:`apply_overrides`, the ``--set`` of
every command) before they are parsed here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from camim.errors import CamimError

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class _Refused(Exception):
    """A value that does not fit the declared type (turned into a CamimError naming the key)."""


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The declared (resolved) type of every field of dataclass ``cls``."""
    return typing.get_type_hints(cls)


def _join(key: str, sub: str | int) -> str:
    if isinstance(sub, int):
        return f"{key}[{sub}]"
    return f"{key}.{sub}" if key else sub


def describe(tp: Any) -> str:
    """What a value of type ``tp`` looks like, for error messages ("an integer", "a list of strings")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if origin is Literal:
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in args]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is list:
        return f"a list of {_plural(args[0]) if args else 'values'}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0]) if len(set(args)) == 1 else 'values'}"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(tp, describe(tp))


def parse(value: Any, tp: Any, key: str = "") -> Any:
    """``value`` as a value of type ``tp`` (see the module table); CamimError naming ``key`` if it does not fit."""
    try:
        return _parse(value, tp, key)
    except _Refused:
        hint = ""
        if typing.get_origin(tp) in (list, tuple) and not isinstance(value, (list, tuple, dict)):
            hint = " (a list is written [a, b]: --set key=[a,b])"
        raise CamimError(f"{key or 'value'}: expected {describe(tp)}, got {value!r}{hint}") from None


def _parse(value: Any, tp: Any, key: str) -> Any:
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Refused
        for member in args:
            if member is type(None):
                continue
            try:
                return parse(value, member, key)
            except CamimError as exc:
                # a member that is a container or dataclass accepted the shape but not an item: say where
                if _is_container(member) and _shape_fits(value, member):
                    raise exc from None
        raise _Refused
    if tp is type(None):
        if value is None:
            return None
        raise _Refused
    if tp is bool:
        return _bool(value)
    if tp is int:
        return _int(value)
    if tp is float:
        return _float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Refused
    if origin is Literal:
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return choice
        raise _Refused
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _Refused
        item = args[0] if args else Any
        return [parse(v, item, _join(key, i)) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Refused
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse(v, args[0], _join(key, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Refused
        return tuple(parse(v, a, _join(key, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Refused
        kt, vt = args if args else (Any, Any)
        return {parse(k, kt, key): parse(v, vt, _join(key, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty YAML section (``optim:``): its defaults
            value = {}
        if isinstance(value, tp):
            value = to_plain(value)
        if not isinstance(value, Mapping):
            raise _Refused
        return from_mapping(tp, value, key)
    raise TypeError(f"{key}: camim.typed cannot parse the declared type {tp!r}")


def _is_container(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin in (list, tuple, dict) or tp in (list, dict) or dataclasses.is_dataclass(tp)


def _shape_fits(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, Mapping)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise _Refused


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    raise _Refused


def _float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    raise _Refused


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, every field parsed by its declared type (nested dataclasses
    included); unknown keys and values of the wrong type raise CamimError naming the dotted key (``where`` is
    the prefix, e.g. ``"optim"``). Missing keys take the field's default."""
    if not isinstance(data, Mapping):
        raise CamimError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        keys = ", ".join(_join(where, str(k)) for k in unknown)
        if where:
            raise CamimError(f"{keys}: unknown key; known: {', '.join(fields)}")
        raise CamimError(f"unknown top-level config key(s): {keys}; known: {', '.join(fields)}")
    kwargs = {name: parse(value, hints[name], _join(where, name)) for name, value in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise CamimError(f"{', '.join(_join(where, n) for n in missing)}: missing (no default)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a __post_init__ check that is not a CamimError
        raise CamimError(f"{where or cls.__name__}: {exc}") from None


def to_plain(obj: Any) -> Any:
    """A dataclass (recursively) as plain dicts, lists and scalars: what YAML/JSON write and
    :func:`from_mapping` reads back to an equal object."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def flatten(plain: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (nested mappings only; lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in plain.items():
        key = _join(prefix, str(k))
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def differing_keys(a: Any, b: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """The dotted keys whose values differ between two dataclass instances (or plain mappings)."""
    fa, fb = flatten(to_plain(a)), flatten(to_plain(b))
    return sorted(
        k for k in fa.keys() | fb.keys() if k not in ignore and fa.get(k, _ABSENT) != fb.get(k, _ABSENT)
    )


_ABSENT = object()


# ---- YAML and --set overrides: the raw mappings the loader parses ----------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-1`` and ``3e-5`` are numbers (YAML 1.1 needs a dot,
    so PyYAML reads them as strings)."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))


class _YamlDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting the strings that the YAML 1.2 loader would read as numbers (``"1e5"``):
    it decides quoting with the same resolvers, so what it writes reads back equal."""


_YamlDumper.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))


def dump_yaml(data: Any, **options: Any) -> str:
    """``data`` as YAML that :func:`yaml_value` reads back equal (keys in their order; non-ASCII escaped, since
    PyYAML writes some characters raw that its reader takes for line breaks, e.g. U+0085; ``options`` go to
    ``yaml.dump``, e.g. ``default_flow_style=True`` for a ``--set`` value)."""
    return yaml.dump(data, Dumper=_YamlDumper, **{"sort_keys": False, **options})


def yaml_value(text: str) -> Any:
    """One YAML value (YAML 1.2 floats); YAMLError on bad YAML."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_mapping(path: Path) -> dict:
    """The mapping in the YAML file ``path`` (YAML 1.2 numbers; ``{}`` when empty); ``CamimError`` naming the
    file (and the line of a syntax error) when it is unreadable, not YAML or not a mapping."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml_value(f)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise CamimError(f"{path}{'' if line is None else f':{line + 1}'}: invalid YAML: {exc}") from None
    except OSError as exc:
        raise CamimError(f"{path}: cannot read config: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CamimError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict, update: dict) -> dict:
    """Recursive dict update (``update`` wins); neither input is modified."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-5"`` -> (["optim", "lr"], 3e-05); the value is read as YAML (a string if it is not
    valid YAML); its type is checked against the key's declared type when the config is built."""
    if "=" not in item:
        raise CamimError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise CamimError(f"override {item!r} has an empty key")
    try:
        parsed = yaml_value(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return keys, parsed


def apply_overrides(raw: dict, overrides: list[str] | dict | None) -> dict:
    """Apply dotted ``key=value`` strings (or a ``{dotted_key: value}`` dict) to a raw config mapping."""
    out = copy.deepcopy(raw)
    if not overrides:
        return out
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for keys, value in items:
        if isinstance(keys, str):
            keys = keys.split(".")
        node = out
        for i, k in enumerate(keys[:-1]):
            if node.get(k) is None:
                node[k] = {}
            elif not isinstance(node[k], dict):
                raise CamimError(f"{'.'.join(keys[: i + 1])} is not a section; cannot set {'.'.join(keys)}")
            node = node[k]
        node[keys[-1]] = value
    return out


SET_HELP = "override a config value (dotted key, YAML value), e.g. --set optim.lr=3e-5; repeatable"


def add_set_argument(parser, help: str = SET_HELP) -> None:
    """The repeatable ``--set KEY=VALUE`` option of every command that takes a config (into
    ``args.overrides``, the list :func:`apply_overrides` reads)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )

"""Build frozen dataclasses from plain mappings, collecting every problem with its key path.

This is the machinery behind :mod:`safealign.config`: it knows nothing about safealign's stages.
:func:`load_yaml` reads the YAML strictly (duplicate keys and unreadable integers are errors with
their line: PyYAML alone keeps the last of two equal keys without a word).
Each dataclass field may carry ``metadata={"doc": ..., "check": fn}``; ``fn(value)`` returns an
error string or None. Validation never stops at the first problem: the user sees all of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

_MISSING = object()
#: Integers a config may hold: torch and numpy take 64-bit integers; a larger one is a typo.
_INT64 = 2**63
_SURROGATE = re.compile("[\ud800-\udfff]")


def doc(text: str, check=None) -> dict[str, Any]:
    """Field metadata: the one place a config field is documented (and range-checked)."""
    return {"doc": text, "check": check}


def build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    """Construct ``cls`` (a dataclass) from ``data``; append problems as ``"path: why"``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(f"{path or '<root>'}: expected a mapping, got {_describe(data)}")
        return None
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            problems.append(_unknown_key(str(key), path, list(known)))
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            value = _coerce(hints[name], data[name], sub, problems)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            problems.append(f"{sub}: required field is missing")
            continue
        if value is _MISSING:
            continue
        check = f.metadata.get("check")
        if value is not None:
            why = (check(value) if check is not None else None) or _too_large(value)
            if why:
                problems.append(f"{sub}: {why} (got {_short_repr(value)})")
        kwargs[name] = value
    if len(kwargs) != len(known):
        return None
    return cls(**kwargs)


def _too_large(value: Any) -> str | None:
    """Every integer setting is used by torch or numpy, which take 64-bit integers."""
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        return "must fit in 64 bits"
    return None


def _unknown_key(key: str, path: str, known: list[str]) -> str:
    where = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
    return f"{where}: unknown key{hint}"


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(options) == 1:
            return _coerce(options[0], value, path, problems)
        for option in options:  # first option that accepts the value without problems
            trial: list[str] = []
            result = _coerce(option, value, path, trial)
            if not trial:
                return result
        problems.append(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
        return _MISSING
    if value is None:
        problems.append(f"{path}: must not be null (expected {_type_name(tp)})")
        return _MISSING
    if dataclasses.is_dataclass(tp):
        built = build(tp, value, path, problems)
        return _MISSING if built is None else built
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        problems.append(f"{path}: expected one of {', '.join(map(str, choices))}; got {value!r}")
        return _MISSING
    if origin in (tuple, list):
        return _coerce_sequence(tp, value, path, problems)
    if origin in (dict, Mapping, typing.Mapping):
        return _coerce_mapping(tp, value, path, problems)
    return _coerce_scalar(tp, value, path, problems)


def _coerce_sequence(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, list | tuple):
        problems.append(f"{path}: expected a list, got {_describe(value)}")
        return _MISSING
    args = get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis or get_origin(tp) is list:
        items = [_coerce(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    else:
        if len(value) != len(args):
            problems.append(f"{path}: expected {len(args)} items, got {len(value)}")
            return _MISSING
        items = [
            _coerce(a, v, f"{path}[{i}]", problems)
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        ]
    return _MISSING if any(i is _MISSING for i in items) else tuple(items)


def _coerce_mapping(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, Mapping):
        problems.append(f"{path}: expected a mapping, got {_describe(value)}")
        return _MISSING
    key_t, val_t = get_args(tp) or (str, Any)
    out = {}
    for k, v in value.items():
        out[_coerce(key_t, k, f"{path}.{k}", problems)] = _coerce(val_t, v, f"{path}.{k}", problems)
    if any(v is _MISSING for v in out.values()):
        return _MISSING
    return dict(sorted(out.items()))


def _coerce_scalar(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    if tp is Any:
        return value
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # YAML 1.1 reads "1e-5" (no dot) as a string: accept numeric strings for floats.
        as_float = _to_float(value) if number or isinstance(value, str) else None
        if as_float is not None:
            if math.isfinite(as_float):
                return as_float
            # inf and nan pass range checks such as "> 0" (or fail them with a baffling
            # message) and then poison every computation downstream.
            problems.append(f"{path}: must be a finite number (got {_describe(value)})")
            return _MISSING
    elif tp is str:
        if isinstance(value, str):
            why = _not_text(value)
            if why is None:
                return value
            problems.append(f"{path}: {why}")
            return _MISSING
        if number:
            return str(value)
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported config type {tp!r} at {path}")
    problems.append(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    return _MISSING


def _not_text(value: str) -> str | None:
    """Why ``value`` cannot be a setting's text (names, paths), or None. A lone surrogate is not
    Unicode and fails when written as UTF-8; a NUL cannot be in a path or survive C APIs."""
    bad = _SURROGATE.search(value)
    if bad is not None:
        return (
            f"holds a lone surrogate ({ascii(bad.group())} at character {bad.start() + 1}), "
            "which is not text; fix the \\u escape"
        )
    if "\0" in value:
        return f"holds a NUL character (at character {value.index(chr(0)) + 1}); remove it"
    return None


def _to_float(value: Any) -> float | None:
    """``value`` as a float (inf when an int is too large for one); None when not a number."""
    try:
        return float(value)
    except OverflowError:
        return math.inf
    except ValueError:
        return None


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {_short_repr(value)}"


def _short_repr(value: Any) -> str:
    """``repr(value)`` for messages, short: a huge number or structure is summarised, not dumped."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain YAML/JSON-able data (the resolved config written to runs)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """``(key path, doc, default)`` for every field, recursively: the config reference."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = [a for a in get_args(tp) if dataclasses.is_dataclass(a)] or (
            [tp] if dataclasses.is_dataclass(tp) else []
        )
        if inner:
            rows.extend(field_docs(inner[0], key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = to_plain(f.default_factory())
        rows.append((key, f.metadata.get("doc", ""), default))
    return rows


class YamlRefusal(yaml.YAMLError):
    """A YAML document refused by :class:`_StrictLoader`, with the 1-based line of the fault."""

    def __init__(self, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.reason, self.line = reason, line


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and reporting over-long integers by line."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' merges: keys given beside it override the merged ones
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if duplicate:
                    raise YamlRefusal(
                        f"duplicate key {key!r} (first given on line {seen[key]}); give each "
                        "key once (YAML readers would silently keep only the last one)",
                        line,
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python's limit on int-string conversion
            digits = len(str(node.value).lstrip("+-").replace("_", ""))
            raise YamlRefusal(
                f"an integer with {digits} digits; no setting takes such a number",
                node.start_mark.line + 1,
            ) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    """Parse YAML with :class:`_StrictLoader`; raise :class:`YamlRefusal` for what it refuses."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except RecursionError:
        raise YamlRefusal(
            "nested too deeply for the YAML parser; a config is a few levels of mappings", None
        ) from None

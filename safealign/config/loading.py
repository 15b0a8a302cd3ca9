"""Loading a config: YAML → frozen dataclasses, one per stage, validated before any compute.

Every field is documented once, in its ``doc(...)`` metadata; ``safealign config reference``-style
tables and the README's reference are generated from it. Unknown keys are errors (with a
did-you-mean), ranges are checked, and *all* problems are reported at once with their key paths.

Overrides use dotted paths, ``safety.confidence=0.99``; the value is parsed as YAML.

YAML is read strictly (:func:`safealign._typed.load_yaml`): PyYAML keeps the last of two equal
keys without a word, so a config saying ``seed`` twice would run with whichever came last; here it
is an error naming the line, as are integers too long to read and nesting that exhausts the parser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from safealign._typed import YamlRefusal, build, field_docs, load_yaml
from safealign.config.policy import renamed_method_problem
from safealign.config.root import Config, _cross_checks
from safealign.errors import ConfigError


def config_from_dict(data: Mapping[str, Any] | None, *, source: str | None = None) -> Config:
    """Validate ``data`` and build a :class:`Config`; raise ConfigError listing every problem."""
    renamed = renamed_method_problem(data)
    if renamed is not None:
        raise ConfigError([renamed], source=source)
    problems: list[str] = []
    cfg = build(Config, data or {}, "", problems)
    if cfg is not None and not problems:
        problems.extend(_cross_checks(cfg))
    if problems:
        raise ConfigError(problems, source=source)
    return cfg


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["safety.confidence=0.99", ...]`` into a nested mapping (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r}: expected key.path=value")
            continue
        try:
            value = load_yaml(raw) if raw != "" else ""
        except YamlRefusal as exc:
            problems.append(f"override {item!r}: {exc.reason}")
            continue
        except yaml.YAMLError as exc:
            problems.append(
                f"override {item!r}: value is not valid YAML ({exc.__class__.__name__})"
            )
            continue
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: '{part}' was already set to a value")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, source="command line")
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Raises:
        ConfigError: the file is unreadable or not YAML, or any key/value is invalid. The error
            lists every problem with its dotted key path.
    """
    data: dict[str, Any] = {}
    source = str(path) if path is not None else "defaults"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("file not found", source=source) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the file ({exc})", source=source) from None
        try:
            loaded = load_yaml(text)
        except YamlRefusal as exc:
            where = f"line {exc.line}: " if exc.line is not None else ""
            raise ConfigError(where + exc.reason, source=source) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise ConfigError(
                f"{where}not valid YAML ({getattr(exc, 'problem', exc)})", source=source
            ) from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(
                f"the top level must be a mapping, got {type(loaded).__name__}", source=source
            )
        data = dict(loaded or {})
    if overrides:
        data = _merge(data, parse_overrides(overrides))
    return config_from_dict(data, source=source)


def config_reference() -> list[tuple[str, str, Any]]:
    """Every config key with its documentation and default, for the README reference."""
    return field_docs(Config)

"""Build dataclasses from plain data (parsed YAML, CLI strings): unknown keys are errors with a suggestion and
values are converted to each field's declared type."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A bad training config: the message names the key (``train.lr``) and how to fix it."""


def build_dataclass(cls: type, raw: Any, path: str) -> Any:
    """``cls(**raw)`` with unknown keys rejected and each value converted to its field's type."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key {where!r}{suggest(str(key), names)}; known: {', '.join(names)}")
    values = {key: coerce(value, hints[key], f"{path}.{key}" if path else key) for key, value in raw.items()}
    try:
        return cls(**values)
    except TypeError as error:  # pragma: no cover - every field has a default
        raise ConfigError(f"{path or 'config'}: {error}") from error


def coerce(value: Any, annotation: Any, path: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to ``annotation``; :class:`ConfigError` naming ``path``."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if type(None) in options and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(value, option, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, path)
    if origin is list:
        if isinstance(value, str):  # from the CLI: "[a, b]" or "a,b"
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = get_args(annotation)
        return [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_type, item = get_args(annotation)
        return {coerce(k, key_type, path): coerce(v, item, f"{path}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, annotation, path)


def _coerce_scalar(value: Any, annotation: type, path: str) -> Any:
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if not isinstance(number, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if annotation is int:
            if float(number) != int(number):
                raise ConfigError(f"{path}: expected a whole number, got {value!r}")
            return int(number)
        return float(number)
    if annotation is str:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r}; YAML reads unquoted yes/no/on/off as "
                              f"true/false, so quote the word (\"no\")")
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{path}: unsupported field type {annotation!r}")  # pragma: no cover - schema bug


def suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def set_dotted(raw: dict[str, Any], cls: type, key: str, value: Any) -> None:
    """Put ``value`` at ``a.b.c`` of the plain data ``raw`` for the nested dataclass schema ``cls``; a key the schema
    does not have is a :class:`ConfigError` with the closest known key."""
    node, parts, root = raw, key.split("."), cls
    for depth, part in enumerate(parts):
        hints = get_type_hints(cls)
        if part not in hints:
            raise ConfigError(f"unknown option --{key}{suggest(key, dotted_keys(root))}")
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hints[part]):
                raise ConfigError(f"--{key}: is a section; give one of its keys, e.g. --{key}.<name>")
            node[part] = value
        elif not dataclasses.is_dataclass(hints[part]):
            raise ConfigError(f"--{key}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        else:
            cls, node = hints[part], node.setdefault(part, {})


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a nested dataclass schema, e.g. ``train.lr``."""
    keys = []
    for item in dataclasses.fields(cls):
        hint = get_type_hints(cls)[item.name]
        if dataclasses.is_dataclass(hint):
            keys += dotted_keys(hint, f"{prefix}{item.name}.")
        else:
            keys.append(prefix + item.name)
    return keys


INHERITS = "inherits"


def read_config_file(path: str | os.PathLike, *, sections: Sequence[str]) -> dict[str, Any]:
    """The YAML mapping in ``path``. A top-level ``inherits: other.yaml`` (relative to ``path``'s folder) is read
    first and this file's values are merged over it key by key, so that a variant of a config states only what it
    changes; lists and values replace the inherited ones whole."""
    return _read_inheriting(Path(path), sections=sections, chain=())


def _read_inheriting(file: Path, *, sections: Sequence[str], chain: tuple[Path, ...]) -> dict[str, Any]:
    if not file.is_file():
        where = f" (inherited by '{chain[-1]}')" if chain else ""
        raise ConfigError(f"config file '{file}'{where} does not exist")
    if file.resolve() in chain:
        names = " -> ".join(str(p) for p in (*chain, file.resolve()))
        raise ConfigError(f"{file}: '{INHERITS}' loops ({names}); remove one of the links")
    raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{file}: expected a mapping of sections ({', '.join(sections)})")
    raw = dict(raw)
    parent = raw.pop(INHERITS, None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{file}: '{INHERITS}' takes the path of one config file, got {parent!r}")
    inherited = _read_inheriting(file.parent / parent, sections=sections, chain=(*chain, file.resolve()))
    return merge_config(inherited, raw)


def merge_config(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` laid over it: mappings merge recursively, anything else replaces."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged

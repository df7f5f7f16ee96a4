"""Configuration: YAML file + flags -> one frozen, validated dataclass per component.

Each component declares its configuration as frozen dataclasses (nested ones allowed)
and calls :func:`load`. Types are checked field by field from the annotations; a value
that does not fit fails at start with :class:`ConfigError` naming the full field path,
e.g. ``relay.vips[1].port: expected an integer 1-65535, got 70000``. Dataclasses may
define ``validate(self, path)`` for rules that span fields. Nothing else in icegate reads
configuration files or environment variables.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from icegate.errors import ConfigError

T = TypeVar("T")


_PORT = "port: 1-65535"
_ADDRESS = "address: IPv4 or IPv6"

Port = Annotated[int, _PORT]
"""An int that must be 1-65535."""

Address = Annotated[str, _ADDRESS]
"""A str that must be an IPv4 or IPv6 address (normalised)."""


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        return _convert_annotated(value, args[0], args[1:], path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], path)
        raise ConfigError(path, "unsupported union type")  # pragma: no cover - a programming error
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(path, f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        return build(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(path, f"expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(path, f"unsupported type {hint!r}")  # pragma: no cover - a programming error


def _convert_annotated(value: Any, base: Any, marks: tuple[Any, ...], path: str) -> Any:
    if _PORT in marks:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise ConfigError(path, f"expected an integer 1-65535, got {value!r}")
        return int(value)
    if _ADDRESS in marks:
        try:
            return str(ipaddress.ip_address(str(value)))
        except ValueError:
            raise ConfigError(path, f"expected an IP address, got {value!r}") from None
    return _convert(value, base, path)


def nearest(name: str, known: typing.Iterable[str]) -> str:
    """``did you mean 'x'?`` for a misspelling of a known name, else the list of them."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(known))}"


def build(cls: type[T], data: Mapping[str, Any], path: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    if not dataclasses.is_dataclass(cls):  # pragma: no cover - a programming error
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", f"unknown field ({nearest(unknown[0], fields)})")
    kwargs = {}
    for name, field in fields.items():
        field_path = f"{path}.{name}"
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], field_path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(field_path, "required field is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(path)
    return obj


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` (dotted keys allowed: ``{"redis.url": ...}``) into ``base``."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else dict(child)
                node[part] = child
            node = child
        node[leaf] = value
    return out


def load(
    cls: type[T], path: Path | str | None, section: str, overrides: Mapping[str, Any] | None = None
) -> T:
    """Read ``section`` of the YAML file at ``path`` (or nothing), apply flag overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(section, f"cannot read {path}: {exc.strerror}") from exc
        try:
            document = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(section, f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(document, Mapping):
            raise ConfigError(section, f"{path} must hold a mapping")
        section_data = document.get(section, {})
        if not isinstance(section_data, Mapping):
            raise ConfigError(section, f"expected a mapping in {path}")
        data = dict(section_data)
    return build(cls, merge(data, overrides or {}), section)


def _nested(hint: Any) -> tuple[type | None, bool]:
    """The dataclass a field holds (itself, or as a list's items, or optional), and
    whether it is a list of them; ``(None, False)`` for a plain value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _nested(args[0])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _nested(inner[0]) if len(inner) == 1 else (None, False)
    if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
        return args[0], True
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint, False
    return None, False


def problems(cls: type, data: Any, path: str) -> list[ConfigError]:
    """Every problem :func:`build` would raise, not only the first: unknown fields (with the
    nearest known name), missing ones, bad values at any depth, then the ``validate``
    rules of each object whose fields are all valid. ``icegate config check`` reports these."""
    if not isinstance(data, Mapping):
        return [ConfigError(path, f"expected a mapping, got {type(data).__name__}")]
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    found: list[ConfigError] = []
    for key in sorted(set(map(str, data)) - set(fields)):
        found.append(ConfigError(f"{path}.{key}", f"unknown field ({nearest(key, fields)})"))
    for name, field in fields.items():
        field_path = f"{path}.{name}"
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                found.append(ConfigError(field_path, "required field is missing"))
            continue
        inner, many = _nested(hints[name])
        value = data[name]
        if inner is not None and value is not None:
            if many and isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    found += problems(inner, item, f"{field_path}[{i}]")
                continue
            if not many:
                found += problems(inner, value, field_path)
                continue
        try:
            _convert(value, hints[name], field_path)
        except ConfigError as exc:
            found.append(exc)
    if not found:
        try:
            build(cls, data, path)
        except ConfigError as exc:
            found.append(exc)
    return found

"""Typed, frozen settings trees: nested dataclasses updated from nested mappings, every value type-checked.

A tree is a frozen dataclass whose fields are values or nested dataclasses (sections). `updated(node, changes,
where)` returns a copy with `changes` (a nested mapping, as a TOML/YAML file or `--set` items give it) applied,
after checking every key against the fields and every value against its field's type: bool, int, float, str,
`X | None`, `tuple[X, ...]`, `tuple[X, Y]`, dict, Literal, Any, nested sections (a mapping), and overlays
(`Annotated[dict, Over(Section)]`: some settings of a section that stand in for the tree's own, merged key by
key and checked against the section). A bad key or value is one `ConfigError` line that names the full key and
what is valid.

Some classes hold, beside their settings, values a command fills from its own arguments (the condense run's
`ipc` and `seed`, say): `job_fields` marks them, so the tree neither shows nor sets them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union

from condenser.errors import CondenserError


class ConfigError(CondenserError, ValueError):
    """A setting that does not exist, or a value of the wrong type or range (the message names the key)."""


_JOB_FIELDS: dict[type, dict[str, str]] = {}  # class -> {field: what sets it instead}


@dataclass(frozen=True)
class Over:
    """`Annotated[dict, Over(Section)]`: an overlay, the settings of `Section` it gives (a nested mapping)."""

    section: type


def job_fields(cls: type, **fields: str) -> None:
    """Mark fields of `cls` that a command sets (`ipc="--ipc"`): not shown in the tree, refused by `updated`."""
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(fields) - known):
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    _JOB_FIELDS.setdefault(cls, {}).update(fields)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def setting_names(cls: type) -> list[str]:
    """The fields of `cls` that are settings (not job fields), in definition order."""
    job = _JOB_FIELDS.get(cls, {})
    return [f.name for f in dataclasses.fields(cls) if f.name not in job]


def section_type(hint: Any) -> type | None:
    """The dataclass a field holds (`Section` or `Section | None`), else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    if len(args) == 1 and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def as_dict(node: Any) -> dict[str, Any]:
    """The plain-dict form of a tree (what results and file headers record): settings only, tuples as lists."""
    return {name: _plain(getattr(node, name)) for name in setting_names(type(node))}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def updated(node: Any, changes: Mapping[str, Any], where: str, path: str = "") -> Any:
    """A copy of `node` with `changes` applied; `where` (the source: --set, a file name) goes into errors."""
    cls = type(node)
    if not isinstance(changes, Mapping):
        raise ConfigError(f"{path or 'the settings'} ({where}) is a section: give a table of its settings, "
                          f"not {changes!r}")
    new: dict[str, Any] = {}
    for key, value in changes.items():
        full = f"{path}.{key}" if path else str(key)
        _check_key(cls, key, full, where)
        new[key] = _value(getattr(node, key), _hints(cls)[key], value, full, where)
    try:
        return dataclasses.replace(node, **new)
    except (CondenserError, ValueError) as exc:  # a section's own range checks (__post_init__)
        raise ConfigError(f"{path} ({where}): {exc}" if path else f"{exc} ({where})") from None


def _check_key(cls: type, key: Any, full: str, where: str) -> None:
    job = _JOB_FIELDS.get(cls, {})
    if key in job:
        raise ConfigError(f"{full} ({where}) is not a setting: {job[key]} gives it")
    names = setting_names(cls)
    if key not in names:
        kind = "section" if "." not in full else "setting"
        raise ConfigError(f"unknown {kind} {full!r} ({where}); valid: {', '.join(sorted(names))}")


def _value(current: Any, hint: Any, value: Any, full: str, where: str) -> Any:
    """The new value of one field: a nested section or overlay updated in place, or a checked plain value."""
    if (over := overlay_of(hint)) is not None:
        return merged_overlay(current, value, over, full, where)
    section = section_type(hint)
    if section is None:
        return checked(value, hint, full, where)
    if value is None and _is_union(hint):
        return None
    return updated(current if current is not None else section(), value, where, full)


def overlay_of(hint: Any) -> type | None:
    """The section an overlay field (`Annotated[dict, Over(Section)]`) stands for, else None."""
    if typing.get_origin(hint) is not Annotated:
        return None
    return next((m.section for m in hint.__metadata__ if isinstance(m, Over)), None)


def merged_overlay(current: Mapping[str, Any], value: Any, section: type, full: str, where: str) -> dict[str, Any]:
    """`current` with the settings `value` gives merged in (null: none), each checked against `section`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{full} ({where}) is a section: give a table of its settings, not {value!r}")
    merged = _deep_merge(dict(current), value)
    updated(section(), merged, where, full)  # every key and value checked, as on the section itself
    return merged


def _deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            base[key] = _deep_merge(dict(base[key]), value)
        else:
            base[key] = value
    return base


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def checked(value: Any, hint: Any, full: str, where: str) -> Any:
    """`value` as the type `hint` names (lists become tuples, ints floats), or ConfigError."""
    result = _convert(value, hint)
    if result is _BAD:
        raise ConfigError(f"{full} = {value!r} ({where}): expected {type_name(hint)}")
    return result


_BAD = object()


def _convert(value: Any, hint: Any) -> Any:
    if hint is Any:
        return value
    if _is_union(hint):
        for option in typing.get_args(hint):
            if (result := _convert(value, option)) is not _BAD:
                return result
        return _BAD
    if hint is type(None):
        return None if value is None else _BAD
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value if value in args else _BAD
    if origin is tuple or hint is tuple:
        return _tuple(value, args)
    if hint is dict or origin is dict:
        return dict(value) if isinstance(value, Mapping) else _BAD
    return _scalar(value, hint)


def _scalar(value: Any, hint: Any) -> Any:
    if isinstance(value, bool):
        return value if hint is bool else _BAD
    if hint is float and isinstance(value, (int, float)):
        return float(value)
    if hint in (int, str) and isinstance(value, hint):
        return value
    return _BAD


def _tuple(value: Any, args: tuple) -> Any:
    if not isinstance(value, (list, tuple)):
        return _BAD
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        items = [_convert(v, args[0] if args else Any) for v in value]
    elif len(value) == len(args):
        items = [_convert(v, a) for v, a in zip(value, args, strict=True)]
    else:
        return _BAD
    return _BAD if any(i is _BAD for i in items) else tuple(items)


def type_name(hint: Any) -> str:
    """A type as a reader of the error thinks of it: 'int or null', 'list of float', 'a table'."""
    if _is_union(hint):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple or hint is tuple:
        if not args or args[-1] is Ellipsis:
            return f"a list of {type_name(args[0]) if args else 'values'}"
        return f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
    if hint is dict or origin is dict:
        return "a table"
    if (isinstance(hint, type) and dataclasses.is_dataclass(hint)) or overlay_of(hint) is not None:
        return "a table (section)"
    return getattr(hint, "__name__", str(hint))


def differences(ours: Any, base: Any, path: str = "") -> dict[str, Any]:
    """Dotted keys whose values differ between two trees of one class (what a command line must set)."""
    out: dict[str, Any] = {}
    for name in setting_names(type(ours)):
        a, b = getattr(ours, name), getattr(base, name)
        full = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            out.update(differences(a, b, full))
        elif a != b:
            out[full] = _plain(a)
    return out

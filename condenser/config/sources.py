"""Where settings come from besides a profile: `--config FILE` (TOML or YAML) and `--set section.field=value`.

Both give a nested mapping of the tree's shape, applied by condenser.config.schema.updated. A `--set` value is
JSON where it parses (numbers, true/false, null, lists, tables), else the text itself.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from condenser.config.schema import ConfigError

YAML_SUFFIXES = (".yaml", ".yml")


def parse_item(item: str) -> tuple[str, Any]:
    """'condense.outer_loops=20' -> ('condense.outer_loops', 20)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or "" in key.split("."):
        raise ConfigError(f"--set expects section.field=VALUE, got {item!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1, 'a.c': 2} -> {'a': {'b': 1, 'c': 2}}; a later key replaces an earlier one."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = copy.deepcopy(value)  # the caller's tables stay as they were
    return out


def items_mapping(items: Iterable[str]) -> dict[str, Any]:
    """Repeated --set items as one nested mapping (the last of two equal keys wins, as on any command line)."""
    return nested(dict(parse_item(item) for item in items))


def load_file(path: str | Path) -> dict[str, Any]:
    """A settings file: TOML (stdlib tomllib) or, by its suffix .yaml/.yml, YAML (PyYAML's safe loader)."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None
    data = _parse_yaml(path, text) if path.suffix.lower() in YAML_SUFFIXES else _parse_toml(path, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the file must hold a table of sections, not {type(data).__name__}")
    return data


def _parse_toml(path: Path, text: bytes) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ConfigError(f"--config {path}: TOML needs Python 3.11 (tomllib); give the settings as YAML "
                          "(.yaml)") from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None


def _parse_yaml(path: Path, text: bytes) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--config {path}: not valid YAML ({first})") from None

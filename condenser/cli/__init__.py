"""The `condenser` command line. Each sub-command lives in its own module and registers on `app`."""

from __future__ import annotations

import importlib

from condenser.cli.app import app

# Command modules; each registers its commands on `app` at import.
_COMMAND_MODULES = ["info", "teacher", "export", "build", "eval", "baseline", "bench", "show"]

for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"condenser.cli.{_name}")
    except ModuleNotFoundError as exc:  # a command module not written yet must not break the others
        if exc.name != f"condenser.cli.{_name}":
            raise


def main() -> None:
    app()


__all__ = ["app", "main"]

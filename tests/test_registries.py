"""Registries fill without import-order side effects: a lookup in a fresh process sees every entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from condenser.errors import UnknownNameError
from condenser.registry import Registry

REPO = Path(__file__).resolve().parent.parent


def _fresh(code: str) -> object:
    """The JSON a snippet prints, run in a new interpreter (nothing imported before it)."""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_methods_are_complete_in_a_fresh_process():
    got = _fresh("import json; from condenser.methods import METHODS; print(json.dumps(METHODS.names()))")
    assert got == ["dm", "gm", "statmatch"]


def test_the_registry_module_alone_is_complete_too():
    got = _fresh("import json; from condenser.methods.base import METHODS; "
                 "print(json.dumps(['statmatch' in METHODS, METHODS.get('gm').__name__]))")
    assert got == [True, "GradientMatching"]


def test_build_stages_are_complete_in_a_fresh_process():
    got = _fresh("import json; from condenser.stages import STAGES; "
                 "print(json.dumps({n: STAGES.get(n).__qualname__ for n in STAGES.names()}))")
    assert got == {"dm": "condense_stage", "gm": "condense_stage", "gvbsm": "decoupled_stage.<locals>.stage",
                   "sre2l": "decoupled_stage.<locals>.stage", "teddy": "decoupled_stage.<locals>.stage"}


def test_providers_are_imported_on_the_first_lookup(tmp_path, monkeypatch):
    (tmp_path / "_holder_mod.py").write_text("from condenser.registry import Registry\n"
                                             "REG = Registry('thing', providers=('_provider_mod',))\n")
    (tmp_path / "_provider_mod.py").write_text("from _holder_mod import REG\n\n\n"
                                               "@REG.register('one')\ndef one():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("_holder_mod", "_provider_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    from _holder_mod import REG

    assert "_provider_mod" not in sys.modules  # nothing imported at construction
    assert REG.names() == ["one"] and REG.get("one")() == 1 and "one" in REG
    with pytest.raises(UnknownNameError, match="unknown thing 'two'; known: one"):
        REG.get("two")


def test_a_provider_that_fails_to_import_fails_every_lookup(monkeypatch):
    registry: Registry[int] = Registry("thing", providers=("_no_such_provider_module",))
    for _ in range(2):  # not silently empty after the first failure
        with pytest.raises(ModuleNotFoundError):
            registry.names()


def test_registering_a_name_twice_is_an_error():
    registry: Registry[int] = Registry("thing")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        registry.add("a", 2)

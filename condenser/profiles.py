"""Profiles: named instances of the settings tree (condenser.config.tree), and how a command resolves its tree.

`paper` is the multisize paper's protocol (MDC paper §4.1, Appendix B.1), which the tree's defaults are; `cpu`
the reduced budgets that fit a 2-core machine; `smoke` the seconds-long budgets of the tests. A command's tree
is resolved once (`resolve`): the profile, then each `--config FILE`, then its convenience flags, then its
`--set section.field=value` items; every result and file header records it (`Config.as_dict()`), so a number is
never separated from the settings that produced it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from condenser.config.schema import ConfigError
from condenser.config.sources import items_mapping, load_file, nested
from condenser.config.tree import BenchOverlay, Config, EvalBudget, QuickEval, TeacherBudget, TeacherSection
from condenser.registry import Registry

Profile = Config  # a profile is a tree; the name is kept for the many signatures that take one

PROFILES: Registry[Config] = Registry("profile")


def _decoupled(iterations: int, bn_teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recover iterations per IPC index of every decoupled method (SRe2L Tiny: 1000; cpu/smoke: budgets), and the
    BN teacher of sre2l and teddy (gvbsm's backbones keep their own small-scale preset)."""
    teacher = bn_teacher or {}
    return {name: {"recover": {"iterations": iterations}, **(teacher if name != "gvbsm" else {})}
            for name in ("sre2l", "gvbsm", "teddy")}


# sre2l's and teddy's BN teacher on CPU: width 64 (as the cpu teacher, a quarter of the FLOPs) on a class-balanced
# 10,000-image cap. The presets' width-128 teacher on all 60,000 images took 17 min per epoch on the shared 2-core
# box (2026-12-02), so teddy's 15-epoch prior run alone would have needed over 4 hours.
_CPU_BN_TEACHER = {"teacher_kwargs": {"norm": "batch", "width": 64}, "teacher_max_train": 10000}


def profile(name: str, changes: dict[str, Any]) -> Config:
    """Register the tree `name`: the defaults (the paper's protocol) with `changes`."""
    return PROFILES.add(name, Config(name=name).updated(changes, f"the {name} profile"))


profile("paper", {})
profile("cpu", {
    # ConvNet-D3 at width 64 for 15 epochs: 91.51 % in 32 CPU-min, where width 128 for 6 epochs gave 90.69 % in
    # about 40 (docs/RESULTS.md "Teacher"): a quarter of the FLOPs buys 2.5x the epochs.
    "teacher": {"epochs": 15, "model_kwargs": {"width": 64}},
    # DM, 200 inner steps of ~1.55 CPU-s (width 128, 1 thread): ~5 min on an idle core, 10-26 min on the shared
    # 2-core box (load 4-9). Measured at exactly these budgets: IPC-1 prefix 49.9 (C) -> 69.2 (multisize),
    # IPC-10 81.8 vs 81.6 (1 seed, 300 eval epochs, 2000 test images).
    # Herding on the teacher's features picks the initial images and dm's image lr is 0.1, not 1.0: from the
    # split's first images at lr 1.0 the IPC-1/5 prefixes scored 62.8/72.0, from herding at lr 0.1 65.2/75.5
    # (docs/RESULTS.md "Accuracy levers"; herding alone, with no dm step, scores higher still).
    # Multi-formation (IDC's factor 2, the official MDC command's): each stored image holds 2x2 patches that decode
    # to 4 training images. In the Fashion-MNIST IPC-10 bench (docs/RESULTS.md "Multi-formation") it lifts MDC's
    # soft-label average over sizes 1-10 from 75.0 to 78.7 % and beats the random-real control at every size
    # (factor 1 lost at 5 of 10), for 1.65x the bytes per prefix (4x the label views).
    # condense.precision stays the tree's `auto`: bf16 where the CPU multiplies bf16, and the bench's MDC file scored
    # the same as its fp32 condensation at every size (docs/RESULTS.md "Condensation in bf16").
    # The subset term is every prefix's own dm loss (`subsets = "all"`, the mean over prefixes 1..9) at weight 9, so
    # each prefix weighs as much as the full set, as in Baseline A's separate runs. The paper's MLS was prefix 1 for
    # 11 of the bench's 15 outer loops and left sizes 2-9 without a term (docs/RESULTS.md "Every prefix at weight
    # 9"; the one-command bench with it: "The whole bench with every prefix at weight 9").
    "condense": {"outer_loops": 20, "inner_loops": 10, "init": "herding", "factor": 2,
                 "multisize": {"period": 4, "subsets": "all", "weight": 9.0}},
    "method": {"name": "dm", "dm": {"lr": 0.1}, "gm": {"n_data": 256}, **_decoupled(500, _CPU_BN_TEACHER)},
    # bf16 autocast where the CPU multiplies bf16 (AMX, AVX512-BF16), fp32 elsewhere: on a 2-core AMX Xeon an
    # IPC-10 image-epoch took 2.75 ms in fp32 and 1.02 ms in bf16 compiled, and the random-real control scored the
    # same within seed noise at every size (docs/RESULTS.md "bf16 training on a CPU that multiplies bf16")
    "evaluate": {"epochs": 300, "precision": "auto"},
    # `condenser eval`'s default: sizes 1, 2, 5, 10 (180 images) x 100 epochs x 3 seeds x ~3.75 ms = ~200 CPU-s per
    # set, + 12 scorings of 2,000 test images x ~5 s; the file and its random-real control = ~520 CPU-s, ~4.5 min in
    # 2 single-threaded processes on 2 idle cores (at factor 1; the factor-2 file trains on 4x the images: 8 min 50 s
    # wall measured, README). The bench's evaluation budget, so the numbers compare.
    "quick": {"evaluate": {"epochs": 100, "max_test": 2000}},
    # The Fashion-MNIST IPC-10 bench at factor 1 in ~95 min on 2 idle cores: 20 DM runs x 150 steps (~3600 CPU-s) +
    # 300 trainings (~6900 CPU-s, 2 processes); the arithmetic is in condenser/bench/__init__.py. At the profile's
    # factor 2 every condensed set's cells train on 4x the images; with bf16 condensation and evaluation on an AMX
    # CPU the whole bench took 94.8 min (docs/RESULTS.md "The whole bench, one command"), ~3 h in fp32.
    "bench": {"condense": {"outer_loops": 15, "inner_loops": 10, "multisize": {"period": 3}},
              "evaluate": {"epochs": 100, "max_test": 2000, "compile": True}},
})
profile("smoke", {
    "teacher": {"epochs": 1, "batch_size": 64, "max_train": 512, "max_test": 256},
    "condense": {"outer_loops": 4, "inner_loops": 2, "batch_real": 16, "width": 16, "multisize": {"period": 2}},
    "method": {"name": "dm", "gm": {"n_data": 64}, **_decoupled(20)},
    "relabel": {"views": 2},
    "evaluate": {"epochs": 4, "seeds": 2, "width": 16, "max_test": 256},
    "quick": {"evaluate": {"epochs": 2}},
})


def get_profile(name: str) -> Config:
    return PROFILES.get(name)


def default_profile_name() -> str:
    """`paper` where a GPU is present, `cpu` otherwise (README "Server")."""
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def resolve(
    base: str | Config,
    files: Iterable[str | Path] = (),
    items: Iterable[str] = (),
    aliases: Mapping[str, tuple[str, Any]] | None = None,
    bench: bool = False,
) -> Config:
    """A command's tree: the profile `base` (a name or a tree), then each settings file, then the command's
    convenience flags (`aliases`: {dotted key: (flag, value)}, None values skipped), then the `--set` items.

    `bench`: the tree `condenser bench` runs, in which the profile's bench overlay stands in for the sections it
    names before the sources apply (so `--set evaluate.epochs=5` sets what the bench runs), and `bench.*` keys
    the sources give stand in last. A flag and a `--set` item that give the same key are refused (one key, one
    value). ConfigError names any unknown key or wrong value with its source.
    """
    tree = get_profile(base) if isinstance(base, str) else base
    tree = tree.benched() if bench else tree
    for path in files:
        tree = tree.updated(load_file(path), f"--config {path}")
    flags = {key: flag for key, (flag, value) in (aliases or {}).items() if value is not None}
    for key, flag in flags.items():
        tree = tree.updated(nested({key: aliases[key][1]}), flag)
    items = list(items)
    if items:
        given = items_mapping(items)
        if both := sorted(key for key in flags if _has(given, key)):
            raise ConfigError(f"{both[0]} is given twice, by {flags[both[0]]} and by --set; give it once")
        tree = tree.updated(given, "--set")
    return (tree.benched() if bench else tree).checked()


def _has(tree: Mapping[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


__all__ = ["PROFILES", "BenchOverlay", "Config", "EvalBudget", "Profile", "QuickEval", "TeacherBudget",
           "TeacherSection", "default_profile_name", "get_profile", "profile", "resolve"]

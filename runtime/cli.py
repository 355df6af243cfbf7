"""`python -m runtime`: train on a prefix of an .mdc file, print test accuracy (argparse: no extra deps)."""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from formats import FormatError, open_mdc
from runtime.budget import Budget
from runtime.config import BACKENDS, DEFAULT_BATCH_SIZE, INITS, LABEL_MODES, SCHEDULES, TrainConfig
from runtime.data import load_test_data
from runtime.errors import BudgetError, DataError, RuntimeError_
from runtime.loader import load
from runtime.progress import LineReporter, step_reporter
from runtime.train import evaluate, train

_UNITS = {"s": ("seconds", 1.0), "m": ("seconds", 60.0), "h": ("seconds", 3600.0),
          "kb": ("memory_mb", 1 / 1024), "mb": ("memory_mb", 1.0), "mib": ("memory_mb", 1.0),
          "gb": ("memory_mb", 1024.0), "gib": ("memory_mb", 1024.0)}


def parse_budget(text: str) -> int | Budget:
    """'3' -> IPC 3; '60s', '2m', '1h' -> Budget(seconds=...); '256MB', '1GB' -> Budget(memory_mb=...)."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+", t):
        return int(t)
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)", t)
    if not m or m.group(2) not in _UNITS:
        raise BudgetError(f"budget {text!r}: expected an IPC (3), seconds (60s, 2m, 1h) "
                          "or memory (256MB, 1GB)")
    field, scale = _UNITS[m.group(2)]
    return Budget(**{field: float(m.group(1)) * scale})


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()  # every training default is said once, in runtime/config.py
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one "
                        "line, exit code 2)")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", parents=[common], help="load a prefix, train on it, print test accuracy",
                       description="Load the prefix of FILE that a budget allows, train a fresh network on it "
                                   "(onnxruntime alone, or torch), and print the test accuracy.")
    t.add_argument("file", help=".mdc file (a partial download that ends after block k is a valid IPC-k file)")
    t.add_argument("--budget", default=None, help="IPC (3), training seconds (60s, 2m) or memory (256MB) "
                   "(default: every stored block)")
    t.add_argument("--backend", choices=BACKENDS, default="onnx", help="who computes a step: onnx (the "
                   "trainer graphs in FILE, no torch) or torch (default: %(default)s)")
    t.add_argument("--test-data", default=None, help=".npz with x, y; an IDX directory; or a dataset name "
                   "(fashion-mnist); checked before training (default: no test, training only)")
    t.add_argument("--trainer", default=None, help="trainer bundle file from `condenser export-trainer` "
                   "(default: the one embedded in FILE)")
    t.add_argument("--arch", default=None, help="network to train (default: the trainer bundle's; convnet "
                   "without one)")
    t.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (default: %(default)s, the "
                   "pinned protocol)")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size (default: the trainer "
                   f"bundle's fixed batch; {DEFAULT_BATCH_SIZE} without one)")
    t.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (default: %(default)s)")
    t.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule; multistep "
                   "decays x0.2 at 2/3 and 5/6 of the epochs (default: %(default)s)")
    t.add_argument("--seed", type=int, default=d.seed, help="seed of the initial parameters and the batch "
                   "order (default: %(default)s)")
    t.add_argument("--labels", choices=LABEL_MODES, default=d.labels, help="soft (the teacher's views), hard, "
                   "or auto = soft when FILE has views (default: %(default)s)")
    t.add_argument("--init", choices=INITS, default=d.init, help="seed: fresh parameters from --seed; bundle: "
                   "the bundle's stored initial parameters (default: %(default)s)")
    t.add_argument("--threads", type=int, default=d.threads, help="intra-op threads of the backend (default: "
                   "the library's)")
    t.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    i = sub.add_parser("info", parents=[common], help="what the file holds and what each prefix costs to load")
    i.add_argument("file", help=".mdc file")
    return p


def _test_data(spec: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return load_test_data(spec)
    except DataError as exc:
        raise DataError(f"--test-data: {exc}; give an .npz with x and y, an IDX directory, or a dataset name "
                        "under $MULTISIZE_DATA") from None


def _train(a: argparse.Namespace) -> int:
    settings = dict(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, schedule=a.schedule, seed=a.seed,
                    labels=a.labels, init=a.init, threads=a.threads)
    budget = parse_budget(a.budget) if a.budget is not None else None
    test = _test_data(a.test_data) if a.test_data is not None else None  # a typo fails before training
    ds = load(a.file, budget, backend=a.backend, trainer=a.trainer, arch=a.arch, **settings)
    print(f"loaded IPC-{ds.ipc} of {a.file}: {len(ds)} images, {ds.num_classes} classes, "
          f"{ds.num_views} views per image" + (f" (budget {a.budget})" if a.budget else ""))
    lines = LineReporter()
    progress = None if a.quiet else step_reporter(f"train IPC-{ds.ipc} with {a.backend}", lines)
    try:
        model = train(ds, a.arch, a.backend, trainer=a.trainer, progress=progress, **settings)
    finally:
        lines.close()
    ms = 1000 * model.seconds / max(1, model.steps)
    print(f"trained {model.arch} with {a.backend}: {model.steps} steps in {model.seconds:.1f} s "
          f"({ms:.1f} ms/step), final loss {model.losses[-1]:.4f}")
    if test is None:
        return 0
    x, y = test
    acc = evaluate(model, x, y)
    print(f"accuracy: {acc:.4f} ({len(y)} test images)")
    return 0


def _escaped(text: str) -> str:
    """Non-printable characters (terminal escapes, newlines, bidi overrides) as Python escapes: a header
    string can never move the cursor, recolour the terminal or fake a line of output."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KINDS = {"str": lambda v: isinstance(v, str), "int": _is_int,
          "num": lambda v: _is_int(v) or isinstance(v, float),
          "shape": lambda v: isinstance(v, (tuple, list)) and all(_is_int(d) for d in v)}


def _shown(value: Any, kind: str = "str") -> str:
    """One header value as text, after checking it has the type the format promises (else `<invalid T>`).

    kind: "str", "int", "num" (int or float) or "shape" (a sequence of ints).
    """
    if not _KINDS[kind](value):
        return f"<invalid {_escaped(type(value).__name__)}>"
    if kind == "shape":
        return "(" + ", ".join(str(d) for d in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return _escaped(str(value))


def _info(a: argparse.Namespace) -> int:
    with open_mdc(a.file) as r:
        s = r.spec
        print(f"{_escaped(str(a.file))}: {_shown(s.dataset)}, {_shown(r.num_classes, 'int')} classes, "
              f"image {_shown(s.image_shape, 'shape')} ({_shown(s.encoding)}), ipc_max {_shown(r.ipc_max, 'int')}, "
              f"blocks present {_shown(r.blocks_present, 'int')}")
        if s.views is not None:
            v = s.views
            print(f"views: {_shown(v.count, 'int')} per image, codec {_shown(v.codec)}, {_shown(v.label_kind)} "
                  f"at T={_shown(v.temperature, 'num')}")
        tb = r.trainer_bundle()
        print(f"trainer bundle: {'none' if tb is None else f'{len(tb)} bytes'}")
        for k in range(1, r.blocks_present + 1):
            print(f"  IPC-{k}: {r.prefix_nbytes(k)} bytes on disk, {r.decoded_nbytes(k)} bytes decoded")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0, or 2 with one line `error: ...` on stderr for every expected failure (--debug: the traceback)."""
    a = _parser().parse_args(argv)
    try:
        return _train(a) if a.command == "train" else _info(a)
    except (RuntimeError_, FormatError) as exc:
        if a.debug:
            traceback.print_exception(exc)
        first = str(exc).strip().partition("\n")[0] or type(exc).__name__
        print(f"error: {_escaped(first)}", file=sys.stderr)
        return 2


__all__ = ["main", "parse_budget"]

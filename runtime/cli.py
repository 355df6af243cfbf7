"""`python -m runtime`: train on a prefix of an .mdc file, print test accuracy (argparse: no extra deps)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from formats import FormatError, open_mdc
from runtime.budget import Budget
from runtime.config import BACKENDS, INITS, LABEL_MODES, SCHEDULES
from runtime.data import load_test_data
from runtime.errors import BudgetError, RuntimeError_
from runtime.loader import load
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
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="load a prefix, train on it, print test accuracy")
    t.add_argument("file", help=".mdc file")
    t.add_argument("--budget", default=None, help="IPC (3), seconds (60s) or memory (256MB); default: all")
    t.add_argument("--backend", choices=BACKENDS, default="onnx")
    t.add_argument("--test-data", default=None,
                   help=".npz with x, y; an IDX directory; or a dataset name (fashion-mnist)")
    t.add_argument("--trainer", default=None, help="trainer bundle file (default: the one in FILE)")
    t.add_argument("--arch", default=None)
    t.add_argument("--epochs", type=int, default=300)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--schedule", choices=SCHEDULES, default="multistep")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--labels", choices=LABEL_MODES, default="auto")
    t.add_argument("--init", choices=INITS, default="seed")
    t.add_argument("--threads", type=int, default=None)
    i = sub.add_parser("info", help="what the file holds and what each prefix costs to load")
    i.add_argument("file")
    return p


def _train(a: argparse.Namespace) -> int:
    settings = dict(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, schedule=a.schedule, seed=a.seed,
                    labels=a.labels, init=a.init, threads=a.threads)
    budget = parse_budget(a.budget) if a.budget is not None else None
    ds = load(a.file, budget, backend=a.backend, trainer=a.trainer, arch=a.arch, **settings)
    print(f"loaded IPC-{ds.ipc} of {a.file}: {len(ds)} images, {ds.num_classes} classes, "
          f"{ds.num_views} views per image" + (f" (budget {a.budget})" if a.budget else ""))
    model = train(ds, a.arch, a.backend, trainer=a.trainer, **settings)
    ms = 1000 * model.seconds / max(1, model.steps)
    print(f"trained {model.arch} with {a.backend}: {model.steps} steps in {model.seconds:.1f} s "
          f"({ms:.1f} ms/step), final loss {model.losses[-1]:.4f}")
    if a.test_data is None:
        return 0
    x, y = load_test_data(a.test_data)
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
    a = _parser().parse_args(argv)
    try:
        return _train(a) if a.command == "train" else _info(a)
    except (RuntimeError_, FormatError) as exc:
        print(f"error: {_escaped(str(exc))}", file=sys.stderr)
        return 2


__all__ = ["main", "parse_budget"]

"""Hostile inputs to the .mdc reader and runtime.load, per category, with their outcomes (issue 13).

Every input must end in a correct read or a FormatError subclass; the table counts outcomes per
exception type, "other" (anything else) must stay 0, and each row gives the worst CPU time and the
worst growth of resident memory (psutil, sampled every 2 ms) over its inputs.

    OMP_NUM_THREADS=1 python benchmarks/hostile_inputs.py          # markdown table on stdout
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

import formats
import runtime
from formats.testing import PeakRSS, make_data, patch_arrays, topk_file, with_header

Case = tuple[str, Callable[[], Any]]  # (label, call): the call reads; returning normally is "read"


def _encode(**kw: Any) -> bytes:
    out = io.BytesIO()
    formats.encode(make_data(num_classes=3, ipc_max=3, views=2, image_shape=(1, 4, 4), **kw)).write_to(out)
    return out.getvalue()


def _peak_rss(call: Callable[[], Any]) -> tuple[Any, float, int]:
    """(outcome, CPU seconds, peak resident growth in bytes) of one call."""
    t0 = time.process_time()
    with PeakRSS() as rss:
        try:
            call()
            outcome = "read"
        except formats.FormatError as exc:
            outcome = type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - counted as a failure of the reader, and shown
            outcome = f"other: {type(exc).__name__}: {exc}"
    return outcome, time.process_time() - t0, rss.growth


# ------------------------------------------------------------------------------------------ categories


def budgets() -> Iterator[Case]:
    out = io.BytesIO()
    formats.encode(make_data(num_classes=2, ipc_max=400, views=1, image_shape=(1, 2, 2))).write_to(out)
    r = formats.open_mdc(out.getvalue())
    types = sorted({np.dtype(t).type for t in np.typecodes["AllInteger"]}, key=lambda t: np.dtype(t).str)
    for t in types:
        info = np.iinfo(t)
        for v in sorted({v for v in (1, 2, 0, int(info.max), int(info.min), 400, 401) if info.min <= v <= info.max}):
            want = r.read_raw(v).nbytes if 1 <= v <= 400 else None

            def call(t=t, v=v, want=want) -> None:
                got = r.read_raw(t(v)).nbytes
                assert got == want, f"read_raw({t.__name__}({v})) read {got} bytes, not {want}"
            yield f"{t.__name__}({v})", call
    for bad in (True, np.bool_(True), 2.0, np.float32(2), "2", b"2", None, [2], 2 + 0j, np.array(2)):
        for name in ("read", "read_raw", "prefix_nbytes", "decoded_nbytes"):
            yield f"{name}({bad!r})", lambda n=name, b=bad: getattr(r, n)(b)


def header_lies() -> Iterator[Case]:
    base = _encode()
    h0 = formats.open_mdc(base).header

    def edit(path: str, value: Any) -> bytes:
        h = msgpack.unpackb(msgpack.packb(h0))
        node, *parts = h, *path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if parts[-1] == "+":
            node.append(value)
        else:
            node[parts[-1]] = value
        return with_header(base, h)

    extra = {"name": "extra", "dtype": "uint8", "offset": 0, "length": 0}
    lies = [("layout.blocks.stride", 2**64 - 64), ("layout.blocks.stride", 2**61), ("layout.blocks.offset", 2**63),
            ("layout.blocks.length", 2**64 - 1), ("layout.arrays.+", {**extra, "shape": [2**63, 0]}),
            ("layout.arrays.+", {**extra, "shape": [1] * 71}),
            ("layout.arrays.+", {**extra, "shape": [2**40] * 2 + [0]}),
            ("nesting.formation_factor", 3), ("nesting.formation_factor", 2**63), ("nesting.formation_factor", 0),
            ("ipc_max", 2**62), ("views.count", 2**62), ("views.topk", 99), ("image_shape", [1, 4, 2**62]),
            ("pixels.std", [float("nan")]), ("layout.alignment", 3)]
    for key, value in lies:
        data = edit(key, value)
        yield f"{key}={value!r}"[:40], lambda d=data: formats.open_mdc(d).read(3)
    for raw in (msgpack.packb({**h0, "provenance": {b"k": 1}}, use_bin_type=True),
                msgpack.packb({**h0, b"top": 1}, use_bin_type=True)):
        data = with_header(base, h0, raw=raw)
        yield "bytes map key", lambda d=data: formats.open_mdc(d)


def data_lies() -> Iterator[Case]:
    files = {"u8": _encode(codec="topk-u8", topk=2), "u8-logits": _encode(codec="topk-u8", topk=2, label_kind="logits"),
             "f16": _encode(codec="topk-f16", topk=2, pixel_encoding="float16"),
             "f32": _encode(codec="dense-f32", topk=None, pixel_encoding="float32")}
    nan, inf = float("nan"), float("inf")

    def put(value: float) -> Callable[[np.ndarray], None]:
        def edit(a: np.ndarray) -> None:
            a[1, 2, 0] = value
        return edit

    def dup(a: np.ndarray) -> None:
        a[1, 0, 1, 1] = a[1, 0, 1, 0]

    lies = [("f16", "images", put(nan)), ("f32", "images", put(inf)), ("f32", "targets", put(nan)),
            ("f32", "targets", put(-0.5)), ("f16", "topk_value", put(inf)), ("f16", "topk_value", put(-1.0)),
            ("u8", "topk_scale", put(inf)), ("u8", "topk_scale", put(nan)), ("u8", "topk_scale", put(-1.0)),
            ("u8-logits", "topk_fill", put(nan)), ("u8", "topk_index", dup), ("u8", "topk_index", put(3)),
            ("u8", "mix_lam", put(5.0)), ("u8", "mix_lam", put(-3.0)), ("u8", "mix_box", put(nan)),
            ("u8", "crop", put(inf)), ("u8", "flip", put(2))]
    for file, array, fn in lies:
        bad = patch_arrays(files[file], {array: fn})
        yield f"{file}:{array} read", lambda b=bad: formats.open_mdc(b).read(3)
        yield f"{file}:{array} compact", lambda b=bad: formats.open_mdc(b).read(3, targets="compact")
        yield f"{file}:{array} runtime.load", lambda b=bad: runtime.load(b)


def _array32(n: int, items: bytes) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + items


def _keys(n: int) -> bytes:
    """n distinct 4-character keys, each with the value 0: 6 bytes per map entry."""
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", np.uint8)
    i = np.arange(n)
    rows = np.empty((n, 6), np.uint8)
    rows[:, 0], rows[:, 5] = 0xa4, 0
    for j in range(4):
        rows[:, 1 + j] = alphabet[(i // 64**j) % 64]
    return rows.tobytes()


def amplification() -> Iterator[Case]:
    base = _encode()
    raws = {"16 MiB map of 2.79M keys": b"\xdf" + struct.pack(">I", 2_790_000) + _keys(2_790_000),
            "maps of 65k keys": b"\x81\xa1a" + _array32(40, (b"\xde\xff\xff" + _keys(65535)) * 40),
            "arrays of short strings": b"\x81\xa1a" + b"".join(_array32(100_001, b"\xa2ab" * 100_000)
                                                               for _ in range(50)) + b"\x90",
            "16M fixints": b"\x81\xa1a" + _array32(16_000_000, b"\x01" * 16_000_000),
            "floats and ints": b"\x81\xa1a" + _array32(2_000_000, (b"\xcb" + b"\0" * 8 + b"\xce" + b"\1" * 4)
                                                       * 1_000_000),
            "empty arrays": b"\x81\xa1a" + _array32(190_000, b"\x90" * 190_000),
            "5000 levels": b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0"}
    for name, raw in raws.items():
        data = with_header(base, {}, raw=raw)
        yield name, lambda d=data: formats.open_mdc(d)


def decode_bombs() -> Iterator[Case]:
    for classes, ipc in ((8192, 2), (65536, 1)):
        data = topk_file(classes, ipc_max=ipc)
        tag = f"{classes} classes, {len(data) / 1e6:.1f} MB"
        yield f"{tag}: read(dense, 64 MiB cap)", lambda d=data, k=ipc: formats.open_mdc(d).read(k, max_bytes=64 << 20)
        if classes == 65536:
            yield f"{tag}: read(dense, default cap)", lambda d=data, k=ipc: formats.open_mdc(d).read(k)

        def compact(d: bytes = data) -> None:
            ds = runtime.load(d)
            ds.make_batch(np.arange(64), labels="soft", rng=np.random.default_rng(0))
        yield f"{tag}: runtime.load + one batch", compact


def sources(tmp: Path) -> Iterator[Case]:
    good = tmp / "good.mdc"
    good.write_bytes(_encode())
    fifo, loop = tmp / "fifo.mdc", tmp / "loop.mdc"
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    r, w = os.pipe()
    pipe = open(r, "rb")  # noqa: SIM115 - lives as long as the run
    closed = io.BytesIO(b"x")
    closed.close()
    bad = {"FIFO": fifo, "directory": tmp, "symlink loop": loop, "missing": tmp / "missing.mdc",
           "text stream": io.StringIO("x"), "pipe object": pipe, "int": 5, "closed BytesIO": closed,
           "strided memoryview": memoryview(np.zeros((4, 4), np.uint8)[:, ::2])}
    if os.path.exists("/dev/zero"):
        bad["/dev/zero"] = "/dev/zero"
    for name, src in bad.items():
        yield name, lambda s=src: formats.open_mdc(s)
    data = good.read_bytes()
    ref = formats.open_mdc(good).read(3)
    makers = {"bytes": lambda: data, "bytearray": lambda: bytearray(data), "memoryview": lambda: memoryview(data),
              "BytesIO": lambda: io.BytesIO(data), "open file": lambda: good.open("rb")}
    for name, make in makers.items():
        def call(make: Callable[[], Any] = make) -> None:
            src = make()
            got = formats.open_mdc(src).read(3)
            assert np.array_equal(got.images, ref.images) and np.array_equal(got.views.targets, ref.views.targets)
            runtime.load(src, budget=2)
            if isinstance(src, io.IOBase):
                src.close()
        yield name, call
    os.close(w)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        categories = [("budgets (every numpy integer dtype, bad types)", budgets()),
                      ("CRC-valid header lies", header_lies()), ("CRC-valid data lies", data_lies()),
                      ("header amplification (msgpack)", amplification()), ("decode bombs", decode_bombs()),
                      ("sources (paths, buffers, file objects)", sources(Path(d)))]
        print("| category | inputs | outcomes | worst CPU s | worst RSS growth |")
        print("|---|---:|---|---:|---:|")
        for title, cases in categories:
            counts: Counter[str] = Counter()
            worst_s = worst_b = 0.0
            for label, call in cases:
                outcome, s, b = _peak_rss(call)
                counts[outcome if not outcome.startswith("other") else "other"] += 1
                if outcome.startswith("other"):
                    print(f"<!-- {label}: {outcome} -->")
                worst_s, worst_b = max(worst_s, s), max(worst_b, b)
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"| {title} | {sum(counts.values())} | {shown} | {worst_s:.3f} | {worst_b / (1 << 20):.0f} MiB |")


if __name__ == "__main__":
    main()

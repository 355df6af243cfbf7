"""Benchmark of the .mdc container (a script, not a test).

File: 100 classes x IPC 50 x 3x32x32 uint8 images, 50 views per image, top-10 soft labels (topk-u8).
Measures bytes read and load time for IPC-1 vs IPC-50, write/read throughput against `dd` on the same
file system, and bytes per view and probability error of every soft-label codec.

    python benchmarks/bench_format.py [--dir DIR] [--update-results docs/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import formats  # noqa: E402
from formats.codecs import CodecParams, get_codec  # noqa: E402
from formats.testing import random_views, softmax  # noqa: E402

C, IPC, SHAPE, V, TOPK = 100, 50, (3, 32, 32), 50, 10
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # CIFAR-10 statistics


def teacher_like_logits(rng: np.random.Generator, labels: np.ndarray, views: int, k: int) -> np.ndarray:
    """Peaked, structured logits: true class +4..+10, three 'confusable' classes +2..+5, the rest N(0, 1.5).

    Each class has fixed confusable neighbours (a teacher confuses cat with dog, not with truck).
    """
    n = labels.shape[0]
    z = rng.normal(0.0, 1.5, size=(n, views, k)).astype(np.float32)
    neighbours = np.stack([rng.choice(np.delete(np.arange(k), c), 3, replace=False) for c in range(k)])
    rows = np.arange(n)[:, None]
    z[rows, :, labels[:, None]] += rng.uniform(4, 10, size=(n, views, 1)).transpose(0, 2, 1)
    for j in range(3):
        z[rows, :, neighbours[labels, j][:, None]] += rng.uniform(2, 5, size=(n, views, 1)).transpose(0, 2, 1)
    return z


def rrc_views(rng: np.random.Generator, n: int, targets: np.ndarray) -> formats.Views:
    """RandomResizedCrop-like whole-pixel crops (area 8-100 %), flips, CutMix with p = 0.5."""
    views = random_views(rng, n, V, C, SHAPE[1:], targets, mix=True)
    h, w = SHAPE[1:]
    area = rng.uniform(0.08, 1.0, size=(n, V)) * h * w
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), size=(n, V)))
    ch = np.clip(np.rint(np.sqrt(area / ratio)), 1, h)
    cw = np.clip(np.rint(np.sqrt(area * ratio)), 1, w)
    top = np.floor(rng.random((n, V)) * (h - ch + 1))
    left = np.floor(rng.random((n, V)) * (w - cw + 1))
    views.crop = np.stack([top, left, ch, cw], axis=-1).astype(np.float32)
    return views


def make_file_data(rng: np.random.Generator, temperature: float) -> tuple[formats.MDCData, np.ndarray]:
    n = C * IPC
    labels = np.tile(np.arange(C), IPC)
    u8 = rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)
    images = (u8.astype(np.float32) / 255 - np.array(MEAN, np.float32)[:, None, None]) / np.array(
        STD, np.float32)[:, None, None]
    probs = softmax(teacher_like_logits(rng, labels, V, C), temperature).astype(np.float32)
    data = formats.MDCData(dataset="bench", class_names=[f"c{i}" for i in range(C)], image_shape=SHAPE,
                           images=images, labels=labels, mean=MEAN, std=STD, pixel_encoding="uint8",
                           views=rrc_views(rng, n, probs), codec="topk-u8", topk=TOPK, label_kind="probs",
                           temperature=temperature, provenance={"method": "benchmark"})
    return data, probs


def drop_cache(path: Path) -> bool:
    """Evict one file from the page cache (no root needed): later reads come from the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def dd(args: list[str]) -> float:
    """Run dd; return its MB/s (decimal, as dd prints)."""
    out = subprocess.run(["dd", *args], capture_output=True, text=True, check=True).stderr
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", out)
    assert m, out
    return int(m.group(1)) / float(m.group(2)) / 1e6


def disk_bandwidth(directory: Path, mib: int) -> dict[str, float]:
    path = directory / "dd.bin"
    res = {"write": dd(["if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fdatasync"])}
    drop_cache(path)
    res["read_cold"] = dd([f"if={path}", "of=/dev/null", "bs=1M"])
    res["read_cached"] = dd([f"if={path}", "of=/dev/null", "bs=1M"])
    try:
        res["read_direct"] = dd([f"if={path}", "of=/dev/null", "bs=1M", "iflag=direct"])
    except subprocess.CalledProcessError:
        pass
    path.unlink()
    return res


def timed(fn, repeats: int, before=None) -> float:
    """Median wall time of fn() over repeats, calling before() (untimed) ahead of each run."""
    times = []
    for _ in range(repeats):
        if before:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_together(fns: list, repeats: int) -> list[float]:
    """Median wall time of each fn, measured round-robin so that they see the same machine load."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def load(path: Path, k: int, raw: bool = False, verify: bool = True) -> int:
    with formats.open_mdc(path) as r:
        (r.read_raw if raw else r.read)(k, verify=verify)
        return r.bytes_read


def codec_table(rng: np.random.Generator, rows: int = 20000) -> list[dict]:
    labels = rng.integers(0, C, size=rows)
    z = teacher_like_logits(rng, labels, 1, C)[:, 0]
    out = []
    for name in ["dense-f32", "dense-f16", "topk-f16", "topk-u8"]:
        codec = get_codec(name)
        row = {"codec": name}
        for t in (1.0, 4.0):
            p = softmax(z, t).astype(np.float32)
            params = CodecParams(C, TOPK if codec.uses_topk else None, "probs", t)
            enc = codec.encode(p, params)
            dec = codec.decode(enc, params)
            row["bytes"] = sum(a.nbytes for a in enc.values()) / rows
            row[f"mae_T{t:g}"] = float(np.abs(dec - p).mean())
            row[f"max_T{t:g}"] = float(np.abs(dec - p).max())
            row[f"mass_T{t:g}"] = float(np.sort(p, axis=1)[:, -TOPK:].sum(1).mean())
        out.append(row)
    return out


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        model = platform.processor()
    return f"{os.cpu_count()} CPU cores ({model}), {platform.system()} {platform.release()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=None, help="directory for the files (default: a temp dir)")
    ap.add_argument("--dd-mib", type=int, default=1024, help="size of the dd reference file")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--update-results", type=Path, default=None, help="replace the section in this markdown")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="bench-mdc-", dir=args.dir))
    try:
        lines = run(args, rng, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    if args.update_results:
        update_section(args.update_results, text)


def run(args: argparse.Namespace, rng: np.random.Generator, work: Path) -> list[str]:
    load_avg = os.getloadavg()[0]
    data, probs = make_file_data(rng, args.temperature)
    path = work / "bench.mdc"
    t0 = time.perf_counter()
    enc = formats.encode(data)
    t_encode = time.perf_counter() - t0
    t_write = timed(lambda: formats.write_mdc(path, data), max(1, args.repeats // 2))
    io_path = work / "io.mdc"
    from formats.atomic import atomic_write

    t_io = timed(lambda: atomic_write(io_path, enc.write_to), max(1, args.repeats // 2))
    size = path.stat().st_size

    with formats.open_mdc(path) as r:
        header_bytes = r.bytes_read
        p1, p50 = r.prefix_nbytes(1), r.prefix_nbytes(IPC)
        per_view = sum(a.length for n, a in r.spec.arrays.items() if n not in ("labels", "images")) / (C * V)
        label_view = sum(a.length for n, a in r.spec.arrays.items() if n.startswith("topk")) / (C * V)
    b1, b50 = load(path, 1), load(path, IPC)
    cache = lambda: drop_cache(path)  # noqa: E731
    warm1 = timed(lambda: load(path, 1), args.repeats * 4)
    warm50 = timed(lambda: load(path, IPC), args.repeats)
    cold1 = timed(lambda: load(path, 1), args.repeats * 4, cache)
    cold50 = timed(lambda: load(path, IPC), args.repeats, cache)
    raw_cold50 = timed(lambda: load(path, IPC, raw=True), args.repeats, cache)
    blob = path.read_bytes()
    raw_warm50, raw_nocrc50, t_crc = timed_together(  # interleaved: the shared CPU's load drifts
        [lambda: load(path, IPC, raw=True), lambda: load(path, IPC, raw=True, verify=False),
         lambda: zlib.crc32(blob)], args.repeats * 2)
    with formats.open_mdc(path) as r:
        err = float(np.abs(r.read(IPC).views.targets - probs).mean())
    bw = disk_bandwidth(work, args.dd_mib)
    small = disk_bandwidth(work, round(size / 2**20))  # dd on a file the size of ours
    codecs = codec_table(np.random.default_rng(1))

    mb = lambda b, t: b / t / 1e6  # noqa: E731
    dense32 = next(c for c in codecs if c["codec"] == "dense-f32")["bytes"]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "## Container (.mdc)",
        "",
        f"Command: `python benchmarks/bench_format.py{' --dir ' + str(args.dir) if args.dir else ''}` "
        f"({now}; {machine()}; numpy {np.__version__}; file system of `{work.parent}`). The cores were shared "
        f"with other work (1-minute load average {load_avg:.1f} at the start), so times are medians of "
        "repeated runs and CPU-bound numbers are pessimistic.",
        "",
        f"File: {C} classes x IPC {IPC} x {'x'.join(map(str, SHAPE))} uint8 images, {V} views per image "
        f"(RandomResizedCrop-like whole-pixel crops, flips, CutMix p=0.5), top-{TOPK} soft labels with codec "
        f"`topk-u8`, probabilities at T={args.temperature:g}. Teacher-like targets: softmax of logits where the "
        "true class is +4..+10 above N(0, 1.5) noise and three fixed confusable classes per class +2..+5. "
        f"File size {size / 1e6:.2f} MB ({size} bytes); one IPC block = {C} images + {C * V} views.",
        "",
        "| | IPC-1 | IPC-50 | ratio |",
        "|---|---:|---:|---:|",
        f"| bytes of the prefix (from offset 0) | {p1:,} | {p50:,} | {p50 / p1:.1f}x |",
        f"| bytes read by `open_mdc` + `read(k)` (header {header_bytes:,} B) | {b1:,} | {b50:,} | {b50 / b1:.1f}x |",
        f"| load time, page cache warm (open + read + decode) | {warm1 * 1e3:.2f} ms | {warm50 * 1e3:.1f} ms "
        f"| {warm50 / warm1:.0f}x |",
        f"| load time, file evicted from the page cache | {cold1 * 1e3:.2f} ms | {cold50 * 1e3:.1f} ms "
        f"| {cold50 / cold1:.0f}x |",
        "",
        f"Decoded IPC-50: float32 images + dense float32 targets [{C * IPC}, {V}, {C}] "
        f"({(C * IPC * (3 * 32 * 32 + V * C)) * 4 / 1e6:.0f} MB in memory); mean |p - p_hat| of the stored "
        f"soft labels: {err:.4f}.",
        "",
        "Throughput (MB/s = 1e6 bytes/s of file bytes) against `dd` on the same file system, same run:",
        "",
        "| | MB/s | vs dd |",
        "|---|---:|---:|",
        f"| dd write, {args.dd_mib} MiB, `conv=fdatasync` | {bw['write']:.0f} | 1 |",
        f"| `write_mdc` (encode + write + fsync + rename), {size / 1e6:.1f} MB | {mb(size, t_write):.0f} "
        f"| {mb(size, t_write) / bw['write']:.2f} |",
        f"| write + fsync + rename of the encoded file (encode alone: {t_encode * 1e3:.0f} ms) "
        f"| {mb(size, t_io):.0f} | {mb(size, t_io) / bw['write']:.2f} |",
        f"| dd write, {round(size / 2**20)} MiB (the file's size), `conv=fdatasync` | {small['write']:.0f} "
        f"| {small['write'] / bw['write']:.2f} |",
        f"| dd read, evicted with posix_fadvise(DONTNEED) | {bw['read_cold']:.0f} | 1 |",
        f"| `read_raw(50)` evicted (read + crc32, no decode) | {mb(size, raw_cold50):.0f} "
        f"| {mb(size, raw_cold50) / bw['read_cold']:.2f} |",
        f"| `read(50)` evicted (read + crc32 + decode to dense float32) | {mb(size, cold50):.0f} "
        f"| {mb(size, cold50) / bw['read_cold']:.2f} |",
        f"| dd read, page cache | {bw['read_cached']:.0f} | 1 |",
        f"| `read_raw(50)`, page cache | {mb(size, raw_warm50):.0f} | {mb(size, raw_warm50) / bw['read_cached']:.2f} |",
        f"| `read_raw(50, verify=False)`, page cache (no crc32) | {mb(size, raw_nocrc50):.0f} "
        f"| {mb(size, raw_nocrc50) / bw['read_cached']:.2f} |",
        f"| dd read, {round(size / 2**20)} MiB, evicted / page cache | {small['read_cold']:.0f} / "
        f"{small['read_cached']:.0f} | |",
    ]
    if "read_direct" in bw:
        out.append(f"| (dd read with `iflag=direct`, for reference) | {bw['read_direct']:.0f} | |")
    out += [
        "",
        f"Soft-label codecs at {C} classes, top-{TOPK}, {20000} teacher-like rows (same generator). Label bytes "
        "are the teacher output only; a stored view also carries its augmentation record "
        f"({per_view - label_view:.0f} B here: crop and CutMix box as float16 - lossless for whole pixels - "
        "partner int16, lambda float16, flip uint8), so a full `topk-u8` view is "
        f"{per_view:.0f} B in this file vs {dense32 + per_view - label_view:.0f} B with dense float32 labels.",
        "",
        "| codec | label bytes/view | vs dense float32 | mean abs prob. error T=1 | max T=1 | mean T=4 | max T=4 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in codecs:
        out.append(f"| `{c['codec']}` | {c['bytes']:.0f} | {dense32 / c['bytes']:.1f}x smaller | {c['mae_T1']:.5f} "
                   f"| {c['max_T1']:.4f} | {c['mae_T4']:.5f} | {c['max_T4']:.4f} |")
    u8 = next(c for c in codecs if c["codec"] == "topk-u8")
    w_e2e, w_io = mb(size, t_write) / bw["write"], mb(size, t_io) / bw["write"]
    r_cold, r_warm = mb(size, raw_cold50) / bw["read_cold"], mb(size, raw_warm50) / bw["read_cached"]
    out += [
        "",
        "Against the goals of issue 3:",
        "",
        f"* IPC-1 loads {warm50 / warm1:.0f}x faster than IPC-50 with a warm page cache and {cold50 / cold1:.0f}x "
        f"from disk (goal >= 20x), reading {b50 / b1:.0f}x fewer bytes.",
        f"* `topk-u8` labels are {dense32 / u8['bytes']:.1f}x smaller than dense float32 at {C} classes with a "
        f"mean absolute probability error of {u8['mae_T1']:.4f} at T=1 and {u8['mae_T4']:.4f} at T=4 "
        "(goal >= 10x, <= 0.01).",
        f"* Write: the file's I/O (write + fsync + rename) runs at {w_io:.1f}x dd's sustained 1 GiB rate and "
        f"{mb(size, t_io) / small['write']:.2f}x dd writing a file of the same size; "
        f"end to end, `write_mdc` reaches {w_e2e:.2f}x because encoding (top-{TOPK} selection over "
        f"{C * IPC * V:,} views x {C} classes, quantisation, checksums: {t_encode * 1e3:.0f} ms) is CPU work on "
        f"the shared cores (goal >= 0.5x: met for I/O, not end to end).",
        f"* Read: `read_raw` of the whole file from disk reaches {r_cold:.2f}x dd's cold 1 GiB read "
        f"({mb(size, raw_cold50) / small['read_cold']:.2f}x dd's cold read of the same size) and {r_warm:.2f}x "
        f"its page-cache read (goal >= 0.5x: not met with verification on). A verified read is bounded by "
        f"zlib.crc32, which alone ran at {mb(size, t_crc):.0f} MB/s on this CPU during the run; without "
        f"checksums `read_raw` reached {mb(size, raw_nocrc50):.0f} MB/s from the page cache. Decoding to dense "
        "float32 targets "
        f"({C * IPC * V * C * 4 / 1e6:.0f} MB) dominates a full `read`.",
    ]
    mass1 = codecs[0]["mass_T1"]
    mass4 = codecs[0]["mass_T4"]
    out += [
        "",
        f"Top-{TOPK} keeps {mass1:.3f} of the probability mass on average at T=1 and {mass4:.3f} at T=4; the "
        "rest is spread uniformly over the dropped classes on decode (docs/format.md). Errors are over all "
        f"{C} entries of each row.",
        "",
    ]
    return out


def update_section(path: Path, text: str) -> None:
    """Replace (or append) the '## Container (.mdc)' section, leaving every other section alone."""
    old = path.read_text() if path.exists() else "# Results\n"
    head = "## Container (.mdc)"
    start = old.find(head)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        nxt = old.find("\n## ", start + len(head))
        end = len(old) if nxt < 0 else nxt + 1
        new = old[:start] + text.rstrip("\n") + "\n" + ("\n" + old[end:] if nxt >= 0 else "")
    path.write_text(new)


if __name__ == "__main__":
    main()

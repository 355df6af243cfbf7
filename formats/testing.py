"""Small synthetic .mdc contents for tests (this package's and the runtime's).

Values are chosen on the storage lattice where that is possible (uint8-exact images, whole-pixel
boxes), so a round trip can be compared exactly; `expected_prefix` gives what read(k) must return.
`patch_arrays` and `topk_file` build the CRC-valid hostile files of tests/test_formats_lies.py and
benchmarks/hostile_inputs.py: stored data that lies, and tiny files whose dense targets are huge.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping

import numpy as np

from formats.checksum import crc32
from formats.codecs import CodecParams, get_codec, index_dtype
from formats.data import MDCData, Prefix, Views
from formats.formation import regroup_views
from formats.header import pack_header, pack_preamble
from formats.layout import PREAMBLE_SIZE, align
from formats.pixels import decode_pixels, encode_pixels
from formats.reader import open_mdc
from formats.writer import assemble


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = z / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def teacher_logits(rng: np.random.Generator, labels: np.ndarray, views: int, num_classes: int,
                   margin: float = 6.0, spread: float = 2.0) -> np.ndarray:
    """Teacher-like logits [n, V, K]: the true class ahead by ~margin, a few runner-up classes."""
    n = labels.shape[0]
    z = rng.normal(0.0, spread, size=(n, views, num_classes))
    z[np.arange(n), :, labels] += margin * rng.uniform(0.5, 1.5, size=(n, views))
    return z.astype(np.float32)


def random_views(rng: np.random.Generator, n: int, v: int, num_classes: int, hw: tuple[int, int],
                 targets: np.ndarray, mix: bool = True) -> Views:
    """Whole-pixel crops inside the image, random flips, CutMix partners in blocks <= own block."""
    h, w = hw
    ch = rng.integers(1, h + 1, size=(n, v))
    cw = rng.integers(1, w + 1, size=(n, v))
    top = rng.integers(0, h - ch + 1)
    left = rng.integers(0, w - cw + 1)
    crop = np.stack([top, left, ch, cw], axis=-1).astype(np.float32)
    partner = np.full((n, v), -1, dtype=np.int32)
    box = np.zeros((n, v, 4), dtype=np.float32)
    lam = np.ones((n, v), dtype=np.float32)
    if mix:
        own_block = np.arange(n) // num_classes
        limit = (own_block + 1) * num_classes  # partner < limit keeps it in a block <= own block
        chosen = rng.random((n, v)) < 0.5
        drawn = (rng.random((n, v)) * limit[:, None]).astype(np.int32)
        partner = np.where(chosen, drawn, -1).astype(np.int32)
        bh = rng.integers(0, h + 1, size=(n, v))
        bw = rng.integers(0, w + 1, size=(n, v))
        bt = rng.integers(0, h - bh + 1)
        bl = rng.integers(0, w - bw + 1)
        mixed_box = np.stack([bt, bl, bh, bw], axis=-1).astype(np.float32)
        box = np.where(chosen[..., None], mixed_box, 0.0).astype(np.float32)
        lam = np.where(chosen, 1.0 - bh * bw / (h * w), 1.0).astype(np.float32)
    return Views(crop=crop, flip=rng.random((n, v)) < 0.5, mix_partner=partner, mix_box=box, mix_lam=lam,
                 targets=targets.astype(np.float32))


def make_data(*, num_classes: int = 3, ipc_max: int = 2, image_shape: tuple[int, int, int] = (1, 4, 4),
              pixel_encoding: str = "uint8", views: int = 2, codec: str = "topk-u8", topk: int | None = 2,
              label_kind: str = "probs", temperature: float = 1.0, mix: bool = True,
              trainer_bundle: bytes | None = None, seed: int = 0, formation_factor: int = 1) -> MDCData:
    """A small random MDCData; views=0 stores no views.

    formation_factor f > 1: `views` views per decoded training image, partners among decoded records,
    stored in the file's layout (f*f*views per stored image, formats/formation.py).
    """
    rng = np.random.default_rng(seed)
    c, h, w = image_shape
    n = num_classes * ipc_max
    mean = tuple(float(x) for x in rng.uniform(0.2, 0.6, size=c))
    std = tuple(float(x) for x in rng.uniform(0.2, 0.4, size=c))
    raw = rng.normal(0.0, 1.0, size=(n, c, h, w)).astype(np.float32)
    if pixel_encoding == "uint8":  # start from pixels so the stored bytes reproduce them exactly
        u = rng.integers(0, 256, size=(n, c, h, w)).astype(np.uint8)
        raw = decode_pixels(u, "uint8", mean, std)
    elif pixel_encoding == "float16":
        raw = raw.astype(np.float16).astype(np.float32)
    labels = np.tile(np.arange(num_classes, dtype=np.int64), ipc_max)
    v = None
    if views:
        ff = formation_factor * formation_factor
        decoded_labels = np.tile(np.arange(num_classes, dtype=np.int64), ipc_max * ff)
        logits = teacher_logits(rng, decoded_labels, views, num_classes)
        targets = softmax(logits, temperature) if label_kind == "probs" else logits
        v = random_views(rng, n * ff, views, num_classes * ff, (h, w), targets, mix=mix)
        v = regroup_views(v, num_classes, formation_factor, to_decoded=False)
    return MDCData(dataset="synthetic", class_names=[f"class{i}" for i in range(num_classes)],
                   image_shape=image_shape, images=raw, labels=labels, mean=mean, std=std,
                   pixel_encoding=pixel_encoding, views=v, codec=codec, topk=topk, label_kind=label_kind,
                   temperature=temperature, trainer_bundle=trainer_bundle,
                   provenance={"method": "synthetic", "seed": seed}, formation_factor=formation_factor)


def expected_prefix(data: MDCData, ipc: int) -> Prefix:
    """What reading the IPC-`ipc` prefix of a file written from `data` must return."""
    c = data.num_classes
    n = ipc * c
    images = decode_pixels(encode_pixels(data.images[:n], data.pixel_encoding, data.mean, data.std),
                           data.pixel_encoding, data.mean, data.std)
    views = None
    if data.views is not None:
        src = data.views
        v = src.num_views
        codec = get_codec(data.codec)
        params = CodecParams(c, data.topk if codec.uses_topk else None, data.label_kind, data.temperature)
        # Encode the whole file's rows: scale dtypes are chosen per file, so encode as the writer does.
        full = codec.decode(codec.encode(src.targets.reshape(-1, c), params), params)
        targets = full.reshape(src.targets.shape)[:n]
        views = Views(crop=src.crop[:n].astype(np.float32), flip=np.asarray(src.flip[:n], bool),
                      mix_partner=src.mix_partner[:n].astype(np.int32),
                      mix_box=src.mix_box[:n].astype(np.float32), mix_lam=src.mix_lam[:n].astype(np.float32),
                      targets=targets.reshape(n, v, c))
    return Prefix(ipc=ipc, images=images, labels=np.asarray(data.labels[:n], np.int64), views=views,
                  num_classes=c, label_kind=data.label_kind if views else None,
                  temperature=float(data.temperature) if views else None,
                  formation_factor=int(data.formation_factor))


def assert_prefix_equal(a: Prefix, b: Prefix) -> None:
    """Exact equality of two prefixes (arrays bit for bit)."""
    assert a.ipc == b.ipc and a.num_classes == b.num_classes and a.formation_factor == b.formation_factor
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.views is None) == (b.views is None)
    if a.views is not None and b.views is not None:
        for name in ("crop", "flip", "mix_partner", "mix_box", "mix_lam", "targets"):
            np.testing.assert_array_equal(getattr(a.views, name), getattr(b.views, name), err_msg=name)


def patch_arrays(data: bytes, edits: Mapping[str, Callable[[np.ndarray], None]]) -> bytes:
    """The file `data` with stored arrays edited in place (name -> fn(array [ipc_max, C, ...], writable))
    and every block checksum recomputed: what a malicious writer produces."""
    with open_mdc(data) as r:
        raw = r.read_raw(r.ipc_max)
        out = bytearray(data)
        for name, edit in edits.items():
            spec = r.spec.arrays[name]
            a = raw.arrays[name].copy()
            edit(a)
            for i in range(r.ipc_max):
                start = r.block_range(i)[0] + spec.offset
                out[start:start + spec.length] = np.ascontiguousarray(a[i], dtype=spec.np_dtype).tobytes()
        header = dict(r.header)
        layout = dict(header["layout"])
        blocks = dict(layout["blocks"])
        blocks["crc32"] = [crc32(out[slice(*r.block_range(i))]) for i in range(r.ipc_max)]
        layout["blocks"], header["layout"] = blocks, layout
        return with_header(bytes(out), header)


def with_header(data: bytes, header: dict, raw: bytes | None = None) -> bytes:
    """The body of `data` behind a new header (or raw msgpack bytes) with a valid checksum."""
    old = int.from_bytes(data[12:16], "little")
    body = data[align(PREAMBLE_SIZE + old):]
    hb = raw if raw is not None else pack_header(header)
    head = pack_preamble(len(hb), crc32(hb)) + hb
    return head + b"\0" * (align(len(head)) - len(head)) + body


def topk_file(num_classes: int, ipc_max: int = 1, topk: int = 1, views: int = 1, seed: int = 0) -> bytes:
    """A valid topk-u8 file of 1x2x2 uint8 images, built from stored arrays: a few bytes per view however
    many classes, while its dense targets take ipc_max * C * views * C * 4 bytes (a decode bomb)."""
    rng = np.random.default_rng(seed)
    c, n = num_classes, num_classes * ipc_max
    idx = (rng.integers(0, c, size=(n, views, 1)) + np.arange(topk)) % c  # k distinct classes per view
    stored = {
        "labels": np.tile(np.arange(c, dtype="<i4"), ipc_max),
        "images": rng.integers(0, 256, size=(n, 1, 2, 2), dtype=np.uint8),
        "crop": np.tile(np.array([0, 0, 2, 2], "<f2"), (n, views, 1)),
        "flip": rng.integers(0, 2, size=(n, views), dtype=np.uint8),
        "mix_partner": np.full((n, views), -1, "<i2"),
        "mix_box": np.zeros((n, views, 4), "<f2"),
        "mix_lam": np.ones((n, views), "<f2"),
        "topk_index": idx.astype(index_dtype(c)),
        "topk_value": rng.integers(0, 256, size=(n, views, topk), dtype=np.uint8),
        "topk_scale": np.full((n, views), 1 / 255 / topk, "<f2"),
    }
    meta = MDCData(dataset="decode-bomb", class_names=[f"c{i}" for i in range(c)], image_shape=(1, 2, 2),
                   images=np.zeros((n, 1, 2, 2), np.float32), labels=stored["labels"].astype(np.int64),
                   mean=(0.5,), std=(0.25,))
    views_hdr = {"count": views, "codec": "topk-u8", "topk": topk, "label_kind": "probs", "temperature": 1.0}
    out = io.BytesIO()
    assemble(meta, stored, views_hdr, created="2000-01-01T00:00:00+00:00").write_to(out)
    return out.getvalue()


class PeakRSS:
    """Peak growth of this process's resident memory inside a `with` block, sampled every 2 ms (psutil).

    For the hostile-input tests and benchmarks/hostile_inputs.py; tracemalloc would be exact but slows the
    header scan's Python loop about 50-fold. psutil is a dev dependency, imported only here.
    """

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self._proc, self._interval = psutil.Process(), interval
        self.growth = 0

    def __enter__(self) -> PeakRSS:
        import threading

        self._start = self._peak = self._proc.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(self._interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.growth = max(self._peak, self._proc.memory_info().rss) - self._start

"""docs/format.md is enough to read a file: an independent reader written from the spec alone
(struct + msgpack + numpy, nothing from formats/) agrees with formats.open_mdc."""

from __future__ import annotations

import struct
import zlib
from math import prod
from pathlib import Path

import msgpack
import numpy as np
import pytest

import formats
from formats.testing import make_data

DT = {"uint8": "<u1", "uint16": "<u2", "int16": "<i2", "int32": "<i4", "float16": "<f2", "float32": "<f4"}


def spec_read(data: bytes, k: int) -> dict[str, np.ndarray]:
    magic, major, _minor, hlen, hcrc = struct.unpack_from("<8sHHII", data, 0)
    assert magic == b"\x89MDC\r\n\x1a\n" and major == 1
    hb = data[24:24 + hlen]
    assert zlib.crc32(hb) == hcrc
    h = msgpack.unpackb(hb)
    body = -(-(24 + hlen) // 64) * 64
    blocks = h["layout"]["blocks"]
    end0 = body + blocks["offset"] + blocks["length"]
    present = 0 if end0 > len(data) else min(h["ipc_max"], (len(data) - end0) // blocks["stride"] + 1)
    assert k <= present
    arrays: dict[str, np.ndarray] = {}
    for a in h["layout"]["arrays"]:
        parts = []
        for i in range(k):
            start = body + blocks["offset"] + i * blocks["stride"]
            assert zlib.crc32(data[start:start + blocks["length"]]) == blocks["crc32"][i]
            assert (start + a["offset"]) % 64 == 0
            parts.append(np.frombuffer(data, DT[a["dtype"]], prod(a["shape"]), start + a["offset"]).reshape(a["shape"]))
        arrays[a["name"]] = np.concatenate(parts)
    c = h["num_classes"]
    assert (arrays["labels"] == np.tile(np.arange(c), k)).all()
    px = h["pixels"]
    mean = np.array(px["mean"], np.float32)[:, None, None]
    std = np.array(px["std"], np.float32)[:, None, None]
    img = arrays["images"].astype(np.float32)
    out = {"images": (img / np.float32(255) - mean) / std if px["encoding"] == "uint8" else img}
    v = h.get("views")
    if v:
        out["targets"] = spec_targets(arrays, v, c)
    return out


def spec_targets(a: dict[str, np.ndarray], v: dict, big_k: int) -> np.ndarray:
    if v["codec"].startswith("dense"):
        return a["targets"].astype(np.float32)
    idx = a["topk_index"].astype(np.int64)
    k = idx.shape[-1]
    logits = v["label_kind"] == "logits"
    off = a["topk_fill"] if logits else np.zeros(idx.shape[:-1], np.float32)
    if v["codec"] == "topk-u8":
        vals = off[..., None] + a["topk_value"].astype(np.float32) * a["topk_scale"].astype(np.float32)[..., None]
    else:
        vals = a["topk_value"].astype(np.float32)
    if logits:
        rest = off
    else:
        rest = np.maximum(0, 1 - vals.sum(-1)) / (big_k - k) if k < big_k else np.zeros_like(off)
    dense = np.repeat(rest[..., None].astype(np.float32), big_k, axis=-1)
    np.put_along_axis(dense, idx, vals, axis=-1)
    return dense


@pytest.mark.parametrize("codec, kind", [("dense-f16", "probs"), ("dense-f32", "logits"), ("topk-f16", "probs"),
                                         ("topk-f16", "logits"), ("topk-u8", "probs"), ("topk-u8", "logits")])
@pytest.mark.parametrize("encoding", ["uint8", "float16"])
def test_spec_reader_agrees(tmp_path: Path, codec: str, kind: str, encoding: str) -> None:
    data = make_data(num_classes=5, ipc_max=3, views=2, image_shape=(3, 5, 7), codec=codec, topk=3,
                     label_kind=kind, pixel_encoding=encoding, temperature=2.0, trainer_bundle=b"t" * 99)
    path = tmp_path / "x.mdc"
    formats.write_mdc(path, data)
    raw = path.read_bytes()
    with formats.open_mdc(path) as r:
        for k in (1, 3):
            mine, ref = spec_read(raw, k), r.read(k)
            np.testing.assert_allclose(mine["images"], ref.images, rtol=0, atol=1e-6)
            np.testing.assert_allclose(mine["targets"].reshape(ref.views.targets.shape), ref.views.targets,
                                       rtol=1e-6, atol=1e-7)
        cut = raw[: r.prefix_nbytes(2)]
    spec_read(cut, 2)
    with pytest.raises(AssertionError):
        spec_read(cut, 3)

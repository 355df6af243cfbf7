"""The .mdc container round trip: property tests over shapes, encodings, views and codecs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import formats
from formats.codecs import CodecParams, get_codec
from formats.testing import assert_prefix_equal, expected_prefix, make_data, softmax

CODECS = ["dense-f16", "dense-f32", "topk-f16", "topk-u8"]


@st.composite
def datasets(draw: st.DrawFn) -> formats.MDCData:
    c = draw(st.integers(1, 6))
    codec = draw(st.sampled_from(CODECS))
    return make_data(
        num_classes=c,
        ipc_max=draw(st.integers(1, 4)),
        image_shape=(draw(st.sampled_from([1, 3])), draw(st.integers(1, 6)), draw(st.integers(1, 6))),
        pixel_encoding=draw(st.sampled_from(["uint8", "float16", "float32"])),
        views=draw(st.integers(0, 3)),
        codec=codec,
        topk=draw(st.integers(1, c)) if codec.startswith("topk") else None,
        label_kind=draw(st.sampled_from(["probs", "logits"])),
        temperature=draw(st.sampled_from([1.0, 4.0])),
        mix=draw(st.booleans()),
        trainer_bundle=draw(st.one_of(st.none(), st.binary(max_size=100))),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=datasets())
def test_every_prefix_equals_the_first_records_written(data: formats.MDCData) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.mdc"
        formats.write_mdc(path, data)
        with formats.open_mdc(path) as r:
            assert r.ipc_max == data.ipc_max and r.num_classes == data.num_classes
            assert r.blocks_present == data.ipc_max
            assert r.trainer_bundle() == data.trainer_bundle
            full = r.read(data.ipc_max)
            for k in range(1, data.ipc_max + 1):
                got = r.read(k)
                assert_prefix_equal(got, expected_prefix(data, k))
                n = k * data.num_classes
                np.testing.assert_array_equal(got.images, full.images[:n])
                if data.pixel_encoding != "uint8":
                    np.testing.assert_array_equal(got.images, data.images[:n])
                assert got.images.dtype == np.float32 and got.labels.dtype == np.int64


@pytest.mark.parametrize("encoding", ["uint8", "float16", "float32"])
def test_pixels_dequantize_to_the_normalized_images(tmp_path: Path, encoding: str) -> None:
    data = make_data(pixel_encoding=encoding, image_shape=(3, 5, 4), views=0)
    rng = np.random.default_rng(1)
    data.images = rng.normal(size=data.images.shape).astype(np.float32)  # off the uint8 lattice
    formats.write_mdc(tmp_path / "x.mdc", data)
    got = formats.open_mdc(tmp_path / "x.mdc").read(data.ipc_max).images
    # uint8 error is at most half a grey level in normalized units, inside the 0..255 range
    tol = {"uint8": 0.5 / 255 / min(data.std) + 1e-6, "float16": 2e-3, "float32": 0.0}[encoding]
    lo = (0 - np.array(data.mean)) / np.array(data.std)
    hi = (1 - np.array(data.mean)) / np.array(data.std)
    want = data.images
    if encoding == "uint8":
        want = np.clip(want, lo[None, :, None, None], hi[None, :, None, None])
    assert np.abs(got - want).max() <= tol


def _rows(k: int = 12, m: int = 500, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=(m, k)).astype(np.float32)
    z[np.arange(m), rng.integers(0, k, m)] += 6
    return z, softmax(z, temperature).astype(np.float32)


@pytest.mark.parametrize("codec", ["topk-f16", "topk-u8"])
def test_topk_probs_spread_the_missing_mass_uniformly(codec: str) -> None:
    _, p = _rows()
    params = CodecParams(12, 3, "probs", 1.0)
    c = get_codec(codec)
    dec = c.decode(c.encode(p, params), params)
    idx = np.argsort(-p, axis=1)[:, :3]
    kept = np.take_along_axis(p, idx, 1)
    np.testing.assert_allclose(np.take_along_axis(dec, idx, 1), kept, atol=kept[:, :1].max() / 255)
    dropped = np.ones_like(p, bool)
    np.put_along_axis(dropped, idx, False, 1)
    rest = dec[dropped].reshape(len(p), 9)
    np.testing.assert_allclose(rest, rest[:, :1].repeat(9, 1))  # uniform over the dropped classes
    np.testing.assert_allclose(dec.sum(1), 1.0, atol=2e-3)


@pytest.mark.parametrize("codec", ["topk-f16", "topk-u8"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_topk_logits_fill_keeps_softmax_of_kept_classes(codec: str, temperature: float) -> None:
    z, p = _rows(temperature=temperature)
    params = CodecParams(12, 4, "logits", temperature)
    c = get_codec(codec)
    q = softmax(c.decode(c.encode(z, params), params), temperature)
    idx = np.argsort(-p, axis=1)[:, :4]
    tol = 2e-3 if codec == "topk-f16" else 3e-2
    np.testing.assert_allclose(np.take_along_axis(q, idx, 1), np.take_along_axis(p, idx, 1), atol=tol)
    dropped = np.ones_like(p, bool)
    np.put_along_axis(dropped, idx, False, 1)
    q_rest, p_rest = q[dropped].reshape(len(p), 8), p[dropped].reshape(len(p), 8)
    np.testing.assert_allclose(q_rest.sum(1), p_rest.sum(1), atol=tol)  # dropped mass kept ...
    np.testing.assert_allclose(q_rest, q_rest[:, :1].repeat(8, 1), rtol=1e-5)  # ... and spread uniformly


def test_dense_codecs_and_error_bounds() -> None:
    _, p = _rows(k=100, m=300)
    for name, bound in [("dense-f32", 0.0), ("dense-f16", 5e-4), ("topk-u8", 0.01), ("topk-f16", 0.01)]:
        c = get_codec(name)
        params = CodecParams(100, 10 if c.uses_topk else None, "probs", 1.0)
        dec = c.decode(c.encode(p, params), params)
        err = np.abs(dec - p)
        assert (err.max() if name.startswith("dense") else err.mean()) <= bound, name


def test_topk_indices_widen_past_256_classes() -> None:
    p = softmax(np.random.default_rng(0).normal(size=(4, 300)).astype(np.float32))
    c = get_codec("topk-u8")
    enc = c.encode(p, CodecParams(300, 5, "probs", 1.0))
    assert enc["topk_index"].dtype == np.uint16 and enc["topk_value"].dtype == np.uint8


def test_unknown_codec_lists_the_known_ones() -> None:
    with pytest.raises(formats.UnknownCodecError, match="topk-u8"):
        get_codec("zstd")


def test_views_are_narrowed_losslessly(tmp_path: Path) -> None:
    data = make_data(num_classes=4, ipc_max=3, views=3, image_shape=(1, 8, 8))
    formats.write_mdc(tmp_path / "x.mdc", data)
    arrays = {a["name"]: a["dtype"] for a in formats.open_mdc(tmp_path / "x.mdc").header["layout"]["arrays"]}
    assert arrays["crop"] == arrays["mix_box"] == arrays["mix_lam"] == "float16"  # 1 - area/64 is exact
    assert arrays["mix_partner"] == "int16"
    data = make_data(num_classes=4, ipc_max=3, views=3, image_shape=(1, 6, 6))  # 1 - area/36 is not
    formats.write_mdc(tmp_path / "y.mdc", data)
    r = formats.open_mdc(tmp_path / "y.mdc")
    assert {a["name"]: a["dtype"] for a in r.header["layout"]["arrays"]}["mix_lam"] == "float32"
    np.testing.assert_array_equal(r.read(3).views.mix_lam, data.views.mix_lam)


def test_prefix_read_touches_only_its_bytes(tmp_path: Path) -> None:
    data = make_data(num_classes=5, ipc_max=6, views=2, image_shape=(3, 8, 8))
    formats.write_mdc(tmp_path / "x.mdc", data)
    r = formats.open_mdc(tmp_path / "x.mdc")
    opened = r.bytes_read
    assert opened < r.body_offset + 1  # preamble + header only
    r.read(2)
    s = r.spec
    assert r.bytes_read - opened == s.block_stride + s.block_length
    assert r.prefix_nbytes(2) == r.block_range(1)[1] < r.file_size


def test_results_and_provenance_update_keeps_the_body(tmp_path: Path) -> None:
    path = tmp_path / "x.mdc"
    data = make_data(ipc_max=3, views=2, trainer_bundle=b"bundle")
    data.results = {1: {"acc_mean": 0.5}}
    formats.write_mdc(path, data)
    before = formats.open_mdc(path).read(3)
    formats.set_results(path, {1: {"acc_mean": 0.51, "acc_std": 0.01}, 3: {"acc_mean": 0.7}})
    formats.update_header(path, {"provenance": {"method": "mdc", "note": "x" * 500}, "x-extension": [1, 2]})
    r = formats.open_mdc(path)
    assert r.header["results"] == {"1": {"acc_mean": 0.51, "acc_std": 0.01}, "3": {"acc_mean": 0.7}}
    assert r.header["provenance"]["method"] == "mdc" and r.header["x-extension"] == [1, 2]
    assert r.trainer_bundle() == b"bundle"
    assert_prefix_equal(r.read(3), before)
    with pytest.raises(formats.InvalidDataError, match="structural"):
        formats.update_header(path, {"ipc_max": 9})
    formats.set_results(path, None)
    assert "results" not in formats.open_mdc(path).header


def test_update_header_refuses_a_damaged_body(tmp_path: Path) -> None:
    path = tmp_path / "x.mdc"
    formats.write_mdc(path, make_data(ipc_max=3, views=1))
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(formats.ChecksumError, match="block 2"):
        formats.set_results(path, {1: {"acc": 1.0}})
    assert path.read_bytes() == bytes(raw)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: setattr(d, "labels", d.labels[::-1].copy()), "IPC-major"),
        (lambda d: d.views.mix_partner.__setitem__((0, 0), 5), "mix_partner"),
        (lambda d: d.views.crop.__setitem__((0, 0, 2), 99.0), "crop"),
        (lambda d: d.views.crop.__setitem__((0, 0, 0), 0.5), "whole pixels"),
        (lambda d: setattr(d, "topk", 99), "topk"),
        (lambda d: setattr(d, "pixel_encoding", "jpeg"), "pixel_encoding"),
        (lambda d: d.views.targets.__setitem__((0, 0, 0), np.nan), "NaN"),
        (lambda d: setattr(d, "images", d.images[:-1]), "images"),
    ],
)
def test_writer_rejects_bad_data(tmp_path: Path, mutate, match: str) -> None:
    data = make_data(num_classes=3, ipc_max=2, views=2)
    mutate(data)
    with pytest.raises(formats.InvalidDataError, match=match):
        formats.write_mdc(tmp_path / "x.mdc", data)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.mdc"
    formats.write_mdc(path, make_data(ipc_max=2))
    old = path.read_bytes()

    def explode(self, f) -> None:  # write some bytes, then fail midway
        f.write(b"partial" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(formats.writer.Encoded, "write_to", explode)
    with pytest.raises(OSError, match="disk full"):
        formats.write_mdc(path, make_data(ipc_max=3))
    with pytest.raises(OSError, match="disk full"):
        formats.write_mdc(tmp_path / "new.mdc", make_data(ipc_max=3))
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mdc"]


def test_written_file_has_normal_permissions(tmp_path: Path) -> None:
    formats.write_mdc(tmp_path / "x.mdc", make_data())
    assert (tmp_path / "x.mdc").stat().st_mode & 0o444 == 0o444 & ~_umask()


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_import_formats_does_not_import_torch() -> None:
    code = "import sys, formats, formats.testing; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_multi_formation_factor_is_recorded(tmp_path: Path) -> None:
    data = make_data(image_shape=(1, 4, 4), views=4)  # f*f = 4 groups of one view per patch
    data.formation_factor = 2
    formats.write_mdc(tmp_path / "x.mdc", data)
    r = formats.open_mdc(tmp_path / "x.mdc")
    assert r.spec.formation_factor == 2
    assert r.header["nesting"] == {"order": "ipc-major", "unit": "stored_image", "formation_factor": 2}
    data.formation_factor = 3  # must divide the image size
    with pytest.raises(formats.InvalidDataError, match="formation_factor"):
        formats.write_mdc(tmp_path / "y.mdc", data)

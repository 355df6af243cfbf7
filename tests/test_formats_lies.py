"""CRC-valid lies: stored data and header values that break a rule of docs/format.md under valid checksums.

Each must end in the FormatError subclass that names the field, from formats and from runtime.load,
never in a Python error or in data that passes silently. Budgets of every numpy integer dtype read
exactly what the same Python int reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import formats
import runtime
from formats.testing import assert_prefix_equal, make_data, patch_arrays, with_header

pytestmark = [pytest.mark.filterwarnings("error"),  # a numpy warning on hostile data is a bug too
              pytest.mark.usefixtures("bounded_memory")]
MEMORY_BOUND = 64 << 20  # per test, checked by tests/conftest.py bounded_memory
C, IPC = 3, 3


def encode(**kw: Any) -> bytes:
    import io

    out = io.BytesIO()
    kw = {"views": 2} | kw
    formats.encode(make_data(num_classes=C, ipc_max=IPC, image_shape=(1, 4, 4), **kw)).write_to(out)
    return out.getvalue()


FILES = {
    "u8-probs": dict(codec="topk-u8", topk=2),
    "u8-logits": dict(codec="topk-u8", topk=2, label_kind="logits", temperature=2.0),
    "f16-probs": dict(codec="topk-f16", topk=2, pixel_encoding="float16"),
    "f32-probs": dict(codec="dense-f32", topk=None, pixel_encoding="float32"),
    "f16-dense-logits": dict(codec="dense-f16", topk=None, label_kind="logits"),
}


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {name: encode(**kw) for name, kw in FILES.items()}


def put(value: float, where: tuple = (1, 2, 0)) -> Callable[[np.ndarray], None]:
    """An edit that stores `value` at one index of the [ipc, C, ...] array (block 1: IPC-1 stays clean)."""
    def edit(a: np.ndarray) -> None:
        a[where[:a.ndim]] = value
    return edit


def duplicate_index(a: np.ndarray) -> None:
    a[1, 0, 1, 1] = a[1, 0, 1, 0]


NAN, INF = float("nan"), float("inf")
# (file, array, edit, exception, message): the message names the field
DATA_LIES = [
    ("f16-probs", "images", put(NAN), formats.InvalidDataError, "images: record 5"),
    ("f32-probs", "images", put(-INF), formats.InvalidDataError, "images: record 5"),
    ("f32-probs", "targets", put(NAN), formats.InvalidDataError, "views.targets row 10 holds NaN"),
    ("f32-probs", "targets", put(INF), formats.InvalidDataError, "views.targets row 10 holds NaN or infinity"),
    ("f32-probs", "targets", put(-0.25), formats.InvalidDataError, "views.targets row 10 holds a negative"),
    ("f32-probs", "targets", put(3e38, (1, 2)), formats.InvalidDataError, "views.targets row 10 sums to infinity"),
    ("f16-dense-logits", "targets", put(INF), formats.InvalidDataError, "views.targets row 10"),
    ("f16-probs", "topk_value", put(NAN), formats.InvalidDataError, "views.topk_value row 10 holds NaN"),
    ("f16-probs", "topk_value", put(-1.0), formats.InvalidDataError, "views.topk_value row 10 holds a negative"),
    ("u8-probs", "topk_scale", put(INF), formats.InvalidDataError, "views.topk_scale row 10 holds NaN"),
    ("u8-probs", "topk_scale", put(NAN), formats.InvalidDataError, "views.topk_scale row 10 holds NaN"),
    ("u8-probs", "topk_scale", put(-1.0), formats.InvalidDataError, "views.topk_scale row 10 is negative"),
    ("u8-logits", "topk_fill", put(NAN), formats.InvalidDataError, "views.topk_fill row 10 holds NaN"),
    ("u8-probs", "topk_index", duplicate_index, formats.InvalidDataError, "views.topk_index row 7 lists class"),
    ("u8-probs", "topk_index", put(C), formats.InvalidDataError, "views.topk_index row 10 holds class 3"),
    ("u8-probs", "mix_lam", put(5.0), formats.InvalidDataError, r"views.mix_lam\[5, 0\] = 5.0 is outside"),
    ("u8-probs", "mix_lam", put(-3.0), formats.InvalidDataError, r"views.mix_lam\[5, 0\] = -3.0 is outside"),
    ("u8-probs", "mix_lam", put(NAN), formats.InvalidDataError, r"views.mix_lam\[5, 0\] holds NaN"),
    ("u8-probs", "mix_box", put(NAN), formats.InvalidDataError, r"views.mix_box\[5, 0\] holds NaN"),
    ("u8-probs", "crop", put(INF), formats.InvalidDataError, r"views.crop\[5, 0\] holds NaN"),
    ("u8-probs", "flip", put(2), formats.InvalidDataError, "views.flip holds a value other than 0 or 1"),
    ("u8-probs", "labels", put(0, (1, 2)), formats.InvalidDataError, "record 5 in IPC block 1 has label 0"),
]


@pytest.mark.parametrize("case", DATA_LIES, ids=[f"{c[0]}:{c[1]}#{i}" for i, c in enumerate(DATA_LIES)])
def test_stored_data_lies_are_named_format_errors(files, case) -> None:
    name, array, edit, error, message = case
    bad = patch_arrays(files[name], {array: edit})
    with formats.open_mdc(bad) as r:
        assert_prefix_equal(r.read(1), formats.open_mdc(files[name]).read(1))  # block 0 is untouched
        for mode in ("dense", "compact"):
            with pytest.raises(error, match=message) as exc:
                r.read(IPC, targets=mode)
            assert type(exc.value) is error
    with pytest.raises(error, match=message):
        runtime.load(bad, budget=IPC)


def test_clean_patch_reads_back_identically(files) -> None:
    """The patching helper itself: an edit that changes nothing gives the same reads."""
    same = patch_arrays(files["u8-probs"], {"mix_lam": lambda a: None})
    with formats.open_mdc(same) as a, formats.open_mdc(files["u8-probs"]) as b:
        assert_prefix_equal(a.read(IPC), b.read(IPC))


# ------------------------------------------------------------------------------------ header lies


def header_of(data: bytes) -> dict:
    with formats.open_mdc(data) as r:
        return msgpack.unpackb(msgpack.packb(r.header))


def extra_array(shape: list[int], dtype: str = "uint8") -> Callable[[dict], None]:
    def edit(h: dict) -> None:
        h["layout"]["arrays"].append({"name": "extra", "dtype": dtype, "shape": shape, "offset": 0, "length": 0})
    return edit


def setter(path: str, value: Any) -> Callable[[dict], None]:
    def edit(h: dict) -> None:
        *parents, last = path.split(".")
        node = h
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


HEADER_LIES = [
    ("stride 2**64-64", setter("layout.blocks.stride", 2**64 - 64), "'layout.blocks.stride'"),
    ("stride past 2**62", setter("layout.blocks.stride", 2**61), "'layout.blocks.stride'"),
    ("offset 2**63", setter("layout.blocks.offset", 2**63), "'layout.blocks.offset'"),
    ("length 2**64-1", setter("layout.blocks.length", 2**64 - 1), "'layout.blocks.length'"),
    ("extra [2**63, 0]", extra_array([2**63, 0]), r"'layout.arrays\[\d+\].shape'"),
    ("extra 71 dims", extra_array([1] * 71), r"'layout.arrays\[\d+\].shape': has 71 dimensions"),
    ("extra [2**40, 2**40, 0]", extra_array([2**40, 2**40, 0]), r"'layout.arrays\[\d+\].shape'"),
    ("formation_factor 3", setter("nesting.formation_factor", 3), "'nesting.formation_factor': 3 does not divide"),
    ("formation_factor 2**63", setter("nesting.formation_factor", 2**63), "'nesting.formation_factor'"),
    ("formation_factor 0", setter("nesting.formation_factor", 0), "'nesting.formation_factor'"),
    ("formation_factor True", setter("nesting.formation_factor", True), "'nesting.formation_factor'"),
]


@pytest.mark.parametrize("case", HEADER_LIES, ids=[c[0] for c in HEADER_LIES])
def test_header_lies_are_inconsistent_header_errors(files, case) -> None:
    _, edit, message = case
    h = header_of(files["u8-probs"])
    edit(h)
    bad = with_header(files["u8-probs"], h)
    with pytest.raises(formats.InconsistentHeaderError, match=message) as exc:
        formats.open_mdc(bad)
    assert type(exc.value) is formats.InconsistentHeaderError


def test_extra_arrays_within_the_bounds_are_read_and_ignored(files) -> None:
    h = header_of(files["u8-probs"])
    extra_array([2**20, 0, 7])(h)  # empty, large but representable: fine
    with formats.open_mdc(with_header(files["u8-probs"], h)) as r, formats.open_mdc(files["u8-probs"]) as good:
        assert r.read_raw(2).arrays["extra"].shape == (2, 2**20, 0, 7)
        assert_prefix_equal(r.read(IPC), good.read(IPC))


def test_formation_factor_dividing_the_image_is_accepted() -> None:
    data = encode(views=0)
    h = header_of(data)
    h["nesting"]["formation_factor"] = 2
    with formats.open_mdc(with_header(data, h)) as r:
        assert r.spec.formation_factor == 2


def test_formation_factor_needs_a_view_group_per_patch(files) -> None:
    """2 views per stored image cannot be split into the 4 patches of factor 2 (docs/format.md §6)."""
    h = header_of(files["u8-probs"])
    h["nesting"]["formation_factor"] = 2
    with pytest.raises(formats.InconsistentHeaderError, match="'views.count': 2 views per stored image do not "
                                                               "split into the 4 patches"):
        formats.open_mdc(with_header(files["u8-probs"], h))


def test_bytes_map_keys_are_refused(files) -> None:
    h = header_of(files["u8-probs"])
    h["provenance"] = {b"raw": 1}
    raw = msgpack.packb(h, use_bin_type=True)
    with pytest.raises(formats.InconsistentHeaderError, match="'provenance'.*a map key is a bytes"):
        formats.open_mdc(with_header(files["u8-probs"], h, raw=raw))
    raw = msgpack.packb({**h, "provenance": {}, b"top": 1}, use_bin_type=True)
    with pytest.raises(formats.InconsistentHeaderError, match="a map key is a bytes; header map keys must be"):
        formats.open_mdc(with_header(files["u8-probs"], h, raw=raw))


# ------------------------------------------------------------------------------------ budgets


INT_TYPES = sorted({np.dtype(t).type for t in np.typecodes["AllInteger"]}, key=lambda t: np.dtype(t).str)


@pytest.fixture(scope="module")
def long_file() -> bytes:
    """400 blocks: more than uint8 holds, so a budget kept as a numpy integer would wrap its offsets."""
    import io

    out = io.BytesIO()
    formats.encode(make_data(num_classes=2, ipc_max=400, views=1, image_shape=(1, 2, 2))).write_to(out)
    return out.getvalue()


@pytest.mark.parametrize("int_type", INT_TYPES, ids=lambda t: t.__name__)
def test_every_numpy_integer_dtype_is_a_budget(long_file, int_type) -> None:
    with formats.open_mdc(long_file) as r:
        k = 2
        assert_prefix_equal(r.read(int_type(k)), r.read(k))
        assert r.prefix_nbytes(int_type(k)) == r.prefix_nbytes(k)
        assert r.decoded_nbytes(int_type(k)) == r.decoded_nbytes(k)
        assert r.block_range(int_type(1)) == r.block_range(1)
        big = int(min(400, np.iinfo(int_type).max))
        raw = r.read_raw(int_type(big))
        assert raw.ipc == big and type(raw.ipc) is int and raw.nbytes == r.read_raw(big).nbytes
        np.testing.assert_array_equal(raw.arrays["images"], r.read_raw(big).arrays["images"])
        if np.iinfo(int_type).min < 0:
            with pytest.raises(formats.BudgetError, match="outside 1..400") as exc:
                r.read(int_type(-1))
            assert type(exc.value) is formats.BudgetError
    assert runtime.load(long_file, budget=int_type(k)).ipc == k


def test_uint16_400_reads_exactly_400_blocks(long_file) -> None:
    """The reported out-of-bounds read: (400 - 1) * stride overflowed uint16."""
    with formats.open_mdc(long_file) as r:
        raw = r.read_raw(np.uint16(400))
        assert raw.nbytes == r.prefix_nbytes(400) - r.body_offset - r.spec.blocks_offset
        assert_prefix_equal(r.read(np.uint8(2)), r.read(2))
        with pytest.raises(formats.BudgetError, match="outside 1..400"):
            r.read_raw(np.uint16(401))


@pytest.mark.parametrize("bad", [True, False, np.bool_(True), 2.0, np.float32(2), "2", b"2", None, [2], 2 + 0j,
                                 np.array(2), np.array([2])])
def test_non_integer_budgets_are_format_budget_errors(long_file, bad) -> None:
    with formats.open_mdc(long_file) as r:
        for call in (r.read, r.read_raw, r.prefix_nbytes, r.decoded_nbytes):
            with pytest.raises(formats.BudgetError, match="must be an integer") as exc:
                call(bad)
            assert type(exc.value) is formats.BudgetError and isinstance(exc.value, ValueError)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(INT_TYPES), st.integers(-(2**63), 2**64 - 1))
def test_budget_of_any_width_reads_or_is_a_budget_error(long_file, int_type, value) -> None:
    info = np.iinfo(int_type)
    value = min(max(value, int(info.min)), int(info.max))
    with formats.open_mdc(long_file) as r:
        if 1 <= value <= 400:
            assert r.prefix_nbytes(int_type(value)) == r.prefix_nbytes(value)
            assert r.read_raw(int_type(value)).nbytes == r.read_raw(value).nbytes
        else:
            with pytest.raises(formats.BudgetError, match=f"IPC budget {value} is outside 1..400"):
                r.read_raw(int_type(value))

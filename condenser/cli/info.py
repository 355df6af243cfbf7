"""`condenser info FILE`: what an .mdc file holds, from its header alone (numpy-only: no torch import).

A header is untrusted (docs/format.md §3, `dataset`, and §8): everything it says is type-checked
before use and printed as plain text (rich `Text`, never markup) with control and format characters
escaped, and `--json` always prints valid JSON, whatever the header holds.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from condenser.cli.app import app
from formats.codecs import get_codec
from formats.layout import PREAMBLE_SIZE
from formats.views import VIEW_ARRAYS

MAX_DEPTH = 32  # nesting levels of a header value shown; deeper values become a placeholder
MAX_ROWS = 200  # provenance keys and per-size result rows printed (all of them are in --json)
MAX_COLUMNS = 16  # per-size result columns printed
_IPC_KEY = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also accepts '²', which int() rejects


# --- making header values safe to print ---------------------------------------------------------------

def _escape_char(ch: str) -> str:
    """Control, format (bidi overrides, zero-width) and line/paragraph separators: shown as an escape."""
    if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def clean_text(text: str) -> str:
    """`text` with every character that could move the cursor, recolour or reorder the terminal escaped."""
    if text.isprintable():
        return text
    return "".join(_escape_char(ch) for ch in text)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        return "$hex:" + bytes(key).hex()
    return json.dumps(to_json_value(key, MAX_DEPTH))


def to_json_value(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of a header value: bytes as {"$hex": ...}, non-finite floats as {"$float": ...},
    anything else msgpack can return as {"$repr": ...}, and containers deeper than MAX_DEPTH as a string."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$hex": bytes(value).hex()}
    if isinstance(value, (dict, list, tuple)):
        if depth >= MAX_DEPTH:
            return f"<{type(value).__name__} nested deeper than {MAX_DEPTH} levels, not shown>"
        if isinstance(value, dict):
            return {_json_key(k): to_json_value(v, depth + 1) for k, v in value.items()}
        return [to_json_value(v, depth + 1) for v in value]
    return {"$repr": f"{type(value).__name__}: {repr(value)[:200]}"}


def short_text(value: Any, limit: int = 80) -> str:
    """One printable line of at most `limit` characters for any header value."""
    text = value if isinstance(value, str) else json.dumps(to_json_value(value), ensure_ascii=False)
    text = clean_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: Any, limit: int = 80) -> Text:
    return Text(short_text(value, limit))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- the --json report --------------------------------------------------------------------------------

def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def file_report(reader) -> dict[str, Any]:
    """Header plus every section's and block's absolute byte range: the --json output (JSON-safe)."""
    s = reader.spec
    blocks = []
    for i in range(s.ipc_max):
        start, end = reader.block_range(i)
        blocks.append({"index": i, "ipc": i + 1, "offset": start, "end": end, "length": end - start,
                       "crc32": s.block_crc32[i], "present": i < reader.blocks_present})
    sections = [{"name": x.name, "offset": reader.body_offset + x.offset,
                 "end": reader.body_offset + x.offset + x.length, "length": x.length} for x in s.sections]
    ff = s.formation_factor ** 2
    return to_json_value({
        "path": str(reader.path), "file_size": reader.file_size, "version": list(reader.version),
        "header_offset": PREAMBLE_SIZE, "body_offset": reader.body_offset, "ipc_max": s.ipc_max,
        "blocks_present": reader.blocks_present, "formation_factor": s.formation_factor,
        "training_images_per_block": s.num_classes * ff,
        "label_bytes_per_stored_image": label_bytes_per_stored_image(s) if s.views is not None else 0,
        "header": reader.header, "sections": sections, "blocks": blocks,
    }, depth=-1)  # the header sits one level down: it keeps MAX_DEPTH levels of its own


def report_json(report: dict[str, Any]) -> str:
    """Strict JSON (no NaN, ASCII only, so no raw terminal escapes either)."""
    return json.dumps(report, indent=2, allow_nan=False)


# --- the text summary ---------------------------------------------------------------------------------

def _ipc_key(key: Any) -> int | None:
    """A results key that names a prefix size (int or a short ASCII-digit string), else None."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key if key >= 0 else None
    if isinstance(key, str) and _IPC_KEY.fullmatch(key):
        return int(key)
    return None


def _metric(value: Any) -> str:
    """A results cell: mean ± std where both are numbers, else the value as short text."""
    if isinstance(value, dict) and "mean" in value:
        mean, std = value["mean"], value.get("std", 0)
        if not _is_number(mean):
            return short_text(mean, 20)
        spread = f"{std:.2f}" if _is_number(std) else short_text(std, 12)
        return f"{mean:.2f} ± {spread}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else short_text(value, 24)


def _results_table(results: dict[Any, Any]) -> Table | None:
    rows = sorted(((ipc, v) for k, v in results.items()
                   if (ipc := _ipc_key(k)) is not None and isinstance(v, dict)), key=lambda r: r[0])
    if not rows:
        return None
    columns: list[Any] = []
    for _, row in rows:
        columns += [c for c in row if c not in columns]
    hidden = (len(rows) - MAX_ROWS, len(columns) - MAX_COLUMNS)
    table = Table(title="Per-size results", title_justify="left",
                  caption=f"not shown: {max(hidden[0], 0)} rows, {max(hidden[1], 0)} columns (see --json)"
                  if max(hidden) > 0 else None)
    table.add_column("IPC", justify="right")
    for c in columns[:MAX_COLUMNS]:
        table.add_column(_cell(c, 24), justify="right")
    for k, row in rows[:MAX_ROWS]:
        table.add_row(str(k), *(Text(_metric(row.get(c))) for c in columns[:MAX_COLUMNS]))
    return table


def _header_rows(h: dict[str, Any]) -> list[tuple[str, str]]:
    """Provenance (a map, or whatever the header holds there) and the writer's notes, as short text."""
    rows: list[tuple[str, str]] = []
    provenance = h.get("provenance")
    if isinstance(provenance, dict):
        items = list(provenance.items())
        rows += [(f"provenance.{short_text(k, 40)}", short_text(v)) for k, v in items[:MAX_ROWS]]
        if len(items) > MAX_ROWS:
            rows.append(("provenance", f"… {len(items) - MAX_ROWS} more keys (see --json)"))
    elif provenance is not None:
        rows.append(("provenance", short_text(provenance)))
    rows += [(key, short_text(h[key])) for key in ("created", "writer") if key in h]
    return rows


def _formation_rows(s) -> list[tuple[str, str]]:
    """The nesting unit and, with multi-formation, what one stored image decodes to (docs/format.md §4.1)."""
    f = s.formation_factor
    c, hh, ww = s.image_shape
    rows = [("nesting", f"unit: stored image, formation factor {f}")]
    if f > 1:
        rows.append(("decoded", f"each stored image = {f}x{f} patches of {hh // f}x{ww // f}, decoded to {f * f} "
                                f"training images of {c}x{hh}x{ww} ({s.ipc_max * s.num_classes * f * f} in all)"))
    return rows


def label_bytes_per_stored_image(s) -> float:
    """Bytes of view parameters and soft labels per stored image, from the block layout."""
    arrays = [a for n, a in s.arrays.items() if n in VIEW_ARRAYS or n in _codec_arrays(s)]
    return sum(a.length for a in arrays) / s.num_classes


def _codec_arrays(s) -> set[str]:
    return {a.name for a in get_codec(s.views.codec).stored(s.views.codec_params(s.num_classes))}


def _views_rows(s) -> list[tuple[str, str]]:
    if s.views is None:
        return [("views", "none (hard labels only)")]
    v, ff = s.views, s.formation_factor ** 2
    per_image = label_bytes_per_stored_image(s)
    topk = f", top-{v.topk}" if v.topk else ""
    count = str(v.count) if ff == 1 else f"{v.count} ({v.count // ff} per decoded training image)"
    return [("views per stored image", count),
            ("soft labels", f"codec {v.codec}{topk}, {v.label_kind}, temperature {v.temperature:g}"),
            ("bytes per view", f"{per_image / v.count:.1f} (augmentation parameters + teacher output)"),
            ("label bytes per stored image", f"{per_image:.1f}")]


def _prefix_rows(reader) -> list[tuple[str, str]]:
    s = reader.spec
    rows = []
    for k in sorted({1, min(10, s.ipc_max), s.ipc_max}):
        images = "" if s.formation_factor == 1 else (
            f" ({k * s.num_classes} stored, {k * s.num_classes * s.formation_factor ** 2} training images)")
        rows.append((f"IPC-{k} prefix", f"{_size(reader.prefix_nbytes(k))} from offset 0{images}"))
    return rows


def _overview(reader) -> Table:
    s = reader.spec
    present = reader.blocks_present
    state = "complete" if present == s.ipc_max else f"truncated: a valid IPC-{present} file"
    names = ", ".join(short_text(n, 40) for n in s.class_names[:10])
    names += f", … ({s.num_classes} in all)" if s.num_classes > 10 else ""
    c, hh, ww = s.image_shape
    rows: list[tuple[str, str]] = [
        ("file", f"{reader.path} ({_size(reader.file_size)}, format {reader.version[0]}.{reader.version[1]})"),
        ("dataset", short_text(s.dataset, 200)),
        ("classes", f"{s.num_classes}: {names}"),
        ("ipc_max", str(s.ipc_max)),
        ("blocks present", f"{present} of {s.ipc_max} ({state})"),
        ("records", f"{s.ipc_max * s.num_classes} stored images, IPC-major (record r = i*C + c)"),
        ("image shape", f"{c}x{hh}x{ww}"),
        ("pixels", f"{s.encoding}; mean {[round(x, 4) for x in s.mean]}, std {[round(x, 4) for x in s.std]}"),
        *_formation_rows(s),
        *_views_rows(s),
        ("bytes per block", f"{s.block_length} ({_size(s.block_length)}), stride {s.block_stride}"),
        *_prefix_rows(reader),
    ]
    rows += [(f"section {short_text(sec.name, 40)}", _size(sec.length)) for sec in s.sections]
    rows += _header_rows(reader.header)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(Text(clean_text(key)), Text(clean_text(value)))  # header parts are short_text already
    return table


def _layout(reader) -> Table:
    arrays = Table(title="Block layout (every IPC block)", title_justify="left")
    for col, just in (("array", "left"), ("dtype", "left"), ("shape per block", "left"), ("offset", "right"),
                      ("bytes", "right")):
        arrays.add_column(col, justify=just)
    for a in sorted(reader.spec.arrays.values(), key=lambda a: a.offset):
        arrays.add_row(_cell(a.name), _cell(a.dtype), "x".join(map(str, a.shape)), str(a.offset), str(a.length))
    return arrays


def render(reader, console: Console) -> None:
    """The text summary: overview, block layout, per-size results (every header value as plain text)."""
    console.print(_overview(reader))
    console.print(_layout(reader))
    results = reader.header.get("results")
    if isinstance(results, dict):
        table = _results_table(results)
        if table is not None:
            console.print(table)


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="A .mdc file.", exists=True, dir_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the header and every block's byte range.")] = False,
) -> None:
    """Summarise an .mdc file from its header (reads no image bytes)."""
    from formats import FormatError, open_mdc

    try:
        with open_mdc(file) as reader:
            if as_json:
                typer.echo(report_json(file_report(reader)))
            else:
                render(reader, Console())
    except FormatError as exc:
        typer.echo(f"error: {clean_text(str(file))}: {clean_text(str(exc))}", err=True)
        raise typer.Exit(1) from None

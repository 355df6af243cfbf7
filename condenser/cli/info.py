"""`condenser info FILE`: what an .mdc file holds, from its header alone (numpy-only: no torch import)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from condenser.cli.app import app
from formats.layout import PREAMBLE_SIZE


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=_json_default) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    return str(obj)


def file_report(reader) -> dict[str, Any]:
    """Header plus every section's and block's absolute byte range: the --json output."""
    s = reader.spec
    blocks = []
    for i in range(s.ipc_max):
        start, end = reader.block_range(i)
        blocks.append({"index": i, "ipc": i + 1, "offset": start, "end": end, "length": end - start,
                       "crc32": s.block_crc32[i], "present": i < reader.blocks_present})
    sections = [{"name": x.name, "offset": reader.body_offset + x.offset,
                 "end": reader.body_offset + x.offset + x.length, "length": x.length} for x in s.sections]
    return {"path": reader.path, "file_size": reader.file_size, "version": list(reader.version),
            "header_offset": PREAMBLE_SIZE, "body_offset": reader.body_offset, "ipc_max": s.ipc_max,
            "blocks_present": reader.blocks_present, "header": reader.header, "sections": sections,
            "blocks": blocks}


def _results_table(results: dict[str, Any]) -> Table | None:
    rows = sorted(((int(k), v) for k, v in results.items() if str(k).isdigit() and isinstance(v, dict)))
    if not rows:
        return None
    columns: list[str] = []
    for _, row in rows:
        columns += [c for c in row if c not in columns]
    table = Table(title="Per-size results", title_justify="left")
    table.add_column("IPC", justify="right")
    for c in columns:
        table.add_column(c, justify="right")
    for k, row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            if isinstance(v, dict) and "mean" in v:
                cells.append(f"{v['mean']:.2f} ± {v.get('std', 0):.2f}" if isinstance(v["mean"], (int, float))
                             else _short(v["mean"], 20))
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append("-" if v is None else _short(v, 24))
        table.add_row(str(k), *cells)
    return table


def render(reader, console: Console) -> None:
    s = reader.spec
    h = reader.header
    present = reader.blocks_present
    state = "complete" if present == s.ipc_max else f"truncated: a valid IPC-{present} file"
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column()
    names = ", ".join(s.class_names[:10]) + (f", … ({s.num_classes} in all)" if s.num_classes > 10 else "")
    c, hh, ww = s.image_shape
    rows = [
        ("file", f"{reader.path} ({_size(reader.file_size)}, format {reader.version[0]}.{reader.version[1]})"),
        ("dataset", s.dataset),
        ("classes", f"{s.num_classes}: {names}"),
        ("ipc_max", str(s.ipc_max)),
        ("blocks present", f"{present} of {s.ipc_max} ({state})"),
        ("records", f"{s.ipc_max * s.num_classes} images, IPC-major (record r = i*C + c)"),
        ("image shape", f"{c}x{hh}x{ww}"),
        ("pixels", f"{s.encoding}; mean {[round(x, 4) for x in s.mean]}, std {[round(x, 4) for x in s.std]}"),
        ("nesting", f"unit: stored image, formation factor {s.formation_factor}"),
    ]
    if s.views is not None:
        v = s.views
        view_arrays = [a for n, a in s.arrays.items() if n not in ("labels", "images")]
        per_view = sum(a.length for a in view_arrays) / (s.num_classes * v.count)
        topk = f", top-{v.topk}" if v.topk else ""
        rows += [("views per image", str(v.count)),
                 ("soft labels", f"codec {v.codec}{topk}, {v.label_kind}, temperature {v.temperature:g}"),
                 ("bytes per view", f"{per_view:.1f} (augmentation parameters + teacher output)")]
    else:
        rows.append(("views", "none (hard labels only)"))
    rows.append(("bytes per block", f"{s.block_length} ({_size(s.block_length)}), stride {s.block_stride}"))
    for k in sorted({1, min(10, s.ipc_max), s.ipc_max}):
        rows.append((f"IPC-{k} prefix", f"{_size(reader.prefix_nbytes(k))} from offset 0"))
    for sec in s.sections:
        rows.append((f"section {sec.name}", _size(sec.length)))
    for key, value in (h.get("provenance") or {}).items():
        rows.append((f"provenance.{key}", _short(value)))
    for key in ("created", "writer"):
        if key in h:
            rows.append((key, _short(h[key])))
    for key, value in rows:
        overview.add_row(key, value)
    console.print(overview)

    arrays = Table(title="Block layout (every IPC block)", title_justify="left")
    for col, just in (("array", "left"), ("dtype", "left"), ("shape per block", "left"), ("offset", "right"),
                      ("bytes", "right")):
        arrays.add_column(col, justify=just)
    for a in sorted(s.arrays.values(), key=lambda a: a.offset):
        arrays.add_row(a.name, a.dtype, "x".join(map(str, a.shape)), str(a.offset), str(a.length))
    console.print(arrays)
    results = h.get("results")
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
                typer.echo(json.dumps(file_report(reader), indent=2, default=_json_default))
            else:
                render(reader, Console())
    except FormatError as exc:
        typer.echo(f"error: {file}: {exc}", err=True)
        raise typer.Exit(1) from None

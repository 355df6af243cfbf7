"""Decoupled methods (sre2l, gvbsm, teddy): the random-real control and the results table.

    # the control of docs/RESULTS.md: random real images, labelled by the SAME teachers with the SAME views
    python benchmarks/decoupled.py control /tmp/decoupled/sre2l.mdc --out /tmp/decoupled/sre2l-control.mdc
    condenser eval /tmp/decoupled/sre2l-control.mdc --sizes 1,2,5,10 --labels soft --profile cpu
    # what the herding order is worth: the SAME images put back in recovery order, relabelled the same way
    python benchmarks/decoupled.py unherd /tmp/decoupled/sre2l.mdc --out /tmp/decoupled/sre2l-unherded.mdc
    # one markdown row per file: per-prefix soft-label accuracy, build time, soft-label bytes
    python benchmarks/decoupled.py report /tmp/decoupled/*.mdc

`control` reads the teachers (paths), the relabel settings and the codec from the method's header, so the
only difference between a file and its control is where the images come from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import formats

VIEW_ARRAYS = ("crop", "flip", "mix_partner", "mix_box", "mix_lam")


def relabel_like(path: Path, out: Path, images, labels, provenance: dict) -> int:
    """Pack `images` into `out`, relabelled by the teachers of `path` with its relabel settings and codec."""
    import torch

    from condenser.build import pack
    from condenser.data import get_spec
    from condenser.relabel import RelabelConfig, relabel
    from condenser.teacher import load_teacher

    with formats.open_mdc(path) as reader:
        header = reader.header
    prov = header["provenance"]
    teachers = prov.get("teachers") or [prov["teacher"]]
    models = [load_teacher(t["path"], device="cpu").model for t in teachers]
    rc = dict(prov["relabel"])
    rc.update(crop_scale=tuple(rc["crop_scale"]), crop_ratio=tuple(rc["crop_ratio"]))
    spec = get_spec(header["dataset"])
    with torch.no_grad():
        views = relabel(images, models, spec.num_classes, RelabelConfig(**rc), "cpu")
    v = header["views"]
    pack(out, images, labels, spec, views=views, codec=v["codec"], topk=v.get("topk"),
         pixels=header["pixels"]["encoding"], temperature=v["temperature"], trainer=None,
         provenance={**provenance, "teachers": teachers, "relabel": prov["relabel"]})
    return len(models)


def control(path: Path, out: Path, subset_seed: int) -> None:
    from condenser.data import load_dataset
    from condenser.evaluate import random_real_subset

    with formats.open_mdc(path) as reader:
        header = reader.header
    train = load_dataset(header["dataset"], "train")
    images, labels = random_real_subset(train, header["ipc_max"], seed=subset_seed)
    n = relabel_like(path, out, images, labels,
                     {"method": "random-real-control", "control_of": str(path), "subset_seed": subset_seed})
    print(f"wrote {out}: {images.shape[0]} random real images labelled by {n} teacher(s)")


def unherd(path: Path, out: Path) -> None:
    """The file's images in the order they were recovered (herding undone), relabelled like the file."""
    import torch

    with formats.open_mdc(path) as reader:
        header, prefix = reader.header, reader.read(reader.ipc_max)
    order = torch.tensor(header["provenance"]["herding_order"])  # [C, N]: position i of class c = old image
    c, n = order.shape
    herded = torch.from_numpy(prefix.images.astype("float32")).view(n, c, *prefix.images.shape[1:])
    recovered = torch.empty_like(herded)
    recovered[order.t(), torch.arange(c)] = herded  # old image order[c, i] sits at position i
    labels = torch.from_numpy(prefix.labels.astype("int64"))
    relabel_like(path, out, recovered.reshape(n * c, *herded.shape[2:]), labels,
                 {"method": "unherded", "unherded_from": str(path)})
    print(f"wrote {out}: the images of {path.name} in recovery order")


def soft_label_bytes(header: dict) -> tuple[int, int]:
    """(bytes of all view arrays, bytes of the targets alone) over every IPC block of the file."""
    arrays = header["layout"]["arrays"]
    count = header["layout"]["blocks"]["count"]
    views = sum(a["length"] for a in arrays if a["name"] not in ("labels", "images"))
    params = sum(a["length"] for a in arrays if a["name"] in VIEW_ARRAYS)
    return views * count, (views - params) * count


def report(paths: list[Path]) -> None:
    sizes: list[int] = []
    rows = []
    for path in paths:
        with formats.open_mdc(path) as reader:
            h = reader.header
        prov, results = h["provenance"], h.get("results") or {}
        sizes = sorted({*sizes, *(int(k) for k in results)})
        secs = prov.get("seconds", {})
        build_s = sum(v for k, v in secs.items() if k != "export_trainer")
        allb, targets = soft_label_bytes(h)
        rows.append((path.name, prov.get("method"), results, build_s, secs, allb, targets))
    head = "| file | method | " + " | ".join(f"IPC {k} soft (%)" for k in sizes)
    print(head + " | build s (teacher / condense / relabel) | soft-label bytes (targets) |")
    print("|" + "---|" * (len(sizes) + 4))
    for name, method, results, build_s, secs, allb, targets in rows:
        cells = []
        for k in sizes:
            soft = results.get(str(k), {}).get("soft")
            cells.append(f"{soft['mean']:.2f} ± {soft['std']:.2f}" if soft else "-")
        parts = " / ".join(f"{secs.get(k, 0):.0f}" for k in ("teacher", "condense", "relabel"))
        print(f"| {name} | {method} | " + " | ".join(cells) + f" | {build_s:.0f} ({parts}) | {allb:,} ({targets:,}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("control", help="random real subset with the same teachers and views")
    c.add_argument("file", type=Path)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--subset-seed", type=int, default=0)
    u = sub.add_parser("unherd", help="the same images in recovery order (herding undone), relabelled alike")
    u.add_argument("file", type=Path)
    u.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report", help="markdown table from evaluated files")
    r.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    if args.cmd == "control":
        control(args.file, args.out, args.subset_seed)
    elif args.cmd == "unherd":
        unherd(args.file, args.out)
    else:
        report(args.files)


if __name__ == "__main__":
    main()

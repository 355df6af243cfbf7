"""Which dataset a downloaded file may select: a registered name, never a path (docs/format.md §3, `dataset`).

A .mdc header records the dataset it was condensed from. Commands that evaluate a file need the matching
test split, but the header is untrusted: `imagefolder:/any/path` in it would make `condenser eval` read
whatever directory the file's author chose, and a `synthetic:` spec could ask for any amount of memory.
So a header may only pick one of the registered datasets (their files still come from the user's
--data-root, $MULTISIZE_DATA or the usual roots); anything else needs the user's own --dataset.
"""

from __future__ import annotations

from condenser.data.catalog import DATASETS
from condenser.errors import CondenserError


class UntrustedDatasetError(CondenserError):
    """A file's header names a dataset that only the user may choose (a path or a parametrised family)."""


def header_dataset(name: object, source: str) -> str:
    """`name` from `source` (a file's header) if it is a registered dataset name; else UntrustedDatasetError."""
    if isinstance(name, str) and name in DATASETS:
        return name
    shown = repr(name)  # repr escapes control characters
    shown = shown if len(shown) <= 80 else shown[:79] + "…"
    raise UntrustedDatasetError(
        f"{source} names dataset {shown}, which is not a registered dataset; a file never chooses the data "
        f"that is loaded: pass --dataset NAME (registered: {', '.join(DATASETS.names())}; or imagefolder:PATH)")

"""In-memory records: what the writer takes (MDCData, Views) and what the reader returns (Prefix)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

PixelEncoding = Literal["uint8", "float16", "float32"]
LabelKind = Literal["logits", "probs"]


@dataclass
class Views:
    """V augmentation views per record, with the teacher's output on each (see docs/format.md).

    Boxes are (top, left, height, width) in whole pixels. `crop` is in stored-image pixels; the crop
    is resized back to the full image size, optionally flipped, and then `mix_box` (output-view
    pixels) is replaced by the partner record under the same crop and flip (CutMix).
    """

    crop: np.ndarray  # float32 [n, V, 4]
    flip: np.ndarray  # bool [n, V]
    mix_partner: np.ndarray  # int32 [n, V]; -1 = no mix; partner's block <= own block
    mix_box: np.ndarray  # float32 [n, V, 4]
    mix_lam: np.ndarray  # float32 [n, V]; weight of the record's own image
    # float32 [n, V, K] decoded teacher outputs (logits or probs, see header), or, from
    # read(k, targets="compact"), a formats.targets.CompactTargets that decodes rows when indexed
    targets: Any

    @property
    def num_views(self) -> int:
        return int(self.flip.shape[1])

    def __len__(self) -> int:
        return int(self.flip.shape[0])


@dataclass
class MDCData:
    """Everything the writer stores. Records are IPC-major: record r = i * C + c."""

    dataset: str
    class_names: list[str]
    image_shape: tuple[int, int, int]  # (channels, height, width)
    images: np.ndarray  # float32 normalized [ipc_max * C, *image_shape]
    labels: np.ndarray  # int64 [ipc_max * C]; labels[r] == r % C
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_encoding: PixelEncoding = "uint8"
    views: Views | None = None
    codec: str = "topk-u8"
    topk: int | None = None
    label_kind: LabelKind = "probs"
    temperature: float = 1.0
    trainer_bundle: bytes | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    results: dict[Any, Any] | None = None
    formation_factor: int = 1  # multi-formation: each stored image holds f*f patches

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ipc_max(self) -> int:
        return int(self.images.shape[0]) // max(1, self.num_classes)


@dataclass
class Prefix:
    """The IPC-k prefix: the first k*C records, decoded.

    As read (`MDCReader.read`), records are the stored images. With `formation="decoded"` (or
    formats.formation.decode_prefix) they are the k*f*f*C training images of a multi-formation file
    (docs/format.md §4.1) and `stored_images` holds the k*C stored ones.
    """

    ipc: int
    images: np.ndarray  # float32 normalized [k*C, *image_shape] (decoded: [k*f*f*C, ...])
    labels: np.ndarray  # int64 [k*C] (decoded: [k*f*f*C])
    views: Views | None
    num_classes: int
    label_kind: str | None = None  # of views.targets
    temperature: float | None = None
    formation_factor: int = 1
    stored_images: np.ndarray | None = None  # set by the decoded read: float32 [k*C, *image_shape]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class RawPrefix:
    """The IPC-k prefix as stored, not decoded: per array, shape [k, *per-block shape] (first per-block
    axis = the C records of the block), stored dtype, a read-only view of the one read buffer."""

    ipc: int
    arrays: dict[str, np.ndarray]
    nbytes: int  # bytes read from the file for these blocks

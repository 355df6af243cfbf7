"""An in-memory labelled image set with a per-class index, so methods draw class batches cheaply."""

from __future__ import annotations

import functools
import hashlib

import torch

from condenser.data.spec import DatasetSpec, normalize


class ImageDataset:
    """uint8 images [N, C, H, W] + int64 labels [N] + their spec.

    The per-class index is computed once (a stable sort of the labels), so `class_indices(c)` is
    a view and lists class c's images in dataset order, which `first_of_class` relies on (IDC's
    "mix" initialisation takes the first images of each class).
    Tensors may be shared with a process-wide cache: treat them as read-only.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if tuple(images.shape[1:]) != tuple(spec.image_shape):
            raise ValueError(f"images have shape {tuple(images.shape[1:])}, spec says {spec.image_shape}")
        labels = labels.to(torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
            raise ValueError(f"labels outside [0, {spec.num_classes}) for dataset {spec.name!r}")
        self.images = images
        self.labels = labels
        self.spec = spec
        self._order = torch.sort(labels, stable=True).indices
        counts = torch.bincount(labels, minlength=spec.num_classes)
        self._counts = counts
        self._offsets = [0, *torch.cumsum(counts, 0).tolist()]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"ImageDataset({self.spec.name!r}, n={len(self)}, shape={self.spec.image_shape})"

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash (16 hex digits) of every pixel, label and spec field but the name, computed once.

        Cache keys (teacher, condensation runs, bench sets and cells) include it, so changed data trains
        anew instead of reusing, or failing on, an entry made from other data. The same files under two
        names hash alike. One sha256 pass: about 0.07 s for Fashion-MNIST's 60k training images.
        """
        spec = self.spec
        h = hashlib.sha256()
        h.update(repr((tuple(self.images.shape), spec.num_classes, spec.class_names, spec.image_shape,
                       spec.mean, spec.std, spec.allow_flip)).encode())
        h.update(self.labels.contiguous().numpy().tobytes())
        h.update(memoryview(self.images.contiguous().numpy()).cast("B"))
        return h.hexdigest()[:16]

    @property
    def class_counts(self) -> torch.Tensor:
        """Images per class, int64 [num_classes]."""
        return self._counts

    def _check_class(self, c: int) -> None:
        if not 0 <= c < self.spec.num_classes:
            raise ValueError(f"class {c} out of range [0, {self.spec.num_classes}) for {self.spec.name!r}")

    def class_indices(self, c: int) -> torch.Tensor:
        """int64 indices of class c, ascending (dataset order)."""
        self._check_class(c)
        return self._order[self._offsets[c] : self._offsets[c + 1]]

    def first_of_class(self, c: int, n: int, offset: int = 0) -> torch.Tensor:
        """Indices of class c's images number offset .. offset+n-1 in dataset order (deterministic init)."""
        idx = self.class_indices(c)
        if offset < 0 or n < 0 or offset + n > idx.numel():
            raise ValueError(
                f"class {c} of {self.spec.name!r} has {idx.numel()} images; "
                f"asked for {n} from offset {offset}"
            )
        return idx[offset : offset + n]

    def sample_class(
        self, c: int, n: int, generator: torch.Generator | None = None, replace: bool = False
    ) -> torch.Tensor:
        """n random indices of class c (without replacement unless `replace`); CPU int64."""
        idx = self.class_indices(c)
        device = generator.device if generator is not None else torch.device("cpu")
        if replace:
            if idx.numel() == 0:
                raise ValueError(f"class {c} of {self.spec.name!r} has no images")
            pick = torch.randint(0, idx.numel(), (n,), generator=generator, device=device)
        else:
            if n > idx.numel():
                raise ValueError(
                    f"class {c} of {self.spec.name!r} has {idx.numel()} images, cannot sample {n} "
                    "without replacement (pass replace=True)"
                )
            pick = torch.randperm(idx.numel(), generator=generator, device=device)[:n]
        return idx[pick.cpu()]

    def normalized(
        self, indices: torch.Tensor | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """float32 normalized images (all, or `indices`), moved as uint8 first to save bandwidth."""
        x = self.images if indices is None else self.images[indices.to(torch.int64).cpu()]
        if device is not None:
            x = x.to(device)
        return normalize(x, self.spec)

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """A new dataset of the given images (same spec), e.g. a random real IPC-k baseline."""
        indices = indices.to(torch.int64).cpu()
        return ImageDataset(self.images[indices], self.labels[indices], self.spec)

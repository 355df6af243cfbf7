"""The synthetic images being condensed: storage layout, real-image initialisation, pixel range.

Layout: `data` is [N, C, ch, H, W] (image number i of class c at [i, c]), i.e. IPC-major, so
`data.reshape(N * C, ...)` is the record order r = i*C + c of the .mdc file without a copy.
Values are in normalised space (docs/format.md §5); `clamp_` keeps them inside the image of [0, 1].
C counts the classes the set holds: all of them, or a process's share when classes are sharded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from condenser.data import ImageDataset, normalize
from condenser.methods.base import Generators, MethodConfigError, per_class_generators
from condenser.methods.formation import check_factor, decode, encode
from condenser.methods.selection import SELECTIONS, Embedder, select_indices

INIT_MODES = ("first", "random", *SELECTIONS)


@dataclass
class SyntheticSet:
    data: torch.Tensor  # [N, C, ch, H, W] float32 normalised, a leaf that requires grad
    factor: int
    init_indices: torch.Tensor  # int64 [C, N*f*f] dataset indices the images were initialised from
    low: torch.Tensor  # [ch, 1, 1] normalised value of pixel 0
    high: torch.Tensor  # [ch, 1, 1] normalised value of pixel 255

    @property
    def ipc(self) -> int:
        return int(self.data.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.data.shape[1])

    @property
    def per_image(self) -> int:
        """Decoded training samples per stored image (f*f)."""
        return self.factor * self.factor

    def decoded(self, classes: list[int] | None = None) -> torch.Tensor:
        """[K, N*f*f, ch, H, W]; per class, sample i*f*f + k is patch k of stored image i (prefix order)."""
        x = self.data if classes is None else self.data[:, classes]
        dec = decode(x, self.factor)  # [N, K, f*f, ch, H, W]
        dec = dec.transpose(0, 1)  # [K, N, f*f, ...]
        return dec.reshape(dec.shape[0], -1, *dec.shape[3:])

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep pixels inside [0, 1] (through mean/std). Idempotent: frozen images stay bit-identical."""
        torch.maximum(self.data, self.low, out=self.data)
        torch.minimum(self.data, self.high, out=self.data)


def pixel_bounds(dataset: ImageDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised values of pixels 0 and 255 per channel, computed exactly as real images are normalised."""
    ch = dataset.spec.image_shape[0]
    ends = torch.tensor([0, 255], dtype=torch.uint8).repeat(ch, 1, 1)  # [ch, 1, 2]
    x = normalize(ends, dataset.spec).to(device)
    return x[..., :1].contiguous(), x[..., 1:].contiguous()


def init_indices(dataset: ImageDataset, ipc: int, factor: int = 1, mode: str = "first", offset: int = 0,
                 generator: Generators = None, classes: Sequence[int] | None = None,
                 embedder: Embedder | None = None) -> torch.Tensor:
    """Dataset indices [K, ipc*f*f] of the real images each of `classes` (default: all) starts from.

    `first`: images offset*f*f ... in dataset order (IDC/MDC code; deterministic). `random`: a seeded
    permutation of the class, skipping offset*f*f images (Baseline B's runs use disjoint blocks), from one
    generator (drawn in class order) or one generator per class. `herding` / `kmeans`: a nested selection
    on `embedder`'s features (condenser/methods/selection.py), the first offset*f*f of it skipped.
    """
    if mode not in INIT_MODES:
        raise MethodConfigError(f"unknown init mode {mode!r}; known: {', '.join(INIT_MODES)}")
    per = factor * factor
    need, start = ipc * per, offset * per
    classes = list(range(dataset.spec.num_classes)) if classes is None else list(classes)
    gens = per_class_generators(generator, len(classes)) or [generator] * len(classes)
    if mode in SELECTIONS:
        return _selected(dataset, start, need, mode, gens, classes, embedder)
    rows = []
    for c, g in zip(classes, gens, strict=True):
        idx = dataset.class_indices(c)
        if start + need > idx.numel():
            raise MethodConfigError(
                f"class {c} of {dataset.spec.name!r} has {idx.numel()} images; initialising {ipc} images "
                f"at factor {factor} from offset {offset} needs {start + need}")
        if mode == "first":
            rows.append(idx[start:start + need])
        else:
            perm = torch.randperm(idx.numel(), generator=g)
            rows.append(idx[perm[start:start + need]])
    return torch.stack(rows)


def _selected(dataset: ImageDataset, start: int, need: int, mode: str, gens: list,
              classes: list[int], embedder: Embedder | None) -> torch.Tensor:
    """Rows of a nested selection, one class (and one generator) at a time so class shards agree."""
    if embedder is None:
        raise MethodConfigError(f"init {mode!r} selects real images on a network's features; none was given "
                                "(a build passes its teacher)")
    if mode == "kmeans" and start > 0:  # k-means with more centres is another set, not a longer order
        raise MethodConfigError("init 'kmeans' has no image offset (its selection changes with the number of "
                                "images; Baseline B's runs need one nested order): use init 'herding'")
    return torch.cat([select_indices(dataset, start + need, mode, embedder, generator=g, classes=[c])[:, start:]
                      for c, g in zip(classes, gens, strict=True)])


def init_synthetic(dataset: ImageDataset, ipc: int, factor: int = 1, mode: str = "first", offset: int = 0,
                   generator: Generators = None,
                   device: torch.device | str = "cpu", classes: Sequence[int] | None = None,
                   embedder: Embedder | None = None) -> SyntheticSet:
    """Synthetic images of `classes` (default: all) initialised from real ones (IDC "mix" tiling if factor > 1)."""
    if ipc < 1:
        raise MethodConfigError(f"ipc must be >= 1, got {ipc}")
    device = torch.device(device)
    _, height, width = dataset.spec.image_shape
    check_factor(factor, height, width)
    indices = init_indices(dataset, ipc, factor, mode, offset, generator, classes, embedder)  # [K, N*f*f]
    num_classes, per = indices.shape[0], factor * factor
    real = dataset.normalized(indices.reshape(-1))  # [C*N*f*f, ch, H, W]
    real = real.view(num_classes, ipc, per, *real.shape[1:]).transpose(0, 1)  # [N, C, f*f, ...]
    data = encode(real, factor).contiguous().to(device).requires_grad_(True)
    low, high = pixel_bounds(dataset, device)
    return SyntheticSet(data=data, factor=factor, init_indices=indices, low=low, high=high)


class MaskedSGD:
    """SGD with momentum (torch.optim.SGD semantics, no dampening) where masked entries are frozen.

    Zeroing a frozen image's gradient is not enough: its momentum buffer would keep moving it
    (docs/multisize.md). Here a frozen entry's buffer is reset to 0 and its value is copied through
    unchanged, so frozen pixels are bit-identical across steps and restart without stale momentum
    when unfrozen. `lr` may be a tensor broadcast over the parameter (per-channel learning rates).
    """

    def __init__(self, param: torch.Tensor, lr: float | torch.Tensor, momentum: float = 0.5) -> None:
        self.param = param
        self.lr = lr
        self.momentum = momentum
        self.buffer = torch.zeros_like(param, memory_format=torch.preserve_format).detach()

    def zero_grad(self) -> None:
        self.param.grad = None

    @torch.no_grad()
    def step(self, trainable: torch.Tensor | None = None) -> None:
        """One update from `param.grad`; `trainable` is a bool mask broadcastable to the parameter."""
        grad = self.param.grad
        if grad is None:
            return
        self.buffer.mul_(self.momentum).add_(grad)
        if trainable is None:
            self.param.sub_(self.lr * self.buffer)
            return
        self.buffer.masked_fill_(~trainable, 0.0)
        self.param.copy_(torch.where(trainable, self.param - self.lr * self.buffer, self.param))

    def state_dict(self) -> dict:
        return {"momentum_buffer": self.buffer.detach().cpu().clone(), "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.copy_(state["momentum_buffer"].to(self.buffer.device))

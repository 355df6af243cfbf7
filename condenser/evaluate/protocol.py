"""The pinned evaluation protocol: train a fresh network on a small image set, report last-epoch accuracy.

MDC paper §4.1 and docs/multisize.md "Evaluation protocol": ConvNet-D3, SGD lr 0.01 / momentum 0.9 /
wd 5e-4, multi-step LR at 2/3 and 5/6 of training (gamma 0.2), DSA + CutMix, **last-epoch** test
accuracy (never best-on-test), mean ± std over seeds. The budget (`EvalBudget`) is written into every result.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from condenser.augment import DSA, DSAConfig, cutmix
from condenser.compiled import compile_requested, compiled
from condenser.data import DatasetSpec, ImageDataset
from condenser.device import resolve_device, resolve_precision
from condenser.evaluate.losses import STUDENT_LOSSES
from condenser.models import build_model
from condenser.profiles import EvalBudget
from condenser.training import BatchSource, TensorSource, accuracy, one_hot, sgd, soft_cross_entropy, train_epoch
from formats import Views
from runtime.config import multistep_milestones
from runtime.torch_views import replay


@dataclass
class EvalResult:
    """Per-seed last-epoch test accuracies (percent) and the budget that produced them."""

    accuracies: list[float]
    seeds: list[int]
    labels: str  # "hard" | "soft"
    num_images: int
    arch: str
    budget: dict
    wall_seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        """Population std (ddof=0), as the papers' tables report."""
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(mean=self.mean, std=self.std)
        return d

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} ({self.labels} labels, {len(self.seeds)} seeds)"


def hard_label_source(images: torch.Tensor, labels: torch.Tensor, num_classes: int, budget: EvalBudget,
                      allow_flip: bool) -> TensorSource:
    """Normalised images with one-hot targets, per-sample DSA and CutMix (the paper's eval augmentation)."""
    strategy = budget.dsa_strategy if allow_flip else budget.dsa_strategy.replace("_flip", "")
    dsa = DSA(DSAConfig(strategy=strategy), allow_flip=allow_flip) if strategy else None
    mix = None
    if budget.cutmix_p > 0:
        mix = lambda x, y, g: cutmix(x, y, beta=budget.cutmix_beta, p=budget.cutmix_p, generator=g)  # noqa: E731
    return TensorSource(
        images=images,
        targets=one_hot(labels, num_classes),
        augment=(lambda x, g: dsa(x, generator=g)) if dsa else None,
        cutmix=mix,
    )


@dataclass
class ViewSource:
    """Soft-label views: each draw replays one stored view (crop/flip/mix) with the teacher's target.

    No extra augmentation: the view *is* the augmentation the teacher labelled.
    """

    images: torch.Tensor  # normalised [N, C, H, W]
    views: Views
    targets: torch.Tensor  # probabilities [N, V, K]

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        which = torch.randint(self.targets.shape[1], (idx.shape[0],), generator=generator)
        x = replay(self.images, self.views, idx.numpy(), which.numpy())
        return x, self.targets[idx, which]


def train_student(
    source: BatchSource,
    spec: DatasetSpec,
    budget: EvalBudget,
    seed: int,
    arch: str = "convnet",
    device: str = "auto",
    model_kwargs: dict | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    use_compile: bool | None = None,
) -> nn.Module:
    """Train a fresh `arch` on `source` with `budget` (seeded init, order and augmentation); return it.

    `use_compile` (None: `budget.compile`, or $MULTISIZE_COMPILE when that is off) trains through torch.compile
    (condenser/compiled.py): less CPU per step, parameters equal to eager's within float tolerance rather than bit
    for bit. `budget.precision` bf16 trains under autocast (condenser/training.py).
    """
    dev = resolve_device(device)
    torch.manual_seed(seed)
    kwargs = {"width": budget.width} if arch == "convnet" else {}
    kwargs.update(model_kwargs or {})
    model = build_model(arch, spec.image_shape, spec.num_classes, **kwargs).to(dev)
    wanted = use_compile if use_compile is not None else (budget.compile or None)
    step_model = compiled(model) if compile_requested(wanted) else model  # shares model's parameters
    precision = resolve_precision(budget.precision, dev)
    optimizer = sgd(model, budget.lr, budget.momentum, budget.weight_decay)
    scheduler = multistep_scheduler(optimizer, budget)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(budget.epochs):
        train_epoch(step_model, source, optimizer, budget.batch_size, generator, dev,
                    loss_fn=loss_fn or soft_cross_entropy, precision=precision)
        scheduler.step()
    return model


def multistep_scheduler(optimizer: torch.optim.Optimizer, budget: EvalBudget) -> torch.optim.lr_scheduler.MultiStepLR:
    """Per-epoch decay by `gamma` at the runtime's milestones (runtime/config.py), so both sides agree."""
    milestones = list(multistep_milestones(budget.epochs, budget.milestones))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=budget.gamma)


def accuracy_on(model: nn.Module, test: ImageDataset, device: str = "auto") -> float:
    """Accuracy (percent) of `model` on every image of `test`."""
    dev = resolve_device(device)
    mean = torch.tensor(test.spec.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(test.spec.std, device=dev).view(1, -1, 1, 1)
    return accuracy(model, test.images, test.labels, dev, mean, std)


def train_and_test(
    source: BatchSource,
    test_set: ImageDataset,
    budget: EvalBudget,
    seed: int,
    arch: str = "convnet",
    device: str = "auto",
    model_kwargs: dict | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Train a fresh `arch` on `source` with `budget`; return last-epoch test accuracy (percent)."""
    model = train_student(source, test_set.spec, budget, seed, arch, device, model_kwargs, loss_fn)
    test = test_set if budget.max_test is None else stratified_test_sample(test_set, budget.max_test)
    return accuracy_on(model, test, device)


TEST_SAMPLE_SEED = 0  # fixed: every bench row and `eval --max-test` score on the same images


def stratified_test_sample(ds: ImageDataset, n: int, seed: int = TEST_SAMPLE_SEED) -> ImageDataset:
    """A seeded, class-balanced random sample of a test split (the smoke profile, the bench, `eval --max-test`).

    Random within each class, not the split's head: test files are not in random order, and the head of
    Fashion-MNIST's scores differently from the whole split (docs/RESULTS.md, "Calibration").
    """
    return ds.subset(stratified_indices(ds, n, seed))


def stratified_indices(ds: ImageDataset, n: int, seed: int = TEST_SAMPLE_SEED) -> torch.Tensor:
    """Ascending indices of `n // num_classes` random images of every class (all of a smaller class)."""
    per_class = max(1, n // ds.spec.num_classes)
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(ds.spec.num_classes):
        idx = ds.class_indices(c)
        order = torch.randperm(idx.numel(), generator=generator)[: min(per_class, idx.numel())]
        picks.append(idx[order])
    return torch.cat(picks).sort().values


def head_indices(ds: ImageDataset, n: int) -> torch.Tensor:
    """The class-balanced head of a test split: the bench's test set before the calibration (kept to compare)."""
    per_class = max(1, n // ds.spec.num_classes)
    return torch.cat([ds.first_of_class(c, min(per_class, len(ds.class_indices(c))))
                      for c in range(ds.spec.num_classes)])


def evaluate_source(
    make_source: Callable[[], BatchSource],
    test_set: ImageDataset,
    budget: EvalBudget,
    labels: str,
    num_images: int,
    seeds: Sequence[int] | None = None,
    arch: str = "convnet",
    device: str = "auto",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:
    """Run the protocol once per seed on a fresh source (fresh augmentation state per seed)."""
    seeds = list(seeds) if seeds is not None else list(range(budget.seeds))
    started = time.time()
    accs = [train_and_test(make_source(), test_set, budget, s, arch=arch, device=device, loss_fn=loss_fn)
            for s in seeds]
    return EvalResult(
        accuracies=accs,
        seeds=seeds,
        labels=labels,
        num_images=num_images,
        arch=arch,
        budget=asdict(budget),
        wall_seconds=time.time() - started,
    )


def evaluate_images(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_set: ImageDataset,
    budget: EvalBudget,
    seeds: Sequence[int] | None = None,
    arch: str = "convnet",
    device: str = "auto",
) -> EvalResult:
    """Hard-label evaluation of normalised `images` [N, C, H, W] with integer `labels`."""
    spec = test_set.spec
    return evaluate_source(
        lambda: hard_label_source(images, labels, spec.num_classes, budget, spec.allow_flip),
        test_set, budget, "hard", int(images.shape[0]), seeds, arch, device,
    )


def evaluate_views(
    images: torch.Tensor,
    views: Views,
    test_set: ImageDataset,
    budget: EvalBudget,
    label_kind: str = "probs",
    temperature: float = 1.0,
    seeds: Sequence[int] | None = None,
    arch: str = "convnet",
    device: str = "auto",
    labels: torch.Tensor | None = None,
) -> EvalResult:
    """Soft-label evaluation: train on replayed views against the stored teacher outputs.

    The student loss is `budget.loss` (condenser.evaluate.losses), with its settings from `budget`; `mse_gt`
    needs the records' `labels`.
    """
    loss = STUDENT_LOSSES.get(budget.loss)
    targets = loss.targets(views, label_kind, temperature, labels, budget)
    return evaluate_source(
        lambda: ViewSource(images, views, targets),
        test_set, budget, "soft", int(images.shape[0]), seeds, arch, device,
        loss_fn=None if budget.loss == "soft_ce" else lambda z, y: loss.fn(z, y, budget),
    )

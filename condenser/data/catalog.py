"""The dataset registry: every named dataset, its spec (DC/DSA normalisation constants) and files."""

from __future__ import annotations

from condenser.data.cifar import CifarSource
from condenser.data.mnist import IdxSource
from condenser.data.source import DatasetSource
from condenser.data.spec import DatasetSpec
from condenser.data.svhn import SvhnSource
from condenser.data.synthetic import SyntheticSource
from condenser.data.tiny_imagenet import TinyImageNetSource
from condenser.registry import Registry

DATASETS: Registry[DatasetSource] = Registry("dataset")

DIGITS = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
    leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
    otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
    rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
    sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm""".split()
)


def _spec(name, classes, shape, mean, std, allow_flip) -> DatasetSpec:
    return DatasetSpec(name, len(classes), tuple(classes), shape, tuple(mean), tuple(std), allow_flip)


DATASETS.add(
    "fashion-mnist",
    IdxSource(
        _spec("fashion-mnist", FASHION_CLASSES, (1, 28, 28), [0.2861], [0.3530], True),
        dirnames=("fashion-mnist", "FashionMNIST/raw", "FashionMNIST", "fashion_mnist"),
        torchvision_class="FashionMNIST",
        apt_package="dataset-fashion-mnist",
    ),
)
DATASETS.add(
    "mnist",
    IdxSource(
        _spec("mnist", DIGITS, (1, 28, 28), [0.1307], [0.3081], False),
        dirnames=("mnist", "MNIST/raw", "MNIST"),
        torchvision_class="MNIST",
    ),
)
DATASETS.add(
    "cifar10",
    CifarSource(
        _spec(
            "cifar10", CIFAR10_CLASSES, (3, 32, 32), [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010], True
        ),
        dirnames=(
            "cifar-10-batches-py",
            "cifar10/cifar-10-batches-py",
            "CIFAR10/cifar-10-batches-py",
            "cifar10",
        ),
        split_files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        label_key="labels",
        torchvision_class="CIFAR10",
    ),
)
DATASETS.add(
    "cifar100",
    CifarSource(
        _spec(
            "cifar100",
            CIFAR100_CLASSES,
            (3, 32, 32),
            [0.5071, 0.4866, 0.4409],
            [0.2673, 0.2564, 0.2762],
            True,
        ),
        dirnames=("cifar-100-python", "cifar100/cifar-100-python", "CIFAR100/cifar-100-python", "cifar100"),
        split_files={"train": ("train",), "test": ("test",)},
        label_key="fine_labels",
        torchvision_class="CIFAR100",
    ),
)
DATASETS.add(
    "svhn",
    SvhnSource(_spec("svhn", DIGITS, (3, 32, 32), [0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970], False)),
)
DATASETS.add(
    "tiny-imagenet",
    TinyImageNetSource(
        _spec(
            "tiny-imagenet",
            tuple(f"class_{i:03d}" for i in range(200)),  # real names are read from the data
            (3, 64, 64),
            [0.485, 0.456, 0.406],
            [0.229, 0.224, 0.225],
            True,
        )
    ),
)
DATASETS.add("synthetic", SyntheticSource())

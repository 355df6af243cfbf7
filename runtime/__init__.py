"""The device runtime: load the IPC-k prefix of an .mdc file that fits a budget and train on it.

numpy + msgpack + onnxruntime only; torch is imported lazily, and only by backend="torch" and
`Dataset.to_torch()`. Public API:

    ds = runtime.load(path, budget=3 | runtime.Budget(seconds=60) | runtime.Budget(memory_mb=256))
    model = runtime.train(ds, backend="onnx" | "torch", epochs=..., batch_size=..., lr=..., seed=...)
    acc = runtime.evaluate(model, x_test, y_test)
"""

from runtime import errors
from runtime.budget import Budget
from runtime.bundle import TrainerBundle
from runtime.config import TrainConfig
from runtime.data import load_test_data
from runtime.dataset import Batch, Dataset, Sample
from runtime.errors import (
    BackendError,
    BudgetError,
    BundleError,
    CheckpointError,
    ConfigError,
    DataError,
    DivergedError,
    RuntimeError_,
    TrainerError,
    ViewError,
)
from runtime.loader import load
from runtime.train import Model, evaluate, train

__all__ = [
    "BackendError", "Batch", "Budget", "BudgetError", "BundleError", "CheckpointError", "ConfigError",
    "DataError", "Dataset", "DivergedError", "Model", "RuntimeError_", "Sample", "TrainConfig", "TrainerBundle",
    "TrainerError", "ViewError", "errors", "evaluate", "load", "load_test_data", "train",
]

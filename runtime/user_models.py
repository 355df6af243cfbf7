"""A user's own network, named by its factory "pkg.module:function" (docs/trainer.md, "Your own model").

A trainer bundle exported from a factory records that string as its `arch` and the factory's keyword
arguments as `arch_kwargs`. The exporter builds the model with `build_user_model` under the export seed,
and the torch backend builds it again the same way, so both start from the same network; the onnx
backend never needs the factory. Importing this module does not import torch; building a model imports
the user's module, which does.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from runtime.errors import TrainerError


class FactoryError(TrainerError, ValueError):
    """A model factory string is malformed, cannot be imported, or does not build a torch module."""


def is_factory(arch: str) -> bool:
    """A factory string has a colon ("pkg.module:function"); runtime/models.py names have none."""
    return ":" in arch


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable that "pkg.module:function" (or "pkg.module:Class.method") names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise FactoryError(f"model factory {spec!r} is not of the form 'pkg.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise FactoryError(f"cannot import model factory {spec!r}: {exc} (install the package that defines "
                           "it, or put it on PYTHONPATH)") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FactoryError(f"model factory {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(f"model factory {spec!r} is not callable")
    return obj


def factory_arguments(factory: Callable[..., Any], in_shape: tuple[int, ...], num_classes: int,
                      kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs`, plus in_shape and num_classes when the factory's signature names them and kwargs do not."""
    try:
        names = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass kwargs only
        names = {}
    extra = {"in_shape": tuple(in_shape), "num_classes": int(num_classes)}
    return {**{k: v for k, v in extra.items() if k in names and k not in kwargs}, **kwargs}


def build_user_model(spec: str, in_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any]) -> Any:
    """factory(**factory_arguments(...)); a FactoryError when it fails or returns no torch module."""
    from torch import nn

    factory = load_factory(spec)
    try:
        model = factory(**factory_arguments(factory, in_shape, num_classes, kwargs))
    except TypeError as exc:
        raise FactoryError(f"model factory {spec!r}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise FactoryError(f"model factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def factory_name(factory: Callable[..., Any]) -> str | None:
    """The "pkg.module:qualname" that imports back to `factory`, or None (a lambda, a local function)."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        return f"{module}:{qualname}" if load_factory(f"{module}:{qualname}") is factory else None
    except FactoryError:
        return None


__all__ = ["FactoryError", "build_user_model", "factory_arguments", "factory_name", "is_factory", "load_factory"]

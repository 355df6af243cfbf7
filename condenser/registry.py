"""One small registry type, used for every concept (datasets, models, methods, profiles, build stages).

Entries register beside their definition (`@REGISTRY.register("name")`, timm's `register_model` habit). A
registry whose entries live in modules that import the registry's own module (a cycle if the registry
imported them at its top) names those modules as `providers`: the first lookup imports them, so a
lookup is complete in a fresh process whatever was imported before it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from condenser.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object mapping with a decorator for registration and a helpful miss."""

    def __init__(self, kind: str, providers: Sequence[str] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._providers = tuple(providers)
        self._loaded = not self._providers

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load(self) -> None:
        """Import the provider modules once (their decorators fill the registry)."""
        if self._loaded:
            return
        self._loaded = True  # first: a provider that looks a name up while it is imported must not recurse
        try:
            for module in self._providers:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False  # a failed import is retried (and fails loudly again) on the next lookup
            raise

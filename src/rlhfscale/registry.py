"""One registry type for everything chosen by name: algorithms, advantage estimators, loss
aggregations, KL estimators, reward shaping, reward sources and tasks.

A registry maps names to entries of one kind. Registering a name twice is refused; looking up an
unknown name raises a `KeyError` that lists the valid names (the lm-evaluation-harness habit).
Importing this module imports nothing heavy, so torch-free modules (the config) can hold
registries of records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``what`` names the kind in error messages)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    @classmethod
    def of(cls, what: str, entries: dict[str, T]) -> "Registry[T]":
        """A registry holding `entries`, in their order."""
        registry: Registry[T] = cls(what)
        for name, entry in entries.items():
            registry.add(name, entry)
        return registry

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a name already taken raises ValueError."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`: ``@ESTIMATORS.register("grpo")``."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry called `name`; an unknown name raises a KeyError listing the valid ones."""
        if name not in self._entries:
            raise KeyError(f"unknown {self.what} {name!r}; valid: {', '.join(self._entries)}")
        return self._entries[name]

    __getitem__ = get

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"

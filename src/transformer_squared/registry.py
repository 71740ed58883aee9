"""Name → object registries for tasks and strategies (STYLE §3): duplicates and unknown names are errors."""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from .errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from short names to objects; `kind` names what it holds in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise RegistryError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(sorted(self._items))
            raise RegistryError(f"unknown {self.kind} '{name}'{hint}; known: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """The names in the order they were registered."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

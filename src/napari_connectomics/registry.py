"""The one shape of every registry (losses, post-processors): register by name, get with a helpful error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["NamedRegistry"]

T = TypeVar("T")


class NamedRegistry(Generic[T]):
    """Name -> object. A name cannot be taken twice (a plugin must not silently replace a built-in);
    an unknown name raises a one-line ValueError with a suggestion and the available names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            from .config.errors import closest

            hint = closest(name, self._items)
            suggestion = f" Did you mean {hint!r}?" if hint else ""
            raise ValueError(f"{self.kind[0].upper()}{self.kind[1:]} {name!r} not found.{suggestion} "
                             f"Available: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

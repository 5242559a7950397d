"""The registries: the one list of every name a user chooses (architectures, losses, targets,
post-processors), all with the same shape.

This module is the ground floor, below ``config/``: it imports nothing of the package, so config validation, the CLI's choices and the panels' pickers can all ask it. Each registry
names the modules that register its built-ins (``providers``); they are imported on the first
lookup, like entry points, and are kept torch-free so that listing names never pays for torch.
A plugin (or a test) registers more entries with the same ``register`` decorator.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["ARCHITECTURES", "LOSSES", "NamedRegistry", "POSTPROCESSORS", "TARGETS", "closest"]

T = TypeVar("T")


def closest(name: str, candidates: Iterable[str], cutoff: float = 0.7) -> str | None:
    """The candidate nearest to a misspelt name (case-insensitive), if any is reasonably close."""
    by_lower = {str(c).lower(): str(c) for c in candidates}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[matches[0]] if matches else None


class NamedRegistry(Generic[T]):
    """Name -> object. A name cannot be taken twice (a plugin must not silently replace a built-in);
    an unknown name raises a one-line ValueError with a suggestion and the available names.

    Iterating and ``in`` see the names, so a registry can stand wherever a tuple of choices did
    (the config schema's ``choices``, argparse's ``choices``).
    """

    def __init__(self, kind: str, providers: Sequence[str] = ()) -> None:
        self.kind = kind
        self._providers = tuple(providers)
        self._loaded = not self._providers
        self._loading = False
        self._lock = threading.RLock()  # other threads wait for the built-ins; the loading thread re-enters
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``item`` under ``name``."""

        def decorator(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorator

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name`` (the non-decorator form)."""
        return self.register(name)(item)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (for tests and plugins that clean up after themselves)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        """The entry of ``name``, or a ValueError naming the closest and all available names."""
        self._load()
        if name not in self._items:
            raise ValueError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: Any) -> str:
        """"Thing 'x' not found. Did you mean 'y'? Available: ..." (one line)."""
        hint = closest(str(name), self._items)
        suggestion = f" Did you mean {hint!r}?" if hint else ""
        return (f"{self.kind[0].upper()}{self.kind[1:]} {name!r} not found.{suggestion} "
                f"Available: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs, sorted by name."""
        self._load()
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"NamedRegistry({self.kind!r}: {', '.join(self.names())})"

    def _load(self) -> None:
        """Import the providers once. A second thread asking meanwhile waits for them (it would
        otherwise see a half-filled registry); a provider's own lookups in the loading thread see
        what is registered so far instead of recursing."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                for module in self._providers:
                    importlib.import_module(module)
                self._loaded = True
            finally:
                self._loading = False


# The registries of the project. Their entries are the specs defined beside the implementations:
# ArchitectureSpec (models/architectures/spec.py), loss factories (models/loss_registry.py),
# TargetSpec (data/targets.py), PostprocessorSpec (inference/postprocessors.py).
ARCHITECTURES: NamedRegistry[Any] = NamedRegistry("architecture", providers=(
    "napari_connectomics.models.architectures.monai_models",
    "napari_connectomics.models.architectures.mednext_models",
))
LOSSES: NamedRegistry[Any] = NamedRegistry("loss", providers=("napari_connectomics.models.loss_registry",))
TARGETS: NamedRegistry[Any] = NamedRegistry("target", providers=("napari_connectomics.data.targets",))
POSTPROCESSORS: NamedRegistry[Any] = NamedRegistry(
    "post-processor", providers=("napari_connectomics.inference.postprocessors",))

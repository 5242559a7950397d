"""Architecture registry: one name -> one builder, plus what config validation must know about it.

Registering is cheap: builders import torch/MONAI only when called, so listing architectures and
validating a config (in the napari widgets, at start-up) never pays for the heavy imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ArchitectureSpec",
    "get_architecture_builder",
    "get_architecture_spec",
    "is_architecture_available",
    "list_architectures",
    "register_architecture",
]

Builder = Callable[[Any], Any]

_REGISTRY: dict[str, "ArchitectureSpec"] = {}
_BUILTIN_MODULES = (
    "napari_connectomics.models.architectures.monai_models",
    "napari_connectomics.models.architectures.mednext_models",
)
_builtins_loaded = False


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the rest of the project needs to know about an architecture without building it.

    size_multiple: every input size must be a multiple of this (an int, or a function of the
        model config for architectures whose depth is configurable).
    fixed_input_size: the network is built for one input size (`model.input_size`).
    min_voxels_at_bottom / bottom_factor: the deepest level (input size / bottom_factor per axis)
        must hold at least this many voxels (MedNeXt's GroupNorm fails on a single voxel).
    requires: importable modules the builder needs; missing ones make it unavailable.
    """

    name: str
    builder: Builder
    description: str = ""
    spatial_dims: tuple[int, ...] = (2, 3)
    size_multiple: int | Callable[[Any], int] = 1
    fixed_input_size: bool = False
    deep_supervision: bool = False
    output_scales: int = 1
    norms: tuple[str, ...] | None = None
    min_voxels_at_bottom: int = 1
    bottom_factor: int = 1
    requires: tuple[str, ...] = ()

    def size_multiple_for(self, model_cfg: Any) -> int:
        multiple = self.size_multiple(model_cfg) if callable(self.size_multiple) else self.size_multiple
        return int(multiple)

    def as_dict(self, model_cfg: Any = None) -> dict[str, Any]:
        """A JSON-friendly summary (for `list-architectures --json` and the widgets)."""
        multiple = self.size_multiple_for(model_cfg) if model_cfg is not None or not callable(self.size_multiple) else None
        return {
            "name": self.name,
            "description": self.description,
            "spatial_dims": list(self.spatial_dims),
            "size_multiple": multiple,
            "fixed_input_size": self.fixed_input_size,
            "deep_supervision": self.deep_supervision,
            "output_scales": self.output_scales,
            "available": is_architecture_available(self.name),
        }


def register_architecture(name: str, **spec: Any) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(cfg) -> ConnectomicsModel`` under ``name``.

    Keyword arguments are the fields of :class:`ArchitectureSpec`. Registering a name twice is an
    error, so a plugin cannot silently replace a built-in network.
    """

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"architecture {name!r} is already registered")
        description = spec.pop("description", None) or (builder.__doc__ or "").strip().splitlines()[0:1]
        if isinstance(description, list):
            description = description[0] if description else ""
        _REGISTRY[name] = ArchitectureSpec(name=name, builder=builder, description=description, **spec)
        return builder

    return decorator


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def list_architectures() -> list[str]:
    """All registered architecture names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_architecture_spec(name: str) -> ArchitectureSpec:
    """The spec of ``name``; a KeyError-free ValueError listing the names when it is unknown."""
    _load_builtins()
    if name not in _REGISTRY:
        from ...config.errors import closest

        hint = closest(name, _REGISTRY)
        suggestion = f" Did you mean {hint!r}?" if hint else ""
        raise ValueError(f"Architecture {name!r} not found.{suggestion} Available: {', '.join(list_architectures())}")
    return _REGISTRY[name]


def get_architecture_builder(name: str) -> Builder:
    """The builder registered under ``name``."""
    return get_architecture_spec(name).builder


def is_architecture_available(name: str) -> bool:
    """Registered, and every module its builder needs can be imported."""
    _load_builtins()
    spec = _REGISTRY.get(name)
    if spec is None:
        return False
    return all(importlib.util.find_spec(module) is not None for module in spec.requires)


def power_of_two_multiple(levels: int) -> int:
    """Size multiple of a network that halves the size ``levels`` times."""
    return int(math.pow(2, max(levels, 0)))

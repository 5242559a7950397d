"""Architecture registry: one name -> one :class:`ArchitectureSpec`, the only statement of a network's facts.

A spec says what the rest of the project needs to know without building the network: its
dimensions, size rule, fixed input, deep-supervision scales, the ``model.*`` fields its builder
reads (what the Model panel offers) and the checks a config must pass for it. Config validation,
``list-architectures``/``info``, the Model panel and ``build_model`` all read the spec.

Registering is cheap: builders import torch/MONAI only when called, so listing architectures and
validating a config (in the napari widgets, at start-up) never pays for the heavy imports.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...config.context import network_in_channels
from ...config.errors import ConfigError, format_choices
from ...config.validation import effective_input_size
from ...registry import ARCHITECTURES

__all__ = [
    "COMMON_FIELDS",
    "ArchitectureFacts",
    "ArchitectureSpec",
    "deep_supervision_weights",
    "get_architecture_builder",
    "get_architecture_spec",
    "is_architecture_available",
    "list_architectures",
    "power_of_two_multiple",
    "register_architecture",
]

Builder = Callable[[Any], Any]
Check = Callable[[Any], None]

# Read by every builder: what the data decides rather than the network. A builder reads
# model.in_channels as the network's input channels: build() hands it network_in_channels(cfg)
# there (the image's channels times the sections of a 2.5D input).
COMMON_FIELDS: tuple[str, ...] = ("spatial_dims", "in_channels", "out_channels")


def deep_supervision_weights(scales: int) -> list[float]:
    """Default loss weight per output scale, full resolution first: halving per scale (the
    MedNeXt/nnU-Net recipe). Normalised by the loss over the scales present."""
    return [0.5 ** i for i in range(max(int(scales), 1))]


def output_resolutions(scales: int) -> list[str]:
    """"1", "1/2", "1/4", ... one per output of a training forward pass."""
    return ["1" if i == 0 else f"1/{2 ** i}" for i in range(scales)]


@dataclass(frozen=True)
class ArchitectureSpec:
    """Everything known about an architecture without building it.

    size_multiple: every input size must be a multiple of this (an int, or a function of the
        model config for architectures whose depth is configurable).
    fixed_input_size: the network is built for one input size (`model.input_size`).
    output_scales: outputs of a training forward pass with deep supervision (full resolution
        first, each half the previous); the default deep-supervision loss weights derive from it.
    fields: the ``model.*`` fields the builder reads besides :data:`COMMON_FIELDS`, in the order
        the Model panel shows them.
    unset_defaults: what the builder uses for an optional field left unset (shown by the panel).
    none_labels: how the panel names the unset (None) choice of an optional choice field.
    norms: the ``model.norm`` values the network supports (None: the field is not read).
    min_voxels_at_bottom / bottom_factor: the deepest level (input size / bottom_factor per axis)
        must hold at least this many voxels (MedNeXt's GroupNorm fails on a single voxel).
    checks: extra rules, each ``check(model_cfg)`` raising :class:`ConfigError`.
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
    fields: tuple[str, ...] = ()
    unset_defaults: Mapping[str, Any] = field(default_factory=dict)
    none_labels: Mapping[str, str] = field(default_factory=dict)
    norms: tuple[str, ...] | None = None
    min_voxels_at_bottom: int = 1
    bottom_factor: int = 1
    checks: tuple[Check, ...] = ()
    requires: tuple[str, ...] = ()

    # -- facts -------------------------------------------------------------------------------
    def size_multiple_for(self, model_cfg: Any) -> int:
        multiple = self.size_multiple(model_cfg) if callable(self.size_multiple) else self.size_multiple
        return int(multiple)

    @property
    def all_fields(self) -> tuple[str, ...]:
        """Every ``model.*`` field the builder reads, common ones first."""
        return (*COMMON_FIELDS, *self.fields)

    def option(self, model_cfg: Any, name: str) -> Any:
        """``model_cfg.<name>``, or what the builder uses when it is unset."""
        value = model_cfg[name]
        return self.unset_defaults.get(name) if value is None else value

    def missing_modules(self) -> list[str]:
        """Modules the builder needs that cannot be imported here."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def facts(self, cfg: Any) -> "ArchitectureFacts":
        """The facts of this network as ``cfg`` configures it (torch-free, instant)."""
        model = cfg.model
        ds = bool(model.deep_supervision and self.deep_supervision)
        try:
            multiple = self.size_multiple_for(model)
        except (TypeError, ValueError):  # a half-edited option the validator will name
            multiple = 0
        scales = self.output_scales if ds else 1
        missing = tuple(self.missing_modules())
        return ArchitectureFacts(
            name=self.name,
            description=self.description,
            available=not missing,
            missing=missing,
            spatial_dims=int(model.spatial_dims),
            supported_spatial_dims=tuple(self.spatial_dims),
            size_multiple=multiple,
            fixed_input_size=tuple(effective_input_size(cfg)) if self.fixed_input_size else None,
            patch_size=tuple(cfg.data.patch_size) if cfg.data.patch_size is not None else None,
            deep_supervision_supported=self.deep_supervision,
            deep_supervision_scales=self.output_scales if self.deep_supervision else 1,
            deep_supervision=ds,
            output_scales=scales,
        )

    # -- checks ------------------------------------------------------------------------------
    def check(self, cfg: Any) -> None:
        """Raise :class:`ConfigError` for the first value of ``cfg`` this network cannot take."""
        model = cfg.model
        if model.spatial_dims not in self.spatial_dims:
            raise ConfigError("model.spatial_dims", model.spatial_dims,
                              f"{self.name} supports {format_choices(self.spatial_dims)}")
        if model.deep_supervision and not self.deep_supervision:
            with_ds = [name for name, spec in ARCHITECTURES.items() if spec.deep_supervision]
            raise ConfigError("model.deep_supervision", True,
                              f"{self.name} has no deep-supervision outputs; architectures with it: "
                              f"{', '.join(with_ds)}")
        if model.deep_supervision_weights is not None:
            weights = list(model.deep_supervision_weights)
            if not weights or len(weights) > self.output_scales or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ConfigError("model.deep_supervision_weights", weights,
                                  f"give 1 to {self.output_scales} non-negative weights, full resolution first")
        if self.norms is not None and model.norm not in self.norms:
            raise ConfigError("model.norm", model.norm, f"{self.name} supports {', '.join(self.norms)}")
        for check in self.checks:
            check(model)
        self._check_sizes(cfg)

    def _check_sizes(self, cfg: Any) -> None:
        """Patch, input and window sizes: right length, and what this network can take."""
        dims = cfg.model.spatial_dims
        multiple = self.size_multiple_for(cfg.model)
        axes = "z, y, x" if dims == 3 else "y, x"
        sized = [("data.patch_size", cfg.data.patch_size)]
        if cfg.model.input_size is not None:
            sized.append(("model.input_size", cfg.model.input_size))
        if cfg.inference.window_size is not None:
            sized.append(("inference.window_size", cfg.inference.window_size))
        for key, size in sized:
            size = list(size)
            if len(size) != dims:
                raise ConfigError(key, size, f"give {dims} sizes ({axes}) for model.spatial_dims={dims}")
            if any(s < 1 for s in size):
                raise ConfigError(key, size, "sizes must be positive")
            if multiple > 1 and any(s % multiple for s in size):
                fixed = [max(multiple, round(s / multiple) * multiple) for s in size]
                raise ConfigError(key, size, f"{self.name} needs every size to be a multiple of {multiple}, "
                                  f"e.g. {fixed}")
            if self.min_voxels_at_bottom > 1 and \
                    math.prod(s // self.bottom_factor for s in size) < self.min_voxels_at_bottom:
                raise ConfigError(key, size, f"{self.name} needs more than one voxel at its bottleneck; "
                                  f"make at least one size {2 * self.bottom_factor} or more")
        if self.fixed_input_size and cfg.inference.window_size is not None:
            if list(cfg.inference.window_size) != effective_input_size(cfg):
                raise ConfigError("inference.window_size", list(cfg.inference.window_size),
                                  f"{self.name} takes a fixed input size; use {effective_input_size(cfg)} "
                                  "or leave it unset")

    # -- building ----------------------------------------------------------------------------
    def build(self, cfg: Any) -> Any:
        """``builder(cfg)`` with the spec's facts stamped on the model, so no builder restates them.

        Under 2.5D input (``data.context_sections``) the builder gets a copy of ``cfg`` whose
        ``model.in_channels`` is the network's, so every builder (a plugin's too) builds for it."""
        model = self.builder(_network_config(cfg))
        model.architecture = self.name
        model.spatial_dims = int(cfg.model.spatial_dims)
        model.supports_deep_supervision = bool(cfg.model.deep_supervision and self.deep_supervision)
        model.output_scales = self.output_scales if model.supports_deep_supervision else 1
        model.size_multiple = self.size_multiple_for(cfg.model)
        model.fixed_input_size = effective_input_size(cfg) if self.fixed_input_size else None
        return model


def _network_config(cfg: Any) -> Any:
    """``cfg``, or a copy with ``model.in_channels`` the network's channels when they differ."""
    channels = network_in_channels(cfg)
    if channels == int(cfg.model.in_channels):
        return cfg
    network = copy.deepcopy(cfg)
    network.model.in_channels = channels
    return network


@dataclass(frozen=True)
class ArchitectureFacts:
    """A spec's facts for one config: what ``info``, ``list-architectures`` and the Model panel show."""

    name: str
    description: str
    available: bool
    missing: tuple[str, ...]
    spatial_dims: int
    supported_spatial_dims: tuple[int, ...]
    size_multiple: int
    fixed_input_size: tuple[int, ...] | None
    patch_size: tuple[int, ...] | None
    deep_supervision_supported: bool
    deep_supervision_scales: int  # outputs with deep supervision on
    deep_supervision: bool  # on in this config
    output_scales: int  # outputs of a training forward pass in this config

    @property
    def output_resolutions(self) -> list[str]:
        """"1", "1/2", ... one per output of a training forward pass."""
        return output_resolutions(self.output_scales)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (lists, not tuples)."""
        facts = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}
        return {**facts, "output_resolutions": self.output_resolutions}



def register_architecture(name: str, **spec: Any) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(cfg) -> ConnectomicsModel`` under ``name``.

    Keyword arguments are the fields of :class:`ArchitectureSpec`; the description defaults to the
    builder's first docstring line. Registering a name twice is an error, so a plugin cannot
    silently replace a built-in network.
    """

    def decorator(builder: Builder) -> Builder:
        description = spec.pop("description", None)
        if description is None:
            lines = (builder.__doc__ or "").strip().splitlines()
            description = lines[0] if lines else ""
        ARCHITECTURES.register(name)(ArchitectureSpec(name=name, builder=builder, description=description, **spec))
        return builder

    return decorator


def list_architectures() -> list[str]:
    """All registered architecture names, sorted."""
    return ARCHITECTURES.names()


def get_architecture_spec(name: str) -> ArchitectureSpec:
    """The spec of ``name``; a ValueError listing the names when it is unknown."""
    return ARCHITECTURES.get(name)


def get_architecture_builder(name: str) -> Builder:
    """``cfg -> model`` for ``name``: the registered builder with the spec's facts stamped on."""
    return get_architecture_spec(name).build


def is_architecture_available(name: str) -> bool:
    """Registered, and every module its builder needs can be imported."""
    return name in ARCHITECTURES and not ARCHITECTURES.get(name).missing_modules()


def power_of_two_multiple(levels: int) -> int:
    """Size multiple of a network that halves the size ``levels`` times."""
    return int(math.pow(2, max(levels, 0)))

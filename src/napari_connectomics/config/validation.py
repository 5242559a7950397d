"""Checks a merged config: declared choices and ranges first, then the rules that span fields.

Rules that depend on a chosen name come from that name's registry entry (``registry.py``): an
architecture's spec checks sizes, dimensions and its own options; a target checks the output
channels. The registries are torch-free, so validating a config stays cheap enough for the napari
widgets, and this module imports nothing above ``config/``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..registry import ARCHITECTURES, LOSSES, TARGETS, NamedRegistry
from .context import check_context
from .errors import ConfigError, closest, format_choices
from .schema import ConnectomicsConfig

__all__ = ["default_patch_size", "effective_input_size", "resolve_config", "validate_config"]


def default_patch_size(spatial_dims: int) -> list[int]:
    """A patch every registered architecture accepts and a 2-core CPU can train on."""
    return [256, 256] if spatial_dims == 2 else [32, 128, 128]


def resolve_config(cfg: DictConfig) -> DictConfig:
    """Fill the values that default to other fields (in place) and fold aliases into their field."""
    model, data = cfg.model, cfg.data
    if model.mednext_dim is not None:
        model.spatial_dims = 2 if model.mednext_dim == "2d" else 3
        model.mednext_dim = None
    if data.patch_size is None:
        data.patch_size = default_patch_size(model.spatial_dims)
    return cfg


def needs_resolving(cfg: DictConfig) -> bool:
    """Whether :func:`resolve_config` would change ``cfg`` (callers can skip copying it)."""
    return cfg.model.mednext_dim is not None or cfg.data.patch_size is None


def effective_input_size(cfg: DictConfig) -> list[int]:
    """The network input size: `model.input_size` when set, else the training patch."""
    size = cfg.model.input_size if cfg.model.input_size is not None else cfg.data.patch_size
    return list(size)


def validate_config(cfg: DictConfig) -> DictConfig:
    """Raise :class:`ConfigError` for the first invalid value; return the (resolved) config."""
    resolve_config(cfg)
    _check_declared(cfg, ConnectomicsConfig, prefix="")
    _check_model(cfg)
    check_context(cfg)
    _check_sizes(cfg)
    _check_training(cfg)
    return cfg


def _check_declared(node: DictConfig, schema: type, prefix: str) -> None:
    """Apply each field's declared choices and bounds."""
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        value = node[f.name]
        kind = _field_type(schema, f.name)
        if dataclasses.is_dataclass(kind):
            _check_declared(value, kind, prefix=f"{key}.")
            continue
        _check_shape(key, value, kind)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            hint = closest(str(value), [str(c) for c in choices if c is not None])
            expected = f"choose one of {format_choices(choices)}"
            if hint is not None and hint != str(value):
                expected += f" (did you mean {hint}?)"
            raise ConfigError(key, value, expected)
        _check_bounds(key, value, f.metadata.get("minimum"), f.metadata.get("maximum"))


def _field_type(schema: type, name: str) -> type:
    return field_types(schema)[name]


@functools.cache
def field_types(schema: type) -> dict[str, Any]:
    """The schema's resolved field types: resolving them evaluates every annotation string, which
    took most of a validation (the panels validate on every edit)."""
    return typing.get_type_hints(schema)


def _check_shape(key: str, value: Any, kind: Any) -> None:
    """No mapping where a value belongs, and lists of plain values (OmegaConf lets ``[[1]]`` into a
    ``list[float]`` and a mapping into an ``Any`` field)."""
    if isinstance(value, DictConfig):
        raise ConfigError(key, _plain(value), "give a value, not a mapping")
    if OmegaConf.is_list(value):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        inner = typing.get_args(args[0]) if len(args) == 1 else typing.get_args(kind)
        if any(OmegaConf.is_config(item) for item in value):
            item = inner[0].__name__ if inner and isinstance(inner[0], type) else "plain value"
            raise ConfigError(key, _plain(value), f"give a flat list of {item}s")


def _check_bounds(key: str, value: Any, minimum: float | None, maximum: float | None) -> None:
    if value is None or isinstance(value, bool):
        return
    values = list(value) if OmegaConf.is_list(value) or isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(key, v, "give a finite number")
        if minimum is not None and v < minimum:
            raise ConfigError(key, v, f"must be at least {minimum}")
        if maximum is not None and v > maximum:
            raise ConfigError(key, v, f"must be at most {maximum}")


def _check_model(cfg: DictConfig) -> None:
    model = cfg.model
    spec = _registered(ARCHITECTURES, "model.architecture", model.architecture)
    spec.check(cfg)
    if model.kernel_size % 2 == 0:
        raise ConfigError("model.kernel_size", model.kernel_size, "use an odd kernel size such as 3 or 5")
    if len(model.filters) < 2 or any(f < 1 for f in model.filters):
        raise ConfigError("model.filters", list(model.filters), "give at least 2 positive channel counts")

    losses = list(model.loss_functions)
    if not losses:
        raise ConfigError("model.loss_functions", losses, f"name at least one of {', '.join(LOSSES)}")
    for i, name in enumerate(losses):
        _registered(LOSSES, f"model.loss_functions[{i}]", name)
    if len(model.loss_weights) != len(losses):
        raise ConfigError("model.loss_weights", list(model.loss_weights),
                          f"give one weight per loss ({len(losses)} for {losses})")


def _registered(registry: NamedRegistry, key: str, name: Any) -> Any:
    """The registry entry of ``name``, or a ConfigError naming ``key`` and the registered names."""
    if name in registry:
        return registry.get(name)
    names = registry.names()
    hint = closest(str(name), names)
    expected = f"choose one of {', '.join(names)}" + (f" (did you mean {hint}?)" if hint else "")
    raise ConfigError(key, name, expected)


def _check_sizes(cfg: DictConfig) -> None:
    """Sizes every architecture shares; the architecture's own size rules are in its spec."""
    if cfg.inference.block_size is not None and len(cfg.inference.block_size) != 3:
        raise ConfigError("inference.block_size", list(cfg.inference.block_size), "give 3 sizes (z, y, x)")
    if len(cfg.data.voxel_size) != 3 or any(v <= 0 for v in cfg.data.voxel_size):
        raise ConfigError("data.voxel_size", list(cfg.data.voxel_size), "give 3 positive sizes (z, y, x)")


def _check_training(cfg: DictConfig) -> None:
    _registered(TARGETS, "data.target", cfg.data.target).check(cfg)
    betas = list(cfg.optimizer.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError("optimizer.betas", betas, "give two numbers in [0, 1)")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

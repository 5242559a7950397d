"""Checks a merged config: declared choices and ranges first, then the rules that span fields.

Cross-field rules that depend on the architecture (required size multiple, fixed input size, 2D
support, deep supervision) come from the architecture registry, which stays free of torch so that
validating a config is cheap enough for the napari widgets.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, closest, format_choices
from .schema import ConnectomicsConfig

__all__ = ["LOSS_NAMES", "default_patch_size", "effective_input_size", "resolve_config", "validate_config"]

# Names accepted in model.loss_functions; the loss registry of the training layer implements them.
LOSS_NAMES = ("DiceLoss", "CrossEntropyLoss", "BCEWithLogitsLoss", "DiceCELoss", "FocalLoss", "TverskyLoss")

MEDNEXT_ARCHITECTURES = ("mednext", "mednext_custom")
MEDNEXT_KERNELS = (3, 5, 7)


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


def effective_input_size(cfg: DictConfig) -> list[int]:
    """The network input size: `model.input_size` when set, else the training patch."""
    size = cfg.model.input_size if cfg.model.input_size is not None else cfg.data.patch_size
    return list(size)


def validate_config(cfg: DictConfig) -> DictConfig:
    """Raise :class:`ConfigError` for the first invalid value; return the (resolved) config."""
    resolve_config(cfg)
    _check_declared(cfg, ConnectomicsConfig, prefix="")
    _check_model(cfg)
    _check_sizes(cfg)
    _check_training(cfg)
    return cfg


def _check_declared(node: DictConfig, schema: type, prefix: str) -> None:
    """Apply each field's declared choices and bounds."""
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        value = node[f.name]
        if dataclasses.is_dataclass(f.type) or isinstance(value, DictConfig):
            _check_declared(value, _field_type(schema, f.name), prefix=f"{key}.")
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            hint = closest(str(value), [str(c) for c in choices if c is not None])
            expected = f"choose one of {format_choices(choices)}"
            if hint is not None and hint != str(value):
                expected += f" (did you mean {hint}?)"
            raise ConfigError(key, value, expected)
        _check_bounds(key, value, f.metadata.get("minimum"), f.metadata.get("maximum"))


def _field_type(schema: type, name: str) -> type:
    import typing

    return typing.get_type_hints(schema)[name]


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
    from ..models.architectures.registry import get_architecture_spec, list_architectures

    model = cfg.model
    names = list_architectures()
    if model.architecture not in names:
        hint = closest(model.architecture, names)
        expected = f"choose one of {', '.join(names)}"
        if hint:
            expected += f" (did you mean {hint}?)"
        raise ConfigError("model.architecture", model.architecture, expected)
    spec = get_architecture_spec(model.architecture)

    if model.spatial_dims not in spec.spatial_dims:
        raise ConfigError("model.spatial_dims", model.spatial_dims,
                          f"{spec.name} supports {format_choices(spec.spatial_dims)}")
    if model.architecture in MEDNEXT_ARCHITECTURES:
        if model.kernel_size not in MEDNEXT_KERNELS:
            raise ConfigError("model.kernel_size", model.kernel_size,
                              f"MedNeXt kernels: choose one of {format_choices(MEDNEXT_KERNELS)}")
    elif model.kernel_size % 2 == 0:
        raise ConfigError("model.kernel_size", model.kernel_size, "use an odd kernel size such as 3 or 5")
    if model.deep_supervision and not spec.deep_supervision:
        with_ds = [n for n in names if get_architecture_spec(n).deep_supervision]
        raise ConfigError("model.deep_supervision", True,
                          f"{spec.name} has no deep-supervision outputs; architectures with it: {', '.join(with_ds)}")
    if model.deep_supervision_weights is not None:
        weights = list(model.deep_supervision_weights)
        if not weights or len(weights) > spec.output_scales or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError("model.deep_supervision_weights", weights,
                              f"give 1 to {spec.output_scales} non-negative weights, full resolution first")

    exp_r = model.mednext_exp_r
    exp_list = list(exp_r) if OmegaConf.is_list(exp_r) else [exp_r]
    if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in exp_list) or (
        OmegaConf.is_list(exp_r) and len(exp_list) != 9
    ):
        raise ConfigError("model.mednext_exp_r", _plain(exp_r), "give a positive int or a list of 9 positive ints")
    counts = list(model.mednext_block_counts)
    if len(counts) != 9 or any(c < 1 for c in counts):
        raise ConfigError("model.mednext_block_counts", counts, "give 9 positive ints (one per stage)")
    if len(model.filters) < 2 or any(f < 1 for f in model.filters):
        raise ConfigError("model.filters", list(model.filters), "give at least 2 positive channel counts")

    losses = list(model.loss_functions)
    if not losses:
        raise ConfigError("model.loss_functions", losses, f"name at least one of {', '.join(LOSS_NAMES)}")
    for i, name in enumerate(losses):
        if name not in LOSS_NAMES:
            hint = closest(name, LOSS_NAMES)
            expected = f"choose from {', '.join(LOSS_NAMES)}" + (f" (did you mean {hint}?)" if hint else "")
            raise ConfigError(f"model.loss_functions[{i}]", name, expected)
    if len(model.loss_weights) != len(losses):
        raise ConfigError("model.loss_weights", list(model.loss_weights),
                          f"give one weight per loss ({len(losses)} for {losses})")


def _check_sizes(cfg: DictConfig) -> None:
    """Patch, input and window sizes: right length, and what the architecture can take."""
    from ..models.architectures.registry import get_architecture_spec

    spec = get_architecture_spec(cfg.model.architecture)
    dims = cfg.model.spatial_dims
    multiple = spec.size_multiple_for(cfg.model)
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
            raise ConfigError(key, size, f"{spec.name} needs every size to be a multiple of {multiple}, e.g. {fixed}")
        if spec.min_voxels_at_bottom > 1 and math.prod(s // spec.bottom_factor for s in size) < spec.min_voxels_at_bottom:
            raise ConfigError(key, size, f"{spec.name} needs more than one voxel at its bottleneck; "
                              f"make at least one size {2 * spec.bottom_factor} or more")
    if spec.fixed_input_size and cfg.inference.window_size is not None:
        if list(cfg.inference.window_size) != effective_input_size(cfg):
            raise ConfigError("inference.window_size", list(cfg.inference.window_size),
                              f"{spec.name} takes a fixed input size; use {effective_input_size(cfg)} or leave it unset")
    if cfg.inference.block_size is not None and len(cfg.inference.block_size) != 3:
        raise ConfigError("inference.block_size", list(cfg.inference.block_size), "give 3 sizes (z, y, x)")
    if len(cfg.data.voxel_size) != 3 or any(v <= 0 for v in cfg.data.voxel_size):
        raise ConfigError("data.voxel_size", list(cfg.data.voxel_size), "give 3 positive sizes (z, y, x)")


def _check_training(cfg: DictConfig) -> None:
    target, out = cfg.data.target, cfg.model.out_channels
    if target == "binary" and out not in (1, 2):
        raise ConfigError("model.out_channels", out, "a binary target needs 1 (sigmoid) or 2 (softmax) channels")
    if target == "instance" and out != 3:
        raise ConfigError("model.out_channels", out, "the instance target predicts background, interior and "
                          "contour: set model.out_channels=3")
    betas = list(cfg.optimizer.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError("optimizer.betas", betas, "give two numbers in [0, 1)")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

"""What :func:`.predict.predict` is asked to do (:class:`PredictOptions`) and what it returns
(:class:`PredictionResult`): the caller's side of prediction, with no engine in it.

The options shared with the config (overlap, batch size, blending, ...) take their defaults,
choices and bounds from :class:`~napari_connectomics.config.schema.InferenceConfig`'s field
metadata, so each is stated once, in the schema. No torch here: the GUI imports this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config.schema import InferenceConfig

__all__ = ["BLENDINGS", "DEVICES", "OUTPUT_DTYPES", "PADDING_MODES", "PRECISIONS", "PredictOptions",
           "PredictionResult", "default_window", "inference_default"]

_SCHEMA = {f.name: f for f in dataclasses.fields(InferenceConfig)}
# the options read from ``cfg.inference`` by PredictOptions.from_config (same names there)
_FROM_CONFIG = ("overlap", "batch_size", "blending", "padding_mode", "tta", "triplanar", "z_smoothing",
                "device", "precision", "output_dtype", "memory_limit_mb")


def inference_default(name: str) -> Any:
    """The schema's default of ``inference.<name>`` (for callers that hold options outside a config)."""
    return _SCHEMA[name].default


def _choices(name: str) -> tuple[str, ...]:
    return tuple(c for c in _SCHEMA[name].metadata["choices"] if c is not None)


BLENDINGS = _choices("blending")
PADDING_MODES = _choices("padding_mode")
DEVICES = _choices("device")
OUTPUT_DTYPES = _choices("output_dtype")
PRECISIONS = _choices("precision")


@dataclass
class PredictOptions:
    """How to predict. ``window`` None means the checkpoint's :func:`default_window`, shrunk to
    fit a small volume; a given window is strict."""

    window: tuple[int, ...] | None = None  # z, y, x (3D nets); 2D nets: (y, x) or (1, y, x)
    overlap: float = inference_default("overlap")
    batch_size: int = inference_default("batch_size")
    blending: str = inference_default("blending")
    padding_mode: str = inference_default("padding_mode")
    tta: bool = inference_default("tta")
    triplanar: bool = inference_default("triplanar")  # 2D networks: xy, xz and yz planes averaged
    z_smoothing: float = inference_default("z_smoothing")  # Gaussian sigma along z, in sections (0: off)
    device: str = inference_default("device")
    precision: str = inference_default("precision")  # of the forward pass on a GPU; see predictor.autocast_dtype
    output_dtype: str = inference_default("output_dtype")
    block_size: tuple[int, int, int] | None = None  # None: whole volume if it fits, else auto
    roi: tuple[slice, slice, slice] | None = None  # z, y, x region of the volume to predict
    memory_limit_mb: int = inference_default("memory_limit_mb")  # the whole-volume path, and each automatic block

    def __post_init__(self) -> None:
        if self.window is not None:
            self.window = _positive_ints("window", self.window, (2, 3))
        if self.block_size is not None:
            self.block_size = _positive_ints("block_size", self.block_size, (3,))  # type: ignore
        for name, cast in (("overlap", float), ("batch_size", int), ("memory_limit_mb", int),
                           ("z_smoothing", float)):
            _check_bounds(name, cast(getattr(self, name)))
        for name in ("blending", "padding_mode", "device", "precision", "output_dtype"):
            choices = _choices(name)
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; "
                                 f"choose one of: {', '.join(choices)}")
        if self.roi is not None and (len(self.roi) != 3
                                     or not all(isinstance(s, slice) for s in self.roi)):
            raise ValueError("roi must be three slices (z, y, x), "
                             "e.g. (slice(0, 64), slice(None), slice(None))")
        self.overlap, self.batch_size = float(self.overlap), int(self.batch_size)
        self.z_smoothing = float(self.z_smoothing)
        self.triplanar = bool(self.triplanar)

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> PredictOptions:
        """Options from ``cfg.inference``, then ``overrides``; a None override keeps the config's
        value, so parsed command-line options can be passed straight through."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown prediction option {unknown[0]!r}; "
                             f"choose from: {', '.join(sorted(names))}")
        inference = cfg.inference
        values: dict[str, Any] = {name: inference[name] for name in _FROM_CONFIG}
        if inference.block_size is not None:
            values["block_size"] = tuple(inference.block_size)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class PredictionResult:
    """What :func:`predict` produced. ``probabilities`` is (C, z, y, x): a numpy array without an
    output path, else the written array opened read-only (a zarr.Array, or an h5py.Dataset whose
    file stays open until ``probabilities.file.close()``); None when the run was cancelled."""

    probabilities: np.ndarray | Any | None
    output_path: Path | None
    channels: int
    activation: str
    seconds: float
    cancelled: bool = False
    window: tuple[int, ...] = ()
    blocks: int = 1  # 1 for the whole-volume path
    device: str = "cpu"  # or 'dask'


def default_window(cfg: Any) -> list[int]:
    """The window a checkpoint predicts with unless told otherwise: ``inference.window_size``,
    else the training patch, else the default patch for its dimensions (2 or 3 sizes)."""
    from ..config import default_patch_size

    for size in (cfg.inference.window_size, cfg.data.patch_size):
        if size is not None:
            return [int(n) for n in size]
    return default_patch_size(int(cfg.model.spatial_dims))


def _check_bounds(name: str, value: float) -> None:
    """The schema's ``minimum`` / ``maximum`` of ``name`` (either may be absent)."""
    low, high = _SCHEMA[name].metadata["minimum"], _SCHEMA[name].metadata["maximum"]
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise ValueError(f"{name} must be at least {low:g}, got {value:g}")
        if low is None:
            raise ValueError(f"{name} must be at most {high:g}, got {value:g}")
        raise ValueError(f"{name} must be within [{low:g}, {high:g}], got {value:g}")


def _positive_ints(name: str, values: Sequence[int], lengths: tuple[int, ...]) -> tuple[int, ...]:
    try:
        result = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}") from None
    if len(result) not in lengths or any(v < 1 for v in result):
        counts = " or ".join(str(n) for n in lengths)
        raise ValueError(f"{name} must be {counts} positive sizes (z, y, x), got {list(result)}")
    return result

"""Explicit intensity normalisation (DESIGN.md: images are normalised by config, never by accident).

Statistics are measured once per volume with :func:`intensity_stats` and applied to every patch with
:func:`normalize_intensity`, so all patches of a volume share one scale (normalising each patch by
itself would change the contrast from patch to patch). For volumes larger than ``max_voxels`` the
statistics come from a deterministic random sample of whole blocks that follow the storage (chunks,
z-slices, rows), so a volume larger than RAM is never loaded.

Modes (``DataConfig.normalize``):

* ``none``: cast to float32 only;
* ``minmax``: minimum -> 0, maximum -> 1, clipped to [0, 1] (on large volumes the extremes come from
  the sample, so a rare voxel beyond them is clipped rather than left outside the range);
* ``percentile``: 1st percentile -> 0, 99th -> 1, clipped to [0, 1] (robust to saturated pixels and
  dead sections, and bounded like minmax);
* ``zscore``: mean -> 0, standard deviation -> 1, unclipped.

A constant image (zero range or zero std) is shifted but not scaled, so nothing divides by zero.
Multi-channel volumes get one set of statistics over all channels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .volumes import Volume

__all__ = ["NORMALIZATION_MODES", "IntensityStats", "intensity_stats", "normalize_intensity",
           "read_normalized"]

logger = logging.getLogger(__name__)

NORMALIZATION_MODES = ("none", "minmax", "percentile", "zscore")
_MAX_BLOCKS = 1024  # bound on separate reads when sampling, whatever the chunk size
_BLOCKS_PER_SAMPLE = 16  # at least this many separate blocks make up a sample


@dataclass(frozen=True)
class IntensityStats:
    """Intensity statistics of one volume: ``low``/``high`` are the 1st/99th percentiles."""

    low: float
    high: float
    mean: float
    std: float
    minimum: float
    maximum: float


def intensity_stats(
    volume: Volume | np.ndarray,
    max_voxels: int = 2_000_000,
    seed: int = 0,
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> IntensityStats:
    """Statistics of a volume: exact when it has at most ``max_voxels`` voxels, else from a
    deterministic (``seed``) random sample of whole blocks holding at most ``max_voxels`` voxels.

    Non-finite values (NaN, inf) of float images are left out.
    """
    if max_voxels < 1:
        raise ValueError(f"max_voxels must be at least 1, got {max_voxels}")
    size = math.prod(volume.shape)
    if size == 0:
        raise ValueError(f"cannot measure intensities of an empty volume (shape {tuple(volume.shape)})")
    if size <= max_voxels:
        values = np.asarray(volume[...]).ravel()
    else:
        values = _sample_blocks(volume, max_voxels, seed)
    return _stats_of(values, percentiles)


def _sample_blocks(volume: Volume | np.ndarray, max_voxels: int, seed: int) -> np.ndarray:
    """Values of randomly chosen, grid-aligned whole blocks, at most ``max_voxels`` of them."""
    shape = tuple(volume.shape)
    block = _block_shape(shape, getattr(volume, "chunks", None), max_voxels)
    grid = tuple(-(-n // b) for n, b in zip(shape, block))
    n_cells = math.prod(grid)
    n_blocks = min(n_cells, _MAX_BLOCKS, max(1, max_voxels // math.prod(block)))
    cells = np.sort(np.random.default_rng(seed).choice(n_cells, size=n_blocks, replace=False))
    logger.debug("intensity statistics from %d blocks of %s in %s", n_blocks, block, shape)
    values = [
        np.asarray(volume[tuple(slice(c * b, (c + 1) * b) for c, b in zip(cell, block))]).ravel()
        for cell in zip(*np.unravel_index(cells, grid))
    ]
    return np.concatenate(values)


def _block_shape(shape: Sequence[int], chunks: Sequence[int] | None, max_voxels: int) -> tuple[int, ...]:
    """At most a sixteenth of the budget, so a sample spans many places: the storage chunk (or,
    without chunks, the whole volume) cut down from its leading axes, so a block is a chunk or lies
    within few chunks, and for unchunked data is a set of z-slices or rows."""
    chunked = chunks is not None and len(chunks) == len(shape)
    block = [min(c, n) for c, n in zip(chunks, shape)] if chunked else list(shape)
    target = max(1, max_voxels // _BLOCKS_PER_SAMPLE)
    for axis in range(len(block)):
        if math.prod(block) <= target:
            break
        block[axis] = max(1, target // math.prod(block[axis + 1 :]))
    return tuple(block)


def _stats_of(values: np.ndarray, percentiles: tuple[float, float]) -> IntensityStats:
    if values.dtype == bool:  # a binary image: intensities 0 and 1 (numpy cannot subtract booleans)
        values = values.view(np.uint8)
    if values.dtype.kind in "fc":
        values = values[np.isfinite(values)]
    if values.size == 0:
        logger.warning("no finite intensity found; statistics default to 0 (mean) and 1 (range)")
        return IntensityStats(low=0.0, high=1.0, mean=0.0, std=1.0, minimum=0.0, maximum=1.0)
    low, high = np.percentile(values, percentiles)
    return IntensityStats(
        low=float(low),
        high=float(high),
        mean=float(values.mean(dtype=np.float64)),
        std=float(values.std(dtype=np.float64)),
        minimum=float(values.min()),
        maximum=float(values.max()),
    )


def normalize_intensity(patch: np.ndarray, mode: str, stats: IntensityStats) -> np.ndarray:
    """``patch`` as float32, normalised by ``mode`` (one of :data:`NORMALIZATION_MODES`) with the
    statistics of the volume it comes from."""
    if mode not in NORMALIZATION_MODES:
        choices = ", ".join(NORMALIZATION_MODES)
        raise ValueError(f"unknown intensity normalisation {mode!r}; choose one of: {choices}")
    image = np.asarray(patch, dtype=np.float32)
    if mode == "none":
        return image.copy() if image is patch else image
    offset, scale, clip = _affine_for(mode, stats)
    result = (image - np.float32(offset)) * np.float32(1.0 / scale)
    if clip:
        np.clip(result, 0.0, 1.0, out=result)
    return result


def _affine_for(mode: str, stats: IntensityStats) -> tuple[float, float, bool]:
    """(offset, scale, clip to [0, 1]) of a mode; a zero scale becomes 1 (constant images)."""
    offset, scale, clip = {
        "minmax": (stats.minimum, stats.maximum - stats.minimum, True),
        "percentile": (stats.low, stats.high - stats.low, True),
        "zscore": (stats.mean, stats.std, False),
    }[mode]
    return offset, (scale if scale > 0 and math.isfinite(scale) else 1.0), clip


def read_normalized(volume: Any, index: Sequence[slice], *, has_channels: bool, flat: bool,
                    mode: str, stats: IntensityStats | None, copy: bool = True) -> np.ndarray:
    """``volume[index]`` as normalised float32 (C, z, y, x): the one way training patches and
    prediction windows are read, so both see the same values.

    ``index`` is spatial (y, x for a ``flat`` 2D section, which gets z = 1); a volume without
    ``has_channels`` gets C = 1. ``stats`` None only casts (``copy`` False may then return the
    volume's own memory for float32 data)."""
    data = volume[((slice(None),) if has_channels else ()) + tuple(index)]
    if flat:
        data = np.expand_dims(data, -3)
    if not has_channels:
        data = data[None]
    if stats is None:
        return data.astype(np.float32, copy=copy)
    return _normalized_in_torch(data, mode, stats)


_TORCH_NORMALISED = {np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64,
                                            np.float16, np.float32, np.float64)}


def _normalized_in_torch(data: np.ndarray, mode: str, stats: IntensityStats) -> np.ndarray:
    """``normalize_intensity(data, mode, stats)`` computed in one float32 buffer by torch (all
    cores, no full-size temporaries): the same float32 operations in the same order, so the same
    values. Other dtypes and modes go through ``normalize_intensity`` itself."""
    if mode not in ("minmax", "percentile", "zscore") or data.dtype not in _TORCH_NORMALISED:
        return normalize_intensity(data, mode, stats)
    import torch  # only here: napari imports this module at start-up

    offset, scale, clip = _affine_for(mode, stats)
    image = torch.from_numpy(np.ascontiguousarray(data)).to(torch.float32, copy=True)
    image.sub_(float(np.float32(offset))).mul_(float(np.float32(1.0 / scale)))
    if clip:
        image.clamp_(0.0, 1.0)
    return image.numpy()

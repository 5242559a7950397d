"""The voxel grid, a coarse grid for smooth fields, and smooth random noise on them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from .params import COARSE_STEP_NM


class Grid:
    """The voxel grid plus a coarse grid (~40 nm) on which smooth fields are computed cheaply."""

    def __init__(self, shape: tuple[int, int, int], vox: tuple[float, float, float]) -> None:
        self.shape = shape
        self.vox = np.asarray(vox, dtype=np.float64)
        self.steps = tuple(max(1, int(round(COARSE_STEP_NM / v))) for v in vox)
        # Coarse nodes sit on voxel indices 0, s, 2s, ... and the last one reaches past the end.
        self.cshape = tuple(-(-(n - 1) // s) + 1 for n, s in zip(shape, self.steps, strict=True))
        self.extent = np.asarray(shape, dtype=np.float64) * self.vox  # nm

    def coarse_coords(self) -> np.ndarray:
        """Physical (nm) coordinates of the coarse nodes, shape (*cshape, 3)."""
        axes = [
            np.arange(c) * s * v for c, s, v in zip(self.cshape, self.steps, self.vox, strict=True)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    def upsample(self, coarse: np.ndarray, xy_only: bool = False) -> np.ndarray:
        """Linear interpolation of a coarse-grid field onto the voxel grid (float32)."""
        return upsample_linear(coarse, self.shape, self.steps, (2, 1) if xy_only else (2, 1, 0))

    def to_coarse_index(self, pts: np.ndarray) -> np.ndarray:
        """Nearest coarse node index (N, 3) of physical points (N, 3), clipped into the grid."""
        idx = np.rint(pts / (self.vox * np.asarray(self.steps))).astype(np.intp)
        return np.clip(idx, 0, np.asarray(self.cshape) - 1)


def upsample_linear(
    coarse: np.ndarray, shape: Sequence[int], steps: Sequence[int], axes: Sequence[int] = (2, 1, 0)
) -> np.ndarray:
    """Separable linear interpolation from nodes at voxel indices 0, s, 2s, ... onto ``shape``."""
    out = coarse.astype(np.float32, copy=False)
    for axis in axes:
        n, s, c = shape[axis], steps[axis], out.shape[axis]
        if c == 1:
            out = np.repeat(out, n, axis=axis)
            continue
        if s == 1 and c == n:
            continue
        pos = np.arange(n, dtype=np.float64) / s
        i0 = np.minimum(pos.astype(np.intp), c - 2)
        wshape = [1] * out.ndim
        wshape[axis] = n
        w = (pos - i0).astype(np.float32).reshape(wshape)
        lo = np.take(out, i0, axis=axis)
        hi = np.take(out, i0 + 1, axis=axis)
        hi -= lo
        hi *= w
        lo += hi
        out = lo
    return out


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float] | float
) -> np.ndarray:
    """Gaussian-filtered white noise with zero mean and unit standard deviation (float32)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    field -= field.mean()
    std = float(field.std())
    if std > 0:
        field /= std
    return field


def noise_field(
    rng: np.random.Generator, shape: tuple[int, int, int], vox: np.ndarray, sigma_nm: float
) -> np.ndarray:
    """Smooth unit noise of correlation ``sigma_nm``, made on a grid ~sigma/2 apart."""
    steps = tuple(max(1, int(sigma_nm / (2.0 * v))) for v in vox)
    cshape = tuple(-(-(n - 1) // s) + 1 for n, s in zip(shape, steps, strict=True))
    sigma = [sigma_nm / (s * v) for s, v in zip(steps, vox, strict=True)]
    return upsample_linear(smooth_noise(rng, cshape, sigma), shape, steps)

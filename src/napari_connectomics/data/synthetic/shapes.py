"""The bent capsule every organelle is made of, and random orientations for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import Grid


def frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to ``axis`` (z-y-x); the first lies in the section plane."""
    a0, a1, a2 = (float(v) for v in axis)
    n = np.hypot(a1, a2)
    e1 = np.array([0.0, a2 / n, -a1 / n]) if n > 1e-6 else np.array([0.0, 1.0, 0.0])
    e2 = np.array([a1 * e1[2] - a2 * e1[1], a2 * e1[0] - a0 * e1[2], a0 * e1[1] - a1 * e1[0]])
    return e1, e2 / np.linalg.norm(e2)


def random_axis(rng: np.random.Generator, in_plane: float) -> np.ndarray:
    """Unit vector (z-y-x); with probability ``in_plane`` it lies within ~15 deg of the xy-plane."""
    if rng.random() < in_plane:
        elev = np.deg2rad(rng.normal(0.0, 10.0))
    else:
        elev = np.arcsin(rng.uniform(-1.0, 1.0))
    az = rng.uniform(0.0, 2.0 * np.pi)
    return np.array([np.sin(elev), np.cos(elev) * np.sin(az), np.cos(elev) * np.cos(az)])


@dataclass(frozen=True, eq=False)
class Capsule:
    """A bent capsule with elliptical cross-section: mitochondria, blobs and shells use it."""

    center: np.ndarray  # nm, z-y-x
    axis: np.ndarray
    half_length: float  # of the cylindrical part, nm
    r1: float  # cross-section radius along the in-plane normal
    r2: float
    bend: float = 0.0  # curvature of the long axis, 1/nm
    wobble: float = 0.0  # relative radius modulation along the axis
    phase: float = 0.0

    @property
    def reach(self) -> float:
        return self.half_length + max(self.r1, self.r2) * (1.0 + self.wobble) + abs(self.bend) * (
            self.half_length + self.r1
        ) ** 2

    def bbox(self, grid: Grid, pad_nm: float = 0.0) -> tuple[slice, slice, slice] | None:
        """Voxel bounding box inside the grid, or None if the shape misses the grid."""
        ext = np.abs(self.axis) * self.half_length + self.reach - self.half_length + pad_nm
        lo = np.floor((self.center - ext) / grid.vox).astype(int)
        hi = np.ceil((self.center + ext) / grid.vox).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, grid.shape)
        if np.any(hi <= lo):
            return None
        z0, y0, x0 = (int(v) for v in lo)
        z1, y1, x1 = (int(v) for v in hi)
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    def local(self, grid: Grid, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Axial coordinate ``u`` (nm) and normalised radius ``q`` (1 on the surface) in ``box``."""
        z, y, x = (
            (np.arange(s.start, s.stop, dtype=np.float32) * np.float32(v) - np.float32(c)).reshape(
                shp
            )
            for s, v, c, shp in zip(
                box, grid.vox, self.center, ((-1, 1, 1), (1, -1, 1), (1, 1, -1)), strict=True
            )
        )
        e1, e2 = frame(self.axis)
        a0, a1, a2 = (float(v) for v in self.axis)
        u = z * a0 + y * a1 + x * a2
        v = z * float(e1[0]) + y * float(e1[1]) + x * float(e1[2])
        w = z * float(e2[0]) + y * float(e2[1]) + x * float(e2[2])
        if self.bend:
            v -= float(self.bend) * u * u
        cap = np.maximum(np.abs(u) - float(self.half_length), 0.0)
        cap *= 2.0 / (self.r1 + self.r2)
        v *= 1.0 / self.r1
        w *= 1.0 / self.r2
        q2 = cap * cap + v * v + w * w
        q = np.sqrt(q2, out=q2)
        if self.wobble:
            q /= 1.0 + self.wobble * np.sin(u * float(2 * np.pi / 350.0) + float(self.phase))
        return u, q

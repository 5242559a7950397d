"""The entry point: validate the arguments, then build cells, mitochondria and the image in turn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .cells import cell_fields, make_cells
from .grid import Grid
from .mitochondria import place_mitochondria
from .params import DEFAULT_VOXEL_SIZE, MIN_SIZE
from .rendering import render


@dataclass(frozen=True, eq=False)
class SyntheticEM:
    """A synthetic EM volume (or slice) and its ground truth, all arrays with the same shape.

    ``voxel_size`` has one entry per array axis (z-y-x, or y-x for a 2D sample), in nm, so it can be
    handed to napari as ``scale`` directly.
    """

    image: np.ndarray  # uint8
    mitochondria: np.ndarray  # uint8, 0/1
    instances: np.ndarray  # uint32, 0 = background, one id per mitochondrion
    membranes: np.ndarray  # uint8, 0/1, cell membranes only
    voxel_size: tuple[float, ...]


def make_synthetic_em(
    shape: Sequence[int] = (32, 256, 256),
    seed: int = 0,
    *,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE,
    n_mitochondria: int | None = None,
    noise: float = 1.0,
) -> SyntheticEM:
    """Generate a synthetic EM volume with mitochondria, membranes and realistic distractors.

    Args:
        shape: ``(z, y, x)`` or ``(y, x)``; every size at least 16. A 2D shape gives one section
            through the same kind of 3D scene.
        seed: seed of ``numpy.random.default_rng``; the same ``(shape, seed)`` gives identical
            arrays.
        voxel_size: ``(z, y, x)`` in nm (for a 2D shape, ``z`` is the section thickness and may be
            omitted). Object sizes are physical, so this sets the apparent magnification.
        n_mitochondria: how many mitochondria to place; ``None`` fills about 6 % of the volume,
            so the count scales with the volume. Fewer are placed if the cells have no room left.
        noise: multiplier on the default noise (about 12 grey levels, spatially correlated, as in
            FIB-SEM); 0 gives a clean image of the same scene.

    Returns:
        A :class:`SyntheticEM`. With ``n_mitochondria=None`` (or >= 2), at least one pair of
        mitochondria touches whenever the volume has room for one (any default-size volume).

    Raises:
        ValueError: for a shape that is not 2 or 3 sizes >= 16, or an invalid other argument.
    """
    shape3, is_2d = _validate_shape(shape)
    vox = _validate_voxel_size(voxel_size, is_2d)
    if n_mitochondria is not None and (int(n_mitochondria) != n_mitochondria or n_mitochondria < 0):
        raise ValueError(
            f"n_mitochondria must be a non-negative integer or None; got {n_mitochondria!r}"
        )
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0; got {noise!r}")

    rng = np.random.default_rng(seed)
    grid = Grid(shape3, vox)
    cells = make_cells(rng, grid)
    level, bdist, darkness, membranes = cell_fields(grid, cells)
    instances, shapes = place_mitochondria(rng, grid, cells, bdist, n_mitochondria)
    mito = instances > 0
    image = render(rng, grid, cells, level, bdist, darkness, instances, shapes, float(noise))

    if is_2d:
        image, instances, mito, membranes = image[0], instances[0], mito[0], membranes[0]
        vox_out: tuple[float, ...] = vox[1:]
    else:
        vox_out = vox
    return SyntheticEM(
        image=image,
        mitochondria=mito.astype(np.uint8),
        instances=instances.astype(np.uint32),
        membranes=membranes.astype(np.uint8),
        voxel_size=vox_out,
    )


def _validate_shape(shape: Sequence[int]) -> tuple[tuple[int, int, int], bool]:
    """Return the 3D shape to generate and whether the caller asked for 2D."""
    try:
        dims = tuple(int(s) for s in shape)
        ok = len(dims) in (2, 3) and all(d == s for d, s in zip(dims, shape, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(dims) < MIN_SIZE:
        raise ValueError(
            f"shape must be (z, y, x) or (y, x) with every size >= {MIN_SIZE}; got {shape!r}"
        )
    if len(dims) == 2:
        return (1, dims[0], dims[1]), True
    return (dims[0], dims[1], dims[2]), False


def _validate_voxel_size(voxel_size: Sequence[float], is_2d: bool) -> tuple[float, float, float]:
    """Return a (z, y, x) voxel size in nm; a 2D caller may give only (y, x)."""
    try:
        vs = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        vs = ()
    if is_2d and len(vs) == 2:
        vs = (DEFAULT_VOXEL_SIZE[0], *vs)
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ValueError(
            f"voxel_size must be 3 positive numbers (z, y, x) in nm; got {voxel_size!r}"
        )
    return vs  # type: ignore[return-value]

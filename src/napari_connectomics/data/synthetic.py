"""Synthetic electron-microscopy volumes with mitochondria ground truth.

This is the project's embedded default: the demo, the napari sample data and every self-contained
test train and predict on it, because real EM data is not always available. It therefore has to
behave like EM, not like a toy: a network must learn shape and texture to find the mitochondria,
since membranes, vesicles, dark neurites and other organelles are as dark as they are (a global
threshold fails).

The scene is built in physical units (nm) and rasterised on the requested grid, so ``voxel_size``
changes the apparent scale, as a different microscope setting would. The default, 30 x 8 x 8 nm
(z, y, x), imitates anisotropic serial-section EM of neuropil at a pixel size where a 256 x 256
section (2 um across) holds several cells and mitochondria; ``voxel_size=(5, 5, 5)`` gives
Lucchi-like isotropic FIB-SEM sampling.

What is drawn, all in 3D so that objects continue across sections:

* cells: a warped power (weighted Voronoi) diagram of big and small cells with rounded corners,
  stretched along z like neurites crossing the section plane; their boundaries are dark membrane
  sheets 24 nm (3 px) thick, wider and fainter where they lie oblique to the section;
* mitochondria: bent capsules with elliptical cross-section, mostly lying in the section plane,
  inside cells and clear of membranes; matrix darker than cytoplasm, a darker double-membrane rim
  and cristae-like stripes across the long axis; some are placed in touching pairs (side by side or
  end to end) so instance separation has something to split;
* distractors, none of them labelled: clusters of synaptic vesicles (small dark-rimmed spheres),
  larger vesicles and ER / endosome outlines (dark-rimmed shells), dense blobs (lysosomes, dense
  bodies), postsynaptic densities (thick dark membrane patches) and whole dark neurites;
* imaging: per-cell brightness, low-frequency and fine cytoplasm texture, a Gaussian PSF, correlated
  and shot-like noise, per-section brightness drift and a soft limit into uint8 (no clipped blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

__all__ = ["SyntheticEM", "make_synthetic_em"]

_DEFAULT_VOXEL_SIZE = (30.0, 8.0, 8.0)  # nm, z-y-x: anisotropic like serial-section EM
_MIN_SIZE = 16

# Geometry, in nm.
_COARSE_STEP_NM = 40.0  # grid for the smooth fields (cells, warps, shading), interpolated to voxels
_PAD_NM = 400.0  # cell seeds also fill a margin around the volume, so borders look like the inside
_Z_STRETCH = 0.5  # z distances count half: cells run along z like neurites crossing the section
_BIG_CELL_SPACING_NM = 950.0  # dendrite-like cells that host most mitochondria
_SMALL_CELL_SPACING_NM = 340.0  # axon / bouton-like profiles
_LAYOUT_TRIES = 25
_BUNDLE_FRACTION = 0.4  # big cells replaced by bundles of small profiles
_WARP_NM = 170.0  # amplitude of the smooth displacement that bends the straight Voronoi faces
_WARP_CORR_NM = 380.0
_WARP_FINE_NM = 25.0  # and a gentle wiggle on top
_WARP_FINE_CORR_NM = 90.0
_CORNER_RADIUS_NM = 50.0  # rounding of cell corners
_MEMBRANE_HALF_NM = 12.0  # membrane mask half-width: 24 nm, i.e. 3 px at 8 nm
_MITO_MARGIN_NM = 40.0  # clearance between mitochondria and membranes (~ coarse grid half-diagonal)
_MITO_GAP_NM = 24.0  # clearance between mitochondria that are not a touching pair
_MITO_RADIUS_NM = (65.0, 180.0)
_MITO_TARGET_FRACTION = 0.06  # default foreground fraction (Lucchi: ~5 %)
_MITO_MEAN_VOLUME_NM3 = 2.6e7  # of one mitochondrion, for the expected count
_RIM_NM = 18.0  # double membrane
_CRISTAE_PERIOD_NM = (34.0, 52.0)
_PSF_NM = 9.0  # in-plane Gaussian PSF sigma

# Grey levels before noise (uint8 scale).
_CYTO_BIG = 172.0
_CYTO_SMALL = 190.0
_CYTO_DARK = (118.0, 140.0)
_MITO_MATRIX = (110.0, 132.0)
_MEMBRANE_CONTRAST = 0.64
_MEMBRANE_LOOK = 1.5  # width of the dark profile relative to the labelled membrane band
_NOISE_STD = 11.0


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
    voxel_size: Sequence[float] = _DEFAULT_VOXEL_SIZE,
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
    grid = _Grid(shape3, vox)
    cells = _make_cells(rng, grid)
    level, bdist, darkness, membranes = _cell_fields(grid, cells)
    instances, shapes = _place_mitochondria(rng, grid, cells, bdist, n_mitochondria)
    mito = instances > 0
    image = _render(rng, grid, cells, level, bdist, darkness, instances, shapes, float(noise))

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


# --------------------------------------------------------------------------------------------------
# validation


def _validate_shape(shape: Sequence[int]) -> tuple[tuple[int, int, int], bool]:
    """Return the 3D shape to generate and whether the caller asked for 2D."""
    try:
        dims = tuple(int(s) for s in shape)
        ok = len(dims) in (2, 3) and all(d == s for d, s in zip(dims, shape, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(dims) < _MIN_SIZE:
        raise ValueError(
            f"shape must be (z, y, x) or (y, x) with every size >= {_MIN_SIZE}; got {shape!r}"
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
        vs = (_DEFAULT_VOXEL_SIZE[0], *vs)
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ValueError(
            f"voxel_size must be 3 positive numbers (z, y, x) in nm; got {voxel_size!r}"
        )
    return vs  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# grids


class _Grid:
    """The voxel grid plus a coarse grid (~40 nm) on which smooth fields are computed cheaply."""

    def __init__(self, shape: tuple[int, int, int], vox: tuple[float, float, float]) -> None:
        self.shape = shape
        self.vox = np.asarray(vox, dtype=np.float64)
        self.steps = tuple(max(1, int(round(_COARSE_STEP_NM / v))) for v in vox)
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
        return _upsample_linear(coarse, self.shape, self.steps, (2, 1) if xy_only else (2, 1, 0))

    def to_coarse_index(self, pts: np.ndarray) -> np.ndarray:
        """Nearest coarse node index (N, 3) of physical points (N, 3), clipped into the grid."""
        idx = np.rint(pts / (self.vox * np.asarray(self.steps))).astype(np.intp)
        return np.clip(idx, 0, np.asarray(self.cshape) - 1)


def _upsample_linear(
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


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float] | float
) -> np.ndarray:
    """Gaussian-filtered white noise with zero mean and unit standard deviation (float32)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    field -= field.mean()
    std = float(field.std())
    if std > 0:
        field /= std
    return field


def _noise_field(
    rng: np.random.Generator, shape: tuple[int, int, int], vox: np.ndarray, sigma_nm: float
) -> np.ndarray:
    """Smooth unit noise of correlation ``sigma_nm``, made on a grid ~sigma/2 apart."""
    steps = tuple(max(1, int(sigma_nm / (2.0 * v))) for v in vox)
    cshape = tuple(-(-(n - 1) // s) + 1 for n, s in zip(shape, steps, strict=True))
    sigma = [sigma_nm / (s * v) for s, v in zip(steps, vox, strict=True)]
    return _upsample_linear(_smooth_noise(rng, cshape, sigma), shape, steps)


# --------------------------------------------------------------------------------------------------
# cells


@dataclass(frozen=True, eq=False)
class _Cells:
    label: np.ndarray  # coarse, int: which cell each coarse node belongs to
    bdist: np.ndarray  # coarse, float32: distance (nm) to the nearest cell boundary
    near: np.ndarray  # coarse, (k,) int per node: the k nearest seeds, candidates for nearby voxels
    warp: np.ndarray  # coarse, (3, ...) float32: displacement (nm) applied before the query
    seeds: np.ndarray  # (n, 4): lifted seeds in the stretched space (z scaled, 4th coord = weight)
    big: np.ndarray  # per cell, bool: large (dendrite-like) cell
    level: np.ndarray  # per cell: cytoplasm grey level
    vesicle_density: np.ndarray  # per cell: relative density of synaptic vesicles


_SCALE = np.array([_Z_STRETCH, 1.0, 1.0])


def _power_query(
    pts: np.ndarray, seeds: np.ndarray, cand: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Owner seed, physical distance (nm) to the nearest cell boundary and that boundary's tilt.

    ``pts`` (N, 3) are stretched coordinates, ``cand`` (N, k) candidate seed indices. The boundary
    between power cells i and j is a plane, so the distance to it follows from the two power
    distances; it is converted from the stretched space back to nm. The tilt is |n_z| of the plane's
    physical normal (0: the membrane crosses the section at a right angle, 1: it lies in it). The
    distances to the two nearest planes also round the cell corners (see below).
    """
    dtype = pts.dtype
    cand = np.ascontiguousarray(cand.T)  # (k, N): reductions over k run along contiguous rows
    comp = [seeds[:, a].astype(dtype)[cand] for a in range(4)]
    pd = comp[3] * comp[3]
    for a in range(3):
        diff = pts[:, a] - comp[a]
        pd += diff * diff
    cols = np.arange(len(pts))
    first = np.argmin(pd, axis=0)
    own = cand[first, cols]
    # Physical normals of the planes between the owner and each candidate.
    nrm = [(comp[a] - comp[a][first, cols]) * dtype.type(_SCALE[a]) for a in range(3)]
    nlen = np.sqrt(nrm[0] * nrm[0] + nrm[1] * nrm[1] + nrm[2] * nrm[2])
    d = (pd - pd[first, cols]) / np.maximum(2 * nlen, dtype.type(1e-6))
    d[first, cols] = np.inf
    near = np.argmin(d, axis=0)
    d1 = d[near, cols]
    tilt = np.abs(nrm[0][near, cols]) / np.maximum(nlen[near, cols], dtype.type(1e-6))
    d[near, cols] = np.inf
    d2 = d.min(axis=0)
    # Round the cell corners (a fillet of radius R): cells look like neurite profiles, not polygons,
    # and the small gaps left at junctions become negative distances, painted as membrane.
    r = dtype.type(_CORNER_RADIUS_NM)
    fillet = r - np.sqrt(np.maximum(r - d1, 0) ** 2 + np.maximum(r - d2, 0) ** 2)
    bdist = np.where(d2 < r, fillet, d1)
    return own, bdist, tilt


def _cell_layout(
    rng: np.random.Generator, grid: _Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeds, big-cell flags, warp, candidate seeds, owner and boundary distance (coarse grid)."""
    lo = -_PAD_NM * np.ones(3)
    hi = grid.extent + _PAD_NM
    vol = float(np.prod((hi - lo) * _SCALE))
    # Big cells on a jittered lattice, so that no volume is left without room for mitochondria.
    span = (hi - lo) * _SCALE
    counts = np.maximum(1, np.rint(span / _BIG_CELL_SPACING_NM)).astype(int)
    lattice = np.stack(np.meshgrid(*(np.arange(c) for c in counts), indexing="ij"), -1)
    lattice = lattice.reshape(-1, 3)
    n_big = len(lattice)
    big_seeds = lo * _SCALE + (lattice + rng.uniform(0.1, 0.9, (n_big, 3))) * (span / counts)
    # A fixed share of the big cells in view (at least one, never all) become bundles of small
    # axon-like profiles; the view is the seeds inside the volume, or the two nearest its centre.
    inside = np.all((big_seeds >= 0) & (big_seeds <= grid.extent * _SCALE), axis=1)
    m = min(n_big, max(2, int(inside.sum())))
    to_centre = np.linalg.norm(big_seeds - 0.5 * grid.extent * _SCALE, axis=1)
    view = np.argsort(to_centre, kind="stable")[:m]
    bundle = rng.random(n_big) < _BUNDLE_FRACTION
    n_bundle = min(max(int(round(_BUNDLE_FRACTION * m)), 1), max(m - 1, 1))
    bundle[view] = rng.permutation(m) < n_bundle
    n_small = max(2, int(round(vol / _SMALL_CELL_SPACING_NM**3)))
    small = rng.uniform(lo, hi, size=(n_small, 3)) * _SCALE
    small = small[bundle[cKDTree(big_seeds).query(small)[1]]]
    n = n_big + len(small)
    big = np.zeros(n, dtype=bool)
    big[:n_big] = ~bundle
    seeds = np.zeros((n, 4))
    seeds[:n_big, :3] = big_seeds
    seeds[n_big:, :3] = small
    # Lifted weights: small profiles (and the seed of their bundle) give way to big cells, and vary
    # in size among themselves.
    seeds[:, 3] = np.where(big, 0.0, rng.uniform(300.0, 400.0, n))

    csteps = np.asarray(grid.steps) * grid.vox
    sigma = [_WARP_CORR_NM / s for s in csteps]
    fine = [_WARP_FINE_CORR_NM / s for s in csteps]
    warp = np.stack(
        [
            _WARP_NM * _smooth_noise(rng, grid.cshape, sigma)
            + _WARP_FINE_NM * _smooth_noise(rng, grid.cshape, fine)
            for _ in range(3)
        ]
    )
    coords = grid.coarse_coords() + np.moveaxis(warp, 0, -1)
    pts = (coords * _SCALE).reshape(-1, 3)

    k = min(4, n)
    _, near = cKDTree(seeds).query(np.concatenate([pts, np.zeros((len(pts), 1))], axis=1), k=k)
    near = near.reshape(-1, k)
    own, bdist, _ = _power_query(pts, seeds, near)
    return seeds, big, warp, near, own, bdist


def _make_cells(rng: np.random.Generator, grid: _Grid) -> _Cells:
    """Warped power diagram of big and small cells, evaluated on the coarse grid.

    The power diagram is the Voronoi diagram of seeds lifted into 4D (4th coordinate = weight),
    which a k-d tree answers directly. The z axis is stretched so that cells run along z like
    neurites. A layout is redrawn (deterministically, from the same generator) until the field of
    view shows several cells, small and big, and has room for a mitochondrion: small test volumes
    should show everything the default volume shows.
    """
    fov = float(min(grid.extent[1:]))
    need_cells = 3 if fov >= 600.0 else 1
    for _ in range(_LAYOUT_TRIES):
        seeds, big, warp, near, own, bdist = _cell_layout(rng, grid)
        in_view = np.unique(own)
        room = bdist[big[own]]
        if (
            in_view.size >= need_cells
            and (fov < 600.0 or not big[in_view].all())
            and (fov < 400.0 or (room.size and room.max() > _MITO_RADIUS_NM[0] + _MITO_MARGIN_NM))
        ):
            break
    n = len(seeds)
    level = np.where(big, rng.normal(_CYTO_BIG, 7.0, n), rng.normal(_CYTO_SMALL, 10.0, n))
    dark = ~big & (rng.random(n) < 0.12)
    level[dark] = rng.uniform(*_CYTO_DARK, int(dark.sum()))
    vesicle_density = np.where(big, 0.03, 0.15)
    boutons = ~big & ~dark & (rng.random(n) < 0.22)
    vesicle_density[boutons] = rng.uniform(0.6, 1.0, int(boutons.sum()))
    return _Cells(
        label=own.reshape(grid.cshape),
        bdist=bdist.reshape(grid.cshape).astype(np.float32),
        near=near.reshape(*grid.cshape, near.shape[-1]),
        warp=warp.astype(np.float32),
        seeds=seeds,
        big=big,
        level=level.astype(np.float32),
        vesicle_density=vesicle_density,
    )


def _cell_fields(
    grid: _Grid, cells: _Cells
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel cytoplasm level, distance (nm) to the nearest boundary, membrane darkness and mask.

    Each voxel tests only the candidate seeds of its nearest coarse node, section by section, which
    keeps time and memory linear in the number of voxels. A membrane sheet that is tilted against
    the section is smeared over the section thickness: its band is wider and, for the same amount
    of stain, fainter.
    """
    nz, ny, nx = grid.shape
    level = np.empty(grid.shape, dtype=np.float32)
    bdist = np.empty(grid.shape, dtype=np.float32)
    darkness = np.empty(grid.shape, dtype=np.float32)
    membranes = np.empty(grid.shape, dtype=bool)
    warp = [grid.upsample(cells.warp[a], xy_only=True) for a in range(3)]  # (cz, ny, nx) each
    sz, sy, sx = grid.steps
    iy = np.rint(np.arange(ny) / sy).astype(np.intp)
    ix = np.rint(np.arange(nx) / sx).astype(np.intp)
    yy = (np.arange(ny) * grid.vox[1])[:, None]
    xx = (np.arange(nx) * grid.vox[2])[None, :]
    smear = np.float32(grid.vox[0] ** 2 / 6.0)  # variance of a box as thick as the section, x2
    for z in range(nz):
        cz = z / sz
        c0 = min(int(cz), cells.warp.shape[1] - 1)
        c1 = min(c0 + 1, cells.warp.shape[1] - 1)
        t = cz - c0
        disp = [(1 - t) * w[c0] + t * w[c1] for w in warp]
        pts = np.stack(
            [
                np.broadcast_to((z * grid.vox[0] + disp[0]) * _SCALE[0], (ny, nx)),
                (yy + disp[1]) * _SCALE[1],
                (xx + disp[2]) * _SCALE[2],
            ],
            axis=-1,
        ).reshape(-1, 3).astype(np.float32)
        cand = cells.near[int(round(cz)), iy[:, None], ix[None, :]].reshape(ny * nx, -1)
        own, bd, tilt = _power_query(pts, cells.seeds, cand)
        width = np.sqrt(np.float32(_MEMBRANE_HALF_NM**2) + smear * tilt * tilt)
        look = np.maximum(bd, 0) / (np.float32(_MEMBRANE_LOOK) * width)
        level[z] = cells.level[own].reshape(ny, nx)
        bdist[z] = bd.reshape(ny, nx)
        dark = np.exp(-look * look) * (np.float32(_MEMBRANE_HALF_NM) / width)
        darkness[z] = dark.reshape(ny, nx)
        membranes[z] = (bd < width).reshape(ny, nx)
    return level, bdist, darkness, membranes


# --------------------------------------------------------------------------------------------------
# shapes


def _frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to ``axis`` (z-y-x); the first lies in the section plane."""
    a0, a1, a2 = (float(v) for v in axis)
    n = np.hypot(a1, a2)
    e1 = np.array([0.0, a2 / n, -a1 / n]) if n > 1e-6 else np.array([0.0, 1.0, 0.0])
    e2 = np.array([a1 * e1[2] - a2 * e1[1], a2 * e1[0] - a0 * e1[2], a0 * e1[1] - a1 * e1[0]])
    return e1, e2 / np.linalg.norm(e2)


def _random_axis(rng: np.random.Generator, in_plane: float) -> np.ndarray:
    """Unit vector (z-y-x); with probability ``in_plane`` it lies within ~15 deg of the xy-plane."""
    if rng.random() < in_plane:
        elev = np.deg2rad(rng.normal(0.0, 10.0))
    else:
        elev = np.arcsin(rng.uniform(-1.0, 1.0))
    az = rng.uniform(0.0, 2.0 * np.pi)
    return np.array([np.sin(elev), np.cos(elev) * np.sin(az), np.cos(elev) * np.cos(az)])


@dataclass(frozen=True, eq=False)
class _Capsule:
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

    def bbox(self, grid: _Grid, pad_nm: float = 0.0) -> tuple[slice, slice, slice] | None:
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

    def local(self, grid: _Grid, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Axial coordinate ``u`` (nm) and normalised radius ``q`` (1 on the surface) in ``box``."""
        z, y, x = (
            (np.arange(s.start, s.stop, dtype=np.float32) * np.float32(v) - np.float32(c)).reshape(
                shp
            )
            for s, v, c, shp in zip(
                box, grid.vox, self.center, ((-1, 1, 1), (1, -1, 1), (1, 1, -1)), strict=True
            )
        )
        e1, e2 = _frame(self.axis)
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


def _random_mito(rng: np.random.Generator, axis: np.ndarray | None = None) -> _Capsule:
    """A mitochondrion-sized capsule at the origin (moved into place later)."""
    r1 = rng.uniform(*_MITO_RADIUS_NM)
    r2 = r1 * rng.uniform(0.8, 1.1)
    half = r1 * rng.choice([rng.uniform(0.2, 1.0), rng.uniform(1.0, 3.2)], p=[0.35, 0.65])
    return _Capsule(
        center=np.zeros(3),
        axis=_random_axis(rng, 0.75) if axis is None else axis,
        half_length=float(half),
        r1=float(r1),
        r2=float(r2),
        bend=float(rng.normal(0.0, 0.25) / max(half + r1, 1.0)),
        wobble=float(rng.uniform(0.0, 0.08)),
        phase=float(rng.uniform(0, 2 * np.pi)),
    )


# --------------------------------------------------------------------------------------------------
# mitochondria


def _fits_cell(cap: _Capsule, grid: _Grid, cells: _Cells, cell: int) -> bool:
    """True if the capsule, grown by the membrane margin, stays inside ``cell`` (coarse grid)."""
    grown = replace(
        cap, r1=cap.r1 + _MITO_MARGIN_NM, r2=cap.r2 + _MITO_MARGIN_NM, wobble=0.0, phase=0.0
    )
    cstep = grid.vox * np.asarray(grid.steps)
    ext = np.abs(grown.axis) * grown.half_length + grown.reach - grown.half_length
    lo = np.maximum(np.floor((grown.center - ext) / cstep).astype(int), 0)
    hi = np.minimum(np.ceil((grown.center + ext) / cstep).astype(int) + 1, grid.cshape)
    if np.any(hi <= lo):
        return False
    axes = (np.arange(a, b) * s for a, b, s in zip(lo, hi, cstep, strict=True))
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3) - grown.center
    e1, e2 = _frame(grown.axis)
    u = nodes @ grown.axis
    v = nodes @ e1 - grown.bend * u * u
    w = nodes @ e2
    cap_ = np.maximum(np.abs(u) - grown.half_length, 0) / (0.5 * (grown.r1 + grown.r2))
    inside = (cap_**2 + (v / grown.r1) ** 2 + (w / grown.r2) ** 2) < 1.0
    lab = cells.label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].reshape(-1)[inside]
    bd = cells.bdist[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].reshape(-1)[inside]
    return bool(np.all(lab == cell) and np.all(bd > _MEMBRANE_HALF_NM))


class _MitoCanvas:
    """Instance volume plus the shapes drawn into it, with overlap and membrane checks."""

    def __init__(self, grid: _Grid, bdist: np.ndarray) -> None:
        self.grid = grid
        self.bdist = bdist
        self.instances = np.zeros(grid.shape, dtype=np.uint32)
        # Normalised depth of the shape owning each voxel: lets touching pairs share a face.
        self.qbest = np.full(grid.shape, np.inf, dtype=np.float32)
        self.shapes: list[_Capsule] = []
        self.voxels = 0
        # Clearance to other shapes: over a voxel in every axis, so they never become neighbours.
        self.gap = max(_MITO_GAP_NM, 1.25 * float(grid.vox.max()))
        self.pad = 2.0 * self.gap  # bounding-box margin that covers the clearance test
        self.clip = _MEMBRANE_HALF_NM + 1.5 * float(grid.vox[1:].max())  # never onto a membrane

    def try_add(self, cap: _Capsule, partner: int = 0) -> int:
        """Draw ``cap`` if it hits the grid and keeps clear of all but ``partner``; its id or 0."""
        box = cap.bbox(self.grid, pad_nm=self.pad)
        if box is None:
            return 0
        _, q = cap.local(self.grid, box)
        rmin = min(cap.r1, cap.r2)
        near = q < 1.0 + self.gap / rmin
        inst = self.instances[box]
        others = inst[near]
        if np.any((others != 0) & (others != partner)):
            return 0
        mask = (q < 1.0) & (self.bdist[box] > self.clip)
        if partner:
            mask &= q < self.qbest[box]  # shared voxels go to the shape they are deeper in
        if not np.any(mask):
            return 0
        new_id = len(self.shapes) + 1
        self.voxels += int(np.count_nonzero(mask & (inst == 0)))
        inst[mask] = new_id
        self.qbest[box][mask] = q[mask]
        self.shapes.append(cap)
        return new_id

    def touching(self, a: int, b: int) -> bool:
        """True if instances ``a`` and ``b`` are 6-neighbours somewhere."""
        inst = self.instances
        for ax in range(3):
            if inst.shape[ax] < 2:
                continue
            s0 = [slice(None)] * 3
            s1 = [slice(None)] * 3
            s0[ax] = slice(None, -1)
            s1[ax] = slice(1, None)
            p, r = inst[tuple(s0)], inst[tuple(s1)]
            if np.any(((p == a) & (r == b)) | ((p == b) & (r == a))):
                return True
        return False

    def remove(self, label: int) -> None:
        """Undo the most recent shape (only the last one can be removed)."""
        assert label == len(self.shapes)
        cap = self.shapes.pop()
        box = cap.bbox(self.grid, pad_nm=self.pad)
        if box is None:
            return
        sub = self.instances[box]
        hit = sub == label
        self.voxels -= int(np.count_nonzero(hit))
        sub[hit] = 0
        self.qbest[box][hit] = np.inf


def _place_mitochondria(
    rng: np.random.Generator, grid: _Grid, cells: _Cells, bdist: np.ndarray, n_target: int | None
) -> tuple[np.ndarray, list[_Capsule]]:
    """Place mitochondria in cells, a few as touching pairs; return instance volume and shapes."""
    canvas = _MitoCanvas(grid, bdist)
    total = int(np.prod(grid.shape))
    cstep = grid.vox * np.asarray(grid.steps)
    order = np.argsort(cells.bdist.reshape(-1), kind="stable")
    room = cells.bdist.reshape(-1)[order]  # ascending: nodes with enough room form a tail

    def done() -> bool:
        if n_target is not None:
            return len(canvas.shapes) >= n_target
        return canvas.voxels >= _MITO_TARGET_FRACTION * total

    def place(cap: _Capsule) -> tuple[_Capsule, int] | None:
        """Move ``cap`` to a random coarse node with room for its width; None if there is none."""
        start = int(np.searchsorted(room, min(cap.r1, cap.r2) + _MITO_MARGIN_NM))
        if start >= room.size:
            return None
        node = np.unravel_index(order[rng.integers(start, room.size)], grid.cshape)
        center = np.asarray(node) * cstep + rng.uniform(-0.5, 0.5, 3) * cstep
        if grid.shape[0] == 1:  # a single section: cut the organelle somewhere through its middle
            center[0] = rng.normal(0.0, 0.25 * min(cap.r1, cap.r2))
        return replace(cap, center=center), int(cells.label[node])

    def add_pair() -> bool:
        placed = place(_random_mito(rng, axis=_random_axis(rng, 1.0)))
        if placed is None:
            return False
        a, cell = placed
        if not _fits_cell(a, grid, cells, cell):
            return False
        e1, _ = _frame(a.axis)
        b = _random_mito(rng, axis=a.axis)
        if rng.random() < 0.6:  # side by side
            b = replace(
                b,
                center=a.center + e1 * rng.choice([-1, 1]) * 0.9 * (a.r1 + b.r1),
                half_length=min(b.half_length, a.half_length + 60.0),
                bend=0.0,
            )
        else:  # end to end
            gap = a.half_length + b.half_length + 0.9 * 0.5 * (a.r1 + a.r2 + b.r1 + b.r2)
            b = replace(b, center=a.center + a.axis * gap, bend=0.0)
        a = replace(a, bend=0.0)
        if not _fits_cell(b, grid, cells, cell):
            return False
        ia = canvas.try_add(a)
        if not ia:
            return False
        ib = canvas.try_add(b, partner=ia)
        if ib and canvas.touching(ia, ib):
            return True
        if ib:
            canvas.remove(ib)
        canvas.remove(ia)
        return False

    # Pairs first, while there is room, so that a touching pair is (nearly) guaranteed.
    if n_target is None:
        expected = _MITO_TARGET_FRACTION * float(np.prod(grid.extent)) / _MITO_MEAN_VOLUME_NM3
        n_pairs = max(1, int(round(0.12 * expected))) if expected >= 3.0 else 0
    else:
        n_pairs = max(1, int(round(0.12 * n_target))) if n_target >= 2 else 0
    pairs = tries = 0
    while pairs < n_pairs and tries < 200 and not done():
        tries += 1
        if n_target is not None and len(canvas.shapes) + 2 > n_target:
            break
        pairs += add_pair()

    overshoot = 1.5 * _MITO_TARGET_FRACTION * total
    tries = 0
    max_tries = 200 + int(25 * expected) if n_target is None else 200 + 20 * n_target
    while not done() and tries < max_tries:
        tries += 1
        placed = place(_random_mito(rng))
        if placed is None:
            continue
        cap, cell = placed
        # A shorter, turned organelle often fits where a long one did not.
        for shrink in (1.0, 0.5, 0.15):
            if shrink < 1.0:
                cap = replace(
                    cap, axis=_random_axis(rng, 0.75), half_length=cap.half_length * shrink
                )
            if _fits_cell(cap, grid, cells, cell):
                label = canvas.try_add(cap)
                if label and n_target is None and label > 1 and canvas.voxels > overshoot:
                    canvas.remove(label)  # keeps small volumes from filling up with one organelle
                break

    # Relabel to consecutive ids in case a shape lost all its voxels to the membrane clip.
    ids = np.unique(canvas.instances)
    ids = ids[ids > 0]
    if ids.size and ids[-1] != ids.size:
        lut = np.zeros(int(ids[-1]) + 1, dtype=np.uint32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
        canvas.instances = lut[canvas.instances]
    return canvas.instances, [canvas.shapes[i - 1] for i in ids]


# --------------------------------------------------------------------------------------------------
# rendering


def _render(
    rng: np.random.Generator,
    grid: _Grid,
    cells: _Cells,
    level: np.ndarray,
    bdist: np.ndarray,
    darkness: np.ndarray,
    instances: np.ndarray,
    shapes: list[_Capsule],
    noise: float,
) -> np.ndarray:
    """Paint cytoplasm, distractors, mitochondria and membranes, then blur, add noise, quantise.

    ``level`` (the per-voxel cytoplasm level) becomes the canvas and is overwritten.
    """
    vz, vy, vx = grid.vox
    img = level
    img += 7.0 * _noise_field(rng, grid.shape, grid.vox, 150.0)  # low-frequency shading
    img += 12.0 * _noise_field(rng, grid.shape, grid.vox, 30.0)  # mottling

    # Fine granular texture (ribosomes, cytoskeleton): band-limited noise with dark specks.
    tex = _smooth_noise(rng, grid.shape, (12.0 / vz, 12.0 / vy, 12.0 / vx))  # ~1.5 px grain
    img += 11.0 * tex
    img -= 40.0 * np.clip(tex - 0.9, 0.0, None)

    dark = np.zeros(grid.shape, dtype=np.float32)  # darkening by vesicles / distractors, max wins
    _draw_vesicles(rng, grid, cells, bdist, instances, dark)
    _draw_distractors(rng, grid, cells, bdist, instances, img, dark)
    img -= dark
    del dark

    _draw_mitochondria(rng, grid, shapes, instances, img, tex)
    del tex

    # Membranes: dark sheets along cell boundaries, a little uneven in contrast.
    shade = _noise_field(rng, grid.shape, grid.vox, 120.0)
    shade *= 0.15 * _MEMBRANE_CONTRAST
    shade += _MEMBRANE_CONTRAST
    shade *= darkness
    np.subtract(1.0, shade, out=shade)
    img *= shade
    del shade

    # Imaging: grainy noise before the PSF (correlated, like real FIB-SEM), shot-like noise after.
    if noise > 0:
        grain = rng.standard_normal(grid.shape, dtype=np.float32)
        grain *= 2.0 * _NOISE_STD * noise
        img += grain
        del grain
    img = ndi.gaussian_filter(img, (0.3, _PSF_NM / vy, _PSF_NM / vx), output=img, truncate=3.0)
    if noise > 0:
        shot = np.clip(img, 1.0, None)
        shot *= np.float32(1.0 / 160.0)
        np.sqrt(shot, out=shot)
        shot *= rng.standard_normal(grid.shape, dtype=np.float32)
        shot *= 0.75 * _NOISE_STD * noise
        img += shot
        del shot
    nz = grid.shape[0]
    gain = (1.0 + 0.025 * rng.standard_normal(nz)).astype(np.float32)
    offset = (4.0 * rng.standard_normal(nz)).astype(np.float32)
    img *= gain[:, None, None]
    img += offset[:, None, None]
    return _soft_quantise(img)


def _soft_quantise(img: np.ndarray) -> np.ndarray:
    """Map to uint8 with soft knees at both ends, so no flat saturated blocks appear."""
    lo, hi, knee = 12.0, 243.0, 22.0
    out = img
    low = out < lo + knee
    out[low] = lo + knee + knee * np.tanh((out[low] - lo - knee) / knee)
    high = out > hi - knee
    out[high] = hi - knee + knee * np.tanh((out[high] - hi + knee) / knee)
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def _splat_spheres(
    grid: _Grid,
    field: np.ndarray,
    centers: np.ndarray,
    radii: np.ndarray,
    depth: np.ndarray,
    rim_nm: float,
) -> None:
    """Max-composite dark-rimmed spheres (vesicles) into ``field``, vectorised over all spheres."""
    if len(centers) == 0:
        return
    rmax = float(radii.max()) + 2.0 * rim_nm
    half = np.ceil(rmax / grid.vox).astype(int)
    offs = np.stack(np.meshgrid(*(np.arange(-h, h + 1) for h in half), indexing="ij"), -1)
    offs = offs.reshape(-1, 3)
    offs_nm = offs * grid.vox
    # Keep only kernel voxels that a sphere centred anywhere in the central voxel can reach.
    offs_nm = offs_nm[np.linalg.norm(offs_nm, axis=1) - 0.5 * np.linalg.norm(grid.vox) <= rmax]
    offs = np.rint(offs_nm / grid.vox).astype(np.intp)
    offs_nm = offs_nm.astype(np.float32)
    flat = field.reshape(-1)
    shape = np.asarray(grid.shape)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    koff = offs @ strides
    for start in range(0, len(centers), 4096):
        c = centers[start : start + 4096]
        ci = np.rint(c / grid.vox).astype(np.intp)
        sub = (ci * grid.vox - c).astype(np.float32)
        d2 = np.zeros((len(c), len(koff)), dtype=np.float32)
        ok = np.ones(d2.shape, dtype=bool)
        for ax in range(3):
            d = sub[:, ax, None] + offs_nm[None, :, ax]
            d2 += d * d
            pos = ci[:, ax, None] + offs[None, :, ax]
            ok &= (pos >= 0) & (pos < shape[ax])
        r = radii[start : start + 4096, None].astype(np.float32)
        t = (np.sqrt(d2) - r) * np.float32(0.5 / rim_nm)
        prof = np.maximum(1.0 - t * t, 0.0)
        val = depth[start : start + 4096, None].astype(np.float32) * (prof * prof + 0.15 * (t < 0))
        ok &= val > 0.5
        index = (ci @ strides)[:, None] + koff[None, :]
        np.maximum.at(flat, index[ok], val[ok])


def _draw_vesicles(
    rng: np.random.Generator,
    grid: _Grid,
    cells: _Cells,
    bdist: np.ndarray,
    instances: np.ndarray,
    dark: np.ndarray,
) -> None:
    """Synaptic vesicles (clustered in bouton-like cells) and sparse larger vesicles."""
    vol_nm3 = float(np.prod(grid.extent))
    pool = rng.uniform(0, grid.extent, size=(int(vol_nm3 / 1.2e5) + 1, 3))
    lab = cells.label[tuple(grid.to_coarse_index(pool).T)]
    keep = rng.random(len(pool)) < cells.vesicle_density[lab]
    sv = pool[keep]
    # big ones: endosome-like, anywhere
    n_big = int(vol_nm3 / 3.0e7) + 1
    bv = rng.uniform(0, grid.extent, size=(n_big, 3))
    # (points, radius range nm, rim darkness range)
    for pts, (r_lo, r_hi), (depth_lo, depth_hi) in (
        (sv, (16.0, 22.0), (95.0, 125.0)),
        (bv, (30.0, 60.0), (60.0, 90.0)),
    ):
        vi = np.clip(np.rint(pts / grid.vox).astype(np.intp), 0, np.asarray(grid.shape) - 1)
        ok = (instances[tuple(vi.T)] == 0) & (bdist[tuple(vi.T)] > _MEMBRANE_HALF_NM + r_hi)
        pts = pts[ok]
        radii = rng.uniform(r_lo, r_hi, len(pts))
        depth = rng.uniform(depth_lo, depth_hi, len(pts))
        _splat_spheres(grid, dark, pts, radii, depth, rim_nm=7.0)


def _draw_distractors(
    rng: np.random.Generator,
    grid: _Grid,
    cells: _Cells,
    bdist: np.ndarray,
    instances: np.ndarray,
    img: np.ndarray,
    dark: np.ndarray,
) -> None:
    """Dense blobs, ER / endosome outlines and postsynaptic densities: dark but not mitochondria."""
    vol_nm3 = float(np.prod(grid.extent))
    mem_clear = _MEMBRANE_HALF_NM + 6.0

    # Dense bodies / lysosomes / dark cross-cut organelles: dark, soft-edged, no rim, no cristae.
    for _ in range(int(vol_nm3 / 1.1e8) + 1):
        c = rng.uniform(0, grid.extent)
        r1 = rng.uniform(35.0, 110.0)
        cap = _Capsule(
            c,
            _random_axis(rng, 0.5),
            half_length=r1 * rng.uniform(0.0, 1.5),
            r1=r1,
            r2=r1 * rng.uniform(0.6, 1.0),
            wobble=0.1,
            phase=rng.uniform(0, 2 * np.pi),
        )
        box = cap.bbox(grid)
        if box is None:
            continue
        _, q = cap.local(grid, box)
        alpha = np.clip((1.0 - q) * min(cap.r1, cap.r2) / 10.0, 0.0, 1.0)
        alpha *= (instances[box] == 0) & (bdist[box] > mem_clear)
        target = rng.uniform(95.0, 130.0)
        sub = img[box]
        sub += alpha * (target - sub)

    # ER cisternae / endosomes: thin dark outlines of flat or elongated shells with a light lumen.
    for _ in range(int(vol_nm3 / 1.0e8) + 1):
        c = rng.uniform(0, grid.extent)
        r1 = rng.uniform(25.0, 70.0)
        cap = _Capsule(
            c,
            _random_axis(rng, 0.7),
            half_length=r1 * rng.uniform(0.5, 4.0),
            r1=r1,
            r2=r1 * rng.uniform(0.5, 1.0),
            bend=rng.normal(0.0, 0.002),
            wobble=0.15,
            phase=rng.uniform(0, 2 * np.pi),
        )
        box = cap.bbox(grid, pad_nm=20.0)
        if box is None:
            continue
        _, q = cap.local(grid, box)
        shell = np.exp(-((((q - 1.0) * min(cap.r1, cap.r2)) / 8.0) ** 2)) * rng.uniform(60.0, 90.0)
        shell *= (instances[box] == 0) & (bdist[box] > mem_clear)
        np.maximum(dark[box], shell, out=dark[box])

    # Postsynaptic densities: thick dark patches on membranes.
    n_psd = int(vol_nm3 / 1.5e8) + 1
    cand = np.flatnonzero((np.abs(cells.bdist) < 20.0).reshape(-1))
    if cand.size:
        cstep = grid.vox * np.asarray(grid.steps)
        for node in rng.choice(cand, size=n_psd):
            c = np.asarray(np.unravel_index(node, grid.cshape)) * cstep
            rad = rng.uniform(90.0, 200.0)
            cap = _Capsule(c, np.array([1.0, 0.0, 0.0]), 0.0, rad, rad)
            box = cap.bbox(grid)
            if box is None:
                continue
            _, q = cap.local(grid, box)
            thick = rng.uniform(22.0, 38.0)
            psd = (q < 1.0) * np.exp(-((bdist[box] / thick) ** 4)) * rng.uniform(45.0, 70.0)
            psd *= instances[box] == 0
            np.maximum(dark[box], psd.astype(np.float32), out=dark[box])


def _draw_mitochondria(
    rng: np.random.Generator,
    grid: _Grid,
    shapes: list[_Capsule],
    instances: np.ndarray,
    img: np.ndarray,
    tex: np.ndarray,
) -> None:
    """Matrix, cristae and double-membrane rim of every mitochondrion, anti-aliased outline."""
    pix = float(grid.vox[1:].min())
    for label, cap in enumerate(shapes, start=1):
        box = cap.bbox(grid, pad_nm=2 * pix)
        if box is None:
            continue
        u, q = cap.local(grid, box)
        own = instances[box] == label
        rmin = min(cap.r1, cap.r2)
        depth = (1.0 - q) * rmin  # nm inside the surface (approximate near it)
        alpha = np.clip(depth / pix + 0.5, 0.0, 1.0) * own
        # Cristae: lamellae across the long axis, wavy and broken up.
        period = rng.uniform(*_CRISTAE_PERIOD_NM)
        phase = rng.uniform(0, 2 * np.pi)
        z, y, x = np.ogrid[box[0], box[1], box[2]]
        diag = y * np.float32(grid.vox[1]) + x * np.float32(grid.vox[2])
        wav = np.sin(np.float32(2 * np.pi / 90.0) * diag + np.float32(phase))
        stripes = np.cos(np.float32(2 * np.pi / period) * (u + 12.0 * wav) + phase)
        inner = np.clip((depth - _RIM_NM) / 10.0, 0.0, 1.0)
        cristae = np.clip(stripes * 1.5, -1.0, 1.0) * inner
        cristae *= np.clip(0.7 + 0.5 * tex[box], 0.0, 1.0)
        matrix = rng.uniform(*_MITO_MATRIX) - rng.uniform(26.0, 36.0) * cristae + 6.0 * tex[box]
        rim = np.exp(-(((depth - 0.5 * _RIM_NM) / (0.6 * _RIM_NM)) ** 2))
        value = matrix * (1.0 - rim) + rng.uniform(38.0, 52.0) * rim
        sub = img[box]
        sub += alpha * (value - sub)

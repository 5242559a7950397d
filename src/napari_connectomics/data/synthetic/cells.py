"""Cell layout: a warped power diagram of big and small cells, and their membranes per voxel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .grid import Grid, smooth_noise
from .params import (
    BIG_CELL_SPACING_NM,
    BUNDLE_FRACTION,
    CORNER_RADIUS_NM,
    CYTO_BIG,
    CYTO_DARK,
    CYTO_SMALL,
    LAYOUT_TRIES,
    MEMBRANE_HALF_NM,
    MEMBRANE_LOOK,
    MITO_MARGIN_NM,
    MITO_RADIUS_NM,
    PAD_NM,
    SMALL_CELL_SPACING_NM,
    WARP_CORR_NM,
    WARP_FINE_CORR_NM,
    WARP_FINE_NM,
    WARP_NM,
    Z_STRETCH,
)


@dataclass(frozen=True, eq=False)
class Cells:
    label: np.ndarray  # coarse, int: which cell each coarse node belongs to
    bdist: np.ndarray  # coarse, float32: distance (nm) to the nearest cell boundary
    near: np.ndarray  # coarse, (k,) int per node: the k nearest seeds, candidates for nearby voxels
    warp: np.ndarray  # coarse, (3, ...) float32: displacement (nm) applied before the query
    seeds: np.ndarray  # (n, 4): lifted seeds in the stretched space (z scaled, 4th coord = weight)
    big: np.ndarray  # per cell, bool: large (dendrite-like) cell
    level: np.ndarray  # per cell: cytoplasm grey level
    vesicle_density: np.ndarray  # per cell: relative density of synaptic vesicles


_SCALE = np.array([Z_STRETCH, 1.0, 1.0])


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
    r = dtype.type(CORNER_RADIUS_NM)
    fillet = r - np.sqrt(np.maximum(r - d1, 0) ** 2 + np.maximum(r - d2, 0) ** 2)
    bdist = np.where(d2 < r, fillet, d1)
    return own, bdist, tilt


def _cell_layout(
    rng: np.random.Generator, grid: Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeds, big-cell flags, warp, candidate seeds, owner and boundary distance (coarse grid)."""
    lo = -PAD_NM * np.ones(3)
    hi = grid.extent + PAD_NM
    vol = float(np.prod((hi - lo) * _SCALE))
    # Big cells on a jittered lattice, so that no volume is left without room for mitochondria.
    span = (hi - lo) * _SCALE
    counts = np.maximum(1, np.rint(span / BIG_CELL_SPACING_NM)).astype(int)
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
    bundle = rng.random(n_big) < BUNDLE_FRACTION
    n_bundle = min(max(int(round(BUNDLE_FRACTION * m)), 1), max(m - 1, 1))
    bundle[view] = rng.permutation(m) < n_bundle
    n_small = max(2, int(round(vol / SMALL_CELL_SPACING_NM**3)))
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
    sigma = [WARP_CORR_NM / s for s in csteps]
    fine = [WARP_FINE_CORR_NM / s for s in csteps]
    warp = np.stack(
        [
            WARP_NM * smooth_noise(rng, grid.cshape, sigma)
            + WARP_FINE_NM * smooth_noise(rng, grid.cshape, fine)
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


def make_cells(rng: np.random.Generator, grid: Grid) -> Cells:
    """Warped power diagram of big and small cells, evaluated on the coarse grid.

    The power diagram is the Voronoi diagram of seeds lifted into 4D (4th coordinate = weight),
    which a k-d tree answers directly. The z axis is stretched so that cells run along z like
    neurites. A layout is redrawn (deterministically, from the same generator) until the field of
    view shows several cells, small and big, and has room for a mitochondrion: small test volumes
    should show everything the default volume shows.
    """
    fov = float(min(grid.extent[1:]))
    need_cells = 3 if fov >= 600.0 else 1
    for _ in range(LAYOUT_TRIES):
        seeds, big, warp, near, own, bdist = _cell_layout(rng, grid)
        in_view = np.unique(own)
        room = bdist[big[own]]
        if (
            in_view.size >= need_cells
            and (fov < 600.0 or not big[in_view].all())
            and (fov < 400.0 or (room.size and room.max() > MITO_RADIUS_NM[0] + MITO_MARGIN_NM))
        ):
            break
    n = len(seeds)
    level = np.where(big, rng.normal(CYTO_BIG, 7.0, n), rng.normal(CYTO_SMALL, 10.0, n))
    dark = ~big & (rng.random(n) < 0.12)
    level[dark] = rng.uniform(*CYTO_DARK, int(dark.sum()))
    vesicle_density = np.where(big, 0.03, 0.15)
    boutons = ~big & ~dark & (rng.random(n) < 0.22)
    vesicle_density[boutons] = rng.uniform(0.6, 1.0, int(boutons.sum()))
    return Cells(
        label=own.reshape(grid.cshape),
        bdist=bdist.reshape(grid.cshape).astype(np.float32),
        near=near.reshape(*grid.cshape, near.shape[-1]),
        warp=warp.astype(np.float32),
        seeds=seeds,
        big=big,
        level=level.astype(np.float32),
        vesicle_density=vesicle_density,
    )


def cell_fields(
    grid: Grid, cells: Cells
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
        width = np.sqrt(np.float32(MEMBRANE_HALF_NM**2) + smear * tilt * tilt)
        look = np.maximum(bd, 0) / (np.float32(MEMBRANE_LOOK) * width)
        level[z] = cells.level[own].reshape(ny, nx)
        bdist[z] = bd.reshape(ny, nx)
        dark = np.exp(-look * look) * (np.float32(MEMBRANE_HALF_NM) / width)
        darkness[z] = dark.reshape(ny, nx)
        membranes[z] = (bd < width).reshape(ny, nx)
    return level, bdist, darkness, membranes

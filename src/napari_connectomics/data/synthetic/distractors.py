"""Unlabelled look-alikes: vesicles, dense bodies, ER outlines and postsynaptic densities."""

from __future__ import annotations

import numpy as np

from .cells import Cells
from .grid import Grid
from .params import MEMBRANE_HALF_NM
from .shapes import Capsule, random_axis


def _splat_spheres(
    grid: Grid,
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


def draw_vesicles(
    rng: np.random.Generator,
    grid: Grid,
    cells: Cells,
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
        ok = (instances[tuple(vi.T)] == 0) & (bdist[tuple(vi.T)] > MEMBRANE_HALF_NM + r_hi)
        pts = pts[ok]
        radii = rng.uniform(r_lo, r_hi, len(pts))
        depth = rng.uniform(depth_lo, depth_hi, len(pts))
        _splat_spheres(grid, dark, pts, radii, depth, rim_nm=7.0)


def draw_distractors(
    rng: np.random.Generator,
    grid: Grid,
    cells: Cells,
    bdist: np.ndarray,
    instances: np.ndarray,
    img: np.ndarray,
    dark: np.ndarray,
) -> None:
    """Dense blobs, ER / endosome outlines and postsynaptic densities: dark but not mitochondria."""
    vol_nm3 = float(np.prod(grid.extent))
    mem_clear = MEMBRANE_HALF_NM + 6.0

    # Dense bodies / lysosomes / dark cross-cut organelles: dark, soft-edged, no rim, no cristae.
    for _ in range(int(vol_nm3 / 1.1e8) + 1):
        c = rng.uniform(0, grid.extent)
        r1 = rng.uniform(35.0, 110.0)
        cap = Capsule(
            c,
            random_axis(rng, 0.5),
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
        cap = Capsule(
            c,
            random_axis(rng, 0.7),
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
            cap = Capsule(c, np.array([1.0, 0.0, 0.0]), 0.0, rad, rad)
            box = cap.bbox(grid)
            if box is None:
                continue
            _, q = cap.local(grid, box)
            thick = rng.uniform(22.0, 38.0)
            psd = (q < 1.0) * np.exp(-((bdist[box] / thick) ** 4)) * rng.uniform(45.0, 70.0)
            psd *= instances[box] == 0
            np.maximum(dark[box], psd.astype(np.float32), out=dark[box])

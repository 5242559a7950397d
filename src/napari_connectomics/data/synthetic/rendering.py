"""Imaging: cytoplasm texture, organelle and membrane contrast, PSF blur, noise and quantisation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .cells import Cells
from .distractors import draw_distractors, draw_vesicles
from .grid import Grid, noise_field, smooth_noise
from .params import (
    CRISTAE_PERIOD_NM,
    MEMBRANE_CONTRAST,
    MITO_MATRIX,
    NOISE_STD,
    PSF_NM,
    RIM_NM,
)
from .shapes import Capsule


def render(
    rng: np.random.Generator,
    grid: Grid,
    cells: Cells,
    level: np.ndarray,
    bdist: np.ndarray,
    darkness: np.ndarray,
    instances: np.ndarray,
    shapes: list[Capsule],
    noise: float,
) -> np.ndarray:
    """Paint cytoplasm, distractors, mitochondria and membranes, then blur, add noise, quantise.

    ``level`` (the per-voxel cytoplasm level) becomes the canvas and is overwritten.
    """
    vz, vy, vx = grid.vox
    img = level
    img += 7.0 * noise_field(rng, grid.shape, grid.vox, 150.0)  # low-frequency shading
    img += 12.0 * noise_field(rng, grid.shape, grid.vox, 30.0)  # mottling

    # Fine granular texture (ribosomes, cytoskeleton): band-limited noise with dark specks.
    tex = smooth_noise(rng, grid.shape, (12.0 / vz, 12.0 / vy, 12.0 / vx))  # ~1.5 px grain
    img += 11.0 * tex
    img -= 40.0 * np.clip(tex - 0.9, 0.0, None)

    dark = np.zeros(grid.shape, dtype=np.float32)  # darkening by vesicles / distractors, max wins
    draw_vesicles(rng, grid, cells, bdist, instances, dark)
    draw_distractors(rng, grid, cells, bdist, instances, img, dark)
    img -= dark
    del dark

    _draw_mitochondria(rng, grid, shapes, instances, img, tex)
    del tex

    # Membranes: dark sheets along cell boundaries, a little uneven in contrast.
    shade = noise_field(rng, grid.shape, grid.vox, 120.0)
    shade *= 0.15 * MEMBRANE_CONTRAST
    shade += MEMBRANE_CONTRAST
    shade *= darkness
    np.subtract(1.0, shade, out=shade)
    img *= shade
    del shade

    # Imaging: grainy noise before the PSF (correlated, like real FIB-SEM), shot-like noise after.
    if noise > 0:
        grain = rng.standard_normal(grid.shape, dtype=np.float32)
        grain *= 2.0 * NOISE_STD * noise
        img += grain
        del grain
    img = ndi.gaussian_filter(img, (0.3, PSF_NM / vy, PSF_NM / vx), output=img, truncate=3.0)
    if noise > 0:
        shot = np.clip(img, 1.0, None)
        shot *= np.float32(1.0 / 160.0)
        np.sqrt(shot, out=shot)
        shot *= rng.standard_normal(grid.shape, dtype=np.float32)
        shot *= 0.75 * NOISE_STD * noise
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


def _draw_mitochondria(
    rng: np.random.Generator,
    grid: Grid,
    shapes: list[Capsule],
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
        period = rng.uniform(*CRISTAE_PERIOD_NM)
        phase = rng.uniform(0, 2 * np.pi)
        z, y, x = np.ogrid[box[0], box[1], box[2]]
        diag = y * np.float32(grid.vox[1]) + x * np.float32(grid.vox[2])
        wav = np.sin(np.float32(2 * np.pi / 90.0) * diag + np.float32(phase))
        stripes = np.cos(np.float32(2 * np.pi / period) * (u + 12.0 * wav) + phase)
        inner = np.clip((depth - RIM_NM) / 10.0, 0.0, 1.0)
        cristae = np.clip(stripes * 1.5, -1.0, 1.0) * inner
        cristae *= np.clip(0.7 + 0.5 * tex[box], 0.0, 1.0)
        matrix = rng.uniform(*MITO_MATRIX) - rng.uniform(26.0, 36.0) * cristae + 6.0 * tex[box]
        rim = np.exp(-(((depth - 0.5 * RIM_NM) / (0.6 * RIM_NM)) ** 2))
        value = matrix * (1.0 - rim) + rng.uniform(38.0, 52.0) * rim
        sub = img[box]
        sub += alpha * (value - sub)

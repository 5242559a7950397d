"""Validation held out of sparse annotation (painted scribbles), without taking a section away.

A user paints a few sections. Holding out the last sections (as dense labels hold out the last
z-range) would remove one of those few sections from training, so by default ('pieces') a share of
the annotated voxels is held out *within each annotated section*: the section's y-x plane is cut
into square tiles and whole tiles (spatially coherent pieces of the strokes, so validation pixels
are not the immediate neighbours of training pixels of the same stroke) are chosen, in an order
drawn from the seed, until each label value has given about ``fraction`` of its voxels (each
value is balanced on its own, so validation scores objects and background alike). No more
than :data:`MAX_HELD_OUT` of any value of a section is held out, so every annotated section keeps
most of each class for training; a value painted inside one tile only is never held out.

'sections' holds out the last ``fraction`` of the annotated sections (whole sections; a single
painted section is split by rows), 'none' holds out nothing. Pure numpy; the training engine and
the Train panel both call :func:`split_sparse`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..config.schema import DataConfig

__all__ = ["MAX_HELD_OUT", "SPARSE_VALIDATION_MODES", "SparseSplit", "split_sparse"]

SPARSE_VALIDATION_MODES: tuple[str, ...] = DataConfig.__dataclass_fields__["sparse_validation"].metadata["choices"]
MAX_HELD_OUT = 0.5  # at most this share of any label value of a section goes to validation
TILE_SIZES = (64, 32, 16, 8)  # tile edges tried, largest first, until a section has enough pieces
PIECES_PER_SHARE = 4  # a section wants at least this many tiles per held-out share (20 at 0.2)
OVERSHOOT = 1.25  # tiles are first taken while no value exceeds this multiple of its share
MAX_STRATA = 8  # more label values than this (instance ids) are balanced as background/objects


class SparseSplit(NamedTuple):
    """Training labels, validation labels (0 = not annotated elsewhere) and what was held out."""

    train: np.ndarray
    val: np.ndarray
    description: str

    @property
    def held_out(self) -> bool:
        return bool(self.val.any())


def split_sparse(label: np.ndarray, fraction: float, mode: str, seed: int) -> SparseSplit:
    """Split sparse labels (z-y-x or y-x, 0 = not annotated) into training and validation labels.

    ``mode`` is one of :data:`SPARSE_VALIDATION_MODES`; the result depends only on the labels,
    ``fraction``, ``mode`` and ``seed``. When nothing can be held out (``fraction`` 0, mode 'none',
    too little annotation) the validation labels are all 0 and the description says why.
    """
    if mode not in SPARSE_VALIDATION_MODES:
        raise ValueError(f"sparse validation {mode!r}: choose one of {', '.join(SPARSE_VALIDATION_MODES)}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {fraction!r}")
    array = np.asarray(label)
    if array.ndim not in (2, 3):
        raise ValueError(f"labels must be z-y-x or y-x; got shape {array.shape}")
    if mode == "none" or fraction == 0.0:
        why = "data.sparse_validation is none" if mode == "none" else "data.val_fraction is 0"
        return _nothing(array, why)
    if mode == "sections":
        return _sections(array, fraction)
    return _pieces(array, fraction, int(seed))


def _nothing(array: np.ndarray, why: str) -> SparseSplit:
    return SparseSplit(array.copy(), np.zeros_like(array), f"nothing held out ({why})")


# --- pieces: tiles of each annotated section ---------------------------------------------------


def _pieces(array: np.ndarray, fraction: float, seed: int) -> SparseSplit:
    stack = array[None] if array.ndim == 2 else array
    train, val = stack.copy(), np.zeros_like(stack)
    annotated = np.flatnonzero(stack.reshape(len(stack), -1).any(axis=1))
    held_sections, held_voxels, total_voxels, tiles = 0, 0, 0, set()
    for z in annotated:
        section = stack[z]
        mask, tile = _held_tiles(section, fraction, np.random.default_rng([seed % 2**63, int(z)]))
        total_voxels += int(np.count_nonzero(section))
        if mask is None:
            continue
        val[z][mask] = section[mask]
        train[z][mask] = 0
        held_sections += 1
        held_voxels += int(np.count_nonzero(val[z]))
        tiles.add(tile)
    if array.ndim == 2:
        train, val = train[0], val[0]
    if not held_voxels:
        return _nothing(array, "the annotation is too small to split into pieces")
    where = "the section" if array.ndim == 2 else f"{held_sections} of {len(annotated)} annotated sections"
    size = "/".join(str(t) for t in sorted(tiles, reverse=True))
    text = (f"{held_voxels} of {total_voxels} annotated voxels ({held_voxels / total_voxels:.0%}) in "
            f"{size}-pixel tiles of {where}")
    return SparseSplit(train, val, text)


def _held_tiles(section: np.ndarray, fraction: float,
                rng: np.random.Generator) -> tuple[np.ndarray | None, int]:
    """The mask of the tiles held out of one y-x section, and the tile size; None when none can be."""
    painted = section != 0
    ys, xs = np.nonzero(painted)
    values = section[painted]
    wanted = max(2, math.ceil(PIECES_PER_SHARE / fraction))
    for size in TILE_SIZES:
        ids = (ys // size) * (-(-section.shape[1] // size)) + xs // size
        if len(np.unique(ids)) >= wanted or size == TILE_SIZES[-1]:
            break
    tiles, tile_of = np.unique(ids, return_inverse=True)
    if len(tiles) < 2:
        return None, size
    strata_values = values if len(np.unique(values)) <= MAX_STRATA else np.minimum(values, 2)
    strata, stratum_of = np.unique(strata_values, return_inverse=True)
    # counts[t, s]: voxels of stratum s in tile t
    counts = np.bincount(tile_of * len(strata) + stratum_of,
                         minlength=len(tiles) * len(strata)).reshape(len(tiles), len(strata))
    total = counts.sum(axis=0)
    target = np.minimum(fraction, MAX_HELD_OUT) * total
    cap = MAX_HELD_OUT * total
    held = np.zeros(len(strata), np.int64)
    chosen = np.zeros(len(tiles), bool)
    order = rng.permutation(len(tiles))
    for limit in (np.minimum(cap, OVERSHOOT * target), cap):  # near each share first, then up to the cap
        for t in order:
            wanted_here = (counts[t] > 0) & (held < target)
            if not chosen[t] and wanted_here.any() and np.all(held + counts[t] <= limit):
                chosen[t] = True
                held += counts[t]
    if not chosen.any():
        return None, size
    mask = np.zeros(section.shape, bool)
    picked = chosen[tile_of]
    mask[ys[picked], xs[picked]] = True
    return mask, size


# --- sections: the last annotated sections (a single one by rows) ------------------------------


def _sections(array: np.ndarray, fraction: float) -> SparseSplit:
    """The last ``fraction`` of the annotated sections (rows of a single section) validate."""
    for axis in range(min(array.ndim, 2)):
        other = tuple(a for a in range(array.ndim) if a != axis)
        annotated = np.flatnonzero(np.any(array != 0, axis=other))
        if annotated.size < 2:
            continue
        n_val = min(annotated.size - 1, max(1, round(annotated.size * fraction)))
        first_val = int(annotated[-n_val])
        index: list[slice] = [slice(None)] * array.ndim
        index[axis] = slice(first_val, None)
        train = array.copy()
        train[tuple(index)] = 0
        val = np.zeros_like(array)
        val[tuple(index)] = array[tuple(index)]
        where = "sections" if axis == 0 and array.ndim == 3 else "rows"
        return SparseSplit(train, val, f"{n_val} of {annotated.size} annotated {where} (from {first_val} on)")
    return _nothing(array, "the annotation spans a single row of a single section")

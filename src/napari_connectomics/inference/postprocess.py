"""Predicted probabilities -> masks and instance labels (DESIGN.md, "Conventions for data").

Whole volumes
    :func:`postprocess` decodes the network's channels (``channel_layout`` ``binary``,
    ``instance`` or ``semantic``) and runs one registered post-processor: ``none`` (a mask or
    class map), ``cc`` (connected components) or ``watershed`` (a seeded watershed that splits
    touching objects). Label volumes come out as uint16 when the ids fit, else uint32 (never
    int64), with consecutive ids 1..N and 0 as background.

Volumes larger than memory
    :func:`label_blockwise` labels a mask (or a class map, class by class) block by block and
    merges the labels across block faces, so its result equals :func:`connected_components` of
    the whole mask up to renumbering while it holds a block (plus per-id tables) in memory.
    :func:`postprocess_blockwise` runs ``none`` and ``cc`` that way on stored probabilities
    (decoding the channels block by block). The watershed has no block-wise form here: seeds and
    basins need context across blocks, so it runs on whole volumes (:func:`watershed_bytes`
    estimates its memory), or on large blocks that the prediction pipeline reads with a halo.

Choices made here:

* ``threshold`` is strict (``p > t``): with a two-class softmax and ``t = 0.5`` the mask equals
  the argmax (ties go to background).
* ``min_size`` keeps objects of at least ``min_size`` voxels (the config's "objects smaller than
  this are removed"); removed objects become background, never merged into a neighbour.
* Watershed seeds. With a contour map (instance target): the connected components of the
  confident interior, ``foreground - contour > seed_threshold``, flooded over the contour
  probability, so the split follows what the network learnt. Without one: maxima of the distance
  transform of the mask, flooded over ``-distance``; by default ``peak_local_max`` points at least
  ``min_seed_distance`` apart (compact objects: vesicles, mitochondria, nuclei), or with ``seed_h``
  the h-maxima (plateaus of dynamic >= h, which keep a neurite with a wavy radius in one piece).
  A mask component without any seed becomes its own seed, so the watershed never drops
  foreground that ``cc`` would keep.
* ``fill_holes`` fills a hole only with the one object that encloses it; a cavity bordered by
  several objects stays background. Holes are 3D by default (only truly enclosed cavities: the
  lumen of a tube running along z, e.g. an axon inside a myelin sheath, is left alone);
  ``in_plane=True`` fills each z-section separately, for strongly anisotropic stacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import scipy.ndimage as ndi
from scipy import sparse
from scipy.sparse import csgraph
from skimage.feature import peak_local_max
from skimage.measure import label as sk_label
from skimage.metrics import contingency_table
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed

from ..data.targets import INSTANCE_CONTOUR, INSTANCE_INTERIOR
from ..progress import Progress, ProgressCallback, emit
from ..registry import POSTPROCESSORS
from .postprocessors import blockwise_postprocessors, get_postprocessor_spec, register_postprocessor

__all__ = [
    "CHANNEL_LAYOUTS",
    "POSTPROCESSORS",
    "PredictionMaps",
    "connected_components",
    "decode_channels",
    "fill_holes",
    "foreground_mask",
    "get_postprocessor",
    "label_blockwise",
    "list_postprocessors",
    "postprocess",
    "postprocess_blockwise",
    "register_postprocessor",
    "relabel_consecutive",
    "remove_small",
    "same_partition",
    "smallest_label_dtype",
    "threshold",
    "watershed_bytes",
    "watershed_instances",
]

logger = logging.getLogger(__name__)

CHANNEL_LAYOUTS = ("binary", "instance", "semantic")

_UINT16_MAX = int(np.iinfo(np.uint16).max)
_UINT32_MAX = int(np.iinfo(np.uint32).max)


# --------------------------------------------------------------------------------------------------
# Checks and small helpers
# --------------------------------------------------------------------------------------------------
def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1]; got {value!r}")


def _check_min_size(min_size: int) -> None:
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0; got {min_size!r}")


def _check_connectivity(connectivity: int, ndim: int) -> None:
    if not 1 <= connectivity <= ndim:
        raise ValueError(
            f"connectivity must be between 1 and {ndim} for {ndim}D data; got {connectivity!r}"
        )


def _as_labels(labels: np.ndarray) -> np.ndarray:
    """An integer label array: floats or bools here are a caller's bug, not something to round."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array; got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 is background)")
    return labels


def _above(probability: np.ndarray, value: float) -> np.ndarray:
    _check_unit("threshold", value)
    return np.asarray(probability) > value


def smallest_label_dtype(max_id: int) -> np.dtype:
    """uint16 when ``max_id`` fits, else uint32: label volumes are never int64 (DESIGN.md)."""
    if max_id < 0:
        raise ValueError(f"max_id must be >= 0; got {max_id!r}")
    if max_id <= _UINT16_MAX:
        return np.dtype(np.uint16)
    if max_id <= _UINT32_MAX:
        return np.dtype(np.uint32)
    raise OverflowError(f"{max_id} objects do not fit a uint32 label volume")


def threshold(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The bool mask ``probability > threshold`` (strict, so a 0.5/0.5 tie is background)."""
    return _above(probability, threshold)


# --------------------------------------------------------------------------------------------------
# Label maps
# --------------------------------------------------------------------------------------------------
def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N (same order as the old ids) in the smallest label dtype; 0 stays background."""
    labels = _as_labels(labels)
    relabeled = relabel_sequential(labels)[0]
    return relabeled.astype(smallest_label_dtype(int(relabeled.max(initial=0))), copy=False)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Objects with fewer than ``min_size`` voxels become background; other ids are kept as is.

    A bincount lookup rather than ``skimage.morphology.remove_small_objects``, whose size
    argument changed meaning between releases (``min_size`` -> ``max_size`` in 0.26).
    """
    _check_min_size(min_size)
    labels = _as_labels(labels)
    if min_size <= 1 or labels.size == 0:
        return labels.copy()
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels).astype(labels.dtype, copy=False)


def connected_components(
    mask: np.ndarray, *, min_size: int = 0, connectivity: int = 1
) -> np.ndarray:
    """Ids 1..N (uint16/uint32) for the connected objects of ``mask``, small ones removed.

    ``mask`` may also be an integer class map: each non-zero class is labelled separately, so
    touching objects of different classes stay apart. ``connectivity`` 1 is faces only,
    ``mask.ndim`` all neighbours (skimage's convention).
    """
    mask = np.asarray(mask)
    _check_connectivity(connectivity, mask.ndim)
    labels = sk_label(mask, background=0, connectivity=connectivity)
    return relabel_consecutive(remove_small(labels, min_size))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label maps are equal up to renumbering: the same background, and a contingency
    table of their ids that is a bijection (each id overlaps exactly one id of the other map)."""
    a, b = _as_labels(a), _as_labels(b)
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    table = contingency_table(relabel_sequential(a)[0], relabel_sequential(b)[0]).tocsr()
    return bool(np.all(table.getnnz(axis=1) <= 1) and np.all(table.getnnz(axis=0) <= 1))


def fill_holes(labels: np.ndarray, *, in_plane: bool = False) -> np.ndarray:
    """Fill the background holes enclosed by a single object with that object's id (ids kept).

    3D cavities by default; ``in_plane=True`` fills the holes of each z-section (last two axes).
    Holes bordered by several objects stay background, since no one object owns them.
    """
    labels = _as_labels(labels)
    first = labels.ndim - 2 if in_plane and labels.ndim > 2 else 0
    axes = tuple(range(first, labels.ndim))
    structure = _face_structure(labels.ndim, axes)
    holes = ndi.binary_fill_holes(labels > 0, structure=structure) & (labels == 0)
    filled = labels.copy()
    if not holes.any():
        return filled
    hole_ids, num_holes = ndi.label(holes, structure=structure)
    owner = _sole_neighbour(hole_ids, num_holes, labels, axes)
    filled[holes] = owner[hole_ids[holes]]
    logger.debug("fill_holes: %d of %d holes filled", np.count_nonzero(owner), num_holes)
    return filled


def _face_structure(ndim: int, axes: tuple[int, ...]) -> np.ndarray:
    """Face connectivity along ``axes`` only (all axes: 3D holes; the last two: in-plane)."""
    structure = np.zeros((3,) * ndim, dtype=bool)
    for axis in axes:
        for step in (0, 2):
            structure[tuple(step if a == axis else 1 for a in range(ndim))] = True
    structure[(1,) * ndim] = True
    return structure


def _sole_neighbour(
    hole_ids: np.ndarray, num_holes: int, labels: np.ndarray, axes: tuple[int, ...]
) -> np.ndarray:
    """Per hole id, the one object id that borders it along ``axes`` (0 where several do).

    A hole is a maximal component of background, so its face neighbours outside it are all
    object voxels: comparing each voxel with its neighbour along every axis finds its border ids.
    """
    pairs = []
    for axis in axes:
        lower = _axis_slice(labels.ndim, axis, slice(None, -1))
        upper = _axis_slice(labels.ndim, axis, slice(1, None))
        for hole_side, object_side in ((lower, upper), (upper, lower)):
            hole, obj = hole_ids[hole_side], labels[object_side]
            touching = (hole > 0) & (obj > 0)
            pairs.append(np.stack([hole[touching], obj[touching]]).astype(np.int64))
    hole, obj = np.unique(np.concatenate(pairs, axis=1), axis=1)
    sole = np.bincount(hole, minlength=num_holes + 1)[hole] == 1
    owner = np.zeros(num_holes + 1, dtype=labels.dtype)
    owner[hole[sole]] = obj[sole]
    return owner


def _axis_slice(ndim: int, axis: int, part: slice) -> tuple[slice, ...]:
    return tuple(part if a == axis else slice(None) for a in range(ndim))


# --------------------------------------------------------------------------------------------------
# Seeded watershed
# --------------------------------------------------------------------------------------------------
def watershed_instances(
    foreground: np.ndarray,
    *,
    contour: np.ndarray | None = None,
    threshold: float = 0.5,
    seed_threshold: float = 0.9,
    min_size: int = 0,
    min_seed_distance: int = 3,
    seed_h: float | None = None,
    sampling: Sequence[float] | None = None,
) -> np.ndarray:
    """Instances of ``foreground > threshold``, touching objects split by a seeded watershed.

    With ``contour`` (instance target: ``foreground`` = interior + contour probability), seeds are
    the confident interior and the flooding follows the contour probability. Without it, seeds
    are maxima of the mask's distance transform (``sampling``: voxel size, for anisotropic data)
    and the flooding follows ``-distance``; ``seed_h`` switches from ``peak_local_max`` points to
    h-maxima plateaus. See the module notes for why.
    """
    _check_unit("seed_threshold", seed_threshold)
    foreground = np.asarray(foreground, dtype=np.float32)
    mask = _above(foreground, threshold)
    if contour is not None:
        contour = np.asarray(contour, dtype=np.float32)
        if contour.shape != foreground.shape:
            raise ValueError(
                f"contour shape {contour.shape} differs from foreground shape {foreground.shape}"
            )
        seeds = _interior_seeds(foreground - contour, mask, seed_threshold)
        elevation = contour
    else:
        distance = ndi.distance_transform_edt(mask, sampling=sampling)
        seeds = _distance_seeds(distance, mask, min_seed_distance, seed_h)
        elevation = -distance
    seeds = _seed_unseeded_components(seeds, mask)
    labels = watershed(elevation, markers=seeds, mask=mask)
    result = relabel_consecutive(remove_small(labels, min_size))
    logger.debug("watershed: %d seeds -> %d objects", seeds.max(initial=0), result.max(initial=0))
    return result


def _interior_seeds(interior: np.ndarray, mask: np.ndarray, seed_threshold: float) -> np.ndarray:
    """Components of the voxels confidently inside an object and not on its contour."""
    return sk_label((interior > seed_threshold) & mask, connectivity=1)


def _distance_seeds(
    distance: np.ndarray, mask: np.ndarray, min_distance: int, h: float | None
) -> np.ndarray:
    """Markers at the centres of objects: distance-transform peaks, or h-maxima plateaus."""
    if h is not None:
        if h <= 0:
            raise ValueError(f"seed_h must be > 0; got {h!r}")
        return sk_label(h_maxima(distance, h).astype(bool) & mask, connectivity=mask.ndim)
    if min_distance < 1:
        raise ValueError(f"min_seed_distance must be >= 1; got {min_distance!r}")
    peaks = peak_local_max(
        distance, min_distance=min_distance, labels=sk_label(mask), exclude_border=False
    ).reshape(-1, mask.ndim)  # skimage returns a flat empty array when there are no peaks
    seeds = np.zeros(mask.shape, dtype=np.int64)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return seeds


def _seed_unseeded_components(seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The seeds inside the mask, plus one seed for each mask component that has none."""
    seeds = np.where(mask, seeds, 0).astype(np.int64)
    components = sk_label(mask, connectivity=1)  # the watershed's own (face) connectivity
    has_seed = np.zeros(int(components.max(initial=0)) + 1, dtype=bool)
    has_seed[components[seeds > 0]] = True
    has_seed[0] = True
    orphan = ~has_seed[components]
    seeds[orphan] = components[orphan] + seeds.max(initial=0)
    return seeds


# --------------------------------------------------------------------------------------------------
# Channels -> maps, and the post-processor registry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictionMaps:
    """What a post-processor needs, decoded from the network's channels."""

    foreground: np.ndarray  # probability that a voxel belongs to any object
    contour: np.ndarray | None = None  # instance layout: probability of an object's contour
    classes: np.ndarray | None = None  # semantic layout: argmax class map, 0 background


def decode_channels(
    probabilities: np.ndarray, channel_layout: str = "binary"
) -> PredictionMaps:
    """Split ``(C, *spatial)`` softmax/sigmoid outputs into foreground (and contour or classes).

    ``binary``: C=1 (sigmoid foreground) or C=2 (softmax, foreground = channel 1); ``instance``:
    C=3 (background, interior, contour); ``semantic``: C>=2 softmax classes, 0 background.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim not in (3, 4):
        raise ValueError(
            f"probabilities must be (C, y, x) or (C, z, y, x); got shape {probabilities.shape}"
        )
    channels = probabilities.shape[0]
    if channel_layout == "binary" and channels in (1, 2):
        return PredictionMaps(foreground=probabilities[channels - 1])
    if channel_layout == "instance" and channels == 3:
        contour = probabilities[INSTANCE_CONTOUR]
        foreground = probabilities[INSTANCE_INTERIOR] + contour
        return PredictionMaps(foreground=foreground, contour=contour)
    if channel_layout == "semantic" and channels >= 2:
        class_dtype = np.uint8 if channels <= 256 else np.uint16
        classes = np.argmax(probabilities, axis=0).astype(class_dtype)
        return PredictionMaps(foreground=1.0 - probabilities[0], classes=classes)
    if channel_layout not in CHANNEL_LAYOUTS:
        raise ValueError(
            f"channel_layout {channel_layout!r} not known; "
            f"choose one of {', '.join(CHANNEL_LAYOUTS)}"
        )
    expected = {"binary": "1 or 2", "instance": "3", "semantic": "at least 2"}[channel_layout]
    raise ValueError(f"channel_layout {channel_layout!r} needs {expected} channels; got {channels}")


def foreground_mask(maps: PredictionMaps, threshold: float) -> np.ndarray:
    """The uint8 0/1 foreground mask, or the class map of semantic outputs (argmax: no threshold)."""
    if maps.classes is not None:
        return maps.classes
    return _above(maps.foreground, threshold).astype(np.uint8)


def list_postprocessors() -> list[str]:
    """All registered post-processor names, sorted (see :mod:`.postprocessors`)."""
    return POSTPROCESSORS.names()


def get_postprocessor(name: str) -> Callable[..., np.ndarray]:
    """The post-processor registered under ``name``; the error lists the available names."""
    return get_postprocessor_spec(name)


def watershed_bytes(shape: Sequence[int], channels: int) -> int:
    """Peak working memory of :func:`postprocess` with ``watershed`` on float32 probabilities
    ``(channels, *shape)``: the probabilities plus about 56 bytes a voxel (distance transform in
    float64, markers and labels in int64; 30-49 bytes measured with 2 and 3 channels)."""
    voxels = int(np.prod([int(n) for n in shape], dtype=np.int64))
    return voxels * (4 * int(channels) + 56)


def postprocess(
    probabilities: np.ndarray,
    method: str,
    *,
    threshold: float = 0.5,
    min_size: int = 0,
    channel_layout: str = "binary",
) -> np.ndarray:
    """Network output ``(C, *spatial)`` -> mask, class map or instance labels, by ``method``.

    ``none``: uint8 0/1 mask (semantic: class map); ``cc``: connected components; ``watershed``:
    :func:`watershed_instances`. Semantic class maps are argmax: ``threshold`` does not apply.
    """
    _check_unit("threshold", threshold)
    _check_min_size(min_size)
    function = get_postprocessor(method)
    maps = decode_channels(probabilities, channel_layout)
    result = function(maps, threshold=threshold, min_size=min_size)
    logger.info("post-processing %r (%s): max id %d", method, channel_layout, result.max(initial=0))
    return result


# --------------------------------------------------------------------------------------------------
# Block-wise connected components
# --------------------------------------------------------------------------------------------------
def label_blockwise(
    mask_source: Any,
    output: Any,
    *,
    block_size: Sequence[int],
    min_size: int = 0,
    connectivity: int = 1,
    callbacks: Sequence[ProgressCallback] = (),
    classes: bool = False,
    final: Callable[[int], Any] | None = None,
) -> int:
    """Connected components of a mask larger than memory, written into ``output``; returns N.

    ``mask_source``: anything with ``.shape`` and numpy slicing (numpy, zarr, h5py, dask) that
    holds a bool/integer mask (non-zero is foreground); with ``classes`` an integer class map
    whose classes are labelled separately (touching objects of different classes stay apart, as
    :func:`connected_components` does with a class map). ``output``: a uint32 array (zarr) of the
    same shape that receives ids 1..N. Pass 1 labels each block with ids offset past the earlier
    blocks', writes them, and collects the id pairs that touch across the block's low faces; the
    pairs are merged with ``csgraph.connected_components``, objects under ``min_size`` (counted
    after merging) dropped, the rest renumbered; pass 2 rewrites every block with its final ids,
    into ``output`` or, when ``final`` is given, into the array ``final(N)`` returns (same shape,
    any integer dtype that holds N, e.g. uint16; ``output`` then only holds the pass-1 ids).
    Memory: a block and its face planes plus tables over the block ids, never the volume. Align
    ``output``'s chunks with ``block_size`` to avoid rewriting partial chunks.
    """
    shape = tuple(int(s) for s in mask_source.shape)
    block_size = _check_blockwise(shape, output, block_size, min_size, connectivity)
    blocks = _blocks(shape, block_size)
    report = _reporter(callbacks, 2 * len(blocks))
    counts, pairs, kinds = _label_blocks(mask_source, output, blocks, connectivity, report,
                                         classes)
    if classes:  # ids of different classes may touch; only same-class neighbours merge
        pairs = pairs[kinds[pairs[:, 0]] == kinds[pairs[:, 1]]]
    lookup = _merge_lookup(counts, pairs, min_size)
    num_objects = int(lookup.max(initial=0))
    target = output if final is None else final(num_objects)
    if final is not None:
        if tuple(target.shape) != shape:
            raise ValueError(f"final array shape {tuple(target.shape)} differs from the mask's {shape}")
        if num_objects > np.iinfo(np.dtype(target.dtype)).max:
            raise TypeError(f"{num_objects} objects do not fit the final array's {target.dtype}")
    _apply_lookup(output, blocks, lookup, report, target)
    logger.info(
        "label_blockwise: %d blocks, %d block labels -> %d objects",
        len(blocks), len(counts) - 1, num_objects,
    )
    return num_objects


def _check_blockwise(
    shape: tuple[int, ...], output: Any, block_size: Sequence[int], min_size: int, connectivity: int
) -> tuple[int, ...]:
    block_size = tuple(int(b) for b in block_size)
    if len(block_size) != len(shape) or min(block_size, default=0) < 1:
        raise ValueError(
            f"block_size must be {len(shape)} positive sizes for shape {shape}; got {block_size}"
        )
    if tuple(output.shape) != shape:
        raise ValueError(f"output shape {tuple(output.shape)} differs from the mask's {shape}")
    if np.dtype(output.dtype) != np.uint32:
        raise TypeError(f"output must be a uint32 array (DESIGN.md labels); got {output.dtype}")
    _check_min_size(min_size)
    _check_connectivity(connectivity, len(shape))
    return block_size


def _blocks(shape: tuple[int, ...], block_size: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The grid of blocks covering ``shape`` in raster order (the last ones may be smaller)."""
    starts = [range(0, size, step) for size, step in zip(shape, block_size)]
    return [
        tuple(slice(s, min(s + step, size)) for s, step, size in zip(corner, block_size, shape))
        for corner in product(*starts)
    ]


def _reporter(callbacks: Sequence[ProgressCallback], total: int) -> Callable[[str], None]:
    """A step counter that reports ``done`` of ``total`` blocks to the progress callbacks."""
    done = 0

    def step(message: str) -> None:
        nonlocal done
        done += 1
        if callbacks:
            emit(callbacks, Progress(done=done, total=total, message=message, stage="predict"))

    return step


def _label_blocks(
    mask_source: Any,
    output: Any,
    blocks: list[tuple[slice, ...]],
    connectivity: int,
    report: Callable[[str], None],
    classes: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Pass 1: label every block on its own, with ids offset past the earlier blocks', and write it.

    Returns the voxel count of each block id (index 0, background, counted as 0), the distinct
    (earlier id, block id) pairs that touch across each block's low faces, and with ``classes``
    the class of each block id (else None).
    """
    counts = [np.zeros(1, dtype=np.int64)]
    pairs = [np.zeros((0, 2), dtype=np.uint32)]
    kinds: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
    offset = 0
    for block in blocks:
        values = np.asarray(mask_source[block])
        if classes:
            if values.dtype.kind not in "biu":
                raise TypeError(f"a class map must hold integers; got {values.dtype}")
            labels, num = sk_label(values, background=0, connectivity=connectivity,
                                   return_num=True)
            kind = np.zeros(num + 1, dtype=np.int64)
            kind[labels.ravel()] = values.ravel()
            kinds.append(kind[1:])
        else:
            labels, num = sk_label(values != 0, connectivity=connectivity, return_num=True)
        if offset + num > _UINT32_MAX:
            raise OverflowError("more block labels than uint32 can hold; use larger blocks")
        counts.append(np.bincount(labels.ravel(), minlength=num + 1)[1:])
        ids = np.where(labels > 0, labels + offset, 0).astype(np.uint32)
        output[block] = ids
        for axis, side in enumerate(block):
            if side.start > 0:
                pairs.append(_low_face_pairs(ids, output, block, axis, connectivity))
        offset += num
        report("labelling blocks")
    return (np.concatenate(counts), np.concatenate(pairs),
            np.concatenate(kinds) if classes else None)


def _low_face_pairs(
    ids: np.ndarray, output: Any, block: tuple[slice, ...], axis: int, connectivity: int
) -> np.ndarray:
    """Distinct (earlier id, block id) pairs that touch across the block's low face on ``axis``.

    Reads from ``output`` the plane just below the face, over the block's extent plus one voxel on
    each side along the later axes: blocks go in raster order, so that whole plane is labelled
    already, and every pair of neighbours in two blocks (diagonal ones included) is seen when the
    later of the two blocks is labelled.
    """
    shape = tuple(output.shape)
    read, place = [], []
    for other, side in enumerate(block):
        if other == axis:
            read.append(slice(side.start - 1, side.start))
            continue
        halo = 1 if other > axis else 0
        start, stop = max(side.start - halo, 0), min(side.stop + halo, shape[other])
        read.append(slice(start, stop))
        place.append(slice(start - side.start + 1, stop - side.start + 1))
    own = np.take(ids, 0, axis=axis)
    below = np.zeros([n + 2 for n in own.shape], dtype=np.uint32)  # zero padding: background
    below[tuple(place)] = np.take(np.asarray(output[tuple(read)]), 0, axis=axis)
    found = []
    for shift in product((-1, 0, 1), repeat=own.ndim):
        if 1 + np.count_nonzero(shift) > connectivity:
            continue
        window = tuple(slice(1 + s, 1 + s + n) for s, n in zip(shift, own.shape))
        earlier, later = below[window].ravel(), own.ravel()
        touching = (earlier > 0) & (later > 0)
        found.append(np.stack([earlier[touching], later[touching]], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def _merge_lookup(counts: np.ndarray, pairs: np.ndarray, min_size: int) -> np.ndarray:
    """Block id -> final id: touching ids united, merged objects under ``min_size`` dropped, the
    rest numbered 1..N in the raster order of their first block."""
    num_ids = len(counts)
    edges = np.ones(len(pairs), dtype=np.int8)
    graph = sparse.coo_matrix((edges, (pairs[:, 0], pairs[:, 1])), shape=(num_ids, num_ids))
    num_components, component = csgraph.connected_components(graph, directed=False)
    sizes = np.bincount(component, weights=counts, minlength=num_components)
    keep = sizes >= max(min_size, 1)
    keep[component[0]] = False  # background (id 0) never becomes an object
    final = np.zeros(num_components, dtype=np.uint32)
    final[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return final[component]


def _apply_lookup(
    output: Any, blocks: list[tuple[slice, ...]], lookup: np.ndarray, report: Callable[[str], None],
    target: Any = None,
) -> None:
    """Pass 2: rewrite every block's ids as final ids (into ``target`` when given)."""
    target = output if target is None else target
    final = lookup.astype(np.dtype(target.dtype), copy=False)
    for block in blocks:
        target[block] = final[np.asarray(output[block])]
        report("writing final ids")


# --------------------------------------------------------------------------------------------------
# Stored probabilities, block by block
# --------------------------------------------------------------------------------------------------
class _StoredMaps:
    """The mask (or, for semantic layouts, the class map) of stored probabilities, decoded block
    by block on demand: an array-like for :func:`label_blockwise` and block loops."""

    def __init__(self, probabilities: Any, channel_layout: str, threshold: float,
                 value_scale: float) -> None:
        self.probabilities, self.layout = probabilities, channel_layout
        self.threshold, self.scale = threshold, float(value_scale)
        self.shape = tuple(int(n) for n in probabilities.shape[1:])
        self.ndim = len(self.shape)
        decode_channels(np.zeros((probabilities.shape[0],) + (1,) * self.ndim, np.float32),
                        channel_layout)  # a layout that does not fit the channels fails now
        self.semantic = channel_layout == "semantic"

    def __getitem__(self, block: tuple[slice, ...]) -> np.ndarray:
        data = np.asarray(self.probabilities[(slice(None), *block)], dtype=np.float32)
        if self.scale != 1.0:
            data /= np.float32(self.scale)
        maps = decode_channels(data, self.layout)
        if maps.classes is not None:
            return maps.classes
        return _above(maps.foreground, self.threshold)


def postprocess_blockwise(
    probabilities: Any,
    method: str,
    create: Callable[[np.dtype], Any],
    *,
    scratch: Callable[[], Any] | None = None,
    block_size: Sequence[int],
    threshold: float = 0.5,
    min_size: int = 0,
    channel_layout: str = "binary",
    value_scale: float = 1.0,
    callbacks: Sequence[ProgressCallback] = (),
) -> int:
    """:func:`postprocess` of stored probabilities ``(C, *spatial)`` larger than memory, read
    block by block (zarr, h5py, numpy, dask: anything with numpy slicing); returns the largest id.

    ``none``: the mask (uint16 0/1) or class map (semantic layout), block by block; ``cc``:
    :func:`label_blockwise` of the same mask (class map: each class separately), equal to
    ``postprocess(..., 'cc')`` of the whole volume up to renumbering. ``create(dtype)`` returns the
    array (spatial shape) that receives the labels: uint16, or for ``cc`` with more than 65535
    objects uint32 (called once the count is known); ``scratch()`` returns a uint32 array of the
    same shape for the pass-1 ids of ``cc`` (e.g. a temporary array in the same store).
    ``value_scale``: the stored value of probability 1 (255 for uint8 outputs). Memory: one block
    of probabilities and its labels, never the volume.
    """
    _check_unit("threshold", threshold)
    _check_min_size(min_size)
    if method not in blockwise_postprocessors():
        known = ", ".join(blockwise_postprocessors())
        raise ValueError(f"post-processing {method!r} has no block-wise form (only {known}); "
                         "load a region that fits in memory and use postprocess()")
    maps = _StoredMaps(probabilities, channel_layout, threshold, value_scale)
    shape = maps.shape
    block_size = tuple(int(b) for b in block_size)
    if len(block_size) != len(shape) or min(block_size, default=0) < 1:
        raise ValueError(
            f"block_size must be {len(shape)} positive sizes for shape {shape}; got {block_size}")
    if method == "cc":
        if scratch is None:
            raise ValueError("connected components block by block need scratch=, a uint32 array "
                             "for the ids of the first pass")
        return label_blockwise(maps, scratch(), block_size=block_size, min_size=min_size,
                               callbacks=callbacks, classes=maps.semantic,
                               final=lambda n: create(smallest_label_dtype(n)))
    blocks = _blocks(shape, block_size)
    report = _reporter(callbacks, len(blocks))
    output = create(np.dtype(np.uint16))
    top = 0
    for block in blocks:
        values = maps[block]
        top = max(top, int(values.max(initial=0)))
        output[block] = values.astype(np.uint16, copy=False)
        report("writing the mask")
    return top

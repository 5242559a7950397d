"""Where sliding windows and blocks go, and how one block is stitched from its windows.

Every prediction uses ONE global window grid: the window positions MONAI's
``sliding_window_inference`` would use for the whole volume (same padding of a volume smaller than
the window, same scan interval ``int(window * (1 - overlap))``, same ``dense_patch_slices``
positions, same importance map). A block of the output (its *core*) is the weighted mean of every
grid window that touches it, read from the input with a halo, so a volume cut into blocks gives
the same result as the whole volume in one piece, and blocks are independent of each other (they
can run in any order, in any process). Coordinates here are those of the padded volume; only
:meth:`Block.output_region` maps back to the volume.

The cost of independence: a window that straddles two blocks is computed by both. Blocks much
larger than the window (the automatic choice) keep that overhead small. In a single process,
:func:`stitch_regions` avoids it: overlap-add over z-slabs spanning the whole y-x plane, every
window once, handing out each piece of the output as soon as no later window touches it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Block",
    "Finished",
    "WindowGrid",
    "auto_block_size",
    "block_bytes",
    "make_grid",
    "plan_blocks",
    "read_padded",
    "resolve_window",
    "slab_bytes",
    "stitch_block",
    "stitch_regions",
    "stitch_slabs",
    "whole_volume_bytes",
]

logger = logging.getLogger(__name__)

Box = tuple[tuple[int, int], ...]  # (start, stop) per spatial axis
_BLOCK_ROUNDING = 16  # automatic block sizes are multiples of this, so output chunks align
_AXES = "zyx"


# --------------------------------------------------------------------------------------------
# Window size
# --------------------------------------------------------------------------------------------


def resolve_window(
    requested: Sequence[int] | None,
    default: Sequence[int],
    shape: Sequence[int],
    *,
    spatial_dims: int,
    size_multiple: int = 1,
    fixed: Sequence[int] | None = None,
) -> tuple[int, int, int]:
    """The z-y-x window for a volume of spatial ``shape`` (z, y, x).

    ``requested`` (the caller's window) is strict: larger than the volume where a smaller valid
    window fits, or not a multiple of the network's ``size_multiple``, is an error. ``default``
    (the training patch) is shrunk to the largest valid size that fits, with a warning. 2D
    networks get windows of one section, (1, y, x). Where even the smallest valid window is larger
    than the volume, the volume is padded (as MONAI does).
    """
    explicit = requested is not None
    window = _as_3d(requested if explicit else default, spatial_dims)
    if spatial_dims == 3 and shape[0] == 1 and window[0] > 1:
        raise ValueError(
            f"the volume is a single 2D section ({shape[1]}x{shape[2]}) but this 3D network's "
            f"window needs {window[0]} z-sections; predict with a 2D network "
            "(model.spatial_dims=2) or give a z-stack")
    if fixed is not None:
        return _fixed_window(window, _as_3d(fixed, spatial_dims), shape, explicit)
    axes = (1, 2) if spatial_dims == 2 else (0, 1, 2)
    window = _to_multiple(window, axes, size_multiple, explicit)
    fitted = tuple(_fit(w, n, size_multiple) if i in axes else w
                   for i, (w, n) in enumerate(zip(window, shape)))
    if fitted != window:
        if explicit:
            too_big = ", ".join(_AXES[i] for i in axes if window[i] > shape[i])
            raise ValueError(
                f"window {_text(window)} is larger than the volume {_text(shape)} on {too_big}; "
                f"use --window {','.join(map(str, fitted))} or smaller")
        logger.warning("the training patch %s is larger than the volume %s; predicting with "
                       "window %s", _text(window), _text(shape), _text(fitted))
    if any(w > n for w, n in zip(fitted, shape)):
        logger.info("window %s is larger than the volume %s (the smallest the network takes): "
                    "the volume is padded", _text(fitted), _text(shape))
    return fitted  # type: ignore[return-value]


def _as_3d(window: Sequence[int], spatial_dims: int) -> tuple[int, int, int]:
    """(z, y, x); a 2D network's (y, x) window becomes (1, y, x)."""
    values = tuple(int(w) for w in window)
    if any(w < 1 for w in values):
        raise ValueError(f"window sizes must be positive, got {list(values)}")
    if spatial_dims == 2:
        if len(values) == 3 and values[0] == 1:
            values = values[1:]
        if len(values) != 2:
            raise ValueError("a 2D network predicts slice by slice: give its window as (y, x) or "
                             f"(1, y, x), not {list(values)}")
        return (1, *values)  # type: ignore[return-value]
    if len(values) != 3:
        raise ValueError(f"a 3D network needs a z, y, x window, not {list(values)}")
    return values  # type: ignore[return-value]


def _fixed_window(window: tuple[int, ...], fixed: tuple[int, ...], shape: Sequence[int],
                  explicit: bool) -> tuple[int, int, int]:
    """Networks built for one input size (UNETR) take exactly that window; the volume is padded."""
    if explicit and window != fixed:
        raise ValueError(f"this network takes a fixed input size: use window {list(fixed)} "
                         f"(or leave it unset), not {list(window)}")
    if any(w > n for w, n in zip(fixed, shape)):
        logger.warning("the network's fixed input %s is larger than the volume %s: the volume "
                       "is padded", _text(fixed), _text(shape))
    return fixed  # type: ignore[return-value]


def _to_multiple(window: tuple[int, ...], axes: Sequence[int], multiple: int,
                 explicit: bool) -> tuple[int, ...]:
    """Every size a multiple of what the network takes (a default is padded up, with a warning)."""
    if multiple <= 1 or all(window[i] % multiple == 0 for i in axes):
        return window
    rounded = tuple(-(-w // multiple) * multiple if i in axes else w for i, w in enumerate(window))
    if explicit:
        raise ValueError(f"window {_text(window)} must be a multiple of {multiple} on every axis "
                         f"for this network; use e.g. --window {','.join(map(str, rounded))}")
    logger.warning("window %s padded up to %s, a multiple of %d",
                   _text(window), _text(rounded), multiple)
    return rounded


def _fit(window: int, size: int, multiple: int) -> int:
    """The largest valid window <= ``size`` (at most ``window``); else the smallest valid one."""
    if window <= size:
        return window
    return max(multiple, size // multiple * multiple)


def _text(sizes: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in sizes)


# --------------------------------------------------------------------------------------------
# The global grid
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowGrid:
    """MONAI's window positions for a whole volume of spatial ``shape`` (z, y, x).

    ``padded`` is ``max(shape, window)`` per axis; a smaller volume sits at ``pad_before`` inside
    it, as MONAI pads it. ``starts`` are the window starts per axis in padded coordinates; the
    windows are their Cartesian product.
    """

    shape: tuple[int, ...]
    window: tuple[int, ...]
    overlap: float
    padded: tuple[int, ...]
    pad_before: tuple[int, ...]
    scan: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]

    @property
    def n_windows(self) -> int:
        return math.prod(len(s) for s in self.starts)

    @property
    def is_padded(self) -> bool:
        return self.padded != self.shape

    def windows_touching(self, box: Box) -> list[tuple[int, ...]]:
        """Starts of the windows that intersect ``box`` (padded coordinates), in MONAI's order."""
        per_axis = [[s for s in starts if s < hi and s + w > lo]
                    for starts, w, (lo, hi) in zip(self.starts, self.window, box)]
        return list(product(*per_axis))


def make_grid(shape: Sequence[int], window: Sequence[int], overlap: float) -> WindowGrid:
    """The grid ``sliding_window_inference(roi_size=window, overlap=overlap)`` uses on ``shape``."""
    from monai.data.utils import dense_patch_slices

    shape, window = tuple(int(n) for n in shape), tuple(int(w) for w in window)
    padded = tuple(max(n, w) for n, w in zip(shape, window))
    pad_before = tuple((p - n) // 2 for p, n in zip(padded, shape))
    # As MONAI's _get_scan_interval: one window where it spans the axis, else at least one voxel.
    scan = tuple(w if w == p else max(1, int(w * (1 - overlap))) for w, p in zip(window, padded))
    starts = tuple(tuple(int(s[0].start) for s in dense_patch_slices((p,), (w,), (i,)))
                   for p, w, i in zip(padded, window, scan))
    return WindowGrid(shape, window, float(overlap), padded, pad_before, scan, starts)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One piece of the output: ``core`` (padded coordinates) is what it computes and writes."""

    index: int
    core: Box

    def output_region(self, grid: WindowGrid) -> tuple[slice, ...]:
        """Where the core lands in the (unpadded) volume."""
        return tuple(slice(max(lo - b, 0), min(hi - b, n))
                     for (lo, hi), b, n in zip(self.core, grid.pad_before, grid.shape))

    def crop(self, grid: WindowGrid) -> tuple[slice, ...]:
        """The part of the core array that lies inside the volume (padding removed)."""
        region = self.output_region(grid)
        return tuple(slice(r.start + b - lo, r.stop + b - lo)
                     for r, b, (lo, _) in zip(region, grid.pad_before, self.core))


def plan_blocks(grid: WindowGrid, block_size: Sequence[int]) -> list[Block]:
    """Blocks tiling the padded volume; on a padded axis (volume smaller than the window) a block
    spans the whole axis, so padding is applied exactly as MONAI applies it."""
    if len(block_size) != 3 or any(int(b) < 1 for b in block_size):
        raise ValueError(f"block_size must be 3 positive sizes (z, y, x), got {list(block_size)}")
    sizes = [p if p != n else min(int(b), p)
             for b, p, n in zip(block_size, grid.padded, grid.shape)]
    edges = [[(lo, min(lo + b, p)) for lo in range(0, p, b)] for b, p in zip(sizes, grid.padded)]
    return [Block(i, core) for i, core in enumerate(product(*edges))]


def _box_around(grid: WindowGrid, core: Sequence[int]) -> tuple[int, ...]:
    """An upper bound of the input a core of this size needs: the core plus a window each side."""
    return tuple(min(c + 2 * w, p) for c, w, p in zip(core, grid.window, grid.padded))


def block_bytes(grid: WindowGrid, core: Sequence[int], in_channels: int, out_channels: int,
                batch_size: int) -> int:
    """Peak float32 working memory of one block: input with halo, accumulator, weights, result
    and one batch of windows."""
    box = math.prod(_box_around(grid, core))
    voxels = math.prod(core)
    batch = batch_size * math.prod(grid.window) * (in_channels + 2 * out_channels)
    return 4 * (in_channels * box + (2 * out_channels + 1) * voxels + batch)


def whole_volume_bytes(grid: WindowGrid, in_channels: int, out_channels: int) -> int:
    """Working memory of MONAI's whole-volume inference: input, output, weights and activation."""
    return 4 * math.prod(grid.padded) * (in_channels + 2 * out_channels + 2)


def auto_block_size(grid: WindowGrid, in_channels: int, out_channels: int, batch_size: int,
                    memory_limit: int) -> tuple[int, int, int]:
    """The largest blocks within ``memory_limit`` bytes: the axis spanning the most windows is
    halved until they fit (never below one window; sizes rounded to multiples of 16)."""
    core = list(grid.padded)
    frozen: set[int] = set()
    while block_bytes(grid, core, in_channels, out_channels, batch_size) > memory_limit:
        candidates = [i for i in range(3) if i not in frozen and grid.padded[i] == grid.shape[i]]
        if not candidates:
            break
        axis = max(candidates, key=lambda i: core[i] / grid.window[i])
        half = -(-core[axis] // 2)
        half = max(grid.window[axis], -(-half // _BLOCK_ROUNDING) * _BLOCK_ROUNDING)
        if half >= core[axis]:
            frozen.add(axis)
            continue
        core[axis] = half
    return tuple(core)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Stitching one block
# --------------------------------------------------------------------------------------------


def read_padded(grid: WindowGrid, box: Box, read: Callable[[tuple[slice, ...]], np.ndarray],
                padding_mode: str) -> torch.Tensor:
    """Input (C, *box) of padded coordinates ``box``: the volume part read with ``read`` (volume
    coordinates, normalised float32), padded as MONAI pads the whole volume. A box only reaches
    outside the volume on padded axes, where it spans the whole axis: the padding is identical."""
    inside = tuple(slice(max(lo - b, 0), min(hi - b, n))
                   for (lo, hi), b, n in zip(box, grid.pad_before, grid.shape))
    image = torch.from_numpy(np.ascontiguousarray(read(inside), dtype=np.float32))
    before = [s.start + b - lo for s, b, (lo, _) in zip(inside, grid.pad_before, box)]
    after = [hi - (s.stop + b) for s, b, (_, hi) in zip(inside, grid.pad_before, box)]
    if not any(before) and not any(after):
        return image
    pad = [p for axis in reversed(range(3)) for p in (before[axis], after[axis])]  # last axis first
    value = 0.0 if padding_mode == "constant" else None
    return F.pad(image[None], pad, mode=padding_mode, value=value)[0]


def stitch_block(
    grid: WindowGrid,
    core: Box,
    read: Callable[[tuple[slice, ...]], np.ndarray],
    predict_batch: Callable[[torch.Tensor], torch.Tensor],
    importance: torch.Tensor,
    *,
    batch_size: int,
    padding_mode: str = "constant",
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Weighted mean (C_out, *core) of all grid windows touching ``core``.

    ``predict_batch`` maps a CPU batch (N, C_in, *window) to CPU (N, C_out, *window); ``check``
    runs before every batch (it raises to cancel). Only the core is accumulated, so memory is the
    core plus the input box (core + halo), whatever the volume size.
    """
    starts = grid.windows_touching(core)
    box = tuple((min(s[a] for s in starts), max(s[a] for s in starts) + grid.window[a])
                for a in range(3))
    image = read_padded(grid, box, read, padding_mode)
    core_shape = tuple(hi - lo for lo, hi in core)
    accumulated: torch.Tensor | None = None
    weights = torch.zeros(core_shape, dtype=torch.float32)
    for first in range(0, len(starts), batch_size):
        if check is not None:
            check()
        batch_starts = starts[first:first + batch_size]
        windows = torch.stack([image[(slice(None), *_window_in(s, box, grid.window))]
                               for s in batch_starts])
        output = predict_batch(windows).to(torch.float32)
        if tuple(output.shape[2:]) != grid.window:
            raise ValueError(f"the network returned windows of {_text(output.shape[2:])} for "
                             f"inputs of {_text(grid.window)}; only size-preserving networks can "
                             "predict")
        if accumulated is None:
            accumulated = torch.zeros((output.shape[1], *core_shape), dtype=torch.float32)
        for start, prediction in zip(batch_starts, output):
            in_window, in_core = _overlap(start, grid.window, core)
            weight = importance[in_window]
            accumulated[(slice(None), *in_core)] += prediction[(slice(None), *in_window)] * weight
            weights[in_core] += weight
    assert accumulated is not None  # every core is touched by at least one window
    return accumulated / weights


def _window_in(start: Sequence[int], box: Box, window: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s - lo, s - lo + w) for s, (lo, _), w in zip(start, box, window))


def _overlap(start: Sequence[int], window: Sequence[int],
             core: Box) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The window's intersection with the core, as slices of the window and of the core."""
    lows = [max(s, lo) for s, (lo, _) in zip(start, core)]
    highs = [min(s + w, hi) for s, w, (_, hi) in zip(start, window, core)]
    in_window = tuple(slice(a - s, b - s) for a, b, s in zip(lows, highs, start))
    in_core = tuple(slice(a - lo, b - lo) for a, b, (lo, _) in zip(lows, highs, core))
    return in_window, in_core


# --------------------------------------------------------------------------------------------
# Overlap-add over z-slabs: every grid window computed once
# --------------------------------------------------------------------------------------------


def slab_bytes(grid: WindowGrid, thickness: int, in_channels: int, out_channels: int,
               batch_size: int, *, prefetch: bool = True) -> int:
    """Peak float32 working memory of the slab path for slabs of ``thickness`` z-planes spanning
    the whole padded y-x plane: input slab with its windows' trailing z-extent (twice with
    ``prefetch``: the next slab's input is read while this one is predicted), accumulators and
    importance weights over the same planes, the finished planes (mean and activation) and one
    batch of windows."""
    plane = grid.padded[1] * grid.padded[2]
    depth = min(thickness + grid.window[0], grid.padded[0])
    final = min(thickness + grid.window[0], grid.padded[0])  # at most this many planes at once
    ahead = prefetch and thickness < grid.padded[0]
    prefetch_planes = in_channels * depth if ahead else 0
    batch = batch_size * math.prod(grid.window) * (in_channels + 2 * out_channels)
    return 4 * (plane * ((in_channels + out_channels + 1) * depth + prefetch_planes
                         + 2 * out_channels * final) + batch)


def stitch_slabs(
    grid: WindowGrid,
    slabs: Sequence[tuple[int, int]],
    read: Callable[[tuple[slice, ...]], np.ndarray],
    predict_batch: Callable[[torch.Tensor], torch.Tensor],
    importance: torch.Tensor,
    *,
    batch_size: int,
    padding_mode: str = "constant",
    check: Callable[[], None] | None = None,
) -> Iterator[tuple[Box, torch.Tensor | None]]:
    """Overlap-add of the whole grid, slab by slab in increasing z (``slabs``: (lo, hi) z-ranges
    of padded coordinates tiling the padded z-axis, each spanning the whole padded y-x plane).

    Each window belongs to the slab holding its z-start and is predicted exactly once. Weighted
    predictions and weights accumulate in buffers covering the unfinished planes; after a slab,
    the planes before the next slab's first window start are final. Yields, per slab, the final
    planes as (box in padded coordinates, weighted mean (C_out, z, y, x)), or (box, None) when the
    slab finished no plane. Memory: the buffers of one slab plus its windows' trailing z-extent.
    (:func:`stitch_regions` without cuts, one piece per slab.)
    """
    full_yx = ((0, grid.padded[1]), (0, grid.padded[2]))
    done, piece = 0, None
    for event in stitch_regions(grid, slabs, read, predict_batch, importance,
                                batch_size=batch_size, padding_mode=padding_mode, check=check):
        if event.mean is not None:
            piece = event
            continue
        if piece is None:
            yield ((done, done), *full_yx), None
            continue
        yield piece.box, piece.mean
        done, piece = piece.box[0][1], None


@dataclass(frozen=True)
class Finished:
    """What :func:`stitch_regions` yields: a final ``box`` (padded coordinates) with its weighted
    mean (C_out, *box), or, with ``mean`` None, the end of slab number ``slab``."""

    slab: int
    box: Box | None
    mean: torch.Tensor | None = None


def stitch_regions(
    grid: WindowGrid,
    slabs: Sequence[tuple[int, int]],
    read: Callable[[tuple[slice, ...]], np.ndarray],
    predict_batch: Callable[[torch.Tensor], torch.Tensor],
    importance: torch.Tensor,
    *,
    batch_size: int,
    padding_mode: str = "constant",
    check: Callable[[], None] | None = None,
    cuts: tuple[Sequence[int], Sequence[int]] = ((), ()),
    prefetch: bool = True,
    first: int = 0,
    device: torch.device | None = None,
) -> Iterator[Finished]:
    """Overlap-add over z-slabs (as :func:`stitch_slabs`) that hands out each finished piece of the
    output as soon as the last window touching it is predicted, not only at the end of a slab.

    The finished planes are cut into pieces at the z and y positions of ``cuts`` (padded
    coordinates; e.g. the output's chunk edges, so that each piece is written in whole chunks) and
    at the end of every slab; a piece spans the whole padded x-axis. Windows run in raster order
    (z, y, x), so a piece is final once the window at the largest z-, y- and x-start touching it
    is done: with one slab spanning the whole volume, most of the output is final (and can be
    written) while later windows are still being predicted. Yields :class:`Finished` pieces in
    that order, and ``Finished(slab, None)`` after each slab's last window. With ``prefetch`` the
    next slab's input is read in a background thread while this slab's windows run. Memory: as
    :func:`stitch_slabs` (plus the next slab's input when prefetching).

    ``first`` > 0 resumes a run whose slabs before ``first`` are written: the pieces that slab
    ``first - 1`` finished are not handed out again, and the windows of earlier slabs that still
    reach the planes after them are predicted again (their whole slabs, in the same batches), so
    every later piece sums the same windows in the same order as an uninterrupted run: the same
    values, bit for bit. ``Finished(slab, None)`` is yielded for the replayed slabs too.

    With a ``device`` (a GPU), each slab's input goes there once, the windows are cut there and
    ``predict_batch`` gets and returns tensors there; the sums and the means stay there too, so
    only the input and the finished pieces cross the bus, not every window twice.
    """
    on = device if device is not None else torch.device("cpu")
    importance = importance.to(on)
    z_starts, depth = grid.starts[0], grid.window[0]
    plane = (grid.padded[1], grid.padded[2])
    finals = []
    for _, hi in slabs:
        later = [s for s in z_starts if s >= hi]
        finals.append(later[0] if later else grid.padded[0])
    pieces = _pieces(grid, cuts, finals)
    boxes = [_slab_box(grid, [s for s in z_starts if lo <= s < hi]) for lo, hi in slabs]
    replay, written = _replay_from(grid, slabs, finals, first)
    pieces = [piece for piece in pieces if piece[1][0] >= written]
    reads = [b for b in boxes[replay:] if b is not None]
    accumulated: torch.Tensor | None = None  # planes [base, base + len) of padded z
    weights = torch.zeros((0, *plane), dtype=torch.float32, device=on)
    base = next((b[0][0] for b in boxes[replay:] if b is not None), 0) if replay else 0
    processed, emitted = 0, 0
    with _Prefetcher(lambda box: read_padded(grid, box, read, padding_mode), reads,
                     enabled=prefetch) as inputs:
        for number, ((lo, hi), box, final) in enumerate(zip(slabs, boxes, finals)):
            if number < replay:
                continue
            if box is not None:
                own = [s for s in z_starts if lo <= s < hi]
                end = box[0][1]
                size = max(end - base, weights.shape[0])
                if size > weights.shape[0]:  # grow the buffers, keeping the carried tail in front
                    grown = torch.zeros((size, *plane), dtype=torch.float32, device=on)
                    grown[:weights.shape[0]] = weights
                    weights = grown
                    if accumulated is not None:
                        grown = torch.zeros((accumulated.shape[0], size, *plane),
                                            dtype=torch.float32, device=on)
                        grown[:, :accumulated.shape[1]] = accumulated
                        accumulated = grown
                image = inputs.next().to(on)
                starts = list(product(own, grid.starts[1], grid.starts[2]))
                for first in range(0, len(starts), batch_size):
                    if check is not None:
                        check()
                    batch_starts = starts[first:first + batch_size]
                    windows = torch.stack([image[(slice(None), *_window_in(s, box, grid.window))]
                                           for s in batch_starts])
                    output = predict_batch(windows).to(torch.float32)
                    if tuple(output.shape[2:]) != grid.window:
                        raise ValueError(
                            f"the network returned windows of {_text(output.shape[2:])} for "
                            f"inputs of {_text(grid.window)}; only size-preserving networks can "
                            "predict")
                    if accumulated is None:
                        accumulated = torch.zeros((output.shape[1], size, *plane),
                                                  dtype=torch.float32, device=on)
                    for (z, y, x), prediction in zip(batch_starts, output):
                        at = (slice(z - base, z - base + depth), slice(y, y + grid.window[1]),
                              slice(x, x + grid.window[2]))
                        accumulated[(slice(None), *at)].addcmul_(prediction, importance)
                        weights[at] += importance
                    processed = _ordinal(grid, batch_starts[-1]) + 1
                    while emitted < len(pieces) and pieces[emitted][0] < processed:
                        _, (z0, z1), (y0, y1) = pieces[emitted]
                        at = (slice(z0 - base, z1 - base), slice(y0, y1))
                        mean = accumulated[(slice(None), *at)] / weights[at]
                        emitted += 1
                        yield Finished(number, ((z0, z1), (y0, y1), (0, plane[1])), mean)
                del image
            count = final - base
            if count > 0 and accumulated is not None:
                accumulated, weights = accumulated[:, count:].clone(), weights[count:].clone()
                base = final
            yield Finished(number, None)


def _replay_from(grid: WindowGrid, slabs: Sequence[tuple[int, int]], finals: Sequence[int],
                 first: int) -> tuple[int, int]:
    """(the slab to start at, the planes already written) when slabs before ``first`` are written:
    the planes before ``finals[first - 1]``; the start is the slab holding the first window that
    reaches past them (every earlier window ends before them)."""
    if first <= 0:
        return 0, 0
    written = finals[min(first, len(slabs)) - 1]
    reaching = [s for s in grid.starts[0] if s + grid.window[0] > written]
    if not reaching:
        return min(first, len(slabs)), written
    start = reaching[0]
    replay = next(i for i, (lo, hi) in enumerate(slabs) if lo <= start < hi)
    return min(replay, first), written


def _slab_box(grid: WindowGrid, own: Sequence[int]) -> Box | None:
    """The input box of a slab's own windows (z-starts ``own``), or None without windows."""
    if not own:
        return None
    return ((min(own), max(own) + grid.window[0]), (0, grid.padded[1]), (0, grid.padded[2]))


def _ordinal(grid: WindowGrid, start: Sequence[int]) -> int:
    """The position of the window at ``start`` in raster order over the whole grid."""
    iz, iy, ix = (starts.index(s) for starts, s in zip(grid.starts, start))
    return (iz * len(grid.starts[1]) + iy) * len(grid.starts[2]) + ix


def _pieces(grid: WindowGrid, cuts: tuple[Sequence[int], Sequence[int]],
            finals: Sequence[int]) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """(ordinal of the last window touching it, z-range, y-range) of every output piece, in the
    order they become final: z cut at ``cuts[0]`` and the slab ends ``finals``, y at ``cuts[1]``."""
    def edges(extra: Sequence[int], size: int) -> list[int]:
        return sorted({0, size, *(int(c) for c in extra if 0 < int(c) < size)})

    z_edges = edges([*cuts[0], *finals], grid.padded[0])
    y_edges = edges(cuts[1], grid.padded[1])
    last_x = grid.starts[2][-1]
    pieces = []
    for z0, z1 in zip(z_edges, z_edges[1:]):
        last_z = max(s for s in grid.starts[0] if s < z1)
        for y0, y1 in zip(y_edges, y_edges[1:]):
            last_y = max(s for s in grid.starts[1] if s < y1)
            pieces.append((_ordinal(grid, (last_z, last_y, last_x)), (z0, z1), (y0, y1)))
    return sorted(pieces)


class _Prefetcher:
    """Reads ``boxes`` in order with ``load``, one ahead in a background thread when ``enabled``
    (reading and normalising release the GIL for most of their time, so it overlaps the network).
    Leaving the ``with`` block waits for a read still running."""

    def __init__(self, load: Callable[[Box], torch.Tensor], boxes: Sequence[Box],
                 enabled: bool = True) -> None:
        self._load, self._boxes, self._enabled = load, list(boxes), enabled and len(boxes) > 1
        self._next = 0
        self._pool: Any = None
        self._pending: Any = None

    def __enter__(self) -> _Prefetcher:
        if self._enabled:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="napari-connectomics-read")
        return self

    def next(self) -> torch.Tensor:
        box = self._boxes[self._next]
        self._next += 1
        if self._pending is not None:
            image, self._pending = self._pending.result(), None
        else:
            image = self._load(box)
        if self._pool is not None and self._next < len(self._boxes):
            self._pending = self._pool.submit(self._load, self._boxes[self._next])
        return image

    def __exit__(self, *_: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending = None

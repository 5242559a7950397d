"""Sliding-window prediction: one volume in memory, volumes larger than memory, or a dask cluster.

:func:`predict` turns a checkpoint (or a model with its training config) and a volume into
probabilities (C, z, y, x): sigmoid for a one-channel network, else softmax over the channels.
Windows run on the GPU when there is one; blending and stitching stay on the CPU.

Three engines share one window grid (see :mod:`.windows`), so they agree within float rounding:

* whole volume (it fits in ``memory_limit_mb``, no ``block_size``): MONAI's
  ``sliding_window_inference`` itself, with a progress report and a cancel check per batch;
* blocks (a ``block_size``, or a volume too large for memory): each block reads its part of the
  input plus a halo, blends every grid window that touches it and writes its part of the output
  as soon as it is done, so memory follows the block size and not the volume;
* slabs (single process, when a slab of the plan's z-thickness spanning the whole y-x plane fits
  in memory): overlap-add over z-slabs, every grid window computed exactly once; each piece of
  the output (whole chunk rows of z and y, full x) is written as soon as no later window touches
  it, even in the middle of a slab, and the next slab's input is read while this one is predicted;
* dask (``scheduler='dask'``): the same blocks as dask tasks writing into one Zarr store.

In a single process, when the network runs on an accelerator or leaves a CPU core free, finished
regions go to the output through a background writer thread (a queue of at most two regions, so
memory stays bounded) and the next slab's input is read ahead, so that I/O overlaps the windows;
when torch's threads already use every core, the same I/O runs between batches instead (see
``_overlap_io``). A write error is raised in the caller's thread; on an error or a cancel the
writer is stopped before the partial output is removed. When the plan reads the whole input in
one piece anyway (whole volume, one slab), it is read once and its statistics are taken from
that copy (the same sample of the same blocks, so the same numbers).

Inputs are normalised with ``cfg.data.normalize`` and statistics of the whole input volume
(measured once, on a sample for large volumes), as in training. Without test-time augmentation
the blended *logits* go through the activation (exactly MONAI's result); with it, each window is
predicted under flips (and in-plane rot90 for square windows) and the *probabilities* are
averaged, window by window, before blending.

Scale-out with dask
-------------------
``predict(..., output='pred.zarr', scheduler='dask')`` starts a ``LocalCluster`` of two
single-threaded worker processes on this machine; ``address='host:port'`` sends the blocks to a
running scheduler instead. Each worker loads the model from the checkpoint once and keeps it;
workers must see the checkpoint, the input and the output at the same paths (a shared file
system), and the output must be Zarr (blocks go to their own chunks concurrently; HDF5 cannot be
written by several processes). On a SLURM cluster with dask-jobqueue::

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    cluster = SLURMCluster(cores=8, processes=1, memory="64GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"])
    cluster.scale(jobs=4)
    client = Client(cluster)
    print(client.scheduler_address)  # e.g. tcp://10.0.0.5:8786

then, in the same Python environment (keep the cluster running)::

    napari-connectomics predict --checkpoint best.ckpt --input raw.zarr/raw \\
        --output pred.zarr --scheduler dask --address tcp://10.0.0.5:8786

or ``predict(..., scheduler='dask', address=client.scheduler_address)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.normalize import IntensityStats, intensity_stats, normalize_intensity
from ..data.volumes import Volume, open_volume, parse_volume_path
from ..models.architectures.base import main_output
from ..progress import Progress, ProgressCallback, emit
from .stores import (
    OUTPUT_DTYPES,
    OutputSpec,
    OutputWriter,
    check_output,
    choose_chunks,
    parse_output,
)
from .windows import (
    Block,
    WindowGrid,
    auto_block_size,
    make_grid,
    plan_blocks,
    resolve_window,
    slab_bytes,
    stitch_block,
    stitch_regions,
    whole_volume_bytes,
)

__all__ = [
    "BlockJob",
    "PredictOptions",
    "PredictionResult",
    "VolumeInput",
    "WindowPredictor",
    "activation_for",
    "compute_block",
    "predict",
    "prepare_input",
    "resolve_device",
    "tta_transforms",
]

logger = logging.getLogger(__name__)

BLENDINGS = ("gaussian", "constant")
PADDING_MODES = ("constant", "reflect", "replicate")
DEVICES = ("auto", "cpu", "cuda", "gpu", "mps")
SCHEDULERS = ("local", "dask")
_SIGMA_SCALE = 0.125  # MONAI's default Gaussian width (window size * 0.125)
_MB = 2**20


class _Cancelled(Exception):
    """Raised between window batches when the stop event is set."""


# --------------------------------------------------------------------------------------------
# Options and result
# --------------------------------------------------------------------------------------------


@dataclass
class PredictOptions:
    """How to predict. ``window`` None means the checkpoint's default (``inference.window_size``,
    else the training patch), shrunk to fit a small volume; a given window is strict."""

    window: tuple[int, ...] | None = None  # z, y, x (3D nets); 2D nets: (y, x) or (1, y, x)
    overlap: float = 0.25
    batch_size: int = 4
    blending: str = "gaussian"
    padding_mode: str = "constant"
    tta: bool = False
    device: str = "auto"
    output_dtype: str = "float16"
    block_size: tuple[int, int, int] | None = None  # None: whole volume if it fits, else auto
    roi: tuple[slice, slice, slice] | None = None  # z, y, x region of the volume to predict
    memory_limit_mb: int = 4096  # for the whole-volume path, and per automatic block

    def __post_init__(self) -> None:
        if self.window is not None:
            self.window = _positive_ints("window", self.window, (2, 3))
        if self.block_size is not None:
            self.block_size = _positive_ints("block_size", self.block_size, (3,))  # type: ignore
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"overlap must be at least 0 and below 1, got {self.overlap}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if int(self.memory_limit_mb) < 1:
            raise ValueError(f"memory_limit_mb must be at least 1, got {self.memory_limit_mb}")
        for name, choices in (("blending", BLENDINGS), ("padding_mode", PADDING_MODES),
                              ("device", DEVICES), ("output_dtype", OUTPUT_DTYPES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; "
                                 f"choose one of: {', '.join(choices)}")
        if self.roi is not None and (len(self.roi) != 3
                                     or not all(isinstance(s, slice) for s in self.roi)):
            raise ValueError("roi must be three slices (z, y, x), "
                             "e.g. (slice(0, 64), slice(None), slice(None))")
        self.overlap, self.batch_size = float(self.overlap), int(self.batch_size)

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> PredictOptions:
        """Options from ``cfg.inference``, then ``overrides``; a None override keeps the config's
        value, so parsed command-line options can be passed straight through."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown prediction option {unknown[0]!r}; "
                             f"choose from: {', '.join(sorted(names))}")
        inference = cfg.inference
        values: dict[str, Any] = {name: inference[name] for name in (
            "overlap", "batch_size", "blending", "padding_mode", "tta", "device", "output_dtype")}
        if inference.block_size is not None:
            values["block_size"] = tuple(inference.block_size)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class PredictionResult:
    """What :func:`predict` produced. ``probabilities`` is (C, z, y, x): a numpy array without an
    output path, else the written array opened read-only (a zarr.Array, or an h5py.Dataset whose
    file stays open until ``probabilities.file.close()``); None when the run was cancelled."""

    probabilities: np.ndarray | Any | None
    output_path: Path | None
    channels: int
    activation: str
    seconds: float
    cancelled: bool = False
    window: tuple[int, ...] = ()
    blocks: int = 1  # 1 for the whole-volume path
    device: str = "cpu"  # or 'dask'


def _positive_ints(name: str, values: Sequence[int], lengths: tuple[int, ...]) -> tuple[int, ...]:
    try:
        result = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}") from None
    if len(result) not in lengths or any(v < 1 for v in result):
        counts = " or ".join(str(n) for n in lengths)
        raise ValueError(f"{name} must be {counts} positive sizes (z, y, x), got {list(result)}")
    return result


# --------------------------------------------------------------------------------------------
# The network on windows
# --------------------------------------------------------------------------------------------


def _stored(probabilities: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """:func:`.stores.to_storage` in torch (multi-threaded, same rounding: to nearest even)."""
    if dtype == np.uint8:
        scaled = probabilities.clamp(0.0, 1.0).mul_(255.0).round_()
        return scaled.to(torch.uint8).numpy()
    return probabilities.to(getattr(torch, dtype.name)).numpy()


def activation_for(cfg: Any) -> str:
    """Sigmoid for one output channel (binary target), softmax over the channels otherwise
    (two-class binary, semantic classes, instance background/interior/contour)."""
    return "sigmoid" if int(cfg.model.out_channels) == 1 else "softmax"


def activate(logits: torch.Tensor, activation: str, dim: int = 1) -> torch.Tensor:
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=dim)


def resolve_device(name: str) -> torch.device:
    """'auto': the GPU when torch sees one, else the CPU; an unavailable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but torch sees no CUDA GPU; "
                             "use device='auto' or 'cpu'")
        return torch.device("cuda")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' was asked for but is not available; "
                             "use device='auto' or 'cpu'")
        return torch.device("mps")
    return torch.device("cpu")


def tta_transforms(spatial_dims: int, window: Sequence[int]) -> list[tuple[tuple[int, ...], int]]:
    """(flipped axes, quarter turns) pairs: every flip of the spatial axes (y, x for 2D networks,
    z, y, x for 3D), each also turned by 90 degrees in-plane when the window is square in y-x."""
    axes = (3, 4) if spatial_dims == 2 else (2, 3, 4)
    flips = [combo for r in range(len(axes) + 1) for combo in combinations(axes, r)]
    turns = (0, 1) if window[-1] == window[-2] else (0,)
    return [(flip, k) for k in turns for flip in flips]


class WindowPredictor:
    """A batch of windows (N, C, z, y, x) on ``device`` -> the network's output there: logits,
    or with ``tta`` the mean of the probabilities over all transforms (a running sum, never a
    stack of passes). A 2D network gets windows of one section as (N, C, y, x)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, spatial_dims: int,
                 activation: str, tta: bool, window: Sequence[int]) -> None:
        self.model, self.device = model, device
        self.spatial_dims, self.activation, self.tta = spatial_dims, activation, tta
        self.transforms = tta_transforms(spatial_dims, window) if tta else [((), 0)]

    @property
    def returns_probabilities(self) -> bool:
        return self.tta

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if not self.tta:
                return self._forward(batch)
            total: torch.Tensor | None = None
            for flips, turns in self.transforms:
                logits = self._forward(_transform(batch, flips, turns))
                probabilities = _untransform(activate(logits, self.activation), flips, turns)
                total = probabilities if total is None else total.add_(probabilities)
            assert total is not None
            return total / len(self.transforms)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims == 2:
            return main_output(self.model(batch[:, :, 0])).float()[:, :, None]
        return main_output(self.model(batch)).float()


def _transform(batch: torch.Tensor, flips: tuple[int, ...], turns: int) -> torch.Tensor:
    batch = torch.flip(batch, flips) if flips else batch
    return torch.rot90(batch, turns, (3, 4)) if turns else batch


def _untransform(batch: torch.Tensor, flips: tuple[int, ...], turns: int) -> torch.Tensor:
    batch = torch.rot90(batch, -turns, (3, 4)) if turns else batch
    return torch.flip(batch, flips) if flips else batch


@contextmanager
def _model_on(model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """The model in eval mode on ``device``; a caller's model gets its mode and device back."""
    was_training = model.training
    parameter = next(model.parameters(), None)
    previous = parameter.device if parameter is not None else None
    model.eval().to(device)
    try:
        yield model
    finally:
        model.train(was_training)
        if previous is not None:
            model.to(previous)


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeInput:
    """The input as the engines see it: spatial ``shape`` (z, y, x) of the region to predict,
    read as normalised float32 (C, z, y, x). Picklable (for dask workers)."""

    volume: Volume
    has_channels: bool
    flat: bool  # a single 2D section (y, x): read as z = 1
    offset: tuple[int, int, int]  # start of the region (roi) in the volume
    shape: tuple[int, int, int]
    normalize: str = "none"
    stats: IntensityStats | None = None

    def read(self, region: Sequence[slice]) -> np.ndarray:
        index = tuple(slice(r.start + o, r.stop + o) for r, o in zip(region, self.offset))
        if self.flat:
            index = index[1:]
        if self.has_channels:
            index = (slice(None), *index)
        data = self.volume[index]
        if self.flat:
            data = np.expand_dims(data, -3)
        if not self.has_channels:
            data = data[None]
        if self.stats is None:
            return data.astype(np.float32, copy=False)
        return _normalized(data, self.normalize, self.stats)

    def whole(self) -> tuple[slice, slice, slice]:
        return tuple(slice(0, n) for n in self.shape)  # type: ignore[return-value]


_TORCH_NORMALISED = {np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64,
                                            np.float16, np.float32, np.float64)}


def _normalized(data: np.ndarray, mode: str, stats: IntensityStats) -> np.ndarray:
    """``normalize_intensity(data, mode, stats)`` computed in one float32 buffer by torch (both
    cores, no full-size temporaries): the same float32 operations in the same order, so the same
    values. Other dtypes and modes go through ``normalize_intensity`` itself."""
    from ..data.normalize import _affine_for

    if mode not in ("minmax", "percentile", "zscore") or data.dtype not in _TORCH_NORMALISED:
        return normalize_intensity(data, mode, stats)
    offset, scale, clip = _affine_for(mode, stats)
    image = torch.from_numpy(np.ascontiguousarray(data)).to(torch.float32, copy=True)
    image.sub_(float(np.float32(offset))).mul_(float(np.float32(1.0 / scale)))
    if clip:
        image.clamp_(0.0, 1.0)
    return image.numpy()


def prepare_input(volume: Any, in_channels: int, roi: Sequence[slice] | None = None) -> VolumeInput:
    """Open ``volume`` and check it against the network: 3D (z, y, x) or 2D (y, x), with a
    leading channel axis when ``in_channels`` > 1 (statistics are added later, once)."""
    if isinstance(volume, (list, tuple)) and volume and hasattr(volume[0], "shape"):
        logger.info("multiscale data: predicting its full-resolution level")
        volume = volume[0]
    opened = open_volume(volume)
    has_channels, flat = _layout(opened.shape, in_channels, opened.source)
    spatial = opened.shape[1:] if has_channels else opened.shape
    offset, size = _roi_box(roi, (1, *spatial) if flat else spatial)
    return VolumeInput(opened, has_channels, flat, offset, size)


def _layout(shape: tuple[int, ...], in_channels: int, source: str) -> tuple[bool, bool]:
    """(has a channel axis, is a single 2D section) for data of ``shape``, or a one-line error."""
    ndim = len(shape)
    if in_channels == 1:
        if ndim in (2, 3):
            return False, ndim == 2
        if ndim == 4 and shape[0] == 1:
            return True, False
        if ndim == 4:
            raise ValueError(
                f"the checkpoint expects 1 input channel (model.in_channels=1) but {source} has "
                f"{shape[0]} channels on its first axis (shape {_text(shape)}); "
                "give a (z, y, x) volume")
    else:
        if ndim in (3, 4) and shape[0] == in_channels:
            return True, ndim == 3
        if ndim in (3, 4):
            found = f"{shape[0]} channels on its first axis" if ndim == 4 else "no channel axis"
            raise ValueError(
                f"the checkpoint expects {in_channels} input channels "
                f"(model.in_channels={in_channels}) but {source} has {found} "
                f"(shape {_text(shape)}); give a ({in_channels}, z, y, x) array")
    channels = f" with a leading axis of {in_channels} channels" if in_channels > 1 else ""
    raise ValueError(f"cannot predict on {source} of shape {_text(shape)}: give a z, y, x volume "
                     f"or a y, x section{channels}")


def _roi_box(roi: Sequence[slice] | None,
             shape: Sequence[int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Start and size of the region of interest inside a volume of spatial ``shape``."""
    if roi is None:
        return (0, 0, 0), tuple(int(n) for n in shape)  # type: ignore[return-value]
    starts, sizes = [], []
    for axis, (item, n) in enumerate(zip(roi, shape)):
        start, stop, step = item.indices(n)
        if step != 1 or stop <= start:
            raise ValueError(f"roi {item} on axis {'zyx'[axis]} selects no contiguous voxels of "
                             f"a volume {_text(shape)}; give slices with step 1 inside it")
        starts.append(start)
        sizes.append(stop - start)
    return tuple(starts), tuple(sizes)  # type: ignore[return-value]


def _text(sizes: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in sizes)


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockJob:
    """What a process needs to compute blocks, besides the model and the input (picklable)."""

    grid: WindowGrid
    batch_size: int
    blending: str
    padding_mode: str
    activation: str
    tta: bool
    spatial_dims: int
    device: str  # an option ('auto', 'cpu', ...), resolved in the process that runs the block


@lru_cache(maxsize=8)
def _importance(window: tuple[int, ...], blending: str) -> torch.Tensor:
    from monai.data.utils import compute_importance_map

    return compute_importance_map(window, mode=blending, sigma_scale=_SIGMA_SCALE, device="cpu",
                                  dtype=torch.float32)


def compute_block(job: BlockJob, source: VolumeInput, predictor: WindowPredictor, block: Block,
                  check: Callable[[], None] | None = None) -> np.ndarray:
    """Final probabilities (C, *output region) of one block: every window touching it blended."""
    def predict_batch(windows: torch.Tensor) -> torch.Tensor:
        return predictor(windows.to(predictor.device)).cpu()

    with torch.inference_mode():
        mean = stitch_block(job.grid, block.core, source.read, predict_batch,
                            _importance(job.grid.window, job.blending), batch_size=job.batch_size,
                            padding_mode=job.padding_mode, check=check)
        if not predictor.returns_probabilities:
            mean = activate(mean, job.activation, dim=0)
        return mean[(slice(None), *block.crop(job.grid))].numpy()


def _predict_whole(job: BlockJob, source: VolumeInput, predictor: WindowPredictor,
                   progress: Sequence[ProgressCallback], check: Callable[[], None]) -> np.ndarray:
    """MONAI's sliding_window_inference on the whole (in-memory) volume, reporting each batch."""
    from monai.inferers import sliding_window_inference

    windows, done = job.grid.n_windows, 0
    total = math.ceil(windows / job.batch_size)

    def run(batch: torch.Tensor) -> torch.Tensor:
        nonlocal done
        check()
        output = predictor(batch)
        done += 1
        message = f"windows {min(done * job.batch_size, windows)}/{windows}"
        emit(progress, Progress(done, total, message, stage="predict"))
        return output

    with torch.inference_mode():
        inputs = torch.from_numpy(source.read(source.whole()))[None]
        output = sliding_window_inference(
            inputs, roi_size=job.grid.window, sw_batch_size=job.batch_size, predictor=run,
            overlap=job.grid.overlap, mode=job.blending, sigma_scale=_SIGMA_SCALE,
            padding_mode=job.padding_mode, sw_device=predictor.device, device="cpu")[0]
        if not predictor.returns_probabilities:
            output = activate(output, job.activation, dim=0)
        return output.numpy()


def _predict_blocks(job: BlockJob, source: VolumeInput, predictor: WindowPredictor,
                    blocks: Sequence[Block], write: Callable[[tuple[slice, ...], np.ndarray], None],
                    progress: Sequence[ProgressCallback], check: Callable[[], None]) -> None:
    """Blocks one after the other in this process, each written as soon as it is final."""
    for done, block in enumerate(blocks, start=1):
        write(block.output_region(job.grid), compute_block(job, source, predictor, block, check))
        emit(progress, Progress(done, len(blocks), f"block {done}/{len(blocks)}", stage="predict"))


def _predict_slabs(job: BlockJob, source: VolumeInput, predictor: WindowPredictor,
                   slabs: Sequence[Block], write: Callable[[tuple[slice, ...], np.ndarray], None],
                   progress: Sequence[ProgressCallback], check: Callable[[], None],
                   cuts: tuple[Sequence[int], Sequence[int]] = ((), ()),
                   prefetch: bool = True) -> None:
    """Overlap-add over z-slabs in this process: each grid window once; each piece of the output
    (cut at ``cuts``, padded coordinates) written as soon as no later window touches it, even in
    the middle of a slab; with ``prefetch`` the next slab's input is read in the background (see
    :func:`.windows.stitch_regions`)."""
    def predict_batch(windows: torch.Tensor) -> torch.Tensor:
        return predictor(windows.to(predictor.device)).cpu()

    grid = job.grid
    with torch.inference_mode():
        finished = stitch_regions(grid, [block.core[0] for block in slabs], source.read,
                                  predict_batch, _importance(grid.window, job.blending),
                                  batch_size=job.batch_size, padding_mode=job.padding_mode,
                                  check=check, cuts=cuts, prefetch=prefetch)
        with closing(finished):
            for piece in finished:
                if piece.mean is None:
                    done = piece.slab + 1
                    emit(progress, Progress(done, len(slabs), f"slab {done}/{len(slabs)}",
                                            stage="predict"))
                    continue
                assert piece.box is not None
                part = Block(-1, piece.box)
                region = part.output_region(grid)
                if all(r.stop > r.start for r in region):
                    mean = piece.mean[(slice(None), *part.crop(grid))]
                    if not predictor.returns_probabilities:
                        mean = activate(mean, job.activation, dim=0)
                    write(region, mean)


def _piece_cuts(grid: WindowGrid, chunks: Sequence[int]) -> tuple[list[int], list[int]]:
    """z and y chunk edges of the output (spatial ``chunks``) in padded coordinates, where the
    slab path cuts the pieces it writes (none on an axis padded up to the window)."""
    def edges(axis: int) -> list[int]:
        if grid.padded[axis] != grid.shape[axis]:
            return []
        return list(range(chunks[axis], grid.shape[axis], chunks[axis]))

    return edges(0), edges(1)


def _overlap_io(device: torch.device) -> bool:
    """Whether reading and writing run in background threads, overlapping the network: when it
    runs on an accelerator (the CPU mostly waits for it) or leaves a CPU core free. Not when
    torch's threads already use every core: a background thread then preempts one of them while
    the others wait for it at the next barrier, so overlapped I/O costs more than the same I/O
    between two batches (2-core CPU, 64x512x512 Zarr -> Zarr: 3.55 s overlapped, 3.40 s not)."""
    if device.type != "cpu":
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return torch.get_num_threads() < cores


class _WriteNow:
    """The in-thread counterpart of :class:`_WriteBehind` (same interface)."""

    def __init__(self, write: Callable[[tuple[slice, ...], np.ndarray], None]) -> None:
        self.put = write

    def close(self) -> None:
        pass

    def cancel(self) -> None:
        pass


class _WriteBehind:
    """Hands finished regions to ``write`` in a background thread, so that compressing and storing
    them overlaps the next windows (the network and Zarr's codecs release the GIL). At most
    ``depth`` regions wait, so memory stays bounded by a few regions; ``put`` blocks while the
    queue is full. The first error of ``write`` is raised by the next ``put`` or by ``close``;
    ``cancel`` drops what waits and returns once nothing is being written any more."""

    def __init__(self, write: Callable[[tuple[slice, ...], np.ndarray], None],
                 depth: int = 2) -> None:
        self._write = write
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._dropping = False
        self._thread = threading.Thread(target=self._loop, name="napari-connectomics-write",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None or self._dropping:
                continue  # after an error or a cancel: keep draining so put() never blocks
            try:
                self._write(*item)
            except BaseException as err:  # noqa: BLE001 - raised in the caller's thread
                self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, region: tuple[slice, ...], data: np.ndarray) -> None:
        self._raise()
        self._queue.put((region, data))

    def close(self) -> None:
        """Wait until every region is written; raise the first write error."""
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def cancel(self) -> None:
        """Drop the regions still waiting and wait for a write in progress to end."""
        self._dropping = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join()


# -- dask ---------------------------------------------------------------------------------------

_WORKER_MODELS: dict[tuple[str, int, str], Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_model(checkpoint: str, device: torch.device) -> Any:
    """The model of ``checkpoint`` on ``device``, loaded once per worker process and kept."""
    from ..training.checkpoint import load_model_from_checkpoint

    key = (checkpoint, os.stat(checkpoint).st_mtime_ns, str(device))
    with _WORKER_LOCK:
        if key not in _WORKER_MODELS:
            model, _ = load_model_from_checkpoint(checkpoint)
            _WORKER_MODELS[key] = model.eval().to(device)
            logger.info("worker %d loaded %s on %s", os.getpid(), checkpoint, device)
        return _WORKER_MODELS[key]


def _dask_block(checkpoint: str, job: BlockJob, source: VolumeInput, block: Block, sink: Any,
                stop: str) -> int:
    """One dask task: predict a block and write it into the shared Zarr store; -1 when the run
    was cancelled (checked between window batches and before writing)."""
    from distributed import Event

    event = Event(stop)

    def check() -> None:
        if event.is_set():
            raise _Cancelled()

    try:
        check()
        device = resolve_device(job.device)
        predictor = WindowPredictor(_worker_model(checkpoint, device), device, job.spatial_dims,
                                    job.activation, job.tta, job.grid.window)
        probabilities = compute_block(job, source, predictor, block, check)
        check()
    except _Cancelled:
        return -1
    sink.write(block.output_region(job.grid), probabilities)
    return block.index


def _predict_dask(checkpoint: Path, job: BlockJob, source: VolumeInput, blocks: Sequence[Block],
                  sink: Any, address: str | None, progress: Sequence[ProgressCallback],
                  stop_event: threading.Event | None) -> bool:
    """Blocks as dask tasks; True when cancelled. Every task has ended before this returns, so
    the caller may remove the output without a worker still writing into it."""
    from distributed import Client, Event, LocalCluster, wait

    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    client = Client(address or cluster)
    stop_name = f"napari-connectomics-stop-{uuid.uuid4().hex}"
    stop = Event(stop_name, client=client)
    try:
        shared = client.scatter(source, broadcast=True)
        futures = [client.submit(_dask_block, str(checkpoint), job, shared, block, sink,
                                 stop_name, pure=False, key=f"block-{block.index}-{stop_name}")
                   for block in blocks]
        logger.info("%d blocks sent to the dask scheduler %s", len(futures),
                    client.scheduler.address)
        pending, done = set(futures), 0
        try:
            while pending:
                if stop_event is not None and stop_event.is_set():
                    stop.set()
                    wait(futures)
                    return True
                try:
                    finished, pending = wait(pending, timeout=0.25, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for future in finished:
                    future.result()  # a worker's exception is raised here
                    done += 1
                    message = f"block {done}/{len(blocks)}"
                    emit(progress, Progress(done, len(blocks), message, stage="predict"))
        except BaseException:
            stop.set()
            wait(futures)
            raise
        return False
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------------------------
# predict()
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything decided before any output is touched."""

    model: torch.nn.Module
    cfg: Any
    checkpoint: Path | None
    options: PredictOptions
    source: VolumeInput
    job: BlockJob
    blocks: list[Block]  # [] for MONAI's whole-volume inference; z-slabs when ``slabs``
    device: torch.device
    scheduler: str
    slabs: bool = False  # blocks are z-slabs of the whole y-x plane, run by overlap-add

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.cfg.model.out_channels), *self.source.shape)

    @property
    def units(self) -> int:
        """Progress units: blocks, or window batches of the whole-volume path."""
        return len(self.blocks) or math.ceil(self.job.grid.n_windows / self.options.batch_size)


def predict(
    checkpoint_or_model: str | os.PathLike | torch.nn.Module,
    volume: Any,
    options: PredictOptions | None = None,
    progress: Sequence[ProgressCallback] = (),
    stop_event: threading.Event | None = None,
    *,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    cfg: Any = None,
    scheduler: str | None = None,
    address: str | None = None,
) -> PredictionResult:
    """Predict probabilities (C, z, y, x) for ``volume`` (see the module doc for the engines).

    ``checkpoint_or_model``: a checkpoint path (model and config from it), or a model with its
    training config as ``cfg``. ``volume``: a path spec (``raw.h5:raw``), an array (numpy, dask,
    napari layer data) or a Volume. ``output``: ``pred.zarr[:key]`` or ``pred.h5[:key]``,
    written under a temporary name and renamed when complete; an existing one is refused unless
    ``overwrite``. ``stop_event`` cancels between window batches: the partial output is removed
    and the result says ``cancelled=True``. ``scheduler='dask'`` (with ``address`` or a local
    cluster) runs the blocks as dask tasks. Every input error is a one-line ValueError raised
    before any output is touched.
    """
    started = time.perf_counter()
    spec = parse_output(output) if output is not None else None
    if spec is not None:
        check_output(spec, overwrite)
    plan = _make_plan(checkpoint_or_model, volume, options, cfg, spec,
                      _check_scheduler(scheduler, address, spec, checkpoint_or_model))
    writer = _open_writer(plan, spec, overwrite) if spec is not None else None
    result = PredictionResult(None, None, plan.shape[0], plan.job.activation, 0.0,
                              window=plan.job.grid.window, blocks=len(plan.blocks) or 1,
                              device="dask" if plan.scheduler == "dask" else str(plan.device))
    last = _LastProgress()
    try:
        cancelled, in_memory = _run(plan, writer, address, [*progress, last], stop_event)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    result.seconds = time.perf_counter() - started
    if cancelled:
        if writer is not None:
            writer.abort()
        logger.info("prediction cancelled after %.1f s; no output was kept", result.seconds)
        emit(progress, Progress(last.done, plan.units, "stopped", stage="stopped"))
        result.cancelled = True
        return result
    if writer is not None:
        result.output_path = writer.commit()
        result.probabilities = writer.open_result()
    else:
        result.probabilities = in_memory
    result.seconds = time.perf_counter() - started
    emit(progress, Progress(plan.units, plan.units, "done", stage="done"))
    logger.info("prediction finished in %.1f s", result.seconds)
    return result


def _make_plan(checkpoint_or_model: Any, volume: Any, options: PredictOptions | None, cfg: Any,
               spec: OutputSpec | None, scheduler: str) -> _Plan:
    """Load, check and decide; cheap checks first, the intensity statistics last."""
    model, cfg, checkpoint = _load(checkpoint_or_model, cfg)
    options = options if options is not None else PredictOptions.from_config(cfg)
    source = prepare_input(volume, int(cfg.model.in_channels), options.roi)
    if spec is not None:
        _refuse_input_as_output(source.volume, spec)
    spatial_dims = int(cfg.model.spatial_dims)
    window = resolve_window(options.window, _default_window(cfg), source.shape,
                            spatial_dims=spatial_dims,
                            size_multiple=int(getattr(model, "size_multiple", 1) or 1),
                            fixed=getattr(model, "fixed_input_size", None))
    device = resolve_device(options.device) if scheduler == "local" else torch.device("cpu")
    grid = make_grid(source.shape, window, options.overlap)
    job = BlockJob(grid, options.batch_size, options.blending, options.padding_mode,
                   activation_for(cfg), options.tta, spatial_dims, options.device)
    blocks, slabs = _plan_blocks(grid, options, int(cfg.model.in_channels),
                                 int(cfg.model.out_channels), scheduler,
                                 prefetch=scheduler == "local" and _overlap_io(device))
    if scheduler == "local" and (not blocks or len(blocks) == 1):
        source = _read_once(source, options.memory_limit_mb * _MB)
    if cfg.data.normalize != "none":
        source = dataclasses.replace(source, normalize=cfg.data.normalize,
                                     stats=intensity_stats(source.volume))
    plan = _Plan(model, cfg, checkpoint, options, source, job, blocks, device, scheduler, slabs)
    logger.info("predicting %s with window %s, overlap %.2f%s: %s on %s", _text(source.shape),
                _text(window), options.overlap, ", TTA" if options.tta else "",
                (f"{len(blocks)} z-slabs" if slabs else f"{len(blocks)} blocks") if blocks
                else "whole volume",
                "dask" if scheduler == "dask" else device)
    in_memory = math.prod(plan.shape) * np.dtype(options.output_dtype).itemsize
    if spec is None and in_memory > options.memory_limit_mb * _MB:
        logger.warning("the %s result %s is held in memory; pass output='pred.zarr' to write "
                       "it block by block", options.output_dtype, _text(plan.shape))
    return plan


class _HeldVolume:
    """A copy of a stored volume in memory that still reports the store's chunks, so that
    :func:`intensity_stats` samples the very same blocks (and gives the same statistics) from it
    without reading or decompressing anything again."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...] | None) -> None:
        self.data, self.chunks = data, chunks
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.data[index]


def _read_once(source: VolumeInput, limit: int) -> VolumeInput:
    """The input held in memory, for plans that read all of it in one piece anyway (the whole
    volume path, a single slab): the statistics and the prediction then share one read. Only for
    a stored volume predicted whole (no roi) whose copy takes at most a quarter of ``limit``."""
    volume = source.volume
    whole = source.offset == (0, 0, 0) and source.shape == (
        (1, *volume.shape[-2:]) if source.flat else volume.shape[-3:])
    if volume.in_memory or not whole or volume.size * volume.dtype.itemsize > limit // 4:
        return source
    held = _HeldVolume(volume[...], volume.chunks)
    return dataclasses.replace(source, volume=open_volume(held))


def _open_writer(plan: _Plan, spec: OutputSpec, overwrite: bool) -> OutputWriter:
    """The output, in a temporary sibling; chunks align with the blocks (dask writes them)."""
    block = [hi - lo for lo, hi in plan.blocks[0].core] if plan.blocks else None
    options, job = plan.options, plan.job
    attrs: dict[str, Any] = {
        "activation": job.activation, "channels": plan.shape[0],
        "target": str(plan.cfg.data.target), "window": list(job.grid.window),
        "overlap": options.overlap, "blending": options.blending, "tta": options.tta,
    }
    if plan.checkpoint is not None:
        attrs["checkpoint"] = str(plan.checkpoint)
    chunks = choose_chunks(plan.shape[0], plan.source.shape, block)
    return OutputWriter(spec, plan.shape, options.output_dtype, chunks, overwrite, attrs)


class _LastProgress:
    """Remembers how far the run got, for the final 'stopped' report."""

    def __init__(self) -> None:
        self.done = 0

    def __call__(self, progress: Progress) -> None:
        self.done = progress.done


def _run(plan: _Plan, writer: OutputWriter | None, address: str | None,
         progress: Sequence[ProgressCallback],
         stop_event: threading.Event | None) -> tuple[bool, np.ndarray | None]:
    """Run the planned engine; (cancelled, the in-memory result when there is no writer)."""
    job, source, blocks = plan.job, plan.source, plan.blocks
    if plan.scheduler == "dask":
        assert writer is not None and plan.checkpoint is not None
        cancelled = _predict_dask(plan.checkpoint, job, source, blocks, writer.sink(), address,
                                  progress, stop_event)
        return cancelled, None

    def check() -> None:
        if stop_event is not None and stop_event.is_set():
            raise _Cancelled()

    dtype = plan.options.output_dtype
    memory = None if writer is not None else np.zeros(plan.shape, dtype=dtype)
    overlap = _overlap_io(plan.device)
    behind: _WriteBehind | _WriteNow | None = None
    if writer is not None:
        sink = partial(writer.write, stored=True)
        behind = _WriteBehind(sink) if overlap else _WriteNow(sink)

    def write(region: tuple[slice, ...], probabilities: np.ndarray | torch.Tensor) -> None:
        if probabilities.shape[0] != plan.shape[0]:
            raise ValueError(f"the network returned {probabilities.shape[0]} channels but its "
                             f"config says model.out_channels={plan.shape[0]}; pass the config "
                             "it was trained with")
        stored = _stored(torch.as_tensor(probabilities), np.dtype(dtype))
        if behind is not None:
            behind.put(region, stored)
        else:
            memory[(slice(None), *region)] = stored

    try:
        with _model_on(plan.model, plan.device) as model:
            predictor = WindowPredictor(model, plan.device, job.spatial_dims, job.activation,
                                        job.tta, job.grid.window)
            if plan.slabs:
                cuts = _piece_cuts(job.grid, writer.chunks[1:]) if writer is not None else ((), ())
                _predict_slabs(job, source, predictor, blocks, write, progress, check, cuts,
                               prefetch=overlap)
            elif blocks:
                _predict_blocks(job, source, predictor, blocks, write, progress, check)
            else:
                write(source.whole(), _predict_whole(job, source, predictor, progress, check))
        if behind is not None:
            behind, waiting = None, behind
            waiting.close()  # every region written (or a write error raised) before commit
    except _Cancelled:
        return True, None
    finally:
        if behind is not None:  # cancelled or failed: nothing may still write into the output
            behind.cancel()
    return False, memory


def _plan_blocks(grid: WindowGrid, options: PredictOptions, in_channels: int, out_channels: int,
                 scheduler: str, prefetch: bool = True) -> tuple[list[Block], bool]:
    """(blocks, are z-slabs): [] for MONAI's whole-volume inference (when it fits in memory).

    In a single process, blocks become z-slabs of the same z-size spanning the whole y-x plane
    (overlap-add, each window computed once) when their y and x already cover the volume, or when
    such a slab's working memory stays within half of ``memory_limit_mb`` (the rest is headroom
    for the model, the reader and the writer); otherwise blocks stay independent (and always
    with dask, whose tasks must not depend on each other)."""
    limit = options.memory_limit_mb * _MB
    block_size = options.block_size
    if block_size is None:
        if scheduler == "local" and whole_volume_bytes(grid, in_channels, out_channels) <= limit:
            return [], False
        block_size = auto_block_size(grid, in_channels, out_channels, options.batch_size, limit)
        logger.info("volume %s is predicted in blocks of %s", _text(grid.shape),
                    _text(block_size))
    blocks = plan_blocks(grid, block_size)
    if scheduler != "local":
        return blocks, False
    covers = all(blocks[0].core[a][1] - blocks[0].core[a][0] >= grid.padded[a] for a in (1, 2))
    thickness = blocks[0].core[0][1] - blocks[0].core[0][0]
    if covers or slab_bytes(grid, thickness, in_channels, out_channels, options.batch_size,
                            prefetch=prefetch) <= limit // 2:
        slabs = plan_blocks(grid, (thickness, *grid.padded[1:]))
        if not covers:
            logger.info("blocks of %s run as %d z-slabs of %d planes (each window once)",
                        _text(block_size), len(slabs), thickness)
        return slabs, len(slabs) > 0
    return blocks, False


def _default_window(cfg: Any) -> list[int]:
    from ..config import default_patch_size

    for size in (cfg.inference.window_size, cfg.data.patch_size):
        if size is not None:
            return list(size)
    return default_patch_size(int(cfg.model.spatial_dims))


def _load(checkpoint_or_model: Any, cfg: Any) -> tuple[torch.nn.Module, Any, Path | None]:
    """(model, training config, checkpoint path or None)."""
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from ..training.checkpoint import load_model_from_checkpoint

        path = Path(checkpoint_or_model)
        model, checkpoint_cfg = load_model_from_checkpoint(path)
        if cfg is not None:
            logger.warning("cfg= is ignored: %s carries the config its model was trained with",
                           path)
        return model, checkpoint_cfg, path
    if not isinstance(checkpoint_or_model, torch.nn.Module):
        raise ValueError("predict takes a checkpoint path or a torch model, "
                         f"not {type(checkpoint_or_model).__name__}")
    if cfg is None:
        raise ValueError("a model object needs its training config: pass cfg= "
                         "(or give the checkpoint path instead)")
    from ..config import as_config

    return checkpoint_or_model, as_config(cfg), None


def _check_scheduler(scheduler: str | None, address: str | None, spec: OutputSpec | None,
                     checkpoint_or_model: Any) -> str:
    scheduler = scheduler or "local"
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
    if scheduler == "local":
        if address is not None:
            raise ValueError("address= is for scheduler='dask'; "
                             "pass scheduler='dask' (--scheduler dask) with it")
        return scheduler
    if spec is None or spec.kind != "zarr":
        where = ("no output was given" if spec is None
                 else f"{spec.path} is HDF5, which several processes cannot write")
        raise ValueError(f"scheduler='dask' writes blocks into a shared Zarr store but {where}; "
                         "pass output='pred.zarr' (--output pred.zarr)")
    if not isinstance(checkpoint_or_model, (str, os.PathLike)):
        raise ValueError("scheduler='dask' loads the model on each worker from a checkpoint: "
                         "pass the checkpoint path, not a model object")
    return scheduler


def _refuse_input_as_output(volume: Volume, spec: OutputSpec) -> None:
    """Overwriting the file being read would destroy the input."""
    source, _ = parse_volume_path(volume.source)
    if source.exists() and spec.path.exists() and source.resolve() == spec.path.resolve():
        raise ValueError(f"the output {spec.path} is the input file; "
                         "write the prediction to another file")

"""The input volume as the engines see it: opened, checked against the network, cut to the
region of interest, read as normalised float32 (C, z, y, x).

With 2.5D context (:class:`~napari_connectomics.data.sections.SectionContext`) C holds each image
channel's neighbouring sections, read by the reader the training patches use. A view may be
transposed (:meth:`VolumeInput.transposed`, for tri-planar prediction): its z, y, x are then other
axes of the volume, and the context runs along its own z, the normal of its planes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.checks import check_not_rgb
from ..data.normalize import IntensityStats, read_normalized
from ..data.sections import SectionContext
from ..data.volumes import Volume, open_volume

__all__ = ["VolumeInput", "prepare_input", "read_once", "shape_text"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeInput:
    """The input as the engines see it: spatial ``shape`` (z, y, x) of the region to predict,
    read as normalised float32 (C, z, y, x). Picklable (for dask workers).

    ``offset`` and ``shape`` are in the view's axis order: view axis i is the volume's (z, y, x)
    axis ``axes[i]``."""

    volume: Volume
    has_channels: bool
    flat: bool  # a single 2D section (y, x): read as z = 1
    offset: tuple[int, int, int]  # start of the region (roi) in the volume
    shape: tuple[int, int, int]
    normalize: str = "none"
    stats: IntensityStats | None = None
    context: SectionContext = SectionContext()
    axes: tuple[int, int, int] = (0, 1, 2)

    def read(self, region: Sequence[slice]) -> np.ndarray:
        index = tuple(slice(r.start + o, r.stop + o) for r, o in zip(region, self.offset))
        extent = self._volume_shape()[self.axes[0]]  # context is clamped at the volume's ends
        data = self.context.read(lambda z: self._read_view((z, *index[1:])), index[0], extent)
        if self.volume.dtype.kind == "f" and not np.isfinite(data).all():  # NaN out, silently, otherwise
            where = ", ".join(f"{'zyx'[a]} {s.start}:{s.stop}" for a, s in zip(self.axes, index))
            raise ValueError(f"the image {self.volume.source} holds NaN or infinite values (in {where}) that "
                             "reach the network; replace them (e.g. numpy.nan_to_num) before predicting")
        return data

    def whole(self) -> tuple[slice, slice, slice]:
        return tuple(slice(0, n) for n in self.shape)  # type: ignore[return-value]

    def transposed(self, axes: Sequence[int]) -> VolumeInput:
        """The same input seen with this view's axes ``axes`` as its z, y, x (a permutation)."""
        order = tuple(int(a) for a in axes)
        if sorted(order) != [0, 1, 2]:
            raise ValueError(f"axes must be a permutation of 0, 1, 2, got {list(axes)}")
        return dataclasses.replace(
            self, offset=tuple(self.offset[a] for a in order), shape=tuple(self.shape[a] for a in order),
            axes=tuple(self.axes[a] for a in order))  # type: ignore[arg-type]

    def _volume_shape(self) -> tuple[int, ...]:
        return (1, *self.volume.shape[-2:]) if self.flat else tuple(self.volume.shape[-3:])

    def _read_view(self, index: Sequence[slice]) -> np.ndarray:
        """The view's region ``index`` (absolute, view order) as (C, z, y, x) in view order."""
        spatial: list[slice] = [slice(None)] * 3
        for axis, item in zip(self.axes, index):
            spatial[axis] = item
        data = read_normalized(self.volume, spatial[1:] if self.flat else spatial,
                               has_channels=self.has_channels, flat=self.flat,
                               mode=self.normalize, stats=self.stats, copy=False)
        if self.axes == (0, 1, 2):
            return data
        return np.ascontiguousarray(data.transpose(0, *(1 + a for a in self.axes)))


def prepare_input(volume: Any, in_channels: int, roi: Sequence[slice] | None = None,
                  context: SectionContext = SectionContext()) -> VolumeInput:
    """Open ``volume`` and check it against the network: 3D (z, y, x) or 2D (y, x), with a
    leading channel axis when ``in_channels`` (the image's channels) > 1; ``context`` adds each
    section's neighbours as channels (statistics are added later, once)."""
    if isinstance(volume, (list, tuple)) and volume and hasattr(volume[0], "shape"):
        logger.info("multiscale data: predicting its full-resolution level")
        volume = volume[0]
    opened = open_volume(volume)
    if in_channels == 1 or opened.ndim == 3:  # (c, z, y, x) of a multi-channel network may end in x = 3
        check_not_rgb(opened.shape, opened.source)
    has_channels, flat = _layout(opened.shape, in_channels, opened.source)
    spatial = opened.shape[1:] if has_channels else opened.shape
    offset, size = _roi_box(roi, (1, *spatial) if flat else spatial)
    return VolumeInput(opened, has_channels, flat, offset, size, context=context)


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
                f"{shape[0]} channels on its first axis (shape {shape_text(shape)}); "
                "give a (z, y, x) volume")
    else:
        if ndim in (3, 4) and shape[0] == in_channels:
            return True, ndim == 3
        if ndim in (3, 4):
            found = f"{shape[0]} channels on its first axis" if ndim == 4 else "no channel axis"
            raise ValueError(
                f"the checkpoint expects {in_channels} input channels "
                f"(model.in_channels={in_channels}) but {source} has {found} "
                f"(shape {shape_text(shape)}); give a ({in_channels}, z, y, x) array")
    channels = f" with a leading axis of {in_channels} channels" if in_channels > 1 else ""
    raise ValueError(f"cannot predict on {source} of shape {shape_text(shape)}: "
                     "give a z, y, x volume "
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
                             f"a volume {shape_text(shape)}; give slices with step 1 inside it")
        starts.append(start)
        sizes.append(stop - start)
    return tuple(starts), tuple(sizes)  # type: ignore[return-value]


def shape_text(sizes: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in sizes)


class _HeldVolume:
    """A copy of a stored volume in memory that still reports the store's chunks, so that
    :func:`intensity_stats` samples the very same blocks (and gives the same statistics) from it
    without reading or decompressing anything again."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...] | None) -> None:
        self.data, self.chunks = data, chunks
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.data[index]


def read_once(source: VolumeInput, limit: int) -> VolumeInput:
    """The input held in memory, for plans that read all of it in one piece anyway (the whole
    volume path, a single slab): the statistics and the prediction then share one read. Only for
    a stored volume predicted whole (no roi) whose copy takes at most a quarter of ``limit``."""
    volume = source.volume
    whole = source.offset == (0, 0, 0) and source.shape == (
        (1, *volume.shape[-2:]) if source.flat else volume.shape[-3:])
    if volume.in_memory or not whole or volume.size * volume.dtype.itemsize > limit // 4:
        return source
    held = open_volume(_HeldVolume(volume[...], volume.chunks))
    held.source = volume.source  # errors still name the file
    held.scale, held.translate = volume.scale, volume.translate  # and the voxel grid is kept
    return dataclasses.replace(source, volume=held)

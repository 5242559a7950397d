"""Tri-planar prediction: a 2D network predicts a volume as stacks of xy, xz and yz planes, and
the three probability volumes are averaged (``PredictOptions.triplanar``, ``--triplanar``).

Each plane is a transposed view of the same input (:meth:`.input.VolumeInput.transposed`, one
set of intensity statistics): its z is the plane's normal, so the sliding windows, test-time
augmentation and 2.5D context sections run in that plane and along that normal. Each plane is
predicted as float32 in memory, transposed back and summed, and the mean ``(xy + xz + yz) / 3``
is stored in the output dtype, so the result equals averaging three predictions of transposed
copies of the input. Memory holds the sum and one plane's result, so a region whose two float32
probability volumes exceed ``memory_limit_mb`` is refused; so are a dask scheduler and resuming.

Meant for isotropic volumes (FIB-SEM): with anisotropic voxels the xz and yz planes are
stretched along z compared with the xy sections the network learnt, which is warned about.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
import numpy as np

from ..progress import Progress, ProgressCallback, emit
from .input import VolumeInput, shape_text

__all__ = ["ANISOTROPY_WARNING", "MIN_PLANE_HEIGHT_SHARE", "PLANES", "check_triplanar", "check_triplanar_run", "offset_progress",
           "to_volume_order", "triplanar_bytes"]

logger = logging.getLogger(__name__)

# plane -> the volume's axes (z, y, x) that become the view's z (the plane's normal), y and x
PLANES: dict[str, tuple[int, int, int]] = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}
# z spacing / in-plane spacing from which the xz and yz planes look unlike the xy sections
ANISOTROPY_WARNING = 1.5
# The xz and yz planes are as high as the region has sections; below this share of the window the
# network learnt on they mislead it: on Lucchi, planes 64 high for a 256 px window lifted the IoU
# (0.873 against 0.859 for xy alone), 32 high gave an empty segmentation (0.0 against 0.74).
MIN_PLANE_HEIGHT_SHARE = 0.25


def check_triplanar(spatial_dims: int, source: VolumeInput, voxel_size: Sequence[float],
                    window: Sequence[int]) -> None:
    """One-line refusals for inputs tri-planar prediction cannot take (``window``: the 2D network's
    window, whose height the xz and yz planes should reach); a warning for anisotropy."""
    if spatial_dims != 2:
        raise ValueError("tri-planar prediction runs a 2D network on xy, xz and yz planes but this "
                         "checkpoint holds a 3D network; drop triplanar (--triplanar)")
    if source.flat or min(source.shape) < 2:
        raise ValueError(f"tri-planar prediction needs a volume (region) with at least 2 voxels on "
                         f"each axis, not {shape_text(source.shape)}; predict a z-stack, or drop "
                         "triplanar (--triplanar)")
    height = min(int(n) for n in window[-2:])
    needed = math.ceil(MIN_PLANE_HEIGHT_SHARE * height)
    if source.shape[0] < needed:
        raise ValueError(f"tri-planar prediction of {source.shape[0]} sections: its xz and yz planes would be "
                         f"{source.shape[0]} px high, too little of the {height} px window the network learnt "
                         f"on; predict at least {needed} sections (a larger --roi) or drop triplanar (--triplanar)")
    z, y, x = (float(v) for v in voxel_size)
    if z >= ANISOTROPY_WARNING * min(y, x):
        logger.warning("tri-planar prediction on anisotropic voxels (z-y-x %s): the xz and yz planes "
                       "are stretched along z compared with the sections the network learnt",
                       ", ".join(f"{v:g}" for v in voxel_size))


def check_triplanar_run(scheduler: str, resume: bool, shape: Sequence[int], channels: int,
                        memory_limit_mb: int) -> None:
    """The ways of running that tri-planar prediction does not support, each one line."""
    if scheduler != "local":
        raise ValueError("tri-planar prediction runs in this process: drop --scheduler dask "
                         "(scheduler='dask') or triplanar (--triplanar)")
    if resume:
        raise ValueError("a tri-planar prediction cannot be resumed (it averages three whole "
                         "predictions in memory): drop --resume (resume=True)")
    need = triplanar_bytes(shape, channels)
    if need > memory_limit_mb * 2**20:
        raise ValueError(f"tri-planar prediction averages the planes in memory: {channels}x"
                         f"{shape_text(shape)} probabilities need {need / 2**20:.0f} MB, more than "
                         f"the {memory_limit_mb} MB memory limit; raise --memory-limit "
                         "(memory_limit_mb) or predict a smaller --roi")


def triplanar_bytes(shape: Sequence[int], channels: int) -> int:
    """Memory of the running sum and one plane's result (float32)."""
    return 2 * 4 * channels * math.prod(int(n) for n in shape)


def to_volume_order(probabilities: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """A view's (C, z, y, x) result with the volume's axis order back (``axes`` as in :data:`PLANES`)."""
    return probabilities.transpose(0, *(1 + int(np.argsort(axes)[i]) for i in range(3)))


def offset_progress(progress: Sequence[ProgressCallback], plane: str, before: int,
                    total: int) -> ProgressCallback:
    """A callback that reports one plane's progress as part of all three (``before`` units done)."""
    def report(update: Progress) -> None:
        if update.stage != "done":
            emit(progress, Progress(before + update.done, total, f"{plane}: {update.message}",
                                    stage=update.stage))

    return report

"""Smoothing the probabilities along z (``PredictOptions.z_smoothing``, ``--z-smoothing``).

A 2D network predicts each section alone, so on an isotropic stack (FIB-SEM) its probabilities
jump from one section to the next where the object does not. A Gaussian along z (sigma in
sections) evens them out before a threshold or instances are taken from them: on the Lucchi
held-out slices the CPU recipe's foreground IoU went from 0.872 to 0.890 at sigma 2
(docs/benchmarks.md). The filter is linear, so class probabilities still sum to one. On
thin-section stacks, whose sections are several pixels apart, sigma should stay well below 1.

A result in memory is filtered whole. An output store is filtered in place after prediction and
before it is committed, in z-slabs spanning the y-x plane, each read with the sections the kernel
reaches on either side; the original values of the last sections of a slab are kept before they
are overwritten, for the next slab. So a volume larger than memory is filtered in slabs, with the
same result as filtering it whole (up to the stored dtype's rounding). Each slab is reported as
progress, and Stop is honoured between slabs (the half-filtered output is then discarded).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .input import shape_text
from .stores import to_storage

__all__ = ["kernel_radius", "slab_sections", "smooth_along_z", "smooth_store_along_z"]

logger = logging.getLogger(__name__)

_TRUNCATE = 4.0  # scipy's default: the kernel reaches 4 sigma


def kernel_radius(sigma: float) -> int:
    """Sections the kernel reaches on either side (scipy's rule for ``truncate``)."""
    return int(_TRUNCATE * float(sigma) + 0.5)


def smooth_along_z(probabilities: np.ndarray, sigma: float) -> np.ndarray:
    """(C, z, y, x) probabilities smoothed along z (Gaussian, ``sigma`` sections; the end
    sections repeat outwards), as float32."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if sigma <= 0 or probabilities.shape[1] < 2:
        return probabilities
    return ndi.gaussian_filter1d(probabilities, float(sigma), axis=1, mode="nearest", truncate=_TRUNCATE)


def slab_sections(shape: tuple[int, ...], sigma: float, memory_limit_mb: int) -> int:
    """Sections per slab of a (C, z, y, x) store so that a slab with its margins, and its filtered
    copy, stay within half of ``memory_limit_mb``; raises (one line) when not even one section fits."""
    section = 4 * shape[0] * math.prod(shape[2:])  # float32 bytes of one section
    margins = 2 * kernel_radius(sigma)
    sections = int(memory_limit_mb * 2**20 // 2 // (2 * section)) - margins
    if sections < 1:
        need = 2 * 2 * section * (1 + margins) / 2**20
        raise ValueError(f"smoothing {shape_text(shape[1:])} along z with sigma {sigma:g} reads "
                         f"{1 + margins} sections at a time: it needs a memory limit of at least "
                         f"{math.ceil(need)} MB, not {memory_limit_mb} MB; raise --memory-limit "
                         "(memory_limit_mb), lower --z-smoothing or predict a smaller --roi")
    return min(sections, shape[1])


def smooth_store_along_z(array: Any, sigma: float, memory_limit_mb: int, value_scale: float = 1.0, *,
                         sections: int | None = None, report: Callable[[int, int], None] | None = None,
                         stop_event: threading.Event | None = None) -> bool:
    """Filter a written (C, z, y, x) probability array in place, slab by slab (see the module doc);
    True when ``stop_event`` stopped it (the array is then half filtered: discard it).

    ``value_scale``: the stored value of probability 1 (255 for uint8 stores); ``sections``: the
    slab's thickness (default: what ``memory_limit_mb`` allows, :func:`slab_sections`);
    ``report(slabs done, slabs)`` after each slab."""
    channels, depth = int(array.shape[0]), int(array.shape[1])
    radius = kernel_radius(sigma)
    if sigma <= 0 or depth < 2 or radius == 0:
        return False
    step = sections or slab_sections(tuple(int(n) for n in array.shape), sigma, memory_limit_mb)
    stored = np.dtype(array.dtype)
    logger.info("smoothing %dx%s along z (sigma %g sections) in slabs of %d", channels,
                shape_text(array.shape[1:]), sigma, step)
    before: np.ndarray | None = None  # original values of the sections just above the slab
    slabs = -(-depth // step)
    for index, start in enumerate(range(0, depth, step)):
        if stop_event is not None and stop_event.is_set():
            return True
        stop = min(start + step, depth)
        after = min(stop + radius, depth)
        below = np.asarray(array[:, start:after], dtype=np.float32) / value_scale  # still original
        above = before if before is not None else below[:, :0]
        window = np.concatenate([above, below], axis=1)
        end = above.shape[1] + stop - start  # the window's sections up to the slab's end
        smoothed = smooth_along_z(window, sigma)[:, above.shape[1]:end]
        before = window[:, max(0, end - radius):end]
        array[:, start:stop] = to_storage(smoothed, stored)
        if report is not None:
            report(index + 1, slabs)
    return False

"""Checks of training volumes that must fail early with a clear message, read block by block."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .volumes import Volume

__all__ = ["check_finite", "check_not_rgb", "check_patch_fits", "label_range"]

_BLOCK_VOXELS = 8_000_000


def _blocks(volume: Volume) -> Iterator[np.ndarray]:
    """Consecutive z-slabs of about 8 M voxels, so a large lazy volume is never loaded whole."""
    if volume.ndim == 0 or volume.shape[0] == 0:
        return
    per_z = max(1, int(np.prod(volume.shape[1:])))
    step = max(1, _BLOCK_VOXELS // per_z)
    for z in range(0, volume.shape[0], step):
        yield volume[z:z + step]


def label_range(volume: Volume) -> tuple[int, int]:
    """Smallest and largest label value."""
    low, high = None, None
    for block in _blocks(volume):
        if block.size:
            b_low, b_high = int(block.min()), int(block.max())
            low = b_low if low is None else min(low, b_low)
            high = b_high if high is None else max(high, b_high)
    return (low or 0, high or 0)


def check_finite(volume: Volume) -> None:
    """Refuse images with NaN or infinite values (they would poison every loss)."""
    if not np.issubdtype(volume.dtype, np.floating):
        return
    for block in _blocks(volume):
        if not np.isfinite(block).all():
            raise ValueError(f"the image {volume.source} contains NaN or infinite values; "
                             "replace them (e.g. numpy.nan_to_num) before training")


def check_not_rgb(shape: tuple[int, ...], source: str) -> None:
    """Refuse a colour image (a last axis of 3 or 4 values after a real y axis, as napari reads RGB):
    read as z-y-x it would be segmented as a volume 3 voxels wide, without a word."""
    shape = tuple(int(n) for n in shape)
    if len(shape) in (3, 4) and shape[-1] in (3, 4) and shape[-2] > 4:
        size = "x".join(map(str, shape))
        raise ValueError(f"{source} of shape {size} looks like a colour (RGB) image: its last axis "
                         f"holds {shape[-1]} values; convert it to grey values (e.g. "
                         "image.mean(axis=-1)), or for a multi-channel network put the channels "
                         "first (numpy.moveaxis(image, -1, 0))")


def check_patch_fits(volume: Volume, patch_size: list[int], spatial_dims: int, has_channels: bool) -> None:
    """A 3D patch cannot be padded out of a single section: that needs a 2D network (a colour image is
    refused first: its colour axis is no section)."""
    check_not_rgb(volume.shape, volume.source)
    shape = volume.shape[1:] if has_channels else volume.shape
    if spatial_dims == 3 and (len(shape) < 3 or shape[0] == 1) and patch_size[0] > 1:
        raise ValueError(f"data.patch_size asks for {patch_size[0]} z-sections but {volume.source} has a single "
                         "section; use model.spatial_dims=2 (a slice-wise network) or a z-stack")

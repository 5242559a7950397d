"""napari writers: one Labels or Image layer to ``.h5`` / ``.hdf5``, ``.zarr`` or ``.tif`` / ``.tiff``.

``.ome.zarr`` is written as an OME-Zarr image with a pyramid (labels subsampled, images averaged)
whose coordinateTransformations carry the layer's ``scale`` and ``translate``.

* Labels are stored as uint16 when every id fits (0..65535), else uint32 (DESIGN.md: never int64);
  negative ids or ids above 2**32-1 raise a ValueError that says so. Images keep their dtype.
* In HDF5 / Zarr the array is named after the layer, sanitised to ``[A-Za-z0-9_.-]`` (``labels`` /
  ``image`` when nothing usable is left); the layer's ``scale`` and ``translate`` go into the
  array's attributes (our reader reads them back). TIFF holds the bare array.
* The file is written to a hidden temporary sibling and renamed onto the target, so a failed or
  interrupted write never leaves a half-written file; an existing target is replaced (napari has
  already asked the user before overwriting). The writing itself is :func:`.data.volume_io.write_volume`.
* Each writer returns the list of written paths.

Dask-backed layers are written block by block (never read whole into memory) for HDF5 and Zarr.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .data.volume_io import TIFF_SUFFIXES, ZARR_SUFFIXES, write_volume

__all__ = ["label_dtype", "safe_array_name", "write_image", "write_labels"]

_H5 = (".h5", ".hdf5")  # not .hdf: napari offers these two
_ZARR = ZARR_SUFFIXES
_TIFF = TIFF_SUFFIXES


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Labels layer (uint16 when the ids fit, else uint32)."""
    data = _full_resolution(data, meta)
    dtype = label_dtype(data)
    return _write(path, data.astype(dtype, copy=False), meta, default_name="labels", pyramid="stride")


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an Image layer in its own dtype."""
    return _write(path, _full_resolution(data, meta), meta, default_name="image", pyramid="mean")


def label_dtype(data: Any) -> np.dtype:
    """uint16 when all ids lie in 0..65535, uint32 when in 0..2**32-1; else a ValueError."""
    if np.dtype(data.dtype).kind == "b" or data.size == 0:
        return np.dtype(np.uint16)
    if np.dtype(data.dtype).kind not in "iu":
        raise ValueError(f"labels must be integers, not {data.dtype}")
    low, high = _min_max(data)
    if low < 0:
        raise ValueError(f"labels hold a negative id ({low}); label ids must be 0 or positive")
    if high <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if high <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    raise ValueError(f"label id {high} does not fit uint32; relabel the ids to 0..{np.iinfo(np.uint32).max}")


def safe_array_name(name: Any, default: str) -> str:
    """The layer name reduced to ``[A-Za-z0-9_.-]`` (a usable HDF5 / Zarr key), else ``default``."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name or "")).strip("._-")
    return text if text and text.lower() != "zarr.json" else default


def _full_resolution(data: Any, meta: dict[str, Any]) -> Any:
    if meta.get("multiscale") or isinstance(data, list | tuple):
        data = data[0]
    return data if hasattr(data, "dtype") else np.asarray(data)


def _min_max(data: Any) -> tuple[int, int]:
    if hasattr(data, "compute"):
        import dask

        low, high = dask.compute(data.min(), data.max())
    else:
        array = np.asarray(data)
        low, high = array.min(), array.max()
    return int(low), int(high)


def _write(path: str, data: Any, meta: dict[str, Any], default_name: str,
           pyramid: str | None = None) -> list[str]:
    target = Path(os.fsdecode(path))
    if target.suffix.lower() not in _H5 + _ZARR + _TIFF:
        raise ValueError(f"cannot write {target}: napari-connectomics writes .h5, .hdf5, .zarr, .tif or .tiff")
    key = safe_array_name(meta.get("name"), default_name)
    written = write_volume(target, key, data, attrs=_spatial_attrs(meta, data.ndim),
                           rgb=bool(meta.get("rgb")), pyramid=pyramid)
    return [str(written)]


def _spatial_attrs(meta: dict[str, Any], ndim: int) -> dict[str, list[float]]:
    attrs: dict[str, list[float]] = {}
    for name in ("scale", "translate"):
        value = meta.get(name)
        if value is not None and len(value) == ndim:
            attrs[name] = [float(v) for v in value]
    return attrs

"""The annotations a run trained on, kept in its run folder so the run repeats headless.

The Train panel (napari layers) and :func:`~napari_connectomics.training.train` given in-memory
arrays both write them here: one HDF5 file per image/label pair (``annotations.h5``, then
``annotations_2.h5``, ...), images uncompressed (read at random), labels gzip-compressed (mostly 0).
The run's ``config.yaml`` names the arrays as ``<file>:<name>`` specs. h5py is imported on write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .volume_io import create_array, create_container, write_data

__all__ = ["ANNOTATIONS_FILE", "annotations_path", "write_annotations"]

ANNOTATIONS_FILE = "annotations.h5"


def annotations_path(run_dir: Path, index: int = 0) -> Path:
    """The file of pair ``index`` (0-based) in a run folder."""
    return Path(run_dir) / (ANNOTATIONS_FILE if index == 0 else f"annotations_{index + 1}.h5")


def write_annotations(path: Path, arrays: Mapping[str, Any], *, attrs: Mapping[str, Any] | None = None,
                      scale: Sequence[float] = (), translate: Sequence[float] = ()) -> dict[str, str]:
    """Write named arrays (numpy or lazy) into a new HDF5 file; return ``name -> 'path:name'``.

    Names ending in ``image`` are stored uncompressed, the others (labels) compressed. ``attrs`` go
    on the file; ``scale``/``translate`` (napari layer geometry) on ``image`` and ``label``.
    """
    specs: dict[str, str] = {}
    with create_container(Path(path), "hdf5") as f:
        for name, data in arrays.items():
            _write(f, name, data, compress=not name.endswith("image"))
            specs[name] = f"{path}:{name}"
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        if scale:
            for name in ("image", "label"):
                if name in f:
                    f[name].attrs["scale"] = list(scale)
                    f[name].attrs["translate"] = list(translate or [0.0] * len(scale))
    return specs


def _write(group: Any, name: str, data: Any, *, compress: bool) -> None:
    """Write an array (numpy, or any lazy array) in blocks so memory stays bounded."""
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    shape = tuple(int(n) for n in data.shape)
    dataset = create_array(group, name, shape, np.dtype(data.dtype), chunks=True, gzip=1 if compress else None)
    write_data(dataset, data)

"""Writing volumes: the one place that creates HDF5 files, Zarr stores (plain, or OME-Zarr images
with a pyramid through :mod:`.ome_zarr`) and TIFF files.

Reading goes through :mod:`.volumes` (:func:`~.volumes.open_volume`); everything that writes a
volume (napari's writer, prediction outputs, labels beside them, the annotations a training run
keeps) goes through the helpers here, so formats, chunking and the "temporary name, then rename"
rule are written once.

Files are never half-written under their final name: whole files and stores are made under a
hidden sibling (:func:`partial_sibling`) and moved into place by :func:`replace_path`, which
moves an existing target aside first and puts it back if the move fails.

napari imports the writer at start-up: h5py, zarr, tifffile and dask are imported only when a
file of their kind is written.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "HDF5_SUFFIXES",
    "OME_ZARR_SUFFIX",
    "TIFF_SUFFIXES",
    "ZARR_SUFFIXES",
    "close_container",
    "create_array",
    "create_container",
    "delete_array",
    "exists",
    "is_hdf5",
    "kind_of",
    "move_array",
    "open_array",
    "open_container",
    "partial_sibling",
    "remove",
    "replace_path",
    "volume_chunks",
    "write_data",
    "write_volume",
]

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIXES = (".zarr",)
OME_ZARR_SUFFIX = ".ome.zarr"  # a Zarr store holding an OME-Zarr image (see .ome_zarr)
TIFF_SUFFIXES = (".tif", ".tiff")
COPY_SECTIONS = 16  # leading-axis sections copied at a time from a lazy array (bounded memory)


# --------------------------------------------------------------------------------------------
# Paths: temporary siblings, atomic replacement
# --------------------------------------------------------------------------------------------


def exists(path: Path) -> bool:
    """True for an existing path or a dangling symlink (both block a rename onto the name)."""
    return path.exists() or path.is_symlink()


def remove(path: Path, ignore_errors: bool = False) -> None:
    """Delete a file, a store (folder) or a link; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    elif exists(path):
        path.unlink()


def partial_sibling(path: Path, tag: str = "partial", keep_suffix: bool = False) -> Path:
    """A hidden temporary name beside ``path`` (same folder, so the final rename is atomic)."""
    suffix = path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}{suffix}")


def replace_path(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an existing target is moved aside first (and put back if the
    move fails), so the final name never holds a partial file or store."""
    if not exists(target):
        os.rename(source, target)
        return
    old = partial_sibling(target, "old")
    remove(old)
    os.rename(target, old)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(old, target)
        raise
    remove(old)


# --------------------------------------------------------------------------------------------
# Containers and arrays (Zarr groups, HDF5 files)
# --------------------------------------------------------------------------------------------


def is_hdf5(container: Any) -> bool:
    """Whether ``container`` (a group or an array) belongs to h5py rather than zarr."""
    return type(container).__module__.startswith("h5py")


def create_container(path: Path, kind: str) -> Any:
    """A new, empty Zarr group, HDF5 file or folder of precomputed volumes at ``path`` (an
    existing one is replaced); an HDF5 file must be closed by the caller."""
    if kind == "precomputed":
        from .precomputed import PrecomputedGroup

        remove(path)
        path.mkdir(parents=True)
        return PrecomputedGroup(path)
    if kind == "zarr":
        import zarr

        return zarr.open_group(str(path), mode="w")
    import h5py

    return h5py.File(path, "w")


def open_container(path: Path, kind: str) -> Any:
    """A Zarr group, an HDF5 file or a folder of precomputed volumes opened for appending."""
    if kind == "precomputed":
        from .precomputed import PrecomputedGroup

        return PrecomputedGroup(path)
    if kind == "zarr":
        import zarr

        return zarr.open_group(str(path), mode="a")
    import h5py

    try:
        return h5py.File(path, "a")
    except OSError as err:
        if "already open" not in str(err):
            raise
        raise ValueError(f"{path} is open for reading in this process (e.g. a "
                         "PredictionResult's probabilities); close it first: "
                         "result.probabilities.file.close()") from None


def open_array(path: Path, key: str, kind: str, mode: str = "r") -> Any:
    """A stored array: zarr.Array, h5py.Dataset (its file stays open), or a precomputed volume
    ``path/key`` (:class:`.precomputed.TensorArray`, (c,) z, y, x)."""
    if kind == "precomputed":
        from .precomputed import open_output_array

        return open_output_array(Path(path) / key, writable=mode != "r")
    if kind == "zarr":
        import zarr

        return zarr.open_array(str(path), mode=mode, path=key)
    import h5py

    return h5py.File(path, mode)[key]


def create_array(container: Any, key: str, shape: Sequence[int], dtype: Any, *,
                 chunks: Any = None, fill_value: Any = None, gzip: int | bool | None = None,
                 shuffle: bool = False, attrs: Mapping[str, Any] | None = None,
                 overwrite: bool = False, zarr_options: Mapping[str, Any] | None = None) -> Any:
    """A new array ``key`` in a Zarr group or an HDF5 file.

    ``chunks`` None lets the library choose (Zarr: "auto"); ``gzip`` is HDF5's compression level
    (True: h5py's default level, None: none); ``zarr_options`` go to Zarr only (codecs, config).
    Every caller keeps its own storage choices; the mechanics are written once.
    """
    shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
    if is_hdf5(container):
        options: dict[str, Any] = {"chunks": chunks}
        if fill_value is not None:
            options["fillvalue"] = fill_value
        if gzip is not None and gzip is not False:
            options["compression"] = "gzip"
            if gzip is not True:
                options["compression_opts"] = int(gzip)
        if shuffle:
            options["shuffle"] = True
        if overwrite and key in container:
            del container[key]
        array = container.create_dataset(key, shape=shape, dtype=dtype, **options)
        if attrs:
            array.attrs.update(dict(attrs))
        return array
    options = {"chunks": chunks if chunks is not None else "auto", **dict(zarr_options or {})}
    if fill_value is not None:
        options["fill_value"] = fill_value
    if attrs:
        options["attributes"] = dict(attrs)
    if overwrite:
        options["overwrite"] = True
    return container.create_array(key, shape=shape, dtype=dtype, **options)


def close_container(container: Any) -> None:
    """Close an HDF5 file; a Zarr group holds no handle."""
    if container is not None and is_hdf5(container):
        container.close()


def delete_array(container: Any, key: str) -> None:
    """Remove the array ``key`` from a Zarr group or an HDF5 file, if there is one."""
    if key in container:
        del container[key]


def move_array(container: Any, source: str, target: str, path: Path) -> None:
    """Rename an array inside the Zarr store or HDF5 file at ``path`` (``container`` open on it);
    the target name must be free."""
    if is_hdf5(container):
        container.move(source, target)
    else:
        os.rename(Path(path) / source, Path(path) / target)


def write_data(target: Any, data: Any, sections: int = COPY_SECTIONS) -> None:
    """Copy ``data`` (numpy, dask or any lazy array) into the array ``target`` without holding a
    lazy array whole in memory: dask by blocks, other lazy arrays by ``sections`` leading-axis
    sections at a time."""
    if not hasattr(data, "shape"):
        data = np.asarray(data)
    if data.size == 0:
        return
    if isinstance(data, np.ndarray) or not data.shape:
        target[...] = np.asarray(data)
    elif hasattr(data, "compute"):
        import dask.array as da

        da.store(data, target, lock=is_hdf5(target))  # h5py is not thread-safe
    else:
        for start in range(0, data.shape[0], sections):
            target[start:start + sections] = np.asarray(data[start:start + sections])


# --------------------------------------------------------------------------------------------
# A whole volume in one file
# --------------------------------------------------------------------------------------------


def kind_of(path: Path) -> str | None:
    """'hdf5', 'zarr', 'ome-zarr' (a name ending in .ome.zarr) or 'tiff' from the suffix; None
    for anything else."""
    if path.name.lower().endswith(OME_ZARR_SUFFIX):
        return "ome-zarr"
    suffix = path.suffix.lower()
    for kind, suffixes in (("hdf5", HDF5_SUFFIXES), ("zarr", ZARR_SUFFIXES),
                           ("tiff", TIFF_SUFFIXES)):
        if suffix in suffixes:
            return kind
    return None


def write_volume(path: str | os.PathLike, key: str, data: Any, *,
                 attrs: Mapping[str, Any] | None = None, rgb: bool = False,
                 pyramid: str | None = None) -> Path:
    """Write ``data`` as a new file or store at ``path`` (HDF5 / Zarr: the array ``key`` with
    ``attrs``; TIFF: the bare array), under a temporary sibling renamed into place, replacing an
    existing one. Lazy data is written block by block (HDF5, Zarr).

    A path ending in ``.ome.zarr`` becomes an OME-Zarr image named ``key``: level 0, then a
    pyramid computed from it block by block (``pyramid``: ``'stride'`` for labels, ``'mean'`` for
    images; default: stride for integer data, mean for floats), with ``attrs['scale']`` /
    ``attrs['translate']`` (one number per axis) as the voxel size and origin."""
    target = Path(os.fsdecode(path))
    kind = kind_of(target)
    if kind is None:
        raise ValueError(f"cannot write {target}: name an HDF5 (.h5), Zarr (.zarr), "
                         "OME-Zarr (.ome.zarr) or TIFF (.tif) file")
    temporary = partial_sibling(target, keep_suffix=True)
    remove(temporary, ignore_errors=True)
    try:
        if kind == "tiff":
            _write_tiff(temporary, data, rgb)
        elif kind == "ome-zarr":
            _write_ome_zarr(temporary, key, data, attrs or {}, pyramid)
        else:
            container = create_container(temporary, kind)
            try:
                array = create_array(container, key, data.shape, data.dtype,
                                     chunks=volume_chunks(data.shape),
                                     gzip=True, attrs=attrs)
                write_data(array, data)
            finally:
                if kind == "hdf5":
                    container.close()
        replace_path(temporary, target)
    except BaseException:
        remove(temporary, ignore_errors=True)
        raise
    logger.debug("wrote %s", target)
    return target


def _write_ome_zarr(store: Path, name: str, data: Any, attrs: Mapping[str, Any],
                    pyramid: str | None) -> None:
    """Level 0 (block by block for lazy data), then the pyramid and the NGFF metadata."""
    from .ome_zarr import default_axes, finish_image

    if not hasattr(data, "shape"):
        data = np.asarray(data)
    axes = default_axes(len(data.shape))
    spatial = sum(a in "zyx" for a in axes)
    scale, origin = (_spatial_numbers(attrs.get(k), len(data.shape), spatial)
                     for k in ("scale", "translate"))
    rest = {k: v for k, v in attrs.items() if k not in ("scale", "translate")}
    method = pyramid or ("stride" if np.dtype(data.dtype).kind in "biu" else "mean")
    if method not in ("stride", "mean"):
        raise ValueError(f"unknown pyramid method {method!r}; choose 'stride' (labels) or 'mean'")
    container = create_container(store, "zarr")
    array = create_array(container, "0", data.shape, data.dtype,
                         chunks=volume_chunks(data.shape), attrs=rest)
    write_data(array, data)
    finish_image(store, "0", axes=axes, method=method, voxel_size=scale, origin=origin, name=name)


def _spatial_numbers(value: Any, ndim: int, spatial: int) -> list[float] | None:
    """The spatial part of a per-axis ``scale`` / ``translate`` (all axes or spatial ones only)."""
    if value is None:
        return None
    numbers = [float(v) for v in np.asarray(value, dtype=float).ravel()]
    if len(numbers) == ndim:
        return numbers[ndim - spatial:]
    if len(numbers) == spatial:
        return numbers
    raise ValueError(f"{len(numbers)} scale/translate numbers for a {ndim}-D array; "
                     f"give {ndim} (one per axis) or {spatial} (z, y, x)")


def _write_tiff(file: Path, data: Any, rgb: bool) -> None:
    """One page per z section (grey values, never read as colour planes), unless ``rgb``."""
    import tifffile

    tifffile.imwrite(file, np.asarray(data), photometric="rgb" if rgb else "minisblack")


def volume_chunks(shape: Sequence[int]) -> tuple[int, ...] | None:
    """z-y-x blocks of up to 32x256x256 (leading axes one by one); None for empty arrays."""
    if not shape or 0 in shape:
        return None
    spatial = (32, 256, 256)[-min(len(shape), 3):]
    lead = (1,) * (len(shape) - len(spatial))
    return tuple(min(n, c) for n, c in zip(shape, lead + spatial))

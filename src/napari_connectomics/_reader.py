"""napari reader for HDF5 files and Zarr stores: every array becomes a layer.

Rules (see DESIGN.md, "Conventions for data"):

* Layer name: ``<file stem>:<array name>`` (nested arrays keep their group path, ``a:grp/raw``).
* A 4-D array whose name contains ``prob`` (our prediction layout ``probabilities``: C, z, y, x)
  becomes one Image layer per channel through ``channel_axis=0``, named
  ``<stem>:<name>[c]``, blended additively, contrast 0..1 (0..255 for uint8 probabilities).
* Labels, in this order:
  1. a bool array is Labels;
  2. an integer array whose name contains ``label``, ``labels``, ``seg``, ``gt``, ``mask``,
     ``instances`` or ``truth`` (case-insensitive substring) is Labels;
  3. an unsigned integer array whose name has no image-like word (``raw``, ``image``, ``img``,
     ``em``, ``input``, ``intensity``, ``data``, ``volume``) is Labels when a central crop of at
     most 32x64x64 voxels holds at most :data:`MAX_SAMPLE_VALUES` (64) distinct values;
  everything else is Image.
* Arrays larger than :data:`LAZY_THRESHOLD_BYTES` (512 MB) stay lazy (a dask array over the
  file); smaller ones are read into numpy.
* Optional ``scale`` / ``translate`` attributes (one number per axis, written by our writer) are
  passed on to the layer.
* An OME-Zarr image (a Zarr group with ``multiscales`` metadata, e.g. ``image.ome.zarr``) is one
  multiscale layer (all levels, lazy) with the voxel size and origin of level 0 as ``scale`` /
  ``translate``, a ``c`` axis split into channels; each image under its ``labels/`` group is a
  multiscale Labels layer.
* A Neuroglancer precomputed volume (a folder with an ``info`` file) is one lazy layer (all scales,
  finest first, a multiscale layer when there are several; tensorstore through dask) with the
  resolution (nm) as ``scale`` and ``voxel_offset * resolution`` as ``translate``: type
  ``segmentation`` is a Labels layer, ``image`` an Image layer (channels split, probabilities
  blended additively). A folder of precomputed volumes (``pred.precomputed``) gives one layer each.
* A file that is not ours or cannot be read gives ``None`` from :func:`napari_get_reader`; an array
  that cannot be read is skipped with a warning, never an exception in napari.

Only numpy and :mod:`napari_connectomics.data.volumes` are imported here (no torch, no Qt).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_connectomics.data.volumes import Volume, list_arrays, open_volume

__all__ = ["LAZY_THRESHOLD_BYTES", "MAX_SAMPLE_VALUES", "napari_get_reader", "read_layers"]

logger = logging.getLogger(__name__)

LAZY_THRESHOLD_BYTES = 512 * 2**20  # arrays above this stay on disk (dask)
MAX_SAMPLE_VALUES = 64  # an unnamed unsigned array with at most this many values in a crop is Labels
_SAMPLE_SHAPE = (32, 64, 64)  # trailing axes of the central crop used by that rule

_SUFFIXES = (".h5", ".hdf5", ".zarr", ".precomputed")
_LABEL_WORDS = ("label", "labels", "seg", "gt", "mask", "instances", "truth")
_IMAGE_WORDS = {"raw", "image", "img", "em", "input", "intensity", "data", "volume"}

LayerData = tuple[Any, dict[str, Any], str]


def napari_get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """The reader for ``path`` (a file or a list of files) when all are HDF5 / Zarr volumes we can
    open, else ``None``."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(_readable(p) for p in paths):
        return None
    return read_layers


def _readable(path: str | os.PathLike) -> bool:
    text = os.fsdecode(os.fspath(path)).rstrip("/\\")
    if _precomputed_volumes(Path(text)):
        return True
    if not text.lower().endswith(_SUFFIXES):
        return False
    try:
        return bool(_array_keys(Path(text)))
    except Exception as err:  # corrupt or foreign file: not ours to read
        logger.debug("napari-connectomics cannot read %s: %s", text, err)
        return False


def _array_keys(path: Path) -> list[str | None]:
    """Arrays in the file: their names, or ``[None]`` for a Zarr store that is one array."""
    names = list_arrays(path)
    if names:
        return list(names)
    if path.suffix.lower() == ".zarr":
        open_volume(path).close()  # raises when the store is neither a group of arrays nor an array
        return [None]
    return []


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Layer data tuples for every readable array of every file in ``path``."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers: list[LayerData] = []
    for item in paths:
        file = Path(os.fsdecode(os.fspath(item)).rstrip("/\\"))
        volumes = _precomputed_volumes(file)
        if volumes:
            for volume in volumes:
                try:
                    layers.append(_precomputed_layer(file, volume))
                except Exception as err:  # one bad volume must not hide the others
                    logger.warning("napari-connectomics: skipping %s (%s)", volume, err)
            continue
        if _is_ome_zarr(file):
            layers.extend(_ome_layers(file))
            continue
        try:
            keys = _array_keys(file)
        except Exception as err:
            logger.warning("napari-connectomics: cannot read %s (%s)", file, err)
            continue
        for key in keys:
            try:
                layers.append(_layer(file, key))
            except Exception as err:  # one bad array must not hide the others
                logger.warning("napari-connectomics: skipping %s:%s (%s)", file, key, err)
    return layers


def _layer(file: Path, key: str | None) -> LayerData:
    volume = open_volume(file, key=key)
    name = key or file.stem
    layer_name = f"{file.stem}:{name}"
    data = _data(volume)
    meta: dict[str, Any] = {"name": layer_name, "metadata": {"source": volume.source}}
    meta.update(_spatial_attrs(file, key, volume.ndim))
    if _is_probabilities(name, volume):
        meta.update(channel_axis=0, blending="additive",
                    name=[f"{layer_name}[{c}]" for c in range(volume.shape[0])],
                    contrast_limits=(0, 255) if volume.dtype == np.uint8 else (0.0, 1.0))
        for axis_key in ("scale", "translate"):  # the channel axis has no extent in space
            if axis_key in meta:
                meta[axis_key] = meta[axis_key][1:]
        return data, meta, "image"
    if _is_labels(name, volume):
        return data, meta, "labels"
    return data, meta, "image"


# --------------------------------------------------------------------------------------------
# OME-Zarr: one multiscale layer per image, and per label image under labels/
# --------------------------------------------------------------------------------------------


def _is_ome_zarr(file: Path) -> bool:
    """A Zarr group with OME-Zarr ``multiscales`` metadata (our layers then follow NGFF)."""
    if file.suffix.lower() != ".zarr" or not file.is_dir():
        return False
    try:
        import zarr

        from napari_connectomics.data.ome_zarr import multiscales_attr

        root = zarr.open(str(file), mode="r")
        return isinstance(root, zarr.Group) and multiscales_attr(root) is not None
    except Exception:
        return False


def _ome_layers(file: Path) -> list[LayerData]:
    """The image (all levels, as a multiscale layer with the voxel size and origin of level 0)
    and each of its label images as a Labels layer."""
    import zarr

    from napari_connectomics.data.ome_zarr import label_names, read_multiscale

    layers: list[LayerData] = []
    try:
        layers.append(_ome_layer(file, read_multiscale(file), labels=False))
    except Exception as err:
        logger.warning("napari-connectomics: cannot read the OME-Zarr %s (%s)", file, err)
        return layers
    try:
        names = label_names(zarr.open_group(str(file), mode="r", path="labels"))
    except Exception:  # no labels group
        names = []
    for name in names:
        try:
            layers.append(_ome_layer(file, read_multiscale(file, f"labels/{name}"), labels=True))
        except Exception as err:
            logger.warning("napari-connectomics: skipping %s labels/%s (%s)", file, name, err)
    return layers


def _ome_layer(file: Path, image: Any, labels: bool) -> LayerData:
    import dask.array as da
    import zarr

    drop = 1 if image.axes[0] == "t" and image.levels[0].shape[0] == 1 else 0
    axes = image.axes[drop:]
    levels = []
    for level in image.levels:
        array = da.from_zarr(zarr.open_array(str(file), mode="r", path=level.path))
        levels.append(array[0] if drop else array)
    top = image.levels[0]
    name = image.name or (image.group.rsplit("/", 1)[-1] if image.group else "image")
    layer_name = f"{file.stem.removesuffix('.ome')}:{name}"
    meta: dict[str, Any] = {
        "name": layer_name, "scale": top.scale[drop:], "translate": top.translate[drop:],
        "metadata": {"source": f"{file}:{top.path}", "ome_axes": "".join(axes)}}
    data: Any = levels if len(levels) > 1 else levels[0]
    meta["multiscale"] = len(levels) > 1
    if labels:
        return data, meta, "labels"
    volume = open_volume(file, key=top.path)
    if "c" in axes and not _is_labels(name, volume):
        channel = axes.index("c")
        count = levels[0].shape[channel]
        meta.update(channel_axis=channel, name=[f"{layer_name}[{c}]" for c in range(count)]
                    if count > 1 else [layer_name])
        for key in ("scale", "translate"):
            meta[key] = tuple(v for i, v in enumerate(meta[key]) if i != channel)
        if _is_probabilities(name, volume):
            meta.update(blending="additive",
                        contrast_limits=(0, 255) if volume.dtype == np.uint8 else (0.0, 1.0))
        return data, meta, "image"
    return data, meta, "labels" if _is_labels(name, volume) else "image"


# --------------------------------------------------------------------------------------------
# Neuroglancer precomputed: one lazy layer per volume (all scales)
# --------------------------------------------------------------------------------------------


def _precomputed_volumes(path: Path) -> list[Path]:
    """The precomputed volume folders ``path`` is (itself) or holds (a container); [] otherwise."""
    from napari_connectomics.data.precomputed import is_volume_dir, list_volumes

    try:
        if is_volume_dir(path):
            return [path]
        return [path / name for name in list_volumes(path)] if path.is_dir() else []
    except OSError:
        return []


def _precomputed_layer(file: Path, folder: Path) -> LayerData:
    """A volume's scales (finest first) as dask arrays over tensorstore, with its voxel grid."""
    import dask.array as da

    from napari_connectomics.data.precomputed import TensorArray, read_info

    info = read_info(folder)
    scales = sorted(info.scales, key=lambda s: (math.prod(s.resolution), s.index))
    levels = []
    for scale in scales:
        array = TensorArray(folder, scale.key)
        if levels and any(n > m for n, m in zip(array.shape, levels[-1].shape)):
            continue  # not a downsampling of the level above: napari needs decreasing sizes
        levels.append(da.from_array(array, chunks=array.chunks, asarray=True, fancy=False,
                                    name=f"connectomics-precomputed-{folder}-{scale.key}"))
    top = scales[0]
    stem = file.name.removesuffix(".precomputed") if file.name.lower().endswith(".precomputed") else file.name
    name = stem if folder == file else f"{stem}:{folder.name}"
    meta: dict[str, Any] = {"name": name, "scale": top.voxel_size, "translate": top.origin,
                            "metadata": {"source": f"{folder}:{top.key}", "precomputed": info.type}}
    data: Any = levels if len(levels) > 1 else levels[0]
    meta["multiscale"] = len(levels) > 1
    if info.type == "segmentation":
        return data, meta, "labels"
    if info.num_channels > 1:
        meta.update(channel_axis=0, name=[f"{name}[{c}]" for c in range(info.num_channels)])
        if "prob" in folder.name.lower():
            meta.update(blending="additive",
                        contrast_limits=(0, 255) if info.dtype == np.uint8 else (0.0, 1.0))
    elif "prob" in folder.name.lower():
        meta.update(contrast_limits=(0, 255) if info.dtype == np.uint8 else (0.0, 1.0))
    return data, meta, "image"


def _data(volume: Volume) -> Any:
    """numpy for small arrays, a lazy dask array over the file for large ones."""
    if volume.size * volume.dtype.itemsize <= LAZY_THRESHOLD_BYTES:
        array = volume.read()
        volume.close()
        return array
    import dask.array as da

    chunks = volume.chunks or "auto"
    return da.from_array(volume, chunks=chunks, asarray=True, fancy=False, name=f"connectomics-{volume.source}")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.rsplit("/", 1)[-1].lower()) if w]


def _is_probabilities(name: str, volume: Volume) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return "prob" in base and volume.ndim == 4 and volume.shape[0] <= 16


def _is_labels(name: str, volume: Volume) -> bool:
    kind = volume.dtype.kind
    if kind == "b":
        return True
    if kind not in "iu":
        return False
    base = name.rsplit("/", 1)[-1].lower()
    if any(word in base for word in _LABEL_WORDS):
        return True
    if kind != "u" or _IMAGE_WORDS.intersection(_words(name)) or volume.ndim < 2:
        return False
    return len(np.unique(_central_crop(volume))) <= MAX_SAMPLE_VALUES


def _central_crop(volume: Volume) -> np.ndarray:
    sample = _SAMPLE_SHAPE[-min(volume.ndim, 3):]
    index = [slice(None)] * volume.ndim
    for axis, size in zip(range(volume.ndim - len(sample), volume.ndim), sample):
        start = max(0, (volume.shape[axis] - size) // 2)
        index[axis] = slice(start, start + size)
    for axis in range(volume.ndim - len(sample)):  # leading (channel) axes: first entry only
        index[axis] = slice(0, 1)
    return volume[tuple(index)]


def _spatial_attrs(file: Path, key: str | None, ndim: int) -> dict[str, Any]:
    """``scale`` / ``translate`` from the array's attributes, when they have one number per axis."""
    try:
        attrs = _attrs(file, key)
    except Exception:  # attributes are optional: never fail a layer over them
        return {}
    result: dict[str, Any] = {}
    for name in ("scale", "translate"):
        value = attrs.get(name)
        try:
            numbers = [float(v) for v in np.asarray(value).ravel()] if value is not None else None
        except (TypeError, ValueError):
            continue
        if numbers and len(numbers) == ndim:
            result[name] = tuple(numbers)
    return result


def _attrs(file: Path, key: str | None) -> dict[str, Any]:
    if file.suffix.lower() == ".zarr":
        import zarr

        node = zarr.open_array(str(file), mode="r", path=key or "")
        return dict(node.attrs)
    import h5py

    with h5py.File(file, "r") as handle:
        return {k: v for k, v in handle[key].attrs.items()} if key else {}

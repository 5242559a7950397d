"""Neuroglancer precomputed volumes (how connectomics volumes are published), read and written
block by block through tensorstore's ``neuroglancer_precomputed`` driver.

Naming (see :mod:`.volumes`; local volumes only):

* a folder holding an ``info`` JSON file is a precomputed volume, whatever its name;
  ``precomputed://PATH``, ``precomputed://file:///PATH`` and ``file:///PATH`` name one too;
* ``vol/N`` or ``vol:N`` opens scale ``N``: its index in ``info``'s ``scales`` or its ``key``
  (``vol/8_8_40``); without one, scale 0 (as OME-Zarr levels, :mod:`.ome_zarr`);
* a folder without ``info`` that holds precomputed volumes is a container: what ``predict``
  writes as ``pred.precomputed`` holds ``probabilities`` (type ``image``) and ``labels`` (type
  ``segmentation``); ``pred.precomputed/probabilities`` (or ``pred.precomputed:probabilities``)
  names one, a container with a single volume opens it.

Axes and voxel grid: precomputed stores x, y, z, channel. A scale is presented lazily, through
tensorstore index transforms (nothing is read), as z, y, x (one channel) or c, z, y, x, starting
at 0; its ``resolution`` (nm, x y z) is the voxel size and ``voxel_offset * resolution`` the
origin, both given z, y, x as ``Volume.scale`` / ``Volume.translate``.

Writing (:func:`create_volume`): one scale, unsharded, chunk files named by their voxel ranges,
so processes that write distinct chunks never touch the same file (tensorstore's file driver
writes each chunk whole, under a lock). Images are ``raw`` (uncompressed) ``float32`` or
``uint8``: ``float16`` is not a precomputed data type and is written as ``float32``
(:func:`storage_dtype`). Label volumes are ``segmentation`` in ``uint32`` (``uint8`` / ``uint16``
widened) or ``uint64``, ``compressed_segmentation`` encoded.

``tensorstore`` is imported only when a precomputed volume is opened or written.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATA_TYPES",
    "PRECOMPUTED_SUFFIX",
    "Precomputed",
    "PrecomputedError",
    "PrecomputedGroup",
    "Scale",
    "TensorArray",
    "claims",
    "create_volume",
    "is_volume_dir",
    "list_volumes",
    "locate",
    "open_output_array",
    "read_info",
    "storage_dtype",
    "strip_url",
    "tensorstore",
]

PRECOMPUTED_SUFFIX = ".precomputed"
INFO = "info"
PREFIX = "precomputed://"
FILE_PREFIX = "file://"
DATA_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")
LABEL_TYPES = ("uint32", "uint64")
_SEGMENTATION_BLOCK = [8, 8, 8]  # compressed_segmentation block (x, y, z), Neuroglancer's default
_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_SUFFIX_AT = re.compile(r"\.precomputed(?=$|[/\\:])", re.IGNORECASE)
_MAX_SHOWN = 12


class PrecomputedError(ValueError):
    """A one-line message that says what is wrong with a precomputed volume and how to fix it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def strip_url(spec: str | os.PathLike) -> tuple[str, bool]:
    """(a local path, whether the spec said precomputed): ``precomputed://`` and ``file://`` are
    removed; other URLs (gs://, s3://, https://) are refused in one line."""
    text = os.fsdecode(os.fspath(spec))
    said = text.lower().startswith(PREFIX)
    if said:
        text = text[len(PREFIX):]
    if text.lower().startswith(FILE_PREFIX):
        text = text[len(FILE_PREFIX):]
        if text.lower().startswith("localhost/"):
            text = text[len("localhost"):]
    elif _REMOTE.match(text):
        raise PrecomputedError(f"{os.fsdecode(os.fspath(spec))}: only local volumes are read and "
                               "written (a folder, file:///path or precomputed://file:///path); "
                               "copy the volume to a local or mounted file system first")
    return text, said


def claims(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a precomputed volume: a ``precomputed://`` URL, a ``.precomputed``
    name, a folder (or a scale of a folder) with an ``info`` file, or a folder holding such
    folders."""
    text = os.fsdecode(os.fspath(spec))
    if text.lower().startswith(PREFIX) or _SUFFIX_AT.search(text):
        return True
    if text.lower().startswith(FILE_PREFIX):
        text = strip_url(text)[0]
    path = Path(_join_colon(text)).expanduser()
    if _has_info(path) or (path.is_dir() and not _is_zarr(path) and list_volumes(path)):
        return True
    return (not path.exists() or path.is_dir()) and _has_info(path.parent)


def is_volume_dir(path: str | os.PathLike) -> bool:
    """A folder with an ``info`` file (valid or not: reading it says what is wrong)."""
    return _has_info(Path(path))


def _has_info(path: Path) -> bool:
    try:
        return path.is_dir() and (path / INFO).is_file()
    except OSError:
        return False


def _is_zarr(path: Path) -> bool:
    """A Zarr store or array (never listed: a v2 array folder holds every chunk file)."""
    return any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def _join_colon(text: str) -> str:
    """``vol:1`` -> ``vol/1`` when ``vol`` exists (also ``pred.precomputed:labels:0``)."""
    for match in re.finditer(":", text):
        head = text[:match.start()]
        if head and (Path(head).expanduser().exists() or _SUFFIX_AT.search(head + ":")):
            tail = text[match.start() + 1:].replace(":", "/").strip("/")
            return f"{head}/{tail}" if tail else head
    return text


def list_volumes(folder: str | os.PathLike) -> list[str]:
    """Names of the precomputed volumes in a folder (its sub-folders with an ``info``), sorted;
    hidden ones (unfinished outputs) are left out."""
    try:
        with os.scandir(folder) as entries:  # file types from the listing: no stat per file
            folders = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    except OSError:
        return []
    return sorted(name for name in folders if (Path(folder) / name / INFO).is_file())


def locate(spec: str | os.PathLike, key: str | None = None) -> tuple[Path, str | None]:
    """(the volume folder, the scale named or None) for a spec (see the module doc); ``key``
    names a volume of a container or a scale, as the spec's tail would."""
    text, _ = strip_url(spec)
    text = _join_colon(text)
    if key is not None and key.strip("/:"):
        text = f"{text.rstrip('/')}/{key.strip('/:').replace(':', '/')}"
    path = Path(text).expanduser()
    if _has_info(path):
        return path, None
    if _has_info(path.parent) and (not path.exists() or path.is_dir()):
        return path.parent, path.name
    if _has_info(path.parent.parent) and not path.exists():  # vol/SCALE/extra
        raise PrecomputedError(f"{path}: a scale is one name ({path.parent.name!r}); "
                               f"write {path.parent} or {path.parent.parent}/SCALE")
    if path.is_dir():
        volumes = list_volumes(path)
        if len(volumes) == 1:
            return path / volumes[0], None
        if volumes:
            raise PrecomputedError(f"{path} holds several precomputed volumes ({_names(volumes)}); "
                                   f"name one, e.g. {path / volumes[0]}")
        raise PrecomputedError(f"{path} has no '{INFO}' file, so it is not a Neuroglancer "
                               f"precomputed volume; it holds {_listing(path)}")
    if path.parent.is_dir() and list_volumes(path.parent):
        raise PrecomputedError(f"{path.name!r} is not in {path.parent}; its precomputed volumes "
                               f"are: {_names(list_volumes(path.parent))}")
    raise PrecomputedError(f"{path} does not exist; check the path (a precomputed volume is a "
                           f"folder holding an '{INFO}' file)")


def _listing(folder: Path) -> str:
    try:
        names = sorted(e.name + ("/" if e.is_dir() else "") for e in folder.iterdir())
    except OSError:
        names = []
    return _names(names) if names else "nothing (an empty folder)"


def _names(names: Sequence[str]) -> str:
    hidden = len(names) - _MAX_SHOWN
    return ", ".join(names[:_MAX_SHOWN]) + (f", ... ({hidden} more)" if hidden > 0 else "")


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """One scale of a volume, in precomputed order (x, y, z)."""

    index: int
    key: str
    size: tuple[int, int, int]
    resolution: tuple[float, float, float]
    voxel_offset: tuple[int, int, int]
    chunk_size: tuple[int, int, int]
    encoding: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """z, y, x."""
        return self.size[::-1]  # type: ignore[return-value]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """z, y, x (nm)."""
        return self.resolution[::-1]  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[float, float, float]:
        """z, y, x (nm): ``voxel_offset * resolution``."""
        shift = [float(o) * r for o, r in zip(self.voxel_offset, self.resolution)]
        return tuple(shift[::-1])  # type: ignore[return-value]

    @property
    def chunks(self) -> tuple[int, int, int]:
        """z, y, x."""
        return self.chunk_size[::-1]  # type: ignore[return-value]

    def describe(self) -> str:
        return f"{self.index} (key {self.key}, {'x'.join(map(str, self.shape))} z-y-x)"


@dataclass(frozen=True)
class Precomputed:
    """A volume's ``info``: its type, data type, channels and scales (in the order listed)."""

    path: Path
    type: str
    data_type: str
    num_channels: int
    scales: tuple[Scale, ...]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data_type)

    def scale(self, key: str | None) -> Scale:
        """Scale ``key``: its index (``'1'``) or its key (``'8_8_40'``); None: scale 0."""
        if key is None:
            return self.scales[0]
        for scale in self.scales:
            if scale.key == key:
                return scale
        if key.isdigit() and int(key) < len(self.scales):
            return self.scales[int(key)]
        listed = ", ".join(s.describe() for s in self.scales)
        raise PrecomputedError(f"scale {key!r} does not exist in the precomputed volume "
                               f"{self.path}; its scales are: {listed} "
                               f"(e.g. {self.path}/{len(self.scales) - 1})")

    def shape_of(self, scale: Scale) -> tuple[int, ...]:
        """The array shape a scale is presented with: (c,) z, y, x."""
        return ((self.num_channels,) if self.num_channels > 1 else ()) + scale.shape


def read_info(path: str | os.PathLike) -> Precomputed:
    """The ``info`` of the volume folder ``path``, checked (one-line errors)."""
    path = Path(path)
    file = path / INFO
    try:
        text = file.read_text()
    except OSError as err:
        raise PrecomputedError(f"{path} has no readable '{INFO}' file ({err.strerror or err}); "
                               f"it holds {_listing(path)}") from None
    try:
        info = json.loads(text)
    except ValueError as err:
        raise PrecomputedError(f"{file} is not JSON ({err}); a precomputed info file is a JSON "
                               "object with 'type', 'data_type', 'num_channels' and "
                               "'scales'") from None
    if not isinstance(info, dict):
        raise PrecomputedError(f"{file} holds a JSON {type(info).__name__}, not the object with "
                               "'type', 'data_type' and 'scales' a precomputed info file is")
    missing = [k for k in ("type", "data_type", "scales") if k not in info]
    if missing:
        raise PrecomputedError(f"{file} lacks {', '.join(repr(k) for k in missing)} (it has "
                               f"{_names(sorted(info)) or 'no keys'}); it is not a Neuroglancer "
                               "precomputed volume info")
    kind, data_type = info["type"], str(info["data_type"]).lower()
    if kind not in ("image", "segmentation"):
        raise PrecomputedError(f"{file}: type {kind!r} is not a volume; use 'image' or "
                               "'segmentation'")
    if data_type not in DATA_TYPES:
        raise PrecomputedError(f"{file}: data_type {info['data_type']!r} is not a precomputed data "
                               f"type ({', '.join(DATA_TYPES)})")
    channels = info.get("num_channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise PrecomputedError(f"{file}: num_channels {channels!r} must be a positive integer")
    scales = info["scales"]
    if not isinstance(scales, list) or not scales:
        raise PrecomputedError(f"{file}: 'scales' must be a non-empty list of scales")
    parsed = tuple(_scale(file, i, s) for i, s in enumerate(scales))
    return Precomputed(path, str(kind), data_type, int(channels), parsed)


def _scale(file: Path, index: int, item: Any) -> Scale:
    where = f"{file}: scale {index}"
    if not isinstance(item, dict):
        raise PrecomputedError(f"{where} is not a JSON object")
    missing = [k for k in ("key", "size", "resolution", "chunk_sizes") if k not in item]
    if missing:
        raise PrecomputedError(f"{where} lacks {', '.join(repr(k) for k in missing)}")
    size = _three(where, "size", item["size"], int, minimum=1)
    resolution = _three(where, "resolution", item["resolution"], float, minimum=0)
    offset = _three(where, "voxel_offset", item.get("voxel_offset", [0, 0, 0]), int)
    chunk_sizes = item["chunk_sizes"]
    if not isinstance(chunk_sizes, list) or not chunk_sizes:
        raise PrecomputedError(f"{where}: 'chunk_sizes' must be a list of [x, y, z] sizes")
    chunk = _three(where, "chunk_sizes[0]", chunk_sizes[0], int, minimum=1)
    return Scale(index, str(item["key"]), size, resolution, offset, chunk,  # type: ignore[arg-type]
                 str(item.get("encoding", "raw")))


def _three(where: str, name: str, value: Any, cast: type, minimum: float | None = None) -> tuple:
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if ok and cast is int:
        ok = all(float(v).is_integer() for v in value)
    if ok and minimum is not None:
        ok = all(v > minimum if minimum == 0 else v >= minimum for v in value)
    if not ok:
        rule = {1: "positive integers", 0: "positive numbers"}.get(
            minimum, "integers")  # type: ignore[arg-type]
        raise PrecomputedError(f"{where}: {name!r} must be three {rule} (x, y, z), not {value!r}")
    return tuple(cast(v) for v in value)


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


def tensorstore() -> Any:
    """The ``tensorstore`` module, or a one-line error that says how to install it."""
    try:
        import tensorstore as ts
    except ImportError:
        raise PrecomputedError("Neuroglancer precomputed volumes are read and written with "
                               "tensorstore, which is not installed: pip install "
                               "'napari-connectomics[precomputed]' (or pip install "
                               "tensorstore)") from None
    return ts


def _kvstore(path: Path) -> dict[str, Any]:
    return {"driver": "file", "path": str(Path(path).absolute()) + "/"}


class TensorArray:
    """One scale of a precomputed volume as a numpy-indexable array, (c,) z, y, x from 0: indexing
    reads only the chunks touched (tensorstore), assigning writes them. ``channel_axis``: keep
    the channel axis (True), drop it (False, one channel only) or keep it for several channels
    (None). Picklable: the store is (re)opened in each process on first use."""

    def __init__(self, path: str | os.PathLike, scale: str | int | None = None,
                 writable: bool = False, channel_axis: bool | None = None) -> None:
        self.path, self.writable = Path(path), writable
        info = read_info(self.path)
        chosen = info.scale(None if scale is None else str(scale))
        self.scale_index, self.key, self.type = chosen.index, chosen.key, info.type
        self.channels = info.num_channels
        if channel_axis is False and self.channels > 1:
            raise PrecomputedError(f"{self.path} has {self.channels} channels; keep its "
                                   "channel axis")
        self.channel_axis = self.channels > 1 if channel_axis is None else bool(channel_axis)
        lead = (self.channels,) if self.channel_axis else ()
        self.shape: tuple[int, ...] = lead + chosen.shape
        self.dtype = info.dtype
        self.chunks: tuple[int, ...] = lead + chosen.chunks
        self.voxel_size, self.origin = chosen.voxel_size, chosen.origin
        self._view: Any = None
        self._pid: int | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return (f"TensorArray({str(self.path)!r}, scale={self.key!r}, shape={self.shape}, "
                f"dtype={self.dtype})")

    def view(self) -> Any:
        """The tensorstore view: (c,) z, y, x from 0 (opened once per process)."""
        if self._view is None or self._pid != os.getpid():
            ts = tensorstore()
            spec = {"driver": "neuroglancer_precomputed", "kvstore": _kvstore(self.path),
                    "scale_index": self.scale_index}
            store = ts.open(spec, read=True, write=self.writable).result()
            view = store[ts.d["channel", "z", "y", "x"].transpose[0, 1, 2, 3]].translate_to[0]
            self._view = view if self.channel_axis else view[0]
            self._pid = os.getpid()
        return self._view

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.view()[index].read().result())

    def __setitem__(self, index: Any, value: Any) -> None:
        if not self.writable:
            raise PrecomputedError(f"{self.path} is opened read-only")
        self.view()[index].write(np.asarray(value).astype(self.dtype, copy=False)).result()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = self[...]
        return array if dtype is None else array.astype(dtype, copy=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_view": None, "_pid": None}


def open_output_array(path: str | os.PathLike, writable: bool = False) -> TensorArray:
    """A volume as the prediction outputs hold it: an image with its channel axis (c, z, y, x,
    as stored probabilities are everywhere), a segmentation as z, y, x."""
    info = read_info(path)
    return TensorArray(path, writable=writable, channel_axis=info.type == "image" or None)


def storage_dtype(dtype: Any, labels: bool = False) -> np.dtype:
    """The precomputed data type that stores ``dtype``: images keep theirs (float16 and float64
    become float32, the only float precomputed has); labels are uint32, or uint64 when given."""
    dtype = np.dtype(dtype)
    if labels:
        if dtype.kind not in "biu":
            raise PrecomputedError(f"labels must be integers, not {dtype}")
        return np.dtype(np.uint64 if dtype.itemsize > 4 else np.uint32)
    if dtype.kind == "f":
        return np.dtype(np.float32)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.name not in DATA_TYPES:
        raise PrecomputedError(f"{dtype} is not a precomputed data type ({', '.join(DATA_TYPES)})")
    return dtype


def create_volume(path: str | os.PathLike, shape: Sequence[int], dtype: Any, *,
                  layer_type: str = "image", channels: int = 1,
                  chunks: Sequence[int] | None = None,
                  voxel_size: Sequence[float] | None = None,
                  origin: Sequence[float] | None = None) -> TensorArray:
    """A new single-scale volume folder ``path`` (which must not exist) of spatial ``shape``
    (z, y, x) and ``channels``, chunked by ``chunks`` (z, y, x), with ``voxel_size`` (nm, z, y, x;
    default 1) and ``origin`` (z, y, x, in the same unit: voxel_offset = origin / voxel size,
    rounded); returned writable. ``layer_type`` 'segmentation' stores labels (see
    :func:`storage_dtype`)."""
    ts = tensorstore()
    labels = layer_type == "segmentation"
    stored = storage_dtype(dtype, labels=labels)
    shape = [int(n) for n in shape]
    if len(shape) != 3 or min(shape) < 1:
        raise PrecomputedError(f"a precomputed volume is z, y, x with every size >= 1, not {shape}")
    voxel = [float(v) for v in (voxel_size if voxel_size is not None else (1.0, 1.0, 1.0))]
    shift = [float(v) for v in (origin if origin is not None else (0.0, 0.0, 0.0))]
    offset = [int(round(t / v)) for t, v in zip(shift, voxel)]
    chunk = [max(1, min(int(c), n))
             for c, n in zip(chunks if chunks is not None else (64,) * 3, shape)]
    scale: dict[str, Any] = {"size": shape[::-1], "resolution": voxel[::-1],
                             "voxel_offset": offset[::-1], "chunk_size": chunk[::-1],
                             "encoding": "compressed_segmentation" if labels else "raw"}
    if labels:
        scale["compressed_segmentation_block_size"] = _SEGMENTATION_BLOCK
    spec = {"driver": "neuroglancer_precomputed", "kvstore": _kvstore(Path(path)),
            "multiscale_metadata": {"type": layer_type, "data_type": stored.name,
                                    "num_channels": int(channels)},
            "scale_metadata": scale}
    ts.open(spec, create=True).result()
    return TensorArray(path, writable=True, channel_axis=not labels)


def write_provenance(path: str | os.PathLike, description: str, attrs: Mapping[str, Any]) -> None:
    """A ``provenance`` JSON file beside ``info`` (the layout CloudVolume reads) recording how
    the volume was made (``attrs``: the prediction's settings)."""
    import datetime

    from .. import __version__

    record = {"description": description, "owners": [], "sources": [],
              "processing": [{"method": json.loads(json.dumps(dict(attrs), default=str)),
                              "by": f"napari-connectomics {__version__}",
                              "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}]}
    (Path(path) / "provenance").write_text(json.dumps(record, indent=1))


class PrecomputedGroup:
    """A folder of precomputed volumes (``pred.precomputed``) with the little of a Zarr group's
    interface the prediction outputs use (``in``, ``[]``, ``del``, ``create_array``): label
    volumes get the voxel size and origin of a volume already there of the same spatial shape."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __contains__(self, key: str) -> bool:
        return _has_info(self.path / key)

    def __getitem__(self, key: str) -> TensorArray:
        """Volume ``key``: images (c, z, y, x) as our probabilities, labels (z, y, x)."""
        if key not in self:
            raise KeyError(f"{self.path} holds no precomputed volume {key!r}")
        return open_output_array(self.path / key, writable=True)

    def __delitem__(self, key: str) -> None:
        import shutil

        shutil.rmtree(self.path / key)

    def keys(self) -> list[str]:
        return list_volumes(self.path)

    def create_array(self, key: str, *, shape: Sequence[int], dtype: Any, chunks: Any = None,
                     fill_value: Any = None, overwrite: bool = False, **_: Any) -> TensorArray:
        """A new label volume ``key`` (z, y, x; uint32 or uint64, zero-filled)."""
        target = self.path / key
        if target.exists():
            if not overwrite:
                raise PrecomputedError(f"{target} already exists")
            del self[key]
        shape = tuple(int(n) for n in shape)
        voxel, origin = self._grid(shape)
        return create_volume(target, shape, dtype, layer_type="segmentation",
                             chunks=chunks if isinstance(chunks, (tuple, list)) else None,
                             voxel_size=voxel, origin=origin)

    def _grid(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """(voxel size, origin) of a volume here of the same spatial shape; (None, None)."""
        for name in self.keys():
            try:
                info = read_info(self.path / name)
            except PrecomputedError:
                continue
            top = info.scales[0]
            if top.shape == shape[-3:]:
                return top.voxel_size, top.origin
        return None, None

"""Lazy access to z-y-x volumes (optionally with a leading channel axis) in any supported format.

Training, inference and napari's reader all go through :func:`open_volume`, so a volume is named the
same way everywhere (see DESIGN.md, "Command line"): ``file.h5:dataset``, ``file.zarr:array`` or
``file.zarr/array``, ``file.tif``, ``dir/*.tif`` (a stack of 2D slices), ``file.npy``, and OME-Zarr
images: ``image.ome.zarr`` (level 0), ``image.ome.zarr/1`` (another level; see :mod:`.ome_zarr`), and
Neuroglancer precomputed volumes: a folder with an ``info`` file, ``precomputed://PATH`` or
``file:///PATH`` (scale 0), ``vol/N`` (scale N; see :mod:`.precomputed`). ``file://`` URLs name any
local volume. A :class:`Volume` reads only what is indexed, so volumes far larger than RAM work, and it pickles
without file handles, so PyTorch DataLoader workers (fork or spawn) reopen the file themselves.

Writing is :mod:`.volume_io`'s job. napari imports this module at start-up: h5py, zarr and tifffile are imported only when a file of
their kind is opened, and nothing here imports torch, monai or Qt.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .volume_io import HDF5_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIXES

__all__ = [
    "SUPPORTED_FORMATS",
    "Volume",
    "VolumeError",
    "list_arrays",
    "open_volume",
    "parse_volume_path",
]

logger = logging.getLogger(__name__)

_HDF5_SUFFIXES = HDF5_SUFFIXES
_ZARR_SUFFIXES = ZARR_SUFFIXES
_TIFF_SUFFIXES = TIFF_SUFFIXES
_NPY_SUFFIXES = (".npy",)
_ALL_SUFFIXES = _HDF5_SUFFIXES + _ZARR_SUFFIXES + _TIFF_SUFFIXES + _NPY_SUFFIXES
_ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")
_GLOB_CHARS = re.compile(r"[*?\[]")
_MAX_NAMES_SHOWN = 12

SUPPORTED_FORMATS = (
    ".h5/.hdf5/.hdf (file.h5:dataset), .zarr (store.zarr:array or store.zarr/array), "
    ".tif/.tiff, .npy, OME-Zarr (image.ome.zarr, image.ome.zarr/LEVEL), Neuroglancer precomputed "
    "(a folder with an info file, precomputed://PATH, vol/SCALE), or a glob of 2D TIFF slices (dir/*.tif)"
)


class VolumeError(ValueError):
    """A volume cannot be found or opened; the message is one line that says how to fix it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# --------------------------------------------------------------------------------------------
# Path syntax
# --------------------------------------------------------------------------------------------


def parse_volume_path(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``file.h5:dataset`` / ``store.zarr/array`` into the file path and the array key.

    The key is ``None`` when the spec names none. Globs (``dir/*.tif``) are returned unexpanded.
    """
    text = os.fsdecode(os.fspath(spec))
    head, key = _split_key(text)
    return Path(head).expanduser(), key


def _split_key(text: str) -> tuple[str, str | None]:
    """The file part and the key of a volume spec (see :func:`parse_volume_path`)."""
    for colon in (m.start() for m in re.finditer(":", text)):
        head = text[:colon]
        if head.lower().endswith(_ALL_SUFFIXES):
            return head, _clean_key(text[colon + 1 :])
    inside_zarr = re.search(r"\.zarr/", text, flags=re.IGNORECASE)
    if inside_zarr:
        return text[: inside_zarr.end() - 1], _clean_key(text[inside_zarr.end() :])
    head, colon, tail = text.rpartition(":")
    if colon and Path(head).expanduser().exists():  # e.g. a Zarr store whose name has no suffix
        return head, _clean_key(tail)
    return text, None


def _clean_key(key: str) -> str | None:
    key = key.strip("/")
    return key or None


# --------------------------------------------------------------------------------------------
# Backends: how to open each kind of source. They hold only picklable facts (paths, keys).
# --------------------------------------------------------------------------------------------


class _ArrayLike(Protocol):
    shape: tuple[int, ...]
    dtype: Any

    def __getitem__(self, index: Any) -> Any: ...


_Opened = tuple[_ArrayLike, Callable[[], None] | None]


class _HDF5Backend:
    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        self.description = f"{path}:{key}"

    def open(self) -> _Opened:
        import h5py

        file = h5py.File(self.path, "r")
        return file[self.key], file.close


class _ZarrBackend:
    """A Zarr array; for an OME-Zarr level also its voxel size and origin (``scale`` /
    ``translate``, one number per axis kept) and how many leading singleton axes (``t``) to drop."""

    def __init__(self, path: Path, key: str | None, scale: tuple[float, ...] | None = None,
                 translate: tuple[float, ...] | None = None, drop: int = 0):
        self.path, self.key = path, key
        self.scale, self.translate, self.drop = scale, translate, drop
        self.description = f"{path}:{key}" if key else str(path)

    def open(self) -> _Opened:
        import zarr

        array = zarr.open_array(str(self.path), mode="r", path=self.key or "")
        return (_DropLeading(array, self.drop) if self.drop else array), None


class _DropLeading:
    """View of an array without its first ``n`` axes (each of size 1, e.g. OME-Zarr's ``t``)."""

    def __init__(self, array: Any, n: int):
        self.array, self.n = array, n
        self.shape = tuple(array.shape[n:])
        self.dtype = array.dtype
        self.chunks = tuple(array.chunks[n:])

    def __getitem__(self, index: Any) -> Any:
        items = index if isinstance(index, tuple) else (index,)
        return self.array[(0,) * self.n + items]


class _PrecomputedBackend:
    """One scale of a Neuroglancer precomputed volume (tensorstore), (c,) z, y, x, with its voxel
    size (resolution, nm) and origin (voxel_offset * resolution) as ``scale`` / ``translate``."""

    def __init__(self, path: Path, scale: str | None):
        from .precomputed import PrecomputedError, read_info, tensorstore

        try:
            tensorstore()  # installed? (one line saying how, before anything else)
            info = read_info(path)
            chosen = info.scale(scale)
        except PrecomputedError as err:
            raise VolumeError(str(err)) from None
        self.path, self.key = path, chosen.key
        lead = (1.0,) * (len(info.shape_of(chosen)) - 3)
        self.scale = lead + chosen.voxel_size
        self.translate = (0.0,) * len(lead) + chosen.origin
        self.description = f"{path}:{chosen.key}"

    def open(self) -> _Opened:
        from .precomputed import TensorArray

        return TensorArray(self.path, self.key), None


class _TiffBackend:
    """A single (multi-page) TIFF: memory-mapped when uncompressed, else read page by page."""

    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)

    def open(self) -> _Opened:
        import tifffile

        try:
            return tifffile.memmap(self.path, mode="r"), None
        except ValueError:  # compressed or tiled: tifffile's Zarr view reads only the pages indexed
            import zarr

            store = tifffile.imread(self.path, aszarr=True)
            logger.debug("%s is not memory-mappable; reading it through tifffile's Zarr store", self.path)
            return zarr.open_array(store, mode="r"), store.close


class _TiffStackBackend:
    """A z stack of 2D TIFF slices, one file per section, read only for the sections indexed."""

    def __init__(self, pattern: str, files: Sequence[Path], slice_shape: tuple[int, ...],
                 dtype: np.dtype):
        self.files = tuple(files)
        self.slice_shape, self.dtype = slice_shape, dtype
        self.description = pattern

    def open(self) -> _Opened:
        return _SliceStack(self.files, self.slice_shape, self.dtype), None


class _NpyBackend:
    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)

    def open(self) -> _Opened:
        return np.load(self.path, mmap_mode="r", allow_pickle=False), None


class _MemoryBackend:
    """An in-memory numpy or dask array (pickled with its data or graph)."""

    def __init__(self, array: Any, description: str):
        self.array = array
        self.description = description

    def open(self) -> _Opened:
        return self.array, None


class _SliceStack:
    """Array-like view of TIFF slices; takes the normalised index that :class:`Volume` builds."""

    def __init__(self, files: Sequence[Path], slice_shape: tuple[int, ...], dtype: np.dtype):
        self.files = files
        self.shape = (len(files), *slice_shape)
        self.dtype = dtype
        self.chunks = (1, *slice_shape)

    def __getitem__(self, index: tuple[int | slice, ...]) -> np.ndarray:
        z, rest = index[0], index[1:]
        if isinstance(z, int):
            return _read_tiff_slice(self.files[z], rest)
        sections = [_read_tiff_slice(self.files[i], rest) for i in range(*z.indices(len(self.files)))]
        if sections:
            return np.stack(sections)
        empty_slice = np.broadcast_to(np.zeros((), self.dtype), self.shape[1:])[rest]
        return np.empty((0, *empty_slice.shape), self.dtype)


def _read_tiff_slice(path: Path, index: tuple[int | slice, ...]) -> np.ndarray:
    import tifffile

    try:
        return np.array(tifffile.memmap(path, mode="r")[index])
    except ValueError:  # compressed slice: decode it whole
        return tifffile.imread(path)[index]


# --------------------------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------------------------


class Volume:
    """Picklable lazy array: holds the path and key and opens the file on first access in each
    process (so PyTorch DataLoader workers can use it), or wraps an in-memory numpy / dask array.

    Create it with :func:`open_volume`. Indexing takes ints, slices (any step) and ``...`` and
    returns a new numpy array the caller may modify.
    """

    def __init__(self, backend: Any):
        self._backend = backend
        self._handle: _ArrayLike | None = None
        self._closer: Callable[[], None] | None = None
        self._pid: int | None = None
        array = self._array()
        self.shape: tuple[int, ...] = tuple(int(n) for n in array.shape)
        self.dtype: np.dtype = np.dtype(array.dtype)
        self.chunks: tuple[int, ...] | None = _chunks_of(array)
        self.source: str = backend.description
        # voxel size and origin per axis, when the file says (OME-Zarr); None otherwise
        self.scale: tuple[float, ...] | None = getattr(backend, "scale", None)
        self.translate: tuple[float, ...] | None = getattr(backend, "translate", None)
        logger.debug("opened %s: shape %s, dtype %s", self.source, self.shape, self.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def in_memory(self) -> bool:
        """True for a numpy array held in RAM (reading it costs no I/O or decompression)."""
        return isinstance(self._backend, _MemoryBackend) and isinstance(self._backend.array, np.ndarray)

    @property
    def file_spec(self) -> str | None:
        """The spec that reopens this volume from its file (``file.h5:key``); None for an array."""
        return None if isinstance(self._backend, _MemoryBackend) else self.source

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d volume")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Volume({self.source!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, index: Any) -> np.ndarray:
        """Read the indexed region only, as numpy."""
        normalised, flipped_axes = _normalize_index(index, self.shape)
        result = self._array()[normalised]
        if hasattr(result, "compute"):  # dask
            result = result.compute()
        result = np.asarray(result)
        if flipped_axes:
            result = np.flip(result, axis=flipped_axes)
        if result.base is not None:  # a view of a memmap or of the caller's array: never hand those out
            result = result.copy()
        return result

    def read(self) -> np.ndarray:
        """The whole array, in memory."""
        return self[...]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(f"{self.source} is read from its source, so it cannot be viewed without "
                             "a copy; use np.asarray(volume) without copy=False")
        array = self.read()
        return array if dtype is None else array.astype(dtype, copy=False)

    def close(self) -> None:
        """Release the open file, if any; the next access reopens it."""
        if self._closer is not None and self._pid == os.getpid():
            self._closer()
        self._handle, self._closer, self._pid = None, None, None

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_handle=None, _closer=None, _pid=None)  # file handles never cross processes
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _array(self) -> _ArrayLike:
        """The open array, (re)opened in this process: handles inherited through fork are not safe."""
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._closer = self._backend.open()
            self._pid = os.getpid()
        return self._handle


def _chunks_of(array: Any) -> tuple[int, ...] | None:
    """The storage block shape (h5py / zarr chunks, dask chunk size, one TIFF slice), if any."""
    chunks = getattr(array, "chunksize", None) or getattr(array, "chunks", None)
    if not isinstance(chunks, tuple) or not all(isinstance(c, (int, np.integer)) for c in chunks):
        return None
    return tuple(int(c) for c in chunks)


def _normalize_index(index: Any,
                     shape: tuple[int, ...]) -> tuple[tuple[int | slice, ...], tuple[int, ...]]:
    """One in-range int or positive-step slice per axis (what h5py and zarr accept), plus the
    output axes to reverse afterwards for negative steps."""
    items = _expand_ellipsis(index if isinstance(index, tuple) else (index,), len(shape))
    normalised: list[int | slice] = []
    flipped: list[int] = []
    out_axis = 0
    for axis, (item, size) in enumerate(zip(items, shape)):
        if isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            normalised.append(_check_int(int(item), axis, size))
            continue
        if not isinstance(item, slice):
            raise TypeError(f"a Volume takes ints, slices and '...' as index, not {type(item).__name__}; "
                            "read() it first for fancy indexing")
        forward, reversed_ = _forward_slice(item, size)
        normalised.append(forward)
        if reversed_:
            flipped.append(out_axis)
        out_axis += 1
    return tuple(normalised), tuple(flipped)


def _expand_ellipsis(items: tuple[Any, ...], ndim: int) -> tuple[Any, ...]:
    positions = [i for i, item in enumerate(items) if item is Ellipsis]
    if len(positions) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if positions:
        pos = positions[0]
        items = items[:pos] + (slice(None),) * (ndim - len(items) + 1) + items[pos + 1 :]
    if len(items) > ndim:
        raise IndexError(f"too many indices: the volume is {ndim}-D but {len(items)} were given")
    return items + (slice(None),) * (ndim - len(items))


def _check_int(i: int, axis: int, size: int) -> int:
    if not -size <= i < size:
        raise IndexError(f"index {i} is out of bounds for axis {axis} with size {size}")
    return i + size if i < 0 else i


def _forward_slice(item: slice, size: int) -> tuple[slice, bool]:
    """The same elements as an ascending slice, and whether they must be reversed after reading."""
    selected = range(*item.indices(size))
    if len(selected) == 0:
        return slice(0, 0, 1), False
    if selected.step > 0:
        return slice(selected.start, selected[-1] + 1, selected.step), False
    return slice(selected[-1], selected.start + 1, -selected.step), True


# --------------------------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------------------------


def open_volume(source: str | os.PathLike | np.ndarray | Any, key: str | None = None) -> Volume:
    """Open a volume lazily from a path spec (``file.h5:raw``, ``store.zarr/raw``, ``a.tif``,
    ``dir/*.tif``, ``a.npy``), wrap an array (numpy, dask, zarr, h5py dataset: napari layer data),
    or return a Volume as is.

    ``key`` names the array inside an HDF5 file or Zarr store, instead of writing it in the spec.
    """
    if isinstance(source, str | os.PathLike):
        return _open_path(source, key)
    if key is not None:
        raise VolumeError(f"key {key!r} applies to files only; index the in-memory array instead")
    if isinstance(source, Volume):
        return source
    return Volume(_array_backend(source))


def _open_path(spec: str | os.PathLike, key: str | None) -> Volume:
    """Open a path spec; a damaged or mislabelled file gives a VolumeError, not a library traceback."""
    try:
        return Volume(_path_backend(spec, key))
    except VolumeError:
        raise
    except (OSError, ValueError) as err:
        raise VolumeError(f"cannot read {os.fsdecode(spec)} ({_first_line(err)}); "
                          "check that the file is complete and in the format its name says") from err


def _path_backend(spec: str | os.PathLike, key: str | None) -> Any:
    from . import precomputed

    if precomputed.claims(spec):
        try:
            folder, scale = precomputed.locate(spec, key)
        except precomputed.PrecomputedError as err:
            raise VolumeError(str(err)) from None
        return _PrecomputedBackend(folder, scale)
    if os.fsdecode(os.fspath(spec)).lower().startswith(precomputed.FILE_PREFIX):
        spec = precomputed.strip_url(spec)[0]  # file:///data/raw.h5:raw names a local file
    path, spec_key = parse_volume_path(spec)
    if key is not None and spec_key is not None and _clean_key(key) != spec_key:
        raise VolumeError(f"{spec} names array {spec_key!r} but key={key!r} was also given; pass only one")
    return _backend_for(path, _clean_key(key) if key is not None else spec_key)


def _array_backend(array: Any) -> Any:
    """Backend for an array object; an h5py dataset is reopened by path, as its handle cannot pickle."""
    if not all(hasattr(array, attr) for attr in ("shape", "dtype", "__getitem__")):
        raise TypeError(f"open_volume takes a path, an array (numpy, dask, zarr, h5py) or a Volume, "
                        f"not {type(array).__name__}")
    library = type(array).__module__.split(".")[0]
    if library == "h5py":
        return _HDF5Backend(Path(array.file.filename), array.name.strip("/"))
    return _MemoryBackend(array, f"<{library} array {_shape_text(array.shape)} {array.dtype}>")


def _backend_for(path: Path, key: str | None) -> Any:
    """The backend that reads ``path`` (with ``key``), after checking the array exists."""
    if _GLOB_CHARS.search(str(path)):
        _refuse_key(path, key)
        return _tiff_stack_backend(str(path))
    kind = _format_of(path)
    if kind == "hdf5":
        return _HDF5Backend(path, _resolve_hdf5_key(path, key))
    if kind == "zarr":
        return _zarr_backend(path, key)
    _refuse_key(path, key)
    return _TiffBackend(path) if kind == "tiff" else _NpyBackend(path)


def _format_of(path: Path) -> str:
    """'hdf5', 'zarr', 'tiff' or 'npy', judged by suffix (or Zarr metadata in a folder)."""
    if not path.exists():
        raise VolumeError(f"{path} does not exist; {_missing_path_hint(path)}")
    suffix = path.suffix.lower()
    if suffix in _HDF5_SUFFIXES:
        return "hdf5"
    if suffix in _ZARR_SUFFIXES or (path.is_dir() and any((path / m).exists() for m in _ZARR_METADATA)):
        return "zarr"
    if suffix in _TIFF_SUFFIXES:
        return "tiff"
    if suffix in _NPY_SUFFIXES:
        return "npy"
    if path.is_dir():
        from .precomputed import _listing

        raise VolumeError(f"{path} is a folder but not a Zarr store or a Neuroglancer precomputed volume "
                          f"(no info file); it holds {_listing(path)}; for a stack of TIFF slices write {path}/*.tif")
    raise VolumeError(f"cannot read {path}: unsupported format {suffix or '(no suffix)'!r}; "
                      f"use {SUPPORTED_FORMATS}")


def _missing_path_hint(path: Path) -> str:
    """Catch 'file.h5/raw', the Zarr syntax used on an HDF5 file."""
    container = next((parent for parent in path.parents if parent.is_file()), None)
    if container is None:
        return "check the path"
    return f"name an array inside a file with a colon: {container}:{path.relative_to(container).as_posix()}"


def _refuse_key(path: Path, key: str | None) -> None:
    if key is not None:
        raise VolumeError(f"{path} holds a single array, so it takes no key; drop ':{key}'")


def _resolve_hdf5_key(path: Path, key: str | None) -> str:
    """The dataset to read: ``key`` if it is one, else the file's only dataset."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            if key is not None and isinstance(file.get(key), h5py.Dataset):
                return key
            return _resolve_key(path, key, _hdf5_names(file))
    except OSError as err:
        message = f"cannot open {path} as HDF5 ({_first_line(err)}); check that it is an HDF5 file"
        raise VolumeError(message) from err


def _zarr_backend(path: Path, key: str | None) -> _ZarrBackend:
    """A plain Zarr array, or one level of an OME-Zarr image (see :func:`_ome_zarr_backend`)."""
    import zarr

    try:
        root = zarr.open(str(path), mode="r")
    except Exception as err:  # zarr raises several unrelated types for an unreadable store
        raise VolumeError(f"cannot open {path} as a Zarr store ({_first_line(err)}); check the path") from err
    ome = _ome_zarr_backend(path, root, key) if isinstance(root, zarr.Group) else None
    if ome is not None:
        return ome
    return _ZarrBackend(path, _resolve_zarr_key(path, key, root))


def _ome_zarr_backend(path: Path, root: Any, key: str | None) -> _ZarrBackend | None:
    """One level of an OME-Zarr image, when ``root`` (or the group ``key`` names) has
    ``multiscales`` metadata: level 0 without a key, else the level ``key`` names (its path or
    its index); a ``labels`` group with one label (or ``labels/NAME``) gives that label's level 0.
    None for a plain Zarr group; a ``*.ome.zarr`` without the metadata is an error."""
    import zarr

    from .ome_zarr import OmeZarrError, is_ome_name, label_names, multiscales_attr, read_multiscale

    group, level = "", key
    at_root = multiscales_attr(root) is not None
    if key is None:
        if not at_root:
            if is_ome_name(path):  # named as OME-Zarr but without its metadata: say so
                try:
                    read_multiscale(path)
                except OmeZarrError as err:
                    raise VolumeError(str(err)) from None
            return None
    else:
        node = root.get(key)
        if isinstance(node, zarr.Array):  # a level named by its path (also inside labels/NAME)
            parent, _, leaf = key.rpartition("/")
            holder = root.get(parent) if parent else root
            if not (isinstance(holder, zarr.Group) and multiscales_attr(holder)):
                return None
            group, level = parent, leaf
        elif isinstance(node, zarr.Group):
            names = label_names(node)
            if not multiscales_attr(node) and len(names) == 1:
                key = f"{key}/{names[0]}"
                node = root.get(key)
            if isinstance(node, zarr.Group) and multiscales_attr(node):
                group, level = key, None
            elif not at_root:
                return None
        elif not at_root:
            return None
    try:
        image = read_multiscale(path, group)
        chosen = image.level(level)
    except OmeZarrError as err:
        raise VolumeError(str(err)) from None
    drop = 0
    while drop < len(image.axes) - 2 and image.axes[drop] == "t" and chosen.shape[drop] == 1:
        drop += 1
    return _ZarrBackend(path, chosen.path, chosen.scale[drop:], chosen.translate[drop:], drop)


def _resolve_zarr_key(path: Path, key: str | None, root: Any) -> str | None:
    """The array to read: ``key`` if it is one, the root if the store is an array, else the only array."""
    import zarr

    if isinstance(root, zarr.Array):
        _refuse_key(path, key)
        return None
    if key is not None and isinstance(root.get(key), zarr.Array):
        return key
    return _resolve_key(path, key, _zarr_names(root))


def _resolve_key(path: Path, key: str | None, names: list[str]) -> str:
    """Check ``key`` against the arrays in a container, with messages that list what exists."""
    if key is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise VolumeError(f"{path} holds no array; check that this is the right file")
        raise VolumeError(f"{path} holds several arrays ({_names_text(names)}); name one as {path}:{names[0]}")
    inside = [n for n in names if n.startswith(key + "/")]
    if inside:
        raise VolumeError(f"{key!r} in {path} is a group, not an array; "
                          f"name an array in it, e.g. {path}:{inside[0]}")
    if key in names:
        return key
    raise VolumeError(f"{key!r} not found in {path}; arrays there: {_names_text(names) or 'none'}")


def _tiff_stack_backend(pattern: str) -> _TiffStackBackend:
    """Backend over the TIFF files a glob matches, in natural order, all checked to be one shape."""
    import tifffile

    files = sorted((Path(f) for f in glob.glob(pattern) if f.lower().endswith(_TIFF_SUFFIXES)),
                   key=lambda p: _natural_key(str(p)))
    if not files:
        raise VolumeError(f"no TIFF file matches {pattern}; check the folder and the pattern (e.g. dir/*.tif)")
    headers = []
    for file in files:
        with tifffile.TiffFile(file) as tif:
            series = tif.series[0]
            headers.append((tuple(series.shape), np.dtype(series.dtype)))
    shape, dtype = headers[0]
    for file, (other_shape, other_dtype) in zip(files, headers):
        if other_shape != shape:
            raise VolumeError(f"TIFF slices of {pattern} differ in shape: {files[0].name} is {_shape_text(shape)} "
                              f"but {file.name} is {_shape_text(other_shape)}; all slices must have one shape")
        if other_dtype != dtype:
            raise VolumeError(f"TIFF slices of {pattern} differ in dtype: {files[0].name} is {dtype} "
                              f"but {file.name} is {other_dtype}; save all slices with one dtype")
    return _TiffStackBackend(pattern, files, shape, dtype)


def list_arrays(path: str | os.PathLike) -> list[str]:
    """Names of the arrays in an HDF5 file or Zarr store (nested as ``'group/array'``), sorted.

    Files that hold one unnamed array (TIFF, .npy, a glob of slices, a Zarr array at the root, a
    precomputed volume) give ``[]``: open them without a key. A folder of precomputed volumes
    (``pred.precomputed``) gives their names.
    """
    from . import precomputed

    if precomputed.claims(path):
        folder = Path(precomputed.strip_url(path)[0]).expanduser()
        return [] if precomputed.is_volume_dir(folder) else precomputed.list_volumes(folder)
    file, _ = parse_volume_path(path)
    if _GLOB_CHARS.search(str(file)):
        return []
    kind = _format_of(file)
    if kind == "hdf5":
        import h5py

        with h5py.File(file, "r") as handle:
            return _hdf5_names(handle)
    if kind == "zarr":
        import zarr

        root = zarr.open(str(file), mode="r")
        return [] if isinstance(root, zarr.Array) else _zarr_names(root)
    return []


def _hdf5_names(file: Any) -> list[str]:
    """Datasets with at least one axis (scalar datasets are metadata, not volumes)."""
    import h5py

    names: list[str] = []
    def collect(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset) and node.ndim:
            names.append(name)

    file.visititems(collect)
    return sorted(names)


def _zarr_names(group: Any) -> list[str]:
    import zarr

    return sorted(name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))


def _natural_key(text: str) -> list[Any]:
    """Sort key so that slice_2.tif comes before slice_10.tif."""
    parts = re.split(r"(\d+)", text)
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts]


def _names_text(names: Sequence[str]) -> str:
    hidden = len(names) - _MAX_NAMES_SHOWN
    return ", ".join(names[:_MAX_NAMES_SHOWN]) + (f", ... ({hidden} more)" if hidden > 0 else "")


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

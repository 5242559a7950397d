"""Prediction outputs on disk: Zarr stores and HDF5 files that never look complete before they are.

``open_output`` writes into a temporary sibling (``.pred.zarr.partial-<pid>``) and
:meth:`OutputWriter.commit` renames it into place at the end, so an interrupted run leaves at most
a hidden ``.partial-*`` entry and never a file under the final name that readers would take for a
finished prediction (we chose rename-into-place over a ``complete`` attribute because readers
outside this project would not know to check it). An existing output is refused unless
``overwrite``; with ``overwrite`` the old one is replaced only when the new one is complete, and
as a whole (the file or store, not only the array inside). A Zarr output's partial store also
holds the manifest of the blocks written (:mod:`.resume`), removed just before the rename, so
that ``predict(..., resume=True)`` can continue it after the process was killed.

Path specs: ``pred.zarr`` (a group holding the array ``probabilities``), ``pred.zarr:name`` or
``pred.zarr/name``, ``pred.h5`` and ``pred.h5:name``; ``pred.ome.zarr`` is an OME-Zarr image
(probabilities as levels ``0``, ``1``, ... and labels as ``labels/<name>``, each with a pyramid
built block by block from level 0 when the output is committed, see :mod:`..data.ome_zarr`);
``pred.precomputed`` or ``precomputed://PATH`` is a folder of Neuroglancer precomputed volumes
(:mod:`..data.precomputed`): ``probabilities`` (type ``image``, float32 or uint8: float16 is not a
precomputed data type, so it is stored as float32) and ``labels`` (type ``segmentation``,
uint32), with the input's voxel size (nm) and origin, chunks aligned to the blocks. It is
written like the others (a hidden temporary sibling renamed when complete) but cannot be resumed.
Probabilities are stored channel-first
(C, z, y, x) as float16, float32 or uint8 (probability * 255, rounded). Label volumes go beside
them with :func:`write_labels` (uint16 when the ids fit, else uint32; never int64), or block by
block with :class:`LabelsWriter` when they are larger than memory.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config.schema import InferenceConfig
from ..data.volume_io import (
    HDF5_SUFFIXES,
    OME_ZARR_SUFFIX,
    ZARR_SUFFIXES,
    close_container,
    create_array,
    create_container,
    delete_array,
    exists,
    move_array,
    open_container,
    partial_sibling,
    remove,
    replace_path,
)
from ..data.volume_io import (
    open_array as open_stored_array,
)
from ..data.volumes import parse_volume_path

__all__ = [
    "DEFAULT_ARRAY",
    "LabelsWriter",
    "OUTPUT_DTYPES",
    "OutputSpaceError",
    "OutputSpec",
    "OutputWriter",
    "PrecomputedSink",
    "ZarrSink",
    "choose_chunks",
    "check_output",
    "check_free_space",
    "is_no_space",
    "labels_dtype",
    "open_array",
    "open_output",
    "parse_output",
    "planned_bytes",
    "stored_dtype",
    "size_text",
    "to_storage",
    "write_labels",
]

logger = logging.getLogger(__name__)

DEFAULT_ARRAY = "probabilities"
_DTYPE_FIELD = InferenceConfig.__dataclass_fields__["output_dtype"]
OUTPUT_DTYPES = tuple(c for c in _DTYPE_FIELD.metadata["choices"] if c is not None)  # the schema's
_CHUNK_TARGET = (32, 128, 128)  # z, y, x: about 1 MB of float16 per channel


@dataclass(frozen=True)
class OutputSpec:
    """Where an output goes: the file or store, the array inside it and the format."""

    path: Path
    key: str
    kind: str  # 'zarr', 'hdf5' or 'precomputed' (a folder of precomputed volumes)
    ome: bool = False  # an OME-Zarr image (pred.ome.zarr): key '0' is level 0 of its pyramid

    def __str__(self) -> str:
        return f"{self.path}:{self.key}"

    def sibling(self, tag: str) -> Path:
        """A hidden temporary name beside the output (same folder, so a rename is atomic)."""
        return partial_sibling(self.path, tag)


def parse_output(spec: str | os.PathLike, default_key: str = DEFAULT_ARRAY) -> OutputSpec:
    """``pred.zarr[:key]`` / ``pred.h5[:key]`` / ``pred.precomputed[:key]`` ->
    :class:`OutputSpec` (one-line error otherwise)."""
    precomputed = _precomputed_output(spec, default_key)
    if precomputed is not None:
        return precomputed
    path, key = parse_volume_path(spec)
    suffix = path.suffix.lower()
    if path.name.lower().endswith(OME_ZARR_SUFFIX):
        if key not in (None, "0"):
            raise ValueError(f"{os.fsdecode(spec)}: an OME-Zarr output holds the probabilities as its "
                             f"image (level 0 at {path}/0, labels under {path}/labels); drop ':{key}'")
        return OutputSpec(path, "0", "zarr", ome=True)
    if suffix in ZARR_SUFFIXES:
        kind = "zarr"
    elif suffix in HDF5_SUFFIXES:
        kind = "hdf5"
    else:
        raise ValueError(f"cannot write a prediction to {os.fsdecode(spec)}: name a Zarr store, "
                         "an OME-Zarr image, an HDF5 file or a precomputed folder, e.g. pred.zarr, "
                         "pred.zarr:probabilities, pred.ome.zarr, pred.h5:probs or pred.precomputed")
    return OutputSpec(path, key or default_key, kind)


def _precomputed_output(spec: str | os.PathLike, default_key: str) -> OutputSpec | None:
    """``pred.precomputed[:key]``, ``pred.precomputed/key`` or ``precomputed://PATH`` (a folder of
    precomputed volumes, ``key`` one of them); None for other outputs."""
    from ..data.precomputed import PRECOMPUTED_SUFFIX, list_volumes, strip_url, tensorstore

    text = os.fsdecode(os.fspath(spec))
    lowered = text.lower()
    if list_volumes(Path(text).expanduser()):  # a folder written as precomputed://PATH
        return OutputSpec(Path(text).expanduser(), default_key, "precomputed")
    if not (lowered.startswith("precomputed://") or PRECOMPUTED_SUFFIX in lowered):
        return None
    local, said = strip_url(text)
    match = re.search(r"\.precomputed(?=$|[/\\:])", local, flags=re.IGNORECASE)
    if match is None and not said:
        return None
    if match is not None:
        head, key = local[:match.end()], local[match.end():].strip("/\\:")
    else:  # precomputed://PATH[:key]
        head, _, key = local.rpartition(":") if ":" in local.rsplit("/", 1)[-1] else (local, "", "")
    if "/" in key or ":" in key:
        raise ValueError(f"{text}: name one volume inside the precomputed folder, e.g. "
                         f"{head}:{default_key}")
    tensorstore()  # installed? (one line saying how, before any work)
    return OutputSpec(Path(head).expanduser(), key or default_key, "precomputed")


def stored_dtype(spec: OutputSpec | None, dtype: str) -> str:
    """The probabilities dtype an output stores ``dtype`` as: float16 becomes float32 in a
    precomputed output (precomputed has no float16); others keep it."""
    if spec is not None and spec.kind == "precomputed" and str(dtype) == "float16":
        return "float32"
    return str(dtype)


def check_output(spec: OutputSpec, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite`` (checked before any work starts)."""
    if exists(spec.path) and not overwrite:
        raise ValueError(f"{spec.path} already exists; pass overwrite=True (--overwrite) to "
                         "replace it, or choose another output path")


def value_scale(dtype: str | np.dtype) -> float:
    """The stored value of probability 1: 255 for uint8, 1 for floats."""
    return 255.0 if np.dtype(dtype) == np.uint8 else 1.0


def to_storage(probabilities: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """Float probabilities in the stored dtype: uint8 is ``round(p * 255)``, floats are cast."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.rint(np.clip(probabilities, 0.0, 1.0) * value_scale(dtype)).astype(np.uint8)
    return np.asarray(probabilities).astype(dtype, copy=False)


def choose_chunks(channels: int, shape: Sequence[int],
                  block: Sequence[int] | None = None) -> tuple[int, ...]:
    """Chunks (1, z, y, x): one channel each, so reading one class is cheap; when ``block`` is
    given, the chunk divides the block on every axis, so blocks written concurrently (dask) never
    share a chunk."""
    chunks = []
    for axis, (size, target) in enumerate(zip(shape, _CHUNK_TARGET)):
        if block is None or block[axis] >= size:
            chunk = min(size, target)
        else:
            chunk = _divisor_at_most(int(block[axis]), target)
        chunks.append(max(1, min(chunk, size)))
    return (1, *chunks)


def _divisor_at_most(size: int, target: int) -> int:
    """The largest divisor of ``size`` up to ``target``; ``size`` itself if that one is tiny."""
    if size <= target:
        return size
    divisor = max(d for d in range(1, target + 1) if size % d == 0)
    return divisor if divisor * 4 >= target else size


class OutputWriter:
    """A probabilities array (C, z, y, x) being written into a temporary sibling of its output.

    ``write`` takes float32 probabilities and stores them in the output dtype; ``commit`` renames
    the finished output into place; ``abort`` removes it. Used as a context manager, an exception
    aborts.
    """

    def __init__(self, spec: OutputSpec, shape: Sequence[int], dtype: str,
                 chunks: Sequence[int] | None, overwrite: bool,
                 attrs: Mapping[str, Any] | None = None,
                 voxel_size: Sequence[float] | None = None,
                 origin: Sequence[float] | None = None,
                 adopt: Path | None = None) -> None:
        if str(dtype) not in OUTPUT_DTYPES:
            raise ValueError(f"unknown output dtype {dtype!r}; "
                             f"choose one of: {', '.join(OUTPUT_DTYPES)}")
        check_output(spec, overwrite)
        self.spec, self.overwrite = spec, overwrite
        self.voxel_size, self.origin = voxel_size, origin  # z, y, x (OME-Zarr metadata)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(stored_dtype(spec, dtype))
        self.chunks = (tuple(chunks) if chunks is not None
                       else choose_chunks(self.shape[0], self.shape[1:]))
        self.temporary = spec.sibling("partial")
        self.log: Any = None  # a .resume.ResumeLog of the blocks written (Zarr outputs)
        self.needed: int | None = None  # bytes still to write, before compression (messages)
        self._file: Any = None
        self._array: Any = None
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        if adopt is not None:  # resume: continue an interrupted run's partial store
            self._adopt(Path(adopt))
            return
        remove(self.temporary)
        attributes = {"axes": "czyx", "dtype": str(self.dtype),
                      "scale": int(value_scale(self.dtype)), **dict(attrs or {})}
        if spec.kind == "precomputed":
            self._file, self._array = _create_precomputed(self.temporary, spec.key, self.shape,
                                                          self.dtype, self.chunks, attributes,
                                                          voxel_size, origin)
        else:
            create = _create_zarr_array if spec.kind == "zarr" else _create_hdf5_dataset
            self._file, self._array = create(self.temporary, spec.key, self.shape, self.dtype,
                                             self.chunks, attributes)
        logger.debug("writing %s into %s", spec, self.temporary)

    def _adopt(self, partial: Path) -> None:
        """Take over the partial store of an interrupted run (renamed to this process's name)."""
        if self.spec.kind != "zarr":
            raise ValueError(f"{self.spec.path} is HDF5, which cannot be resumed; write to a "
                             "Zarr store (e.g. pred.zarr) to resume interrupted runs")
        if partial != self.temporary:
            remove(self.temporary)
            os.rename(partial, self.temporary)
        array = open_stored_array(self.temporary, self.spec.key, "zarr", mode="r+")
        found = (tuple(array.shape), np.dtype(array.dtype), tuple(array.chunks))
        if found != (self.shape, self.dtype, tuple(self.chunks)):
            raise ValueError(f"the unfinished output {self.temporary} holds {self.spec.key} "
                             f"{found[0]} {found[1]} in chunks {found[2]}, not {self.shape} "
                             f"{self.dtype} in chunks {tuple(self.chunks)}; drop --resume "
                             "(resume=False) to start over")
        self._array = array
        logger.debug("continuing %s in %s", self.spec, self.temporary)

    def write(self, region: Sequence[slice], probabilities: np.ndarray, *,
              stored: bool = False) -> None:
        """Store float probabilities (C, *region) at the spatial ``region``; ``stored=True``:
        they are already in the output dtype (converted by :func:`to_storage`'s rule)."""
        if stored and np.dtype(probabilities.dtype) != self.dtype:
            raise ValueError(f"stored=True takes {self.dtype} data, not {probabilities.dtype}")
        data = probabilities if stored else to_storage(probabilities, self.dtype)
        self._array[(slice(None), *region)] = data

    def smooth_along_z(self, sigma: float, memory_limit_mb: int, **options: Any) -> bool:
        """Filter the written probabilities along z in place, before commit; True when stopped
        (:func:`.z_smoothing.smooth_store_along_z`, which takes ``options``)."""
        from .z_smoothing import smooth_store_along_z

        return smooth_store_along_z(self._array, sigma, memory_limit_mb, value_scale(self.dtype), **options)

    def sink(self) -> ZarrSink | PrecomputedSink:
        """A picklable writer of the same temporary array, for worker processes (Zarr and
        precomputed; its blocks must align with the chunks)."""
        if self.spec.kind == "precomputed":
            return PrecomputedSink(str(self.temporary / self.spec.key), str(self.dtype))
        if self.spec.kind != "zarr":
            raise ValueError(f"{self.spec.path} is HDF5, which worker processes cannot write at "
                             "the same time; write to a Zarr store (e.g. pred.zarr) for dask")
        return ZarrSink(str(self.temporary), self.spec.key, str(self.dtype))

    def commit(self) -> Path:
        """Close and move the finished output into place (replacing an old one only now); an
        OME-Zarr output gets its pyramid (block by block from level 0) and metadata first."""
        self._close()
        if self.spec.ome:
            from ..data.ome_zarr import finish_image

            try:
                finish_image(self.temporary, self.spec.key, axes="czyx", method="mean",
                             voxel_size=self.voxel_size, origin=self.origin, name=DEFAULT_ARRAY)
            except BaseException:
                self.abort()
                raise
        if self.log is not None:  # complete: the finished output carries no resume manifest
            self.log.remove()
        if exists(self.spec.path) and not self.overwrite:  # appeared while we were running
            self.abort()
            check_output(self.spec, self.overwrite)
        replace_path(self.temporary, self.spec.path)
        logger.info("wrote %s", self.spec)
        return self.spec.path

    def abort(self) -> None:
        """Remove the partial output; the final path is left as it was."""
        self._close()
        if self.spec.kind == "zarr":
            _settle_zarr()
        try:
            remove(self.temporary)
        except OSError:  # something still wrote into it: once more, then leave what is left
            _settle_zarr()
            remove(self.temporary, ignore_errors=True)
            if exists(self.temporary):
                logger.warning("could not remove the unfinished output %s; delete it",
                               self.temporary)

    def keep(self) -> Path:
        """Close, leaving the partial output (and its resume manifest) where it is."""
        self._close()
        return self.temporary

    def open_result(self) -> Any:
        """The committed array, opened read-only (a zarr.Array or an h5py.Dataset)."""
        return open_array(self.spec)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._array = None, None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is not None:
            self.abort()


@dataclass(frozen=True)
class ZarrSink:
    """Writes blocks into a Zarr array from any process (blocks must align with its chunks)."""

    path: str
    key: str
    dtype: str

    def write(self, region: Sequence[slice], probabilities: np.ndarray) -> None:
        array = open_stored_array(Path(self.path), self.key, "zarr", mode="r+")
        array[(slice(None), *region)] = to_storage(probabilities, self.dtype)


@dataclass(frozen=True)
class PrecomputedSink:
    """Writes blocks into a precomputed volume from any process: tensorstore writes each chunk
    file whole, so processes writing blocks aligned with the chunks never share a file."""

    path: str
    dtype: str

    def write(self, region: Sequence[slice], probabilities: np.ndarray) -> None:
        from ..data.precomputed import open_output_array

        array = open_output_array(self.path, writable=True)
        array[(slice(None), *region)] = to_storage(probabilities, self.dtype)


def _settle_zarr(timeout: float = 10.0) -> None:
    """Wait for the chunk writes Zarr still runs in its event-loop thread: when one chunk of a
    region fails to write (a full disk), the others of the same region go on after the error is
    raised here, and would recreate (or keep filling) a partial store being removed."""
    import asyncio

    try:
        from zarr.core import sync as zarr_sync

        loop = zarr_sync.loop[0]
    except (ImportError, AttributeError, IndexError):
        return
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def others() -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(others(), loop).result(timeout + 5)
    except Exception:  # noqa: BLE001 - best effort: removing the store comes next anyway
        logger.debug("zarr writes still running after %.0f s", timeout)


def open_output(path_spec: str | os.PathLike, shape: Sequence[int], dtype: str = "float16",
                chunks: Sequence[int] | None = None, overwrite: bool = False,
                attrs: Mapping[str, Any] | None = None,
                voxel_size: Sequence[float] | None = None,
                origin: Sequence[float] | None = None) -> OutputWriter:
    """Start writing a (C, z, y, x) probabilities array to ``path_spec`` (see the module doc)."""
    return OutputWriter(parse_output(path_spec), shape, dtype, chunks, overwrite, attrs,
                        voxel_size=voxel_size, origin=origin)


def open_array(spec: OutputSpec) -> Any:
    """A stored array, read-only: zarr.Array, or h5py.Dataset (its file stays open)."""
    return open_stored_array(spec.path, spec.key, spec.kind)


# --------------------------------------------------------------------------------------------
# Disk space
# --------------------------------------------------------------------------------------------


class OutputSpaceError(OSError):
    """The output's file system is (or would be) full: a one-line message naming the output."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(errno.ENOSPC, message, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_no_space(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says the disk is full (ENOSPC / EDQUOT; h5py's own
    errors carry no errno, only the text)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1  # type: ignore[assignment]
    return False


def size_text(size: float) -> str:
    """Bytes as B, KiB, MiB, GiB or TiB (one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def free_bytes(path: Path) -> int:
    """Free space (bytes) on the file system that holds ``path`` (or its nearest existing
    parent folder)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return int(shutil.disk_usage(folder).free)


def planned_bytes(shape: Sequence[int], dtype: Any) -> int:
    """The size of a (C, z, y, x) output before compression."""
    return math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize


def check_free_space(spec: OutputSpec, needed: int, what: str = "the output") -> int:
    """Refuse (one line, before any work) when ``needed`` bytes exceed the free space of the
    output's file system; the free bytes otherwise."""
    free = free_bytes(spec.path.parent)
    if needed > free:
        raise OutputSpaceError(
            f"not enough space for {spec.path}: {what} needs up to {size_text(needed)} (before "
            f"compression) but only {size_text(free)} is free on its file system; free some "
            "space, write elsewhere or store uint8 probabilities (--output-dtype uint8)",
            spec.path)
    return free


# --------------------------------------------------------------------------------------------
# Labels beside the probabilities
# --------------------------------------------------------------------------------------------


def labels_dtype(labels: np.ndarray) -> np.dtype:
    """uint16 when the ids fit, else uint32 (DESIGN.md: label volumes are never int64)."""
    if labels.size == 0:
        return np.dtype(np.uint16)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, not {labels.dtype}; round or cast them first")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"labels must be non-negative ids, but the smallest is {low}")
    if high > np.iinfo(np.uint32).max:
        raise ValueError(f"label id {high} does not fit in uint32; relabel sequentially first")
    return np.dtype(np.uint16 if high <= np.iinfo(np.uint16).max else np.uint32)


def write_labels(path_spec: str | os.PathLike, labels: Any, name: str = "labels",
                 overwrite: bool = False) -> Path:
    """Add a label volume as array ``name`` beside the probabilities in the output file or store
    (created when missing; a ``:key`` in ``path_spec`` is ignored, ``name`` names the array).

    The array is written under a temporary name and renamed, so a crash leaves no half-written
    ``name``; an existing ``name`` is refused unless ``overwrite``.
    """
    spec = parse_output(path_spec, default_key=name)
    data = np.asarray(labels)
    data = data.astype(labels_dtype(data), copy=False)
    if spec.ome or spec.kind == "precomputed":  # labels/<name> with a pyramid; a segmentation
        with LabelsWriter(path_spec, name, overwrite=overwrite) as writer:
            array = writer.create(data.shape, data.dtype)
            array[...] = data
            writer.commit()
        where = f"labels/{name}" if spec.ome else name
        logger.info("wrote %s labels %s to %s/%s", array.dtype, data.shape, spec.path, where)
        return spec.path
    target = OutputSpec(spec.path, name, spec.kind)
    if not exists(spec.path):
        fresh = target.sibling("partial")
        remove(fresh)
        try:
            _write_array(fresh, target, data, overwrite=False)
            replace_path(fresh, spec.path)
        except BaseException:
            remove(fresh)
            raise
    else:
        _write_array(spec.path, target, data, overwrite)
    logger.info("wrote %s labels %s to %s", data.dtype, data.shape, target)
    return spec.path


class LabelsWriter:
    """A label volume written block by block as array ``name`` beside the probabilities of an
    existing prediction output (``pred.zarr`` or ``pred.h5``), so that it never has to be whole
    in memory.

    Arrays made by :meth:`create` live under temporary names in the same store or file;
    :meth:`commit` renames the one made with ``final=True`` to ``name`` (replacing an old one only
    then) and removes the others, :meth:`abort` (or an exception in a ``with`` block) removes
    them all, so a crash leaves no half-written ``name``. An existing ``name`` is refused unless
    ``overwrite``. :meth:`read` opens another array of the same store or file for reading (for
    HDF5 through the same handle, since a file cannot be open for reading and appending at once).
    """

    def __init__(self, path_spec: str | os.PathLike, name: str = "labels",
                 overwrite: bool = False) -> None:
        spec = parse_output(path_spec, default_key=name)
        if not exists(spec.path):
            raise ValueError(f"{spec.path} does not exist; write the prediction first")
        self.container, self.kind, self.name = spec.path, spec.kind, name
        self.ome = spec.ome
        self._made: list[str] = []
        self._final: str | None = None
        self._handle: Any = open_container(spec.path, spec.kind)
        try:
            taken = exists(spec.path / "labels" / name) if self.ome else name in self._handle
            _refuse_existing(spec.path, f"labels/{name}" if self.ome else name,
                             taken and not overwrite)
        except BaseException:
            self._close()
            raise

    def read(self, key: str) -> Any:
        """The array ``key`` of the same store or file (e.g. ``probabilities``)."""
        if self._handle is None:
            raise ValueError(f"{self.container} is closed")
        if key not in self._handle:
            raise ValueError(f"{self.container} holds no array {key!r}")
        return self._handle[key]

    def create(self, shape: Sequence[int], dtype: Any, *, final: bool = True) -> Any:
        """A new array under a temporary name; the ``final`` one becomes ``name`` on commit."""
        if final and self._final is not None:
            raise ValueError("the final labels array was already created")
        tag = "partial" if final else f"scratch{len(self._made)}"
        key = f"{self.name}.{tag}-{os.getpid()}"
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        chunks = _label_chunks(shape)
        delete_array(self._handle, key)
        self._made.append(key)
        array = _create_labels_array(self._handle, key, shape, dtype, chunks)
        if final:
            self._final = key
        return array

    def commit(self) -> Path:
        """Rename the final array to ``name`` and remove the temporary ones."""
        if self._final is None:
            raise ValueError("nothing to commit: create the labels array first")
        for key in self._made:
            if key != self._final:
                delete_array(self._handle, key)
        if self.ome:  # labels/<name>: level 0 moved there, its pyramid and metadata added
            from ..data.ome_zarr import finish_labels

            finish_labels(self.container, self._final, self.name)
        else:
            delete_array(self._handle, self.name)
            move_array(self._handle, self._final, self.name, self.container)
        self._made, self._final = [], None
        self._close()
        logger.info("wrote %s:%s", self.container, f"labels/{self.name}" if self.ome else self.name)
        return self.container

    def abort(self) -> None:
        """Remove every array made here; ``name`` is left as it was."""
        if self._handle is not None:
            for key in self._made:
                delete_array(self._handle, key)
        self._made, self._final = [], None
        self._close()

    def _close(self) -> None:
        close_container(self._handle)
        self._handle = None

    def __enter__(self) -> LabelsWriter:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is not None:
            self.abort()
        else:
            self._close()


def _write_array(container: Path, target: OutputSpec, data: np.ndarray, overwrite: bool) -> None:
    """Write ``data`` as ``target.key`` into ``container``: under a temporary name, then renamed."""
    temporary = f"{target.key}.partial-{os.getpid()}"
    handle = open_container(container, target.kind)
    try:
        _refuse_existing(container, target.key, target.key in handle and not overwrite)
        array = _create_labels_array(handle, temporary, data.shape, data.dtype,
                                     _label_chunks(data.shape))
        array[...] = data
        delete_array(handle, target.key)
        move_array(handle, temporary, target.key, container)
    finally:
        close_container(handle)


def _create_labels_array(container: Any, key: str, shape: Sequence[int], dtype: Any,
                         chunks: Sequence[int] | None) -> Any:
    """An all-zero label array: gzip level 1 in HDF5 (labels compress well, fast to write)."""
    return create_array(container, key, shape, dtype, chunks=chunks, fill_value=0, gzip=1,
                        overwrite=True)


def _refuse_existing(container: Path, key: str, refuse: bool) -> None:
    if refuse:
        raise ValueError(f"{container} already holds {key!r}; pass overwrite=True or another name")


def _label_chunks(shape: Sequence[int]) -> tuple[int, ...] | None:
    """Chunks of (32, 128, 128) over the last three axes (1 on any leading axis)."""
    if not shape or 0 in shape:
        return None
    targets = (1,) * max(0, len(shape) - 3) + _CHUNK_TARGET[-min(len(shape), 3):]
    return tuple(min(n, t) for n, t in zip(shape, targets))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _create_zarr_array(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype,
                       chunks: Sequence[int], attrs: Mapping[str, Any]) -> tuple[None, Any]:
    """(no file handle, the array) in a new Zarr group at ``path``."""
    group = create_container(path, "zarr")
    # write_empty_chunks: Zarr's default compares every chunk with the fill value before writing
    # it (a third of the write time here); an all-zero chunk compresses to a few bytes anyway
    return None, create_array(group, key, shape, dtype, chunks=tuple(chunks), fill_value=0,
                              attrs=attrs, zarr_options={
                                  "compressors": _probability_codec(dtype),
                                  "config": {"write_empty_chunks": True}})


def _create_precomputed(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype,
                        chunks: Sequence[int], attrs: Mapping[str, Any],
                        voxel_size: Sequence[float] | None,
                        origin: Sequence[float] | None) -> tuple[None, Any]:
    """(no file handle, the array) in a new folder ``path`` of precomputed volumes: volume
    ``key`` of type image, its chunks the spatial ``chunks`` (every channel in each chunk), the
    settings in its ``provenance`` file."""
    from ..data.precomputed import create_volume, write_provenance

    create_container(path, "precomputed")
    array = create_volume(path / key, shape[1:], dtype, layer_type="image", channels=shape[0],
                          chunks=tuple(chunks)[1:], voxel_size=voxel_size, origin=origin)
    write_provenance(path / key, "napari-connectomics prediction", attrs)
    return None, array


def _probability_codec(dtype: np.dtype) -> Any:
    """Blosc, fast enough to keep up with prediction: LZ4 with byte shuffle for float16/float32
    (on predicted probabilities as small as Zarr's default zstd, written 2-3x faster), zstd level
    1 for uint8 (which LZ4 does not shrink). Blosc is a standard Zarr codec (numcodecs)."""
    from zarr.codecs import BloscCodec

    if np.dtype(dtype) == np.uint8:
        return BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _create_hdf5_dataset(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype,
                         chunks: Sequence[int], attrs: Mapping[str, Any]) -> tuple[Any, Any]:
    """(the open file, the dataset) in a new HDF5 file at ``path``."""
    file = create_container(path, "hdf5")
    try:
        dataset = create_array(file, key, shape, dtype, chunks=tuple(chunks), fill_value=0,
                               gzip=1, shuffle=True, attrs=attrs)
    except BaseException:
        file.close()
        raise
    return file, dataset

"""OME-Zarr (OME-NGFF) images: multiscale groups, read and written through the ``ome-zarr`` library.

Reading (:func:`read_multiscale`): the group's ``multiscales`` metadata (NGFF 0.4 on Zarr v2 or
0.5 on Zarr v3, parsed and checked by ``ome-zarr``) gives the levels (largest first), the axes, and
for each level the voxel size and the origin from its ``coordinateTransformations`` (combined
with the multiscale's own, if any). Volumes open one level (``image.ome.zarr`` is level 0,
``image.ome.zarr/1`` or ``image.ome.zarr:1`` another; see :mod:`.volumes`); napari shows all.

Writing (:func:`finish_image`, :func:`finish_labels`): level 0 is written first (block by block,
by whoever produces it), then each lower level is computed from the one above it with dask, chunk
by chunk, so a volume larger than memory never has to be read whole. Each level halves the axes
whose voxel size is within twice the finest (so an anisotropic EM stack is first downsampled in
y-x only), until every spatial axis is at most :data:`MIN_LEVEL_SIZE`. Labels are subsampled
(every second voxel: ids are never mixed); images and probabilities are averaged over 2x2x2 (or
1x2x2) blocks. Metadata is NGFF 0.5 (Zarr v3), written with ``ome_zarr.writer``. Predictions put
labels where NGFF says: ``pred.ome.zarr/labels/<name>`` (a multiscale with ``image-label``).

``ome_zarr`` is imported only when an OME-Zarr group is read or written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MIN_LEVEL_SIZE",
    "Level",
    "Multiscale",
    "OME_SUFFIX",
    "OmeZarrError",
    "default_axes",
    "downsample_block",
    "finish_image",
    "finish_labels",
    "is_ome_name",
    "label_names",
    "multiscales_attr",
    "plan_factors",
    "read_multiscale",
]

OME_SUFFIX = ".ome.zarr"
MIN_LEVEL_SIZE = 32  # stop the pyramid once no spatial axis is larger than this
MAX_LEVELS = 12
_SPATIAL = ("z", "y", "x")


class OmeZarrError(ValueError):
    """A one-line message that says what is wrong with an OME-Zarr and how to fix it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def is_ome_name(path: str | os.PathLike) -> bool:
    """True for a path named ``*.ome.zarr``."""
    return os.fsdecode(os.fspath(path)).rstrip("/\\").lower().endswith(OME_SUFFIX)


def multiscales_attr(group: Any) -> list[dict[str, Any]] | None:
    """The ``multiscales`` list of a zarr group (NGFF 0.4 or 0.5 layout), or None."""
    attrs = dict(group.attrs)
    value = (attrs.get("ome") or {}).get("multiscales", attrs.get("multiscales"))
    return value if isinstance(value, list) and value else None


def label_names(group: Any) -> list[str]:
    """Names listed in an NGFF ``labels`` group, or []."""
    attrs = dict(group.attrs)
    value = (attrs.get("ome") or {}).get("labels", attrs.get("labels"))
    return [str(v) for v in value] if isinstance(value, list) else []


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One resolution level: its array path inside the store, shape, and per-axis scale / origin."""

    path: str  # relative to the store root
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]


@dataclass(frozen=True)
class Multiscale:
    """An OME-Zarr multiscale image (levels largest first)."""

    store: Path
    group: str  # "" for the root
    name: str | None
    axes: tuple[str, ...]
    levels: tuple[Level, ...]

    def level(self, key: str | None) -> Level:
        """Level ``key``: a dataset path (``'0'``, ``'s1'``) or an index (``'1'``); None: level 0."""
        if key is None:
            return self.levels[0]
        prefix = f"{self.group}/" if self.group else ""
        for level in self.levels:
            if level.path in (key, prefix + key):
                return level
        if key.isdigit() and int(key) < len(self.levels):
            return self.levels[int(key)]
        where = f"{self.store}/{self.group}" if self.group else str(self.store)
        names = ", ".join(f"{lv.path.removeprefix(prefix)} {'x'.join(map(str, lv.shape))}"
                          for lv in self.levels)
        example = f"{where}/{self.levels[-1].path.removeprefix(prefix)}"
        raise OmeZarrError(f"level {key!r} does not exist in the OME-Zarr {where}; "
                           f"its levels are: {names} (e.g. {example})")


def read_multiscale(store: str | os.PathLike, group: str = "") -> Multiscale:
    """The multiscale image at ``group`` of ``store``, parsed by ``ome-zarr`` (one-line errors)."""
    from ome_zarr.axes import Axes
    from ome_zarr.format import format_from_version
    from ome_zarr.io import parse_url

    store = Path(store)
    where = f"{store}/{group}" if group else str(store)
    location = parse_url(str(store / group) if group else str(store), mode="r")
    if location is None:
        raise OmeZarrError(f"{where} is not a Zarr group; check the path (an OME-Zarr image is a "
                           "folder such as image.ome.zarr)")
    attrs = location.root_attrs
    multiscales = attrs.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        raise OmeZarrError(f"{where} has no OME-Zarr 'multiscales' metadata; write it as OME-Zarr "
                           "(e.g. napari-connectomics predict --output pred.ome.zarr, or ome_zarr."
                           f"writer.write_image), or name one of its arrays as {where}/ARRAY")
    meta = multiscales[0]
    version = str(meta.get("version") or attrs.get("version") or "0.4")
    try:
        axes_obj = Axes(meta.get("axes"), fmt=format_from_version(version))
        axes = tuple(str(a["name"]) if isinstance(a, dict) else str(a) for a in axes_obj.to_list())
        datasets = list(meta["datasets"])
    except (KeyError, TypeError, ValueError) as err:
        raise OmeZarrError(f"{where} has invalid OME-Zarr multiscales metadata ({err}); "
                           "rewrite it with ome-zarr") from err
    if not datasets:
        raise OmeZarrError(f"{where} lists no datasets in its 'multiscales' metadata; rewrite it")
    outer_scale, outer_shift = _transforms(meta.get("coordinateTransformations"), len(axes), where)
    import zarr

    levels = []
    prefix = f"{group}/" if group else ""
    for dataset in datasets:
        path = prefix + str(dataset.get("path", "")).strip("/")
        try:
            array = zarr.open_array(str(store), mode="r", path=path)
        except Exception as err:  # zarr raises several types for a missing array
            raise OmeZarrError(f"{where} lists level {path!r} but it cannot be read "
                               f"({type(err).__name__}); the OME-Zarr is incomplete") from err
        if array.ndim != len(axes):
            raise OmeZarrError(f"level {path!r} of {where} is {array.ndim}-D but the metadata lists "
                               f"{len(axes)} axes ({''.join(axes)}); fix its 'axes' metadata")
        scale, shift = _transforms(dataset.get("coordinateTransformations"), len(axes), where)
        levels.append(Level(path, tuple(int(n) for n in array.shape),
                            tuple(s * o for s, o in zip(scale, outer_scale)),
                            tuple(t * o + u for t, o, u in zip(shift, outer_scale, outer_shift))))
    return Multiscale(store, group, meta.get("name"), axes, tuple(levels))


def _transforms(items: Any, ndim: int, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale, shift = [1.0] * ndim, [0.0] * ndim
    for item in items or ():
        kind = item.get("type")
        values = item.get("scale" if kind == "scale" else "translation")
        if kind not in ("scale", "translation"):
            continue
        if values is None:
            raise OmeZarrError(f"{where} has a {kind} transformation stored in a separate path, "
                               "which is not supported; write the numbers inline")
        if len(values) != ndim:
            raise OmeZarrError(f"{where} has a {kind} of {len(values)} numbers for {ndim} axes; "
                               "fix its coordinateTransformations")
        if kind == "scale":
            scale = [float(v) for v in values]
        else:
            shift = [float(v) for v in values]
    return tuple(scale), tuple(shift)


# --------------------------------------------------------------------------------------------
# Writing: pyramids computed block by block from level 0
# --------------------------------------------------------------------------------------------


def default_axes(ndim: int) -> str:
    """yx, zyx, czyx, tczyx by number of axes."""
    if not 2 <= ndim <= 5:
        raise OmeZarrError(f"OME-Zarr holds 2-D to 5-D images, not {ndim}-D")
    return "tczyx"[-ndim:]


def plan_factors(shape: Sequence[int], voxel_size: Sequence[float],
                 min_size: int = MIN_LEVEL_SIZE, max_levels: int = MAX_LEVELS) -> list[tuple[int, ...]]:
    """Per-level downsampling factors (relative to the level above) of the spatial axes."""
    size, voxel = [int(n) for n in shape], [float(v) for v in voxel_size]
    factors: list[tuple[int, ...]] = []
    while len(factors) + 1 < max_levels and max(size, default=0) > min_size:
        finest = min(v for v, n in zip(voxel, size) if n > 1)
        step = tuple(2 if n > 1 and v < 2 * finest else 1 for v, n in zip(voxel, size))
        if all(f == 1 for f in step):
            break
        factors.append(step)
        size = [math.ceil(n / f) for n, f in zip(size, step)]
        voxel = [v * f for v, f in zip(voxel, step)]
    return factors


def downsample_block(block: np.ndarray, factors: Sequence[int], method: str) -> np.ndarray:
    """One block downsampled by ``factors``: ``stride`` keeps every f-th voxel (labels), ``mean``
    averages f-blocks (a partial block at the end averages the voxels it has); the dtype is kept
    (integers rounded)."""
    index = tuple(slice(None, None, int(f)) for f in factors)
    if method == "stride":
        return np.ascontiguousarray(block[index])
    work = np.asarray(block, dtype=np.float64 if block.dtype.itemsize > 4 else np.float32)
    pad = [(0, (-n) % f) for n, f in zip(work.shape, factors)]
    if any(p for _, p in pad):
        work = np.pad(work, pad, mode="edge")
    shape = [d for n, f in zip(work.shape, factors) for d in (n // f, f)]
    result = work.reshape(shape).mean(axis=tuple(range(1, 2 * work.ndim, 2)))
    if block.dtype.kind in "iub":
        info = np.iinfo(block.dtype) if block.dtype.kind != "b" else None
        result = np.rint(result)
        if info is not None:
            result = np.clip(result, info.min, info.max)
    return result.astype(block.dtype, copy=False)


def finish_image(store: str | os.PathLike, level0: str = "0", *, group: str = "",
                 axes: str | None = None, method: str = "mean",
                 voxel_size: Sequence[float] | None = None, origin: Sequence[float] | None = None,
                 name: str | None = None, unit: str | None = None,
                 min_size: int = MIN_LEVEL_SIZE) -> Multiscale:
    """Turn the array ``group/level0`` of a Zarr v3 store into an OME-Zarr multiscale image: lower
    levels ``1``, ``2``, ... beside it (computed block by block with dask) and the NGFF 0.5
    ``multiscales`` metadata. ``voxel_size`` / ``origin``: one number per spatial axis (z, y, x)."""
    import zarr

    store = Path(store)
    prefix = f"{group}/" if group else ""
    top = zarr.open_array(str(store), mode="r", path=prefix + level0)
    axes = axes or default_axes(top.ndim)
    if len(axes) != top.ndim:
        raise OmeZarrError(f"axes {axes!r} do not match the {top.ndim}-D array {store}/{prefix}{level0}")
    spatial = [i for i, a in enumerate(axes) if a in _SPATIAL]
    voxel = _per_axis(voxel_size, len(spatial), 1.0, "voxel size")
    shift = _per_axis(origin, len(spatial), 0.0, "origin")
    steps = plan_factors([top.shape[i] for i in spatial], voxel, min_size=min_size)
    paths, totals = [level0], [np.ones(top.ndim, dtype=np.int64)]
    source = top
    for number, step in enumerate(steps, start=1):
        full = [1] * top.ndim
        for axis, f in zip(spatial, step):
            full[axis] = f
        path = str(number) if level0 != str(number) else f"{number}_"
        source = _write_level(store, prefix + path, source, full, method)
        paths.append(path)
        totals.append(totals[-1] * np.asarray(full))
    datasets = []
    for path, total in zip(paths, totals):
        scale = [1.0] * top.ndim
        translation = [0.0] * top.ndim
        for k, axis in enumerate(spatial):
            scale[axis] = voxel[k] * float(total[axis])
            centre = (float(total[axis]) - 1) / 2 if method == "mean" else 0.0
            translation[axis] = shift[k] + centre * voxel[k]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if any(translation):
            transforms.append({"type": "translation", "translation": translation})
        datasets.append({"path": path, "coordinateTransformations": transforms})
    _write_metadata(store, group, datasets, axes, name, unit)
    return read_multiscale(store, group)


def _ome_writer() -> Any:
    """``ome_zarr.writer``, imported without the DeprecationWarning its import emits (a default
    argument built from its deprecated ``Scaler``): users should see our output, not that."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr import writer
    return writer


def finish_labels(store: str | os.PathLike, array_key: str, name: str = "labels") -> Multiscale:
    """Move the label array ``array_key`` (at the root of an OME-Zarr image ``store``) to
    ``labels/<name>/0``, add its pyramid (subsampled) and the NGFF ``image-label`` metadata,
    with the voxel size of the image's level 0. An old ``labels/<name>`` is replaced only once
    the new one is complete."""
    import zarr
    from ome_zarr.format import FormatV05

    from .volume_io import remove

    add_metadata = _ome_writer().add_metadata

    store = Path(store)
    root = zarr.open_group(str(store), mode="a")
    image = read_multiscale(store) if multiscales_attr(root) else None
    voxel, origin = None, None
    if image is not None:
        top = image.levels[0]
        voxel = [s for s, a in zip(top.scale, image.axes) if a in _SPATIAL]
        origin = [t for t, a in zip(top.translate, image.axes) if a in _SPATIAL]
    labels_group = zarr.open_group(str(store), mode="a", path="labels")
    staging = f".{name}.partial-{os.getpid()}"
    folder = store / "labels"
    remove(folder / staging, ignore_errors=True)
    try:
        zarr.open_group(str(store), mode="w", path=f"labels/{staging}")
        os.rename(store / array_key, folder / staging / "0")
        ndim = zarr.open_array(str(store), mode="r", path=f"labels/{staging}/0").ndim
        axes = default_axes(ndim)
        spatial = sum(a in _SPATIAL for a in axes)
        finish_image(store, "0", group=f"labels/{staging}", axes=axes, method="stride",
                     voxel_size=voxel[-spatial:] if voxel else None,
                     origin=origin[-spatial:] if origin else None, name=name)
        fmt = FormatV05()
        add_metadata(zarr.open_group(str(store), mode="a", path=f"labels/{staging}"),
                     {"image-label": {"version": fmt.version, "source": {"image": "../../"}}}, fmt=fmt)
        remove(folder / name)
        os.rename(folder / staging, folder / name)
    except BaseException:
        remove(folder / staging, ignore_errors=True)
        raise
    names = [n for n in label_names(labels_group) if n != name] + [name]
    add_metadata(labels_group, {"labels": names}, fmt=FormatV05())
    return read_multiscale(store, f"labels/{name}")


def _per_axis(values: Sequence[float] | None, n: int, default: float, what: str) -> list[float]:
    if values is None:
        return [default] * n
    numbers = [float(v) for v in np.asarray(values, dtype=float).ravel()]
    if len(numbers) != n:
        raise OmeZarrError(f"the {what} has {len(numbers)} numbers but the image has {n} spatial axes; "
                           f"give one per axis ({'z, y, x'[-(3 * n - 2):] if n <= 3 else n})")
    if what == "voxel size" and not all(v > 0 and math.isfinite(v) for v in numbers):
        raise OmeZarrError(f"the voxel size {numbers} must be positive numbers")
    return numbers


def _write_level(store: Path, path: str, source: Any, factors: Sequence[int], method: str) -> Any:
    """Write ``source`` downsampled by ``factors`` as the array ``path``, chunk by chunk (dask)."""
    import dask.array as da
    import zarr

    chunks = tuple(int(c) for c in source.chunks)
    shape = tuple(math.ceil(n / f) for n, f in zip(source.shape, factors))
    out_chunks = tuple(max(1, min(c, n)) for c, n in zip(chunks, shape))
    group = zarr.open_group(str(store), mode="a")
    target = group.create_array(path, shape=shape, dtype=source.dtype, chunks=out_chunks,
                                compressors=source.compressors, fill_value=source.fill_value,
                                overwrite=True)
    lazy = da.from_zarr(source, chunks=tuple(c * f for c, f in zip(out_chunks, factors)))
    out = tuple(tuple(math.ceil(c / f) for c in axis_chunks)
                for axis_chunks, f in zip(lazy.chunks, factors))
    smaller = lazy.map_blocks(downsample_block, factors=tuple(factors), method=method,
                              chunks=out, dtype=source.dtype)
    da.store(smaller, target, lock=False)
    return target


def _write_metadata(store: Path, group: str, datasets: list[dict[str, Any]], axes: str,
                    name: str | None, unit: str | None) -> None:
    import zarr
    from ome_zarr.format import FormatV05

    write_multiscales_metadata = _ome_writer().write_multiscales_metadata

    node = zarr.open_group(str(store), mode="a", path=group) if group else zarr.open_group(
        str(store), mode="a")
    if node.info._zarr_format != 3:
        raise OmeZarrError(f"{store} is a Zarr v2 store; OME-Zarr is written as NGFF 0.5 (Zarr v3)")
    kinds = {"t": "time", "c": "channel"}
    axis_dicts = []
    for a in axes:
        entry: dict[str, Any] = {"name": a, "type": kinds.get(a, "space")}
        if unit and a in _SPATIAL:
            entry["unit"] = unit
        axis_dicts.append(entry)
    write_multiscales_metadata(node, datasets, fmt=FormatV05(), axes=axis_dicts,
                               name=name or (group.rsplit("/", 1)[-1] if group else "image"))

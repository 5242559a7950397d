"""The Segment panel's decisions and work, without Qt: region, checkpoint, run, post-processing.

The panel (:mod:`.segment_panel`) reads the viewer (layers, camera, shapes) on the GUI thread and
turns it into a :class:`SegmentRequest`; :func:`run_segmentation` then runs in the engine worker
process (or, with ``NAPARI_CONNECTOMICS_TRAINING=thread``, a background thread) and returns a
:class:`SegmentOutcome` (plain data: it crosses the pipe) that the panel shows as layers. Keeping
the geometry and the work here means both can be tested without a viewer. The functions that need
torch (:func:`read_checkpoint_info`, :func:`run_segmentation`) import it when called, in the
worker; the post-processing (:func:`run_postprocess`: numpy, SciPy, scikit-image) runs in napari.

Regions are boxes of voxels of the image's *spatial* axes (z, y, x; or y, x for a 2D image), in
the image's data coordinates. A region smaller than the network's window is grown to the window
(centred, kept inside the image) so every predicted voxel gets the context the network was
trained with; the visible field of view and a Shapes rectangle therefore give at least a window.

Predictions too large for memory, and predictions of lazy inputs (dask, zarr, multiscale layers),
go to a Zarr store (``<folder>/<image>-<stamp>.zarr`` with the array ``probabilities`` and one
``labels-<id>`` array per post-processing) and are shown lazily through dask.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.options import inference_default
from ..models.bioimageio_files import is_description_name
from ..progress import Progress
from ..registry import POSTPROCESSORS, TARGETS
from .errors import UserError

__all__ = [
    "CHECKPOINT_FILTER",
    "CheckpointInfo",
    "LabelsResult",
    "MEMORY_LIMIT_MB",
    "OUTPUT_KEY",
    "PostSettings",
    "Prediction",
    "REGIONS",
    "REGION_SHAPES",
    "REGION_VIEW",
    "REGION_WHOLE",
    "Region",
    "SegmentOutcome",
    "SegmentRequest",
    "check_checkpoint_path",
    "checkpoint_info",
    "find_checkpoints",
    "first_rectangle",
    "is_lazy_data",
    "is_model_folder",
    "output_names",
    "read_checkpoint_info",
    "recent_checkpoint_choices",
    "region_around",
    "remove_store",
    "run_postprocess",
    "run_segmentation",
    "spatial_ndim",
    "temporary_folder",
    "whole_region",
]

logger = logging.getLogger(__name__)

REGION_WHOLE = "whole volume"
REGION_VIEW = "visible field of view"
REGION_SHAPES = "Shapes ROI"
REGIONS = (REGION_WHOLE, REGION_VIEW, REGION_SHAPES)

OUTPUT_KEY = "napari_connectomics"  # layer metadata key marking the panel's own output layers
MEMORY_LIMIT_MB = inference_default("memory_limit_mb")  # larger predictions go to a Zarr store
SMALL_POSTPROCESS_VOXELS = 2**22  # a re-run of post-processing below this runs on the GUI thread
LABEL_CHUNKS = (32, 128, 128)
LABEL_BLOCK = (64, 256, 256)  # label_blockwise blocks: a multiple of LABEL_CHUNKS
RECENT_LIMIT = 20
# The checkpoint field's file dialog: our checkpoints and BioImage.IO model packages (a .zip, or
# the rdf.yaml / bioimageio.yaml of an unpacked one; its folder can be typed in the field).
CHECKPOINT_FILTER = ("Checkpoints and BioImage.IO models (*.ckpt *.zip *.yaml *.yml);;"
                     "Checkpoints (*.ckpt);;BioImage.IO models (*.zip *.yaml *.yml);;All files (*)")

_MB = 2**20


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A box ``[start, stop)`` of voxels on the image's spatial axes (data coordinates)."""

    start: tuple[int, ...]
    stop: tuple[int, ...]
    description: str = REGION_WHOLE

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def roi_zyx(self) -> tuple[slice, slice, slice]:
        """The region as ``PredictOptions.roi``: z, y, x slices (a 2D image is one z-section)."""
        slices = self.slices()
        if len(slices) == 2:
            slices = (slice(0, 1), *slices)
        return slices  # type: ignore[return-value]

    def covers(self, shape: Sequence[int]) -> bool:
        return all(a == 0 for a in self.start) and tuple(self.stop) == tuple(int(n) for n in shape)

    def translate(self, scale: Sequence[float], translate: Sequence[float]) -> tuple[float, ...]:
        """World offset of the region's first voxel: outputs with it overlay the source exactly."""
        return tuple(float(t) + a * float(s) for a, s, t in zip(self.start, scale, translate))

    def __str__(self) -> str:
        box = ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop))
        return f"{self.description} [{box}]"


def whole_region(shape: Sequence[int]) -> Region:
    return Region(tuple(0 for _ in shape), tuple(int(n) for n in shape), REGION_WHOLE)


def region_around(points: Any, shape: Sequence[int], minimum: Sequence[int] | None = None,
                  description: str = REGION_VIEW) -> Region:
    """The voxel box spanned by ``points`` (N, ndim) in data coordinates, grown to ``minimum``.

    Along an axis where the points spread (the plane of the view or of a rectangle) the box
    covers every voxel they touch (voxel ``i`` spans ``[i - 0.5, i + 0.5)``, napari's
    convention); along an axis where they share one coordinate (the slider axis) it is that
    voxel. Each axis is then grown, centred, to ``minimum`` (the network window) and shifted to
    stay inside the image, so a small box still gets the network's full context.
    """
    points = np.asarray(points, dtype=float).reshape(-1, len(shape))
    if not np.all(np.isfinite(points)):
        raise UserError(f"the {description} has no finite position in the image; reset the view")
    minimum = tuple(minimum) if minimum is not None else (1,) * len(shape)
    start, stop = [], []
    for axis, size in enumerate(shape):
        low, high = float(points[:, axis].min()), float(points[:, axis].max())
        span = _span(low, high, int(minimum[axis]), int(size))
        if span is None:
            raise UserError(f"the {description} lies outside the image; move it onto the image "
                            "or choose 'whole volume'")
        start.append(span[0])
        stop.append(span[1])
    return Region(tuple(start), tuple(stop), description)


def _span(low: float, high: float, minimum: int, size: int) -> tuple[int, int] | None:
    """Voxels ``[start, stop)`` touched by ``[low, high]``, grown to ``minimum``; None outside."""
    start = math.floor(low + 0.5)
    stop = max(math.ceil(high + 0.5), start + 1)
    start, stop = max(start, 0), min(stop, size)
    if stop <= start:
        return None
    grow = min(max(minimum, stop - start), size) - (stop - start)
    start -= grow // 2
    stop += grow - grow // 2
    if start < 0:
        start, stop = 0, stop - start
    if stop > size:
        start, stop = start - (stop - size), size
    return start, stop


def spatial_ndim(shape: Sequence[int]) -> int:
    """Spatial axes of an image: (y, x), (z, y, x), or (z, y, x) after a leading channel axis."""
    ndim = len(shape)
    if ndim == 2:
        return 2
    if ndim in (3, 4):
        return 3
    raise UserError(f"cannot segment an image of {ndim} dimensions (shape "
                    f"{'x'.join(str(int(n)) for n in shape)}); give a z, y, x volume or a y, x "
                    "section")


def first_rectangle(shape_types: Sequence[str], layer_name: str) -> int:
    """Index of the first rectangle of a Shapes layer (one-line error when there is none)."""
    for index, kind in enumerate(shape_types):
        if kind == "rectangle":
            return index
    raise UserError(f"the Shapes layer '{layer_name}' has no rectangle; draw one with its "
                    "rectangle tool around the region to segment")


def is_lazy_data(data: Any, multiscale: bool = False) -> bool:
    """True for layer data that is not a numpy array in memory (dask, zarr, h5py, multiscale)."""
    return bool(multiscale) or not isinstance(data, np.ndarray)


def output_names(image_name: str) -> tuple[str, str]:
    """Names of the probability and segmentation layers made from ``image_name``."""
    return f"{image_name} probabilities", f"{image_name} segmentation"


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an unpacked BioImage.IO model: a folder holding its ``rdf.yaml`` (or
    ``bioimageio.yaml``). Cheap and torch-free, for the GUI thread."""
    path = Path(path)
    try:
        return path.is_dir() and any(p.is_file() and is_description_name(p.name)
                                     for p in path.iterdir())
    except OSError:
        return False


def check_checkpoint_path(text: str | os.PathLike | None) -> Path:
    """The chosen checkpoint (or BioImage.IO model) as a Path, or a one-line error saying what to
    choose. A folder is accepted when it holds a BioImage.IO model's ``rdf.yaml``."""
    text = "" if text is None else os.fspath(text).strip()
    if text in ("", "."):
        raise UserError("no checkpoint chosen: pick a .ckpt file, a BioImage.IO model (.zip, rdf.yaml "
                        "or its folder), or a run under 'recent runs'")
    path = Path(text).expanduser()
    if path.is_dir():
        if is_model_folder(path):
            return path
        raise UserError(f"{path} is a folder; pick a checkpoint file (.ckpt) inside it, e.g. "
                        "checkpoints/last.ckpt, or a folder holding a BioImage.IO model's rdf.yaml")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pick another file or a recent run")
    if path.suffix.lower() in (".yaml", ".yml") and not is_description_name(path.name):
        raise UserError(f"{path.name} is not a BioImage.IO model description (rdf.yaml, "
                        "bioimageio.yaml or *.bioimageio.yaml); pick a .ckpt file, a model's .zip "
                        "or its rdf.yaml")
    return path


def find_checkpoints(output_dir: str | os.PathLike | None, limit: int = RECENT_LIMIT) -> list[Path]:
    """Checkpoints of the runs under ``output_dir`` (``<name>/<timestamp>/checkpoints/*.ckpt``),
    newest first."""
    if not output_dir:
        return []
    root = Path(output_dir).expanduser()
    if not root.is_dir():
        return []
    found = []
    for path in root.glob("*/*/checkpoints/*.ckpt"):
        try:
            found.append((path.stat().st_mtime, path))
        except OSError:  # removed while listing
            continue
    found.sort(key=lambda item: (item[0], str(item[1])), reverse=True)
    return [path for _, path in found[:limit]]


def recent_checkpoint_choices(output_dir: str | os.PathLike | None, latest: str | None = None,
                              limit: int = RECENT_LIMIT) -> list[tuple[str, str]]:
    """(label, path) for the 'recent runs' list: the session's latest checkpoint first, then the
    runs' checkpoints newest first, labelled ``<name>/<timestamp>/<file>``."""
    choices: list[tuple[str, str]] = []
    seen: set[str] = set()
    root = Path(output_dir).expanduser() if output_dir else None
    candidates = ([Path(latest)] if latest else []) + find_checkpoints(output_dir, limit)
    for index, path in enumerate(candidates):
        key = str(path.resolve()) if path.exists() else str(path)
        if key in seen or not path.is_file():
            continue
        seen.add(key)
        label = _run_label(path, root)
        if latest and index == 0:
            label = f"latest: {label}"
        choices.append((label, str(path)))
    return choices[:limit]


def _run_label(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            relative = path.resolve().relative_to(root.resolve())
            parts = [p for p in relative.parts if p != "checkpoints"]
            return "/".join(parts)
        except ValueError:
            pass
    return str(path)


@dataclass(frozen=True)
class CheckpointInfo:
    """What the panel shows and needs of a checkpoint: read from the config stored inside it
    (for a BioImage.IO model, the config predict derives from its description)."""

    path: str
    architecture: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    target: str
    window: tuple[int, int, int]  # default z, y, x window (a 2D network: 1, y, x)
    package: str = ""  # a BioImage.IO model's name ("" for a checkpoint)
    axes: str = ""  # a BioImage.IO model's input axes, e.g. "batch,channel,y,x"
    context_sections: int = 0  # 2.5D input: neighbouring sections on each side

    @property
    def channel_layout(self) -> str:
        """How :func:`~..inference.postprocess.decode_channels` reads the output channels."""
        return TARGETS.get(self.target).channel_layout if self.target in TARGETS else "binary"

    def summary(self) -> str:
        window = "x".join(str(n) for n in self.window[-self.spatial_dims:])
        if self.package:
            axes = f" ({self.axes})" if self.axes else ""
            plural = "s" if self.out_channels != 1 else ""
            return (f"BioImage.IO model '{self.package}': {self.architecture}, "
                    f"{self.spatial_dims}D{axes}, {self.in_channels} -> {self.out_channels} "
                    f"channel{plural}, target {self.target}, window {window}")
        context = f" + {self.context_sections} sections each side" if self.context_sections else ""
        return (f"{self.architecture}, {self.spatial_dims}D{context}, target {self.target} "
                f"({self.out_channels} channel{'s' if self.out_channels != 1 else ''}), "
                f"window {window}")


def checkpoint_info(cfg: Any, path: str | os.PathLike = "") -> CheckpointInfo:
    """:class:`CheckpointInfo` from a checkpoint's training config."""
    from ..inference.options import default_window

    spatial_dims = int(cfg.model.spatial_dims)
    window = default_window(cfg)
    if len(window) == 2:
        window = [1, *window]
    return CheckpointInfo(str(path), str(cfg.model.architecture), spatial_dims,
                          int(cfg.model.in_channels), int(cfg.model.out_channels),
                          str(cfg.data.target), tuple(window),  # type: ignore[arg-type]
                          context_sections=int(cfg.data.context_sections))


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Read a checkpoint's stored config, or a BioImage.IO model's description (its name, axes
    and the config predict runs it with); imports torch: call it in the worker or a background
    thread. A model that cannot be run raises its one-line :class:`UserError`."""
    from ..models.bioimageio import is_bioimageio_source
    from ..models.checkpoint import checkpoint_config

    path = Path(path)
    with _one_line_errors():
        cfg = checkpoint_config(path)
    info = checkpoint_info(cfg, path)
    if is_bioimageio_source(path):
        info = dataclasses.replace(info, **_package_facts(path, str(cfg.model.architecture)))
    return info


@contextlib.contextmanager
def _one_line_errors() -> Any:
    """A checkpoint's or a BioImage.IO model's refusal (CheckpointError, BioimageioError: one line
    naming the problem) as a :class:`UserError`, which the panel notifies as it is."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as error:
        from ..models.bioimageio import BioimageioError
        from ..models.checkpoint import CheckpointError

        if isinstance(error, (BioimageioError, CheckpointError)):
            raise UserError(str(error)) from None
        raise


def _package_facts(path: Path, architecture: str) -> dict[str, str]:
    """Name, input axes and network of a BioImage.IO model, from its raw description (already
    validated by :func:`~..models.bioimageio.bioimageio_config`): for the info line only."""
    rdf = _package_description(path)
    fallback = path.parent.name if path.suffix.lower() in (".yaml", ".yml") else path.stem
    name = str(rdf.get("name") or fallback)
    weights = rdf.get("weights") if isinstance(rdf.get("weights"), dict) else {}
    config = rdf.get("config") if isinstance(rdf.get("config"), dict) else {}
    attachments = rdf.get("attachments") or []
    if isinstance(attachments, dict):  # spec 0.4: {files: [...]}
        attachments = attachments.get("files") or []
    sources = [str(a.get("source", "") if isinstance(a, dict) else a) for a in attachments]
    names = [source.replace("\\", "/").rsplit("/", 1)[-1] for source in sources]
    # as models.bioimageio decides: one of ours is rebuilt from its config, others run as they are
    ours = (isinstance(config.get("napari_connectomics"), dict)
            and bool(weights.get("pytorch_state_dict")) and "config.yaml" in names)
    if not ours:  # another tool's network, run through its weights
        formats = [k for k in ("pytorch_state_dict", "torchscript") if weights.get(k)]
        architecture = f"{formats[0]} network" if formats else "zoo network"
    return {"package": name[:80], "axes": _input_axes_text(rdf), "architecture": architecture}


def _package_description(path: Path) -> dict[str, Any]:
    """The description (rdf.yaml) of a package (a .zip, the YAML itself, or its folder); {} if
    it cannot be read."""
    import yaml

    try:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_description_name(p.name))
            text = found[0].read_bytes()
        elif path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in sorted(archive.namelist())
                              if "/" not in n and is_description_name(n))
                text = archive.read(member)
        else:
            text = path.read_bytes()
        description = yaml.safe_load(text)
    except Exception:  # the info line then shows the file name
        logger.debug("could not read the description of %s", path, exc_info=True)
        return {}
    return description if isinstance(description, dict) else {}


def _input_axes_text(rdf: dict[str, Any]) -> str:
    """The first input's axes, e.g. ``batch,channel,y,x`` (spec 0.5 axis list or 0.4 letters)."""
    inputs = rdf.get("inputs")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        return ""
    axes = inputs[0].get("axes")
    if isinstance(axes, str):  # spec 0.4: "bcyx"
        letters = {"b": "batch", "c": "channel", "t": "time"}
        return ",".join(letters.get(a, a) for a in axes)
    if isinstance(axes, list):
        return ",".join(str(a.get("id") or a.get("type")) if isinstance(a, dict) else str(a)
                        for a in axes)
    return ""


_MODEL_CACHE: dict[tuple[str, int, int], tuple[Any, Any]] = {}
_MODEL_LOCK = threading.Lock()


def _leave_a_core_for_the_gui() -> None:
    """Cap torch's CPU threads at all cores but one, so the viewer keeps redrawing while we predict."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


def _load_model(path: Path) -> tuple[Any, Any]:
    """(model, config) of a checkpoint or a BioImage.IO model (``load_model_from_checkpoint`` routes
    it); the last one is kept, so re-segmenting skips the load."""
    from ..models.checkpoint import load_model_from_checkpoint

    described = [p for p in sorted(path.iterdir()) if p.is_file() and is_description_name(p.name)] \
        if path.is_dir() else []
    stat = (described[0] if described else path).stat()  # an unpacked model: its rdf.yaml's
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _MODEL_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
    with _one_line_errors():
        model, cfg = load_model_from_checkpoint(path)
    with _MODEL_LOCK:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = (model, cfg)
    return model, cfg


# --------------------------------------------------------------------------------------------
# Request and outcome
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostSettings:
    """Post-processing choice: ``method`` is a post-processor name (none, cc, watershed)."""

    method: str = "none"
    threshold: float = 0.5
    min_size: int = 0


@dataclass
class SegmentRequest:
    """Everything the worker needs, captured on the GUI thread when Segment is pressed.

    ``data`` is the image's full-resolution array, read and never written; ``scale`` and
    ``translate`` are its spatial ones, so the outputs overlay it even if it is removed meanwhile.
    """

    checkpoint: Path
    image_name: str
    data: Any
    region: Region
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    post: PostSettings = PostSettings()
    window: tuple[int, ...] | None = None  # None: the checkpoint's default
    overlap: float = inference_default("overlap")
    batch_size: int = inference_default("batch_size")
    tta: bool = inference_default("tta")
    triplanar: bool = inference_default("triplanar")
    z_smoothing: float = inference_default("z_smoothing")
    device: str = inference_default("device")
    lazy_input: bool = False
    store_folder: Path | None = None  # None: a temporary folder
    memory_limit_mb: int = MEMORY_LIMIT_MB
    # Where temporary stores go (None: this process's temporary_folder()); napari names its own
    # when the engine worker segments, so napari deletes them as it deletes its own.
    temporary_store_folder: Path | None = None

    @property
    def spatial_ndim(self) -> int:
        return len(self.region.start)


@dataclass
class Prediction:
    """The kept probabilities of the last run: what re-running the post-processing needs."""

    image_name: str
    region: Region
    probabilities: Any  # (C, *spatial): numpy float32, or a read-only zarr.Array (C, z, y, x)
    info: CheckpointInfo
    scale: tuple[float, ...]  # of the output layers
    translate: tuple[float, ...]
    store: Path | None = None  # the Zarr store holding the probabilities (lazy results)
    temporary: bool = False  # the store is in the panel's temporary folder
    value_scale: float = 1.0  # 255 for probabilities stored as uint8
    memory_limit_mb: int = MEMORY_LIMIT_MB

    @property
    def lazy(self) -> bool:
        return self.store is not None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.region.shape

    def channels(self) -> Any:
        """(C, *spatial) float probabilities in [0, 1]: numpy, or dask for a stored result."""
        if not self.lazy:
            return self.probabilities
        import dask.array as da

        array = da.from_zarr(self.probabilities)
        if len(self.spatial_shape) == 2:
            array = array[:, 0]
        array = array.astype(np.float32)
        return array / np.float32(self.value_scale) if self.value_scale != 1 else array

    def foreground(self) -> Any:
        """The probability that a voxel belongs to any object (what the Image layer shows)."""
        probabilities = self.channels()
        channels = int(probabilities.shape[0])
        layout = self.info.channel_layout
        if layout == "instance" and channels == 3:
            from ..data.targets import INSTANCE_CONTOUR, INSTANCE_INTERIOR

            return probabilities[INSTANCE_INTERIOR] + probabilities[INSTANCE_CONTOUR]
        if layout == "semantic" and channels >= 2:
            return 1.0 - probabilities[0]
        return probabilities[channels - 1]

    def fits_in_memory(self) -> bool:
        return _prediction_bytes(self.spatial_shape, int(self.probabilities.shape[0])) \
            <= self.memory_limit_mb * _MB


@dataclass
class LabelsResult:
    """A post-processing result: numpy labels, or a zarr.Array ``key`` in the prediction's store."""

    labels: Any
    post: PostSettings
    key: str | None = None
    seconds: float = 0.0
    # In-memory labels with no object: the largest foreground probability, so the panel can tell
    # a model still undecided (everything under the threshold) from one that found nothing.
    largest_foreground: float | None = None

    @property
    def lazy(self) -> bool:
        return self.key is not None


@dataclass
class SegmentOutcome:
    """What a run returns to the GUI thread; ``cancelled`` runs leave no output behind."""

    prediction: Prediction | None
    labels: LabelsResult | None
    cancelled: bool = False
    seconds: float = 0.0


Report = Callable[[Any], None]


# --------------------------------------------------------------------------------------------
# Work (runs in the background thread)
# --------------------------------------------------------------------------------------------


def run_segmentation(request: SegmentRequest, report: Report,
                     stop_event: threading.Event) -> SegmentOutcome:
    """Load the checkpoint, predict the region, post-process; a cancelled run keeps nothing."""
    started = time.perf_counter()
    report(Progress(0, None, "loading the checkpoint", stage="load"))
    _leave_a_core_for_the_gui()
    model, cfg = _load_model(request.checkpoint)
    info = checkpoint_info(cfg, request.checkpoint)
    _check_compatible(info, request)
    if stop_event.is_set():
        return SegmentOutcome(None, None, cancelled=True)
    store = _store_path(request) if _needs_store(request, info) else None
    result = _predict(request, model, cfg, store, report, stop_event)
    if result.cancelled:
        return SegmentOutcome(None, None, cancelled=True, seconds=time.perf_counter() - started)
    prediction = _as_prediction(request, info, result, store)
    try:
        labels = run_postprocess(prediction, request.post, report)
    except BaseException:
        if store is not None:
            remove_store(store)
        raise
    if stop_event.is_set():  # cancelled during post-processing: drop the finished run too
        if store is not None:
            remove_store(store)
        return SegmentOutcome(None, None, cancelled=True, seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    report(Progress(1, 1, "done", stage="done"))
    logger.info("segmented %s of %r in %.1f s", request.region, request.image_name, seconds)
    return SegmentOutcome(prediction, labels, seconds=seconds)


def _check_compatible(info: CheckpointInfo, request: SegmentRequest) -> None:
    if request.spatial_ndim == 2 and info.spatial_dims == 3:
        window = "x".join(str(n) for n in info.window)
        raise UserError(f"'{request.image_name}' is a 2D image but {request.checkpoint.name} holds "
                        f"a 3D network (window {window}); pick a z-stack, or a checkpoint trained "
                        "with model.spatial_dims=2")


def _prediction_bytes(spatial_shape: Sequence[int], channels: int) -> int:
    return math.prod(int(n) for n in spatial_shape) * channels * np.dtype(np.float32).itemsize


def _needs_store(request: SegmentRequest, info: CheckpointInfo) -> bool:
    """Lazy inputs and predictions larger than the memory limit go to a Zarr store."""
    size = _prediction_bytes(request.region.shape, info.out_channels)
    too_big = size > request.memory_limit_mb * _MB
    return request.lazy_input or too_big


def _predict(request: SegmentRequest, model: Any, cfg: Any, store: Path | None, report: Report,
             stop_event: threading.Event) -> Any:
    """predict() on the region; in memory as float32, or into ``store`` in the config's dtype."""
    from ..inference import predict as engine

    options = engine.PredictOptions.from_config(
        cfg, window=request.window, overlap=request.overlap, batch_size=request.batch_size,
        tta=request.tta, triplanar=request.triplanar, z_smoothing=request.z_smoothing,
        device=request.device,
        roi=request.region.roi_zyx(),
        output_dtype=None if store is not None else "float32",
        memory_limit_mb=request.memory_limit_mb)
    return engine.predict(model, request.data, options, progress=[report], stop_event=stop_event,
                          cfg=cfg, output=store)


def _as_prediction(request: SegmentRequest, info: CheckpointInfo, result: Any,
                   store: Path | None) -> Prediction:
    from ..inference.stores import value_scale

    probabilities = result.probabilities
    scale = value_scale(probabilities.dtype)  # 1 for the in-memory float32
    if store is None:
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if request.spatial_ndim == 2:
            probabilities = probabilities[:, 0]
    temporary = store is not None and request.store_folder is None
    return Prediction(request.image_name, request.region, probabilities, info, request.scale,
                      request.region.translate(request.scale, request.translate), store,
                      temporary, scale, request.memory_limit_mb)


def run_postprocess(prediction: Prediction, post: PostSettings,
                    report: Report | None = None) -> LabelsResult:
    """Labels from the kept probabilities: in memory, or block-wise into the prediction's store."""
    from ..inference.postprocess import postprocess

    started = time.perf_counter()
    if report is not None:
        report(Progress(0, None, f"post-processing ({post.method})", stage="postprocess"))
    whole_volume = not POSTPROCESSORS.get(post.method).blockwise
    if prediction.lazy and whole_volume:
        _check_whole_prediction_fits(prediction, post.method)
    if not prediction.lazy or whole_volume:
        labels = postprocess(np.asarray(prediction.channels(), dtype=np.float32), post.method,
                             threshold=post.threshold, min_size=post.min_size,
                             channel_layout=prediction.info.channel_layout)
        largest = None if np.any(labels) else float(np.max(np.asarray(prediction.foreground()), initial=0.0))
        return LabelsResult(labels, post, None, time.perf_counter() - started, largest)
    key, labels = _postprocess_store(prediction, post, report)
    return LabelsResult(labels, post, key, time.perf_counter() - started)


def _check_whole_prediction_fits(prediction: Prediction, method: str) -> None:
    """A post-processor without a block-wise form runs on a stored prediction only if it fits."""
    if prediction.fits_in_memory():
        return
    channels = int(prediction.probabilities.shape[0])
    size = _prediction_bytes(prediction.spatial_shape, channels) // _MB
    raise UserError(f"{method} needs the whole prediction in memory ({size} MB, more than "
                    f"{prediction.memory_limit_mb} MB); choose connected components, or segment "
                    "a smaller region")


def _postprocess_store(prediction: Prediction, post: PostSettings,
                       report: Report | None) -> tuple[str, Any]:
    """Threshold (``none``) or connected components (``cc``, :func:`label_blockwise`) of a stored
    prediction into a new ``labels-<id>`` array of its store, block by block."""
    import dask.array as da

    from ..data.volume_io import create_array, delete_array, open_array, open_container
    from ..inference.postprocess import label_blockwise

    if not 0.0 <= post.threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1]; got {post.threshold!r}")
    probabilities = prediction.channels()
    semantic = prediction.info.channel_layout == "semantic" and probabilities.shape[0] >= 2
    shape = tuple(int(n) for n in prediction.spatial_shape)
    chunks = tuple(min(c, n) for c, n in zip(LABEL_CHUNKS[-len(shape):], shape))
    group = open_container(prediction.store, "zarr")
    key = f"labels-{uuid.uuid4().hex[:8]}"
    if semantic:
        mask = da.argmax(probabilities, axis=0)
    else:
        mask = prediction.foreground() > np.float32(post.threshold)
    try:
        if post.method == "cc":
            array = create_array(group, key, shape, np.uint32, chunks=chunks, fill_value=0)
            block = tuple(min(b, n) for b, n in zip(LABEL_BLOCK[-len(shape):], shape))
            callbacks = [report] if report is not None else []
            label_blockwise(mask, array, block_size=block, min_size=post.min_size,
                            callbacks=callbacks, classes=semantic)  # classes never merge, as in memory
        elif post.method == "none":
            dtype = np.uint8 if not semantic or probabilities.shape[0] <= 256 else np.uint16
            array = create_array(group, key, shape, dtype, chunks=chunks, fill_value=0)
            da.store(mask.astype(dtype).rechunk(chunks), array, lock=False, scheduler="threads")
        else:
            raise UserError(f"post-processing {post.method!r} is not available for predictions "
                            "stored on disk; choose 'none' or 'connected components'")
    except BaseException:
        delete_array(group, key)
        raise
    logger.info("post-processed %s (%s) into %s:%s", prediction.image_name, post.method,
                prediction.store, key)
    return key, open_array(Path(prediction.store), key, "zarr")


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------


_TEMP_ROOT: Path | None = None


def temporary_folder() -> Path:
    """This process's folder for temporary prediction stores (removed when Python exits)."""
    global _TEMP_ROOT
    if _TEMP_ROOT is None or not _TEMP_ROOT.is_dir():
        _TEMP_ROOT = Path(tempfile.mkdtemp(prefix="napari-connectomics-segment-"))
        atexit.register(shutil.rmtree, _TEMP_ROOT, True)
    return _TEMP_ROOT


def _store_path(request: SegmentRequest) -> Path:
    folder = request.store_folder or request.temporary_store_folder or temporary_folder()
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", request.image_name).strip("._") or "image"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return folder / f"{name}-{stamp}-{uuid.uuid4().hex[:6]}.zarr"


def remove_store(path: str | os.PathLike | None) -> None:
    """Delete a prediction store (a folder); missing is fine, failures are logged."""
    if path is None:
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        logger.warning("could not remove the prediction store %s", path, exc_info=True)


def remove_labels_array(store: str | os.PathLike | None, key: str | None) -> None:
    """Delete a superseded ``labels-<id>`` array from a store (its layer shows a newer one)."""
    if store is None or key is None:
        return
    try:
        from ..data.volume_io import delete_array, open_container

        delete_array(open_container(Path(store), "zarr"), key)
    except Exception:  # a leftover array costs disk only
        logger.warning("could not remove %s from %s", key, store, exc_info=True)

"""What the Train panel asks for, without Qt: choices -> checked config, saved annotations, a run.

The panel collects :class:`TrainChoices` on the GUI thread (copies of the layers' data, so the
user can keep painting while the network trains and their layers are never touched). Cheap checks
(:func:`check_choices`, :func:`build_config`) run there and raise one-line :class:`UserError`s.
Everything that reads whole volumes runs in the training thread: :func:`prepare_run` summarises
the annotation, splits off validation, writes the annotations into the run folder and points the
config at them, so ``napari-connectomics train --config <run>/config.yaml`` repeats the run; then
:func:`run_training` calls :func:`~napari_connectomics.training.train`.

Torch, Lightning and h5py are imported inside the functions that need them, never at import time.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import validate_config
from ..data.annotations import annotations_path, write_annotations
from ..data.splits import split_sparse
from ..training.run_dir import new_run_dir
from .errors import UserError

__all__ = [
    "DEVICES",
    "PANEL_DEFAULTS",
    "VALIDATION_MODES",
    "AnnotationSummary",
    "Notice",
    "PairChoice",
    "PreparedRun",
    "PreviewTarget",
    "RunStarted",
    "TrainChoices",
    "build_config",
    "check_annotations",
    "check_choices",
    "class_value",
    "continue_config",
    "default_class_names",
    "held_out_split",
    "lower_thread_priority",
    "new_run_dir",
    "out_channels_for",
    "prepare_run",
    "preview_region",
    "run_training",
    "save_annotations",
    "summarize_labels",
    "torch_threads",
]

logger = logging.getLogger(__name__)

VALIDATION_MODES = ("held-out", "labels")
DEVICES = ("auto", "cpu", "gpu")  # the panel's device picker: these of system.accelerator's choices
# The only config defaults the Train panel states itself, where it deliberately differs from the CLI
# (the schema): painting in napari marks a few sections (sparse), the legend names classes
# (semantic), and interactive training should show a result within minutes, so it runs a fixed
# number of steps instead of the schema's epochs. Every other knob starts from the session's config.
PANEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"label_mode": "sparse", "target": "semantic"},
    "training": {"max_steps": 400},  # most seeds have decided by then on a 2-core CPU (docs/benchmarks.md)
}
LEGEND_FILE = "annotations.json"
MAX_SEMANTIC_CLASSES = 32  # more values than this in dense semantic labels are instance ids
MAX_SECTIONS_NAMED = 5  # a warning about sections names at most this many
PREVIEW_MAX_YX = 512  # the preview predicts at most this many pixels around the view centre
THREAD_NICENESS = 10  # how much lower than the GUI the training thread is scheduled (Linux)


# --------------------------------------------------------------------------------------------
# What the panel hands over
# --------------------------------------------------------------------------------------------


@dataclass
class PairChoice:
    """One image with its labels: copies of layer data (numpy), lazy arrays, or file specs.

    ``image_source`` is a file spec the image was read from (napari-connectomics' reader records
    it); when it still opens with the same shape, the run folder references it instead of a copy.
    ``scale`` and ``translate`` place the image (the part trained on) in the world, ``label_scale``
    and ``label_translate`` the labels (layers: they must lie on the image's voxels). ``origin``: the
    voxel of the image layer where ``image`` starts, when it is the part of a larger image under
    a smaller Labels layer (see :func:`~.pair_rows.labels_box`).
    """

    name: str
    image: Any
    label: Any
    image_source: str | None = None
    scale: tuple[float, ...] = ()
    translate: tuple[float, ...] = ()
    label_scale: tuple[float, ...] = ()
    label_translate: tuple[float, ...] = ()
    origin: tuple[int, ...] = ()

    @property
    def from_files(self) -> bool:
        return isinstance(self.image, (str, os.PathLike)) and isinstance(self.label, (str, os.PathLike))


@dataclass
class TrainChoices:
    """Everything the Train panel decides.

    ``knobs`` are config fields, ``{section: {field: value}}`` with the schema's names; their
    defaults, choices and bounds are the schema's (``config/schema.py``), so they are not restated
    here. A knob not given (or None) keeps the base config's value, or :data:`PANEL_DEFAULTS`. The
    other fields exist only in the GUI: the layers, the legend (``classes``: class index -> name,
    0 = background), what validates, where training starts, and the live preview.
    """

    pairs: list[PairChoice]
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    classes: dict[int, str] = field(default_factory=lambda: default_class_names())
    validation: str = "held-out"  # one of VALIDATION_MODES
    val_label: Any = None  # a second Labels layer's copy (or a file spec) over the first image
    val_scale: tuple[float, ...] = ()  # where that Labels layer lies (scale, translate), if a layer
    val_translate: tuple[float, ...] = ()
    start: str = "scratch"  # or "checkpoint"
    checkpoint: str | None = None
    preview_every: int = 0

    def resolved_knobs(self) -> dict[str, dict[str, Any]]:
        """:data:`PANEL_DEFAULTS` overlaid with the given knobs, None values left out."""
        merged = copy.deepcopy(PANEL_DEFAULTS)
        for section, values in self.knobs.items():
            merged.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
        return merged

    def knob(self, section: str, name: str) -> Any:
        """A knob's value for the run; None when the base config's value is kept."""
        return self.resolved_knobs().get(section, {}).get(name)

    @property
    def label_mode(self) -> str:
        return str(self.knob("data", "label_mode"))

    @property
    def task(self) -> str:
        return str(self.knob("data", "target"))


def default_class_names() -> dict[int, str]:
    """Class 0 is background, class 1 the objects of the sample (mitochondria)."""
    return {0: "background", 1: "mitochondria"}


def class_value(index: int, label_mode: str) -> int:
    """The label value a class is painted with: sparse shifts by one (0 means 'not annotated')."""
    return index + 1 if label_mode == "sparse" else index


# Events the training thread puts on the queue (besides :class:`~napari_connectomics.progress.Progress`).


@dataclass(frozen=True)
class RunStarted:
    run_dir: Path
    total_steps: int
    first_step: int = 0


@dataclass(frozen=True)
class Notice:
    """A warning for the user (shown as a napari notification)."""

    text: str


@dataclass
class PreviewTarget:
    """Where the user looks, in the image's data coordinates. The GUI thread writes these plain
    attributes on every dims/camera change; the training thread only reads them."""

    z: int = 0
    y: int | None = None
    x: int | None = None


# --------------------------------------------------------------------------------------------
# Checks on the GUI thread (cheap: shapes, files, config)
# --------------------------------------------------------------------------------------------


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, (str, os.PathLike)):
        from ..data.volumes import VolumeError, open_volume

        try:
            with open_volume(value) as volume:
                return tuple(volume.shape)
        except VolumeError as err:
            raise UserError(f"{what}: {err}") from None
    return tuple(int(n) for n in np.shape(value))


def _dtype(value: Any) -> np.dtype:
    if isinstance(value, (str, os.PathLike)):
        from ..data.volumes import open_volume

        with open_volume(value) as volume:
            return volume.dtype
    return np.dtype(getattr(value, "dtype", np.asarray(value).dtype))


def check_choices(choices: TrainChoices, in_channels: int = 1) -> None:
    """One-line UserError for a choice that cannot train (no layers, shapes differ, no checkpoint)."""
    if not choices.pairs:
        raise UserError("pick an Image layer and the Labels layer painted on it (or two files)")
    for pair in choices.pairs:
        if pair.image is None or (isinstance(pair.image, str) and not pair.image.strip()):
            raise UserError(f"{pair.name}: pick an image (an Image layer or a file such as stack.h5:raw)")
        if pair.label is None or (isinstance(pair.label, str) and not pair.label.strip()):
            raise UserError(f"{pair.name}: pick the Labels layer you painted (or a labels file); "
                            "add one with the 'new labels layer' button of the layer list")
        image_shape = _shape(pair.image, f"image of {pair.name}")
        label_shape = _shape(pair.label, f"labels of {pair.name}")
        _check_placement(pair.name, pair.scale, pair.translate, pair.label_scale, pair.label_translate)
        _check_shapes(pair.name, image_shape, label_shape, in_channels)
        if _dtype(pair.label).kind not in "iub":
            raise UserError(f"{pair.name}: the labels hold {_dtype(pair.label)} values; "
                            "labels must be integers (pick a Labels layer)")
    if choices.validation == "labels":
        if choices.val_label is None:
            raise UserError("validation from a Labels layer: pick that layer, or validate on a held-out part")
        first = choices.pairs[0]
        val_shape = _shape(choices.val_label, "validation labels")
        _check_placement("the validation labels", first.scale, first.translate, choices.val_scale,
                         choices.val_translate)
        _check_shapes("validation labels", _shape(first.image, "image"), val_shape, in_channels)
    if choices.start == "checkpoint":
        if not choices.checkpoint:
            raise UserError("start from a checkpoint: choose the .ckpt file (or start from scratch)")
        if not Path(choices.checkpoint).expanduser().is_file():
            raise UserError(f"checkpoint {choices.checkpoint} does not exist; choose an existing .ckpt file")
    output_dir = choices.knob("training", "output_dir")  # None: the base config's
    if output_dir is not None and not str(output_dir).strip():
        raise UserError("choose an output folder for the run")
    # Invalid knob values (a mode or task the schema does not list) fail in build_config, whose
    # validation names the key and the choices.


def _check_shapes(name: str, image: tuple[int, ...], label: tuple[int, ...], in_channels: int) -> None:
    spatial = image[1:] if in_channels > 1 else image
    if spatial != label:
        raise UserError(f"{name}: the image is {_text(image)} but the labels are {_text(label)}; "
                        "pick the Labels layer painted on this image (same shape)")


def _check_placement(name: str, scale: Sequence[float], translate: Sequence[float], label_scale: Sequence[float],
                     label_translate: Sequence[float]) -> None:
    """Labels layers must lie on their image's voxels (same scale and offset): napari shows them
    where their scale puts them, and a network would learn each voxel's label from another place."""
    if not label_scale or not scale:
        return
    translate = tuple(translate) or (0.0,) * len(scale)
    label_translate = tuple(label_translate) or (0.0,) * len(label_scale)
    ndim = min(len(label_scale), len(scale))
    image_scale, image_offset = np.asarray(scale, float)[-ndim:], np.asarray(translate, float)[-ndim:]
    labels_scale, labels_offset = np.asarray(label_scale, float)[-ndim:], np.asarray(label_translate, float)[-ndim:]
    voxel = float(np.min(np.abs(image_scale)))
    if (np.allclose(labels_scale, image_scale, rtol=1e-3, atol=0)
            and np.allclose(labels_offset, image_offset, atol=1e-3 * voxel)):
        return
    label = f"'{name}'" if not name.startswith("the ") else name
    raise UserError(f"{label} lies at scale {_numbers(labels_scale)}, offset {_numbers(labels_offset)} but its image "
                    f"at scale {_numbers(image_scale)}, offset {_numbers(image_offset)}: the labels are not on the "
                    "image's voxels; pick the Labels layer painted on this image (same shape, scale and offset)")


def _numbers(values: Sequence[float]) -> str:
    return "x".join(f"{float(v):g}" for v in values)


def _text(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


def lower_thread_priority(increment: int = THREAD_NICENESS) -> bool:
    """Make the calling thread yield the CPU to the GUI (Linux: a per-thread nice value).

    On a machine with few cores the GUI thread (and a software OpenGL renderer) compete with the
    training thread for CPU time; raising this thread's nice value lets the scheduler serve the
    viewer first, at no cost to training when the viewer is idle. Threads the training thread
    starts (torch's intra-op pool, when it creates it) inherit the value. Elsewhere this does
    nothing (``os.setpriority`` on macOS would lower the whole process). Returns whether it did.
    """
    if not sys.platform.startswith("linux") or increment <= 0:
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
        return True
    except (AttributeError, OSError) as err:
        logger.debug("could not lower the training thread's priority: %s", err)
        return False


def torch_threads() -> int:
    """Training threads: all cores but one, so the GUI thread always has a core."""
    return max(1, (os.cpu_count() or 2) - 1)


def out_channels_for(task: str, label_mode: str, largest_value: int) -> int:
    """Network outputs for ``task`` given the largest label value (painted or in the legend)."""
    from ..registry import TARGETS

    return max(2, TARGETS.get(task).count_classes(largest_value, label_mode))


def build_config(base: Any, choices: TrainChoices) -> Any:
    """The run config: the session's (model section from the Model panel) plus the panel's choices.

    Raises :class:`~napari_connectomics.config.ConfigError` (one line) for a value the config
    refuses, e.g. a patch size the architecture cannot take. Data paths are filled in later by
    :func:`prepare_run`, once the annotations are saved.
    """
    from ..config import as_config

    cfg = copy.deepcopy(as_config(base))
    for section, values in choices.resolved_knobs().items():
        for name, value in values.items():
            cfg[section][name] = copy.deepcopy(value)
    legend_max = class_value(max(choices.classes, default=1), choices.label_mode)
    d = cfg.data
    d.num_workers = 0  # no forked loader processes inside a Qt application
    for key in ("train_image", "train_label", "val_image", "val_label"):
        d[key] = None
    cfg.model.out_channels = out_channels_for(choices.task, choices.label_mode, legend_max)
    cfg.model.pretrained = str(Path(choices.checkpoint).expanduser().resolve()) if (
        choices.start == "checkpoint" and choices.checkpoint) else None
    t = cfg.training
    steps = int(t.max_steps)
    t.output_dir = str(Path(t.output_dir).expanduser().resolve())
    t.val_check_interval = max(1, min(steps, 50, max(5, steps // 10)))
    t.log_every_n_steps = 1
    _set_device(cfg)
    cfg.system.torch_threads = torch_threads()
    return validate_config(cfg)


def _set_device(cfg: Any) -> None:
    """The panel's device (one of DEVICES) also sets the GPU count; auto: a GPU when the training
    thread finds one (see :func:`_resolve_auto_device`)."""
    device = cfg.system.accelerator
    if device not in DEVICES:
        raise UserError(f"device {device!r}: choose {', '.join(DEVICES)}")
    cfg.system.num_gpus = 1 if device == "gpu" else 0
    cfg.system.devices = None


def continue_config(cfg: Any, done_steps: int, more_steps: int) -> Any:
    """The config of a continued run: the same run, ``more_steps`` past the last step."""
    cfg = copy.deepcopy(cfg)
    cfg.training.max_steps = int(done_steps) + int(more_steps)
    return cfg


# --------------------------------------------------------------------------------------------
# Annotations (training thread: these read whole volumes)
# --------------------------------------------------------------------------------------------


@dataclass
class AnnotationSummary:
    """Which label values a labels volume holds and how many voxels are annotated."""

    values: list[int]
    annotated: int
    total: int
    objects_only: list[int] = field(default_factory=list)  # sparse sections: objects, no background


def summarize_labels(label: Any, label_mode: str) -> AnnotationSummary:
    """The values present (sorted), the annotated voxel count (sparse: non-zero) and, for sparse
    stacks with background painted somewhere, the sections where objects are painted but no
    background (with none painted at all, :func:`check_annotations` says so once instead)."""
    array = np.asarray(label)
    values = [int(v) for v in np.unique(array)]
    annotated = int(np.count_nonzero(array)) if label_mode == "sparse" else int(array.size)
    objects_only: list[int] = []
    background_value = class_value(0, label_mode)
    if label_mode == "sparse" and array.ndim == 3 and background_value in values:
        objects = (array > background_value).any(axis=(1, 2))
        background = (array == background_value).any(axis=(1, 2))
        objects_only = [int(z) for z in np.flatnonzero(objects & ~background)]
    return AnnotationSummary(values, annotated, int(array.size), objects_only)


def objects_only_warning(name: str, sections: Sequence[int]) -> str:
    """The warning for sparse sections with objects painted but no background: such strokes taught
    the loop's network to call more of a section an object (docs/benchmarks.md)."""
    shown = ", ".join(str(z) for z in sections[:MAX_SECTIONS_NAMED])
    more = f" and {len(sections) - MAX_SECTIONS_NAMED} more" if len(sections) > MAX_SECTIONS_NAMED else ""
    return (f"{name}: section{'s' if len(sections) > 1 else ''} {shown}{more} "
            f"{'have' if len(sections) > 1 else 'has'} objects painted but no background (1); the "
            "network may learn to call more of it objects: paint some background there too")


def check_annotations(summary: AnnotationSummary, label_mode: str, task: str, name: str = "labels") -> list[str]:
    """UserError when nothing can be learnt; warnings (returned) for likely mistakes."""
    painted = [v for v in summary.values if v != 0]
    if label_mode == "sparse" and not painted:
        raise UserError(f"{name}: nothing is annotated (all 0). In sparse mode paint background with 1 "
                        "and objects with 2 (use the paint buttons of the class legend)")
    if label_mode == "dense" and not painted:
        raise UserError(f"{name}: the labels are all 0 (background); paint objects with 1, "
                        "or pick the sparse mode to mark only what you annotated")
    if any(v < 0 for v in summary.values):
        raise UserError(f"{name}: labels hold negative values; paint with 0, 1, 2, ...")
    warnings: list[str] = []
    if label_mode == "sparse" and painted == [1]:
        warnings.append(f"{name}: only label 1 is painted, and 1 is background in sparse mode; paint "
                        "objects with 2 (the 'paint' button of the mitochondria row), or the network "
                        "learns that everything is background")
    if label_mode == "sparse" and 1 not in painted:
        warnings.append(f"{name}: no background (label 1) is painted; the network learns objects only, "
                        "paint some background with 1")
    if summary.objects_only:
        warnings.append(objects_only_warning(name, summary.objects_only))
    if task == "semantic" and label_mode == "dense" and len(painted) > MAX_SEMANTIC_CLASSES:
        raise UserError(f"{name}: the labels hold {len(painted)} values, which look like object ids; "
                        "pick the task 'instance' (separate objects) or 'binary' (foreground)")
    return warnings


def held_out_split(label: np.ndarray, fraction: float, mode: str,
                   seed: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Sparse labels split into training and validation labels (0 = not annotated elsewhere), as
    the training engine splits them (:func:`~napari_connectomics.data.splits.split_sparse`: by
    default pieces of every annotated section, so no painted section is lost to training).

    Returns (train labels, validation labels, description), or None when nothing is held out.
    """
    split = split_sparse(label, fraction, mode, seed)
    return tuple(split) if split.held_out else None  # type: ignore[return-value]


def _referenced_image(pair: PairChoice) -> str | None:
    """The image's own file spec, when it still opens with the layer's shape (no copy needed)."""
    if not pair.image_source:
        return None
    from ..data.volumes import VolumeError, open_volume

    try:
        with open_volume(pair.image_source) as volume:
            if tuple(volume.shape) == tuple(np.shape(pair.image)):
                return volume.source
    except (VolumeError, OSError, ValueError) as err:
        logger.info("not referencing %s (%s): copying the image into the run folder", pair.image_source, err)
    return None


@dataclass
class SavedPair:
    """Volume specs (``file.h5:key``) of one saved pair."""

    image: str
    label: str
    val_image: str | None = None
    val_label: str | None = None


def save_annotations(run_dir: Path, choices: TrainChoices, splits: Mapping[int, tuple[np.ndarray, np.ndarray]],
                     val_label: np.ndarray | None = None) -> list[SavedPair]:
    """Write what the run trains on into ``run_dir`` (HDF5, one file per pair) and say where.

    Labels are always copied (the user keeps painting); the image is referenced when it came from
    a file that still matches, else copied. ``splits`` maps a pair index to its held-out
    (train, val) labels; ``val_label`` is a second Labels layer validating the first pair. The
    files are written by :func:`~napari_connectomics.data.annotations.write_annotations`, as
    :func:`~napari_connectomics.training.train` writes in-memory arrays.
    """
    saved: list[SavedPair] = []
    for k, pair in enumerate(choices.pairs):
        reference = _referenced_image(pair)
        arrays: dict[str, Any] = {} if reference is not None else {"image": pair.image}
        arrays["label"] = pair.label
        if k in splits:
            arrays["train_label"], arrays["val_label"] = splits[k]
        if k == 0 and val_label is not None:
            arrays["val_label"] = val_label
        attrs = {"layer": pair.name, "label_mode": choices.label_mode,
                 "classes": json.dumps({str(k): v for k, v in choices.classes.items()})}
        specs = write_annotations(annotations_path(run_dir, k), arrays, attrs=attrs, scale=pair.scale,
                                  translate=pair.translate)
        item = SavedPair(image=reference or specs["image"], label=specs.get("train_label", specs["label"]))
        if "val_label" in specs:
            item.val_image, item.val_label = item.image, specs["val_label"]
        saved.append(item)
    _write_legend(run_dir, choices, saved)
    return saved


def _write_legend(run_dir: Path, choices: TrainChoices, saved: list[SavedPair]) -> None:
    legend = {
        "label_mode": choices.label_mode,
        "task": choices.task,
        "classes": {str(class_value(k, choices.label_mode)): name for k, name in sorted(choices.classes.items())},
        "pairs": [{"name": p.name, "image": s.image, "label": s.label, "val_image": s.val_image,
                   "val_label": s.val_label} for p, s in zip(choices.pairs, saved)],
    }
    (run_dir / LEGEND_FILE).write_text(json.dumps(legend, indent=2))




# --------------------------------------------------------------------------------------------
# The run (training thread)
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedRun:
    """A config whose data paths point at the saved annotations, and where the run writes."""

    cfg: Any
    run_dir: Path
    data: Any = None  # TrainingData of file specs when several pairs are trained on
    warnings: list[str] = field(default_factory=list)
    preview_image: Any = None


def prepare_run(choices: TrainChoices, cfg: Any) -> PreparedRun:
    """Check the annotation, split validation, save the annotations, fill the config's paths.

    Runs in the training thread (it reads whole volumes). Nothing is written before the checks
    pass; a failure later removes the half-made run folder.
    """
    warnings: list[str] = []
    cfg = copy.deepcopy(cfg)
    legend_largest = class_value(max(choices.classes, default=1), choices.label_mode)
    largest = legend_largest
    labels = [pair.label if pair.from_files else np.asarray(pair.label) for pair in choices.pairs]
    for pair, label in zip(choices.pairs, labels):
        if pair.from_files:
            continue
        summary = summarize_labels(label, choices.label_mode)
        warnings += check_annotations(summary, choices.label_mode, choices.task, pair.name)
        largest = max(largest, max(summary.values))
    if choices.task == "semantic":
        cfg.model.out_channels = out_channels_for("semantic", choices.label_mode, largest)
        if largest > legend_largest:
            warnings.append(f"the labels hold values up to {largest} but the class legend ends at "
                            f"{legend_largest}: training {cfg.model.out_channels} classes (if the values are "
                            "object ids, pick the task 'instance' or 'binary')")
    _finetune_model(cfg)
    _resolve_auto_device(cfg)

    splits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    val_label = None
    if choices.validation == "labels":
        val_label = choices.val_label if isinstance(choices.val_label, (str, os.PathLike)) else np.asarray(
            choices.val_label)
        if not isinstance(val_label, np.ndarray):
            val_label = None  # a file: referenced as is below
    elif choices.label_mode == "sparse" and not any(pair.from_files for pair in choices.pairs):
        # Files and dense labels are split by the data module (the same split_sparse for sparse files).
        for k, (pair, label) in enumerate(zip(choices.pairs, labels)):
            split = split_sparse(label, float(cfg.data.val_fraction), cfg.data.sparse_validation,
                                 int(cfg.system.seed))
            if not split.held_out:  # the engine scores the training annotation and logs it as train_eval/
                warnings.append(f"{pair.name}: {split.description}; validation scores are computed on the "
                                "training annotation")
            else:
                splits[k] = (split.train, split.val)
                logger.info("%s: validating on %s", pair.name, split.description)

    run_dir = new_run_dir(cfg, create=True)
    try:
        layer_pairs = [k for k, p in enumerate(choices.pairs) if not p.from_files]
        saved_layers = save_annotations(
            run_dir, _only(choices, layer_pairs), {layer_pairs.index(k): s for k, s in splits.items()},
            val_label) if layer_pairs else []
    except BaseException:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    specs: list[SavedPair] = []
    for k, pair in enumerate(choices.pairs):
        specs.append(saved_layers[layer_pairs.index(k)] if k in layer_pairs
                     else SavedPair(str(pair.image), str(pair.label)))
    if choices.validation == "labels" and isinstance(choices.val_label, (str, os.PathLike)):
        specs[0].val_image, specs[0].val_label = specs[0].image, str(choices.val_label)
    elif val_label is not None and not layer_pairs:  # files trained on, a Labels layer validates
        specs[0].val_image, specs[0].val_label = specs[0].image, _save_validation_labels(run_dir, val_label)
    data = _point_config(cfg, specs, warnings)
    first = choices.pairs[0]
    preview = None if first.from_files else first.image
    return PreparedRun(cfg=cfg, run_dir=run_dir, data=data, warnings=warnings, preview_image=preview)


def _save_validation_labels(run_dir: Path, val_label: np.ndarray) -> str:
    return write_annotations(annotations_path(run_dir), {"val_label": val_label})["val_label"]


def _only(choices: TrainChoices, indices: Sequence[int]) -> TrainChoices:
    subset = copy.copy(choices)
    subset.pairs = [choices.pairs[k] for k in indices]
    return subset


def _point_config(cfg: Any, specs: list[SavedPair], warnings: list[str]) -> Any:
    """Data paths of the first pair go into the config; several pairs also travel as TrainingData."""
    d = cfg.data
    d.train_image, d.train_label = specs[0].image, specs[0].label
    d.val_image, d.val_label = specs[0].val_image, specs[0].val_label
    validate_config(cfg)
    if len(specs) == 1:
        return None
    from ..training import TrainingData

    warnings.append(f"{len(specs)} image/label pairs: config.yaml names the first one only "
                    "(data.train_image takes one volume); all are saved in the run folder")
    train = [(s.image, s.label) for s in specs]
    val = [(s.val_image, s.val_label) for s in specs if s.val_image]
    return TrainingData(train=train, val=val)


def _finetune_model(cfg: Any) -> None:
    """Fine-tuning starts from the checkpoint's own network: take its model section."""
    if not cfg.model.pretrained:
        return
    from ..models.checkpoint import config_from_checkpoint, load_checkpoint

    source = config_from_checkpoint(load_checkpoint(cfg.model.pretrained), cfg.model.pretrained)
    wanted = int(cfg.model.out_channels)
    if int(source.model.out_channels) != wanted:
        raise UserError(f"the checkpoint predicts {source.model.out_channels} classes but this annotation "
                        f"needs {wanted} ({cfg.data.target}); train from scratch, or match the task and classes")
    pretrained = cfg.model.pretrained
    for key, value in source.model.items():
        cfg.model[key] = copy.deepcopy(value)
    cfg.model.pretrained = pretrained


def _resolve_auto_device(cfg: Any) -> None:
    """'auto' picks the GPU when torch sees one; 'gpu' without one is a clear error."""
    import torch

    has_gpu = torch.cuda.is_available()
    if cfg.system.accelerator == "gpu" and not has_gpu:
        raise UserError("device GPU: torch sees no CUDA GPU on this machine; pick auto or CPU")
    if cfg.system.accelerator == "auto":
        cfg.system.num_gpus = 1 if has_gpu else 0


def run_training(prepared: PreparedRun, report: Callable[[Any], None], stop_event: threading.Event,
                 *, resume: str | os.PathLike | None = None, first_step: int = 0, preview_every: float = 0,
                 preview_target: PreviewTarget | None = None,
                 snapshot_request: threading.Event | None = None, label_updates: Any = None) -> Any:
    """Train (or continue) the prepared run; progress and previews go to ``report``.

    ``preview_every``: seconds between live previews of the viewed section (0: none; see
    :mod:`.live_feedback`). ``snapshot_request``: set it to have the current weights saved after
    the step in flight (a :class:`~.live_feedback.WeightsSaved` event says where). ``label_updates``:
    a :class:`~napari_connectomics.training.callbacks.LabelUpdates` that repainted labels are
    submitted to while the run trains.
    """
    from ..training import train
    from .live_feedback import make_preview_callback, make_snapshot_callback

    callbacks: list[Any] = [report]
    if preview_every > 0 and prepared.preview_image is not None and preview_target is not None:
        callbacks.append(make_preview_callback(prepared.preview_image, prepared.cfg, preview_every,
                                               preview_target, report))
    if snapshot_request is not None:
        callbacks.append(make_snapshot_callback(prepared.cfg, prepared.run_dir / "checkpoints", snapshot_request,
                                                report))
    if label_updates is not None:
        callbacks.append(label_updates)
    report(RunStarted(prepared.run_dir, int(prepared.cfg.training.max_steps), first_step))
    return train(prepared.cfg, data=prepared.data, callbacks=callbacks, stop_event=stop_event, resume=resume,
                 run_dir=prepared.run_dir)


# --------------------------------------------------------------------------------------------
# Live preview region (the preview itself is a Lightning callback in .live_feedback)
# --------------------------------------------------------------------------------------------


def preview_region(shape: Sequence[int], target: PreviewTarget, window_z: int,
                   max_yx: int = PREVIEW_MAX_YX) -> tuple[slice, slice, slice]:
    """z-y-x region to predict: ``window_z`` sections around the viewed one, and at most
    ``max_yx`` pixels in y and x around the view centre (the whole plane when it is smaller)."""
    z_size, y_size, x_size = (1, *shape)[-3:] if len(shape) == 2 else tuple(shape[-3:])
    z = min(max(int(target.z), 0), z_size - 1)
    z0 = min(max(0, z - window_z // 2), max(0, z_size - window_z))
    boxes = [slice(z0, min(z_size, z0 + window_z))]
    for centre, size in ((target.y, y_size), (target.x, x_size)):
        centre = size // 2 if centre is None else min(max(int(centre), 0), size - 1)
        width = min(size, max_yx)
        start = min(max(0, centre - width // 2), size - width)
        boxes.append(slice(start, start + width))
    return tuple(boxes)  # type: ignore[return-value]


def steps_label(done: int, total: int | None) -> str:
    """'step 12 / 200' for status lines."""
    return f"step {done} / {total}" if total else f"step {done}"

"""The Train panel: train a network from the annotations painted in napari, with live feedback.

The user picks Image + Labels layer pairs (or files), says how the labels are meant (sparse:
0 = not annotated, 1 = background, 2.. = classes; or dense), names the classes in a legend whose
buttons select the label to paint, and presses Train. The run goes through a
:class:`~.background.BackgroundJob`: by default Lightning runs in the viewer's engine worker
process, started when the panel opens (:mod:`.worker_client`; torch is never imported into napari,
and a crashed or killed worker is one notification), or, with
``NAPARI_CONNECTOMICS_TRAINING=thread``, in a thread of napari's process. Progress is relayed to
this panel, which draws a progress bar, the loss plot and the live preview; labels repainted
during a run are sent to the worker. Stop ends the run after the step in flight with a
checkpoint, Continue resumes it. The worker also times a training step of the panel's choices
(:mod:`.step_probe`); the panel warns when the first preview is more than a minute away.

A run started here is reproducible: its folder holds ``config.yaml`` and the annotations it
trained on (see :mod:`.training_request`), so ``napari-connectomics train --config
<run>/config.yaml`` repeats it. The user's layers are copied before training and never modified.

Under changing state: a Labels layer smaller than its image, lying on the image's voxels (e.g. a
crop over a large lazy volume), trains on the part of the image under it (only that part is read);
labels at another scale or offset than their image are refused up front. A layer of a running
training removed or replaced is said once (the run goes on with what it took); a second Train
panel of the viewer (the combined dock) waits while this one trains; closing the panel's dock
stops its run with a checkpoint, one notification says where, and the engine worker is let go
(see :class:`_RunGuard` and :mod:`.dock_watch`).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from ..progress import Progress
from .background import BackgroundJob
from .class_legend import ClassLegend
from .compat import adding_unselected, viewer_camera
from .defaults import fit_patch
from .dock_watch import watch_dock
from .event_passes import GUI_SWITCH_INTERVAL, deferred_call, in_a_later_pass
from .forms import knob_value, knob_widget
from .later_progress import LaterProgress
from .live_feedback import PREVIEW_MARK, PREVIEW_SECONDS, PreviewUpdate, WeightsSaved
from .loss_plot import LossPlot
from .notify import UserError, describe_error, notify_error, show_info, show_warning
from .pair_rows import (
    PairRow,
    image_source,
    labels_box,
    refill_combo,
    snapshot_image,
    snapshot_labels,
    voxel_size_of,
)
from .step_probe import probe_config, probe_key, slow_start_warning
from .train_worker import import_engine
from .worker_client import WorkerAnnotations, WorkerDied, engine_for, quick_request, use_worker
from .session import TRAINING_RUNNING, TRAINING_STOPPING, WeightsSnapshot, session_for
from .training_request import (
    DEVICES,
    PANEL_DEFAULTS,
    Notice,
    PairChoice,
    PreviewTarget,
    RunStarted,
    TrainChoices,
    build_config,
    check_choices,
    continue_config,
    lower_thread_priority,
    prepare_run,
    run_training,
    steps_label,
)

if TYPE_CHECKING:
    import napari

__all__ = ["ClassLegend", "PairRow", "TrainPanel"]

logger = logging.getLogger(__name__)

JOB_NAME = "train"
PREVIEW_SUFFIX = " preview"
UNCERTAINTY_SUFFIX = " uncertainty"
NO_FOREGROUND_YET = "no foreground predicted yet"
# The config knobs the panel shows: attribute -> (section, field, label). Widget kind, help, choices
# and bounds come from the schema (forms.knob_widget); starting values from the session's config,
# or PANEL_DEFAULTS where the panel deliberately differs from the CLI.
KNOBS: dict[str, tuple[str, str, str]] = {
    "label_mode": ("data", "label_mode", "annotation"),
    "val_fraction": ("data", "val_fraction", "held out"),
    "task": ("data", "target", "task"),
    "patch_size": ("data", "patch_size", "patch size"),
    "batch_size": ("data", "batch_size", "batch"),
    "steps": ("training", "max_steps", "steps"),
    "lr": ("optimizer", "lr", "learning rate"),
    "device": ("system", "accelerator", "device"),
    "voxel_size": ("data", "voxel_size", "voxel size"),
    "context_sections": ("data", "context_sections", "context sections"),
}
# Where GUI training runs: in the engine worker process (the default) or, with
# NAPARI_CONNECTOMICS_TRAINING=thread, in a thread of napari's process (see worker_client.use_worker).
TRAIN_IN_PROCESS = use_worker()
ANNOTATION_SEND_MS = 500  # labels repainted during a run go to the worker this long after the last stroke
PROBE_DEBOUNCE_MS = 700  # the step time is measured again this long after the last knob edit
WARNING_STYLE = "color: #e0a040;"
# The dock closed during a run: the run stops after the step in flight and saves its checkpoint; the
# engine worker is let go when it has (or after this long, whatever the run does).
CLOSE_STOP_SECONDS = 300.0
ELSEWHERE = ("Another Train panel of this viewer is training: stop it there, or wait for it, to train "
             "here.")


def _text(shape: Any) -> str:
    return "x".join(str(int(n)) for n in shape)


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _unwrap(obj: Any) -> Any:
    """The object behind a proxy: napari hands plugins proxies of the viewer, and each lookup of a
    layer (or of its events) gives another proxy object."""
    return getattr(obj, "__wrapped__", obj)


def _same_layer(a: Any, b: Any) -> bool:
    return a is not None and b is not None and _unwrap(a) is _unwrap(b)


def _default_output_dir() -> str:
    """Runs go under the home folder: napari started from a desktop icon may run in '/'."""
    return str(Path.home() / "napari-connectomics" / "runs")


def _knob(attribute: str, cfg: Any) -> Any:
    """The schema-generated widget of one of :data:`KNOBS`, starting from the panel's default or
    the session config's value."""
    section, name, label = KNOBS[attribute]
    value = PANEL_DEFAULTS.get(section, {}).get(name, cfg[section][name])
    if value is not None and not isinstance(value, str) and hasattr(value, "__len__"):
        value = list(value)  # an OmegaConf ListConfig
    return knob_widget(section, name, value, label=label)


# --------------------------------------------------------------------------------------------
# The panel
# --------------------------------------------------------------------------------------------


@dataclass
class _FinishedRun:
    """What Continue needs: the prepared run, how far it got, and its last checkpoint."""

    prepared: Any
    global_step: int
    last_checkpoint: Path
    preview_every: int
    preview_layer: str | None = None  # the image layer the previews are drawn over
    preview_box: tuple[slice, ...] | None = None  # the part of it trained on (labels smaller than the image)


@dataclass
class _RunLayer:
    """A layer a running training was started from: what the panel says when it goes or changes."""

    layer: Any
    role: str  # "image" or "labels"
    index: int  # the pair
    told: bool = False  # the user was told (once per layer and run)


class _RunGuard:
    """What the panel's end does to its run and its hold on the engine worker.

    Kept off the Qt object: ``destroyed`` fires when the panel's widgets are already deleted. The
    viewer closed: the run ends at once with the worker. The user closed the panel's dock
    (:meth:`close`): the run stops after the step in flight and saves its checkpoint, the session
    gets it (one notification says where), then the worker is let go.
    """

    def __init__(self, worker: Any, holder: int, session: Any) -> None:
        self.worker, self.holder, self.session = worker, holder, session
        self.job: BackgroundJob | None = None
        self.ended = False

    def panel_destroyed(self, *_: Any) -> None:
        if self.ended:
            return
        self.ended = True
        job = self.job
        if job is not None and job.running:
            job.detach()
            job.stop()
        self.worker.release(self.holder)  # the viewer's last panel gone: the worker ends

    def close(self) -> None:
        if self.ended:
            return
        self.ended = True
        job = self.job
        if job is None or not job.running:
            self.worker.release(self.holder)
            return
        job.redirect(on_done=self._stopped, on_error=self._failed)
        job.stop()
        if self.session.busy == JOB_NAME:
            self.session.training = TRAINING_STOPPING
        threading.Thread(target=self._release_after, args=(job,), name="connectomics-close", daemon=True).start()

    def _release_after(self, job: BackgroundJob) -> None:
        job.wait(CLOSE_STOP_SECONDS)
        self.worker.release(self.holder)

    def _stopped(self, outcome: Any) -> None:
        _, result = outcome
        checkpoint = result.checkpoint
        self.session.run_dir = str(result.run_dir)
        if checkpoint is not None:
            self.session.checkpoint = str(checkpoint)
        self._idle()
        where = (f"checkpoint {checkpoint} (open Train to fine-tune from it, or Segment with it)"
                 if checkpoint is not None else "no checkpoint was saved; open Train to start again")
        show_info(f"The Train panel was closed: training stopped at step {result.global_step}; {where}")

    def _failed(self, error: BaseException) -> None:
        self._idle()
        if not (isinstance(error, WorkerDied) and (error.expected or not error.announce)):
            notify_error(error, "Training")

    def _idle(self) -> None:
        if self.session.busy == JOB_NAME:
            self.session.busy = ""
        self.session.snapshot_wanted = False
        self.session.training = ""


class TrainPanel(QWidget):
    """Train from annotations: pairs, label meaning, validation, start point, knobs, Train/Stop/Continue.

    Attributes a caller (or test) can drive: ``pair_rows`` (``image_combo``/``labels_combo``, or
    ``image_path``/``labels_path`` in files mode), ``source``, ``label_mode``, ``legend``,
    ``validation``, ``val_fraction``, ``val_labels``, ``start``, ``checkpoint``, ``task``,
    ``patch_size``, ``batch_size``, ``steps``, ``lr``, ``device``, ``voxel_size``,
    ``context_sections``, ``preview_every``, ``output_dir`` (magicgui widgets: set ``.value``),
    the buttons ``train_button``, ``stop_button``, ``continue_button``, and ``loss_plot``,
    ``status``, ``job`` (the running BackgroundJob or None), ``last_result`` (the TrainResult of the last run),
    ``step_time`` (the StepTime of the current choices, measured in the worker) and ``slow_warning``
    (the line shown when the first preview is over a minute away).
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.job: BackgroundJob | None = None
        self.last_result: Any = None
        self.run_dir: Path | None = None
        self._finished: _FinishedRun | None = None
        self._progress = LaterProgress(self)  # napari's bar opens a pass after the press (later_progress)
        self._progress_first_step = 0
        self._stopping = False
        self._preview_source: Any = None
        self._launched_preview_every = 0
        self._last_status = ""
        self._saved_switch_interval: float | None = None
        self.preview_target = PreviewTarget()
        self.preview_has_foreground: bool | None = None  # of the latest preview; None: none yet
        self._snapshot_request = threading.Event()  # the running job's: set to get its current weights
        self._auto_patch: list[int] | None = None  # the patch the panel last fitted to the image
        self.pair_rows: list[PairRow] = []
        self.train_in_process = TRAIN_IN_PROCESS  # False: train in a thread of napari's process
        self.worker = engine_for(napari_viewer)  # shared with the viewer's Model and Segment panels
        self.step_time: Any = None  # the StepTime of the current choices (step_probe), once measured
        self._step_times: dict[str, Any] = {}
        self._probe_job: BackgroundJob | None = None
        self._probe_queued: tuple[str, Any] | None = None
        self._probe_timer = QTimer(self)
        self._probe_timer.setSingleShot(True)
        self._probe_timer.setInterval(PROBE_DEBOUNCE_MS)
        self._probe_timer.timeout.connect(self._start_probe)
        # the first step-time request (~25 ms of config copying) comes in a pass of the event loop of
        # its own, after the one that builds the panel (see dock.py)
        self._first_probe = deferred_call(self, self._request_probe)
        self.worker_pid: int | None = None  # the process the last run trained in (from the worker)
        self.worker_annotated: int | None = None  # annotated voxels the worker holds for the run
        self.worker_labels_applied = 0  # repainted labels the running training has swapped in
        self._latest_preview: PreviewUpdate | None = None
        self._outbox: queue.Queue[tuple[str, Any]] = queue.Queue()  # messages to the running worker
        self._watched: list[Any] = []  # (emitter, callback) on the layers of the running training
        self._dirty: set[int] = set()  # pairs whose labels were repainted since last sent
        self._run_label_shapes: dict[int, tuple[int, ...]] = {}  # the labels the last run started with
        self._annotation_timer = QTimer(self)
        self._annotation_timer.setSingleShot(True)
        self._annotation_timer.setInterval(ANNOTATION_SEND_MS)
        self._annotation_timer.timeout.connect(self._send_annotations)
        self._run_layers: list[_RunLayer] = []  # the layers the running training was started from
        self._preview_box: tuple[slice, ...] | None = None  # the part of the preview image trained on
        self._elsewhere = False  # another Train panel of the viewer is training
        self._status_before = ""
        self._viewer_slots: list[tuple[Any, Any]] = []  # (emitter, callback) to drop when the dock closes
        # Closing napari stops a run at once; closing the panel's dock stops it with a checkpoint:
        # the training must not outlive its GUI.
        guard = self._guard = _RunGuard(self.worker, id(self), self.session)
        self.destroyed.connect(lambda *_: guard.panel_destroyed())
        self.dock_watch = watch_dock(self, self._on_dock_closed)
        if self.train_in_process:
            self.worker.hold(self)  # starts it now: it imports torch while the user paints
        self._build()
        self._connect_viewer()
        self._refresh_layers()
        self._update_buttons()
        self._first_probe.start()

    # --- layout ----------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.session.config
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self._build_data())
        layout.addWidget(self._build_validation())
        layout.addWidget(self._build_start(cfg))
        layout.addWidget(self._build_knobs(cfg))
        layout.addLayout(self._build_buttons())
        self.status = QLabel("Paint labels, then press Train.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.slow_warning = QLabel()
        self.slow_warning.setWordWrap(True)
        self.slow_warning.setStyleSheet(WARNING_STYLE)
        self.slow_warning.setVisible(False)
        layout.addWidget(self.slow_warning)
        self.loss_plot = LossPlot()
        layout.addWidget(self.loss_plot)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.add_pair()  # last: filling its layer pickers updates the legend and the voxel size

    def _build_data(self) -> QGroupBox:
        box = QGroupBox("Annotations")
        form = QVBoxLayout(box)
        self.source = widgets.ComboBox(choices=["layers", "files"], value="layers", label="from",
                                       tooltip="train on napari layers, or on image/labels files on disk")
        self.source.changed.connect(self._on_source_changed)
        self._pairs_box = QVBoxLayout()
        self.add_pair_button = QPushButton("+ pair")
        self.add_pair_button.setToolTip("train on several image/labels pairs at once")
        self.add_pair_button.clicked.connect(lambda: self.add_pair())
        self.label_mode = _knob("label_mode", self.session.config)
        self.label_mode.changed.connect(lambda value: self.legend.set_mode(value))
        self.legend = ClassLegend(activate_layer=self._activate)
        top = QFormLayout()
        top.addRow("from", self.source.native)
        form.addLayout(top)
        form.addLayout(self._pairs_box)
        form.addWidget(self.add_pair_button, 0, Qt.AlignmentFlag.AlignLeft)
        mode = QFormLayout()
        mode.addRow("annotation", self.label_mode.native)
        form.addLayout(mode)
        form.addWidget(self.legend)
        return box

    def _build_validation(self) -> QGroupBox:
        box = QGroupBox("Validation")
        form = QFormLayout(box)
        self.validation = widgets.ComboBox(
            choices=[("held-out part of the annotation", "held-out"), ("a second Labels layer", "labels")],
            value="held-out", tooltip="what the validation loss is measured on")
        self.val_fraction = _knob("val_fraction", self.session.config)
        self.val_fraction.tooltip = ("share of the annotated sections (sparse) or of z (dense, files) kept "
                                     "for validation")
        self.val_labels = QComboBox()
        self.val_labels.setToolTip("Labels layer over the first image, annotated for validation only")
        self.validation.changed.connect(self._on_validation_changed)
        form.addRow("from", self.validation.native)
        form.addRow("held out", self.val_fraction.native)
        form.addRow("labels", self.val_labels)
        self._on_validation_changed(self.validation.value)
        return box

    def _build_start(self, cfg: Any) -> QGroupBox:
        box = QGroupBox("Start")
        form = QFormLayout(box)
        self.start = widgets.ComboBox(
            choices=[("from scratch", "scratch"), ("from a checkpoint (fine-tune)", "checkpoint")],
            value="scratch", tooltip="fine-tune: start from a trained model, e.g. after correcting its output")
        self.checkpoint = widgets.FileEdit(mode="r", filter="*.ckpt", value=self.session.checkpoint or "")
        self.checkpoint.tooltip = "the checkpoint to fine-tune (default: the latest of this session)"
        self.start.changed.connect(lambda value: self.checkpoint.native.setEnabled(value == "checkpoint"))
        self.checkpoint.native.setEnabled(False)
        form.addRow("model", self.start.native)
        form.addRow("checkpoint", self.checkpoint.native)
        return box

    def _build_knobs(self, cfg: Any) -> QGroupBox:
        box = QGroupBox("Training")
        form = QFormLayout(box)
        self.task = _knob("task", cfg)
        self.task.tooltip = ("semantic: one output per class; instance: separate touching objects "
                             "(interior + contour, then watershed); binary: all classes as one foreground")
        self.task.changed.connect(lambda value: self.legend.set_task(value))
        self.patch_size = _knob("patch_size", cfg)
        self._auto_patch = self._patch_value()
        self.patch_size.tooltip = (f"{self.patch_size.tooltip}; follows the image (at most the preset's, a "
                                   "multiple of the network's size multiple) until you edit it")
        self.batch_size = _knob("batch_size", cfg)
        self.steps = _knob("steps", cfg)
        self.steps.tooltip = "optimizer steps to train (Continue adds this many more)"
        self.lr = _knob("lr", cfg)
        if hasattr(self.lr.native, "setDecimals"):
            self.lr.native.setDecimals(6)  # learning rates like 3e-4 must not round to 0
        # Not _knob: the panel offers only DEVICES of the schema's accelerators (and sets the GPU
        # count with them); a ComboBox built from the schema would get its choices back on reset.
        accelerator = cfg.system.accelerator
        self.device = widgets.ComboBox(choices=list(DEVICES), name="accelerator", label="device",
                                       value=accelerator if accelerator in DEVICES else DEVICES[0],
                                       tooltip="auto: the GPU when there is one, else the CPU")
        self.voxel_size = _knob("voxel_size", cfg)
        self.voxel_size.tooltip = "z, y, x voxel size; taken from the image layer's scale"
        self.context_sections = _knob("context_sections", cfg)
        self.context_sections.tooltip = (f"2D networks: {self.context_sections.tooltip}; the step between "
                                         "them follows the voxel size")
        self.preview_every = widgets.SpinBox(value=PREVIEW_SECONDS, min=0, max=3600,
                                             tooltip="every this many seconds, and when you move to another "
                                                     "section, predict the viewed section into '<image> preview' "
                                                     "(foreground probability) and '<image> uncertainty' layers "
                                                     "(0: off)")
        for knob in (self.patch_size, self.batch_size, self.device, self.preview_every):
            knob.changed.connect(self._request_probe)
        self.output_dir = widgets.FileEdit(mode="d", value=_default_output_dir())
        self.output_dir.tooltip = "runs are written to <folder>/<run name>/<date-time>/"
        for label, widget in (("task", self.task), ("patch size", self.patch_size), ("batch", self.batch_size),
                              ("steps", self.steps), ("learning rate", self.lr), ("device", self.device),
                              ("voxel size", self.voxel_size), ("context sections", self.context_sections),
                              ("preview every (s)", self.preview_every),
                              ("output folder", self.output_dir)):
            form.addRow(label, widget.native)
        return box

    def _build_buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("train a new run on the annotations as they are now")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("stop after the step in flight; a checkpoint is saved")
        self.continue_button = QPushButton("Continue")
        self.continue_button.setToolTip("resume the last run from its last checkpoint for more steps")
        self.train_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop_training)
        self.continue_button.clicked.connect(self.continue_training)
        for button in (self.train_button, self.stop_button, self.continue_button):
            row.addWidget(button)
        return row

    # --- pairs and layers ------------------------------------------------------------------------
    def add_pair(self) -> PairRow:
        row = PairRow(len(self.pair_rows), removable=bool(self.pair_rows), on_remove=self._remove_pair)
        row.set_files_mode(self.source.value == "files")
        self.pair_rows.append(row)
        self._pairs_box.addWidget(row)
        if len(self.pair_rows) == 1:
            row.image_combo.currentTextChanged.connect(self._on_first_image_changed)
            row.labels_combo.currentTextChanged.connect(self._on_first_labels_changed)
        self._refresh_layers()
        return row

    def _remove_pair(self, row: PairRow) -> None:
        if row in self.pair_rows[1:]:
            self.pair_rows.remove(row)
            row.setParent(None)
            row.deleteLater()

    def _connect_viewer(self) -> None:
        layers = self.viewer.layers
        for emitter, callback in (
                (layers.events.inserted, self._on_layer_inserted),
                (layers.events.removed, self._on_layer_removed),
                (layers.events.reordered, self._refresh_layers),
                (self.viewer.dims.events.current_step, self._track_view),
                (viewer_camera(self.viewer).events.center, self._track_view),
                (self.session.events.busy, self._on_busy),
                (self.session.events.config, self._on_session_config),
                (self.session.events.snapshot_wanted, self._on_snapshot_wanted),
                (self.session.events.checkpoint, self._on_session_checkpoint)):
            self._listen(emitter, callback)
        for layer in layers:
            self._listen(layer.events.name, self._refresh_layers)

    def _listen(self, emitter: Any, callback: Any) -> None:
        if not any(_unwrap(e) is _unwrap(emitter) and c == callback for e, c in self._viewer_slots):
            emitter.connect(callback)
            self._viewer_slots.append((emitter, callback))

    def _disconnect_viewer(self) -> None:
        for emitter, callback in self._viewer_slots:
            try:
                emitter.disconnect(callback)
            except Exception:  # already gone with its layer
                pass
        self._viewer_slots = []

    def _on_dock_closed(self) -> None:
        """The user closed the panel's dock (it is deleted next): a run stops with a checkpoint
        (see _RunGuard.close), and the panel stops hearing the viewer, whose layers live on."""
        self._disconnect_viewer()
        self._unwatch_run_layers()
        self.legend.set_layer(None)
        self._annotation_timer.stop()
        self._probe_timer.stop()
        self._progress.close()
        self._release_switch_interval()
        self._guard.close()

    def _on_busy(self, busy: str = "") -> None:
        try:
            self._update_buttons()
        except RuntimeError:  # the panel was closed; the session outlives it
            pass

    def _on_session_config(self, cfg: Any = None) -> None:
        """The Model panel changed the network (e.g. 2D -> 3D): the fitted patch follows it."""
        try:
            self._follow_patch()
            self._request_probe()
        except RuntimeError:  # the panel was closed; the session outlives it
            pass

    def _on_snapshot_wanted(self, wanted: bool = False) -> None:
        """The Segment panel asks for the current weights: the training thread saves them between steps."""
        if wanted and self.running and not self._stopping:
            self._snapshot_request.set()

    def _patch_value(self) -> list[int] | None:
        try:
            value = knob_value("data", self.patch_size)
        except ValueError:
            return None
        return [int(n) for n in value] if value is not None else None

    def _follow_patch(self) -> None:
        """Fit the patch to the first image and the session's network, unless the user edited it
        (the patch shown is no longer the one the panel fitted)."""
        current = self._patch_value()
        if current is not None and current != self._auto_patch:
            return
        layer = self._first_image_layer()
        if layer is None:
            return
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        fitted = fit_patch(self.session.config, tuple(data.shape), int(self.session.config.model.in_channels))
        if fitted is None or fitted == current:
            return
        self._auto_patch = fitted
        self.patch_size.value = ", ".join(str(n) for n in fitted)

    def _on_layer_inserted(self, event: Any) -> None:
        self._listen(event.value.events.name, self._refresh_layers)
        self._refresh_layers()

    def _on_layer_removed(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            emitter = layer.events.name
            self._viewer_slots = [(e, c) for e, c in self._viewer_slots if _unwrap(e) is not _unwrap(emitter)]
            try:
                emitter.disconnect(self._refresh_layers)
            except Exception:  # never connected
                pass
        self._refresh_layers()
        for run_layer in self._run_layers:
            if _same_layer(run_layer.layer, layer):
                self._run_layer_gone(run_layer, "was removed from the viewer")

    def _in_viewer(self, layer: Any) -> bool:
        return any(_same_layer(layer, other) for other in self.viewer.layers)

    def _layer_names(self, kind: str) -> list[str]:
        import napari

        cls = napari.layers.Labels if kind == "labels" else napari.layers.Image
        return [layer.name for layer in self.viewer.layers
                if isinstance(layer, cls) and (layer.metadata or {}).get(PREVIEW_MARK) is None]

    def _refresh_layers(self, event: Any = None) -> None:
        """Refill the layer pickers, keeping each choice; a new pair defaults to the newest layers."""
        images, labels = self._layer_names("image"), self._layer_names("labels")
        for row in self.pair_rows:
            refill_combo(row.image_combo, images, default=images[0] if images else None)
            refill_combo(row.labels_combo, labels, default=self._default_labels(labels))
        refill_combo(self.val_labels, labels, default=labels[0] if labels else None)

    def _default_labels(self, names: list[str]) -> str | None:
        """The active Labels layer, else the newest one: the layer the user just added to paint in."""
        active = self.viewer.layers.selection.active
        if active is not None and active.name in names:
            return active.name
        return names[-1] if names else None

    def _layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _first_image_layer(self) -> Any:
        if self.source.value != "layers" or not self.pair_rows:
            return None
        return self._layer(self.pair_rows[0].image_combo.currentText())

    def _on_first_image_changed(self, name: str) -> None:
        layer = self._layer(name)
        if layer is not None:
            self.voxel_size.value = ", ".join(f"{v:g}" for v in voxel_size_of(layer))
            self._follow_patch()
        self._track_view()

    def _on_first_labels_changed(self, name: str) -> None:
        self.legend.set_layer(self._layer(name) if self.source.value == "layers" else None)

    def _on_source_changed(self, value: str) -> None:
        for row in self.pair_rows:
            row.set_files_mode(value == "files")
        self._on_first_labels_changed(self.pair_rows[0].labels_combo.currentText())

    def _on_validation_changed(self, value: str) -> None:
        self.val_labels.setEnabled(value == "labels")
        self.val_fraction.native.setEnabled(value == "held-out")

    def _on_session_checkpoint(self, path: Any = None) -> None:
        """Fine-tuning defaults to the session's latest checkpoint (a run's, or one the user chose)."""
        if path:
            try:
                self.checkpoint.value = str(path)
            except RuntimeError:  # the panel was closed; the session outlives it
                pass

    def _activate(self, layer: Any) -> None:
        self.viewer.layers.selection.active = layer

    def _track_view(self, event: Any = None) -> None:
        """Remember the viewed section and centre in the first image's data coordinates; the
        training thread's preview reads them (plain attributes: no locking, no Qt)."""
        # a run previews its source (none after it was removed or changed); else the first image
        layer = self._preview_source if self.running else self._preview_source or self._first_image_layer()
        if layer is None:
            return
        try:
            point = list(self.viewer.dims.point)
            centre = list(viewer_camera(self.viewer).center)
            if len(point) >= 2 and len(centre) >= 2:
                point[-2:] = centre[-2:]
            data = np.asarray(layer.world_to_data(point[-layer.ndim:]), dtype=float)
        except Exception:  # a layer being removed mid-event: keep the last position
            return
        box = self._preview_box if _same_layer(layer, self._preview_source) else None
        if box is not None:  # the run previews the part of the image under its labels
            data[-len(box):] -= [s.start for s in box]
        if layer.ndim >= 3:
            self.preview_target.z = int(round(data[-3]))
        self.preview_target.y, self.preview_target.x = int(round(data[-2])), int(round(data[-1]))

    # --- how long a step takes (measured in the worker) -------------------------------------------
    def _probe_config(self) -> Any:
        """The session's config with the panel's patch, batch and device, or None while one is invalid."""
        patch = self._patch_value()
        if patch is None:
            return None
        try:
            return probe_config(self.session.config, patch, int(self.batch_size.value), str(self.device.value))
        except Exception:  # a half-edited knob: measured after the next edit
            logger.debug("no step-time probe for the current knobs", exc_info=True)
            return None

    def _request_probe(self, *_: Any) -> None:
        """Show the step time of the current choices: at once if measured, else after the debounce."""
        self._first_probe.stop()
        cfg = self._probe_config()
        if cfg is None:
            return
        key = probe_key(cfg)
        if key in self._step_times:
            self._probe_queued = None
            self._show_step_time(self._step_times[key])
            return
        self._probe_queued = (key, cfg)
        self.step_time = None  # the shown one was of other choices
        self.slow_warning.setVisible(False)
        self._probe_timer.start()  # restarts: only the last of a burst of edits is measured

    @property
    def probing(self) -> bool:
        """True while a training step of the panel's choices waits to be timed or is being timed."""
        return (self._first_probe.isActive() or self._probe_queued is not None
                or (self._probe_job is not None and self._probe_job.running))

    def _start_probe(self) -> None:
        """Measure the queued choices; never during a run (it would time the run's share of the CPU)."""
        if self._probe_queued is None or self.running or (self._probe_job is not None and self._probe_job.running):
            return
        key, cfg = self._probe_queued
        self._probe_queued = None
        engine, in_worker = self.worker, self.train_in_process

        def work(report: Any, stop: Any) -> Any:
            return quick_request(engine, in_worker, "probe", cfg)

        job = BackgroundJob(work, on_done=lambda step: self._probe_done(key, step),
                            on_error=self._probe_failed, name="connectomics-step-probe")
        self._probe_job = job
        job.start()

    def _probe_done(self, key: str, step: Any) -> None:
        self._step_times[key] = step
        try:
            self._request_probe()  # shows it if the choices are still those measured
            if self._probe_queued is not None and not self._probe_timer.isActive():
                self._start_probe()
        except RuntimeError:  # the panel was closed meanwhile
            pass

    def _probe_failed(self, error: BaseException) -> None:
        logger.info("timing a training step failed: %s", error)

    def _show_step_time(self, step: Any) -> None:
        """The warning line when the first preview (or loss) is more than a minute away."""
        self.step_time = step
        warning = slow_start_warning(step, float(self.preview_every.value))
        self.slow_warning.setText(warning or "")
        self.slow_warning.setVisible(warning is not None)

    # --- choices ---------------------------------------------------------------------------------
    def collect_choices(self) -> TrainChoices:
        """The panel's state as :class:`TrainChoices`, with private copies of the layers' data."""
        pairs = [self._pair_choice(row) for row in self.pair_rows]
        val_label, val_scale, val_translate = None, (), ()
        if self.validation.value == "labels":
            layer = self._layer(self.val_labels.currentText())
            if layer is not None:
                val_label = snapshot_labels(layer)
                val_scale, val_translate = _floats(layer.scale), _floats(layer.translate)
        knobs: dict[str, dict[str, Any]] = {"training": {"output_dir": str(self.output_dir.value)}}
        try:
            for attribute, (section, name, _) in KNOBS.items():
                knobs.setdefault(section, {})[name] = knob_value(section, getattr(self, attribute))
        except ValueError as err:
            raise UserError(str(err)) from None
        return TrainChoices(
            pairs=pairs, knobs=knobs, classes=self.legend.class_names(), validation=self.validation.value,
            val_label=val_label, val_scale=val_scale, val_translate=val_translate, start=self.start.value,
            checkpoint=str(self.checkpoint.value) if str(self.checkpoint.value) not in ("", ".") else None,
            preview_every=int(self.preview_every.value))

    def _pair_choice(self, row: PairRow) -> PairChoice:
        number = f"pair {row.index + 1}" if len(self.pair_rows) > 1 else "the annotation"
        if self.source.value == "files":
            return PairChoice(name=number, image=row.image_path.text().strip() or None,
                              label=row.labels_path.text().strip() or None)
        image = self._layer(row.image_combo.currentText())
        labels = self._layer(row.labels_combo.currentText())
        if image is None or labels is None:
            return PairChoice(name=number, image=None if image is None else image.data,
                              label=None if labels is None else labels.data)
        placement = {"label_scale": _floats(labels.scale), "label_translate": _floats(labels.translate)}
        box = labels_box(image, labels)
        if box is not None:  # labels over part of the image (a crop of a large volume): train on that part
            crop = snapshot_image(image, box)
            origin = tuple(s.start for s in box)
            translate = _floats(image.translate)[:-len(box)] + _floats(labels.translate)[-len(box):]
            return PairChoice(name=labels.name, image=crop, label=snapshot_labels(labels), scale=_floats(image.scale),
                              translate=translate, origin=origin, **placement)
        return PairChoice(name=labels.name, image=snapshot_image(image), label=snapshot_labels(labels),
                          image_source=image_source(image), scale=_floats(image.scale),
                          translate=_floats(image.translate), **placement)

    # --- running ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def start_training(self) -> bool:
        """Train a new run from the annotations as they are now; False (and a notification) if the
        choices cannot work."""
        if self.running or self.session.busy:
            if self.session.busy == JOB_NAME and not self.running:
                show_warning("a training is still running in another Train panel of this viewer; stop it there "
                             "or wait for it")
            else:
                show_warning(f"the {self.session.busy or JOB_NAME} job is still running; wait for it or stop it")
            return False
        try:
            choices = self.collect_choices()
            check_choices(choices, int(self.session.config.model.in_channels))
            cfg = build_config(self.session.config, choices)
        except Exception as error:
            notify_error(error, "Train")
            return False
        self._preview_source = self._first_image_layer()
        first = choices.pairs[0]
        self._preview_box = tuple(slice(o, o + n) for o, n in zip(first.origin, np.shape(first.label))) if (
            first.origin and self._preview_source is not None) else None
        self._run_label_shapes = {k: tuple(np.shape(pair.label)) for k, pair in enumerate(choices.pairs)
                                  if not pair.from_files}
        self._track_view()
        preview_every = choices.preview_every if self._preview_source is not None else 0
        target = self.preview_target
        snapshot = self._snapshot_request = threading.Event()
        if self.train_in_process:
            request = {"choices": choices, "cfg": cfg, "preview_every": preview_every}
            self.loss_plot.clear()
            self._finished = None
            self._launch(self._worker_work(request, target, snapshot), int(cfg.training.max_steps), first_step=0,
                         preview_every=preview_every)
            return True

        def work(report: Any, stop_event: Any) -> Any:
            lower_thread_priority()
            import_engine()
            prepared = prepare_run(choices, cfg)
            for text in prepared.warnings:
                report(Notice(text))
            return prepared, run_training(prepared, report, stop_event, preview_every=preview_every,
                                          preview_target=target, snapshot_request=snapshot)

        self.loss_plot.clear()
        self._finished = None
        self._launch(work, int(cfg.training.max_steps), first_step=0, preview_every=preview_every)
        return True

    def continue_training(self) -> bool:
        """Resume the last run from its last checkpoint for ``steps`` more steps."""
        finished = self._finished
        if self.running or self.session.busy or finished is None:
            return False
        if not finished.last_checkpoint.is_file():
            notify_error(UserError(f"the last checkpoint {finished.last_checkpoint} is gone; press Train "
                                   "to start a new run"), "Continue")
            return False
        prepared = finished.prepared
        prepared.cfg = continue_config(prepared.cfg, finished.global_step, int(self.steps.value))
        self._preview_source = self._layer(finished.preview_layer or "") if finished.preview_every else None
        self._preview_box = finished.preview_box if self._preview_source is not None else None
        self._track_view()
        target = self.preview_target
        snapshot = self._snapshot_request = threading.Event()
        if self.train_in_process:
            source = self._preview_source
            request = {"prepared": prepared, "resume": finished.last_checkpoint, "first_step": finished.global_step,
                       "preview_every": finished.preview_every,
                       "preview_image": snapshot_image(source, self._preview_box) if source is not None else None}
            self._launch(self._worker_work(request, target, snapshot), int(self.steps.value),
                         first_step=finished.global_step, preview_every=finished.preview_every)
            # Labels painted since the run stopped train from the continued run's first step on.
            self._dirty = set(range(len(self.pair_rows))) if self.source.value == "layers" else set()
            self._send_annotations()
            return True

        def work(report: Any, stop_event: Any) -> Any:
            lower_thread_priority()
            import_engine()
            return prepared, run_training(prepared, report, stop_event, resume=finished.last_checkpoint,
                                          first_step=finished.global_step, preview_every=finished.preview_every,
                                          preview_target=target, snapshot_request=snapshot)

        self._launch(work, int(self.steps.value), first_step=finished.global_step,
                     preview_every=finished.preview_every)
        return True

    def _worker_work(self, request: dict[str, Any], target: PreviewTarget, snapshot: threading.Event) -> Any:
        """The BackgroundJob work of a run in the worker process: relay messages until it ends."""
        worker, outbox = self.worker, queue.Queue()
        self._outbox = outbox

        def work(report: Any, stop_event: threading.Event) -> Any:
            return worker.run(request, report, stop_event, target, snapshot, outbox)

        return work

    # --- the layers of a run: labels repainted (worker mode), layers removed or replaced ---------
    def _watch_run_layers(self) -> None:
        """Hear what happens to the layers the run was started from: labels repainted go to the
        worker (which trains on them from its next step); a layer removed, or replaced by other data,
        is said once (the run goes on with what it took when Train was pressed)."""
        self._unwatch_run_layers()
        for index, row in enumerate(self.pair_rows if self.source.value == "layers" else []):
            for role, combo in (("image", row.image_combo), ("labels", row.labels_combo)):
                layer = self._layer(combo.currentText())
                if layer is None:
                    continue
                run_layer = _RunLayer(layer, role, index)
                self._run_layers.append(run_layer)
                callbacks = [(layer.events.data, self._data_callback(run_layer))]
                if role == "labels" and self.train_in_process:
                    callbacks.append((layer.events.paint, self._annotation_callback(index)))
                for emitter, callback in callbacks:
                    emitter.connect(callback)
                    self._watched.append((emitter, callback))

    def _annotation_callback(self, index: int) -> Any:
        def edited(event: Any = None) -> None:
            self._dirty.add(index)
            self._annotation_timer.start()  # restarts: sent once the strokes pause
        return edited

    def _data_callback(self, run_layer: _RunLayer) -> Any:
        def replaced(event: Any = None) -> None:
            if run_layer.role == "labels":
                shape = tuple(np.shape(run_layer.layer.data))
                trained = self._run_label_shapes.get(run_layer.index, shape)
                if shape == trained:  # new labels on the same voxels: as if repainted
                    if self.train_in_process:
                        self._annotation_callback(run_layer.index)()
                    return
                self._run_layer_gone(run_layer, f"changed shape ({_text(trained)} -> {_text(shape)})")
            else:
                self._run_layer_gone(run_layer, "changed")
        return replaced

    def _run_layer_gone(self, run_layer: _RunLayer, what: str) -> None:
        """Say once that a layer of the running training was removed or replaced: the run goes
        on with what it took (the image as it was, the labels it has); no previews over a changed
        image, no labels of another shape sent to the worker."""
        if not self.running or run_layer.told:
            return
        run_layer.told = True
        name, removed = run_layer.layer.name, what.startswith("was removed")
        if run_layer.role == "image":
            kept = "the image as it was when Train was pressed"
            if _same_layer(self._preview_source, run_layer.layer):
                self._preview_source = None
                kept += ", without previews" if self._launched_preview_every else ""
        else:
            kept = "the labels it has"
            self._dirty.discard(run_layer.index)
        then = "press Stop to end it" if removed else f"press Stop, then Train to train on the new {run_layer.role}"
        show_warning(f"'{name}' {what} during training: the run goes on with {kept}; {then}")

    def _unwatch_run_layers(self) -> None:
        self._annotation_timer.stop()
        for emitter, callback in self._watched:
            try:
                emitter.disconnect(callback)
            except Exception:  # the layer is gone
                pass
        self._watched, self._dirty, self._run_layers = [], set(), []

    def _send_annotations(self) -> None:
        """Copy the repainted labels for the worker (the relay thread sends them)."""
        if not self.running or not self.train_in_process:
            return
        for index in sorted(self._dirty):
            run_layer = next((r for r in self._run_layers if r.role == "labels" and r.index == index), None)
            if run_layer is None or run_layer.told or not self._in_viewer(run_layer.layer):
                continue
            layer = run_layer.layer
            trained = self._run_label_shapes.get(index)
            if trained is not None and tuple(np.shape(layer.data)) != trained:
                self._run_layer_gone(run_layer, f"changed shape ({_text(trained)} -> {_text(np.shape(layer.data))})")
                continue
            self._outbox.put(("labels", (index, snapshot_labels(layer))))
        self._dirty = set()

    def stop_training(self) -> None:
        """Stop after the step in flight (the trainer saves last.ckpt); Continue resumes from it."""
        if self.running and self.job is not None:
            self._stopping = True
            self.job.stop()
            self.session.training = TRAINING_STOPPING
            self.status.setText("Stopping after the step in flight…")
            self._update_buttons()

    @property
    def progress_bar(self) -> Any:
        """napari's progress bar of the run (None until it opened, a pass after the press)."""
        return self._progress.bar

    def _launch(self, work: Any, steps: int, first_step: int, preview_every: int) -> None:
        from napari.utils import progress

        self._stopping = False
        self._progress_first_step = first_step
        self._progress.open(lambda: progress(total=steps, desc="Training"))
        self._launched_preview_every = preview_every
        self.preview_has_foreground = None
        self.worker_labels_applied = 0
        self.job = BackgroundJob(work, on_events=self._on_events, on_done=self._on_done, on_error=self._on_error,
                                 name="connectomics-train")
        self._guard.job = self.job
        self.dock_watch.attach()  # docked by now (in the combined dock too): closing it stops the run
        self._watch_run_layers()
        if not self.train_in_process:
            self._hold_switch_interval()
        self.status.setText("Preparing the annotations…")
        self.job.start()
        # busy once running: other Train panels of the viewer then know the run is not theirs
        self.session.busy = JOB_NAME
        self.session.training = TRAINING_RUNNING
        if self.session.snapshot_wanted:  # Segment was pressed just before: serve it with this run
            self._snapshot_request.set()
        self._update_buttons()

    # --- events from the training thread (GUI thread) -------------------------------------------
    def _on_events(self, events: list[Any]) -> None:
        latest_preview: PreviewUpdate | None = None
        latest: Progress | None = None
        for event in events:
            if isinstance(event, Progress):
                self._on_progress(event)
                latest = event if event.stage in ("train", "validate") else latest
            elif isinstance(event, PreviewUpdate):
                latest_preview = event
            elif isinstance(event, WeightsSaved):
                self.session.snapshot = WeightsSnapshot(str(event.path), int(event.step), event.info)
                self.session.snapshot_wanted = False
            elif isinstance(event, Notice):
                show_warning(event.text)
            elif isinstance(event, WorkerAnnotations):
                self.worker_pid, self.worker_annotated = event.pid, event.annotated
                self.worker_labels_applied = event.applied
            elif isinstance(event, RunStarted):
                self.run_dir = event.run_dir
                self.status.setText(f"Training in {event.run_dir}")
        if latest_preview is not None:
            self._show_preview(latest_preview)
        if latest is not None and self.progress_bar is not None:
            done = max(0, latest.done - self._progress_first_step)
            if done > self.progress_bar.n:
                self.progress_bar.update(done - self.progress_bar.n)
            loss = latest.metrics.get("train/loss")
            self._last_status = steps_label(latest.done, latest.total) + (
                f", loss {loss:.4f}" if loss is not None else "")
        if (latest is not None or latest_preview is not None) and not self._stopping and self._last_status:
            note = f"; {NO_FOREGROUND_YET}" if self.preview_has_foreground is False else ""
            self.status.setText(self._last_status + note)

    def _on_progress(self, event: Progress) -> None:
        if event.stage == "train" and "train/loss" in event.metrics:
            self.loss_plot.add_point("train", event.done, event.metrics["train/loss"])
        elif event.stage == "validate" and "val/loss" in event.metrics:
            self.loss_plot.add_point("val", event.done, event.metrics["val/loss"])

    def _show_preview(self, update: PreviewUpdate) -> None:
        """Put the foreground probability into '<image> preview' and its entropy into
        '<image> uncertainty' (same scale as the image, placed at the predicted region), without
        taking the active layer away from the one being painted."""
        source = self._preview_source
        self._latest_preview = update
        self.preview_has_foreground = update.foreground_voxels > 0
        if source is None or source.name not in self.viewer.layers:
            return
        scale = np.asarray(source.scale, dtype=float)
        offset = np.asarray(update.offset, dtype=float)[-source.ndim:]
        if self._preview_box is not None:  # the preview is of the part of the image under the labels
            starts = [s.start for s in self._preview_box][-len(offset):]
            offset[len(offset) - len(starts):] += starts
        translate = np.asarray(source.translate, dtype=float) + offset * scale
        added = False
        for suffix, data, style in (
                (PREVIEW_SUFFIX, update.data, {"colormap": "magenta", "opacity": 0.6}),
                (UNCERTAINTY_SUFFIX, update.uncertainty, {"colormap": "yellow", "opacity": 0.4})):
            name = source.name + suffix
            if name not in self.viewer.layers:
                if added:  # napari builds a layer in ~0.1 s: one per pass of the event loop (event_passes)
                    in_a_later_pass(lambda: self._show_latest_preview(update))
                    return
                added = True
            self._put_preview_layer(name, data if source.ndim >= 3 else data[0], scale, translate, style)

    def _show_latest_preview(self, update: PreviewUpdate) -> None:
        """The rest of a preview whose first layer was just added (unless a newer preview came)."""
        if update is self._latest_preview and self._preview_source is not None:
            try:
                self._show_preview(update)
            except RuntimeError:  # the panel was closed meanwhile
                pass

    def _put_preview_layer(self, name: str, data: np.ndarray, scale: np.ndarray, translate: np.ndarray,
                           style: dict[str, Any]) -> None:
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if not np.allclose(layer.translate, translate):  # each assignment re-slices the layer
                layer.translate = translate
            layer.data = data
            return
        with adding_unselected(self.viewer):
            self.viewer.add_image(data, name=name, scale=scale, translate=translate, blending="additive",
                                  contrast_limits=(0.0, 1.0), metadata={PREVIEW_MARK: "training preview"},
                                  **style)

    def _on_done(self, outcome: Any) -> None:
        prepared, result = outcome
        self._progress.close()
        self.last_result = result
        self.run_dir = Path(result.run_dir)
        checkpoint = result.checkpoint
        self.session.run_dir = str(result.run_dir)
        if checkpoint is not None:
            self.session.checkpoint = str(checkpoint)
        if result.last_checkpoint is not None:
            source = self._preview_source.name if self._preview_source is not None else None
            self._finished = _FinishedRun(prepared, int(result.global_step), Path(result.last_checkpoint),
                                          self._launched_preview_every, source,
                                          self._preview_box if source is not None else None)
        how = "Stopped" if result.stopped else "Finished"
        self.status.setText(f"{how} at step {result.global_step}. Checkpoint: {checkpoint} ({result.checkpoint_note()})")
        show_info(f"Training {how.lower()} at step {result.global_step}; run folder {result.run_dir}")
        self._end_job()

    def _on_error(self, error: BaseException) -> None:
        self._progress.close()
        if isinstance(error, WorkerDied) and not error.announce:  # another panel notified this death
            message = describe_error(error, "Training")
        else:
            message = notify_error(error, "Training")
        self.status.setText(message)
        self._end_job()

    def _hold_switch_interval(self) -> None:
        if self._saved_switch_interval is None:
            self._saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(GUI_SWITCH_INTERVAL, self._saved_switch_interval))

    def _release_switch_interval(self) -> None:
        if self._saved_switch_interval is not None:
            sys.setswitchinterval(self._saved_switch_interval)
            self._saved_switch_interval = None

    def _end_job(self) -> None:
        self._release_switch_interval()
        self._unwatch_run_layers()
        self._stopping = False
        self._preview_source = None
        self._preview_box = None
        self._last_status = ""
        self._snapshot_request.clear()
        if self.session.busy == JOB_NAME:
            self.session.busy = ""
        self.session.snapshot_wanted = False
        self.session.training = ""  # last: the Segment panel may start on it, with busy and checkpoint set
        self._update_buttons()
        self._start_probe()  # choices edited during the run are measured now

    def _update_buttons(self) -> None:
        """No double start (here, or in another Train panel of the viewer while this one trains);
        Stop only while running; Continue only with a finished run to resume."""
        running = self.running
        other_busy = bool(self.session.busy) and not running
        self.train_button.setEnabled(not running and not other_busy)
        self.stop_button.setEnabled(running and not self._stopping)
        self.continue_button.setEnabled(not running and not other_busy and self._finished is not None)
        elsewhere = self.session.busy == JOB_NAME and not running  # another Train panel's run
        if elsewhere and not self._elsewhere:
            self._status_before = self.status.text()
            self.status.setText(ELSEWHERE)
        elif self._elsewhere and not elsewhere and self.status.text() == ELSEWHERE:
            self.status.setText(self._status_before)
        self._elsewhere = elsewhere

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the training thread has ended (tests, shutdown); events still need the GUI loop."""
        return self.job.wait(timeout) if self.job is not None else True

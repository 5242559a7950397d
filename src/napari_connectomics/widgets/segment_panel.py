"""The Segment panel: pick a checkpoint and an Image layer, segment it in the background.

Flow: the checkpoint (a file, or one of the recent runs under ``training.output_dir``; or a
BioImage.IO model: a ``.zip``, its ``rdf.yaml`` or its folder) is read by the viewer's engine
worker process to show its architecture and target (a model's name, axes and channels);
Segment captures a :class:`~.segment_request.SegmentRequest` (image data, region, options) on
the GUI thread and the worker runs :func:`~.segment_request.run_segmentation` on it
(:func:`~.worker_client.segment_in_worker`; a :class:`~.background.BackgroundJob` waits for it,
and a large image goes through shared memory); the outcome becomes two layers,
``<image> probabilities`` and ``<image> segmentation``, placed with the source's scale and
translate (plus the region's offset). Changing the threshold or the post-processing re-runs only
the post-processing on the kept probabilities, in napari (numpy and scikit-image, no torch).
With ``NAPARI_CONNECTOMICS_TRAINING=thread`` the checkpoint is read and segmented in threads of
napari's process instead.

The panel never writes to the user's layers: it reads the image, and only replaces the data of
layers it made itself (marked in their metadata). Nothing here imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets
from napari.layers import Image, Labels, Shapes
from napari.utils import cancelable_progress
from napari.utils import progress as napari_progress
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..progress import Progress
from ..registry import POSTPROCESSORS
from .background import BackgroundJob
from .compat import adding_unselected, viewer_camera
from .dock_watch import watch_dock
from .event_passes import in_a_later_pass
from .forms import ConfigForm
from .later_progress import LaterProgress
from .live_feedback import PREVIEW_MARK
from .notify import UserError, describe_error, notify_error, show_info, show_warning
from .segment_request import (
    CHECKPOINT_FILTER,
    MEMORY_LIMIT_MB,
    OUTPUT_KEY,
    REGION_SHAPES,
    REGION_VIEW,
    REGION_WHOLE,
    REGIONS,
    SMALL_POSTPROCESS_VOXELS,
    CheckpointInfo,
    LabelsResult,
    PostSettings,
    Prediction,
    Region,
    SegmentOutcome,
    SegmentRequest,
    check_checkpoint_path,
    first_rectangle,
    is_lazy_data,
    output_names,
    recent_checkpoint_choices,
    region_around,
    remove_labels_array,
    remove_store,
    run_postprocess,
    run_segmentation,
    spatial_ndim,
    whole_region,
)
from .session import TRAINING_RUNNING, TRAINING_STOPPING, session_for
from .train_worker import import_engine
from .worker_client import WorkerDied, engine_for, quick_request, segment_in_worker, use_worker

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentPanel"]

logger = logging.getLogger(__name__)

PREDICT_KNOBS = ("window_size", "overlap", "batch_size", "tta", "triplanar", "z_smoothing", "device")
POST_KNOBS = ("threshold", "instances", "min_size")
_FALLBACK_WINDOW = (32, 128, 128)  # config default 3D patch, until the checkpoint has been read
WAIT_CHECKPOINT = "checkpoint"  # Segment pressed while a run stops: segment with its checkpoint
WAIT_SNAPSHOT = "snapshot"  # Segment pressed while a run trains: segment with its current weights
SEGMENT_TEXT = {"": "Segment", TRAINING_RUNNING: "Segment (current weights)",
                TRAINING_STOPPING: "Segment (after the stop)"}
SEGMENT_TIP = {
    "": "segment the chosen region of the image",
    TRAINING_RUNNING: "segment the visible field of view (or the Shapes ROI) with the running training's "
                      "current weights, saved after the step in flight; training goes on",
    TRAINING_STOPPING: "wait for the stopping run's checkpoint, then segment the chosen region with it",
}


class SegmentPanel(QWidget):
    """Segment an Image layer with a trained checkpoint (see the module doc).

    Drive it from code (tests, scripts): set ``checkpoint_edit.value``, ``image_combo.value``,
    ``region_combo.value`` (and ``shapes_combo.value``), the ``predict_form`` and ``post_form``
    values, then call :meth:`segment` (or click ``segment_button``); :attr:`running` is False when
    done. :attr:`prediction` keeps the last probabilities; :attr:`predict_runs` and
    :attr:`postprocess_runs` count the runs started.
    """

    # Session events may fire on any thread; a queued Qt signal brings them to the GUI thread.
    _session_changed = Signal()
    _training_changed = Signal()

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.job: BackgroundJob | None = None
        self.post_job: BackgroundJob | None = None
        self.info_job: BackgroundJob | None = None
        self.prediction: Prediction | None = None
        self.labels_result: LabelsResult | None = None
        self.predict_runs = 0
        self.postprocess_runs = 0
        self.memory_limit_mb = MEMORY_LIMIT_MB
        self._infos: dict[str, CheckpointInfo] = {}
        self._offered_checkpoint: str | None = None
        self._temporary_stores: set[str] = set()
        self._progress = LaterProgress(self)  # napari's bar opens a pass after the press (later_progress)
        self._post_pending = False
        self._running_request: SegmentRequest | None = None
        self._showing = False  # a finished run's layers are being added (one per event-loop pass)
        self.waiting: str | None = None  # WAIT_CHECKPOINT or WAIT_SNAPSHOT while Segment waits for training
        self._snapshot_before: Any = None
        self.use_worker = use_worker()  # False: read checkpoints and segment in threads of napari's process
        self.engine = engine_for(napari_viewer)  # shared with the viewer's Model and Train panels
        if self.use_worker:
            self.engine.hold(self)
        self._build()
        self._connect()
        self.dock_watch = watch_dock(self)  # its dock closed: the panel goes (and lets the worker go)
        self.refresh_recent()
        self._offer_session_checkpoint()
        self._update_state()

    # ----------------------------------------------------------------------------------------
    # Widgets
    # ----------------------------------------------------------------------------------------

    def _build(self) -> None:
        inference = _section(self.session.config, "inference")
        self.checkpoint_edit = widgets.FileEdit(
            label="checkpoint", mode="r", filter=CHECKPOINT_FILTER,
            tooltip="a .ckpt file written by training (the network is rebuilt from the config "
            "inside it), or a BioImage.IO model: its .zip, its rdf.yaml, or (typed here) the "
            "folder holding it")
        self.recent_combo = widgets.ComboBox(label="recent runs", nullable=True,
                                             choices=self._recent_choices,
                                             tooltip="checkpoints of the runs under the "
                                             "training output folder, newest first")
        self.refresh_button = widgets.PushButton(text="Refresh runs")
        self.info_label = widgets.Label(value="no checkpoint chosen")
        self.image_combo = widgets.ComboBox(label="image", choices=self._image_choices,
                                            tooltip="the Image layer to segment (never modified)")
        self.region_combo = widgets.ComboBox(label="region", choices=REGIONS, value=REGION_WHOLE,
                                             tooltip="segment the whole volume, what the canvas "
                                             "shows (current slice +- half a window), or the "
                                             "first rectangle of a Shapes layer")
        self.shapes_combo = widgets.ComboBox(label="shapes layer", choices=self._shapes_choices,
                                             tooltip="its first rectangle is the region")
        self.predict_form = ConfigForm("inference", PREDICT_KNOBS, values=inference,
                                       labels={"window_size": "window", "tta": "test-time aug.",
                                               "triplanar": "tri-planar", "z_smoothing": "z-smoothing",
                                               "batch_size": "batch"})
        self.predict_form.window_size.native.setPlaceholderText("checkpoint default")
        self.post_form = ConfigForm("inference", POST_KNOBS, values=inference,
                                    labels={"instances": "post-processing", "min_size": "min size"})
        self.store_edit = widgets.FileEdit(label="large outputs", mode="d",
                                           tooltip="folder for the Zarr store of predictions "
                                           "too large for memory or of lazy (dask, multiscale) "
                                           "images; empty: a temporary folder")
        self.segment_button = widgets.PushButton(text="Segment")
        self.cancel_button = widgets.PushButton(text="Cancel")
        self.status_label = widgets.Label(value="ready")
        self.status_label.native.setWordWrap(True)  # a long status or error wraps, not widens the dock
        buttons = widgets.Container(widgets=[self.segment_button, self.cancel_button],
                                    layout="horizontal", labels=False)
        self.form = widgets.Container(widgets=[
            self.checkpoint_edit, self.recent_combo, self.refresh_button, self.info_label,
            self.image_combo, self.region_combo, self.shapes_combo, self.predict_form,
            self.post_form, self.store_edit, buttons, self.status_label,
        ], labels=True)
        self.shapes_combo.visible = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.form.native)
        layout.addStretch(1)
        self._select_active_image()

    def _connect(self) -> None:
        self.checkpoint_edit.changed.connect(self._on_checkpoint_changed)
        self.recent_combo.changed.connect(self._on_recent_chosen)
        self.refresh_button.changed.connect(self.refresh_recent)
        self.region_combo.changed.connect(self._on_region_changed)
        self.post_form.changed.connect(self._on_post_changed)
        self.segment_button.changed.connect(self.segment)
        self.cancel_button.changed.connect(self.cancel)
        self._session_changed.connect(self._on_session_changed)
        self._training_changed.connect(self._on_training_changed)
        layers = self.viewer.layers.events
        for event in (layers.inserted, layers.removed, layers.moved):
            event.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        relay = self._relay_session_event
        self.session.events.checkpoint.connect(relay)
        self.session.events.config.connect(relay)
        training_relay = self._relay_training_event
        self.session.events.training.connect(training_relay)
        self.session.events.snapshot.connect(training_relay)
        self.destroyed.connect(_cleanup_closure(self.viewer, self.session, relay,
                                                self._on_layers_changed, self._jobs, training_relay,
                                                self.engine, id(self)))

    def _jobs(self) -> list[BackgroundJob]:
        return [job for job in (self.job, self.post_job, self.info_job) if job is not None]

    # ----------------------------------------------------------------------------------------
    # Choices
    # ----------------------------------------------------------------------------------------

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and OUTPUT_KEY not in layer.metadata
                and PREVIEW_MARK not in layer.metadata]

    def _shapes_choices(self, _widget: Any = None) -> list[tuple[str, Shapes]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Shapes)]

    def _recent_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        training = _section(self.session.config, "training")
        return recent_checkpoint_choices(training.get("output_dir"), self.session.checkpoint)

    def refresh_recent(self, *_: Any) -> None:
        """Re-list the recent runs, newest first (keeps the chosen checkpoint as it is)."""
        with self.recent_combo.changed.blocked():
            self.recent_combo.native.clear()  # else kept entries keep their old positions
            self.recent_combo.reset_choices()
            self.recent_combo.value = None

    def _select_active_image(self) -> None:
        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and OUTPUT_KEY not in active.metadata:
            self.image_combo.value = active

    def _on_layers_changed(self, event: Any = None) -> None:
        if not self.alive():
            return
        layer = getattr(event, "value", None)
        if getattr(event, "type", "") == "inserted" and layer is not None:
            layer.events.name.connect(self._on_layers_changed)
        self.image_combo.reset_choices()
        self.shapes_combo.reset_choices()
        self._update_state()

    def _on_region_changed(self, value: str) -> None:
        self.shapes_combo.visible = value == REGION_SHAPES

    # ----------------------------------------------------------------------------------------
    # Checkpoint
    # ----------------------------------------------------------------------------------------

    def _relay_session_event(self, *_: Any) -> None:
        try:
            self._session_changed.emit()
        except RuntimeError:  # the panel's Qt object is gone
            pass

    def _relay_training_event(self, *_: Any) -> None:
        try:
            self._training_changed.emit()
        except RuntimeError:  # the panel's Qt object is gone
            pass

    def _on_session_changed(self) -> None:
        if not self.alive():
            return
        self.refresh_recent()
        self._offer_session_checkpoint()

    def _offer_session_checkpoint(self) -> None:
        """Follow the session's latest checkpoint unless the user picked another file."""
        latest = self.session.checkpoint
        if not latest or latest == self._offered_checkpoint:
            return
        current = self._checkpoint_text()
        if current in ("", ".") or current == self._offered_checkpoint:
            self.checkpoint_edit.value = latest
        self._offered_checkpoint = latest

    def _on_recent_chosen(self, value: str | None) -> None:
        if value:
            self.checkpoint_edit.value = value

    def _checkpoint_text(self) -> str:
        return str(self.checkpoint_edit.line_edit.value or "").strip()

    def _on_checkpoint_changed(self, *_: Any) -> None:
        """Show what the checkpoint holds; reading it needs torch, so in the background."""
        text = self._checkpoint_text()
        try:
            path = check_checkpoint_path(text)
        except UserError as error:
            self.info_label.value = str(error) if text not in ("", ".") else "no checkpoint chosen"
            return
        key = str(path)
        if key in self._infos:
            self.info_label.value = self._infos[key].summary()
            return
        self.info_label.value = f"reading {path.name} ..."
        engine, in_worker = self.engine, self.use_worker

        def work(report: Any, stop: Any) -> CheckpointInfo:
            return quick_request(engine, in_worker, "info", path)

        job = BackgroundJob(work,
                            on_done=lambda info: self._on_info(key, info),
                            on_error=lambda error: self._on_info_error(key, error),
                            name="connectomics-checkpoint-info")
        self.info_job = job
        job.start()

    def _on_info(self, key: str, info: CheckpointInfo) -> None:
        self._infos[key] = info
        if self.alive() and self._checkpoint_key() == key:
            self.info_label.value = info.summary()

    def _on_info_error(self, key: str, error: BaseException) -> None:
        logger.info("could not read checkpoint %s: %s", key, error)
        if self.alive() and self._checkpoint_key() == key:
            text = str(error).strip()
            self.info_label.value = text.splitlines()[0] if text else type(error).__name__

    def _checkpoint_key(self) -> str | None:
        try:
            return str(check_checkpoint_path(self._checkpoint_text()))
        except UserError:
            return None

    # ----------------------------------------------------------------------------------------
    # Segment
    # ----------------------------------------------------------------------------------------

    def alive(self) -> bool:
        """False once Qt has deleted the panel (its viewer closed while a job was running)."""
        try:
            self.objectName()
            self.status_label.native.objectName()
        except RuntimeError:
            return False
        return True

    @property
    def running(self) -> bool:
        """True while a segmentation runs (post-processing re-runs are not counted)."""
        return (self.job is not None and self.job.running) or self._showing

    def segment(self, *_: Any) -> None:
        """Start segmenting with the panel's choices; a bad choice is a notification."""
        if self.running or self.waiting:
            return
        training = self.session.training
        if training in (TRAINING_RUNNING, TRAINING_STOPPING):
            try:
                self._image_layer()  # a missing image is said now, not when the weights arrive
            except UserError as error:
                notify_error(error, "Segmentation")
                return
            self._wait(WAIT_SNAPSHOT if training == TRAINING_RUNNING else WAIT_CHECKPOINT)
            return
        try:
            request = self.make_request()
        except Exception as error:  # bad choices: one line, the panel stays as it was
            notify_error(error, "Segmentation")
            return
        if self.session.busy and self.session.busy != "segment":
            show_warning(f"{self.session.busy} is running: segmenting now shares the CPU/GPU "
                         "with it")
        self._start(request)

    def _image_layer(self) -> Image:
        image = self.image_combo.value
        if image is None or image not in self.viewer.layers:
            raise UserError("no Image layer to segment: open an image (File > Open, or File > "
                            "Open Sample > Connectomics) and pick it under 'image'")
        if getattr(image, "rgb", False):
            raise UserError(f"'{image.name}' is an RGB image; EM networks take grayscale: "
                            "convert it to one channel first")
        return image

    def make_request(self, checkpoint: Path | None = None, region_choice: str | None = None) -> SegmentRequest:
        """The request for the current choices (GUI thread: reads the viewer and the layers);
        ``checkpoint`` and ``region_choice`` replace the panel's choices when given."""
        image = self._image_layer()
        checkpoint = check_checkpoint_path(checkpoint if checkpoint is not None else self._checkpoint_text())
        data = image.data[0] if image.multiscale else image.data
        shape = tuple(int(n) for n in data.shape)
        ndim = spatial_ndim(shape)
        values = self.predict_form.values()
        window = tuple(values["window_size"]) if values["window_size"] else None
        region = self._region(image, shape[-ndim:], self._region_window(window, checkpoint), region_choice)
        store = str(self.store_edit.line_edit.value or "").strip()
        return SegmentRequest(
            checkpoint=checkpoint, image_name=image.name, data=data, region=region,
            scale=tuple(float(s) for s in image.scale[-ndim:]),
            translate=tuple(float(t) for t in image.translate[-ndim:]),
            post=self.post_settings(), window=window, overlap=float(values["overlap"]),
            batch_size=int(values["batch_size"]), tta=bool(values["tta"]),
            triplanar=bool(values["triplanar"]), z_smoothing=float(values["z_smoothing"]),
            device=str(values["device"]), lazy_input=is_lazy_data(image.data, image.multiscale),
            store_folder=Path(store).expanduser() if store not in ("", ".") else None,
            memory_limit_mb=int(self.memory_limit_mb))

    def post_settings(self) -> PostSettings:
        values = self.post_form.values()
        return PostSettings(str(values["instances"]), float(values["threshold"]),
                            int(values["min_size"]))

    def _region_window(self, window: tuple[int, ...] | None, checkpoint: Path) -> tuple[int, ...]:
        """The window a region must hold: the form's, else the checkpoint's, else the default."""
        if window is not None:
            return (1, *window) if len(window) == 2 else window
        info = self._infos.get(str(checkpoint))
        return info.window if info is not None else _FALLBACK_WINDOW

    def _region(self, image: Image, shape: tuple[int, ...], window: tuple[int, ...],
                choice: str | None = None) -> Region:
        choice = choice or self.region_combo.value
        minimum = tuple(window[-len(shape):])
        if choice == REGION_VIEW:
            if self.viewer.dims.ndisplay == 3:
                show_info("the 3D view shows the whole volume: segmenting the whole volume")
                return whole_region(shape)
            return region_around(self._view_points(image, len(shape)), shape, minimum, REGION_VIEW)
        if choice == REGION_SHAPES:
            return region_around(self._rectangle_points(image, len(shape)), shape, minimum,
                                 REGION_SHAPES)
        return whole_region(shape)

    def _view_points(self, image: Image, ndim: int) -> np.ndarray:
        """Corners of the canvas in the image's data coordinates (spatial axes), at the current
        slice: the camera centre +- half the canvas size over the zoom, on the displayed axes."""
        viewer = self.viewer
        displayed = list(viewer.dims.displayed)[-2:]
        height, width = _canvas_size(viewer)
        camera = viewer_camera(viewer)
        zoom = float(camera.zoom) or 1.0
        center = np.asarray(camera.center, dtype=float)[-2:]
        points = []
        for dy in (-height / 2 / zoom, height / 2 / zoom):
            for dx in (-width / 2 / zoom, width / 2 / zoom):
                world = np.asarray(viewer.dims.point, dtype=float)
                world[displayed[0]] = center[0] + dy
                world[displayed[1]] = center[1] + dx
                points.append(np.asarray(image.world_to_data(world), dtype=float)[-ndim:])
        return np.asarray(points)

    def _rectangle_points(self, image: Image, ndim: int) -> np.ndarray:
        """Vertices of the chosen Shapes layer's first rectangle in the image's data coordinates
        (a 2D Shapes layer on a 3D image takes the current slice)."""
        shapes = self.shapes_combo.value
        if shapes is None or shapes not in self.viewer.layers:
            raise UserError("no Shapes layer for the region: add one (New shapes layer), draw a "
                            "rectangle, and pick it under 'shapes layer'")
        vertices = np.asarray(shapes.data[first_rectangle(shapes.shape_type, shapes.name)])
        base = np.asarray(self.viewer.dims.point, dtype=float)
        points = []
        for vertex in vertices:
            world_vertex = np.asarray(shapes.data_to_world(vertex), dtype=float)
            world = base.copy()
            world[len(world) - len(world_vertex):] = world_vertex
            points.append(np.asarray(image.world_to_data(world), dtype=float)[-ndim:])
        return np.asarray(points)

    # ----------------------------------------------------------------------------------------
    # Segment while training runs or stops: wait for its weights, then segment with them
    # ----------------------------------------------------------------------------------------

    def _wait(self, kind: str) -> None:
        """Remember the press; the weights come through the session (see _on_training_changed)."""
        self.waiting = kind
        self._snapshot_before = self.session.snapshot
        if kind == WAIT_SNAPSHOT:
            self.status_label.value = "waiting for the current weights (after the step in flight)…"
            self.session.snapshot_wanted = True
        else:
            self.status_label.value = "waiting for the run's checkpoint…"
        self._update_state()

    def _on_training_changed(self) -> None:
        """A run started, stops or ended, or saved weights: serve a waiting press, update the button."""
        if not self.alive():
            return
        snapshot = self.session.snapshot
        if (self.waiting == WAIT_SNAPSHOT and snapshot is not None and snapshot is not self._snapshot_before
                and snapshot != self._snapshot_before):
            self._segment_with_snapshot(snapshot)
        elif self.waiting and not self.session.training:
            self._segment_with_run_checkpoint()
        elif self.waiting == WAIT_SNAPSHOT and self.session.training == TRAINING_STOPPING:
            self.waiting = WAIT_CHECKPOINT
            self.status_label.value = "waiting for the run's checkpoint…"
        self._update_state()

    def _segment_with_snapshot(self, snapshot: Any) -> None:
        """Segment the view (or the Shapes ROI) with the weights the running training saved."""
        self.waiting = None
        path = Path(snapshot.path)
        if snapshot.info is not None:
            self._infos[str(path)] = snapshot.info
        region = REGION_VIEW if self.region_combo.value == REGION_WHOLE else None
        if self._start_waited(path, region):
            self.status_label.value = (f"segmenting {self._running_request.region} with the weights of step "
                                       f"{snapshot.step} (training goes on) ...")

    def _segment_with_run_checkpoint(self) -> None:
        """The run ended: segment with the checkpoint it left (the session's latest)."""
        self.waiting = None
        checkpoint = self.session.checkpoint
        if not checkpoint:
            message = notify_error(UserError("the training run ended without a checkpoint; pick one and "
                                             "press Segment again"), "Segmentation")
            self.status_label.value = message
            return
        self._start_waited(Path(checkpoint), None)

    def _start_waited(self, checkpoint: Path, region: str | None) -> bool:
        try:
            request = self.make_request(checkpoint=checkpoint, region_choice=region)
        except Exception as error:
            self.status_label.value = notify_error(error, "Segmentation")
            return False
        self._start(request)
        return True

    def _start(self, request: SegmentRequest) -> None:
        self.predict_runs += 1
        self._running_request = request
        engine, in_worker = self.engine, self.use_worker

        def work(report: Any, stop: Any) -> SegmentOutcome:
            if in_worker:
                return segment_in_worker(engine, request, report, stop)
            import_engine()
            return run_segmentation(request, report, stop)

        self.job = BackgroundJob(work,
                                 on_events=self._on_events, on_done=self._on_done,
                                 on_error=self._on_error, name="connectomics-segment")
        if not self.session.busy:
            self.session.busy = "segment"
        self._open_progress(f"Segmenting {request.image_name}")
        self.status_label.value = f"segmenting {request.region} ..."
        self.job.start()
        self._update_state()

    def cancel(self, *_: Any) -> None:
        """Stop the run after the window batch in flight (or stop waiting for training's weights);
        nothing it made is kept."""
        if self.waiting:
            self.waiting = None
            self.session.snapshot_wanted = False
            self.status_label.value = "cancelled: no layer was changed"
            self._update_state()
            return
        if self.running and self.job is not None:
            self.job.stop()
            self.status_label.value = "cancelling ..."
            self._update_state()

    def _on_done(self, outcome: SegmentOutcome) -> None:
        if not self.alive():  # the panel was closed meanwhile: keep nothing
            self._release_session()
            if outcome.prediction is not None and outcome.prediction.temporary:
                remove_store(outcome.prediction.store)
            return
        request = self._running_request
        if outcome.cancelled or outcome.prediction is None or outcome.labels is None:
            self._finish_run()
            self.status_label.value = "cancelled: no layer was changed"
            show_info("Segmentation cancelled")
            return
        previous = self.prediction
        try:
            self._show_probabilities(outcome.prediction)
        except Exception as error:
            self._finish_run()
            self._show_failed(outcome.prediction, error)
            return
        # napari builds a layer in ~0.1 s and refreshes an updated one in ~0.05 s: the segmentation
        # comes in a later pass (event_passes), so one pass never holds both layers' work.
        self._showing = True
        in_a_later_pass(lambda: self._show_rest(outcome, request, previous))

    def _show_rest(self, outcome: SegmentOutcome, request: SegmentRequest | None, previous: Prediction | None) -> None:
        """The segmentation layer and the run's summary, after the probabilities."""
        self._showing = False
        if not self.alive():
            self._release_session()
            return
        self._finish_run()
        prediction, labels = outcome.prediction, outcome.labels
        try:
            self._show_labels(prediction, labels)
        except Exception as error:
            self._show_failed(prediction, error)
            return
        if previous is not None and previous is not prediction:
            self._collect_stores()
        self.status_label.value = f"{prediction.region} done in {outcome.seconds:.1f} s: {_count_text(labels)}"
        if request is not None and self.post_settings() != request.post:
            self.reprocess()  # the post-processing knobs changed while the run was busy

    def _show_failed(self, prediction: Prediction, error: BaseException) -> None:
        self._drop_unshown(prediction)
        notify_error(error, "Showing the segmentation")
        self.status_label.value = "failed to show the result"

    def _on_error(self, error: BaseException) -> None:
        quiet = isinstance(error, WorkerDied) and not error.announce  # another panel notified this death
        if not self.alive():
            self._release_session()
            if not quiet:
                notify_error(error, "Segmentation")
            return
        self._finish_run()
        message = describe_error(error, "Segmentation") if quiet else notify_error(error, "Segmentation")
        self.status_label.value = message

    def _finish_run(self) -> None:
        self._running_request = None
        self._progress.close()
        self._release_session()
        self._update_state()

    def _release_session(self) -> None:
        if self.session.busy == "segment":
            self.session.busy = ""

    def _drop_unshown(self, prediction: Prediction) -> None:
        if prediction.temporary and prediction is not self.prediction:
            remove_store(prediction.store)

    # ----------------------------------------------------------------------------------------
    # Post-processing again on the kept probabilities
    # ----------------------------------------------------------------------------------------

    def _on_post_changed(self, *_: Any) -> None:
        if self.prediction is not None and not self.running:
            self.reprocess()

    def reprocess(self) -> None:
        """Labels again from the kept probabilities with the current post-processing knobs:
        directly for small in-memory results, else in the background; never predicts."""
        prediction = self.prediction
        if prediction is None or self.running:
            return
        post = self.post_settings()
        if self.labels_result is not None and post == self.labels_result.post:
            return
        if self.post_job is not None and self.post_job.running:
            self._post_pending = True
            return
        self.postprocess_runs += 1
        small = (not prediction.lazy and POSTPROCESSORS.get(post.method).blockwise
                 and int(np.prod(prediction.spatial_shape)) <= SMALL_POSTPROCESS_VOXELS)
        if small:
            try:
                labels = run_postprocess(prediction, post)
            except Exception as error:
                notify_error(error, "Post-processing")
                return
            self._show_labels(prediction, labels)
            self.status_label.value = f"post-processed: {_count_text(labels)}"
            return
        self._open_progress(f"Post-processing {prediction.image_name}", cancelable=False)
        self.status_label.value = f"post-processing ({post.method}) ..."
        self.post_job = BackgroundJob(lambda report, _stop: run_postprocess(prediction, post,
                                                                            report),
                                      on_events=self._on_events,
                                      on_done=lambda labels: self._on_post_done(prediction, labels),
                                      on_error=self._on_post_error, name="connectomics-postprocess")
        self.post_job.start()
        self._update_state()

    def _on_post_done(self, prediction: Prediction, labels: LabelsResult) -> None:
        self._progress.close()
        if prediction is self.prediction and self.alive():
            try:
                self._show_labels(prediction, labels)
                self.status_label.value = f"post-processed: {_count_text(labels)}"
            except Exception as error:
                notify_error(error, "Showing the segmentation")
        elif labels.lazy:
            remove_labels_array(prediction.store, labels.key)
        self._after_post()

    def _on_post_error(self, error: BaseException) -> None:
        self._progress.close()
        message = notify_error(error, "Post-processing")
        if self.alive():
            self.status_label.value = message
            self._after_post()

    def _after_post(self) -> None:
        if not self.alive():
            return
        self._update_state()
        if self._post_pending:
            self._post_pending = False
            self.reprocess()

    # ----------------------------------------------------------------------------------------
    # Layers
    # ----------------------------------------------------------------------------------------

    def _show_probabilities(self, prediction: Prediction) -> None:
        """Add or update the probability layer and keep the probabilities."""
        self.prediction = prediction
        if prediction.temporary and prediction.store is not None:
            self._temporary_stores.add(str(prediction.store))
        name, _ = output_names(prediction.image_name)
        style = {"colormap": "magma", "blending": "additive", "opacity": 0.5,
                 "contrast_limits": (0.0, 1.0)}
        self._put_layer(Image, "probabilities", name, prediction, prediction.foreground(), style)
        self.labels_result = None

    def _show_labels(self, prediction: Prediction, labels: LabelsResult) -> None:
        _, name = output_names(prediction.image_name)
        data = labels.labels
        if labels.lazy:
            import dask.array as da

            data = da.from_zarr(data)
        old = self.labels_result
        self._put_layer(Labels, "segmentation", name, prediction, data, {"opacity": 0.6},
                        labels_key=labels.key)
        self.labels_result = labels
        if old is not None and old.lazy and old.key != labels.key and prediction.store is not None:
            remove_labels_array(prediction.store, old.key)

    def _put_layer(self, kind: type, role: str, name: str, prediction: Prediction, data: Any,
                   style: dict[str, Any], labels_key: str | None = None) -> Any:
        """Update the panel's own ``role`` layer for this image, or add it. A user's layer that
        happens to carry the name is left alone (the new one gets a suffixed name)."""
        marker = {"role": role, "source": prediction.image_name,
                  "store": str(prediction.store) if prediction.store is not None else None,
                  "labels_key": labels_key, "region": str(prediction.region)}
        layer = self._own_layer(kind, role, prediction.image_name, name)
        if layer is not None and layer.ndim == np.ndim(data):
            # Each assignment of scale, translate or contrast limits re-slices the layer and redraws
            # its thumbnail (~10 ms each on a laptop): only what changed is assigned.
            layer.metadata = {**layer.metadata, OUTPUT_KEY: marker}
            if not np.allclose(layer.scale, prediction.scale):
                layer.scale = prediction.scale
            if not np.allclose(layer.translate, prediction.translate):
                layer.translate = prediction.translate
            layer.data = data
            limits = style.get("contrast_limits")
            if kind is Image and limits is not None and not np.allclose(layer.contrast_limits, limits):
                layer.contrast_limits = limits
            return layer
        if layer is not None:
            self.viewer.layers.remove(layer)
        add = self.viewer.add_image if kind is Image else self.viewer.add_labels
        with adding_unselected(self.viewer):  # the user's active layer (e.g. the one painted) stays active
            return add(data, name=name, scale=prediction.scale, translate=prediction.translate,
                       metadata={OUTPUT_KEY: marker}, **style)

    def _own_layer(self, kind: type, role: str, source: str, name: str) -> Any:
        candidates = [layer for layer in self.viewer.layers if isinstance(layer, kind)
                      and isinstance(layer.metadata.get(OUTPUT_KEY), dict)
                      and layer.metadata[OUTPUT_KEY].get("role") == role
                      and layer.metadata[OUTPUT_KEY].get("source") == source]
        named = [layer for layer in candidates if layer.name == name]
        return (named or candidates or [None])[0]

    def _collect_stores(self) -> None:
        """Delete temporary stores that no layer of the panel and no kept prediction shows."""
        used = {layer.metadata[OUTPUT_KEY].get("store") for layer in self.viewer.layers
                if isinstance(layer.metadata.get(OUTPUT_KEY), dict)}
        if self.prediction is not None and self.prediction.store is not None:
            used.add(str(self.prediction.store))
        for store in sorted(self._temporary_stores - used):
            remove_store(store)
            self._temporary_stores.discard(store)

    # ----------------------------------------------------------------------------------------
    # Progress and state
    # ----------------------------------------------------------------------------------------

    def _open_progress(self, description: str, cancelable: bool = True) -> None:
        """A napari progress bar (activity dock), a pass later; a segmentation's one has a working
        Cancel."""
        if cancelable:
            self._progress.open(lambda: cancelable_progress(total=0, desc=description, cancel_callback=self.cancel))
        else:
            self._progress.open(lambda: napari_progress(total=0, desc=description))

    def _on_events(self, events: list[Any]) -> None:
        updates = [event for event in events if isinstance(event, Progress)]
        if not updates or not self.alive():
            return
        latest = updates[-1]
        if latest.message:
            self.status_label.value = latest.message
        bar = self._progress.bar
        if bar is None:
            return
        total = int(latest.total or 0)
        if total != bar.total or latest.done < bar.n:
            bar.total = total
            bar.n = 0
        if latest.message:
            bar.set_description(latest.message)
        if latest.done > bar.n:
            bar.update(latest.done - bar.n)

    def _update_state(self) -> None:
        """Buttons follow the state: Segment while idle, Cancel while running."""
        running = self.running
        training = self.session.training if self.session.training in SEGMENT_TEXT else ""
        self.segment_button.enabled = not running and not self.waiting
        self.cancel_button.enabled = bool(self.waiting) or (running and not (
            self.job is not None and self.job.stop_event.is_set()))
        post_busy = self.post_job is not None and self.post_job.running
        self.segment_button.text = SEGMENT_TEXT[training]
        self.segment_button.tooltip = ("segmenting..." if running else
                                       "waiting for the training's weights..." if self.waiting else
                                       "post-processing..." if post_busy else SEGMENT_TIP[training])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _section(config: Any, name: str) -> dict[str, Any]:
    """A config section as a plain dict (empty when the session's config lacks it)."""
    try:
        section = config[name]
    except Exception:
        return {}
    try:
        from omegaconf import OmegaConf

        return dict(OmegaConf.to_container(section, resolve=True))  # type: ignore[arg-type]
    except Exception:
        return dict(section) if hasattr(section, "keys") else {}



def _canvas_size(viewer: Any) -> tuple[float, float]:
    """The canvas (height, width) in screen pixels (napari >= 0.6: ``viewer.canvas.size``)."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    if size is None:
        size = getattr(viewer, "_canvas_size", (600, 800))
    height, width = (float(n) for n in tuple(size)[-2:])
    return max(height, 1.0), max(width, 1.0)


def _count_text(labels: LabelsResult) -> str:
    if labels.lazy:
        return f"labels {labels.post.method}"
    largest = labels.largest_foreground
    if largest is not None and largest < labels.post.threshold:  # an undecided model, not an empty image
        return (f"nothing above the threshold {labels.post.threshold:g} (largest probability {largest:.2f}): "
                "lower the threshold, or train longer")
    top = int(np.max(labels.labels)) if np.size(labels.labels) else 0
    if not POSTPROCESSORS.get(labels.post.method).labels_objects:
        return f"mask with {int(np.count_nonzero(labels.labels))} foreground voxels"
    return f"{top} objects"


def _cleanup_closure(viewer: Any, session: Any, relay: Any, on_layers: Any, jobs: Any,
                     training_relay: Any = None, engine: Any = None, holder: int = 0) -> Any:
    """A slot for ``destroyed`` that holds no reference to the dead panel's Qt object; it lets the
    engine worker go (the viewer's last panel gone ends it)."""
    def cleanup(*_: Any) -> None:
        for event, slot in ((session.events.checkpoint, relay), (session.events.config, relay),
                            (session.events.training, training_relay), (session.events.snapshot, training_relay)):
            try:
                event.disconnect(slot)
            except Exception:
                pass
        try:
            layers = viewer.layers.events
            for event in (layers.inserted, layers.removed, layers.moved):
                event.disconnect(on_layers)
            for layer in viewer.layers:
                layer.events.name.disconnect(on_layers)
        except Exception:
            pass
        try:
            for job in jobs():
                job.stop()
        except Exception:
            pass
        if engine is not None:
            engine.release(holder)

    return cleanup

"""The panels under changing state, in real viewers, driven through their buttons and fields.

For each case the promise is the same: one notification (or the panel's status line) that says
what happened and what to do; the user's layers left as they were; the panel and the viewer still
usable (the next Train or Segment works); no process left behind. Neighbouring cases live
elsewhere: annotations repainted during a run, the viewer closed during a run, a killed worker
(test_train_worker.py); Segment while training (test_segment_panel.py); bad choices
(test_train_panel.py::test_errors_are_notified_and_the_panel_stays_usable).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import LONG_RUN, TINY_MODEL, WAIT_MS, paint_sparse, tiny, tiny_checkpoint, workers

napari = pytest.importorskip("napari")

from napari_connectomics.config import load_config  # noqa: E402
from napari_connectomics.widgets.session import session_for  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-connectomics"


def warnings_and_errors(shown):
    return [message for severity, message in shown if severity.lower() in ("warning", "error")]


def copies(viewer) -> dict[str, np.ndarray]:
    return {layer.name: np.array(layer.data, copy=True) for layer in viewer.layers}


def assert_unchanged(viewer, before: dict[str, np.ndarray], skip=()) -> None:
    for name, data in before.items():
        if name in viewer.layers and name not in skip:
            np.testing.assert_array_equal(viewer.layers[name].data, data, err_msg=name)


def worker_pids() -> set[int]:
    return {process.pid for process in workers()}


def train_some(qtbot, panel, min_points=2) -> None:
    """Press Train for a long run and wait until it trains."""
    panel.steps.value = LONG_RUN
    panel.train_button.click()
    qtbot.waitUntil(lambda: len(panel.loss_plot.points("train")) >= min_points, timeout=WAIT_MS)


def stop_and_wait(qtbot, panel) -> None:
    panel.stop_button.click()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)


def train_again(qtbot, panel, steps=2) -> None:
    """The panel is usable: a short run from its current choices finishes."""
    panel.steps.value = steps
    panel.train_button.click()
    assert panel.running
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert panel.last_result is not None and panel.last_result.global_step == steps, panel.status.text()


# --- a. the source image layer deleted during a run ------------------------------------------


def test_source_image_deleted_during_a_run(train_setup, qtbot, notices, tmp_path):
    viewer, panel, painted = train_setup
    tiny(panel, tmp_path, preview_every=1)
    before, processes = copies(viewer), worker_pids()
    image = viewer.layers["synthetic EM"]
    kept = np.array(image.data, copy=True)
    train_some(qtbot, panel)
    viewer.layers.remove(image)
    points = len(panel.loss_plot.points("train"))
    qtbot.waitUntil(lambda: len(panel.loss_plot.points("train")) >= points + 2, timeout=WAIT_MS)  # trains on
    assert panel.running
    said = warnings_and_errors(notices)
    assert len(said) == 1 and "'synthetic EM' was removed" in said[0] and "Stop" in said[0], said
    stop_and_wait(qtbot, panel)
    assert panel.last_result.stopped and panel.last_result.last_checkpoint.is_file()
    assert len(warnings_and_errors(notices)) == 1, notices
    assert_unchanged(viewer, before)
    # usable: put an image back and train on it
    viewer.add_image(kept, name="synthetic EM", scale=painted.scale)
    panel.pair_rows[0].image_combo.setCurrentText("synthetic EM")
    train_again(qtbot, panel)
    assert len(warnings_and_errors(notices)) == 1, notices
    assert worker_pids() - processes <= {panel.worker.pid}


# --- b. the source layer's data replaced during a run -----------------------------------------


@pytest.mark.parametrize("layer, shape", [("image", "same"), ("image", "other"), ("labels", "other")])
def test_source_data_replaced_during_a_run(train_setup, qtbot, notices, layer, shape):
    viewer, panel, painted = train_setup
    before, processes = copies(viewer), worker_pids()
    target = viewer.layers["synthetic EM"] if layer == "image" else painted
    old = target.data
    new_shape = old.shape if shape == "same" else (old.shape[0] // 2, *old.shape[1:])
    replacement = np.zeros(new_shape, old.dtype)
    replacement[...] = old[: new_shape[0]] if layer == "image" else 0
    if layer == "labels":  # the top half of the sections, a little painted
        replacement[4, :, :128], replacement[4, :, 128:] = 1, 2
    train_some(qtbot, panel)
    target.data = replacement
    points = len(panel.loss_plot.points("train"))
    qtbot.waitUntil(lambda: len(panel.loss_plot.points("train")) >= points + 3, timeout=WAIT_MS)  # trains on
    assert panel.running, panel.status.text()
    said = warnings_and_errors(notices)
    assert len(said) == 1 and f"'{target.name}' changed" in said[0] and "Stop" in said[0], said
    stop_and_wait(qtbot, panel)
    assert panel.last_result.stopped and panel.last_result.last_checkpoint.is_file()
    assert len(warnings_and_errors(notices)) == 1, notices
    assert_unchanged(viewer, before, skip=(target.name,))
    assert target.data is replacement or np.array_equal(target.data, replacement)  # as the user set it
    # usable: the next Train trains on the new data (labels on part of the image: on that part), or
    # says in one line why it cannot (an image smaller than its labels)
    if layer == "labels" or shape == "same":
        train_again(qtbot, panel)
        assert len(warnings_and_errors(notices)) == 1, notices
    else:
        panel.train_button.click()
        qtbot.waitUntil(lambda: len(warnings_and_errors(notices)) == 2, timeout=10_000)
        assert "pick the Labels layer painted on this image" in warnings_and_errors(notices)[1]
        assert not panel.running and panel.train_button.isEnabled()
    assert worker_pids() - processes <= {panel.worker.pid}


# --- c. two runs at once ----------------------------------------------------------------------


def test_train_pressed_twice_quickly_starts_one_run(train_setup, qtbot, notices):
    from qtpy.QtCore import Qt

    viewer, panel, painted = train_setup
    panel.steps.value = LONG_RUN
    qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)
    job = panel.job
    qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)  # a double click's second press
    panel.train_button.click()
    assert panel.job is job and panel.running and not panel.train_button.isEnabled()
    qtbot.waitUntil(lambda: len(panel.loss_plot.points("train")) >= 1, timeout=WAIT_MS)
    assert panel.worker.in_flight.count("train") == 1
    stop_and_wait(qtbot, panel)
    assert not warnings_and_errors(notices), notices
    train_again(qtbot, panel)


def test_train_in_a_second_dock_of_the_same_viewer_waits_for_the_first(train_setup, qtbot, notices, tmp_path):
    viewer, panel, painted = train_setup
    before = copies(viewer)
    # napari opens each plugin dock once; the combined Connectomics dock holds a second Train panel
    again = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")[1]
    assert again is panel
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    second = dock.train_panel
    assert second is not panel and second.worker is panel.worker
    tiny(second, tmp_path)
    train_some(qtbot, panel, min_points=1)
    assert not second.train_button.isEnabled() and not second.continue_button.isEnabled()
    assert "another train panel" in second.status.text().lower()
    assert second.start_training() is False  # as a press that got through would
    said = warnings_and_errors(notices)
    assert len(said) == 1 and "still running" in said[0], said
    assert panel.running and panel.worker.in_flight.count("train") == 1
    stop_and_wait(qtbot, panel)
    assert second.train_button.isEnabled() and "another train panel" not in second.status.text().lower()
    train_again(qtbot, second)
    assert len(warnings_and_errors(notices)) == 1, notices
    assert_unchanged(viewer, before)


# --- d. the dock closed during a run ----------------------------------------------------------


@pytest.mark.parametrize("dock_name, mode", [("Train", "process"), ("Connectomics", "process"),
                                             ("Train", "thread")])
def test_closing_the_dock_during_a_run_stops_it_with_a_checkpoint(make_napari_viewer, qtbot, notices, tmp_path,
                                                                  dock_name, mode):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_em")
    session = session_for(viewer)
    session.config = load_config(overrides=TINY_MODEL)
    paint_sparse(viewer)
    before, processes = copies(viewer), worker_pids()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, dock_name)
    panel = widget if dock_name == "Train" else widget.train_panel
    if mode == "thread":
        panel.train_in_process = False
    tiny(panel, tmp_path)
    pid = panel.worker.pid
    assert pid in worker_pids()
    train_some(qtbot, panel)
    widget.parent().title.close_button.click()  # the dock's close button
    assert widget.parent() is None  # out of the window (and deleted next)
    qtbot.waitUntil(lambda: session.busy == "" and session.training == "", timeout=WAIT_MS)
    said = [message for _, message in notices]
    assert len(said) == 1 and "Train panel was closed" in said[0] and "stopped at step" in said[0], notices
    checkpoint = session.checkpoint
    assert checkpoint and os.path.isfile(checkpoint) and checkpoint in said[0]
    qtbot.waitUntil(lambda: pid not in worker_pids(), timeout=30_000)  # the worker ended with its panels
    assert not (worker_pids() - processes)
    assert_unchanged(viewer, before)
    # usable: a new Train panel (and worker) trains, and can fine-tune from the saved checkpoint
    _, fresh = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    assert fresh is not panel and str(fresh.checkpoint.value) == checkpoint
    tiny(fresh, tmp_path)
    fresh.start.value = "checkpoint"
    train_again(qtbot, fresh)
    assert len(warnings_and_errors(notices)) == 0, notices


def test_closing_a_segment_or_model_dock_lets_the_worker_go(make_napari_viewer, qtbot, notices):
    viewer = make_napari_viewer()
    _, model = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    process = segment.engine.process
    assert model.engine is segment.engine and process.poll() is None
    model.parent().title.close_button.click()
    qtbot.wait(200)
    assert process.poll() is None  # the Segment panel still holds it
    segment.parent().title.close_button.click()
    qtbot.waitUntil(lambda: process.poll() is not None, timeout=30_000)
    assert not warnings_and_errors(notices), notices
    viewer.add_points([[1, 2]])  # the viewer keeps working without the panels


# --- e. labels at another scale than their image ---------------------------------------------


def test_where_labels_lie_on_their_image():
    from types import SimpleNamespace

    from napari_connectomics.widgets.errors import UserError
    from napari_connectomics.widgets.pair_rows import labels_box
    from napari_connectomics.widgets.training_request import PairChoice, TrainChoices, check_choices

    def layer(shape, scale=(30.0, 8.0, 8.0), translate=(0.0, 0.0, 0.0)):
        return SimpleNamespace(data=np.zeros(shape, np.uint8), scale=scale, translate=translate, multiscale=False)

    image = layer((32, 256, 256))
    assert labels_box(image, layer((32, 256, 256))) is None  # the same voxels: a plain pair
    assert labels_box(image, layer((8, 64, 64), translate=(60.0, 80.0, 0.0))) == (
        slice(2, 10), slice(10, 74), slice(0, 64))
    assert labels_box(image, layer((8, 64, 64), translate=(60.0, 84.0, 0.0))) is None  # half a voxel off
    assert labels_box(image, layer((8, 64, 64), translate=(900.0, 0.0, 0.0))) is None  # sticks out
    assert labels_box(image, layer((8, 64, 64), scale=(60.0, 8.0, 8.0))) is None  # another scale

    labels = np.zeros((32, 256, 256), np.uint8)
    good = PairChoice("painted", image.data, labels, scale=image.scale, translate=image.translate,
                      label_scale=image.scale, label_translate=image.translate)
    check_choices(TrainChoices(pairs=[good]))
    for scale, translate in (((60.0, 8.0, 8.0), (0.0, 0.0, 0.0)), ((30.0, 8.0, 8.0), (0.0, 16.0, 0.0))):
        bad = PairChoice("painted", image.data, labels, scale=image.scale, translate=image.translate,
                         label_scale=scale, label_translate=translate)
        with pytest.raises(UserError, match="'painted' lies at scale .* pick the Labels layer painted on this image"):
            check_choices(TrainChoices(pairs=[bad]))




@pytest.mark.parametrize("case", ["scale", "scale and shape"])
def test_labels_at_another_scale_than_the_image_are_refused(train_setup, qtbot, notices, case):
    viewer, panel, painted = train_setup
    image = viewer.layers["synthetic EM"]
    if case == "scale":
        painted.scale = (2 * image.scale[0], *image.scale[1:])  # same shape, twice as thick sections
        name = painted.name
    else:  # half the sections, twice as thick: the same extent in the world
        coarse = viewer.add_labels(painted.data[::2].copy(), name="coarse",
                                   scale=(2 * image.scale[0], *image.scale[1:]))
        panel.pair_rows[0].labels_combo.setCurrentText(coarse.name)
        name = coarse.name
    before = copies(viewer)
    panel.train_button.click()
    said = warnings_and_errors(notices)
    assert len(said) == 1 and "\n" not in said[0], said
    assert f"'{name}'" in said[0] and "scale" in said[0] and "pick the Labels layer painted on this image" in said[0]
    assert not panel.running and panel.train_button.isEnabled() and session_for(viewer).busy == ""
    assert_unchanged(viewer, before)
    if case == "scale":  # the user puts the labels on the image, and trains
        painted.scale = image.scale
    else:  # ... or picks the labels painted on it
        panel.pair_rows[0].labels_combo.setCurrentText(painted.name)
    train_again(qtbot, panel)
    assert len(warnings_and_errors(notices)) == 1, notices


# --- f. a huge lazy image ---------------------------------------------------------------------


HUGE = (2000, 4096, 4096)  # 33.5 GB of uint8: never computed whole
RSS_JUMP_MB = 1024  # "no jump by GBs": the volume is 33.5 GB, one section of it 16 MB


def rss_mb(pid=None) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


class StallMeter:
    """The GUI thread's longest gap between two ticks of a 10 ms timer (a frozen viewer: seconds)."""

    def __init__(self):
        import time

        from qtpy.QtCore import Qt, QTimer

        self._clock = time.perf_counter
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.ticks.append(self._clock()))
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return float(np.diff(self.ticks).max() * 1000) if len(self.ticks) > 1 else 0.0


@pytest.fixture
def huge_viewer(make_napari_viewer):
    import dask.array as da

    viewer = make_napari_viewer()
    viewer.add_image(da.zeros(HUGE, chunks=(1, 512, 512), dtype=np.uint8), name="huge", contrast_limits=(0, 255))
    return viewer


def test_train_on_labels_over_part_of_a_huge_lazy_image(huge_viewer, qtbot, notices, tmp_path, record_property):
    """A Labels layer over part of the image (its offset a whole number of voxels) trains on that
    part: only the chunks under it are read; the preview lands on it."""
    viewer = huge_viewer
    session_for(viewer).config = load_config(overrides=TINY_MODEL)
    labels = np.zeros((16, 64, 64), np.uint8)
    for z in (4, 8, 12):
        labels[z, :32], labels[z, 32:] = 1, 2
    corner = np.array((1000, 2048, 1024))
    painted = viewer.add_labels(labels, name="crop", translate=tuple(corner))
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    row = panel.pair_rows[0]
    row.image_combo.setCurrentText("huge")
    row.labels_combo.setCurrentText("crop")
    tiny(panel, tmp_path, preview_every=1)
    viewer.dims.set_current_step(0, 1008)
    viewer.camera.center = (0, 2080, 1056)
    qtbot.waitUntil(lambda: panel.step_time is not None, timeout=WAIT_MS)  # the worker has imported torch
    start, engine_start = rss_mb(), rss_mb(panel.worker.pid)
    stall = StallMeter()
    train_some(qtbot, panel, min_points=1)
    qtbot.waitUntil(lambda: "huge preview" in viewer.layers, timeout=WAIT_MS)
    gap = stall.stop()
    preview = viewer.layers["huge preview"]
    origin = np.asarray(preview.translate)
    assert np.all(origin >= corner) and np.all(origin + preview.data.shape < corner + labels.shape + 1), origin
    grown, engine_grown = rss_mb() - start, rss_mb(panel.worker.pid) - engine_start
    stop_and_wait(qtbot, panel)
    assert not warnings_and_errors(notices), notices
    assert panel.last_result.stopped and panel.last_result.last_checkpoint.is_file()
    record_property("rss_growth_mb", round(grown, 1))
    record_property("gui_stall_max_ms", round(gap, 1))
    print(f"\ntraining on a crop of a {HUGE} dask image: napari RSS +{grown:.0f} MB, worker RSS "
          f"+{engine_grown:.0f} MB, longest GUI stall {gap:.0f} ms")
    assert grown < RSS_JUMP_MB and engine_grown < RSS_JUMP_MB
    np.testing.assert_array_equal(painted.data, labels)


def test_segment_a_viewed_region_of_a_huge_lazy_image(huge_viewer, qtbot, notices, tmp_path, record_property):
    viewer = huge_viewer
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    panel.image_combo.value = viewer.layers["huge"]
    panel.checkpoint_edit.value = str(checkpoint)
    qtbot.waitUntil(lambda: "monai_basic_unet3d" in panel.info_label.value, timeout=WAIT_MS)
    panel.predict_form.overlap.value = 0.0
    panel.predict_form.device.value = "cpu"
    panel.region_combo.value = "visible field of view"
    viewer.dims.set_current_step(0, 1000)
    viewer.camera.center = (0, 2048, 2048)
    viewer.camera.zoom = 8.0  # ~100 x 100 pixels of the image in view
    start, engine_start = rss_mb(), rss_mb(panel.engine.pid)
    stall = StallMeter()
    panel.segment_button.native.click()
    assert panel.running
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    gap = stall.stop()
    grown, engine_grown = rss_mb() - start, rss_mb(panel.engine.pid) - engine_start
    assert not warnings_and_errors(notices), notices
    labels = viewer.layers["huge segmentation"]
    region = tuple(labels.data.shape)
    record_property("rss_growth_mb", round(grown, 1))
    record_property("gui_stall_max_ms", round(gap, 1))
    print(f"\nsegmenting the viewed {region} of a {HUGE} dask image: napari RSS +{grown:.0f} MB, worker RSS "
          f"+{engine_grown:.0f} MB, longest GUI stall {gap:.0f} ms")
    assert np.prod(region) < 16 * 512 * 512, region  # the viewed region only
    assert 1000 - 16 <= labels.translate[0] <= 1000
    assert grown < RSS_JUMP_MB and engine_grown < RSS_JUMP_MB

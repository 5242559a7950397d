"""The interactive loop as a new user meets it: defaults that fit the device, Segment pressed while
training runs or stops, and the live preview on a time cadence (real viewers, real training)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from conftest import paint_sparse
import pytest

napari = pytest.importorskip("napari")

from napari_connectomics.config import load_config  # noqa: E402
from napari_connectomics.widgets import notify  # noqa: E402
from napari_connectomics.widgets.defaults import default_config, fit_patch, gpu_available  # noqa: E402
from napari_connectomics.widgets.live_feedback import binary_entropy, preview_due  # noqa: E402
from napari_connectomics.widgets.segment_request import REGION_VIEW, REGION_WHOLE  # noqa: E402
from napari_connectomics.widgets.session import session_for  # noqa: E402

PLUGIN = "napari-connectomics"
TINY_MODEL = ["model.architecture=monai_basic_unet3d", "model.filters=[4,4,8,16,32,4]", "training.val_patches=2"]
TINY_2D = ["model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[4,8,16,32]",
           "model.num_res_units=1", "training.val_patches=2"]  # the CPU preset's kind, smaller
WAIT_MS = 240_000


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(notify, "show_error", lambda message, *a, **k: shown.append(str(message)))
    return shown


# --- 1. defaults that fit the device ------------------------------------------------------------


def test_presets_and_patch_fitting():
    cpu, gpu = default_config(gpu=False), default_config(gpu=True)
    assert (cpu.model.architecture, cpu.model.spatial_dims, list(cpu.model.filters), cpu.model.num_res_units) == (
        "monai_unet", 2, [16, 32, 64, 128, 256], 2)
    assert list(cpu.model.loss_functions) == ["DiceLoss", "CrossEntropyLoss"]
    assert (cpu.optimizer.name, cpu.optimizer.lr, cpu.scheduler.name) == ("AdamW", 3e-3, "none")  # constant
    assert cpu.training.precision == "auto"  # bfloat16 where the CPU computes it (test_training_precision.py)
    for preset in (cpu, gpu):  # an undecided model can have the lowest loss: runs are judged by held-out IoU
        assert (preset.checkpoint.monitor, preset.checkpoint.mode) == ("val/iou", "max")
    # on a CPU the panel's runs offer the mean of the last 3 validations' weights (benchmarks.md)
    assert (cpu.training.snapshot_average, cpu.checkpoint.offer) == (3, "last")
    assert (gpu.training.snapshot_average, gpu.checkpoint.offer) == (0, "best")  # not measured on a GPU
    assert (gpu.model.architecture, gpu.model.mednext_size, gpu.model.kernel_size, gpu.model.deep_supervision,
            gpu.model.spatial_dims) == ("mednext", "S", 3, True, 3)
    assert load_config().model.architecture == "monai_basic_unet3d"  # the CLI's defaults stay
    assert (list(cpu.data.patch_size), cpu.data.batch_size) == ([128, 128], 8)  # half the pixels of 4 x 256^2: twice the steps
    assert fit_patch(cpu, (32, 128, 128)) == [128, 128]
    assert fit_patch(cpu, (8, 1000, 100)) == [128, 96]  # at most the preset's 128, a multiple of 16
    assert fit_patch(gpu, (20, 300, 100)) == [16, 128, 96]
    assert fit_patch(gpu, (300, 100)) is None  # a 3D network on a 2D image: left to the checks


def test_a_fresh_viewer_starts_from_the_device_preset(make_napari_viewer, qtbot):
    assert not gpu_available()  # this machine has no GPU (torch is a CPU build)
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).random((32, 96, 96), dtype=np.float32), name="em")
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    session = session_for(viewer)
    assert session.config.model.architecture == "monai_unet" and session.config.model.spatial_dims == 2
    assert dock.model_panel.architecture.value == "monai_unet"
    train = dock.train_panel
    assert train.patch_size.value == "96, 96"  # the 128x128 preset, shrunk to the image
    assert train.batch_size.value == session.config.data.batch_size and train.lr.value == pytest.approx(3e-3)
    viewer.add_image(np.zeros((16, 512, 512), np.float32), name="large")
    train.pair_rows[0].image_combo.setCurrentText("large")
    assert train.patch_size.value == "128, 128"  # the preset's: at most that
    dock.model_panel.option("spatial_dims").value = 3  # 3D in the Model tab: the patch follows
    assert list(session.config.data.patch_size) == [32, 128, 128]
    assert train.patch_size.value == "16, 128, 128"
    train.patch_size.value = "16, 64, 64"  # the user's own patch is kept
    train.pair_rows[0].image_combo.setCurrentText(image.name)
    assert train.patch_size.value == "16, 64, 64"


# --- 2 and 3. Segment during training; preview on a time cadence -------------------------------


@pytest.fixture
def workflow(make_napari_viewer, tmp_path, request):
    two_d = getattr(request, "param", "3d") == "2d"
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_em")
    image = viewer.layers["synthetic EM"]
    painted = paint_sparse(viewer, sections=(6, 12, 18))
    session_for(viewer).config = load_config(overrides=TINY_2D if two_d else TINY_MODEL)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    train = dock.train_panel
    train.pair_rows[0].image_combo.setCurrentText(image.name)
    train.pair_rows[0].labels_combo.setCurrentText(painted.name)
    train.patch_size.value = "64, 64" if two_d else "16, 32, 32"
    train.batch_size.value = 1
    train.steps.value = 2000
    train.preview_every.value = 0
    train.output_dir.value = str(tmp_path / "runs")
    dock.segment_panel.predict_form.overlap.value = 0.0
    yield viewer, dock
    if train.job is not None:
        train.stop_training()
        train.wait(120)


def test_stop_then_segment_waits_for_the_run_checkpoint(workflow, qtbot, errors):
    viewer, dock = workflow
    train, segment, session = dock.train_panel, dock.segment_panel, session_for(viewer)
    assert session.checkpoint is None and segment.segment_button.text == "Segment"
    train.train_button.click()
    assert segment.segment_button.text == "Segment (current weights)"
    qtbot.waitUntil(lambda: len(train.loss_plot.points("train")) >= 2, timeout=WAIT_MS)
    train.stop_button.click()
    assert session.training == "stopping" and segment.segment_button.text == "Segment (after the stop)"
    segment.segment_button.native.click()  # no checkpoint chosen yet: the press waits for the run's
    assert segment.waiting == "checkpoint" and "waiting for the run's checkpoint" in segment.status_label.value
    assert not segment.segment_button.enabled and segment.cancel_button.enabled
    qtbot.waitUntil(lambda: segment.labels_result is not None and not segment.running, timeout=WAIT_MS)
    assert not errors, errors
    assert segment.predict_runs == 1 and train.last_result.stopped
    assert session.checkpoint in (str(train.last_result.last_checkpoint), str(train.last_result.best_checkpoint))
    assert segment.prediction.info.path == session.checkpoint
    labels = viewer.layers["synthetic EM segmentation"]
    assert labels.data.shape == viewer.layers["synthetic EM"].data.shape
    assert segment.segment_button.text == "Segment" and segment.segment_button.enabled


def test_segment_during_training_uses_the_current_weights(workflow, qtbot, errors):
    viewer, dock = workflow
    train, segment, session = dock.train_panel, dock.segment_panel, session_for(viewer)
    assert segment.region_combo.value == REGION_WHOLE
    train.train_button.click()
    qtbot.waitUntil(lambda: len(train.loss_plot.points("train")) >= 2, timeout=WAIT_MS)
    segment.segment_button.native.click()
    assert segment.waiting == "snapshot" and session.snapshot_wanted
    qtbot.waitUntil(lambda: segment.labels_result is not None and not segment.running, timeout=WAIT_MS)
    assert not errors, errors
    assert train.running and not train._stopping  # the run goes on
    snapshot = session.snapshot
    assert snapshot is not None and Path(snapshot.path).is_file() and snapshot.step >= 2
    assert segment.prediction.info.path == snapshot.path and not session.snapshot_wanted
    assert segment.prediction.region.description == REGION_VIEW  # the view is enough while training
    assert "synthetic EM segmentation" in viewer.layers
    train.stop_button.click()
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert train.last_result.global_step > snapshot.step - 1


def test_cancel_stops_waiting(workflow, qtbot):
    viewer, dock = workflow
    train, segment, session = dock.train_panel, dock.segment_panel, session_for(viewer)
    train.train_button.click()
    segment.segment_button.native.click()
    assert segment.waiting == "snapshot"
    segment.cancel_button.native.click()
    assert segment.waiting is None and not session.snapshot_wanted and segment.segment_button.enabled
    train.stop_button.click()
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert segment.predict_runs == 0


def test_preview_cadence_is_timed():
    assert preview_due(now=0.1, last_end=None, last_cost=0.0, every=5, moved=False)  # a run's first step
    assert not preview_due(now=3.0, last_end=0.0, last_cost=0.1, every=5, moved=False)
    assert preview_due(now=5.0, last_end=0.0, last_cost=0.1, every=5, moved=False)
    assert preview_due(now=0.5, last_end=0.0, last_cost=0.1, every=5, moved=True)  # another section
    assert not preview_due(now=6.0, last_end=0.0, last_cost=4.0, every=5, moved=False)  # a slow preview
    np.testing.assert_allclose(binary_entropy(np.array([0.0, 0.5, 1.0])), [0, 1, 0], atol=1e-4)


@pytest.mark.parametrize("workflow", ["2d"], indirect=True)
def test_live_preview_refreshes_on_time_and_on_section_change(workflow, qtbot):
    viewer, dock = workflow
    train = dock.train_panel
    image = viewer.layers["synthetic EM"]
    train.preview_every.value = 1  # seconds
    viewer.dims.set_current_step(0, 4)
    train.train_button.click()
    # the two layers are added in two passes of the event loop (each costs napari ~0.1 s)
    qtbot.waitUntil(lambda: "synthetic EM uncertainty" in viewer.layers, timeout=WAIT_MS)
    preview, uncertainty = viewer.layers["synthetic EM preview"], viewer.layers["synthetic EM uncertainty"]
    # consistent within one pass of the GUI thread: the layers, the flag and the status line
    assert preview.data.dtype == np.float32 and 0 <= preview.data.min() and preview.data.max() <= 1
    np.testing.assert_allclose(uncertainty.data, binary_entropy(preview.data), atol=1e-5)
    assert train.preview_has_foreground == bool((preview.data > 0.5).any())
    assert ("no foreground predicted yet" in train.status.text()) == (not train.preview_has_foreground)
    assert tuple(preview.contrast_limits) == (0.0, 1.0)
    first_z = preview.translate[0]
    updates: list[float] = []
    preview.events.data.connect(lambda *_: updates.append(time.monotonic()))
    qtbot.waitUntil(lambda: len(updates) >= 2, timeout=WAIT_MS)  # refreshed on the clock
    assert first_z == pytest.approx(4 * image.scale[0])  # a 2D network previews the viewed section
    viewer.dims.set_current_step(0, 20)  # another section: the preview follows
    qtbot.waitUntil(lambda: preview.translate[0] != first_z, timeout=WAIT_MS)
    assert preview.translate[0] == pytest.approx(20 * image.scale[0]) and preview.data.shape[0] == 1
    train.stop_button.click()
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert "synthetic EM preview" not in [name for name, _ in dock.segment_panel._image_choices()]

"""The Segment panel in a real viewer, docked through the plugin manifest: whole volume, Shapes ROI
and field of view, re-running only the post-processing, dask layers through a Zarr store, cancel,
and every failure as a notification with the panel usable again and the user's layers unchanged.

The checkpoint is a tiny random-weight monai_basic_unet3d saved in the training layout
(``runs/<name>/<timestamp>/checkpoints/last.ckpt``); its window is 16x64x64 and the tests use
overlap 0, so a prediction is a handful of windows on the CPU.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_checkpoint

napari = pytest.importorskip("napari")

from napari_connectomics.widgets import notify, segment_request  # noqa: E402
from napari_connectomics.widgets.segment_request import (  # noqa: E402
    OUTPUT_KEY,
    REGION_SHAPES,
    REGION_VIEW,
    REGION_WHOLE,
    region_around,
)
from napari_connectomics.widgets.session import session_for  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-connectomics"
WAIT_MS = int(os.environ.get("SEG_WAIT_MS", 180_000))  # generous: the cores are shared


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("segment") / "runs"


@pytest.fixture(scope="module")
def checkpoint(runs) -> Path:
    """A tiny 3D network saved as training saves it (conftest.tiny_checkpoint)."""
    return tiny_checkpoint(runs / "seg" / "20240101-000000" / "checkpoints" / "last.ckpt")


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """The error notifications shown (napari's show_error, as called by notify_error)."""
    shown: list[str] = []
    monkeypatch.setattr(notify, "show_error", shown.append)
    return shown


def dock_panel(viewer):
    _dock, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    return panel


def configure(panel, checkpoint: Path, qtbot, image=None) -> None:
    """Checkpoint (waiting for its info, so regions know the window), CPU, overlap 0."""
    panel.checkpoint_edit.value = str(checkpoint)
    qtbot.waitUntil(lambda: "monai_basic_unet3d" in panel.info_label.value, timeout=WAIT_MS)
    panel.predict_form.overlap.value = 0.0
    panel.predict_form.device.value = "cpu"
    if image is not None:
        panel.image_combo.value = image


def run(panel, qtbot) -> None:
    panel.segment_button.native.click()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)


def outputs(viewer) -> list:
    return [layer for layer in viewer.layers if OUTPUT_KEY in layer.metadata]


def assert_failed_cleanly(viewer, panel, errors, source, before, match: str) -> None:
    assert errors, "no error notification was shown"
    assert match in errors[-1], errors
    assert len(errors[-1].splitlines()) == 1
    assert panel.segment_button.enabled and not panel.cancel_button.enabled and not panel.running
    assert not outputs(viewer)
    if source is not None:
        assert np.array_equal(np.asarray(source.data), before)
    assert session_for(viewer).busy == ""


# ---------------------------------------------------------------------------------------------


def test_importing_the_panel_does_not_import_torch():
    code = ("import sys\n"
            "import napari_connectomics.widgets.segment_panel\n"
            "import napari_connectomics.widgets.segment_request\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_segment_sample_then_threshold_then_shapes_roi(make_napari_viewer, qtbot, checkpoint, errors):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_em")
    image = viewer.layers["synthetic EM"]
    image.translate = (60.0, 16.0, -8.0)
    before = image.data.copy()
    panel = dock_panel(viewer)
    assert panel.image_combo.value is image
    configure(panel, checkpoint, qtbot)

    panel.segment_button.native.click()
    assert panel.running and not panel.segment_button.enabled and panel.cancel_button.enabled
    assert session_for(viewer).busy == "segment"
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert not errors
    assert panel.segment_button.enabled and not panel.cancel_button.enabled
    assert session_for(viewer).busy == ""

    probabilities = viewer.layers["synthetic EM probabilities"]
    segmentation = viewer.layers["synthetic EM segmentation"]
    assert isinstance(probabilities, napari.layers.Image) and isinstance(segmentation, napari.layers.Labels)
    assert probabilities.data.shape == segmentation.data.shape == image.data.shape
    assert probabilities.data.dtype == np.float32
    assert np.issubdtype(segmentation.data.dtype, np.integer)
    assert 0.0 <= probabilities.data.min() and probabilities.data.max() <= 1.0
    for layer in (probabilities, segmentation):
        assert np.allclose(layer.scale, image.scale) and np.allclose(layer.translate, image.translate)
    assert probabilities.colormap.name == "magma" and probabilities.blending == "additive"
    assert np.array_equal(image.data, before)
    assert panel.predict_runs == 1

    # threshold and post-processing: labels change, predict does not run again
    data = probabilities.data
    low = math.floor(float(data.min()) * 100) / 100  # the spin box keeps two decimals
    high = math.floor(float(data.max()) * 100) / 100
    assert high > low, "the test network's probabilities do not spread"
    panel.post_form.threshold.value = low
    qtbot.waitUntil(lambda: panel.labels_result.post.threshold == low, timeout=WAIT_MS)
    everything = np.asarray(segmentation.data).copy()
    panel.post_form.threshold.value = high
    qtbot.waitUntil(lambda: panel.labels_result.post.threshold == high, timeout=WAIT_MS)
    assert not np.array_equal(np.asarray(segmentation.data), everything)
    assert np.count_nonzero(segmentation.data) < np.count_nonzero(everything)
    panel.post_form.instances.value = "cc"
    qtbot.waitUntil(lambda: panel.labels_result.post.method == "cc", timeout=WAIT_MS)
    assert panel.predict_runs == 1 and panel.postprocess_runs == 3
    assert viewer.layers["synthetic EM segmentation"] is segmentation

    # a Shapes ROI reuses both layers, placed at the rectangle
    shapes = viewer.add_shapes([[[10, 100, 60], [10, 100, 120], [10, 150, 120], [10, 150, 60]]],
                               shape_type="rectangle", scale=image.scale, translate=image.translate,
                               name="roi")
    panel.region_combo.value = REGION_SHAPES
    panel.shapes_combo.value = shapes
    run(panel, qtbot)
    assert not errors
    region = panel.prediction.region
    # z: slice 10 +- the 16-section window; y, x: the rectangle grown to the 64-pixel window
    assert region.start == (3, 94, 59) and region.stop == (19, 158, 123)
    assert viewer.layers["synthetic EM probabilities"] is probabilities
    assert viewer.layers["synthetic EM segmentation"] is segmentation
    assert len(outputs(viewer)) == 2
    assert probabilities.data.shape == segmentation.data.shape == (16, 64, 64)
    expected = np.asarray(image.translate) + np.asarray(region.start) * np.asarray(image.scale)
    for layer in (probabilities, segmentation):
        assert np.allclose(layer.translate, expected) and np.allclose(layer.scale, image.scale)
    assert np.array_equal(image.data, before)
    assert np.array_equal(shapes.data[0][:, 1:], [[100, 60], [100, 120], [150, 120], [150, 60]])
    assert panel.predict_runs == 2


def test_visible_field_of_view_and_3d_fallback(make_napari_viewer, qtbot, checkpoint, monkeypatch):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_em")
    image = viewer.layers["synthetic EM"]
    panel = dock_panel(viewer)
    configure(panel, checkpoint, qtbot)
    panel.region_combo.value = REGION_VIEW
    viewer.dims.set_point(0, 20 * image.scale[0])
    height, width = viewer.canvas.size
    zoom = min(height, width) / (100 * image.scale[1])  # about 100 pixels visible
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (0, 128 * image.scale[1], 140 * image.scale[2])
    camera.zoom = zoom

    request = panel.make_request()
    half_y, half_x = height / 2 / zoom / image.scale[1], width / 2 / zoom / image.scale[2]
    corners = [[20, 128 + dy, 140 + dx] for dy in (-half_y, half_y) for dx in (-half_x, half_x)]
    assert request.region == region_around(corners, (32, 256, 256), (16, 64, 64), REGION_VIEW)
    assert request.region.start[0] == 13 and request.region.stop[0] == 29
    assert not request.region.covers((32, 256, 256))

    infos: list[str] = []
    monkeypatch.setattr("napari_connectomics.widgets.segment_panel.show_info", infos.append)
    viewer.dims.ndisplay = 3
    request = panel.make_request()
    assert request.region.covers((32, 256, 256)) and infos and "whole volume" in infos[0]


def test_dask_layer_goes_through_a_zarr_store(make_napari_viewer, qtbot, checkpoint, errors, tmp_path):
    import dask.array as da
    import zarr

    from napari_connectomics._sample_data import make_synthetic_sample

    volume = make_synthetic_sample(shape=(16, 64, 96), seed=3)[0][0]
    viewer = make_napari_viewer()
    in_memory = viewer.add_image(volume, name="em", scale=(30, 8, 8), translate=(5, 6, 7))
    lazy = viewer.add_image(da.from_array(volume, chunks=(8, 32, 32)), name="lazy em",
                            scale=(30, 8, 8), translate=(5, 6, 7))
    panel = dock_panel(viewer)
    configure(panel, checkpoint, qtbot, image=in_memory)
    run(panel, qtbot)
    reference = np.asarray(viewer.layers["em probabilities"].data)

    folder = tmp_path / "stores"
    panel.store_edit.value = str(folder)
    panel.image_combo.value = lazy
    run(panel, qtbot)
    assert not errors
    probabilities = viewer.layers["lazy em probabilities"]
    segmentation = viewer.layers["lazy em segmentation"]
    assert isinstance(probabilities.data, da.Array) and isinstance(segmentation.data, da.Array)
    assert probabilities.data.shape == segmentation.data.shape == (16, 64, 96)
    assert np.issubdtype(segmentation.data.dtype, np.integer)
    assert np.allclose(probabilities.translate, lazy.translate)
    assert np.allclose(np.asarray(probabilities.data), reference, atol=2e-3)  # float16 store
    stores = sorted(folder.glob("*.zarr"))
    assert len(stores) == 1 and panel.prediction.store == stores[0]

    panel.post_form.instances.value = "cc"
    qtbot.waitUntil(lambda: panel.labels_result.post.method == "cc", timeout=WAIT_MS)
    assert panel.labels_result.lazy and panel.predict_runs == 2
    assert isinstance(segmentation.data, da.Array) and segmentation.data.dtype == np.uint32
    labels = [key for key in zarr.open_group(str(stores[0]), mode="r") if key.startswith("labels-")]
    assert labels == [panel.labels_result.key]  # the superseded labels array is gone
    assert isinstance(lazy.data, da.Array) and np.array_equal(np.asarray(lazy.data), volume)


def test_multiscale_layer_predicts_its_full_resolution_lazily(make_napari_viewer, qtbot, checkpoint,
                                                              errors):
    import dask.array as da

    volume = np.random.default_rng(1).integers(0, 255, (16, 64, 96), dtype=np.uint8)
    viewer = make_napari_viewer()
    image = viewer.add_image([volume, volume[:, ::2, ::2]], multiscale=True, name="pyramid",
                             scale=(30, 8, 8), translate=(1, 2, 3))
    panel = dock_panel(viewer)
    configure(panel, checkpoint, qtbot, image=image)
    run(panel, qtbot)
    assert not errors
    probabilities = viewer.layers["pyramid probabilities"]
    segmentation = viewer.layers["pyramid segmentation"]
    assert isinstance(probabilities.data, da.Array) and not probabilities.multiscale
    assert probabilities.data.shape == segmentation.data.shape == volume.shape
    for layer in (probabilities, segmentation):
        assert np.allclose(layer.scale, image.scale) and np.allclose(layer.translate, image.translate)
    assert panel.prediction.temporary and panel.prediction.store.is_dir()
    assert np.array_equal(image.data[0], volume)


def test_cancel_keeps_nothing(make_napari_viewer, qtbot, checkpoint, errors, tmp_path, monkeypatch):
    """Cancel while predict() runs into a Zarr store: the run stops, no layer, no partial store."""
    import dask.array as da

    from napari_connectomics.inference import predict as engine

    real = engine.predict
    entered, stopped = threading.Event(), threading.Event()

    def predict_until_cancelled(*args, **kwargs):
        entered.set()
        assert kwargs["stop_event"].wait(60), "cancel never reached the worker"
        stopped.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "predict", predict_until_cancelled)
    viewer = make_napari_viewer()
    volume = np.random.default_rng(0).integers(0, 255, (16, 64, 64), dtype=np.uint8)
    viewer.add_image(da.from_array(volume, chunks=(8, 32, 32)), name="em")
    panel = dock_panel(viewer)
    panel.use_worker = False  # segment in this process, where the patched predict is
    configure(panel, checkpoint, qtbot)
    folder = tmp_path / "stores"
    panel.store_edit.value = str(folder)
    panel.segment_button.native.click()
    qtbot.waitUntil(entered.is_set, timeout=WAIT_MS)
    assert panel.cancel_button.enabled
    panel.cancel_button.native.click()
    assert not panel.cancel_button.enabled  # stopping
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert stopped.is_set() and not errors
    assert "cancelled" in panel.status_label.value
    assert not outputs(viewer) and panel.prediction is None
    assert folder.is_dir() and not any(folder.iterdir())  # predict removed its partial store
    assert panel.segment_button.enabled and not panel.cancel_button.enabled
    assert session_for(viewer).busy == ""


def test_recent_runs_follow_the_session(make_napari_viewer, qtbot, checkpoint, runs):
    from napari_connectomics.config import load_config

    viewer = make_napari_viewer()
    panel = dock_panel(viewer)
    session = session_for(viewer)
    session.config = load_config(overrides=[f"training.output_dir={runs}"])
    qtbot.waitUntil(lambda: str(checkpoint) in panel.recent_combo.choices, timeout=WAIT_MS)
    assert panel.recent_combo.value is None
    panel.recent_combo.value = str(checkpoint)
    assert Path(panel.checkpoint_edit.value) == checkpoint
    qtbot.waitUntil(lambda: "target binary" in panel.info_label.value, timeout=WAIT_MS)

    other = Path(panel.checkpoint_edit.value).parent / "other.ckpt"
    other.write_bytes(checkpoint.read_bytes())
    session.checkpoint = str(other)  # training wrote a new one: listed first, the choice stays
    qtbot.waitUntil(lambda: panel.recent_combo.choices[1] == str(other), timeout=WAIT_MS)
    assert Path(panel.checkpoint_edit.value) == checkpoint

    fresh = dock_panel(make_napari_viewer())
    session_for(fresh.viewer).checkpoint = str(other)  # an empty field follows the session
    qtbot.waitUntil(lambda: Path(str(fresh.checkpoint_edit.value)) == other, timeout=WAIT_MS)
    other.unlink()


# ---------------------------------------------------------------------------------------------
# Failures: a notification, the panel usable again, the user's layers unchanged
# ---------------------------------------------------------------------------------------------


def test_no_image_layer(make_napari_viewer, qtbot, checkpoint, errors):
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="labels only")
    panel = dock_panel(viewer)
    panel.checkpoint_edit.value = str(checkpoint)
    panel.segment_button.native.click()
    assert_failed_cleanly(viewer, panel, errors, None, None, "no Image layer")
    assert panel.predict_runs == 0


def test_missing_and_unreadable_checkpoints(make_napari_viewer, qtbot, errors, tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.arange(16 * 64 * 64, dtype=np.float32).reshape(16, 64, 64), name="em")
    before = image.data.copy()
    panel = dock_panel(viewer)

    panel.segment_button.native.click()
    assert_failed_cleanly(viewer, panel, errors, image, before, "no checkpoint chosen")
    panel.checkpoint_edit.value = str(tmp_path / "missing.ckpt")
    panel.segment_button.native.click()
    assert_failed_cleanly(viewer, panel, errors, image, before, "does not exist")
    assert panel.predict_runs == 0

    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("these are not weights")
    panel.checkpoint_edit.value = str(bogus)
    run(panel, qtbot)
    assert_failed_cleanly(viewer, panel, errors, image, before, "not a PyTorch checkpoint")
    qtbot.waitUntil(lambda: "not a PyTorch checkpoint" in panel.info_label.value, timeout=WAIT_MS)


def test_2d_image_for_a_3d_network(make_napari_viewer, qtbot, checkpoint, errors):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="section")
    before = image.data.copy()
    panel = dock_panel(viewer)
    configure(panel, checkpoint, qtbot)
    run(panel, qtbot)
    assert_failed_cleanly(viewer, panel, errors, image, before, "is a 2D image but last.ckpt holds a 3D network")


@pytest.mark.parametrize(("error", "match"), [
    (RuntimeError("boom in the worker"), "Segmentation failed: boom in the worker"),
    (MemoryError(), "out of memory"),
])
def test_crash_inside_the_worker(make_napari_viewer, qtbot, checkpoint, errors, monkeypatch, error, match):
    from napari_connectomics.inference import predict as engine

    def crash(*args, **kwargs):
        raise error

    monkeypatch.setattr(engine, "predict", crash)
    viewer = make_napari_viewer()
    image = viewer.add_image(np.ones((16, 64, 64), np.uint8), name="em")
    before = image.data.copy()
    panel = dock_panel(viewer)
    panel.use_worker = False  # segment in this process, where the patched predict is
    configure(panel, checkpoint, qtbot)
    run(panel, qtbot)
    assert_failed_cleanly(viewer, panel, errors, image, before, match)
    monkeypatch.undo()
    run(panel, qtbot)  # usable again: the next run works
    assert viewer.layers["em segmentation"].data.shape == (16, 64, 64)


def test_shapes_roi_without_a_rectangle(make_napari_viewer, qtbot, checkpoint, errors):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.ones((16, 64, 64), np.uint8), name="em")
    viewer.add_shapes([[[0, 5, 5], [0, 20, 5], [0, 20, 30]]], shape_type="polygon", name="poly")
    panel = dock_panel(viewer)
    configure(panel, checkpoint, qtbot)
    panel.region_combo.value = REGION_SHAPES
    assert panel.shapes_combo.visible or not panel.isVisible()
    panel.segment_button.native.click()
    assert_failed_cleanly(viewer, panel, errors, image, image.data.copy(), "'poly' has no rectangle")
    panel.region_combo.value = REGION_WHOLE

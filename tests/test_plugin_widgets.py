"""The plugin's widgets through napari itself: the combined dock widget, the Layers > Segment menu,
one session shared by separately docked panels, and the demo's `--gui` viewer."""

from __future__ import annotations

import sys
import subprocess

import numpy as np
from conftest import paint_sparse
import pytest

napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui

PLUGIN = "napari-connectomics"


def test_combined_widget_holds_the_three_panels_in_workflow_order(make_napari_viewer, qtbot):
    from napari_connectomics.widgets import ModelPanel, SegmentPanel, TrainPanel

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    tabs = [widget.tabs.tabText(i) for i in range(widget.tabs.count())]
    assert tabs == ["Model", "Train", "Segment"]
    # the dock shows at once; its panels are built in later passes of the event loop, on their own
    assert not widget.ready
    qtbot.waitUntil(lambda: widget.ready, timeout=30_000)
    assert isinstance(widget.tabs.widget(0), ModelPanel)
    assert isinstance(widget.tabs.widget(1), TrainPanel)
    assert isinstance(widget.tabs.widget(2), SegmentPanel)
    qtbot.waitUntil(lambda: widget.model_panel.parameter_count is not None, timeout=120_000)
    assert widget.model_panel.parameter_count > 0  # the model info ran in the background


def test_opening_the_dock_restores_the_gil_switch_interval(make_napari_viewer, qtbot):
    """The dock's background imports shorten the GIL switch interval for the GUI's sake, and only
    while they run."""
    from napari_connectomics.widgets.event_passes import GUI_SWITCH_INTERVAL

    before = sys.getswitchinterval()
    assert before > GUI_SWITCH_INTERVAL  # Python's 5 ms: the test would prove nothing otherwise
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    qtbot.waitUntil(lambda: widget.ready, timeout=30_000)
    assert sys.getswitchinterval() == before


def test_panels_docked_separately_share_one_session(make_napari_viewer, qtbot):
    from napari_connectomics.widgets.session import session_for

    viewer = make_napari_viewer()
    _, combined = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert combined.session is session_for(viewer) is segment.session
    combined.model_panel.architecture.value = "mednext"
    assert session_for(viewer).config.model.architecture == "mednext"
    # the parameter count runs in the background: let it finish before the viewer closes
    qtbot.waitUntil(lambda: combined.model_panel.parameter_count is not None and not combined.model_panel.counting,
                    timeout=120_000)
    other = make_napari_viewer()
    assert session_for(other) is not session_for(viewer)  # one session per viewer


def test_layers_segment_menu_opens_the_panels(make_napari_viewer):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    app = get_app_model()
    entries = app.menus.get_menu("napari/layers/segment")
    submenus = [getattr(item, "submenu", None) for item in entries]
    assert "connectomics_submenu" in submenus
    commands = [item.command.id for item in app.menus.get_menu("connectomics_submenu")]
    assert sorted(commands) == ["napari-connectomics.open_connectomics", "napari-connectomics.open_segment_panel",
                                "napari-connectomics.open_train_panel"]
    app.commands.execute_command("napari-connectomics.open_segment_panel").result()
    assert any("Segment" in name for name in viewer.window.dock_widgets)


def test_manifest_lists_every_panel_and_validates():
    done = subprocess.run([sys.executable, "-m", "npe2", "validate", "--imports", PLUGIN],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    from npe2 import PluginManifest

    names = [w.display_name for w in PluginManifest.from_distribution(PLUGIN).contributions.widgets]
    assert names == ["Connectomics", "Model", "Train", "Segment"]


def test_demo_gui_opens_the_result_with_the_dock_widget(make_napari_viewer, tmp_path):
    from napari_connectomics.demo import DemoResult, _demo_data
    from napari_connectomics.demo_gui import open_demo_viewer
    from napari_connectomics.inference.stores import open_output, write_labels
    from napari_connectomics.widgets.session import session_for

    _, _, test_image, _, _ = _demo_data(None, 0)
    prediction = tmp_path / "prediction.zarr"
    probabilities = np.random.default_rng(0).random((2, *test_image.shape)).astype(np.float32)
    with open_output(prediction, probabilities.shape, dtype="float16") as writer:
        writer.write(tuple(slice(0, n) for n in test_image.shape), probabilities)
        writer.commit()
    write_labels(prediction, (probabilities[1] > 0.5).astype(np.uint16), name="labels", overwrite=True)
    checkpoint = tmp_path / "runs" / "demo" / "t" / "checkpoints" / "last.ckpt"
    result = DemoResult(tmp_path, checkpoint, prediction, tmp_path / "overlay.png", {"iou": 0.5})

    viewer = open_demo_viewer(result, viewer=make_napari_viewer())
    names = [layer.name for layer in viewer.layers]
    assert names == ["EM (held out)", "ground truth", "EM (held out) probabilities", "EM (held out) segmentation"]
    assert viewer.layers["EM (held out) probabilities"].data.shape == test_image.shape
    assert any("Connectomics" in name for name in viewer.window.dock_widgets)
    assert session_for(viewer).checkpoint == str(checkpoint)


def test_paint_train_stop_continue_then_segment_with_that_checkpoint(make_napari_viewer, qtbot, tmp_path):
    """The whole workflow of the definition of done, in one viewer and one dock widget."""
    from pathlib import Path

    from napari_connectomics.config import load_config
    from napari_connectomics.widgets.session import session_for

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_em")
    image = viewer.layers["synthetic EM"]
    painted = paint_sparse(viewer, sections=(6, 12, 18))  # mitochondria 2, background 1
    sparse = np.asarray(painted.data)
    before = (np.asarray(image.data).copy(), sparse.copy())
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    session = session_for(viewer)
    session.config = load_config(overrides=["model.architecture=monai_basic_unet3d",
                                             "model.filters=[4,4,8,16,32,4]", "training.val_patches=2"])

    train = dock.train_panel
    train.pair_rows[0].image_combo.setCurrentText(image.name)
    train.pair_rows[0].labels_combo.setCurrentText(painted.name)
    train.patch_size.value = "16, 32, 32"
    train.batch_size.value = 1
    train.steps.value = 400
    train.preview_every.value = 0
    train.output_dir.value = str(tmp_path / "runs")
    train.train_button.click()
    assert not train.train_button.isEnabled() and train.stop_button.isEnabled()
    qtbot.waitUntil(lambda: len(train.loss_plot.points("train")) >= 2, timeout=240_000)
    train.stop_button.click()
    qtbot.waitUntil(lambda: not train.running, timeout=240_000)
    stopped_at = train.last_result.global_step
    assert train.last_result.stopped and stopped_at < 400
    checkpoint = Path(session.checkpoint)
    assert checkpoint.is_file() and checkpoint.suffix == ".ckpt"

    train.steps.value = 2
    train.continue_button.click()
    qtbot.waitUntil(lambda: not train.running, timeout=240_000)
    assert train.last_result.global_step == stopped_at + 2

    segment = dock.segment_panel
    assert Path(segment.checkpoint_edit.value) == Path(session.checkpoint)  # offered the newest run
    segment.predict_form.overlap.value = 0.0
    segment.segment_button.native.click()
    qtbot.waitUntil(lambda: not segment.running and segment.labels_result is not None, timeout=240_000)
    probabilities = viewer.layers["synthetic EM probabilities"]
    labels = viewer.layers["synthetic EM segmentation"]
    assert probabilities.data.shape == labels.data.shape == image.data.shape
    assert np.issubdtype(labels.data.dtype, np.integer)
    assert tuple(labels.scale) == tuple(probabilities.scale) == tuple(image.scale)
    assert np.array_equal(np.asarray(image.data), before[0]) and np.array_equal(painted.data, before[1])


def test_an_open_dock_keeps_napari_objects_out_of_full_collections_until_it_closes(make_napari_viewer, qtbot):
    """A full garbage collection of a napari process takes 100-200 ms (a visible freeze): while the
    dock is open, objects alive when it opened are frozen (widgets/gc_freeze.py), then let go."""
    import gc

    from napari_connectomics.widgets import gc_freeze

    holders = gc_freeze._holders
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    assert gc_freeze._holders == holders + 1
    assert gc.get_freeze_count() > 100_000  # napari's own objects
    qtbot.waitUntil(lambda: widget.ready, timeout=30_000)
    viewer.close()
    qtbot.waitUntil(lambda: gc_freeze._holders == holders, timeout=30_000)
    if holders == 0:
        assert gc.get_freeze_count() == 0


def test_the_freeze_can_be_turned_off(make_napari_viewer, monkeypatch):
    import gc

    from napari_connectomics.widgets import gc_freeze

    monkeypatch.setenv(gc_freeze.ENV_VAR, "0")
    if gc_freeze._holders == 0:
        gc.unfreeze()
    frozen = gc.get_freeze_count()
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    assert gc.get_freeze_count() == frozen

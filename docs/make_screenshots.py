"""Screenshots of the three panels in use on the synthetic sample, for the README.

Run under a (virtual) display; it trains a small 2D U-Net for a minute on a 2-core CPU:

    xvfb-run -a -s "-screen 0 1700x1200x24" python docs/make_screenshots.py

Writes docs/images/panel_model.png, panel_train.png and panel_segment.png: the whole napari window
with the "Connectomics" dock widget on the tab in use.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# A throw-away settings file, so the pictures don't depend on (or change) the user's napari settings.
os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="napari-settings-"), "settings.yaml"))

import napari  # noqa: E402
import numpy as np  # noqa: E402
from qtpy.QtWidgets import QApplication, QScrollArea  # noqa: E402
from scipy import ndimage  # noqa: E402

from napari_connectomics.widgets.defaults import default_config  # noqa: E402
from napari_connectomics.widgets.live_feedback import PREVIEW_SECONDS  # noqa: E402
from napari_connectomics.widgets.session import session_for  # noqa: E402

logger = logging.getLogger("make_screenshots")

PLUGIN = "napari-connectomics"
IMAGES = Path(__file__).parent / "images"
ANNOTATED_SECTIONS = (4, 10, 16, 22, 28)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Keep the GUI running until ``predicate()`` holds (the panels work in background threads)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the last repaints land
        QApplication.processEvents()
        time.sleep(0.01)


def scribbles(truth: np.ndarray) -> np.ndarray:
    """Sparse annotations as a user paints them: mitochondria (2) filled, background (1) in strokes."""
    labels = np.zeros(truth.shape, np.uint8)
    yy, xx = np.mgrid[: truth.shape[1], : truth.shape[2]]
    strokes = ((yy + xx) % 48 < 5) | ((yy - 2 * xx) % 96 < 5)
    for z in ANNOTATED_SECTIONS:
        mito = truth[z] > 0
        near_mito = ndimage.binary_dilation(mito, iterations=3)
        labels[z][strokes & ~near_mito] = 1
        labels[z][ndimage.binary_erosion(mito, iterations=1)] = 2
    return labels


def scroll_to_bottom(panel) -> None:
    """Show the end of a scrolling panel (the Train panel's buttons and loss plot)."""
    for area in panel.findChildren(QScrollArea):
        area.verticalScrollBar().setValue(area.verticalScrollBar().maximum())


def shoot(viewer: napari.Viewer, name: str) -> Path:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # clean pictures: no pop-up over the canvas
    wait_until(lambda: True, 1, "repaint")
    path = IMAGES / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    logger.info("wrote %s", path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="training steps for the Train screenshot")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    IMAGES.mkdir(exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="connectomics-screenshots-"))

    viewer = napari.Viewer(title="napari-connectomics")
    viewer.window.resize(1600, 1150)
    viewer.open_sample(PLUGIN, "synthetic_em")
    truth = viewer.layers["mitochondria (ground truth)"]
    truth.visible = False
    image = viewer.layers["synthetic EM"]
    painted = viewer.add_labels(scribbles(np.asarray(truth.data)), name="annotations", scale=image.scale)
    viewer.dims.set_current_step(0, ANNOTATED_SECTIONS[2])
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")

    # 1. Model: MedNeXt-B, kernel 5, deep supervision; the info box counts its parameters.
    dock.tabs.setCurrentWidget(dock.model_panel)
    model = dock.model_panel
    model.architecture.value = "mednext"
    model.option("mednext_size").value = "B"
    model.option("kernel_size").value = 5
    model.option("deep_supervision").value = True
    wait_until(lambda: model.parameter_count is not None and not model.counting, 300, "the parameter count")
    shoot(viewer, "panel_model.png")

    # 2. Train: the panel's defaults (the CPU preset) on the scribbles, with the live loss plot,
    # the preview and its uncertainty.
    session_for(viewer).config = default_config()
    dock.tabs.setCurrentWidget(dock.train_panel)
    train = dock.train_panel
    train.pair_rows[0].image_combo.setCurrentText(image.name)
    train.pair_rows[0].labels_combo.setCurrentText(painted.name)
    train.steps.value = args.steps
    train.preview_every.value = PREVIEW_SECONDS
    train.output_dir.value = str(runs)
    train.train_button.click()
    wait_until(lambda: not train.running, 1800, "training")
    for layer in viewer.layers:
        layer.visible = layer.name in (image.name, painted.name, f"{image.name} preview",
                                       f"{image.name} uncertainty")
    scroll_to_bottom(train)
    shoot(viewer, "panel_train.png")

    # 3. Segment: the run's checkpoint on the whole volume, then connected components.
    dock.tabs.setCurrentWidget(dock.segment_panel)
    segment = dock.segment_panel
    segment.post_form.instances.value = "cc"
    segment.post_form.min_size.value = 50
    segment.segment_button.native.click()
    wait_until(lambda: not segment.running and segment.labels_result is not None, 900, "segmentation")
    for layer in viewer.layers:
        layer.visible = layer.name in (image.name, f"{image.name} probabilities", f"{image.name} segmentation")
    shoot(viewer, "panel_segment.png")
    viewer.close()


if __name__ == "__main__":
    main()

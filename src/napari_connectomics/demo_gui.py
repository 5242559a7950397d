"""`napari-connectomics demo --gui`: the demo's result opened in napari with the plugin docked.

The viewer shows the held-out EM volume, its ground truth, the trained model's probabilities and
labels, and the "Connectomics" dock widget with the demo's checkpoint already selected, so a new
user lands on a working example of every panel.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari

    from .demo import DemoResult

__all__ = ["open_demo_viewer"]

logger = logging.getLogger(__name__)

PLUGIN = "napari-connectomics"


def open_demo_viewer(result: "DemoResult", data: str | None = None, seed: int = 0,
                     viewer: "napari.viewer.Viewer | None" = None) -> "napari.viewer.Viewer":
    """Add the demo's volumes and prediction to ``viewer`` (a new one if None) and dock the plugin."""
    import napari
    import zarr

    from .demo import _demo_data
    from .widgets.session import session_for

    _, _, test_image, test_labels, voxel_size = _demo_data(data, seed)
    scale = tuple(voxel_size[-test_image.ndim:])
    viewer = viewer or napari.Viewer(title="napari-connectomics demo")
    viewer.add_image(test_image, name="EM (held out)", scale=scale)
    viewer.add_labels(np.asarray(test_labels).astype(np.uint32), name="ground truth", scale=scale,
                      visible=False)
    group = zarr.open_group(str(result.prediction), mode="r")
    probabilities = np.asarray(group["probabilities"][-1], dtype=np.float32)
    if probabilities.max(initial=0) > 1.0:  # stored as uint8 0-255
        probabilities /= 255.0
    viewer.add_image(probabilities, name="EM (held out) probabilities", scale=scale, colormap="magma",
                     blending="additive", opacity=0.5, contrast_limits=(0.0, 1.0))
    viewer.add_labels(np.asarray(group["labels"][:]), name="EM (held out) segmentation", scale=scale)
    session = session_for(viewer)
    session.checkpoint = str(result.checkpoint)
    session.run_dir = str(result.checkpoint.parent.parent)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    viewer.layers.selection.active = viewer.layers["EM (held out)"]
    logger.info("demo opened in napari: IoU %.3f; the Segment tab has the demo's checkpoint",
                result.scores["iou"])
    return viewer

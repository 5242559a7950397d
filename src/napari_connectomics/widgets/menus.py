"""Commands behind the ``Layers > Segment`` menu entries: each opens (or shows) a panel."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-connectomics"


def open_train_panel(viewer: "napari.viewer.Viewer") -> None:
    """Layers > Segment > Train a network on these annotations."""
    viewer.window.add_plugin_dock_widget(PLUGIN, "Train")


def open_segment_panel(viewer: "napari.viewer.Viewer") -> None:
    """Layers > Segment > Segment with a trained network."""
    viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")


def open_connectomics(viewer: "napari.viewer.Viewer") -> None:
    """Layers > Segment > Connectomics (model, train, segment)."""
    viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")

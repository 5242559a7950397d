"""The combined "Connectomics" dock widget: the Model, Train and Segment panels as tabs.

The tabs share one :class:`~.session.SessionState` with any panel docked on its own in the same
viewer, so picking a model here and training in a separately docked Train panel is one workflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from .model_panel import ModelPanel
from .segment_panel import SegmentPanel
from .session import session_for
from .train_panel import TrainPanel

if TYPE_CHECKING:
    import napari

__all__ = ["ConnectomicsWidget"]


class ConnectomicsWidget(QWidget):
    """Model, Train and Segment in one dock widget (tabs, in the order of the workflow)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.model_panel = ModelPanel(napari_viewer)
        self.train_panel = TrainPanel(napari_viewer)
        self.segment_panel = SegmentPanel(napari_viewer)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.model_panel, "Model")
        self.tabs.addTab(self.train_panel, "Train")
        self.tabs.addTab(self.segment_panel, "Segment")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)

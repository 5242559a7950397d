"""The combined "Connectomics" dock widget: the Model, Train and Segment panels as tabs.

The tabs share one :class:`~.session.SessionState` with any panel docked on its own in the same
viewer, so picking a model here and training in a separately docked Train panel is one workflow.

Opening the dock must not freeze the viewer: importing the panels (omegaconf, magicgui forms) and
building them took ~0.45 s on napari's GUI thread. The dock appears at once with empty tabs; a
background thread imports the panel modules and creates the viewer's session from the device
preset (Python switches threads every few milliseconds, so the viewer keeps drawing), then each
panel is built in its own pass of the event loop, and puts off what it can (checking the config,
the step-time request) to a pass of its own. Asking for a panel (``dock.train_panel``) before then
builds it on the spot.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QTabWidget, QVBoxLayout, QWidget

from . import gc_freeze
from .event_passes import NEXT_PASS_MS, gui_switch_interval, in_a_later_pass

if TYPE_CHECKING:
    import napari

    from .model_panel import ModelPanel
    from .segment_panel import SegmentPanel
    from .train_panel import TrainPanel

__all__ = ["ConnectomicsWidget"]

logger = logging.getLogger(__name__)

# (tab title, module, class), in the order of the workflow and of building
PANELS = (("Model", ".model_panel", "ModelPanel"),
          ("Train", ".train_panel", "TrainPanel"),
          ("Segment", ".segment_panel", "SegmentPanel"))
POLL_MS = 10
REST_POLLS = NEXT_PASS_MS // POLL_MS + 1  # after a panel: its deferred work runs before the next panel


def _prepare(viewer: Any) -> None:
    """Import the panels and create the viewer's session (a copy of the device preset): the slow,
    GUI-free part of opening the dock."""
    for _, module, _ in PANELS:
        importlib.import_module(module, __package__)
    from .session import session_for

    session_for(viewer)


def _release_gc(*_: Any) -> None:
    gc_freeze.release()


class ConnectomicsWidget(QWidget):
    """Model, Train and Segment in one dock widget (tabs, in the order of the workflow)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        if gc_freeze.hold():
            self.destroyed.connect(_release_gc)
        self.viewer = napari_viewer
        self._panels: dict[str, QWidget] = {}
        self.tabs = QTabWidget()
        for title, _, _ in PANELS:  # a placeholder per tab until its panel is built
            self.tabs.addTab(QLabel("Loading…"), title)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self._prepared = threading.Event()
        self._resting = 0  # polls left before the next panel is built
        # started once napari has added and shown the dock: its imports would slow that down (GIL)
        in_a_later_pass(self._start_preparing)
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._build_next)
        self._timer.start()

    @property
    def session(self) -> Any:
        from .session import session_for

        return session_for(self.viewer)

    @property
    def model_panel(self) -> "ModelPanel":
        return self._panel("Model")  # type: ignore[return-value]

    @property
    def train_panel(self) -> "TrainPanel":
        return self._panel("Train")  # type: ignore[return-value]

    @property
    def segment_panel(self) -> "SegmentPanel":
        return self._panel("Segment")  # type: ignore[return-value]

    @property
    def ready(self) -> bool:
        """Whether every panel is built."""
        return len(self._panels) == len(PANELS)

    def _start_preparing(self) -> None:
        threading.Thread(target=self._prepare_in_background, name="connectomics-dock", daemon=True).start()

    def _prepare_in_background(self) -> None:
        try:
            with gui_switch_interval():
                _prepare(self.viewer)
        except Exception:  # building on the GUI thread raises it again, where it can be shown
            logger.debug("preparing the dock in the background failed", exc_info=True)
        finally:
            self._prepared.set()

    def _build_next(self) -> None:
        """One panel per pass of the event loop, once the imports are done, with a rest between two
        panels for the work a new panel puts off (event_passes.deferred_call)."""
        if not self._prepared.is_set():
            return
        if self._resting:
            self._resting -= 1
            return
        missing = [title for title, _, _ in PANELS if title not in self._panels]
        if missing:
            self._panel(missing[0])
            self._resting = REST_POLLS
        if self.ready:
            self._timer.stop()
            gc_freeze.refreeze()  # the panels are long-lived too

    def _panel(self, title: str) -> QWidget:
        panel = self._panels.get(title)
        if panel is not None:
            return panel
        built = [t for t, _, _ in PANELS if t in self._panels]
        for index, (earlier, module, name) in enumerate(PANELS):  # in order: the Model panel first
            if earlier in built:
                continue
            cls = getattr(importlib.import_module(module, __package__), name)
            made = cls(self.viewer)
            current, placeholder = self.tabs.currentIndex(), self.tabs.widget(index)
            self.tabs.removeTab(index)  # the tab holds the panel itself: tabs.setCurrentWidget(panel) works
            self.tabs.insertTab(index, made, earlier)
            self.tabs.setCurrentIndex(current)
            placeholder.deleteLater()
            self._panels[earlier] = made
            if earlier == title:
                return made
        raise KeyError(title)

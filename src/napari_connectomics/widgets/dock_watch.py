"""Notice when the user closes the napari dock that holds a panel.

napari's dock close button (``QtViewerDockWidget.destroyOnClose``, and ``remove_dock_widget``)
takes the dock's content out of the window (``setParent(None)``) and deletes the dock, but not the
content: a panel left like that would live on unseen, its run training, its engine worker held.
:func:`watch_dock` installs an event filter on the dock's content (the panel itself, or the
combined Connectomics widget around it): when the content loses its parent, ``on_closed`` runs,
then the content is deleted on the next pass of the event loop (unless it was docked again
meanwhile), so every panel in it ends through its ``destroyed`` handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QDockWidget, QWidget

__all__ = ["DockWatch", "watch_dock"]

logger = logging.getLogger(__name__)


class DockWatch(QObject):
    """The event filter of one panel (a child of the panel: it ends with it)."""

    def __init__(self, panel: QWidget, on_closed: Callable[[], None] | None = None) -> None:
        super().__init__(panel)
        self._panel = panel
        self._on_closed = on_closed
        self._content: QWidget | None = None  # the dock's widget: the panel or a widget around it
        self.closed = False
        panel.installEventFilter(self)  # a panel docked on its own: it is the content

    def attach(self) -> bool:
        """Find the dock around the panel and watch its content; True once watching."""
        if self._content is not None:
            return True
        try:  # the content: the panel's ancestor (or itself) whose parent is the dock
            content, parent = self._panel, self._panel.parentWidget()
            while parent is not None and not isinstance(parent, QDockWidget):
                content, parent = parent, parent.parentWidget()
            if parent is None:
                return False
        except RuntimeError:  # deleted meanwhile
            return False
        self._content = content
        if content is not self._panel:
            content.installEventFilter(self)
        return True

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange:
            try:
                parent = watched.parent()
            except RuntimeError:
                return False
            if parent is None and watched is self._content and not self.closed:
                self._closed(watched)
            elif parent is not None and watched is self._panel:
                self.attach()  # docked (or put into a widget that may be docked later)
        return False

    def _closed(self, content: QObject) -> None:
        self.closed = True
        if self._on_closed is not None:
            try:
                self._on_closed()
            except Exception:  # the panel must still go
                logger.exception("closing the panel failed")
        QTimer.singleShot(0, lambda: _delete_if_undocked(content))


def _delete_if_undocked(content: Any) -> None:
    try:
        if content.parent() is None:
            content.deleteLater()
    except RuntimeError:  # already deleted
        pass


def watch_dock(panel: QWidget, on_closed: Callable[[], None] | None = None) -> DockWatch:
    """Run ``on_closed`` when the user closes the dock holding ``panel``, then delete the dock's
    content. Call :meth:`DockWatch.attach` when the panel is surely docked (e.g. when a run
    starts): a panel inside a combined widget hears of no dock until then."""
    return DockWatch(panel, on_closed)

"""A napari progress bar opened a pass of the event loop after it is asked for.

Opening one costs napari ~80 ms on the GUI thread on a laptop CPU (the activity dock adds a bar,
calls ``processEvents``, and the status bar's new widget makes the canvas lay out and redraw). In
the pass of the Train or Segment press, on top of building the request, that made a stall of over
100 ms; a pass later it is a short pass of its own. Until it opens, :attr:`LaterProgress.bar` is
None: the panels already update a bar only when there is one, and sync it on the next event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject

from .event_passes import deferred_call

__all__ = ["LaterProgress"]

logger = logging.getLogger(__name__)


class LaterProgress:
    """Holds at most one progress bar of a panel (``parent``: the timer dies with it)."""

    def __init__(self, parent: QObject) -> None:
        self.bar: Any = None
        self._make: Callable[[], Any] | None = None
        self._timer = deferred_call(parent, self._open)

    def open(self, make: Callable[[], Any]) -> None:
        """Close the current bar (or cancel the one due) and open ``make()`` a pass later."""
        self.close()
        self._make = make
        self._timer.start()

    def close(self) -> None:
        """Close the bar, or cancel it if it has not opened yet."""
        self._timer.stop()
        self._make = None
        bar, self.bar = self.bar, None
        if bar is not None:
            try:
                bar.close()
            except Exception:  # the activity dock may be gone with the viewer
                logger.debug("closing the progress bar failed", exc_info=True)

    def _open(self) -> None:
        make, self._make = self._make, None
        if make is not None:
            self.bar = make()

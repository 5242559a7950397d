"""Spreading GUI work over passes of Qt's event loop, so that no one pass freezes the viewer.

napari takes ~0.1 s to build a layer on a laptop CPU; a panel that adds two layers (a preview and
its uncertainty, probabilities and a segmentation) adds the second in a later pass. "Later" must
be a real timer: Qt 6 turns ``QTimer.singleShot(0, ...)`` into a queued call, which runs in the
same pass as the work that queued it, before any timer or repaint gets a turn (measured: both
layers of the first Segment inside one 300 ms stall).
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QTimer

__all__ = ["NEXT_PASS_MS", "in_a_later_pass"]

NEXT_PASS_MS = 25  # longer than a 60 Hz frame: the canvas redraws and pending timers run first


def in_a_later_pass(callback: Callable[[], object]) -> None:
    """Call ``callback`` on the GUI thread after the events pending now (a repaint included)."""
    QTimer.singleShot(NEXT_PASS_MS, callback)

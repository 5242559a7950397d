"""Keeping napari's GUI thread responsive: work spread over passes of Qt's event loop, and the GIL
handed back to it quickly while another thread of napari's process computes.

napari takes ~0.1 s to build a layer on a laptop CPU; a panel that adds two layers (a preview and
its uncertainty, probabilities and a segmentation) adds the second in a later pass. "Later" must
be a real timer: Qt 6 turns ``QTimer.singleShot(0, ...)`` into a queued call, which runs in the
same pass as the work that queued it, before any timer or repaint gets a turn (measured: both
layers of the first Segment inside one 300 ms stall).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from qtpy.QtCore import QObject, QTimer

__all__ = ["GUI_SWITCH_INTERVAL", "NEXT_PASS_MS", "deferred_call", "gui_switch_interval", "in_a_later_pass"]

NEXT_PASS_MS = 25  # longer than a 60 Hz frame: the canvas redraws and pending timers run first
# While another thread computes (training in napari's process, the dock's imports), Python hands the
# GIL to a waiting thread after this long instead of 5 ms: the GUI thread re-acquires the GIL after
# every OpenGL/Qt call that released it, and each re-acquisition would otherwise cost up to 5 ms (a
# redraw makes dozens), which is what makes a viewer stutter.
GUI_SWITCH_INTERVAL = 0.001


def in_a_later_pass(callback: Callable[[], object]) -> None:
    """Call ``callback`` on the GUI thread after the events pending now (a repaint included)."""
    QTimer.singleShot(NEXT_PASS_MS, callback)


def deferred_call(parent: QObject, callback: Callable[[], object]) -> QTimer:
    """A single-shot timer (not started) that calls ``callback`` a pass later; it dies with
    ``parent``, and ``isActive()`` says whether the call is still due."""
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(NEXT_PASS_MS)
    timer.timeout.connect(callback)
    return timer


@contextmanager
def gui_switch_interval() -> Iterator[None]:
    """:data:`GUI_SWITCH_INTERVAL` inside the block (unless shorter already); Python's own after it,
    unless someone changed it meanwhile."""
    saved = sys.getswitchinterval()
    short = min(saved, GUI_SWITCH_INTERVAL)
    sys.setswitchinterval(short)
    try:
        yield
    finally:
        if sys.getswitchinterval() == short:
            sys.setswitchinterval(saved)

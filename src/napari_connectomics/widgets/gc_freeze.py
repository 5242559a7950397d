"""Keep Python's full garbage collections from freezing the viewer while the dock is open.

A full (generation 2) collection scans every object the collector tracks. In a napari process that
is millions of objects (napari, Qt wrappers, pydantic models) and takes 100-200 ms on a laptop CPU,
at moments Python picks: measured while the dock built its first panel (187 ms) and while layers were
added. Nearly all of those objects are napari's long-lived state. Moving the objects alive when
the dock opens into the permanent generation (:func:`gc.freeze`) makes later collections scan only
what was made since.

The trade-off: an object from before the dock opened that becomes *cyclic* garbage while it is open
(e.g. a Labels layer deleted then; napari frees Image layers by reference counting) is reclaimed
when the last dock closes (:func:`gc.unfreeze`), not at once. ``NAPARI_CONNECTOMICS_GC_FREEZE=0``
turns this off.
"""

from __future__ import annotations

import gc
import logging
import os
import threading

logger = logging.getLogger(__name__)

ENV_VAR = "NAPARI_CONNECTOMICS_GC_FREEZE"

_holders = 0
_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def hold() -> bool:
    """Freeze the objects alive now (first holder) and count the holder; False when turned off."""
    global _holders
    if not enabled():
        return False
    with _lock:
        _holders += 1
        gc.freeze()
        if logger.isEnabledFor(logging.DEBUG):  # counting walks every frozen object: ~25 ms
            logger.debug("gc: %d objects frozen (%d holders)", gc.get_freeze_count(), _holders)
    return True


def release() -> None:
    """Count a holder gone; the last one lets the collector see the frozen objects again."""
    global _holders
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0:
            gc.unfreeze()
            logger.debug("gc: unfrozen")


def refreeze() -> None:
    """Freeze what was made since (e.g. the dock's panels, once built) while someone holds."""
    with _lock:
        if _holders:
            gc.freeze()

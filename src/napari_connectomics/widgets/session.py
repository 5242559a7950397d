"""State shared by the three panels of one viewer, in an evented dataclass (no Qt needed).

The Model, Train and Segment panels can be docked separately or together in the combined
"Connectomics" widget; either way they edit one config and see one latest checkpoint, so the
model picked in the Model panel is the one the Train panel trains and the checkpoint a run writes
is the one the Segment panel offers first. Panels connect to ``session.events.<field>``.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from psygnal import evented

from .defaults import default_config

__all__ = ["SessionState", "WeightsSnapshot", "session_for"]

TRAINING_RUNNING = "running"
TRAINING_STOPPING = "stopping"


def _default_config() -> Any:
    """The preset for this device (a 2D U-Net on a CPU, MedNeXt-S 3D on a GPU): see :mod:`.defaults`."""
    return default_config()


@dataclass(frozen=True)
class WeightsSnapshot:
    """Weights a running training saved between two steps, when the Segment panel asked for them.

    ``info`` is the checkpoint's :class:`~.segment_request.CheckpointInfo` (read from the run's
    config in the training thread), so the Segment panel needs no torch to size its region.
    """

    path: str
    step: int
    info: Any = None


@evented
@dataclass
class SessionState:
    """What the panels of one viewer share.

    config: the whole run config (model section edited by the Model panel, training fields by the
        Train panel); replace it (``state.config = new``) rather than mutating it, so listeners hear.
    checkpoint: the checkpoint most recently written by training or chosen by the user.
    run_dir: the folder of the most recent training run.
    busy: the name of the background job holding the CPU/GPU ("train", "segment"), or "" when idle.
    training: the Train panel's run: "" (none), "running", or "stopping" (Stop pressed, the step in
        flight finishing); the Segment panel waits for a stopping run's checkpoint.
    snapshot_wanted: set by the Segment panel to get the running training's current weights;
        the Train panel has them saved after the step in flight and clears it.
    snapshot: the latest :class:`WeightsSnapshot` of the running training.
    """

    config: Any = field(default_factory=_default_config)
    checkpoint: str | None = None
    run_dir: str | None = None
    busy: str = ""
    training: str = ""
    snapshot_wanted: bool = False
    snapshot: WeightsSnapshot | None = None


_SESSIONS: "weakref.WeakKeyDictionary[Any, SessionState]" = weakref.WeakKeyDictionary()
_NO_VIEWER = object()
_UNBOUND: dict[int, SessionState] = {}
_CREATING = threading.Lock()  # the dock creates a viewer's session in a background thread


def session_for(viewer: Any | None) -> SessionState:
    """The session of ``viewer`` (created on first use); one per viewer, forgotten with it."""
    store: Any = _SESSIONS
    key: Any = viewer
    if viewer is None:
        store, key = _UNBOUND, id(_NO_VIEWER)
    else:
        try:
            _SESSIONS.get(viewer)
        except TypeError:  # an object that can't be weakly referenced: key by identity
            store, key = _UNBOUND, id(viewer)
    session = store.get(key)
    if session is None:  # look before creating: a new session loads the device preset
        with _CREATING:
            session = store.get(key)
            if session is None:
                session = store[key] = SessionState()
    return session

"""The napari panels: Model (architecture picker), Train (from annotations), Segment (checkpoint ->
layers), and the combined "Connectomics" dock widget holding all three.

Each panel module imports Qt and napari but never torch: the engine runs in the viewer's worker
process (:mod:`.worker_client`), so opening a panel is cheap and napari stays light. State the panels share lives in
:mod:`.session` (an evented dataclass per viewer); long work runs through :mod:`.background`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConnectomicsWidget", "ModelPanel", "SegmentPanel", "TrainPanel"]

_WHERE = {
    "ConnectomicsWidget": ".dock",
    "ModelPanel": ".model_panel",
    "TrainPanel": ".train_panel",
    "SegmentPanel": ".segment_panel",
}


def __getattr__(name: str) -> Any:  # import a panel only when it is asked for
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The one progress/cancel interface of long work (training, prediction), for the CLI and the GUI.

Long work calls each progress callback with a :class:`Progress` and checks a ``threading.Event``
to stop. The CLI renders it as a progress bar; the napari widgets relay it to the GUI thread and
draw a progress bar and a live loss plot. Torch-free, so widgets can import it at no cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Progress", "ProgressCallback", "emit"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """How far the work is: ``done`` of ``total`` units (steps, blocks), plus optional metrics."""

    done: int
    total: int | None
    message: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    stage: str = "train"  # 'train', 'validate', 'predict', 'done', 'stopped'


ProgressCallback = Callable[[Progress], None]


def emit(callbacks: Iterable[ProgressCallback], progress: Progress) -> None:
    """Call every callback; a failing callback is logged, never allowed to kill the work."""
    for callback in callbacks:
        try:
            callback(progress)
        except Exception:  # a broken GUI hook must not end a long training run
            logger.exception("progress callback %r failed", callback)

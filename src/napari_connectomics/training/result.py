"""What a training run returns, as plain data: no Lightning or torch here, so the napari side can
receive a run's result from the training worker without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """Where a run wrote its files and how it ended."""

    run_dir: Path
    checkpoint_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_score: float | None
    monitor: str
    global_step: int
    stopped: bool
    metrics: dict[str, float] = field(default_factory=dict)
    global_rank: int = 0
    validation: str = ""  # what validated, one line (e.g. the pieces of the annotation held out)
    held_out: bool = True  # False: validation scored the training data, logged as train_eval/...
    min_score: float | None = None  # checkpoint.min_score: a best below it is not offered
    offer: str = "best"  # checkpoint.offer: "last" offers the last checkpoint whatever the scores
    averaged: int = 0  # snapshots averaged (0: off): checkpoints hold the mean of the last N validations' weights

    @property
    def best_reached_min(self) -> bool:
        """Whether the best checkpoint counts: it exists and scored at least ``min_score``."""
        if self.best_checkpoint is None or self.best_score is None:
            return False
        return self.min_score is None or self.best_score >= self.min_score

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint to segment or fine-tune with: the best by ``monitor``, else the last."""
        if self.offer == "last":
            return self.last_checkpoint
        return self.best_checkpoint if self.best_reached_min else self.last_checkpoint

    def checkpoint_note(self) -> str:
        """Why :attr:`checkpoint` was chosen, for a status line (e.g. ``best val/iou 0.874``)."""
        if self.offer == "last":
            return f"the last, the mean of the weights at the last {self.averaged} validations" if (
                self.averaged) else "the last"
        if self.best_reached_min:
            return f"best {self.monitor} {self.best_score:.3f}"
        if self.best_score is not None and self.min_score is not None:
            return f"the last: {self.monitor} never reached {self.min_score:g}, best {self.best_score:.3f}"
        return "the last"

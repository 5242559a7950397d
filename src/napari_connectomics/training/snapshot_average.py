"""Validate and checkpoint the mean of the weights at the last few validations.

Trained on a few painted sections with a constant learning rate, a network's segmentation swings
from one validation to the next (on the interactive loop's crop the foreground IoU of one run went
0.76, 0.44, 0.74 at steps 400, 450 and 500). The mean of the weights at the last ``count``
validations holds the level and drops the dips (docs/benchmarks.md, "The mean of the last
snapshots"). Like Lightning's ``WeightAveraging`` (whose ``AveragedModel`` keeps a running mean
of all updates, not of a window), the averaged weights are what validation scores and what the
checkpoints' ``state_dict`` holds, so Segment, fine-tuning and ``predict`` use them; the live
weights go on training, and a checkpoint keeps them under ``current_model_state`` for resuming.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import lightning as L
import torch

__all__ = ["LIVE_STATE_KEY", "MIN_SNAPSHOTS", "SnapshotAverage", "mean_state", "snapshots_averaged"]

LIVE_STATE_KEY = "current_model_state"  # the key Lightning's WeightAveraging uses for the same
MIN_SNAPSHOTS = 2  # fewer is no average: training.snapshot_average 0 or 1 means off


def snapshots_averaged(requested: int) -> int:
    """How many snapshots a run averages for ``training.snapshot_average``: 0 when off."""
    return requested if requested >= MIN_SNAPSHOTS else 0


class SnapshotAverage(L.Callback):
    """At each validation, the mean of the weights at this and the ``count - 1`` previous ones.

    Floating-point parameters and buffers (batch-norm statistics included) are averaged; integer
    buffers (batch-norm's step counters) come from the newest snapshot. After a resume the window
    starts again from the resumed weights.
    """

    def __init__(self, count: int) -> None:
        if count < MIN_SNAPSHOTS:
            raise ValueError(f"SnapshotAverage needs at least {MIN_SNAPSHOTS} snapshots to average, got {count}")
        self.count = count
        self._snapshots: deque[dict[str, torch.Tensor]] = deque(maxlen=count)
        self._live: dict[str, torch.Tensor] | None = None
        self._mean: dict[str, torch.Tensor] | None = None

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        live = {key: value.detach().clone() for key, value in pl_module.state_dict().items()}
        self._snapshots.append(live)
        self._mean = self._average()
        self._live = live
        pl_module.load_state_dict(self._mean)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._live is not None:
            pl_module.load_state_dict(self._live)
            self._live = None

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._mean is None:  # no validation yet: the live weights are all there is
            return
        checkpoint[LIVE_STATE_KEY] = checkpoint["state_dict"]
        checkpoint["state_dict"] = self._mean

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        live = checkpoint.get(LIVE_STATE_KEY)
        if live is not None:  # resume training from the live weights, not their mean
            checkpoint["state_dict"] = live
            pl_module.load_state_dict(live)

    def _average(self) -> dict[str, torch.Tensor]:
        return mean_state(list(self._snapshots))


def mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of state dicts: floating-point tensors averaged, the others from the newest (last)."""
    newest = states[-1]
    return {key: (torch.stack([s[key] for s in states]).mean(0) if value.is_floating_point() else value)
            for key, value in newest.items()}

"""Lightning callbacks that connect a run to the progress/cancel interface and the data pipeline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from ..progress import Progress, ProgressCallback, emit
from .module import TRAIN_EVAL

__all__ = ["LabelUpdates", "ProgressRelay", "TimedLastCheckpoint"]


def _floats(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix):
            try:
                out[key] = float(value)
            except (TypeError, ValueError):
                continue
    return out


class ProgressRelay(L.Callback):
    """Reports every optimizer step and validation to the progress callbacks, and honours a stop request.

    A set ``stop_event`` makes the trainer stop after the step in flight (the caller then saves a
    checkpoint), so Stop in the GUI takes effect within one step.
    """

    def __init__(self, callbacks: Sequence[ProgressCallback] = (), stop_event: threading.Event | None = None) -> None:
        self.callbacks = list(callbacks)
        self.stop_event = stop_event
        self.stopped = False

    def _total(self, trainer: L.Trainer) -> int | None:
        total = trainer.estimated_stepping_batches
        return int(total) if total != float("inf") else None

    def _check_stop(self, trainer: L.Trainer) -> None:
        if self.stop_event is not None and self.stop_event.is_set() and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        emit(self.callbacks, Progress(trainer.global_step, self._total(trainer), "training started"))
        self._check_stop(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        metrics = _floats(trainer.callback_metrics, "train/")
        emit(self.callbacks, Progress(trainer.global_step, self._total(trainer), f"step {trainer.global_step}", metrics))
        self._check_stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        scores = trainer.callback_metrics  # train_eval/: validation on the training data (nothing held out)
        metrics = _floats(scores, "val/") | _floats(scores, f"{TRAIN_EVAL}/")
        emit(self.callbacks, Progress(trainer.global_step, self._total(trainer), "validation", metrics, stage="validate"))


class LabelUpdates(L.Callback):
    """Labels repainted while a run trains, swapped into its training data between two steps.

    Another thread (the napari worker's message loop) calls :meth:`submit`; the training thread
    applies the latest labels of each pair before its next step, through
    :meth:`~.datamodule.VolumeDataModule.replace_labels`, so the weights and the optimizer carry on:
    paint a correction, watch the preview change. ``on_applied(annotated)`` hears the annotated
    voxel count of every pair after each swap.
    """

    def __init__(self, on_applied: Callable[[dict[int, int]], None] | None = None) -> None:
        self.on_applied = on_applied
        self._pending: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.annotated: dict[int, int] = {}
        self.applied = 0

    def submit(self, index: int, labels: Any) -> None:
        """Queue ``labels`` for training pair ``index``; a newer submit of the same pair replaces it."""
        with self._lock:
            self._pending[int(index)] = labels

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        for index, labels in pending.items():
            self.annotated[index] = trainer.datamodule.replace_labels(index, labels)
            self.applied += 1
        if self.on_applied is not None:
            self.on_applied(dict(self.annotated))


class TimedLastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``minutes`` of training, between epochs too, so a killed run loses at most that.

    A second ModelCheckpoint beside the epoch one (one cannot combine ``train_time_interval`` with
    ``every_n_epochs``). It saves through the trainer, hence atomically (AtomicCheckpointIO), with the
    optimizer, schedule and loop state that ``train(resume=...)`` continues from; DDP ranks follow
    rank 0's clock.
    """

    def __init__(self, dirpath: str | Path, minutes: float) -> None:
        super().__init__(dirpath=dirpath, monitor=None, save_top_k=0, save_last=True,
                         train_time_interval=timedelta(minutes=minutes), enable_version_counter=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: ``train()`` saves the final state itself (ModelCheckpoint would save it once more)."""

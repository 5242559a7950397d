"""What a running training shows the user, without Qt: a timed preview and weights on request.

Both are Lightning callbacks that run in the training thread between two steps, so they see a
consistent model and never slow a step down; torch and Lightning are imported when they are made.

- The preview predicts the section being viewed after a run's first step (so the user sees at once
  where it will show, and the untrained start it improves from), then every :data:`PREVIEW_SECONDS`
  (and at once when the user moves to another section), not every N steps: a step takes 0.05 s on a GPU and 20 s
  for a 3D network on a CPU, and the user wants to see the network learn every few seconds
  either way. It sends the foreground probability (0-1) and its binary entropy (0-1, high where
  the network is unsure: where painting helps next).
- A weights snapshot is written when the Segment panel asks (a ``threading.Event``), so Segment
  works during training with the current weights and without stopping the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PREVIEW_MARK",
    "PREVIEW_SECONDS",
    "PreviewUpdate",
    "SNAPSHOT_FILE",
    "WeightsSaved",
    "binary_entropy",
    "make_preview_callback",
    "make_snapshot_callback",
    "preview_due",
]

logger = logging.getLogger(__name__)

PREVIEW_SECONDS = 5  # the live preview refreshes this often (and when the viewed section changes)
PREVIEW_MAX_SHARE = 0.25  # ... but never takes more than this share of the training thread's time
FOREGROUND_THRESHOLD = 0.5  # a preview voxel above this counts as predicted foreground
SNAPSHOT_FILE = "snapshot.ckpt"  # weights saved on request, in the run's checkpoints folder
PREVIEW_MARK = "napari_connectomics_preview"  # metadata key of the preview layers (no panel picks them)


@dataclass(frozen=True)
class PreviewUpdate:
    """The preview of the region starting at ``offset`` (z, y, x): foreground probability and its
    entropy, both float32 in [0, 1]; ``foreground_voxels`` counts voxels above the threshold."""

    offset: tuple[int, int, int]
    data: np.ndarray
    uncertainty: np.ndarray
    step: int
    foreground_voxels: int = 0


@dataclass(frozen=True)
class WeightsSaved:
    """The training thread wrote the current weights to ``path`` (a loadable checkpoint)."""

    path: Path
    step: int
    info: Any = None  # segment_request.CheckpointInfo of the run's config


def binary_entropy(probability: np.ndarray) -> np.ndarray:
    """Entropy in bits of a foreground probability: 0 where sure, 1 at p = 0.5 (float32)."""
    p = np.clip(np.asarray(probability, dtype=np.float32), 1e-6, 1 - 1e-6)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).astype(np.float32)


def preview_due(now: float, last_end: float | None, last_cost: float, every: float, moved: bool) -> bool:
    """A preview is due after a run's first step (``last_end`` None), when the viewed section
    changed, or ``every`` seconds after the last one ended, stretched so previews take at most
    :data:`PREVIEW_MAX_SHARE` of the time."""
    if moved or last_end is None:
        return True
    return now - last_end >= max(every, last_cost * (1 - PREVIEW_MAX_SHARE) / PREVIEW_MAX_SHARE)


def make_preview_callback(image: Any, cfg: Any, every_seconds: float, target: Any,
                          report: Callable[[Any], None]) -> Any:
    """A Lightning callback that sends a :class:`PreviewUpdate` of the sections around the viewed
    one (``target``: a :class:`~.training_request.PreviewTarget` the GUI thread keeps current)
    on the time cadence of :func:`preview_due`.

    The model runs in eval mode without gradients and goes back to train mode (the predictor's
    context restores the mode and device). A failing preview is logged and switched off; it never
    stops the training.
    """
    import lightning as L

    from ..inference.predict import PredictOptions, predict
    from .training_request import Notice, preview_region

    spatial_dims = int(cfg.model.spatial_dims)
    window_z = 1 if spatial_dims == 2 else int(cfg.data.patch_size[0])

    class LivePreview(L.Callback):
        def __init__(self) -> None:
            self.failed = False
            self.last_end: float | None = None
            self.last_cost = 0.0
            self.last_region: tuple[slice, ...] | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.last_end = None  # the first preview comes after the run's first step

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.failed:
                return
            region = preview_region(np.shape(image), target, window_z)
            if not preview_due(time.monotonic(), self.last_end, self.last_cost, every_seconds,
                               self._moved(region)):
                return
            started = time.monotonic()
            try:
                report(self._predict(pl_module, region, int(trainer.global_step)))
            except Exception as err:  # a preview must never end a training run
                self.failed = True
                logger.exception("live preview failed; switched off for this run")
                report(Notice(f"live preview switched off: {type(err).__name__}: {err}".splitlines()[0]))
            self.last_end = time.monotonic()
            self.last_cost = self.last_end - started
            self.last_region = region

        def _moved(self, region: tuple[slice, ...]) -> bool:
            """Another section (z), or the view centre moved by over a quarter of the predicted box."""
            last = self.last_region
            if last is None:
                return False
            if last[0] != region[0]:
                return True
            return any(abs(a.start - b.start) * 4 > max(1, a.stop - a.start) for a, b in zip(last[1:], region[1:]))

        def _predict(self, pl_module: Any, region: tuple[slice, ...], step: int) -> PreviewUpdate:
            device = "cpu" if pl_module.device.type == "cpu" else "auto"
            options = PredictOptions(roi=region, device=device, batch_size=1, output_dtype="float32")
            result = predict(pl_module.model, image, options, cfg=cfg)
            probabilities = np.asarray(result.probabilities, dtype=np.float32)
            foreground = probabilities[0] if probabilities.shape[0] == 1 else 1.0 - probabilities[0]
            foreground = np.clip(foreground, 0.0, 1.0).astype(np.float32)
            offset = tuple(int(s.start) for s in region)
            return PreviewUpdate(offset=offset, data=foreground, uncertainty=binary_entropy(foreground),  # type: ignore[arg-type]
                                 step=step, foreground_voxels=int(np.count_nonzero(foreground > FOREGROUND_THRESHOLD)))

    return LivePreview()


def make_snapshot_callback(cfg: Any, folder: Path, request: threading.Event, report: Callable[[Any], None]) -> Any:
    """A Lightning callback: when ``request`` is set, write the current weights (with the run's
    config, so the file loads like any checkpoint) to ``folder/SNAPSHOT_FILE`` after the step in
    flight, clear ``request`` and send :class:`WeightsSaved`. Atomic: a reader of the previous
    snapshot is never handed a half-written file."""
    import lightning as L

    from ..models.checkpoint import CONFIG_KEY, atomic_torch_save, config_container
    from .segment_request import checkpoint_info

    path = Path(folder) / SNAPSHOT_FILE

    class WeightsOnRequest(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if not request.is_set():
                return
            request.clear()
            step = int(trainer.global_step)
            try:
                state = {f"model.{k}": v.detach().to("cpu", copy=True)
                         for k, v in pl_module.model.state_dict().items()}
                atomic_torch_save({"state_dict": state, CONFIG_KEY: config_container(cfg), "global_step": step},
                                  path)
                report(WeightsSaved(path, step, checkpoint_info(cfg, path)))
            except Exception as err:  # Segment then waits for the run's checkpoint instead
                logger.exception("saving the current weights failed")
                from .training_request import Notice

                report(Notice(f"could not save the current weights: {type(err).__name__}: {err}".splitlines()[0]))

    return WeightsOnRequest()

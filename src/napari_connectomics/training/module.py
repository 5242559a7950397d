"""The LightningModule: a registry network, the configured losses with deep supervision, metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from ..models import build_model
from ..models.losses import build_loss
from .checkpoint import CONFIG_KEY, config_container
from .metrics import SegmentationMetrics
from .optim import build_optimizer, build_schedulers

__all__ = ["LOGGED_METRICS", "TRAIN_EVAL", "NonFiniteLossError", "SegmentationModule", "monitored_metric"]

logger = logging.getLogger(__name__)

# What this module logs (checkpoint.monitor must be one of them). Scores of a validation that runs on
# the training data (nothing held out) are logged under TRAIN_EVAL instead of "val", never mistaken
# for held-out ones; a monitor "val/x" then follows "train_eval/x" (see :func:`monitored_metric`).
LOGGED_METRICS = ("val/loss", "val/dice", "val/iou", "train/loss")
TRAIN_EVAL = "train_eval"


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf losses it could not skip past."""


class SegmentationModule(L.LightningModule):
    """Trains ``build_model(cfg)`` on class-index targets (IGNORE_INDEX voxels excluded).

    A non-finite loss skips its step with a warning; ``training.max_nonfinite_steps`` of them in a
    row stop the run with a clear error. Under DDP a step cannot be skipped on one rank alone, so
    the first non-finite loss stops the run there.
    """

    def __init__(self, cfg: DictConfig, model: torch.nn.Module | None = None, *, held_out: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.eval_prefix = "val" if held_out else TRAIN_EVAL  # where validation scores are logged
        self.model = model if model is not None else build_model(cfg)
        self.criterion = build_loss(cfg)
        self.num_classes = max(2, int(cfg.model.out_channels))
        self.val_metrics = SegmentationMetrics(self.num_classes)
        self._nonfinite_in_a_row = 0

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    # --- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        outputs = self.model(batch["image"])
        loss, parts = self.criterion(outputs, batch["label"])
        if not torch.isfinite(loss):
            return self._skip_nonfinite(loss)
        self._nonfinite_in_a_row = 0
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k.removeprefix('loss/')}": v for k, v in parts.items()},
                      on_step=True, on_epoch=False, batch_size=batch_size)
        return loss

    def _skip_nonfinite(self, loss: torch.Tensor) -> None:
        self._nonfinite_in_a_row += 1
        step = self.global_step
        if self.trainer is not None and self.trainer.world_size > 1:
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {step}; distributed runs cannot skip a step "
                "on one device: lower optimizer.lr, use training.precision=32 or set training.gradient_clip_val")
        limit = self.cfg.training.max_nonfinite_steps
        if self._nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(
                f"{self._nonfinite_in_a_row} non-finite training losses in a row (last at step {step}); "
                "lower optimizer.lr, use training.precision=32 or set training.gradient_clip_val")
        logger.warning("non-finite training loss (%s) at step %d: step skipped (%d/%d in a row)",
                       loss.item(), step, self._nonfinite_in_a_row, limit)
        return None

    # --- validation ------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.model(batch["image"])
        if isinstance(logits, dict):  # a model that keeps its heads in eval mode
            logits = logits["output"]
        loss, _ = self.criterion(logits, batch["label"])
        self.val_metrics.update(logits.detach(), batch["label"])
        self.log(f"{self.eval_prefix}/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch["image"].shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            # Sum the confusion counts of every device so Dice/IoU are those of the whole validation set.
            counts = self.val_metrics.counts.to(self.device)
            self.val_metrics.counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        metrics = self.val_metrics.compute()
        self.val_metrics.reset()
        p = self.eval_prefix
        values = {f"{p}/dice": metrics["dice/mean_fg"], f"{p}/iou": metrics["iou/mean_fg"]}
        values |= {f"{p}/{k}": v for k, v in metrics.items() if "/class_" in k}
        clean = {k: torch.nan_to_num(torch.as_tensor(v, dtype=torch.float32), nan=0.0) for k, v in values.items()}
        self.log(f"{p}/dice", clean.pop(f"{p}/dice"), prog_bar=True)
        self.log_dict(clean)

    # --- optimisation and checkpoints ------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.cfg, self.model.parameters())
        schedulers = build_schedulers(self.cfg, optimizer, int(self.trainer.estimated_stepping_batches),
                                      time_fraction=_time_fraction(self.trainer),
                                      monitor=monitored_metric("val/loss", self.eval_prefix == "val"))
        return ([optimizer], schedulers) if schedulers else optimizer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = config_container(self.cfg)


def monitored_metric(name: str, held_out: bool) -> str:
    """The key a metric of the config (``val/...``) is logged under: ``train_eval/...`` when nothing
    is held out, since validation then scores the training data."""
    return f"{TRAIN_EVAL}/{name.removeprefix('val/')}" if not held_out and name.startswith("val/") else name


def _time_fraction(trainer: L.Trainer) -> Callable[[], float] | None:
    """The elapsed share of ``training.max_time`` (Lightning's Timer, resumed runs included), or None."""
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
    if timer is None or timer.time_remaining() is None:
        return None

    def fraction() -> float:
        elapsed = timer.time_elapsed()
        budget = elapsed + (timer.time_remaining() or 0.0)
        return min(1.0, elapsed / budget) if budget > 0 else 1.0

    return fraction

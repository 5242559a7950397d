"""Training/validation metrics: per-class Dice and IoU from confusion counts over annotated voxels.

Counts (true positives, false positives, false negatives per class) are accumulated over batches and
turned into scores once, so the result over an epoch equals the score over all its voxels, not a mean
of per-batch scores. Voxels labelled ``IGNORE_INDEX`` count nowhere.

A class absent from both prediction and target has no defined score: it is NaN per class and left out
of every mean. The foreground mean (``mean_fg``) averages classes >= 1 only (class 1 for a binary task)
so that the easy, dominant background does not inflate the score.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from ..data.conventions import IGNORE_INDEX

__all__ = ["SegmentationMetrics", "confusion_counts", "dice_iou_from_counts", "num_classes_for"]

logger = logging.getLogger(__name__)


def num_classes_for(out_channels: int) -> int:
    """Classes behind an output: a one-channel sigmoid output is binary (2 classes)."""
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    return max(int(out_channels), 2)


def _predicted_labels(logits_or_labels: Tensor, num_classes: int) -> Tensor:
    """Class indices ``(B, *spatial)`` from logits (argmax, or > 0 for one channel) or from labels.

    A one-channel *integer/bool* tensor is taken as predicted labels; a one-channel *float* tensor as
    binary logits (threshold 0, i.e. probability 0.5).
    """
    x = logits_or_labels
    channels = x.shape[1]
    if channels == 1:
        if x.is_floating_point():
            if num_classes != 2:
                raise ValueError(f"one-channel float logits are binary, but num_classes is {num_classes}; "
                                 "pass integer labels for a multi-class prediction")
            return (x[:, 0] > 0).long()
        return x[:, 0].long()
    if channels != num_classes:
        raise ValueError(f"prediction has {channels} channels but num_classes is {num_classes}")
    return x.argmax(dim=1)


def confusion_counts(logits_or_labels: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(C, 3)`` int64 counts of true positives, false positives, false negatives per class.

    Only voxels whose target is not ``IGNORE_INDEX`` count. ``num_classes`` 1 means binary (2).
    """
    num_classes = num_classes_for(num_classes)
    predicted = _predicted_labels(logits_or_labels, num_classes)
    labels = target[:, 0] if target.ndim == logits_or_labels.ndim else target
    if labels.shape != predicted.shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match prediction {tuple(logits_or_labels.shape)}")
    labels = labels.long()
    if bool(((labels < IGNORE_INDEX) | (labels >= num_classes)).any()):
        raise ValueError(f"target values must be {IGNORE_INDEX} (ignored) or 0..{num_classes - 1}")
    if bool(((predicted < 0) | (predicted >= num_classes)).any()):
        raise ValueError(f"predicted labels must be 0..{num_classes - 1}")
    # Confusion matrix by bincount; ignored voxels fall into one extra bin that is dropped.
    squares = num_classes * num_classes
    bins = torch.where(labels != IGNORE_INDEX, labels * num_classes + predicted, squares)
    matrix = torch.bincount(bins.flatten(), minlength=squares + 1)[:squares].reshape(num_classes, num_classes)
    tp = matrix.diagonal()
    fp = matrix.sum(dim=0) - tp  # predicted as c, labelled otherwise
    fn = matrix.sum(dim=1) - tp  # labelled c, predicted otherwise
    return torch.stack([tp, fp, fn], dim=1)


def dice_iou_from_counts(counts: Tensor) -> dict[str, Tensor]:
    """Per-class ``dice`` and ``iou`` (float64, NaN where a class is in neither prediction nor target).

    Also ``mean_dice``/``mean_iou`` over all defined classes and ``mean_fg_dice``/``mean_fg_iou`` over
    defined classes >= 1 (NaN when no class qualifies).
    """
    counts = counts.to(torch.float64)
    tp, fp, fn = counts.unbind(dim=1)
    union = tp + fp + fn
    defined = union > 0
    nan = torch.full_like(tp, math.nan)
    dice = torch.where(defined, 2 * tp / (2 * tp + fp + fn).clamp(min=1), nan)
    iou = torch.where(defined, tp / union.clamp(min=1), nan)
    return {
        "dice": dice,
        "iou": iou,
        "mean_dice": dice.nanmean(),
        "mean_iou": iou.nanmean(),
        "mean_fg_dice": dice[1:].nanmean(),
        "mean_fg_iou": iou[1:].nanmean(),
    }


class SegmentationMetrics:
    """Dice/IoU accumulated over batches: ``update(logits, target)`` per batch, ``compute()``, ``reset()``.

    ``num_classes`` may be given as the network's ``out_channels`` (1 means binary). ``counts`` is the
    raw ``(C, 3)`` accumulator, e.g. for an all-reduce across processes before ``compute``.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes_for(num_classes)
        self.counts = torch.zeros(self.num_classes, 3, dtype=torch.int64)

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.counts = torch.zeros(self.num_classes, 3, dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add one batch; counts stay on the batch's device until ``compute``."""
        batch_counts = confusion_counts(logits.detach(), target, self.num_classes)
        self.counts = self.counts.to(batch_counts.device) + batch_counts

    def compute(self) -> dict[str, float]:
        """``dice/class_c`` and ``iou/class_c`` for every class, plus ``dice/mean_fg`` and ``iou/mean_fg``."""
        scores = dice_iou_from_counts(self.counts.cpu())
        result: dict[str, float] = {}
        for name in ("dice", "iou"):
            for c, value in enumerate(scores[name].tolist()):
                result[f"{name}/class_{c}"] = value
            result[f"{name}/mean_fg"] = float(scores[f"mean_fg_{name}"])
        return result

"""Metrics: Dice/IoU against hand counts, ignored voxels, accumulation, one-channel logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_connectomics.data.conventions import IGNORE_INDEX
from napari_connectomics.training.metrics import SegmentationMetrics, confusion_counts, dice_iou_from_counts

IGNORE = IGNORE_INDEX


def labels(rows):
    """(1, 1, H, W) int64 from nested lists."""
    return torch.tensor(rows).reshape(1, 1, len(rows), -1)


def as_logits(predicted: torch.Tensor, channels: int) -> torch.Tensor:
    """Logits whose argmax is ``predicted``."""
    return F.one_hot(predicted[:, 0], channels).movedim(-1, 1).float()


def test_two_class_counts_and_scores_by_hand():
    target = labels([[0, 0, 1, 1], [0, 1, 1, IGNORE]])
    predicted = labels([[0, 1, 1, 0], [0, 1, 1, 1]])  # last voxel ignored
    counts = confusion_counts(as_logits(predicted, 2), target, 2)
    # class 0: tp 2, fp 1 (pos 3), fn 1 (pos 1); class 1: tp 3, fp 1, fn 1
    assert counts.tolist() == [[2, 1, 1], [3, 1, 1]]
    scores = dice_iou_from_counts(counts)
    torch.testing.assert_close(scores["dice"], torch.tensor([4 / 6, 6 / 8], dtype=torch.float64))
    torch.testing.assert_close(scores["iou"], torch.tensor([2 / 4, 3 / 5], dtype=torch.float64))
    assert scores["mean_fg_dice"].item() == pytest.approx(0.75)


def test_three_class_by_hand_with_predicted_labels():
    target = labels([[0, 1, 2], [2, 2, IGNORE]])
    predicted = labels([[0, 2, 2], [2, 1, 0]])
    counts = confusion_counts(predicted, target, 3)
    # class 0: tp1 fp0 fn0; class 1: tp0 fp1 fn1; class 2: tp2 fp1 fn1
    assert counts.tolist() == [[1, 0, 0], [0, 1, 1], [2, 1, 1]]
    metrics = SegmentationMetrics(3)
    metrics.update(predicted, target)
    result = metrics.compute()
    assert result["dice/class_0"] == 1.0
    assert result["dice/class_1"] == 0.0
    assert result["dice/class_2"] == pytest.approx(4 / 6)
    assert result["iou/class_2"] == pytest.approx(2 / 4)
    assert result["dice/mean_fg"] == pytest.approx((0 + 4 / 6) / 2)
    assert result["iou/mean_fg"] == pytest.approx((0 + 0.5) / 2)


def test_ignored_voxels_count_nowhere():
    target = labels([[1, 1, IGNORE, IGNORE]])
    right = labels([[1, 1, 0, 0]])
    wrong_at_ignored = labels([[1, 1, 1, 1]])
    assert torch.equal(confusion_counts(right, target, 2), confusion_counts(wrong_at_ignored, target, 2))
    all_ignored = confusion_counts(right, torch.full_like(target, IGNORE), 2)
    assert all_ignored.sum() == 0


def test_class_absent_everywhere_is_nan_and_left_out_of_means():
    target = labels([[0, 0, 1, 1]])
    counts = confusion_counts(target, target, 3)  # class 2 neither predicted nor labelled
    scores = dice_iou_from_counts(counts)
    assert math.isnan(scores["dice"][2].item())
    assert scores["mean_fg_dice"].item() == 1.0 and scores["mean_dice"].item() == 1.0
    empty = SegmentationMetrics(2).compute()
    assert math.isnan(empty["dice/mean_fg"])


def test_accumulating_two_batches_equals_one_batch_of_both():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 4, 6, 6, generator=gen)
    target = torch.randint(-1, 3, (4, 1, 4, 6, 6), generator=gen)
    split = SegmentationMetrics(3)
    split.update(logits[:2], target[:2])
    split.update(logits[2:], target[2:])
    whole = SegmentationMetrics(3)
    whole.update(logits, target)
    assert torch.equal(split.counts, whole.counts)
    assert split.compute() == pytest.approx(whole.compute())
    split.reset()
    assert split.counts.sum() == 0


def test_one_channel_logits_are_binary():
    target = labels([[0, 1, 1, IGNORE]])
    logits = torch.tensor([-2.0, 3.0, -0.5, 9.0]).reshape(1, 1, 1, 4)
    metrics = SegmentationMetrics(1)  # out_channels 1 -> 2 classes
    assert metrics.num_classes == 2
    metrics.update(logits, target)
    assert metrics.counts.tolist() == [[1, 1, 0], [1, 0, 1]]
    result = metrics.compute()
    assert result["dice/class_1"] == pytest.approx(2 / 3)
    assert result["dice/mean_fg"] == result["dice/class_1"]
    with pytest.raises(ValueError, match="binary"):
        confusion_counts(logits, target, 3)


def test_bad_inputs_are_rejected():
    target = labels([[0, 1, 2, IGNORE]])
    with pytest.raises(ValueError, match="target values"):
        confusion_counts(labels([[0, 1, 1, 0]]), target, 2)
    with pytest.raises(ValueError, match="channels"):
        confusion_counts(torch.zeros(1, 4, 1, 4), target, 3)

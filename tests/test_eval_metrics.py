"""Evaluation metrics: hand-counted semantic scores, split/merge VOI, matching, evaluate()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_connectomics.inference.metrics import evaluate, instance_metrics, semantic_metrics


def three_objects() -> np.ndarray:
    """A 6x6 instance label with three 2x2 objects (ids 1, 2, 3) on background 0."""
    label = np.zeros((6, 6), dtype=np.uint16)
    label[0:2, 0:2] = 1
    label[0:2, 4:6] = 2
    label[4:6, 0:2] = 3
    return label


# --------------------------------------------------------------------------- semantic


def test_semantic_binary_by_hand():
    label = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    pred = np.array([0, 1, 1, 1, 0, 0, 1, 1])
    # class 1: tp at 2,3,6 -> 3; fp (pred 1, label 0) at 1,7 -> 2; fn (pred 0, label 1) at 4 -> 1
    # class 0: tp at 0,5 -> 2;   fp (pred 0, label 1) at 4 -> 1;   fn (pred 1, label 0) at 1,7 -> 2
    result = semantic_metrics(pred, label)
    assert result["per_class"][1] == {
        "iou": 3 / 6, "dice": 6 / 9, "precision": 3 / 5, "recall": 3 / 4, "tp": 3, "fp": 2, "fn": 1,
    }
    assert result["per_class"][0]["iou"] == pytest.approx(2 / 5)
    assert result["per_class"][0]["dice"] == pytest.approx(4 / 7)
    assert (result["iou"], result["dice"]) == pytest.approx((0.5, 2 / 3))  # foreground only
    assert (result["precision"], result["recall"]) == pytest.approx((0.6, 0.75))


def test_semantic_multiclass_2d_absent_class_is_nan_and_left_out():
    label = np.array([[0, 1], [2, 2]])
    pred = np.array([[0, 1], [2, 1]])
    # class 1: tp 1, fp 1 (bottom right), fn 0 -> iou 1/2, precision 1/2, recall 1
    # class 2: tp 1, fp 0, fn 1 (bottom right) -> iou 1/2, precision 1, recall 1/2
    result = semantic_metrics(pred, label, num_classes=4)
    assert set(result["per_class"]) == {0, 1, 2, 3}
    assert math.isnan(result["per_class"][3]["iou"])
    assert result["per_class"][3]["tp"] == 0
    assert result["iou"] == pytest.approx(0.5)
    assert result["dice"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(0.75)
    assert result["recall"] == pytest.approx(0.75)


def test_semantic_ignore_index_and_range_checks():
    label = np.array([1, 1, -1, -1, 0])
    pred = np.array([1, 1, 0, 0, 0])  # the two misses sit on ignored voxels
    result = semantic_metrics(pred, label, ignore_index=-1)
    assert result["per_class"][1]["fn"] == 0
    assert result["iou"] == 1.0
    with pytest.raises(ValueError, match="out of range"):
        semantic_metrics(np.array([0, 3]), np.array([0, 1]), num_classes=2)
    with pytest.raises(ValueError, match=">= 0"):
        semantic_metrics(np.array([0, 1]), np.array([0, -1]))
    with pytest.raises(ValueError, match="integer"):
        semantic_metrics(np.array([0.0, 1.0]), np.array([0, 1]))


# --------------------------------------------------------------------------- instance


def test_perfect_prediction_with_other_ids():
    label = three_objects()
    pred = np.choose(label, [0, 70000, 5, 9]).astype(np.uint32)  # same partition, different ids
    result = instance_metrics(pred, label)
    assert result["adapted_rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert result["voi_split"] == pytest.approx(0.0, abs=1e-12)
    assert result["voi_merge"] == pytest.approx(0.0, abs=1e-12)
    for key in ("f1", "ap", "precision", "recall"):
        assert result[key] == 1.0
    counts = (result["tp"], result["fp"], result["fn"], result["n_pred"], result["n_true"])
    assert counts == (3, 0, 0, 3, 3)
    flat = evaluate(pred, label)
    assert flat["iou"] == flat["dice"] == 1.0
    assert flat["adapted_rand_error"] == pytest.approx(0.0, abs=1e-12)


def test_split_is_voi_split_and_merge_is_voi_merge():
    label = np.array([0, 1, 1, 1, 1, 0, 2, 2, 2, 2])
    split = np.array([0, 1, 1, 3, 3, 0, 2, 2, 2, 2])  # true object 1 cut in halves
    # 8 scored voxels; H(pred | true) = 4/8 * 1 bit (object 1 is a fair coin between two ids)
    result = instance_metrics(split, label)
    assert result["voi_split"] == pytest.approx(0.5)
    assert result["voi_merge"] == pytest.approx(0.0, abs=1e-12)
    # Rand recall: true pairs kept together. Object 1 keeps 2 of its 4*3/2 = 6, object 2 all 6
    assert result["adapted_rand_recall"] == pytest.approx(8 / 12)
    assert result["adapted_rand_precision"] == pytest.approx(1.0)  # a split merges nothing
    merged = np.array([0, 1, 1, 1, 1, 0, 1, 1, 1, 1])  # both true objects under one id
    # H(true | pred) = 8/8 * 1 bit
    result = instance_metrics(merged, label)
    assert result["voi_merge"] == pytest.approx(1.0)
    assert result["voi_split"] == pytest.approx(0.0, abs=1e-12)
    # Rand precision: predicted pairs that are true pairs, 12 of 8*7/2 = 28
    assert result["adapted_rand_precision"] == pytest.approx(12 / 28)
    assert result["adapted_rand_recall"] == pytest.approx(1.0)


def test_matching_two_of_three_with_one_false_positive():
    label = three_objects()
    pred = np.zeros_like(label)
    pred[0:2, 0:2] = 1  # object 1 exactly
    pred[0:2, 4:6] = 2
    pred[2, 4] = 2  # object 2 plus one voxel: IoU 4/5
    pred[3:5, 3:5] = 3  # on background (and nothing for true object 3): false positive
    result = instance_metrics(pred, label)
    assert (result["tp"], result["fp"], result["fn"]) == (2, 1, 1)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["ap"] == pytest.approx(2 / 4)  # TP / (TP + FP + FN)


def test_iou_threshold_is_strict_and_checked():
    label = np.array([1, 1, 0, 0])
    pred = np.array([1, 1, 1, 1])  # IoU 2/4, exactly the threshold: not a match
    assert instance_metrics(pred, label)["tp"] == 0
    assert instance_metrics(np.array([1, 1, 1, 0]), label)["tp"] == 1  # IoU 2/3
    with pytest.raises(ValueError, match="iou_threshold"):
        instance_metrics(pred, label, iou_threshold=0.3)


def test_empty_prediction():
    label = np.array([0, 1, 1, 0, 2, 2])
    result = instance_metrics(np.zeros_like(label), label)
    assert (result["tp"], result["fp"], result["fn"], result["n_pred"]) == (0, 0, 2, 0)
    assert math.isnan(result["precision"])  # no predictions: undefined, not 0
    assert (result["recall"], result["f1"], result["ap"]) == (0.0, 0.0, 0.0)
    assert result["voi_merge"] == pytest.approx(1.0)  # background swallows both: one big merge
    flat = evaluate(np.zeros_like(label), label)
    assert flat["iou"] == 0.0 and flat["recall"] == 0.0
    assert flat["precision"] is None and flat["instance_precision"] is None


def test_ground_truth_zero_is_ignored_only_when_asked():
    label = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([1, 1, 1, 1, 2, 2])  # object 1 spills over unlabelled voxels
    ignored = instance_metrics(pred, label)
    assert ignored["adapted_rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert ignored["voi_merge"] == pytest.approx(0.0, abs=1e-12)
    counted = instance_metrics(pred, label, ignore_label_zero=False)
    assert counted["adapted_rand_error"] > 0.0
    assert counted["voi_merge"] > 0.0  # label 0 is now a segment merged with object 1


def test_huge_ids_and_bad_ids():
    label = np.array([0, 4_000_000_000, 4_000_000_000, 7], dtype=np.uint32)
    assert instance_metrics(label.copy(), label)["f1"] == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        instance_metrics(np.array([0, -2]), np.array([0, 1]))


# --------------------------------------------------------------------------- evaluate


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)") as info:
        evaluate(np.zeros((2, 3)), np.zeros((3, 2), dtype=np.uint8))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="empty"):
        evaluate(np.zeros((0, 2)), np.zeros((0, 2), dtype=np.uint8))


def test_float_probabilities_are_thresholded():
    label = np.array([0, 0, 1, 1], dtype=np.uint8)
    probs = np.array([0.1, 0.6, 0.7, 0.4], dtype=np.float32)
    result = evaluate(probs, label)  # at 0.5: [0, 1, 1, 0] -> tp 1, fp 1, fn 1
    assert result["instance"] is False
    assert result["iou"] == pytest.approx(1 / 3)
    assert evaluate(probs, label, threshold=0.3)["recall"] == 1.0  # [0, 1, 1, 1]
    assert evaluate(probs, label, threshold=0.65)["precision"] == 1.0  # [0, 0, 1, 0]


def test_evaluate_instances_from_probabilities_and_json():
    label = three_objects()
    probs = (label > 0).astype(np.float64) * 0.9  # connected components give back 3 objects
    result = evaluate(probs, label)
    assert result["instance"] is True
    assert (result["f1"], result["ap"], result["n_pred"], result["n_true"]) == (1.0, 1.0, 3, 3)
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert all(isinstance(v, (bool, int, float, type(None))) for v in result.values())


def test_evaluate_modes():
    semantic = np.array([[0, 1], [2, 2]])
    result = evaluate(semantic, semantic, instance=False)  # class map, scored per class
    assert result["instance"] is False and "f1" not in result
    assert result["iou"] == 1.0
    forced = evaluate(np.array([0, 1, 1]), np.array([0, 1, 1]), instance=True)
    assert forced["f1"] == 1.0 and forced["voi_split"] == 0.0
    json.dumps(evaluate(np.zeros(4), np.zeros(4, dtype=np.uint8), instance=True), allow_nan=False)
    with pytest.raises(ValueError, match="integer ids"):
        evaluate(np.zeros(2, dtype=np.uint8), np.array([0.0, 0.5]))

"""Evaluation metrics for a segmentation against ground truth (numpy only, no torch).

Three layers:

- :func:`semantic_metrics` scores class maps voxel by voxel (IoU, Dice, precision, recall).
- :func:`instance_metrics` scores instance id maps: the connectomics voxel-pair scores (adapted
  Rand error and the split/merge parts of the variation of information, as in CREMI and SNEMI3D)
  and object matching at an IoU threshold (F1 and average precision).
- :func:`evaluate` turns any prediction (probabilities, class map or instance ids) into the flat,
  JSON-ready dict that ``napari-connectomics evaluate --json`` prints.

Everything is vectorised: voxels are only ever counted by ``np.bincount`` or by the sparse
contingency tables of scikit-image, so per-object work scales with the number of objects.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse as sparse
from skimage.metrics import adapted_rand_error, contingency_table, variation_of_information
from skimage.segmentation import relabel_sequential

__all__ = ["evaluate", "instance_metrics", "semantic_metrics"]

SEMANTIC_KEYS = ("iou", "dice", "precision", "recall")
PAIR_KEYS = (
    "adapted_rand_error",
    "adapted_rand_precision",
    "adapted_rand_recall",
    "voi_split",
    "voi_merge",
)


# --------------------------------------------------------------------------- input checks


def _check_shapes(prediction: np.ndarray, label: np.ndarray) -> None:
    """Fail early with both shapes: a silent broadcast (or zero voxels) gives meaningless scores."""
    if np.shape(prediction) != np.shape(label):
        pred_shape, label_shape = tuple(np.shape(prediction)), tuple(np.shape(label))
        raise ValueError(f"prediction shape {pred_shape} does not match label shape {label_shape}")
    if np.size(label) == 0:
        shape = tuple(np.shape(label))
        raise ValueError(f"prediction and label are empty (shape {shape}): nothing to score")


def _as_integer_map(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as an integer map; bool becomes uint8, anything else is an error."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label map, got dtype {array.dtype}")
    return array


def _sequential_ids(array: np.ndarray, name: str) -> np.ndarray:
    """Relabel ids to 1..n (0 stays 0) so contingency tables are n x m, not max_id x max_id."""
    array = _as_integer_map(array, name)
    if array.min() < 0:
        raise ValueError(f"{name} instance ids must be >= 0, got {array.min()}")
    return relabel_sequential(array)[0]


def _ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    """Elementwise division where 0/0 is nan (an undefined score, not a zero score)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the defined values; nan (not a warning) when none is defined."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


# --------------------------------------------------------------------------- semantic


def _confusion_matrix(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """(true class, predicted class) voxel counts in one ``bincount`` pass."""
    flat = label.astype(np.int64).ravel() * num_classes + prediction.astype(np.int64).ravel()
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _infer_num_classes(prediction: np.ndarray, label: np.ndarray, num_classes: int | None) -> int:
    """Check class ids against ``num_classes`` (or derive it) so bincount cannot mix classes."""
    low = min(prediction.min(initial=0), label.min(initial=0))
    high = int(max(prediction.max(initial=0), label.max(initial=0)))
    if low < 0:
        raise ValueError(f"class ids must be >= 0 (outside ignore_index), got {low}")
    if num_classes is None:
        return high + 1
    if high >= num_classes:
        raise ValueError(f"class id {high} is out of range for num_classes={num_classes}")
    return num_classes


def _class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class tp/fp/fn and the four scores; classes absent from both maps get nan."""
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    return {
        "iou": np.where(present, _ratio(tp, tp + fp + fn), np.nan),
        "dice": np.where(present, _ratio(2 * tp, 2 * tp + fp + fn), np.nan),
        "precision": np.where(present, _ratio(tp, tp + fp), np.nan),
        "recall": np.where(present, _ratio(tp, tp + fn), np.nan),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def semantic_metrics(
    prediction: np.ndarray,
    label: np.ndarray,
    *,
    num_classes: int | None = None,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """Voxel-wise IoU (Jaccard), Dice, precision and recall of integer class maps.

    ``per_class`` holds every class 0..num_classes-1 (0 = background included) with its tp/fp/fn.
    The top-level scores are the mean over the foreground classes (>= 1) that occur in the label
    or the prediction, so background, which dominates EM volumes, cannot inflate them. A class
    absent from both maps, and a ratio with a zero denominator (e.g. precision of a class never
    predicted), is nan and left out of the means. Voxels whose label equals ``ignore_index``
    are not counted.
    """
    _check_shapes(prediction, label)
    prediction = _as_integer_map(prediction, "prediction")
    label = _as_integer_map(label, "label")
    if ignore_index is not None:
        keep = label != ignore_index
        prediction, label = prediction[keep], label[keep]
    num_classes = _infer_num_classes(prediction, label, num_classes)
    scores = _class_scores(_confusion_matrix(prediction, label, num_classes))
    per_class = {
        c: {
            key: int(values[c]) if key in ("tp", "fp", "fn") else float(values[c])
            for key, values in scores.items()
        }
        for c in range(num_classes)
    }
    result: dict[str, Any] = {key: _nanmean(scores[key][1:]) for key in SEMANTIC_KEYS}
    result["per_class"] = per_class
    return result


# --------------------------------------------------------------------------- instance


def _check_iou_threshold(iou_threshold: float) -> None:
    """Below 0.5 one object could match several: the threshold-only matching needs >= 0.5."""
    if not 0.5 <= iou_threshold < 1.0:
        raise ValueError(
            f"iou_threshold must be in [0.5, 1) for one-to-one matching, got {iou_threshold}"
        )


def _pair_scores(true: np.ndarray, pred: np.ndarray, table: sparse.csr_array) -> dict[str, float]:
    """Adapted Rand error and VOI split/merge from a (true, predicted) contingency table.

    Rand precision = voxel pairs together in both / pairs together in the prediction (falls with
    merges); Rand recall = ... / pairs together in the truth (falls with splits).
    The images only pass skimage's shape check (0.26 needs them even with ``table``).
    skimage's ``variation_of_information(image0=true, image1=pred)`` returns
    (H(pred | true), H(true | pred)): the first is the over-segmentation (a true object split into
    several predicted ones), the second the under-segmentation (true objects merged).
    """
    total = float(table.sum())
    if total == 0:  # nothing left to score (empty or all-ignored ground truth)
        return dict.fromkeys(PAIR_KEYS, math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):  # single-voxel segments: no pairs -> nan
        # skimage returns its precision and recall swapped against its own docstring
        # (scikit-image issue #6485): the second value divides by the true pairs, i.e. it is recall.
        are, rand_recall, rand_precision = adapted_rand_error(table=table)
    voi_split, voi_merge = variation_of_information(true, pred, table=table / total)
    return {
        "adapted_rand_error": float(are),
        "adapted_rand_precision": float(rand_precision),
        "adapted_rand_recall": float(rand_recall),
        "voi_split": max(float(voi_split), 0.0),  # clamp -0.0 / -1e-17 round-off
        "voi_merge": max(float(voi_merge), 0.0),
    }


def _matched_pairs(table: sparse.csr_array, iou_threshold: float) -> int:
    """Number of (true, predicted) object pairs with IoU > threshold.

    With threshold >= 0.5 a pair above it is necessarily the only one for both objects (two
    predictions cannot each cover more than half of the union with the same true object), so
    thresholding the pairwise IoU of the overlapping pairs is already a one-to-one matching.
    """
    area_true = np.asarray(table.sum(axis=1)).ravel()
    area_pred = np.asarray(table.sum(axis=0)).ravel()
    pairs = table.tocoo()
    keep = (pairs.row > 0) & (pairs.col > 0) & (pairs.data > 0)  # id 0 is background
    rows, cols, overlap = pairs.row[keep], pairs.col[keep], pairs.data[keep]
    iou = overlap / (area_true[rows] + area_pred[cols] - overlap)
    return int(np.count_nonzero(iou > iou_threshold))


def _detection_scores(tp: int, n_pred: int, n_true: int) -> dict[str, Any]:
    """Precision, recall, F1 and AP = TP / (TP + FP + FN) from the match counts (0/0 -> nan)."""
    fp, fn = n_pred - tp, n_true - tp
    return {
        "f1": float(_ratio(2 * tp, 2 * tp + fp + fn)),
        "precision": float(_ratio(tp, n_pred)),
        "recall": float(_ratio(tp, n_true)),
        "ap": float(_ratio(tp, tp + fp + fn)),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_pred": n_pred,
        "n_true": n_true,
    }


def instance_metrics(
    prediction: np.ndarray,
    label: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    ignore_label_zero: bool = True,
) -> dict[str, Any]:
    """Score instance id maps (0 = background) with voxel-pair and object-matching metrics.

    - ``adapted_rand_error`` (and its precision/recall) and ``voi_split``/``voi_merge`` (bits):
      when ``ignore_label_zero``, voxels labelled 0 in the ground truth are left out, as CREMI and
      SNEMI3D do, so unlabelled space does not count against the prediction. ``voi_split`` grows
      when the prediction splits a true object, ``voi_merge`` when it merges true objects.
    - Object matching: objects are the ids >= 1 of each map, matched one-to-one when their IoU
      (over the whole volume) is > ``iou_threshold`` (>= 0.5). ``precision`` = TP / n_pred,
      ``recall`` = TP / n_true, ``f1``, and ``ap`` = TP / (TP + FP + FN), the "average precision"
      of instance-segmentation challenges (DSB 2018, StarDist, Cellpose) at that threshold.

    Undefined scores (no objects at all, no predictions for precision) are nan.
    """
    _check_shapes(prediction, label)
    _check_iou_threshold(iou_threshold)
    pred = _sequential_ids(prediction, "prediction")
    true = _sequential_ids(label, "label")
    full_table = contingency_table(true, pred, sparse_type="array")
    scored_table = full_table
    if ignore_label_zero:
        scored_table = contingency_table(true, pred, ignore_labels=(0,), sparse_type="array")
    n_pred = int(pred.max(initial=0))
    n_true = int(true.max(initial=0))
    tp = _matched_pairs(full_table, iou_threshold)
    return {**_pair_scores(true, pred, scored_table), **_detection_scores(tp, n_pred, n_true)}


# --------------------------------------------------------------------------- evaluate (CLI)


def _prediction_labels(prediction: np.ndarray, threshold: float) -> np.ndarray:
    """Floating predictions are probabilities (thresholded); integer ones are already labels."""
    prediction = np.asarray(prediction)
    if np.issubdtype(prediction.dtype, np.floating):
        return (prediction > threshold).astype(np.uint8)
    return _as_integer_map(prediction, "prediction")


def _label_map(label: np.ndarray) -> np.ndarray:
    """Accept float label volumes (e.g. from TIFF) only when every value is a whole number."""
    label = np.asarray(label)
    if np.issubdtype(label.dtype, np.floating):
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise ValueError(f"label must hold integer ids, got non-integer {label.dtype} values")
        return label.astype(np.int64)
    return _as_integer_map(label, "label")


def _is_binary(array: np.ndarray) -> bool:
    """True when the map only holds 0 and 1 (a mask, not class ids or instance ids)."""
    return int(array.min()) >= 0 and int(array.max()) <= 1


def _has_instances(label: np.ndarray) -> bool:
    """More than one object id besides background means an instance label (one pass, no sort)."""
    objects = label[label != 0]
    return bool(objects.size) and bool(np.any(objects != objects[0]))


def _plain(value: Any) -> Any:
    """Numpy scalars to Python numbers and nan to None, so ``json.dumps`` takes the dict."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value


def evaluate(
    prediction: np.ndarray,
    label: np.ndarray,
    *,
    instance: bool | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """One flat, JSON-ready dict of scores for ``napari-connectomics evaluate``.

    A floating prediction is thresholded at ``threshold``; an integer one is used as labels.
    Semantic keys (``iou``, ``dice``, ``precision``, ``recall``: foreground mean) are always there;
    they compare foreground masks (> 0) when the label is binary or instance ids, class maps
    otherwise. Instance metrics are added when ``instance`` is True, or when it is None and the
    label holds more than one object id; a binary prediction is then split into connected
    components first. Their object-matching precision/recall are ``instance_precision`` and
    ``instance_recall``. ``instance`` in the result says which mode ran; nan becomes None.
    """
    _check_shapes(prediction, label)
    pred = _prediction_labels(prediction, threshold)
    true = _label_map(label)
    with_instances = _has_instances(true) if instance is None else bool(instance)
    if with_instances or _is_binary(true):
        semantic = semantic_metrics(pred > 0, true > 0, num_classes=2)
    else:
        semantic = semantic_metrics(pred, true)
    result: dict[str, Any] = {key: semantic[key] for key in SEMANTIC_KEYS}
    result["instance"] = with_instances
    if with_instances:
        pred_ids = ndi.label(pred)[0] if _is_binary(pred) else pred
        scores = instance_metrics(pred_ids, true)
        scores["instance_precision"] = scores.pop("precision")
        scores["instance_recall"] = scores.pop("recall")
        result.update(scores)
    return {key: _plain(value) for key, value in result.items()}

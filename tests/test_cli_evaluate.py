"""`napari-connectomics evaluate` on real HDF5 files, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_connectomics", "evaluate", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def files(tmp_path):
    truth = np.zeros((4, 20, 20), np.uint32)
    truth[:, 2:8, 2:8] = 1
    truth[:, 10:18, 10:18] = 2
    pred = truth.copy()
    pred[:, 10:18, 10:14] = 3  # object 2 split in two
    with h5py.File(tmp_path / "pred.h5", "w") as f:
        f["labels"] = pred
        f["probabilities"] = (pred[None] > 0).astype(np.float16)
    with h5py.File(tmp_path / "truth.h5", "w") as f:
        f["label"] = truth
    return tmp_path


def test_json_reads_the_labels_array_by_default(files):
    result = run("--prediction", str(files / "pred.h5"), "--label", f"{files / 'truth.h5'}:label", "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["iou"] == 1.0  # the foreground is right
    assert scores["voi_split"] > 0 and scores["voi_merge"] == pytest.approx(0, abs=1e-9)
    assert scores["n_pred"] == 3 and scores["n_true"] == 2
    assert {"iou", "dice", "precision", "recall", "adapted_rand_error", "voi_split", "voi_merge", "f1", "ap"} <= set(scores)


def test_probabilities_are_thresholded(files):
    result = run("--prediction", f"{files / 'pred.h5'}:probabilities", "--label", f"{files / 'truth.h5'}:label",
                 "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    # thresholded foreground is exact; its connected components are the two true objects
    assert scores["iou"] == 1.0 and scores["n_pred"] == 2 and scores["f1"] == 1.0


def test_missing_key_lists_the_keys(files):
    result = run("--prediction", f"{files / 'pred.h5'}:nope", "--label", f"{files / 'truth.h5'}:label")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "labels, probabilities" in result.stderr


def test_shape_mismatch_is_one_line(files, tmp_path):
    with h5py.File(tmp_path / "small.h5", "w") as f:
        f["label"] = np.zeros((2, 5, 5), np.uint8)
    result = run("--prediction", str(files / "pred.h5"), "--label", f"{tmp_path / 'small.h5'}:label")
    assert result.returncode == 2 and "shape" in result.stderr and result.stderr.strip().count("\n") == 0

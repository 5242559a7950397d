"""Labels -> class maps for every (label mode, target) pair, and intensity normalisation."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from napari_connectomics.data.conventions import IGNORE_INDEX
from napari_connectomics.data.normalize import (
    NORMALIZATION_MODES,
    IntensityStats,
    intensity_stats,
    normalize_intensity,
)
from napari_connectomics.data.targets import TARGETS, instance_contours, labels_to_classes, num_classes
from napari_connectomics.data.volumes import open_volume

I = IGNORE_INDEX
LABELS = np.array([[[0, 1, 2, 3, 4]]], dtype=np.uint8)  # one voxel of each value, z-y-x

# (label_mode, target) -> expected class of each value in LABELS
MAPPING = {
    ("dense", "binary"): [0, 1, 1, 1, 1],
    ("sparse", "binary"): [I, 0, 1, 1, 1],
    ("dense", "semantic"): [0, 1, 2, 3, 4],
    ("sparse", "semantic"): [I, 0, 1, 2, 3],
}


@pytest.mark.parametrize("mode, target", sorted(MAPPING))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint64])
def test_binary_and_semantic_mapping_tables(mode: str, target: str, dtype: type) -> None:
    classes = labels_to_classes(LABELS.astype(dtype), mode, target)
    assert classes.dtype == np.int64 and classes.shape == LABELS.shape
    assert classes.ravel().tolist() == MAPPING[mode, target]


def two_touching_squares(background: int = 0) -> np.ndarray:
    """Two 4x4 squares (ids 5 and 7) sharing a vertical border, in a 2-section 8x12 volume."""
    labels = np.full((2, 8, 12), background, dtype=np.uint16)
    labels[:, 2:6, 2:6] = 5
    labels[:, 2:6, 6:10] = 7
    return labels


EXPECTED_SECTION = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0],
        [0, 0, 2, 1, 1, 2, 2, 1, 1, 2, 0, 0],
        [0, 0, 2, 1, 1, 2, 2, 1, 1, 2, 0, 0],
        [0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
)


def test_instance_dense_contours_on_both_sides_of_a_shared_border() -> None:
    classes = labels_to_classes(two_touching_squares(), "dense", "instance")
    assert classes.dtype == np.int64
    for section in classes:  # in-plane: both sections are the same, no contour from z neighbours
        np.testing.assert_array_equal(section, EXPECTED_SECTION)


def test_instance_sparse_ignores_unannotated_and_maps_background() -> None:
    labels = two_touching_squares(background=1)
    labels[:, :, 11] = 0  # an unannotated column
    labels[:, 7, :] = 0  # and row
    classes = labels_to_classes(labels, "sparse", "instance")
    expected = EXPECTED_SECTION.copy()
    expected[:, 11] = I
    expected[7, :] = I
    for section in classes:
        np.testing.assert_array_equal(section, expected)


def test_instance_object_touching_unannotated_voxels_gets_a_contour() -> None:
    labels = np.zeros((1, 5, 5), dtype=np.uint8)
    labels[0, 1:4, 1:4] = 2
    expected = np.full((5, 5), I)
    expected[1:4, 1:4] = 2
    expected[2, 2] = 1
    np.testing.assert_array_equal(labels_to_classes(labels, "sparse", "instance")[0], expected)


def test_contours_are_in_plane_only() -> None:
    labels = np.zeros((3, 6, 6), dtype=np.int32)
    labels[1, 1:5, 1:5] = 3  # above and below it: background
    labels[2, 1:5, 1:5] = 4  # another object right below
    contours = instance_contours(labels)
    assert not contours[1, 2:4, 2:4].any()  # z neighbours differ, yet the interior stays interior
    np.testing.assert_array_equal(contours[1], find_boundaries(labels[1], mode="inner"))
    assert instance_contours(labels, spatial_dims=3)[1, 2:4, 2:4].all()


def test_contours_match_skimage_per_slice_on_random_instances() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(3, 16, 16)).repeat(2, axis=1).repeat(2, axis=2)
    contours = instance_contours(labels)
    for z in range(labels.shape[0]):
        np.testing.assert_array_equal(contours[z], find_boundaries(labels[z], mode="inner"))


def test_two_dimensional_labels_and_leading_axes() -> None:
    section = two_touching_squares()[0]
    classes = labels_to_classes(section, "dense", "instance", spatial_dims=2)
    np.testing.assert_array_equal(classes, EXPECTED_SECTION)
    batch = np.stack([two_touching_squares()] * 2)  # (batch, z, y, x)
    assert (labels_to_classes(batch, "dense", "instance")[:, :] == EXPECTED_SECTION).all()


@pytest.mark.parametrize("target", TARGETS)
def test_sparse_zero_is_ignored_everywhere(target: str) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, size=(4, 9, 9)).astype(np.uint8)
    classes = labels_to_classes(labels, "sparse", target)
    np.testing.assert_array_equal(classes == I, labels == 0)


def test_negative_labels_name_the_minimum() -> None:
    with pytest.raises(ValueError, match="minimum -3"):
        labels_to_classes(np.array([[[0, -3, 2]]]), "dense", "binary")


def test_bad_choices_and_dtypes_list_what_is_valid() -> None:
    with pytest.raises(ValueError, match="binary, instance, semantic"):
        labels_to_classes(LABELS, "dense", "affinity")
    with pytest.raises(ValueError, match="dense, sparse"):
        labels_to_classes(LABELS, "partial", "binary")
    with pytest.raises(ValueError, match="whole numbers"):
        labels_to_classes(np.array([[[0.5]]]), "dense", "binary")
    whole_floats = np.array([[[0.0, 2.0]]], dtype=np.float32)
    assert labels_to_classes(whole_floats, "dense", "semantic").tolist() == [[[0, 2]]]


def test_num_classes_never_counts_ignore() -> None:
    assert num_classes("binary") == 2
    assert num_classes("instance") == 3
    assert num_classes("semantic", LABELS, "dense") == 5
    assert num_classes("semantic", LABELS, "sparse") == 4
    sparse = labels_to_classes(LABELS, "sparse", "semantic")
    assert num_classes("semantic", LABELS, "sparse") == sparse.max() + 1
    with pytest.raises(ValueError, match="no annotated voxel"):
        num_classes("semantic", np.zeros((2, 2, 2), np.uint8), "sparse")
    with pytest.raises(ValueError, match="pass labels="):
        num_classes("semantic")


# ----------------------------------------------------------------------------------------------
# Intensity normalisation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("mode", NORMALIZATION_MODES)
def test_normalisation_modes(dtype: type, mode: str) -> None:
    rng = np.random.default_rng(3)
    image = (rng.normal(100, 20, size=(8, 32, 32)).clip(0, 250)).astype(dtype)
    stats = intensity_stats(image)
    out = normalize_intensity(image, mode, stats)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.isfinite(out).all()
    if mode == "none":
        np.testing.assert_array_equal(out, image.astype(np.float32))
    elif mode == "minmax":
        assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    elif mode == "percentile":
        assert out.min() == 0.0 and out.max() == 1.0
        assert np.mean(out == 0.0) == pytest.approx(0.01, abs=0.01)
    else:
        assert out.mean() == pytest.approx(0.0, abs=1e-4) and out.std() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("mode", NORMALIZATION_MODES)
def test_constant_image_does_not_divide_by_zero(mode: str) -> None:
    image = np.full((2, 4, 4), 7, dtype=np.uint16)
    stats = intensity_stats(image)
    assert stats.low == stats.high == stats.minimum == stats.maximum == 7.0 and stats.std == 0.0
    out = normalize_intensity(image, mode, stats)
    assert np.isfinite(out).all()
    assert (out == (7.0 if mode == "none" else 0.0)).all()


def test_none_mode_does_not_alias_a_float32_input() -> None:
    image = np.ones((2, 2), np.float32)
    normalize_intensity(image, "none", intensity_stats(image))[...] = 5
    assert (image == 1).all()


def test_unknown_mode_lists_modes() -> None:
    with pytest.raises(ValueError, match="none, minmax, percentile, zscore"):
        normalize_intensity(np.zeros(3), "clahe", IntensityStats(0, 1, 0, 1, 0, 1))


def test_float_stats_skip_non_finite_values() -> None:
    image = np.array([np.nan, np.inf, 1.0, 3.0])
    stats = intensity_stats(image)
    assert (stats.minimum, stats.maximum, stats.mean) == (1.0, 3.0, 2.0)


def test_intensity_stats_on_a_large_lazy_volume_reads_a_bounded_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    gradient = np.linspace(0, 2000, 512, dtype=np.float32)[None, None, :]
    data = (rng.normal(20000, 3000, size=(64, 512, 512)) + gradient).astype(np.uint16)  # 32 MiB
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("raw", data=data, chunks=(8, 64, 64))
    volume = open_volume(path)
    tracemalloc.start()
    try:
        sampled = intensity_stats(volume, max_voxels=200_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # a full read would allocate 32 MiB (and more as float)
    assert intensity_stats(volume, max_voxels=200_000) == sampled  # deterministic
    low, high = np.percentile(data, [1, 99])
    spread = high - low
    assert sampled.low == pytest.approx(low, abs=0.02 * spread)
    assert sampled.high == pytest.approx(high, abs=0.02 * spread)
    assert sampled.mean == pytest.approx(data.mean(), abs=0.02 * spread)
    assert sampled.std == pytest.approx(data.std(), rel=0.05)


def test_intensity_stats_samples_unchunked_arrays_by_slices() -> None:
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, size=(40, 300, 300), dtype=np.uint8)
    sampled = intensity_stats(data, max_voxels=100_000)
    low, high = np.percentile(data, [1, 99])
    assert abs(sampled.low - low) <= 3 and abs(sampled.high - high) <= 3
    assert intensity_stats(data[:1, :10, :10]) == intensity_stats(data[:1, :10, :10].copy())


def test_data_modules_import_no_heavy_dependencies() -> None:
    heavy = ("torch", "monai", "qtpy", "PyQt5", "h5py", "zarr", "tifffile")
    code = (
        "import sys, napari_connectomics.data.volumes, napari_connectomics.data.normalize, "
        f"napari_connectomics.data.targets; print(sorted(m for m in {heavy} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

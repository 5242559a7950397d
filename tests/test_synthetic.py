"""Tests of the synthetic EM generator, the data every self-contained test and the demo rely on."""

from __future__ import annotations

import numpy as np
import pytest

from napari_connectomics.data.synthetic import SyntheticEM, make_synthetic_em

SMALL = (16, 96, 96)
MEDIUM = (24, 128, 128)


@pytest.fixture(scope="module")
def default_sample() -> SyntheticEM:
    """The default-size volume (32, 256, 256), generated once for the statistics tests."""
    return make_synthetic_em(seed=0)


@pytest.fixture(scope="module")
def medium_sample() -> SyntheticEM:
    return make_synthetic_em(MEDIUM, seed=1)


def _arrays(sample: SyntheticEM) -> list[np.ndarray]:
    return [sample.image, sample.mitochondria, sample.instances, sample.membranes]


def _touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different instance ids that are 6-neighbours somewhere."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(instances.ndim):
        a = np.moveaxis(instances, axis, 0)
        lo, hi = a[:-1], a[1:]
        hit = (lo != hi) & (lo > 0) & (hi > 0)
        pairs |= {(min(p, q), max(p, q)) for p, q in zip(lo[hit].tolist(), hi[hit].tolist(), strict=True)}
    return pairs


def _best_threshold_iou(image: np.ndarray, mask: np.ndarray) -> float:
    """Best foreground IoU of any global threshold, dark side (image <= t) or bright side (> t)."""
    fg = np.bincount(image[mask], minlength=256).astype(np.float64)
    bg = np.bincount(image[~mask], minlength=256).astype(np.float64)
    tp, fp = np.cumsum(fg), np.cumsum(bg)
    dark = tp / (fg.sum() + fp)
    bright = (fg.sum() - tp) / (fg.sum() + bg.sum() - fp)
    return float(max(dark.max(), bright.max()))


def test_same_seed_is_bit_identical() -> None:
    a, b = make_synthetic_em(SMALL, seed=3), make_synthetic_em(SMALL, seed=3)
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.voxel_size == b.voxel_size


def test_other_seed_differs() -> None:
    a, b = make_synthetic_em(SMALL, seed=3), make_synthetic_em(SMALL, seed=4)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.mitochondria, b.mitochondria)


def test_dtypes_and_shapes(medium_sample: SyntheticEM) -> None:
    s = medium_sample
    assert s.image.dtype == np.uint8
    assert s.mitochondria.dtype == np.uint8
    assert s.instances.dtype == np.uint32
    assert s.membranes.dtype == np.uint8
    assert all(x.shape == MEDIUM for x in _arrays(s))
    assert set(np.unique(s.mitochondria)) <= {0, 1}
    assert set(np.unique(s.membranes)) <= {0, 1}
    assert len(s.voxel_size) == 3 and all(v > 0 for v in s.voxel_size)


def test_two_dimensional_shape() -> None:
    s = make_synthetic_em((128, 160), seed=2)
    assert all(x.shape == (128, 160) for x in _arrays(s))
    assert len(s.voxel_size) == 2
    assert s.instances.max() >= 1
    np.testing.assert_array_equal(s.instances > 0, s.mitochondria == 1)


@pytest.mark.parametrize("shape", [(8, 64, 64), (64,), (16, 32, 32, 32), (32, 15, 64), (0, 0), "abc"])
def test_bad_shape_raises(shape: object) -> None:
    with pytest.raises(ValueError, match=r"shape must be \(z, y, x\) or \(y, x\) with every size >= 16"):
        make_synthetic_em(shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"voxel_size": (0, 8, 8)}, {"noise": -1.0}, {"n_mitochondria": -2}])
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_synthetic_em(SMALL, **kwargs)


def test_requested_count_and_noise_free() -> None:
    s = make_synthetic_em(MEDIUM, seed=5, n_mitochondria=3, noise=0.0)
    assert 1 <= s.instances.max() <= 3


def test_foreground_and_instances(medium_sample: SyntheticEM, default_sample: SyntheticEM) -> None:
    for s, min_instances in ((medium_sample, 3), (default_sample, 8)):
        fraction = float(s.mitochondria.mean())
        assert 0.02 <= fraction <= 0.15, fraction
        np.testing.assert_array_equal(s.instances > 0, s.mitochondria == 1)
        ids = np.unique(s.instances)[1:]
        assert len(ids) >= min_instances
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # consecutive ids
        assert not np.any((s.membranes == 1) & (s.mitochondria == 1))  # organelles stay inside cells


def test_default_volume_has_touching_instances(default_sample: SyntheticEM) -> None:
    assert _touching_pairs(default_sample.instances)


def test_mitochondria_and_membranes_are_darker_than_cytoplasm(medium_sample: SyntheticEM) -> None:
    s = medium_sample
    mito, mem = s.mitochondria == 1, s.membranes == 1
    cytoplasm = float(s.image[~mito & ~mem].mean())
    assert float(s.image[mito].mean()) < cytoplasm - 20
    assert float(s.image[mem].mean()) < cytoplasm - 20


def test_realistic_histogram(default_sample: SyntheticEM) -> None:
    image = default_sample.image
    counts = np.bincount(image.ravel(), minlength=256) / image.size
    assert counts[0] + counts[255] < 1e-3  # no saturated blocks
    assert 25 < float(image.std()) < 70
    assert 110 < float(image.mean()) < 190


def test_global_threshold_is_not_enough(default_sample: SyntheticEM) -> None:
    # Membranes, vesicles, dense bodies and dark neurites are as dark as mitochondria.
    assert _best_threshold_iou(default_sample.image, default_sample.mitochondria == 1) < 0.5


def test_objects_continue_across_sections(default_sample: SyntheticEM) -> None:
    mask = default_sample.mitochondria == 1
    inter = np.logical_and(mask[1:], mask[:-1]).sum()
    union = np.logical_or(mask[1:], mask[:-1]).sum()
    assert inter / union > 0.5

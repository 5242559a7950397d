"""Training augmentation: joint geometry, label safety, EM artefacts, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from napari_connectomics.config.schema import AugmentationConfig
from napari_connectomics.data.augment import (
    RandMisalignmentd,
    RandMissingSectiond,
    RandMotionBlurd,
    build_augmentation,
    line_kernel,
)
from napari_connectomics.data.conventions import IGNORE_INDEX

ALL_ON = dict(flip=1.0, rotate90=1.0, affine=1.0, elastic=1.0, intensity=1.0, noise=1.0,
              missing_section=1.0, misalignment=1.0, motion_blur=1.0)
ALL_OFF = {k: 0.0 for k in ALL_ON}


def only(**probs: float) -> AugmentationConfig:
    return AugmentationConfig(**{**ALL_OFF, **probs})


def sample(shape: tuple[int, ...], channels: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A smooth random image and a label equal to its threshold (so joint geometry is checkable)."""
    rng = np.random.default_rng(seed)
    image = rng.random((channels, *shape)).astype(np.float32)
    label = (image[:1] > 0.5).astype(np.int64)
    return {"image": image, "label": label}


def copy(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in d.items()}


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "channels", "voxel_size"),
    [(3, (8, 32, 48), 1, None), (3, (12, 24, 24), 2, (1.0, 1.0, 1.0)), (2, (32, 40), 1, None)],
)
def test_shapes_and_dtypes_kept(spatial_dims, shape, channels, voxel_size):
    t = build_augmentation(AugmentationConfig(**ALL_ON), spatial_dims, voxel_size)
    data = sample(shape, channels)
    for seed in range(3):
        t.set_random_state(seed)
        out = t(copy(data))
        assert type(out["image"]) is np.ndarray and type(out["label"]) is np.ndarray
        assert out["image"].dtype == np.float32 and out["label"].dtype == np.int64
        assert out["image"].shape == data["image"].shape
        assert out["label"].shape == data["label"].shape


@pytest.mark.parametrize("voxel_size", [None, (1.0, 1.0, 1.0)])
def test_labels_stay_in_class_set_with_everything_on(voxel_size):
    rng = np.random.default_rng(1)
    label = rng.integers(-1, 3, size=(1, 8, 32, 32)).astype(np.int64)
    image = rng.random((1, 8, 32, 32)).astype(np.float32)
    t = build_augmentation(AugmentationConfig(**ALL_ON), 3, voxel_size)
    for seed in range(5):
        t.set_random_state(seed)
        out = t({"image": image.copy(), "label": label.copy()})
        assert set(np.unique(out["label"])) <= {IGNORE_INDEX, 0, 1, 2}


def test_warp_padding_is_ignore_not_background():
    data = {"image": np.random.default_rng(0).random((1, 4, 32, 32), dtype=np.float32),
            "label": np.ones((1, 4, 32, 32), np.int64)}
    t = build_augmentation(only(affine=1.0), 3)
    seen_ignore = False
    for seed in range(4):
        t.set_random_state(seed)
        values = set(np.unique(t(copy(data))["label"]))
        assert values <= {1, IGNORE_INDEX}
        seen_ignore |= IGNORE_INDEX in values
    assert seen_ignore


def test_anisotropic_elastic_keeps_sections_apart():
    z_marks = np.broadcast_to(np.arange(6)[None, :, None, None], (1, 6, 32, 32)).astype(np.int64)
    data = {"image": z_marks.astype(np.float32), "label": z_marks.copy()}
    t = build_augmentation(only(elastic=1.0, affine=1.0), 3, voxel_size=(30.0, 8.0, 8.0))
    t.set_random_state(3)
    out = t(data)
    for z in range(6):
        assert set(np.unique(out["label"][0, z])) <= {z, IGNORE_INDEX}


@pytest.mark.parametrize(("spatial_dims", "shape"), [(3, (6, 24, 24)), (2, (24, 24)), (3, (6, 16, 24))])
def test_flips_and_rot90_move_image_and_label_together(spatial_dims, shape):
    data = sample(shape)
    t = build_augmentation(only(flip=1.0, rotate90=1.0), spatial_dims)
    changed = False
    for seed in range(4):
        t.set_random_state(seed)
        out = t(copy(data))
        np.testing.assert_array_equal(out["label"], (out["image"][:1] > 0.5).astype(np.int64))
        changed |= not np.array_equal(out["image"], data["image"])
    assert changed


def test_disabled_is_identity():
    data = sample((6, 24, 24))
    t = build_augmentation(AugmentationConfig(enabled=False, **ALL_ON), 3)
    out = t(copy(data))
    np.testing.assert_array_equal(out["image"], data["image"])
    np.testing.assert_array_equal(out["label"], data["label"])


def test_input_arrays_are_not_modified():
    data = sample((6, 24, 24))
    before = copy(data)
    build_augmentation(AugmentationConfig(**ALL_ON), 3)(data)
    np.testing.assert_array_equal(data["image"], before["image"])
    np.testing.assert_array_equal(data["label"], before["label"])


def test_seeded_reproducibility():
    data = sample((6, 24, 24))
    t = build_augmentation(AugmentationConfig(**ALL_ON), 3)
    outs = []
    for seed in (7, 7, 8):
        t.set_random_state(seed)
        outs.append(t(copy(data)))
    np.testing.assert_array_equal(outs[0]["image"], outs[1]["image"])
    np.testing.assert_array_equal(outs[0]["label"], outs[1]["label"])
    assert not np.array_equal(outs[0]["image"], outs[2]["image"])


def changed_sections(before: np.ndarray, after: np.ndarray) -> list[int]:
    return [z for z in range(before.shape[1]) if not np.array_equal(before[:, z], after[:, z])]


def test_missing_section_blanks_exactly_one_section():
    data = sample((8, 16, 16), channels=2)
    t = RandMissingSectiond(prob=1.0)
    for seed in range(3):
        t.set_random_state(seed)
        out = t(copy(data))
        (z,) = changed_sections(data["image"], out["image"])
        means = data["image"].mean(axis=(1, 2, 3))[:, None, None]
        np.testing.assert_allclose(out["image"][:, z], np.broadcast_to(means, (2, 16, 16)), rtol=1e-6)
        np.testing.assert_array_equal(out["label"], data["label"])


def test_missing_section_from_config():
    data = sample((8, 16, 16))
    out = build_augmentation(only(missing_section=1.0), 3)(copy(data))
    assert len(changed_sections(data["image"], out["image"])) == 1
    np.testing.assert_array_equal(out["label"], data["label"])


def test_misalignment_shifts_image_and_label_together():
    data = sample((8, 24, 24))
    t = RandMisalignmentd(prob=1.0, max_shift=3)
    for seed in range(4):
        t.set_random_state(seed)
        out = t(copy(data))
        changed = changed_sections(data["image"], out["image"])
        z0 = changed[0]
        assert z0 >= 1 and changed == list(range(z0, 8))
        np.testing.assert_array_equal(out["label"][:, :z0], data["label"][:, :z0])
        dy, dx = t._shift
        src = np.roll(data["image"][0, z0:], (dy, dx), axis=(1, 2))
        valid = out["label"][0, z0:] != IGNORE_INDEX
        assert (~valid).any()
        # Where the label is defined, both moved by the same (dy, dx) ...
        np.testing.assert_array_equal(out["image"][0, z0:][valid], src[valid])
        np.testing.assert_array_equal(out["label"][0, z0:][valid], (src[valid] > 0.5).astype(np.int64))
        # ... and the vacated strip is exactly what the shift uncovered.
        assert (~valid).sum() == (8 - z0) * (24 * 24 - (24 - abs(dy)) * (24 - abs(dx)))


def test_motion_blur_changes_one_section_only():
    data = sample((8, 24, 24))
    t = RandMotionBlurd(prob=1.0)
    for seed in range(3):
        t.set_random_state(seed)
        out = t(copy(data))
        assert len(changed_sections(data["image"], out["image"])) == 1
        np.testing.assert_array_equal(out["label"], data["label"])
    out = build_augmentation(only(motion_blur=1.0), 3)(copy(data))
    assert len(changed_sections(data["image"], out["image"])) == 1


def test_line_kernel_is_normalised_line():
    k = line_kernel(5, 0.0)
    assert k.shape == (5, 5) and np.isclose(k.sum(), 1.0)
    assert np.count_nonzero(k) == 5 and np.count_nonzero(k[2]) == 5


def test_2d_config_skips_em_transforms():
    t = build_augmentation(only(missing_section=1.0, misalignment=1.0, motion_blur=1.0), 2)
    names = {type(x).__name__ for x in t.transforms}
    assert not names & {"RandMissingSectiond", "RandMisalignmentd", "RandMotionBlurd"}
    data = sample((24, 24))
    out = t(copy(data))
    np.testing.assert_array_equal(out["image"], data["image"])
    np.testing.assert_array_equal(out["label"], data["label"])


def test_bad_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        build_augmentation(AugmentationConfig(), 4)

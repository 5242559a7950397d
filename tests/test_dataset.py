"""Patch sampling: shapes, determinism, foreground/annotation-aware draws, z-ranges, padding, workers."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from napari_connectomics.config.schema import AugmentationConfig
from napari_connectomics.data.augment import build_augmentation
from napari_connectomics.data.conventions import IGNORE_INDEX
from napari_connectomics.data.dataset import PatchDataset, ValidationPatches, VolumePair, split_z
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.data.targets import labels_to_classes
from napari_connectomics.data.volumes import open_volume


@pytest.fixture(scope="module")
def em():
    return make_synthetic_em(shape=(16, 96, 96), seed=0)


def pair(image, label, z_range=None) -> VolumePair:
    return VolumePair(open_volume(image), None if label is None else open_volume(label), z_range)


def sparse_foreground_volume(shape=(16, 128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Noise image with one small foreground cube: uniform patches rarely see it."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=shape, dtype=np.uint8)
    label = np.zeros(shape, np.uint8)
    label[10:13, 90:96, 20:26] = 1
    return image, label


def fraction_with(ds, predicate) -> float:
    return float(np.mean([predicate(ds[i]["label"]) for i in range(len(ds))]))


@pytest.mark.parametrize(
    ("spatial_dims", "patch", "expected"),
    [(3, (8, 32, 32), (8, 32, 32)), (3, (4, 48, 32), (4, 48, 32)), (2, (40, 24), (40, 24))],
)
def test_item_shapes_and_dtypes(em, spatial_dims, patch, expected):
    ds = PatchDataset([pair(em.image, em.mitochondria)], patch, spatial_dims=spatial_dims,
                      label_mode="dense", target="binary", samples_per_epoch=6, seed=1,
                      augment=build_augmentation(AugmentationConfig(), spatial_dims))
    assert len(ds) == 6
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].dtype == torch.float32 and item["label"].dtype == torch.int64
        assert tuple(item["image"].shape) == (1, *expected)
        assert tuple(item["label"].shape) == (1, *expected)
        assert set(item["label"].unique().tolist()) <= {IGNORE_INDEX, 0, 1}
    with pytest.raises(IndexError):
        ds[6]


def test_multichannel_image_and_2d_image_as_one_section():
    rng = np.random.default_rng(0)
    image = rng.random((2, 6, 40, 40)).astype(np.float32)
    label = (image[0] > 0.5).astype(np.uint8)
    ds = PatchDataset([pair(image, label)], (4, 16, 16), spatial_dims=3, label_mode="dense",
                      target="binary", samples_per_epoch=2, in_channels=2)
    assert tuple(ds[0]["image"].shape) == (2, 4, 16, 16)
    flat = PatchDataset([pair(image[0, 0], label[0])], (16, 16), spatial_dims=2, label_mode="dense",
                        target="binary", samples_per_epoch=2)
    assert tuple(flat[0]["image"].shape) == (1, 16, 16)
    with pytest.raises(ValueError, match="channel"):
        PatchDataset([pair(image, label)], (4, 16, 16), spatial_dims=3, label_mode="dense", target="binary")


def test_items_are_deterministic_per_seed_epoch_and_index(em):
    def make(seed):
        return PatchDataset([pair(em.image, em.mitochondria)], (8, 32, 32), spatial_dims=3,
                            label_mode="dense", target="binary", samples_per_epoch=4, seed=seed,
                            augment=build_augmentation(AugmentationConfig(noise=1.0), 3))

    a, b = make(5), make(5)
    for i in range(4):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["label"], b[i]["label"])
        assert torch.equal(a[i]["image"], a[i]["image"])
    epoch0 = [a[i]["image"] for i in range(4)]
    a.set_epoch(1)
    assert a.epoch == 1
    assert not any(torch.equal(x, a[i]["image"]) for i, x in enumerate(epoch0))
    a.set_epoch(0)
    assert all(torch.equal(x, a[i]["image"]) for i, x in enumerate(epoch0))
    assert not torch.equal(make(6)[0]["image"], epoch0[0])


def test_balanced_and_rejection_sampling_find_sparse_foreground():
    image, label = sparse_foreground_volume()
    has_fg = lambda lab: bool((lab >= 1).any())  # noqa: E731
    kwargs = dict(spatial_dims=3, label_mode="dense", target="binary", samples_per_epoch=60, seed=0)
    p = [pair(image, label)]
    none = fraction_with(PatchDataset(p, (8, 32, 32), foreground_sampling="none", **kwargs), has_fg)
    balanced = fraction_with(
        PatchDataset(p, (8, 32, 32), foreground_sampling="balanced", foreground_ratio=0.5, **kwargs), has_fg)
    rejection = fraction_with(PatchDataset(p, (8, 32, 32), foreground_sampling="rejection", **kwargs), has_fg)
    assert none < 0.25
    assert balanced >= 0.5 * 0.8 and balanced > none + 0.2
    assert rejection > none + 0.2


def test_sparse_strokes_are_in_nearly_every_patch():
    shape = (32, 256, 256)
    image = np.random.default_rng(1).integers(0, 255, size=shape, dtype=np.uint8)
    label = np.zeros(shape, np.uint8)  # 0: not annotated
    label[5, 100, 40:90] = 1  # a background stroke
    label[20, 30:60, 200] = 2  # a foreground stroke
    label[21, 31:61, 201] = 2
    has_annotation = lambda lab: bool((lab != IGNORE_INDEX).any())  # noqa: E731
    for mode in ("none", "balanced", "rejection"):
        ds = PatchDataset([pair(image, label)], (8, 64, 64), spatial_dims=3, label_mode="sparse",
                          target="binary", foreground_sampling=mode, samples_per_epoch=40)
        assert fraction_with(ds, has_annotation) >= 0.95, mode


@pytest.mark.parametrize(("spatial_dims", "patch"), [(2, (16, 16)), (3, (4, 16, 16)), (3, (8, 16, 16))])
def test_z_range_is_respected(spatial_dims, patch):
    shape = (20, 32, 32)
    marks = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None], shape).copy()
    label = np.ones(shape, np.uint8)
    z_range = (4, 10)
    ds = PatchDataset([pair(marks, label, z_range)], patch, spatial_dims=spatial_dims, normalize="none",
                      label_mode="dense", target="binary", samples_per_epoch=30)
    seen = set()
    for i in range(len(ds)):
        seen |= set(ds[i]["image"].unique().tolist())
    assert seen <= set(range(*z_range)) and len(seen) > 1


def test_too_small_volume_is_padded_with_ignored_labels():
    rng = np.random.default_rng(0)
    image = rng.random((4, 20, 20)).astype(np.float32)
    label = np.ones((4, 20, 20), np.uint8)
    ds = PatchDataset([pair(image, label)], (8, 32, 32), spatial_dims=3, label_mode="dense",
                      target="binary", samples_per_epoch=3)
    for i in range(3):
        item = ds[i]
        assert tuple(item["image"].shape) == (1, 8, 32, 32)
        assert torch.isfinite(item["image"]).all()
        assert int((item["label"] == IGNORE_INDEX).sum()) == 8 * 32 * 32 - 4 * 20 * 20
        assert int((item["label"] == 1).sum()) == 4 * 20 * 20


def test_dataloader_workers_with_hdf5_volumes(tmp_path, em):
    path = tmp_path / "em.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=em.image, chunks=(4, 32, 32))
        f.create_dataset("label", data=em.mitochondria, chunks=(4, 32, 32))
    ds = PatchDataset([pair(f"{path}:image", f"{path}:label", (0, 12))], (4, 32, 32), spatial_dims=3,
                      label_mode="dense", target="binary", samples_per_epoch=8, seed=3,
                      augment=build_augmentation(AugmentationConfig(), 3))
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2]["image"], ds[2]["image"])
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        images = torch.cat([batch["image"] for batch in loader])
        labels = torch.cat([batch["label"] for batch in loader])
        expected = [ds[i] for i in range(len(ds))]
        assert torch.equal(images, torch.stack([e["image"] for e in expected]))
        assert torch.equal(labels, torch.stack([e["label"] for e in expected]))


def test_mismatched_shapes_give_one_line_error():
    image, label = np.zeros((8, 32, 32), np.uint8), np.zeros((8, 32, 30), np.uint8)
    with pytest.raises(ValueError) as err:
        PatchDataset([pair(image, label)], (4, 16, 16), spatial_dims=3, label_mode="dense", target="binary")
    message = str(err.value)
    assert "\n" not in message
    assert "(8, 32, 32)" in message and "(8, 32, 30)" in message and "numpy array" in message


def test_missing_label_is_an_error():
    with pytest.raises(ValueError, match="no label"):
        ValidationPatches([pair(np.zeros((4, 16, 16)), None)], (4, 16, 16), spatial_dims=3,
                          label_mode="dense", target="binary")


def test_bad_arguments():
    image, label = np.zeros((8, 32, 32), np.uint8), np.zeros((8, 32, 32), np.uint8)
    p = [pair(image, label)]
    with pytest.raises(ValueError, match="patch_size"):
        PatchDataset(p, (16, 16), spatial_dims=3, label_mode="dense", target="binary")
    with pytest.raises(ValueError, match="foreground_sampling"):
        PatchDataset(p, (4, 16, 16), spatial_dims=3, label_mode="dense", target="binary",
                     foreground_sampling="always")
    with pytest.raises(ValueError, match="z_range"):
        PatchDataset([pair(image, label, (6, 6))], (4, 16, 16), spatial_dims=3, label_mode="dense",
                     target="binary")


@pytest.mark.parametrize(
    ("n_z", "fraction", "expected"),
    [(10, 0.2, ((0, 8), (8, 10))), (2, 0.01, ((0, 1), (1, 2))), (2, 0.9, ((0, 1), (1, 2))),
     (3, 0.5, ((0, 1), (1, 3))), (5, 0.0, ((0, 5), (5, 5)))],
)
def test_split_z(n_z, fraction, expected):
    assert split_z(n_z, fraction) == expected


@pytest.mark.parametrize(("n_z", "fraction"), [(1, 0.2), (0, 0.2), (10, 1.0), (10, -0.1)])
def test_split_z_errors(n_z, fraction):
    with pytest.raises(ValueError):
        split_z(n_z, fraction)


def test_validation_grid_is_deterministic_and_matches_the_volume(em):
    train, val = split_z(16, 0.25)
    p = [pair(em.image, em.instances, val)]
    kwargs = dict(spatial_dims=3, label_mode="dense", target="instance")
    a = ValidationPatches(p, (4, 40, 40), **kwargs)
    b = ValidationPatches(p, (4, 40, 40), **kwargs)
    assert len(a) == 1 * 3 * 3 and a.locations == b.locations
    full = labels_to_classes(em.instances, "dense", "instance")
    for i, (_, (z, y, x)) in enumerate(a.locations):
        assert z == val[0]
        assert torch.equal(a[i]["image"], b[i]["image"])
        # contours at the patch faces agree with the whole volume's (1-voxel read margin)
        np.testing.assert_array_equal(a[i]["label"][0].numpy(), full[z:z + 4, y:y + 40, x:x + 40])


def test_validation_random_set_includes_foreground():
    image, label = sparse_foreground_volume()
    kwargs = dict(spatial_dims=2, label_mode="dense", target="binary", n_patches=10, foreground_ratio=0.5)
    a = ValidationPatches([pair(image, label)], (32, 32), **kwargs)
    b = ValidationPatches([pair(image, label)], (32, 32), **kwargs)
    assert len(a) == 10 and a.locations == b.locations
    assert sum(bool((a[i]["label"] >= 1).any()) for i in range(10)) >= 5
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(10))

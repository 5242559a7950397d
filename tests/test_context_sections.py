"""2.5D input (data.context_sections): the channel order and the clamped ends, lazy reading of only
the sections needed, the same channels in training patches and prediction input, the network built
for them, a real training run whose checkpoint predicts with them, and one-line refusals."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch
import zarr

from napari_connectomics.config import ConfigError, context_step, load_config, network_in_channels
from napari_connectomics.data.dataset import PatchDataset, ValidationPatches, VolumePair
from napari_connectomics.data.normalize import intensity_stats
from napari_connectomics.data.sections import SectionContext
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.inference.input import prepare_input
from napari_connectomics.inference.predict import PredictOptions, predict
from napari_connectomics.models import build_model
from napari_connectomics.training import TrainingData, load_model_from_checkpoint, train

TINY_2D = ["model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[4,8]",
           "model.num_res_units=0", "data.patch_size=[16,16]"]


def z_volume(shape=(9, 12, 10)) -> np.ndarray:
    """Every voxel holds its own z."""
    return np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape).copy()


def expected(z: int, sections: int, step: int, n_z: int) -> list[int]:
    return [min(max(z + step * i, 0), n_z - 1) for i in range(-sections, sections + 1)]


def test_automatic_step_follows_the_voxel_size():
    def step(voxel, explicit=None):
        cfg = load_config(overrides=[f"data.voxel_size={voxel}"]
                          + ([f"data.context_step={explicit}"] if explicit else []))
        return context_step(cfg)

    assert step([40, 4, 4]) == 1  # serial-section EM: z 10x the in-plane size
    assert step([10, 5, 5]) == 1  # exactly twice: still anisotropic
    assert step([8, 5, 5]) == 2
    assert step([5, 5, 5]) == 2  # isotropic FIB-SEM (Lucchi)
    assert step([2.5, 5, 5]) == 4
    assert step([5, 5, 5], explicit=3) == 3


@pytest.mark.parametrize("sections,step", [(1, 1), (2, 1), (2, 3), (3, 4)])
def test_channels_of_a_section_are_its_neighbours_clamped_at_the_volume_ends(tmp_path, sections, step):
    volume = z_volume()
    path = tmp_path / "z.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=volume, chunks=(1, 12, 10))
    source = prepare_input(f"{path}:raw", 1, context=SectionContext(sections, step))
    data = source.read(source.whole())
    assert data.shape == (2 * sections + 1, 9, 12, 10) and data.dtype == np.float32
    for z in range(9):
        assert data[:, z, 0, 0].tolist() == expected(z, sections, step, 9)
        assert (data[:, z] == data[:, z, :1, :1]).all()
    # a region of interest clamps at the volume's ends, not at the region's
    roi = prepare_input(f"{path}:raw", 1, (slice(3, 5), slice(2, 8), slice(0, 4)),
                        context=SectionContext(sections, step))
    part = roi.read(roi.whole())
    assert part.shape == (2 * sections + 1, 2, 6, 4)
    assert [part[:, i, 0, 0].tolist() for i in range(2)] == [expected(z, sections, step, 9) for z in (3, 4)]


class Counting:
    """An array that records the z ranges it is asked for."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.asked: list[tuple[int, int]] = []

    def __getitem__(self, index):
        z = index[0]
        self.asked.append((z.start, z.stop))
        return self.array[index]


def test_only_the_needed_sections_are_read():
    array = Counting(z_volume((30, 8, 8)))
    source = prepare_input(array, 1, context=SectionContext(2, 5))
    data = source.read((slice(14, 15), slice(0, 8), slice(0, 8)))
    assert data[:, 0, 0, 0].tolist() == [4, 9, 14, 19, 24]
    assert sorted(array.asked) == [(4, 5), (9, 10), (14, 15), (19, 20), (24, 25)]
    array.asked.clear()
    source.read((slice(10, 14), slice(0, 8), slice(0, 8)))  # runs of consecutive sections at once
    assert array.asked == [(0, 4), (5, 9), (10, 14), (15, 19), (20, 24)]
    array.asked.clear()
    near = prepare_input(array, 1, context=SectionContext(2, 1))
    near.read((slice(10, 14), slice(0, 8), slice(0, 8)))
    assert array.asked == [(8, 16)]


def test_multichannel_images_give_each_channels_sections_in_turn():
    volume = np.stack([z_volume(), 100 + z_volume()])  # (2, z, y, x): channel 1 is 100 + z
    source = prepare_input(volume, 2, context=SectionContext(1, 2))
    data = source.read((slice(0, 2), slice(0, 4), slice(0, 4)))
    assert data.shape == (6, 2, 4, 4)
    assert data[:, 0, 0, 0].tolist() == [0, 0, 2, 100, 100, 102]
    assert data[:, 1, 0, 0].tolist() == [0, 1, 3, 100, 101, 103]


def test_training_patches_have_2k_plus_1_channels_in_order(tmp_path):
    volume = z_volume((12, 40, 40))
    labels = (np.arange(40)[None, :, None] % 7 == 0).astype(np.uint8) * np.ones((12, 40, 40), np.uint8)
    store = zarr.open_group(str(tmp_path / "pair.zarr"), mode="w")
    store.create_array("raw", shape=volume.shape, dtype=volume.dtype, chunks=(1, 40, 40))[...] = volume
    store.create_array("label", shape=labels.shape, dtype=labels.dtype, chunks=(4, 40, 40))[...] = labels
    pair = VolumePair(f"{tmp_path / 'pair.zarr'}:raw", f"{tmp_path / 'pair.zarr'}:label")
    context = SectionContext(2, 3)
    common = dict(spatial_dims=2, label_mode="dense", target="binary", normalize="none", context=context)
    train_set = PatchDataset([pair], [16, 16], samples_per_epoch=6, seed=3, **common)
    for i in range(len(train_set)):
        item = train_set[i]
        assert item["image"].shape == (5, 16, 16) and item["label"].shape == (1, 16, 16)
        z = int(item["image"][2, 0, 0])
        assert item["image"][:, 0, 0].tolist() == expected(z, 2, 3, 12)
    val_set = ValidationPatches([pair], [16, 16], n_patches=4, seed=0, **common)
    for (_, (z, _y, _x)), item in zip(val_set.locations, val_set):
        assert item["image"][:, 0, 0].tolist() == expected(z, 2, 3, 12)


def test_prediction_input_equals_the_training_patch(tmp_path):
    """The network sees the same values for a section in training and in prediction."""
    em = make_synthetic_em(shape=(16, 48, 48), seed=2)
    path = tmp_path / "em.h5"
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = em.image, em.mitochondria
    context = SectionContext(1, 2)
    val_set = ValidationPatches([VolumePair(f"{path}:image", f"{path}:label")], [16, 16], spatial_dims=2,
                                label_mode="dense", target="binary", normalize="percentile",
                                n_patches=5, seed=1, context=context)
    source = prepare_input(f"{path}:image", 1, context=context)
    source = dataclasses.replace(source, normalize="percentile", stats=intensity_stats(source.volume))
    for (_, (z, y, x)), item in zip(val_set.locations, val_set):
        window = source.read((slice(z, z + 1), slice(y, y + 16), slice(x, x + 16)))[:, 0]
        np.testing.assert_array_equal(item["image"].numpy(), window)


def test_the_network_is_built_for_the_sections():
    cfg = load_config(overrides=[*TINY_2D, "data.context_sections=2"])
    assert network_in_channels(cfg) == 5
    model = build_model(cfg).eval()
    assert model(torch.zeros(1, 5, 16, 16)).shape == (1, 2, 16, 16)
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 1, 16, 16))
    two = load_config(overrides=[*TINY_2D, "model.in_channels=2", "data.context_sections=1"])
    assert network_in_channels(two) == 6 and two.model.in_channels == 2  # the config keeps the image's


def test_training_with_context_and_its_checkpoint_predicts_with_the_same_channels(tmp_path):
    em = make_synthetic_em(shape=(16, 64, 64), seed=1)
    path = tmp_path / "em.h5"
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = em.image, em.mitochondria
    cfg = load_config(overrides=[
        *TINY_2D[:-1], "data.patch_size=[32,32]", "data.context_sections=1", "data.voxel_size=[30,6,6]",
        "data.batch_size=2", "data.samples_per_epoch=4", "training.val_patches=2", "training.max_steps=2",
        "training.log_every_n_steps=1", f"training.output_dir={tmp_path / 'runs'}", "system.torch_threads=2"])
    result = train(cfg, data=TrainingData(train=[(f"{path}:image", f"{path}:label")]))
    assert result.global_step == 2
    model, stored = load_model_from_checkpoint(result.last_checkpoint)
    model.eval()  # a forward pass in training mode would move its batch-norm statistics
    assert stored.data.context_sections == 1 and network_in_channels(stored) == 3
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    options = PredictOptions(device="cpu", output_dtype="float32")
    from_file = predict(result.last_checkpoint, f"{path}:image", options)
    assert from_file.probabilities.shape == (2, 16, 64, 64)
    # the same as the model with its config on the array: the checkpoint's context was used
    from_array = predict(model, em.image, options, cfg=stored)
    np.testing.assert_allclose(from_file.probabilities, from_array.probabilities, atol=1e-6)
    without = load_config(overrides=[*TINY_2D[:-1], "data.patch_size=[32,32]"])
    with pytest.raises(RuntimeError):  # without the context the network gets 1 channel, not 3
        predict(model, em.image, options, cfg=without)


def test_bad_context_is_one_line():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["model.spatial_dims=3", "data.context_sections=2"])
    assert "data.context_sections" in str(err.value) and "model.spatial_dims=2" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="data.context_sections: -1 is not valid; must be at least 0"):
        load_config(overrides=[*TINY_2D, "data.context_sections=-1"])
    with pytest.raises(ConfigError, match="data.context_step"):
        load_config(overrides=[*TINY_2D, "data.context_sections=1", "data.context_step=0"])
    with pytest.raises(ValueError, match="context sections must be 0 or more"):
        SectionContext(-1)
    volume = z_volume((8, 32, 32))
    with pytest.raises(ValueError, match="2D network") as err:
        PatchDataset([VolumePair(volume, (volume > 4).astype(np.uint8))], [4, 16, 16], spatial_dims=3,
                     label_mode="dense", target="binary", context=SectionContext(1))
    assert "\n" not in str(err.value)


def test_bioimageio_export_refuses_a_network_with_context(tmp_path):
    pytest.importorskip("bioimageio.spec")
    from omegaconf import OmegaConf

    from napari_connectomics.inference.bioimageio_export import BioimageioError, export_bioimageio
    from napari_connectomics.models.checkpoint import CONFIG_KEY, atomic_torch_save

    cfg = load_config(overrides=[*TINY_2D, "data.context_sections=1"])
    model = build_model(cfg)
    checkpoint = atomic_torch_save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                                    CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}, tmp_path / "c.ckpt")
    with pytest.raises(BioimageioError, match="data.context_sections=0") as err:
        export_bioimageio(checkpoint, tmp_path / "model.zip")
    assert "\n" not in str(err.value) and not (tmp_path / "model.zip").exists()

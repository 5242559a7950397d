"""Images a lab really has, through the library and the real CLI: every dtype, channel layout and shape
either trains and segments (the right shape and dtype, finite) or is refused with one line that says what
is wrong and what to do, before anything is written (no output, no run folder, no partial file).

Reliability sweep, issue 11 item 1 (docs/reliability.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from omegaconf import OmegaConf

from napari_connectomics.config import load_config
from napari_connectomics.inference.predict import predict
from napari_connectomics.models import build_model
from napari_connectomics.models.checkpoint import CONFIG_KEY, atomic_torch_save
from napari_connectomics.training.datamodule import TrainingData, VolumeDataModule

SHAPE = (8, 32, 32)
NET_3D = ["model.architecture=monai_unet", "model.spatial_dims=3", "model.filters=[4,8]", "data.patch_size=[8,16,16]"]
NET_2D = ["model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[4,8]", "data.patch_size=[16,16]"]
RUN = ["data.batch_size=1", "data.samples_per_epoch=2", "training.val_patches=1", "data.voxel_size=[50,5,5]",
       "system.accelerator=cpu"]


def _grey() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, SHAPE)


def _with(value: float) -> np.ndarray:
    image = _grey().astype(np.float32)
    image[3, 5, 5] = value
    return image


# name -> image (z, y, x unless the name says otherwise); all of these work
WORKS = {
    "uint8": lambda: _grey().astype(np.uint8),
    "uint16 full range": lambda: (_grey() * 257).astype(np.uint16),
    "int16 negative": lambda: (_grey() * 100 - 12800).astype(np.int16),
    "int32": lambda: _grey().astype(np.int32),
    "uint64": lambda: _grey().astype(np.uint64),
    "float16": lambda: _grey().astype(np.float16),
    "float32 0-1": lambda: (_grey() / 255).astype(np.float32),
    "float64 far outside 0-255": lambda: _grey().astype(np.float64) * 1e4 - 3e5,
    "bool": lambda: _grey() > 127,
    "constant": lambda: np.full(SHAPE, 7, np.uint8),
    "constant float zero": lambda: np.zeros(SHAPE, np.float32),
    "(1, z, y, x)": lambda: _grey().astype(np.uint8)[None],
}
# name -> (image, fragments of the one-line error)
REFUSED = {
    "RGB (y, x, 3)": (lambda: np.stack([_grey()[0]] * 3, -1).astype(np.uint8), ["colour", "image.mean(axis=-1)"]),
    "RGB (z, y, x, 3)": (lambda: np.stack([_grey()] * 3, -1).astype(np.uint8), ["colour", "moveaxis"]),
    "RGBA (z, y, x, 4)": (lambda: np.stack([_grey()] * 4, -1).astype(np.uint8), ["colour", "4 values"]),
    "(3, z, y, x) for a 1-channel net": (lambda: np.stack([_grey()] * 3).astype(np.uint8), ["1 input channel", "3"]),
    "5D (1, 1, z, y, x)": (lambda: _grey().astype(np.uint8)[None, None], ["z, y, x volume"]),
    "NaN": (lambda: _with(np.nan), ["NaN", "nan_to_num"]),
    "all NaN": (lambda: np.full(SHAPE, np.nan, np.float32), ["NaN", "nan_to_num"]),
}


def checkpoint(path: Path, net: list[str]) -> Path:
    cfg = load_config(overrides=net)
    model = build_model(cfg)
    state = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
             CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}
    return atomic_torch_save(state, path)


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nets")
    return {"3d": checkpoint(folder / "net3d.ckpt", NET_3D), "2d": checkpoint(folder / "net2d.ckpt", NET_2D)}


def one_line(message: str, *fragments: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message


def assert_probabilities(probabilities, spatial: tuple[int, ...]) -> None:
    values = np.asarray(probabilities[...])
    assert values.shape == (2, *spatial) and values.dtype == np.float16
    values = values.astype(np.float32)
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1


# --- library: predict() ----------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKS)
def test_predict_works(nets, name):
    image = WORKS[name]()
    result = predict(nets["3d"], image)
    assert_probabilities(result.probabilities, SHAPE)


@pytest.mark.parametrize("name", ["uint8", "bool", "float64 far outside 0-255"])
def test_predict_a_2d_image_with_a_2d_network(nets, name):
    image = WORKS[name]()[0]
    assert_probabilities(predict(nets["2d"], image).probabilities, (1, *SHAPE[1:]))


def test_predict_inf_is_clipped_by_the_normalisation(nets):
    """data.normalize=percentile (the default) clips +inf to 1: the network never sees it."""
    assert_probabilities(predict(nets["3d"], _with(np.inf)).probabilities, SHAPE)


@pytest.mark.parametrize("name", [*REFUSED, "2D image for a 3D net"])
def test_predict_refused_in_one_line_and_writes_nothing(nets, tmp_path, name):
    image, fragments = REFUSED.get(name) or (lambda: _grey()[0].astype(np.uint8), ["2D network", "z-stack"])
    with pytest.raises(ValueError) as err:
        predict(nets["3d"], image(), output=tmp_path / "pred.zarr")
    one_line(str(err.value), *fragments)
    assert list(tmp_path.iterdir()) == []


# --- library: the training data module -------------------------------------------------------


def first_batch(net: list[str], image, label) -> np.ndarray:
    cfg = load_config(overrides=[*net, *RUN])
    data = VolumeDataModule(cfg, TrainingData(train=[(image, label)]))
    data.setup("fit")
    return next(iter(data.train_dataloader()))["image"].numpy()


@pytest.mark.parametrize("name", WORKS)
def test_training_patches(name):
    """Anisotropic voxels (50 x 5 x 5) with the default augmentation; patches are finite float32."""
    label = (_grey() > 150).astype(np.uint8)
    batch = first_batch(NET_3D, WORKS[name](), label)
    assert batch.shape == (1, 1, 8, 16, 16) and batch.dtype == np.float32 and np.isfinite(batch).all()


def test_training_patches_of_a_2d_image_with_a_2d_network():
    batch = first_batch(NET_2D, _grey()[0].astype(np.uint16), (_grey()[0] > 150).astype(np.uint8))
    assert batch.shape == (1, 1, 16, 16) and np.isfinite(batch).all()


@pytest.mark.parametrize("name, image, fragments", [
    ("RGB (z, y, x, 3)", lambda: np.stack([_grey()] * 3, -1).astype(np.uint8), ["colour", "image.mean(axis=-1)"]),
    ("(3, z, y, x) for a 1-channel net", lambda: np.stack([_grey()] * 3).astype(np.uint8),
     ["3 channel(s)", "model.in_channels=3"]),
    ("2D image for a 3D net", lambda: _grey()[0].astype(np.uint8), ["single section", "spatial_dims=2"]),
    ("NaN", lambda: _with(np.nan), ["NaN", "nan_to_num"]),
    ("inf", lambda: _with(np.inf), ["infinite", "nan_to_num"]),
])
def test_training_refused_in_one_line(name, image, fragments):
    image = image()
    label = (_grey() > 150).astype(np.uint8)
    if image.ndim == 2:
        label = label[0]
    with pytest.raises(ValueError) as err:
        first_batch(NET_3D, image, label)
    one_line(str(err.value), *fragments)


def test_training_refuses_rgb_section_with_2d_network():
    image = np.stack([_grey()[0]] * 3, -1).astype(np.uint8)
    with pytest.raises(ValueError) as err:
        first_batch(NET_2D, image, (_grey()[0] > 150).astype(np.uint8))
    one_line(str(err.value), "colour")


# --- the real CLI --------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_connectomics", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def cli_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, exactly one error line (the last), no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in result.stderr, result.stderr[-2000:]
    one_line(errors[0], *fragments)


def save(folder: Path, name: str, image: np.ndarray) -> str:
    """The image in the format a lab would have it in: TIFF, HDF5 or .npy, by the name's suffix."""
    path = folder / name
    if path.suffix == ".tif":
        tifffile.imwrite(path, image, photometric="rgb" if image.shape[-1] == 3 else "minisblack")
        return str(path)
    if path.suffix == ".h5":
        with h5py.File(path, "w") as file:
            file["raw"] = image
        return f"{path}:raw"
    np.save(path, image)
    return str(path)


@pytest.mark.parametrize("file, image", [
    ("uint16.tif", WORKS["uint16 full range"]),
    ("bool.npy", WORKS["bool"]),
    ("int32.h5", WORKS["int32"]),
    ("float64.npy", WORKS["float64 far outside 0-255"]),
    ("constant.h5", WORKS["constant"]),
])
def test_cli_predict_works(nets, tmp_path, file, image):
    source = save(tmp_path, file, image())
    out = tmp_path / "pred.zarr"
    result = cli("predict", "--checkpoint", str(nets["3d"]), "--input", source, "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert_probabilities(zarr.open_array(str(out), path="probabilities", mode="r"), SHAPE)


@pytest.mark.parametrize("file, image, fragments", [
    ("rgb.tif", REFUSED["RGB (y, x, 3)"][0], ["rgb.tif", "colour"]),
    ("rgba.npy", REFUSED["RGBA (z, y, x, 4)"][0], ["rgba.npy", "colour"]),
    ("channels.npy", REFUSED["(3, z, y, x) for a 1-channel net"][0], ["channels.npy", "1 input channel"]),
    ("section.tif", lambda: _grey()[0].astype(np.uint8), ["2D network", "z-stack"]),
    ("nan.h5", REFUSED["NaN"][0], ["nan.h5", "NaN", "nan_to_num"]),
])
def test_cli_predict_refused_and_writes_nothing(nets, tmp_path, file, image, fragments):
    source = save(tmp_path, file, image())
    before = sorted(tmp_path.iterdir())
    result = cli("predict", "--checkpoint", str(nets["3d"]), "--input", source, "--output", str(tmp_path / "p.zarr"))
    cli_error(result, *fragments)
    assert sorted(tmp_path.iterdir()) == before  # no output, no hidden partial store


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train") / "stack.h5"
    with h5py.File(path, "w") as file:
        file["uint16"] = WORKS["uint16 full range"]()
        file["bool"] = WORKS["bool"]()
        file["nan"] = REFUSED["NaN"][0]()
        file["rgb"] = REFUSED["RGB (z, y, x, 3)"][0]()
        file["label"] = (_grey() > 150).astype(np.uint8)
    return path


def train(stack: Path, key: str, runs: Path) -> subprocess.CompletedProcess:
    return cli("train", f"data.train_image={stack}:{key}", f"data.train_label={stack}:label",
               f"training.output_dir={runs}", "training.max_steps=2", *NET_3D, *RUN)


@pytest.mark.parametrize("key", ["uint16", "bool"])
def test_cli_train_two_steps_on_anisotropic_voxels(stack, tmp_path, key):
    result = train(stack, key, tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "last checkpoint" in result.stdout
    assert list((tmp_path / "runs").rglob("last.ckpt"))


@pytest.mark.parametrize("key, fragments", [("nan", ["NaN", "nan_to_num"]), ("rgb", ["colour", "image.mean"])])
def test_cli_train_refused_before_a_run_folder_is_made(stack, tmp_path, key, fragments):
    result = train(stack, key, tmp_path / "runs")
    cli_error(result, f"stack.h5:{key}", *fragments)
    assert not (tmp_path / "runs").exists()

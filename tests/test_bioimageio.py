"""BioImage.IO model packages: `export-bioimageio`, and `predict --checkpoint model.zip` (ours and
other zoo models), offline. Tiny networks and volumes; bioimageio.core runs its own model test."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

pytest.importorskip("bioimageio.core")

from conftest import cli_command, tiny_checkpoint  # noqa: E402
from zoo_packages import ZooConv, cfg_container, tiny_2d_checkpoint, zoo_package  # noqa: E402
from napari_connectomics.config import load_config  # noqa: E402
from napari_connectomics.inference.bioimageio_export import export_bioimageio  # noqa: E402
from napari_connectomics.models.bioimageio import (  # noqa: E402
    BioimageioError,
    bioimageio_config,
    is_bioimageio_source,
)
from napari_connectomics.models.checkpoint import CONFIG_KEY, atomic_torch_save  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def offline(offline_bioimageio):
    """Every test of this module offline (conftest.offline_bioimageio)."""
    return offline_bioimageio


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`napari-connectomics ARGS` in a subprocess, with this module's bioimageio cache."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    from napari_connectomics.data.synthetic import make_synthetic_em

    path = tmp_path_factory.mktemp("volume") / "em.npy"
    np.save(path, make_synthetic_em(shape=(16, 72, 56), seed=4).image[:4])  # 4 x 72 x 56
    return path


@pytest.fixture(scope="module")
def package_2d(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, exported package) of a tiny 2D network, without the package test (run below)."""
    folder = tmp_path_factory.mktemp("export2d")
    checkpoint = tiny_2d_checkpoint(folder / "tiny2d.ckpt")
    result = export_bioimageio(checkpoint, folder / "tiny2d.zip", test=False)
    return checkpoint, result.path


# --- (a) the packages pass bioimageio.core's test --------------------------------------------


def _test_model(path: Path) -> None:
    import bioimageio.core

    summary = bioimageio.core.test_model(str(path), devices=["cpu"])
    failed = [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    names = [d.name for d in summary.details]
    assert any("Reproduce test outputs" in n and "pytorch_state_dict" in n for n in names)
    assert any("Reproduce test outputs" in n and "torchscript" in n for n in names)


def test_2d_package_passes_bioimageio_test(package_2d):
    _, path = package_2d
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "napari_connectomics_network.py",
            "config.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy"} <= names
    assert rdf["format_version"].startswith("0.5")
    tensor_in, tensor_out = rdf["inputs"][0], rdf["outputs"][0]
    assert [a.get("id", a["type"]) for a in tensor_in["axes"]] == ["batch", "channel", "y", "x"]
    assert tensor_in["axes"][2]["size"] == {"min": 2, "step": 2}  # monai_unet with 2 levels
    def ops(steps):
        return [p["id"] for p in steps if p["id"] != "ensure_dtype"]

    assert ops(tensor_in["preprocessing"]) == ["scale_range", "clip"]
    assert ops(tensor_out["postprocessing"]) == ["softmax"]
    assert rdf["license"] == "MIT" and rdf["authors"] and rdf["cite"]
    _test_model(path)


def test_3d_package_passes_bioimageio_test(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "tiny3d.ckpt")  # conftest: BasicUNet, 2 classes, window 16x64x64
    result = export_bioimageio(checkpoint, tmp_path / "tiny3d.zip", test=False)
    assert result.axes == ["batch", "channel", "z", "y", "x"] and result.test_shape == (1, 1, 16, 64, 64)
    assert result.tile == "16x16x16 + n*16 per axis"
    _test_model(result.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny3d.ckpt", "tiny3d.zip"]  # no temporary left


# --- (b) predict with the package = predict with the checkpoint --------------------------------


def test_predict_with_the_package_equals_the_checkpoint(package_2d, volume, tmp_path):
    checkpoint, package = package_2d
    outputs = {}
    for name, model in (("zip", package), ("ckpt", checkpoint)):
        out = tmp_path / f"{name}.zarr"
        result = cli("predict", "--checkpoint", str(model), "--input", str(volume), "--output", str(out),
                     "--output-dtype", "float32", "--window", "32,32", "--overlap", "0.5")
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[name] = zarr.open_array(str(out), path="probabilities", mode="r")[...]
    assert outputs["zip"].shape == (2, 4, 72, 56)
    assert np.abs(outputs["zip"] - outputs["ckpt"]).max() <= 1e-4


def test_an_unpacked_package_predicts_the_same(package_2d, volume, tmp_path):
    from napari_connectomics.inference.predict import PredictOptions, predict

    checkpoint, package = package_2d
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    assert is_bioimageio_source(folder) and is_bioimageio_source(folder / "rdf.yaml")
    assert is_bioimageio_source(package) and not is_bioimageio_source(checkpoint)
    options = PredictOptions(window=(32, 32), output_dtype="float32")
    ours = predict(checkpoint, str(volume), options).probabilities
    assert np.abs(predict(folder / "rdf.yaml", str(volume), options).probabilities - ours).max() <= 1e-4
    assert np.abs(predict(folder, str(volume), options).probabilities - ours).max() <= 1e-4


# --- other zoo models --------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_zoo_model_is_wrapped(volume, tmp_path, channels_last):
    """TorchScript weights, z-score preprocessing and softmax, with channels first or last: the
    same probabilities as the network on the z-scored volume (one window per section)."""
    from napari_connectomics.inference.predict import PredictOptions, predict

    rdf = zoo_package(tmp_path / "zoo", channels_last=channels_last)
    cfg = bioimageio_config(rdf)
    assert cfg.data.normalize == "zscore" and list(cfg.inference.window_size) == [256, 256]
    result = predict(rdf, str(volume), PredictOptions(output_dtype="float32"))
    image = np.load(volume).astype(np.float32)
    image = (image - image.mean()) / image.std()
    with torch.no_grad():
        expected = torch.softmax(ZooConv()(torch.from_numpy(image[:, None])), 1).numpy().transpose(1, 0, 2, 3)
    assert result.window == (1, 72, 56)  # the default 256 x 256 shrunk to the volume, a multiple of 8
    assert np.abs(result.probabilities - expected).max() <= 1e-4


def test_a_zoo_model_without_postprocessing_gives_its_output(volume, tmp_path):
    from napari_connectomics.inference.predict import PredictOptions, predict

    rdf = zoo_package(tmp_path / "zoo", postprocessing=[],
                      preprocessing=[{"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": -1.0}}])
    result = predict(rdf, str(volume), PredictOptions(output_dtype="float32"))
    image = np.load(volume).astype(np.float32) * 2 - 1
    with torch.no_grad():
        expected = ZooConv()(torch.from_numpy(image[:, None])).numpy().transpose(1, 0, 2, 3)
    assert result.activation == "identity"
    assert np.abs(result.probabilities - expected).max() <= 1e-3 * np.abs(expected).max()


# --- (c) what cannot be run is named in one line -----------------------------------------------


def test_a_time_axis_is_refused_in_one_line(volume, tmp_path):
    rdf = zoo_package(tmp_path / "zoo", time_axis=True)
    out = tmp_path / "pred.zarr"
    result = cli("predict", "--checkpoint", str(rdf), "--input", str(volume), "--output", str(out))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "time axis" in result.stderr and "not supported" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("preprocessing, postprocessing, named", [
    ([{"id": "scale_range", "kwargs": {"axes": ["channel", "y", "x"], "min_percentile": 1,
                                       "max_percentile": 99.8}}], None, "preprocessing scale_range"),
    ([{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y"]}}], None,
     "preprocessing zero_mean_unit_variance"),
    (None, [{"id": "binarize", "kwargs": {"threshold": 0.5}}], "postprocessing binarize"),
])
def test_unsupported_processing_is_named(tmp_path, preprocessing, postprocessing, named):
    rdf = zoo_package(tmp_path / "zoo", preprocessing=preprocessing, postprocessing=postprocessing)
    with pytest.raises(BioimageioError, match=named) as caught:
        bioimageio_config(rdf)
    assert "\n" not in str(caught.value)


# --- (d) export errors: one line, nothing written ----------------------------------------------


def test_export_errors_are_one_line(package_2d, tmp_path):
    checkpoint, _ = package_2d
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    taken = tmp_path / "taken.zip"
    taken.write_bytes(b"precious")
    cfg = load_config(overrides=["model.architecture=monai_unet", "model.spatial_dims=2",
                                 "model.filters=[4,8]", "data.patch_size=[32,32]"])
    stored = cfg_container(cfg)
    stored["model"]["architecture"] = "no_such_network"
    atomic_torch_save({"state_dict": {}, CONFIG_KEY: stored}, tmp_path / "unknown.ckpt")
    cases = [
        (tmp_path / "junk.ckpt", "x.zip", "not a PyTorch checkpoint"),
        (checkpoint, "taken.zip", "already exists; pass --force"),
        (tmp_path / "unknown.ckpt", "y.zip", "no_such_network"),
        (checkpoint, "model.txt", ".zip"),
    ]
    for source, output, message in cases:
        result = cli("export-bioimageio", str(source), "-o", str(tmp_path / output))
        assert result.returncode == 2, (output, result.stderr[-1000:])
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr, result.stderr
    assert taken.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.ckpt", "taken.zip", "unknown.ckpt"]


def test_an_untraceable_network_is_refused_before_writing(package_2d, tmp_path, monkeypatch):
    checkpoint, _ = package_2d

    def cannot_trace(*args, **kwargs):
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(torch.jit, "trace", cannot_trace)
    with pytest.raises(BioimageioError, match="cannot be traced.*--no-torchscript") as caught:
        export_bioimageio(checkpoint, tmp_path / "model.zip", test=False)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    result = export_bioimageio(checkpoint, tmp_path / "model.zip", test=False, torchscript=False)
    assert result.weights == ["pytorch_state_dict"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.zip"]

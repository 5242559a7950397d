"""`napari-connectomics predict` and the end-to-end `demo`, through the real CLI in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from conftest import run_cli
from napari_connectomics.config import load_config
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.training import TrainingData, train

run = run_cli  # napari-connectomics ARGS in a subprocess (conftest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    sample = make_synthetic_em(shape=(16, 96, 96), seed=2)
    cfg = load_config(overrides=[
        "model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[8,16,32]",
        "data.patch_size=[64,64]", "data.batch_size=4", "data.samples_per_epoch=8", "training.val_patches=2",
        "training.max_steps=4", f"training.output_dir={folder / 'runs'}"])
    result = train(cfg, data=TrainingData(train=[(sample.image, sample.mitochondria)]))
    with h5py.File(folder / "em.h5", "w") as f:
        f["raw"] = sample.image
        f["truth"] = sample.mitochondria
    return folder, result.last_checkpoint


def test_predict_writes_probabilities_and_labels_then_evaluate(trained):
    folder, checkpoint = trained
    out = folder / "pred.zarr"
    result = run("predict", "--checkpoint", str(checkpoint), "--input", f"{folder / 'em.h5'}:raw",
                 "--output", str(out), "--threshold", "0.5", "--overlap", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "probabilities" in result.stdout and "labels" in result.stdout
    group = zarr.open_group(str(out), mode="r")
    assert group["probabilities"].shape == (2, 16, 96, 96) and group["probabilities"].dtype == np.float16
    assert group["labels"].shape == (16, 96, 96) and group["labels"].dtype in (np.uint16, np.uint32, np.uint8)
    scores = run("evaluate", "--prediction", str(out), "--label", f"{folder / 'em.h5'}:truth", "--json")
    assert scores.returncode == 0, scores.stderr
    assert 0.0 <= json.loads(scores.stdout)["iou"] <= 1.0


def test_existing_output_is_refused_and_untouched(trained):
    folder, checkpoint = trained
    out = folder / "taken.h5"
    out.write_bytes(b"precious")
    result = run("predict", "--checkpoint", str(checkpoint), "--input", f"{folder / 'em.h5'}:raw", "--output", str(out))
    assert result.returncode == 2
    assert "already exists" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("input_suffix, message", [(":nope", "raw, truth"), ("", "several arrays")])
def test_input_key_errors_list_the_arrays(trained, input_suffix, message):
    folder, checkpoint = trained
    result = run("predict", "--checkpoint", str(checkpoint), "--input", f"{folder / 'em.h5'}{input_suffix}",
                 "--output", str(folder / "x.zarr"))
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (folder / "x.zarr").exists()


def test_not_a_checkpoint(trained, tmp_path):
    folder, _ = trained
    fake = tmp_path / "model.ckpt"
    fake.write_text("hello")
    result = run("predict", "--checkpoint", str(fake), "--input", f"{folder / 'em.h5'}:raw",
                 "--output", str(tmp_path / "p.zarr"))
    assert result.returncode == 2 and "not a PyTorch checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_demo_end_to_end(tmp_path):
    result = run("demo", "--steps", "20", "--output", str(tmp_path / "demo"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "foreground IoU" in result.stdout
    for name in ("prediction.zarr", "overlay.png", "scores.json"):
        assert (tmp_path / "demo" / name).exists(), name
    scores = json.loads((tmp_path / "demo" / "scores.json").read_text())
    assert 0.0 <= scores["iou"] <= 1.0


# --- labels block by block --------------------------------------------------------------------


def _stored_labels(path: Path):
    if path.suffix == ".zarr":
        group = zarr.open_group(str(path), mode="r")
        return group["probabilities"][...], group["labels"][...], sorted(group.keys())
    with h5py.File(path, "r") as file:
        return file["probabilities"][...], file["labels"][...], sorted(file.keys())


@pytest.mark.parametrize("name, dtype, method", [
    ("pred.zarr", "float16", "cc"), ("pred.h5", "uint8", "cc"), ("pred.zarr", "uint8", "none")])
def test_labels_block_by_block_equal_the_whole_volume(trained, tmp_path, monkeypatch, capsys, name,
                                                      dtype, method):
    """`--instances cc` / `--threshold` on an output on disk label it block by block inside the store;
    the result equals whole-volume post-processing of the same probabilities up to renumbering."""
    from napari_connectomics import cli
    from napari_connectomics.inference.postprocess import postprocess, same_partition

    folder, checkpoint = trained
    monkeypatch.setattr(cli, "LABEL_BLOCK", (4, 40, 24))  # 4 x 3 x 4 blocks on a 16 x 96 x 96 volume
    out = tmp_path / name
    common = ["-q", "predict", "--checkpoint", str(checkpoint), "--input", f"{folder / 'em.h5'}:raw", "--output",
              str(out), "--output-dtype", dtype]
    assert cli.main(common) == 0
    if out.suffix == ".zarr":
        stored = zarr.open_array(str(out), path="probabilities", mode="r")[...]
    else:
        with h5py.File(out, "r") as file:
            stored = file["probabilities"][...]
    scale = 255.0 if dtype == "uint8" else 1.0
    probabilities = stored.astype(np.float32) / np.float32(scale)
    threshold = float(np.quantile(probabilities[1], 0.6))  # a mask of many pieces, whatever the weights
    instances = ["--instances", method] if method != "none" else []
    assert cli.main([*common, "--overwrite", "--threshold", f"{threshold}", "--min-size", "3", *instances]) == 0
    assert "labels" in capsys.readouterr().out
    _, labels, names = _stored_labels(out)
    assert names == ["labels", "probabilities"]  # nothing temporary left in the store
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    expected = postprocess(np.asarray(stored, np.float32) / np.float32(scale), method, threshold=threshold,
                           min_size=3)
    assert labels.dtype == np.uint16 and labels.shape == (16, 96, 96)
    if method == "none":
        assert np.array_equal(labels, expected)
    else:
        assert expected.max() > 5
        assert same_partition(labels, expected)


def test_watershed_too_large_is_refused_before_predicting(trained, tmp_path):
    folder, checkpoint = trained
    with h5py.File(tmp_path / "big.h5", "w") as file:  # never written: takes no disk space
        file.create_dataset("raw", shape=(512, 1024, 1024), dtype=np.uint8, chunks=(16, 256, 256))
    out = tmp_path / "pred.zarr"
    result = run("predict", "--checkpoint", str(checkpoint), "--input", f"{tmp_path / 'big.h5'}:raw",
                 "--output", str(out), "--instances", "watershed")
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1
    assert "watershed" in result.stderr and "--instances cc" in result.stderr and "--roi" in result.stderr
    assert not out.exists()


def test_watershed_on_a_small_output(trained, tmp_path, capsys):
    from napari_connectomics import cli

    folder, checkpoint = trained
    out = tmp_path / "pred.h5"
    assert cli.main(["-q", "predict", "--checkpoint", str(checkpoint), "--input", f"{folder / 'em.h5'}:raw",
                     "--output", str(out), "--instances", "watershed"]) == 0
    _, labels, names = _stored_labels(out)
    assert names == ["labels", "probabilities"] and labels.dtype in (np.uint16, np.uint32)

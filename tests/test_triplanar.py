"""Tri-planar prediction (PredictOptions.triplanar, --triplanar, the Segment panel's option): the mean
of three predictions of transposed copies of the input, in memory and block-wise into a Zarr store,
with 2.5D context along each plane's normal; one-line refusals of what it does not support."""

from __future__ import annotations

import logging
import threading

import h5py
import numpy as np
import pytest
import torch
import zarr
from omegaconf import OmegaConf

from napari_connectomics import cli
from napari_connectomics.config import load_config
from napari_connectomics.inference.predict import PredictOptions, predict
from napari_connectomics.inference.triplanar import PLANES
from napari_connectomics.models import build_model
from napari_connectomics.models.checkpoint import CONFIG_KEY, atomic_torch_save

TINY_2D = ["model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[4,8]",
           "model.num_res_units=0", "data.patch_size=[16,16]", "data.voxel_size=[5,5,5]"]
SHAPE = (14, 20, 18)


def tiny(*extra: str):
    cfg = load_config(overrides=[*TINY_2D, *extra])
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


def volume(shape=SHAPE, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 200).astype(np.uint8)


def options(**extra) -> PredictOptions:
    return PredictOptions(**{"device": "cpu", "output_dtype": "float32", "batch_size": 32, **extra})


def mean_of_planes(model, cfg, data: np.ndarray, **extra) -> np.ndarray:
    """Predict the transposed copies of ``data`` one by one, put them back and average."""
    parts = []
    for axes in PLANES.values():
        view = np.ascontiguousarray(data.transpose(axes))
        part = predict(model, view, options(**extra), cfg=cfg).probabilities
        parts.append(part.transpose(0, *(1 + int(a) for a in np.argsort(axes))))
    return (parts[0] + parts[1] + parts[2]) / 3


@pytest.mark.parametrize("context", [0, 1])
def test_triplanar_is_the_mean_of_the_three_planes(context):
    model, cfg = tiny(f"data.context_sections={context}")
    data = volume()
    progress = []
    result = predict(model, data, options(triplanar=True), progress=[progress.append], cfg=cfg)
    assert result.probabilities.shape == (2, *SHAPE) and result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities, mean_of_planes(model, cfg, data), atol=1e-6)
    single = predict(model, data, options(), cfg=cfg).probabilities
    assert np.abs(single - result.probabilities).max() > 1e-3  # the other planes count
    done = [p.done for p in progress]
    assert done == sorted(done) and progress[-1].stage == "done" and progress[-1].done == progress[-1].total
    assert {p.message.split(":")[0] for p in progress[:-1]} == set(PLANES)


def test_triplanar_from_hdf5_into_zarr_block_by_block(tmp_path):
    model, cfg = tiny()
    data = volume(seed=1)
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f.create_dataset("raw", data=data, chunks=(2, 10, 9))
    expected = mean_of_planes(model, cfg, data)
    for dtype, block, tolerance in (("float32", (4, 8, 8), 1e-5), ("float16", None, 1e-3)):
        out = tmp_path / f"pred_{dtype}.zarr"
        result = predict(model, f"{tmp_path / 'em.h5'}:raw",
                         options(output_dtype=dtype, triplanar=True, block_size=block),
                         cfg=cfg, output=out)
        assert result.output_path == out and (block is None or result.blocks > 1)
        stored = zarr.open_array(str(out), mode="r", path="probabilities")
        assert stored.shape == (2, *SHAPE) and stored.dtype == np.dtype(dtype)
        np.testing.assert_allclose(stored[...].astype(np.float32), expected, atol=tolerance)


def test_cli_predict_triplanar(tmp_path, capsys):
    model, cfg = tiny()
    checkpoint = tmp_path / "tiny.ckpt"
    atomic_torch_save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                       CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}, checkpoint)
    data = volume(seed=2)
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f["raw"] = data
    out = tmp_path / "pred.zarr"
    assert cli.main(["-q", "predict", "--checkpoint", str(checkpoint), "--input", f"{tmp_path / 'em.h5'}:raw",
                     "--output", str(out), "--triplanar", "--output-dtype", "float32", "--device", "cpu", "--batch", "32"]) == 0
    stored = zarr.open_array(str(out), mode="r", path="probabilities")[...]
    np.testing.assert_allclose(stored, mean_of_planes(model, cfg, data), atol=1e-6)


def test_segment_request_carries_triplanar(tmp_path):
    from napari_connectomics.widgets.segment_request import SegmentRequest, run_segmentation, whole_region

    model, cfg = tiny()
    checkpoint = tmp_path / "tiny.ckpt"
    atomic_torch_save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                       CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}, checkpoint)
    data = volume(seed=3)
    request = SegmentRequest(checkpoint=checkpoint, image_name="em", data=data, region=whole_region(SHAPE),
                             scale=(1.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0), batch_size=32, device="cpu",
                             triplanar=True)
    outcome = run_segmentation(request, lambda progress: None, threading.Event())
    np.testing.assert_allclose(outcome.prediction.probabilities, mean_of_planes(model, cfg, data), atol=1e-6)


def test_what_triplanar_refuses_is_one_line(tmp_path, caplog):
    model, cfg = tiny()
    data = volume()
    refusals = [
        (dict(volume=data[0]), "at least 2 voxels on each axis"),
        (dict(volume=volume((3, 20, 18))), "predict at least 4 sections"),  # a quarter of the 16 px window
        (dict(options=options(triplanar=True, window=[64, 64]), volume=volume((15, 70, 70))),
         "15 px high, too little of the 64 px window"),
        (dict(options=options(triplanar=True, memory_limit_mb=1), volume=volume((40, 64, 64))),
         "raise --memory-limit"),
        (dict(resume=True, output=tmp_path / "p.zarr"), "cannot be resumed"),
        (dict(scheduler="dask", output=tmp_path / "p.zarr"), "drop --scheduler dask"),
    ]
    for arguments, message in refusals:
        model_or_path = arguments.pop("model", model)
        kwargs = {"cfg": cfg, **arguments}
        kwargs.setdefault("options", options(triplanar=True))
        source = kwargs.pop("volume", data)
        if kwargs.get("scheduler") == "dask":
            model_or_path = tmp_path / "tiny.ckpt"
            atomic_torch_save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                               CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}, model_or_path)
            kwargs.pop("cfg")
        with pytest.raises(ValueError, match=message) as err:
            predict(model_or_path, source, **kwargs)
        assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.zarr")) and not list(tmp_path.glob(".*partial*"))

    model_3d, cfg_3d = tiny("model.spatial_dims=3", "data.patch_size=[8,16,16]")
    with pytest.raises(ValueError, match="3D network") as err:
        predict(model_3d, data, options(triplanar=True), cfg=cfg_3d)
    assert "\n" not in str(err.value)

    thin_but_enough = predict(model, volume((4, 20, 18)), options(triplanar=True), cfg=cfg)
    assert thin_but_enough.probabilities.shape == (2, 4, 20, 18)

    _, anisotropic = tiny("data.voxel_size=[40,4,4]")
    with caplog.at_level(logging.WARNING, logger="napari_connectomics"):
        predict(model, data, options(triplanar=True), cfg=anisotropic)
    assert any("anisotropic" in r.getMessage() for r in caplog.records)


def test_panels_show_the_new_options(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(volume(), name="em")
    _, segment = viewer.window.add_plugin_dock_widget("napari-connectomics", "Segment")
    assert segment.predict_form.triplanar.value is False
    segment.predict_form.triplanar.value = True
    assert segment.predict_form.values()["triplanar"] is True
    _, train_panel = viewer.window.add_plugin_dock_widget("napari-connectomics", "Train")
    train_panel.context_sections.value = 2
    assert train_panel.collect_choices().knobs["data"]["context_sections"] == 2

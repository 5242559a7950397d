"""Smoothing the probabilities along z (PredictOptions.z_smoothing, --z-smoothing, the Segment panel's
option): a Gaussian along z of the plain prediction, in memory, into a store slab by slab (also with
dask), with tri-planar prediction too; one-line refusals of what it does not support."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
import zarr
from omegaconf import OmegaConf
from scipy import ndimage as ndi

from napari_connectomics import cli
from napari_connectomics.inference.options import PredictOptions
from napari_connectomics.inference.predict import predict
from napari_connectomics.inference.stores import to_storage
from napari_connectomics.inference.z_smoothing import smooth_store_along_z
from napari_connectomics.models.checkpoint import CONFIG_KEY, atomic_torch_save
from test_triplanar import SHAPE, mean_of_planes, options, tiny, volume


def along_z(probabilities: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter1d(probabilities, sigma, axis=1, mode="nearest")


def save_checkpoint(model, cfg, path):
    atomic_torch_save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                       CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}, path)
    return path


def test_z_smoothing_is_a_gaussian_along_z_of_the_plain_prediction():
    model, cfg = tiny()
    data = volume()
    plain = predict(model, data, options(), cfg=cfg).probabilities
    smoothed = predict(model, data, options(z_smoothing=1.5), cfg=cfg).probabilities
    assert smoothed.shape == plain.shape == (2, *SHAPE) and smoothed.dtype == np.float32
    np.testing.assert_allclose(smoothed, along_z(plain, 1.5), atol=1e-6)
    assert np.abs(smoothed - plain).max() > 1e-2  # it did smooth
    np.testing.assert_allclose(smoothed.sum(axis=0), 1.0, atol=1e-5)  # still probabilities
    as_uint8 = predict(model, data, options(z_smoothing=1.5, output_dtype="uint8"), cfg=cfg).probabilities
    assert as_uint8.dtype == np.uint8
    np.testing.assert_allclose(as_uint8 / 255.0, along_z(plain, 1.5), atol=1 / 255)
    # in-plane, nothing moves: a volume of one repeated section is left as it is
    flat = np.repeat(data[:1], SHAPE[0], axis=0)
    np.testing.assert_allclose(predict(model, flat, options(z_smoothing=3), cfg=cfg).probabilities,
                               predict(model, flat, options(), cfg=cfg).probabilities, atol=1e-6)


def test_z_smoothing_from_the_config_into_a_store_and_with_triplanar(tmp_path):
    model, cfg = tiny("inference.z_smoothing=2")
    assert PredictOptions.from_config(cfg).z_smoothing == 2.0
    data = volume(seed=1)
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f.create_dataset("raw", data=data, chunks=(2, 10, 9))
    plain = predict(model, data, options(), cfg=cfg).probabilities
    out = tmp_path / "pred.zarr"
    from_config = PredictOptions.from_config(cfg, device="cpu", output_dtype="float32", block_size=(4, 8, 8))
    predict(model, f"{tmp_path / 'em.h5'}:raw", from_config, cfg=cfg, output=out)
    stored = zarr.open_array(str(out), mode="r", path="probabilities")[...]
    np.testing.assert_allclose(stored, along_z(plain, 2.0), atol=1e-5)

    both = predict(model, data, options(triplanar=True, z_smoothing=1.0), cfg=cfg).probabilities
    np.testing.assert_allclose(both, along_z(mean_of_planes(model, cfg, data), 1.0), atol=1e-6)


def test_a_store_is_smoothed_slab_by_slab_as_if_whole(tmp_path):
    """In place, slabs of 1..all sections, every stored dtype: the same as filtering it whole."""
    rng = np.random.default_rng(0)
    probabilities = rng.random((2, 23, 12, 10)).astype(np.float32)
    for dtype, scale, tolerance in (("float32", 1.0, 1e-6), ("float16", 1.0, 1e-3), ("uint8", 255.0, 1 / 255)):
        stored = to_storage(probabilities, dtype)
        expected = along_z(stored.astype(np.float32) / scale, 2.0)
        for sections in (1, 3, 8, 23):
            array = zarr.create_array(str(tmp_path / f"{dtype}{sections}.zarr"), shape=stored.shape, dtype=dtype,
                                      chunks=(1, 4, 6, 5))
            array[...] = stored
            smooth_store_along_z(array, 2.0, 64, scale, sections=sections)
            np.testing.assert_allclose(array[...].astype(np.float32) / scale, expected, atol=tolerance)


def test_the_store_pass_reports_each_slab_and_stops_between_slabs(tmp_path):
    probabilities = np.random.default_rng(1).random((2, 12, 6, 5)).astype(np.float32)
    array = zarr.create_array(str(tmp_path / "p.zarr"), shape=probabilities.shape, dtype="float32", chunks=(1, 3, 6, 5))
    array[...] = probabilities
    stop, reports = threading.Event(), []

    def report(done, slabs):
        reports.append((done, slabs))
        if done == 2:
            stop.set()

    assert smooth_store_along_z(array, 1.0, 64, sections=3, report=report, stop_event=stop) is True
    assert reports == [(1, 4), (2, 4)]
    np.testing.assert_array_equal(array[:, 6:], probabilities[:, 6:])  # the slabs after the stop: untouched

    model, cfg = tiny()
    seen = []
    predict(model, volume(), options(z_smoothing=1.0), cfg=cfg, output=tmp_path / "pred.zarr",
            progress=[lambda p: seen.append(p.message)])
    assert "smoothing along z: slab 1/1" in seen


def test_z_smoothing_into_a_store_with_dask_and_refusals(tmp_path):
    model, cfg = tiny()
    data = volume()
    plain = predict(model, data, options(), cfg=cfg).probabilities
    checkpoint = save_checkpoint(model, cfg, tmp_path / "tiny.ckpt")
    out = tmp_path / "dask.zarr"
    predict(checkpoint, data, options(z_smoothing=1.0, block_size=(8, 20, 18)), output=out, scheduler="dask")
    np.testing.assert_allclose(zarr.open_array(str(out), mode="r", path="probabilities")[...],
                               along_z(plain, 1.0), atol=1e-5)

    refusals = [
        (dict(resume=True, output=tmp_path / "p.zarr"), "cannot be resumed: drop --resume"),
        (dict(options=options(z_smoothing=2, memory_limit_mb=1), volume=volume((40, 256, 256)),
              output=tmp_path / "p.zarr"), "needs a memory limit of at least"),
    ]
    for arguments, message in refusals:
        kwargs = {"cfg": cfg, "options": options(z_smoothing=1), **arguments}
        source = kwargs.pop("volume", data)
        with pytest.raises(ValueError, match=message) as err:
            predict(model, source, **kwargs)
        assert "\n" not in str(err.value) and "--z-smoothing" in str(err.value)
    assert not list(tmp_path.glob("p.zarr")) and not list(tmp_path.glob(".*partial*"))
    for bad in (-1, 17):
        with pytest.raises(ValueError, match=r"z_smoothing must be within \[0, 16\]"):
            PredictOptions(z_smoothing=bad)


def test_cli_predict_z_smoothing(tmp_path):
    model, cfg = tiny()
    checkpoint = save_checkpoint(model, cfg, tmp_path / "tiny.ckpt")
    data = volume(seed=2)
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f["raw"] = data
    out = tmp_path / "pred.zarr"
    assert cli.main(["-q", "predict", "--checkpoint", str(checkpoint), "--input", f"{tmp_path / 'em.h5'}:raw",
                     "--output", str(out), "--z-smoothing", "1.5", "--output-dtype", "float32", "--device", "cpu",
                     "--batch", "32"]) == 0
    stored = zarr.open_array(str(out), mode="r", path="probabilities")[...]
    plain = predict(model, data, options(), cfg=cfg).probabilities
    np.testing.assert_allclose(stored, along_z(plain, 1.5), atol=1e-6)


def test_segment_request_carries_z_smoothing(tmp_path):
    from napari_connectomics.widgets.segment_request import SegmentRequest, run_segmentation, whole_region

    model, cfg = tiny()
    checkpoint = save_checkpoint(model, cfg, tmp_path / "tiny.ckpt")
    data = volume(seed=3)
    request = SegmentRequest(checkpoint=checkpoint, image_name="em", data=data, region=whole_region(SHAPE),
                             scale=(1.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0), batch_size=32, device="cpu",
                             z_smoothing=2.0)
    outcome = run_segmentation(request, lambda progress: None, threading.Event())
    plain = predict(model, data, options(), cfg=cfg).probabilities
    np.testing.assert_allclose(outcome.prediction.probabilities, along_z(plain, 2.0), atol=1e-6)


def test_segment_panel_shows_z_smoothing(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(volume(), name="em")
    _, segment = viewer.window.add_plugin_dock_widget("napari-connectomics", "Segment")
    assert segment.predict_form.z_smoothing.value == 0.0
    assert segment.predict_form.z_smoothing.label == "z-smoothing"
    segment.predict_form.z_smoothing.value = 2.0
    assert segment.predict_form.values()["z_smoothing"] == 2.0

"""The Segment panel's Qt-free logic: regions, checkpoint discovery and checks, foreground maps,
post-processing of kept probabilities in memory and in a Zarr store (no torch, no viewer)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_connectomics.config import load_config
from napari_connectomics.inference.postprocess import connected_components, same_partition
from napari_connectomics.widgets.notify import UserError
from napari_connectomics.widgets.segment_request import (
    REGION_SHAPES,
    CheckpointInfo,
    PostSettings,
    Prediction,
    Region,
    check_checkpoint_path,
    checkpoint_info,
    find_checkpoints,
    first_rectangle,
    is_lazy_data,
    output_names,
    recent_checkpoint_choices,
    region_around,
    run_postprocess,
    spatial_ndim,
    whole_region,
)

INFO_3D = CheckpointInfo("x.ckpt", "monai_basic_unet3d", 3, 1, 2, "binary", (16, 32, 32))


# ---------------------------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------------------------


def test_whole_region_and_its_geometry():
    region = whole_region((32, 256, 256))
    assert region.slices() == (slice(0, 32), slice(0, 256), slice(0, 256))
    assert region.covers((32, 256, 256)) and region.voxels == 32 * 256 * 256
    assert region.translate((30.0, 8.0, 8.0), (5.0, 1.0, 2.0)) == (5.0, 1.0, 2.0)


def test_region_translate_puts_the_first_voxel_where_the_source_has_it():
    region = Region((3, 94, 59), (19, 158, 123), REGION_SHAPES)
    assert region.shape == (16, 64, 64)
    assert region.translate((30.0, 8.0, 8.0), (60.0, 16.0, -8.0)) == (150.0, 768.0, 464.0)
    assert not region.covers((32, 256, 256))


def test_2d_region_is_one_z_section_for_predict():
    region = Region((10, 20), (42, 84))
    assert region.roi_zyx() == (slice(0, 1), slice(10, 42), slice(20, 84))


def test_view_box_covers_touched_voxels_and_the_window_around_the_slice():
    # corners of a view: y 100.2..150.7, x 60..120.4 (data coordinates) at slice z = 10
    points = [[10, 100.2, 60.0], [10, 100.2, 120.4], [10, 150.7, 60.0], [10, 150.7, 120.4]]
    region = region_around(points, (32, 256, 256), minimum=(16, 32, 32))
    # z: voxel 10 grown to 16 voxels centred; y: voxels 100..151; x: 60..120
    assert region.start == (3, 100, 60) and region.stop == (19, 152, 121)


def test_small_box_grows_to_the_window_and_stays_inside_the_image():
    points = [[1, 250, 3], [1, 252, 5]]
    region = region_around(points, (32, 256, 256), minimum=(16, 64, 64))
    assert region.start == (0, 192, 0) and region.stop == (16, 256, 64)
    assert region.shape == (16, 64, 64)


def test_window_larger_than_the_image_gives_the_whole_axis():
    region = region_around([[2, 5, 5]], (8, 20, 20), minimum=(16, 64, 64))
    assert region.start == (0, 0, 0) and region.stop == (8, 20, 20)


def test_box_partly_outside_is_clipped_and_fully_outside_is_a_user_error():
    region = region_around([[0, -50, -50], [0, 40, 30]], (4, 100, 100))
    assert region.start == (0, 0, 0) and region.stop == (1, 41, 31)
    with pytest.raises(UserError, match="outside the image"):
        region_around([[0, 300, 300], [0, 400, 400]], (4, 100, 100), description=REGION_SHAPES)


def test_non_finite_points_are_a_user_error():
    with pytest.raises(UserError, match="no finite position"):
        region_around([[0, np.nan, 1]], (4, 10, 10))


def test_spatial_axes_of_layer_shapes():
    assert spatial_ndim((64, 64)) == 2
    assert spatial_ndim((8, 64, 64)) == 3
    assert spatial_ndim((2, 8, 64, 64)) == 3
    with pytest.raises(UserError, match="5 dimensions"):
        spatial_ndim((1, 2, 8, 64, 64))


def test_first_rectangle_or_a_clear_error():
    assert first_rectangle(["polygon", "rectangle", "rectangle"], "roi") == 1
    with pytest.raises(UserError, match="'roi' has no rectangle"):
        first_rectangle(["ellipse"], "roi")


def test_lazy_data_and_names():
    import dask.array as da

    assert not is_lazy_data(np.zeros((2, 2)))
    assert is_lazy_data(da.zeros((2, 2)))
    assert is_lazy_data(np.zeros((2, 2)), multiscale=True)
    assert output_names("em") == ("em probabilities", "em segmentation")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def test_checkpoint_path_checks(tmp_path):
    with pytest.raises(UserError, match="no checkpoint chosen"):
        check_checkpoint_path("")
    with pytest.raises(UserError, match="no checkpoint chosen"):
        check_checkpoint_path(".")
    with pytest.raises(UserError, match="does not exist"):
        check_checkpoint_path(tmp_path / "missing.ckpt")
    with pytest.raises(UserError, match="is a folder"):
        check_checkpoint_path(tmp_path)
    file = tmp_path / "a.ckpt"
    file.write_bytes(b"x")
    assert check_checkpoint_path(str(file)) == file


def _ckpt(root: Path, run: str, stamp: str, name: str, mtime: float) -> Path:
    path = root / run / stamp / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_recent_runs_newest_first_with_the_session_checkpoint_on_top(tmp_path):
    runs = tmp_path / "runs"
    old = _ckpt(runs, "mito", "20240101-000000", "last.ckpt", 1_000)
    new = _ckpt(runs, "mito", "20240102-000000", "last.ckpt", 3_000)
    best = _ckpt(runs, "axons", "20240103-000000", "best.ckpt", 2_000)
    (runs / "notes.txt").write_text("not a run")
    assert find_checkpoints(runs) == [new, best, old]
    assert find_checkpoints(tmp_path / "nowhere") == [] and find_checkpoints(None) == []

    choices = recent_checkpoint_choices(runs, latest=str(best))
    assert [path for _, path in choices] == [str(best), str(new), str(old)]
    assert choices[0][0] == "latest: axons/20240103-000000/best.ckpt"
    assert choices[1][0] == "mito/20240102-000000/last.ckpt"
    outside = tmp_path / "elsewhere.ckpt"
    outside.write_bytes(b"x")
    assert recent_checkpoint_choices(runs, latest=str(outside))[0] == (f"latest: {outside}", str(outside))
    assert recent_checkpoint_choices(runs, latest=str(tmp_path / "gone.ckpt"))[0][1] == str(new)


def test_checkpoint_info_from_the_stored_config():
    cfg = load_config(overrides=["model.architecture=monai_basic_unet3d", "data.patch_size=[16,32,32]",
                                 "data.target=instance", "model.out_channels=3"])
    info = checkpoint_info(cfg, "run/last.ckpt")
    assert info.window == (16, 32, 32) and info.spatial_dims == 3
    assert info.channel_layout == "instance"
    assert "monai_basic_unet3d" in info.summary() and "instance" in info.summary()
    cfg2d = load_config(overrides=["model.spatial_dims=2", "model.architecture=monai_unet",
                                   "inference.window_size=[64,64]"])
    info2d = checkpoint_info(cfg2d)
    assert info2d.window == (1, 64, 64) and info2d.channel_layout == "binary"
    assert "window 64x64" in info2d.summary()


# ---------------------------------------------------------------------------------------------
# Kept probabilities -> foreground and labels
# ---------------------------------------------------------------------------------------------


def _probabilities(shape=(8, 40, 40), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    foreground = rng.random(shape).astype(np.float32)
    return np.stack([1 - foreground, foreground])


def _prediction(probabilities, info=INFO_3D, store=None, region=None) -> Prediction:
    spatial = probabilities.shape[1:]
    region = region or whole_region(spatial)
    return Prediction("em", region, probabilities, info, (1.0,) * len(spatial), (0.0,) * len(spatial),
                      store=store)


def test_foreground_by_channel_layout():
    probabilities = _probabilities()
    assert np.array_equal(_prediction(probabilities).foreground(), probabilities[1])
    one = probabilities[1:]
    assert np.array_equal(_prediction(one).foreground(), one[0])
    instance = np.stack([probabilities[0], probabilities[1] / 2, probabilities[1] / 2])
    info = CheckpointInfo("x", "a", 3, 1, 3, "instance", (8, 8, 8))
    assert np.allclose(_prediction(instance, info).foreground(), probabilities[1])
    info = CheckpointInfo("x", "a", 3, 1, 2, "semantic", (8, 8, 8))
    assert np.allclose(_prediction(probabilities, info).foreground(), probabilities[1], atol=1e-6)


def test_postprocess_in_memory_follows_the_settings():
    prediction = _prediction(_probabilities())
    low = run_postprocess(prediction, PostSettings("none", 0.2, 0))
    high = run_postprocess(prediction, PostSettings("none", 0.8, 0))
    assert not low.lazy and low.labels.dtype == np.uint8
    assert low.labels.sum() > high.labels.sum() > 0
    cc = run_postprocess(prediction, PostSettings("cc", 0.5, 2))
    assert np.issubdtype(cc.labels.dtype, np.unsignedinteger) and cc.labels.max() > 1
    with pytest.raises(ValueError, match="threshold"):
        run_postprocess(prediction, PostSettings("none", 1.5, 0))


def test_an_empty_result_says_whether_the_threshold_hid_an_undecided_model():
    from napari_connectomics.widgets.segment_panel import _count_text

    undecided = _probabilities()
    undecided[1] *= 0.45 / undecided[1].max()  # ranked right, nothing above 0.5
    undecided[0] = 1 - undecided[1]
    result = run_postprocess(_prediction(undecided), PostSettings("none", 0.5, 0))
    assert not result.labels.any() and result.largest_foreground == pytest.approx(0.45, abs=1e-6)
    text = _count_text(result)
    assert "nothing above the threshold 0.5" in text and "0.45" in text and "lower the threshold" in text
    lowered = run_postprocess(_prediction(undecided), PostSettings("none", 0.3, 0))
    assert lowered.labels.any() and lowered.largest_foreground is None
    assert _count_text(lowered).startswith("mask with")
    removed = run_postprocess(_prediction(_probabilities()), PostSettings("cc", 0.5, 10**9))  # all under min_size
    assert not removed.labels.any() and removed.largest_foreground > 0.5
    assert _count_text(removed) == "0 objects"


def _stored(tmp_path, probabilities, dtype="float16"):
    store = tmp_path / "pred.zarr"
    group = zarr.open_group(str(store), mode="w")
    array = group.create_array("probabilities", shape=probabilities.shape, dtype=dtype,
                               chunks=(1, 4, 16, 16), fill_value=0)
    array[...] = probabilities
    return store, zarr.open_array(str(store), mode="r", path="probabilities")


def test_stored_prediction_is_labelled_blockwise_like_in_memory(tmp_path):
    probabilities = _probabilities((8, 70, 300))
    store, array = _stored(tmp_path, probabilities)
    prediction = _prediction(array, store=store, region=whole_region((8, 70, 300)))
    assert prediction.lazy
    foreground = prediction.foreground()
    assert foreground.shape == (8, 70, 300) and foreground.dtype == np.float32
    assert np.allclose(np.asarray(foreground), probabilities[1], atol=1e-3)

    post = PostSettings("cc", 0.7, 3)
    result = run_postprocess(prediction, post)
    assert result.lazy and result.key in zarr.open_group(str(store), mode="r")
    expected = connected_components(np.asarray(foreground) > 0.7, min_size=3)
    assert same_partition(np.asarray(result.labels[...]), expected)

    mask = run_postprocess(prediction, PostSettings("none", 0.7, 0))
    assert np.array_equal(np.asarray(mask.labels[...]), (np.asarray(foreground) > 0.7).astype(np.uint8))


def test_stored_2d_and_uint8_predictions(tmp_path):
    probabilities = _probabilities((1, 40, 40))
    stored = np.rint(probabilities * 255).astype(np.uint8)
    store, array = _stored(tmp_path, stored, dtype="uint8")
    info = CheckpointInfo("x", "a", 2, 1, 2, "binary", (1, 32, 32))
    prediction = Prediction("em", whole_region((40, 40)), array, info, (1.0, 1.0), (0.0, 0.0),
                            store=store, value_scale=255.0)
    foreground = np.asarray(prediction.foreground())
    assert foreground.shape == (40, 40)
    assert np.allclose(foreground, probabilities[1, 0], atol=1 / 255)


def test_watershed_on_a_store_runs_in_memory_only_when_it_fits(tmp_path):
    probabilities = _probabilities((4, 32, 32))
    store, array = _stored(tmp_path, probabilities)
    prediction = _prediction(array, store=store)
    result = run_postprocess(prediction, PostSettings("watershed", 0.5, 0))
    assert not result.lazy and result.labels.shape == (4, 32, 32)
    prediction.memory_limit_mb = 0
    with pytest.raises(UserError, match="watershed needs the whole prediction in memory"):
        run_postprocess(prediction, PostSettings("watershed", 0.5, 0))


def test_lazy_inputs_and_large_predictions_go_to_a_store():
    from napari_connectomics.widgets.segment_request import SegmentRequest, _needs_store

    small = SegmentRequest(Path("x.ckpt"), "em", np.zeros((16, 64, 64), np.uint8),
                           whole_region((16, 64, 64)), (1.0,) * 3, (0.0,) * 3, memory_limit_mb=1)
    assert not _needs_store(small, INFO_3D)  # 2 float32 channels: 0.5 MB
    large = SegmentRequest(Path("x.ckpt"), "em", np.zeros((64, 64, 64), np.uint8),
                           whole_region((64, 64, 64)), (1.0,) * 3, (0.0,) * 3, memory_limit_mb=1)
    assert _needs_store(large, INFO_3D)
    small.lazy_input = True
    assert _needs_store(small, INFO_3D)

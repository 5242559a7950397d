"""OME-Zarr: reading levels with their voxel grid, writing pyramids, the CLI and napari's reader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_connectomics.data.ome_zarr import plan_factors, read_multiscale
from napari_connectomics.data.volume_io import write_volume
from napari_connectomics.data.volumes import VolumeError, open_volume
from napari_connectomics.inference.stores import parse_output

pytest.importorskip("ome_zarr")


def _levels(store: Path, group: str = "") -> list[np.ndarray]:
    return [np.asarray(zarr.open_array(str(store), mode="r", path=level.path))
            for level in read_multiscale(store, group).levels]


def _block_mean(array: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    shape = [d for n, f in zip(array.shape, factors) for d in (n // f, f)]
    return array.astype(np.float64).reshape(shape).mean(axis=tuple(range(1, 2 * array.ndim, 2)))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or ".old" in p.name)


def test_round_trip_keeps_scale_and_translate(tmp_path):
    data = np.random.default_rng(0).random((10, 70, 50)).astype(np.float32)
    out = write_volume(tmp_path / "raw.ome.zarr", "raw", data,
                       attrs={"scale": [40.0, 4.0, 4.0], "translate": [80.0, 12.0, -8.0]})
    volume = open_volume(out)
    np.testing.assert_array_equal(volume.read(), data)
    assert volume.scale == (40.0, 4.0, 4.0) and volume.translate == (80.0, 12.0, -8.0)
    # read back through ome-zarr's own reader too
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(out)))()))
    transforms = node.metadata["coordinateTransformations"]
    assert transforms[0] == [{"type": "scale", "scale": [40.0, 4.0, 4.0]},
                             {"type": "translation", "translation": [80.0, 12.0, -8.0]}]
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    # another level: its own voxel size, the centre of its 1x2x2 blocks as origin
    level1 = open_volume(f"{out}/1")
    assert level1.shape == (10, 35, 25) and level1.scale == (40.0, 8.0, 8.0)
    assert level1.translate == (80.0, 14.0, -6.0)
    assert open_volume(f"{out}:1").file_spec == f"{out}:1"


def test_every_level_matches_a_downsampling_of_level0(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 9, (9, 75, 67)).astype(np.uint16)  # odd sizes: stride keeps ceil(n/f)
    store = write_volume(tmp_path / "seg.ome.zarr", "labels", labels, pyramid="stride")
    levels, meta = _levels(store), read_multiscale(store)
    assert len(levels) >= 3
    for array, level in zip(levels, meta.levels):
        f = tuple(int(s) for s in level.scale)  # voxel size 1 at level 0: scale = total factor
        np.testing.assert_array_equal(array, labels[:: f[0], :: f[1], :: f[2]])
        assert set(np.unique(array)) <= set(np.unique(labels))  # ids are never mixed

    probabilities = rng.random((2, 8, 128, 96)).astype(np.float32)
    store = write_volume(tmp_path / "p.ome.zarr", "probabilities", probabilities, pyramid="mean")
    meta = read_multiscale(store)
    assert meta.axes == ("c", "z", "y", "x")
    for array, level in zip(_levels(store), meta.levels):
        f = tuple(int(s) for s in level.scale)
        assert f[0] == 1 and array.shape[0] == 2  # channels are never mixed
        np.testing.assert_allclose(array, _block_mean(probabilities, f), rtol=1e-5, atol=1e-6)
    assert [lv.shape for lv in meta.levels] == [(2, 8, 128, 96), (2, 4, 64, 48), (2, 2, 32, 24)]


def test_reads_ngff_04_written_by_ome_zarr_with_a_time_axis(tmp_path):
    import warnings

    from ome_zarr.format import FormatV04

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_multiscale

    data = np.arange(1 * 6 * 16 * 16, dtype=np.uint16).reshape(1, 6, 16, 16)
    group = zarr.open_group(str(tmp_path / "v04.ome.zarr"), mode="w", zarr_format=2)
    write_multiscale([data, data[:, :, ::2, ::2]], group, fmt=FormatV04(), axes="tzyx",
                     coordinate_transformations=[
                         [{"type": "scale", "scale": [1.0, 50.0, 6.0, 6.0]},
                          {"type": "translation", "translation": [0.0, 5.0, 0.0, 0.0]}],
                         [{"type": "scale", "scale": [1.0, 50.0, 12.0, 12.0]}]])
    volume = open_volume(tmp_path / "v04.ome.zarr")  # the singleton t axis is dropped
    assert volume.shape == (6, 16, 16) and volume.scale == (50.0, 6.0, 6.0)
    assert volume.translate == (5.0, 0.0, 0.0)
    np.testing.assert_array_equal(volume[2:4, 1], data[0, 2:4, 1])
    assert open_volume(f"{tmp_path / 'v04.ome.zarr'}/1").shape == (6, 8, 8)


def test_anisotropic_stacks_are_downsampled_in_plane_first():
    assert plan_factors((50, 1000, 1000), (40.0, 4.0, 4.0))[:4] == [(1, 2, 2)] * 3 + [(2, 2, 2)]
    assert plan_factors((20, 20, 20), (1.0, 1.0, 1.0)) == []


def test_bad_inputs_give_one_line_errors_and_leave_nothing(tmp_path):
    plain = zarr.open_group(str(tmp_path / "plain.ome.zarr"), mode="w")
    plain.create_array("raw", shape=(4, 8, 8), dtype="uint8")
    with pytest.raises(VolumeError, match="no OME-Zarr 'multiscales' metadata") as err:
        open_volume(tmp_path / "plain.ome.zarr")
    assert "\n" not in str(err.value) and "plain.ome.zarr/ARRAY" in str(err.value)
    assert open_volume(f"{tmp_path / 'plain.ome.zarr'}/raw").shape == (4, 8, 8)  # still reachable

    store = write_volume(tmp_path / "img.ome.zarr", "raw", np.zeros((4, 80, 80), np.uint8))
    with pytest.raises(VolumeError, match=r"level '5' does not exist .* its levels are: 0 4x80x80") as err:
        open_volume(f"{store}/5")
    assert "\n" not in str(err.value)

    with pytest.raises(ValueError, match="drop ':probabilities'"):
        parse_output(tmp_path / "pred.ome.zarr:probabilities")
    assert parse_output(tmp_path / "pred.ome.zarr").ome

    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="scale/translate numbers") as err:
        write_volume(tmp_path / "bad.ome.zarr", "raw", np.zeros((4, 8, 8), np.uint8),
                     attrs={"scale": [1.0, 2.0]})
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial store left


# --------------------------------------------------------------------------------------------
# The real CLI: OME-Zarr in, OME-Zarr out
# --------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_connectomics", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_cli_predict_from_ome_zarr_to_ome_zarr(tmp_path):
    from conftest import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    raw = (np.random.default_rng(2).random((16, 80, 80)) * 255).astype(np.uint8)
    image = write_volume(tmp_path / "em.ome.zarr", "raw", raw, pyramid="mean",
                         attrs={"scale": [30.0, 5.0, 5.0], "translate": [0.0, 100.0, 50.0]})
    out = tmp_path / "pred.ome.zarr"
    result = _cli("predict", "--checkpoint", str(checkpoint), "--input", str(image),
                  "--output", str(out), "--threshold", "0.5", "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{out}:labels/labels" in result.stdout

    probabilities = read_multiscale(out)
    assert probabilities.axes == ("c", "z", "y", "x") and probabilities.name == "probabilities"
    top = probabilities.levels[0]
    assert top.shape == (2, 16, 80, 80)
    assert top.scale == (1.0, 30.0, 5.0, 5.0) and top.translate == (0.0, 0.0, 100.0, 50.0)
    assert len(probabilities.levels) >= 2
    level0, level1 = _levels(out)[:2]
    f = tuple(int(a / b) for a, b in zip(probabilities.levels[1].scale, top.scale))
    assert f == (1, 1, 2, 2)
    np.testing.assert_allclose(level1.astype(np.float32), _block_mean(level0, f), atol=2e-3)

    labels = read_multiscale(out, "labels/labels")
    assert labels.levels[0].scale == (30.0, 5.0, 5.0) and labels.levels[0].translate == (0.0, 100.0, 50.0)
    label_levels = _levels(out, "labels/labels")
    assert set(np.unique(label_levels[0])) <= {0, 1}
    np.testing.assert_array_equal(label_levels[1], label_levels[0][:, ::2, ::2])
    group = zarr.open_group(str(out), mode="r", path="labels/labels")
    assert "image-label" in dict(group.attrs)["ome"]
    assert _leftovers(tmp_path) == [] and _leftovers(out) == [] and _leftovers(out / "labels") == []

    # a level that does not exist: one line, nothing written
    bad = _cli("predict", "--checkpoint", str(checkpoint), "--input", f"{image}/9",
               "--output", str(tmp_path / "other.ome.zarr"))
    assert bad.returncode != 0
    message = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and "level '9' does not exist" in message[0], bad.stderr
    assert not (tmp_path / "other.ome.zarr").exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# napari
# --------------------------------------------------------------------------------------------


def test_napari_opens_ome_zarr_as_multiscale_layers(make_napari_viewer, tmp_path):
    import napari

    from napari_connectomics.inference.stores import write_labels

    probabilities = np.random.default_rng(3).random((2, 8, 96, 96)).astype(np.float16)
    out = write_volume(tmp_path / "pred.ome.zarr", "probabilities", probabilities,
                       attrs={"scale": [1, 40.0, 4.0, 4.0], "translate": [0, 0.0, 8.0, 8.0]})
    write_labels(out, (probabilities[1] > 0.5).astype(np.uint8), name="mito")

    viewer = make_napari_viewer()
    viewer.open(str(out), plugin="napari-connectomics")
    channel = viewer.layers["pred:probabilities[1]"]
    assert isinstance(channel, napari.layers.Image) and channel.multiscale
    assert len(channel.data) == 3 and channel.data[0].shape == (8, 96, 96)
    np.testing.assert_allclose(channel.scale, (40.0, 4.0, 4.0))
    np.testing.assert_allclose(channel.translate, (0.0, 8.0, 8.0))
    mito = viewer.layers["pred:mito"]
    assert isinstance(mito, napari.layers.Labels) and mito.multiscale
    np.testing.assert_allclose(mito.scale, (40.0, 4.0, 4.0))
    np.testing.assert_array_equal(np.asarray(mito.data[1]), (probabilities[1] > 0.5)[:, ::2, ::2])

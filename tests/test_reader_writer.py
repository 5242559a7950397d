"""napari reader and writer: real HDF5 / Zarr / TIFF files in tmp dirs, one real viewer."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from napari_connectomics import _reader
from napari_connectomics._reader import napari_get_reader
from napari_connectomics._writer import write_image, write_labels

SHAPE = (4, 16, 16)


def _labels(shape=SHAPE, top=5):
    rng = np.random.default_rng(0)
    return rng.integers(0, top + 1, size=shape).astype(np.uint32)


def _raw(shape=SHAPE):
    return np.random.default_rng(1).integers(0, 256, size=shape).astype(np.uint8)


@pytest.fixture
def h5_file(tmp_path):
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = _raw()
        f["label"] = _labels()
    return path


@pytest.fixture
def zarr_store(tmp_path):
    path = tmp_path / "pred.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("image", data=_raw())
    group.create_array("labels", data=_labels().astype(np.uint16))
    group.create_array("probabilities", data=np.random.default_rng(2).random((2, *SHAPE)).astype(np.float16))
    group.create_array("counts", data=_labels(top=3).astype(np.uint8))  # unnamed, few values
    group.create_array("noise", data=_raw())  # unnamed, many values
    return path


def _by_name(layers):
    return {meta["name"] if isinstance(meta["name"], str) else meta["name"][0]: (data, meta, kind)
            for data, meta, kind in layers}


def test_reader_h5_layer_types_names_and_numpy(h5_file):
    reader = napari_get_reader(str(h5_file))
    assert callable(reader)
    layers = _by_name(reader(str(h5_file)))
    assert set(layers) == {"vol:raw", "vol:label"}
    raw, _, raw_kind = layers["vol:raw"]
    label, _, label_kind = layers["vol:label"]
    assert (raw_kind, label_kind) == ("image", "labels")
    assert isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.shape == SHAPE
    assert isinstance(label, np.ndarray) and label.dtype == np.uint32
    np.testing.assert_array_equal(label, _labels())


def test_reader_zarr_prediction_layout(zarr_store):
    reader = napari_get_reader(str(zarr_store))
    assert callable(reader)
    layers = reader(str(zarr_store))
    by_name = _by_name(layers)
    assert by_name["pred:image"][2] == "image"
    assert by_name["pred:labels"][2] == "labels" and by_name["pred:labels"][0].dtype == np.uint16
    assert by_name["pred:counts"][2] == "labels"  # unsigned, few distinct values
    assert by_name["pred:noise"][2] == "image"
    probs, meta, kind = by_name["pred:probabilities[0]"]
    assert kind == "image" and meta["channel_axis"] == 0
    assert meta["name"] == ["pred:probabilities[0]", "pred:probabilities[1]"]
    assert probs.shape == (2, *SHAPE) and probs.dtype == np.float16


def test_reader_keeps_big_arrays_lazy(h5_file, monkeypatch):
    import dask.array as da

    monkeypatch.setattr(_reader, "LAZY_THRESHOLD_BYTES", 500)  # raw is 1024 bytes, label 4096
    layers = _by_name(napari_get_reader(str(h5_file))(str(h5_file)))
    raw = layers["vol:raw"][0]
    assert isinstance(raw, da.Array) and raw.shape == SHAPE and raw.dtype == np.uint8
    np.testing.assert_array_equal(raw.compute(), _raw())
    assert layers["vol:label"][2] == "labels"


def test_reader_refuses_foreign_and_corrupt_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    corrupt = tmp_path / "broken.h5"
    corrupt.write_bytes(np.random.default_rng(3).bytes(4096))
    empty_dir = tmp_path / "empty.zarr"
    empty_dir.mkdir()
    assert napari_get_reader(str(text)) is None
    assert napari_get_reader(str(corrupt)) is None
    assert napari_get_reader(str(empty_dir)) is None
    assert napari_get_reader(str(tmp_path / "missing.h5")) is None


def _read_back(path):
    if path.suffix == ".tif":
        return tifffile.imread(path)
    layers = napari_get_reader(str(path))(str(path))
    assert len(layers) == 1
    return np.asarray(layers[0][0])


@pytest.mark.parametrize("suffix", [".h5", ".zarr", ".tif"])
@pytest.mark.parametrize(("top", "expected"), [(300, np.uint16), (70000, np.uint32)])
def test_labels_round_trip_narrows_int64(tmp_path, suffix, top, expected):
    data = _labels(top=top).astype(np.int64)
    data[0, 0, 0] = top
    path = tmp_path / f"out{suffix}"
    written = write_labels(str(path), data, {"name": "my labels!", "scale": (2.0, 1.0, 1.0)})
    assert written == [str(path)]
    back = _read_back(path)
    assert back.dtype == expected
    np.testing.assert_array_equal(back, data)
    if suffix == ".h5":
        with h5py.File(path) as f:
            assert list(f) == ["my_labels"]
            assert list(f["my_labels"].attrs["scale"]) == [2.0, 1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_writer_overwrites_and_refuses_bad_labels(tmp_path):
    path = tmp_path / "out.zarr"
    write_labels(str(path), _labels(), {"name": "first"})
    write_labels(str(path), _labels(top=2), {"name": "???"})
    assert list(zarr.open_group(str(path), mode="r").array_keys()) == ["labels"]
    with pytest.raises(ValueError, match="negative"):
        write_labels(str(tmp_path / "neg.h5"), -_labels(top=3).astype(np.int64) - 1, {"name": "x"})
    assert not list(tmp_path.glob("*neg*"))


@pytest.mark.parametrize("suffix", [".h5", ".zarr", ".tif"])
def test_image_round_trip(tmp_path, suffix):
    data = np.random.default_rng(4).random(SHAPE).astype(np.float32)
    path = tmp_path / f"img{suffix}"
    assert write_image(str(path), data, {"name": "em"}) == [str(path)]
    back = _read_back(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, data)


def test_open_and_save_through_a_real_viewer(make_napari_viewer, h5_file, zarr_store, tmp_path):
    import napari

    viewer = make_napari_viewer()
    viewer.open(str(h5_file), plugin="napari-connectomics")
    assert isinstance(viewer.layers["vol:raw"], napari.layers.Image)
    assert isinstance(viewer.layers["vol:label"], napari.layers.Labels)
    viewer.open(str(zarr_store), plugin="napari-connectomics")
    assert "pred:probabilities[1]" in viewer.layers
    out = tmp_path / "out.h5"
    viewer.layers["vol:label"].data = viewer.layers["vol:label"].data.astype(np.int64)
    viewer.layers["vol:label"].save(str(out), plugin="napari-connectomics")
    with h5py.File(out, "r") as f:
        key = next(iter(f))
        assert f[key].dtype == np.uint16
        np.testing.assert_array_equal(f[key][...], _labels())

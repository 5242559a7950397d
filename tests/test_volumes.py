"""Volume I/O on real files: every format round-trips, pickles, and fails with one actionable line."""

from __future__ import annotations

import multiprocessing
import operator
import pickle
import tracemalloc
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
import zarr

from napari_connectomics.data.volumes import (
    Volume,
    VolumeError,
    list_arrays,
    open_volume,
    parse_volume_path,
)

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, size=(6, 20, 24), dtype=np.uint8)
LABEL = RNG.integers(0, 5, size=(6, 20, 24), dtype=np.uint32)

# Basic indices a data loader and napari use; each must equal numpy's answer.
INDICES = [
    (slice(1, 4), slice(2, 10), slice(3, 20)),
    (2,),
    (Ellipsis, 5),
    (slice(None, None, 2), -1, slice(None, None, -3)),
    (slice(4, 1, -1), slice(5, 5)),
    (slice(None),),
]


def assert_same_as(volume: Volume, expected: np.ndarray) -> None:
    assert volume.shape == expected.shape
    assert volume.dtype == expected.dtype
    assert volume.ndim == expected.ndim
    for index in INDICES:
        got = volume[index]
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, expected[index])
    np.testing.assert_array_equal(volume.read(), expected)
    np.testing.assert_array_equal(np.asarray(volume), expected)


def assert_one_line_error(match: str, source, key=None) -> str:
    with pytest.raises(VolumeError) as info:
        open_volume(source, key)
    message = str(info.value)
    assert "\n" not in message
    for part in match.split("|"):
        assert part in message, message
    return message


@pytest.fixture
def h5_file(tmp_path: Path) -> Path:
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as file:
        file["raw"] = IMAGE
        file.create_group("seg")["label"] = LABEL
        file["version"] = 2  # a scalar is metadata, not an array
    return path


@pytest.fixture
def zarr_store(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    root = zarr.open_group(str(path), mode="w")
    root.create_array("raw", shape=IMAGE.shape, dtype=IMAGE.dtype, chunks=(2, 8, 8))[...] = IMAGE
    root.create_group("seg").create_array("label", shape=LABEL.shape, dtype=LABEL.dtype)[...] = LABEL
    return path


# ----------------------------------------------------------------------------------------------
# Path syntax
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, path, key",
    [
        ("a.h5:raw", "a.h5", "raw"),
        ("dir/a.hdf5:group/ds", "dir/a.hdf5", "group/ds"),
        ("a.HDF:/raw/", "a.HDF", "raw"),
        ("s.zarr:raw", "s.zarr", "raw"),
        ("s.zarr/seg/label", "s.zarr", "seg/label"),
        ("s.zarr/", "s.zarr", None),
        ("a.tif", "a.tif", None),
        ("a.tiff", "a.tiff", None),
        ("dir/*.tif", "dir/*.tif", None),
        ("a.npy", "a.npy", None),
        ("a.h5", "a.h5", None),
        ("a.h5:", "a.h5", None),
    ],
)
def test_parse_volume_path(spec: str, path: str, key: str | None) -> None:
    assert parse_volume_path(spec) == (Path(path), key)
    assert parse_volume_path(Path(spec.split(":")[0]))[0] == Path(path.split(":")[0])


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------


def test_hdf5_round_trip_with_nested_group(h5_file: Path) -> None:
    assert list_arrays(h5_file) == ["raw", "seg/label"]
    assert_same_as(open_volume(f"{h5_file}:raw"), IMAGE)
    assert_same_as(open_volume(f"{h5_file}:seg/label"), LABEL)
    volume = open_volume(h5_file, key="/seg/label")
    assert volume.source == f"{h5_file}:seg/label"
    assert_same_as(volume, LABEL)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_round_trip_in_both_syntaxes(tmp_path: Path, zarr_format: int) -> None:
    path = tmp_path / f"v{zarr_format}.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.create_array("raw", shape=IMAGE.shape, dtype=IMAGE.dtype, chunks=(2, 8, 8))[...] = IMAGE
    root.create_group("seg").create_array("label", shape=LABEL.shape, dtype=LABEL.dtype)[...] = LABEL
    assert list_arrays(path) == ["raw", "seg/label"]
    assert_same_as(open_volume(f"{path}:raw"), IMAGE)
    assert_same_as(open_volume(f"{path}/seg/label"), LABEL)
    assert_same_as(open_volume(f"{path}:seg/label"), LABEL)
    assert open_volume(f"{path}/raw").chunks == (2, 8, 8)


def test_zarr_array_at_the_root(tmp_path: Path) -> None:
    path = tmp_path / "root.zarr"
    zarr.save_array(str(path), IMAGE)
    assert list_arrays(path) == []
    assert_same_as(open_volume(path), IMAGE)


def test_multipage_tiff_is_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, IMAGE)
    volume = open_volume(path)
    assert isinstance(volume._array(), np.memmap)
    assert_same_as(volume, IMAGE)


def test_compressed_tiff_is_read_lazily(tmp_path: Path) -> None:
    path = tmp_path / "compressed.tiff"
    tifffile.imwrite(path, IMAGE, compression="zlib")
    assert_same_as(open_volume(path), IMAGE)


def test_glob_of_tiff_slices_in_natural_order(tmp_path: Path) -> None:
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, section in enumerate(IMAGE):  # slice_2 must come before slice_10
        tifffile.imwrite(folder / f"slice_{z * 4}.tif", section)
    (folder / "notes.txt").write_text("not a slice")
    volume = open_volume(f"{folder}/*")
    assert volume.chunks == (1, *IMAGE.shape[1:])
    assert_same_as(volume, IMAGE)
    assert list_arrays(f"{folder}/*.tif") == []


def test_npy_is_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, LABEL)
    volume = open_volume(path)
    assert isinstance(volume._array(), np.memmap)
    assert_same_as(volume, LABEL)
    patch = volume[0]
    patch[...] = 0  # a patch is the caller's to modify, not a read-only view of the file
    assert volume[0].any()


def test_in_memory_numpy_and_dask(tmp_path: Path) -> None:
    image = IMAGE.copy()
    volume = open_volume(image)
    assert_same_as(volume, image)
    volume[0][...] = 0
    np.testing.assert_array_equal(image, IMAGE)  # the source is not changed through a patch
    assert "numpy" in volume.source
    lazy = open_volume(da.from_array(LABEL, chunks=(2, 10, 12)))
    assert lazy.chunks == (2, 10, 12)
    assert "dask" in lazy.source
    assert_same_as(lazy, LABEL)
    assert open_volume(volume) is volume


def test_open_array_objects_from_napari_layers(h5_file: Path, zarr_store: Path) -> None:
    with h5py.File(h5_file, "r") as file:
        volume = open_volume(file["seg/label"])  # reopened by path, so it pickles
    assert volume.source == f"{h5_file}:seg/label"
    assert_same_as(pickle.loads(pickle.dumps(volume)), LABEL)
    array = zarr.open_array(str(zarr_store), mode="r", path="raw")
    assert_same_as(pickle.loads(pickle.dumps(open_volume(array))), IMAGE)
    with pytest.raises(TypeError, match="takes a path, an array"):
        open_volume(42)


def test_channel_axis_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    channels = np.stack([IMAGE, IMAGE // 2])
    with h5py.File(path, "w") as file:
        file["raw"] = channels
    volume = open_volume(path)
    assert volume.shape == channels.shape
    np.testing.assert_array_equal(volume[1, 2:4, ::3], channels[1, 2:4, ::3])


def test_single_array_file_needs_no_key(tmp_path: Path) -> None:
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as file:
        file.create_group("volumes")["raw"] = IMAGE
    volume = open_volume(path)
    assert volume.source == f"{path}:volumes/raw"
    assert_same_as(volume, IMAGE)


# ----------------------------------------------------------------------------------------------
# Pickling and worker processes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["a.h5:raw", "s.zarr/raw", "a.tif", "a.npy", "numpy", "dask"])
def test_pickled_volume_reads_in_the_copy(tmp_path: Path, spec: str) -> None:
    sources = {
        "numpy": IMAGE,
        "dask": da.from_array(IMAGE, chunks=(3, 10, 10)),
    }
    if spec not in sources:
        path = tmp_path / spec.replace(":raw", "").replace("/raw", "")
        if spec.startswith("a.h5"):
            with h5py.File(path, "w") as file:
                file["raw"] = IMAGE
                file["other"] = LABEL
        elif spec.startswith("s.zarr"):
            zarr.open_group(str(path), mode="w").create_array("raw", data=IMAGE)
        elif spec == "a.tif":
            tifffile.imwrite(path, IMAGE)
        else:
            np.save(path, IMAGE)
        sources[spec] = str(tmp_path / spec)
    volume = open_volume(sources[spec])
    volume[0]  # opened here, yet the pickle must not carry the handle
    state = volume.__getstate__()
    assert state["_handle"] is None and state["_closer"] is None
    copy = pickle.loads(pickle.dumps(volume))
    assert copy.shape == volume.shape and copy.source == volume.source
    np.testing.assert_array_equal(copy[1:3, ::2], IMAGE[1:3, ::2])
    volume.close()
    copy.close()


def test_spawned_worker_reads_hdf5_volume(h5_file: Path) -> None:
    volume = open_volume(f"{h5_file}:raw")
    volume[0]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply(operator.getitem, (volume, (slice(2, 5), 3)))
    np.testing.assert_array_equal(got, IMAGE[2:5, 3])


def test_reading_a_slice_does_not_read_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as file:  # 256 MiB declared, only one chunk written
        dataset = file.create_dataset(
            "raw", shape=(256, 1024, 1024), dtype=np.uint8, chunks=(16, 128, 128)
        )
        dataset[100:102, 500:564, 600:664] = 7
    assert path.stat().st_size < 8 * 2**20
    tracemalloc.start()
    try:
        volume = open_volume(path)
        patch = volume[100:102, 500:564, 600:664]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert volume.shape == (256, 1024, 1024)
    assert (patch == 7).all()
    assert peak < 4 * 2**20  # far below the 256 MiB a full read would allocate


# ----------------------------------------------------------------------------------------------
# Errors: one line, naming what exists and how to fix it
# ----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error("nope.h5|does not exist", tmp_path / "nope.h5")
    assert_one_line_error("nope.h5|does not exist", f"{tmp_path}/nope.h5:raw")


def test_slash_inside_an_hdf5_file_suggests_the_colon(h5_file: Path) -> None:
    assert_one_line_error(f"does not exist|{h5_file}:seg/label", f"{h5_file}/seg/label")


def test_missing_key_lists_existing_arrays(h5_file: Path, zarr_store: Path) -> None:
    assert_one_line_error("'image' not found in|a.h5|raw, seg/label", f"{h5_file}:image")
    assert_one_line_error("'image' not found in|s.zarr|raw, seg/label", f"{zarr_store}/image")
    assert_one_line_error("'seg' in|is a group|seg/label", f"{h5_file}:seg")


def test_several_arrays_and_no_key(h5_file: Path, zarr_store: Path) -> None:
    message = assert_one_line_error("a.h5 holds several arrays (raw, seg/label)|name one as", h5_file)
    assert f"{h5_file}:raw" in message
    assert_one_line_error("holds several arrays (raw, seg/label)", zarr_store)


def test_unsupported_extension_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG")
    assert_one_line_error("'.png'|.h5|.zarr|.tif|.npy|*.tif", path)


def test_glob_matching_nothing(tmp_path: Path) -> None:
    assert_one_line_error("no TIFF file matches|*.tif", f"{tmp_path}/*.tif")


def test_tiff_slices_of_different_shapes(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s0.tif", IMAGE[0])
    tifffile.imwrite(tmp_path / "s1.tif", IMAGE[0, :10])
    assert_one_line_error("differ in shape|s0.tif is 20x24|s1.tif is 10x24", f"{tmp_path}/s*.tif")


def test_key_on_single_array_file_and_conflicting_keys(tmp_path: Path, h5_file: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, IMAGE)
    assert_one_line_error("takes no key|:raw", f"{path}:raw")
    assert_one_line_error("pass only one", f"{h5_file}:raw", key="seg/label")
    assert_one_line_error("applies to files only", IMAGE, key="raw")


def test_folder_that_is_not_a_zarr_store(tmp_path: Path) -> None:
    assert_one_line_error("not a Zarr store|*.tif", tmp_path)


def test_not_an_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "fake.h5"
    path.write_text("hello")
    assert_one_line_error("cannot open|fake.h5|HDF5", path)


@pytest.mark.parametrize("name", ["bad.tif", "bad.npy"])
def test_damaged_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("junk")
    assert_one_line_error(f"cannot read|{name}|check that the file", tmp_path / name)
    (tmp_path / "s1.tif").write_text("junk")
    assert_one_line_error("cannot read|s*.tif", f"{tmp_path}/s*.tif")


def test_bad_indices() -> None:
    volume = open_volume(IMAGE)
    with pytest.raises(IndexError, match="out of bounds"):
        volume[6]
    with pytest.raises(IndexError, match="too many indices"):
        volume[0, 0, 0, 0]
    with pytest.raises(TypeError, match="read\\(\\) it first"):
        volume[[0, 1]]

"""Post-processing: thresholds, connected components, watershed, holes, and block-wise labelling."""

from __future__ import annotations

import tracemalloc

import h5py
import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr

from napari_connectomics.data.targets import instance_contours
from napari_connectomics.inference.postprocess import (
    POSTPROCESSORS,
    PredictionMaps,
    connected_components,
    fill_holes,
    get_postprocessor,
    label_blockwise,
    list_postprocessors,
    postprocess,
    postprocess_blockwise,
    register_postprocessor,
    relabel_consecutive,
    remove_small,
    same_partition,
    smallest_label_dtype,
    threshold,
    watershed_bytes,
    watershed_instances,
)
from napari_connectomics.progress import Progress

SHAPE = (48, 48, 48)
RADIUS = 8
# Three spheres in a chain: 1-2 and 1-3 overlap slightly (centre distances 15 and ~15.7 < 16).
CENTRES = ((24, 17, 17), (24, 17, 32), (24, 31, 24))


def _spheres(centres: tuple[tuple[int, int, int], ...], radius: float = RADIUS) -> np.ndarray:
    """Instance labels of balls; a voxel inside several balls goes to the nearest centre."""
    grid = np.indices(SHAPE, dtype=np.float32)
    distances = np.stack(
        [np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre))) for centre in centres]
    )
    nearest = np.argmin(distances, axis=0)
    return np.where(distances.min(axis=0) <= radius, nearest + 1, 0).astype(np.uint16)


def _soft_instance_probabilities(labels: np.ndarray, spatial_dims: int) -> np.ndarray:
    """A (3, *spatial) softmax-like output (background, interior, contour), blurred a little."""
    contour = instance_contours(labels, spatial_dims=spatial_dims)
    classes = np.where(contour, 2, np.where(labels > 0, 1, 0))
    one_hot = np.stack([classes == c for c in range(3)]).astype(np.float32)
    blurred = np.stack([ndi.gaussian_filter(channel, 0.7) for channel in one_hot])
    return blurred / blurred.sum(axis=0, keepdims=True)


@pytest.fixture(scope="module")
def pair() -> np.ndarray:
    return _spheres(CENTRES[:2])


@pytest.fixture(scope="module")
def triple() -> np.ndarray:
    return _spheres(CENTRES)


# --------------------------------------------------------------------------------------------------
# Basics
# --------------------------------------------------------------------------------------------------
def test_threshold_is_strict_and_checked():
    assert threshold(np.array([0.2, 0.5, 0.7])).tolist() == [False, False, True]
    assert threshold(np.array([0.2, 0.5, 0.7]), 0.1).dtype == bool
    with pytest.raises(ValueError, match="threshold"):
        threshold(np.zeros(3), 1.5)


@pytest.mark.parametrize(
    ("max_id", "dtype"),
    [(0, np.uint16), (65535, np.uint16), (65536, np.uint32), (2**32 - 1, np.uint32)],
)
def test_smallest_label_dtype(max_id, dtype):
    assert smallest_label_dtype(max_id) == np.dtype(dtype)


def test_smallest_label_dtype_limits():
    with pytest.raises(OverflowError):
        smallest_label_dtype(2**32)
    with pytest.raises(ValueError):
        smallest_label_dtype(-1)


def test_relabel_consecutive_and_same_partition():
    labels = np.array([[0, 7, 7], [300000, 0, 9]], dtype=np.int64)
    relabeled = relabel_consecutive(labels)
    assert relabeled.dtype == np.uint16
    assert sorted(np.unique(relabeled)) == [0, 1, 2, 3]
    assert same_partition(labels, relabeled)
    assert same_partition(labels, np.array([[0, 2, 2], [5, 0, 1]]))
    assert not same_partition(labels, np.array([[0, 1, 1], [1, 0, 2]]))  # two ids merged
    assert not same_partition(labels, np.array([[0, 1, 2], [3, 0, 4]]))  # one id split
    assert not same_partition(labels, np.array([[1, 2, 2], [3, 0, 4]]))  # background differs
    with pytest.raises(TypeError):
        relabel_consecutive(np.zeros(3, dtype=np.float32))


def test_min_size_removes_small_objects_and_keeps_ids_consecutive():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[1, 1, 1] = True  # 1 voxel
    mask[5:7, 5:7, 5:7] = True  # 8 voxels
    mask[12:15, 12:15, 12:15] = True  # 27 voxels
    labels = connected_components(mask, min_size=8)
    assert labels.dtype == np.uint16
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert np.bincount(labels.ravel())[1:].tolist() == [8, 27]
    kept = remove_small(connected_components(mask), 9)
    assert np.unique(kept).tolist() == [0, 3]  # remove_small keeps ids as they are


def test_many_objects_give_uint32():
    mask = np.zeros((600, 600), dtype=bool)
    mask[::2, ::2] = True  # 90000 isolated pixels
    labels = connected_components(mask)
    assert labels.dtype == np.uint32
    assert labels.max() == 90000


def test_connectivity_joins_diagonals_only_when_asked():
    mask = np.eye(4, dtype=bool)
    assert connected_components(mask).max() == 4
    assert connected_components(mask, connectivity=2).max() == 1
    with pytest.raises(ValueError, match="connectivity"):
        connected_components(mask, connectivity=3)


def test_empty_inputs_give_empty_labels():
    empty = np.zeros((6, 7, 8), dtype=np.float32)
    for labels in (
        connected_components(empty > 0.5),
        watershed_instances(empty),
        watershed_instances(empty, contour=empty),
        fill_holes(np.zeros((6, 7, 8), dtype=np.uint16)),
    ):
        assert labels.dtype == np.uint16 and not labels.any()


# --------------------------------------------------------------------------------------------------
# Touching spheres: cc merges, watershed splits
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["pair", "triple"])
def test_watershed_splits_touching_spheres_from_the_distance_transform(fixture, request):
    truth = request.getfixturevalue(fixture)
    foreground = (truth > 0).astype(np.float32)
    assert connected_components(foreground > 0.5).max() == 1
    labels = watershed_instances(foreground)
    assert labels.dtype == np.uint16
    assert labels.max() == truth.max()
    assert _mostly_matches(labels, truth, 0.95)


def test_watershed_h_maxima_seeds(triple):
    labels = watershed_instances((triple > 0).astype(np.float32), seed_h=2.0)
    assert labels.max() == 3


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_watershed_with_contour_channel(triple, spatial_dims):
    probabilities = _soft_instance_probabilities(triple, spatial_dims)
    foreground, contour = probabilities[1] + probabilities[2], probabilities[2]
    assert connected_components(foreground > 0.5).max() == 1
    labels = watershed_instances(foreground, contour=contour)
    assert labels.max() == 3
    assert _mostly_matches(labels, triple)


def test_watershed_keeps_objects_without_a_confident_seed():
    foreground = np.zeros((32, 32), dtype=np.float32)
    foreground[4:12, 4:12] = 0.8  # an object, but interior never above seed_threshold
    foreground[20:28, 20:28] = 1.0
    contour = np.zeros_like(foreground)
    labels = watershed_instances(foreground, contour=contour, seed_threshold=0.9)
    assert labels.max() == 2
    assert watershed_instances(foreground, contour=contour, min_size=65).max() == 0


def _mostly_matches(labels: np.ndarray, truth: np.ndarray, fraction: float = 0.9) -> bool:
    """Each true object is covered to ``fraction`` by one predicted object of its own."""
    matches = set()
    for obj in range(1, int(truth.max()) + 1):
        ids, counts = np.unique(labels[truth == obj], return_counts=True)
        if counts.max() < fraction * counts.sum() or ids[counts.argmax()] == 0:
            return False
        matches.add(int(ids[counts.argmax()]))
    return len(matches) == truth.max()


# --------------------------------------------------------------------------------------------------
# Holes
# --------------------------------------------------------------------------------------------------
def test_fill_holes_fills_an_enclosed_cavity_and_keeps_ids():
    labels = np.zeros((16, 16, 16), dtype=np.uint16)
    labels[2:10, 2:10, 2:10] = 5
    labels[4:8, 4:8, 4:8] = 0  # cavity
    labels[12:15, 12:15, 12:15] = 2
    filled = fill_holes(labels)
    assert filled.dtype == np.uint16
    assert np.all(filled[2:10, 2:10, 2:10] == 5)
    assert np.array_equal(filled[12:15, 12:15, 12:15], labels[12:15, 12:15, 12:15])
    assert np.array_equal(filled == 0, ndi.binary_fill_holes(labels > 0) == 0)


def test_fill_holes_leaves_cavities_bordered_by_two_objects_and_enclosed_objects():
    labels = np.zeros((16, 16, 16), dtype=np.uint32)
    labels[2:12, 2:12, 2:12] = 1
    labels[2:12, 2:12, 7:12] = 2  # shell split between two objects
    labels[4:10, 4:10, 4:10] = 0  # cavity touching both
    assert np.array_equal(fill_holes(labels), labels)
    nested = np.zeros((16, 16, 16), dtype=np.uint32)
    nested[2:12, 2:12, 2:12] = 1
    nested[4:10, 4:10, 4:10] = 0
    nested[6:8, 6:8, 6:8] = 3  # an object inside the cavity: neither filled nor overwritten
    assert np.array_equal(fill_holes(nested), nested)


def test_fill_holes_in_plane_fills_a_tube_that_3d_leaves_open():
    tube = np.zeros((8, 16, 16), dtype=np.uint16)
    tube[:, 3:13, 3:13] = 4
    tube[:, 6:10, 6:10] = 0  # lumen open at both z faces
    assert np.array_equal(fill_holes(tube), tube)
    assert np.all(fill_holes(tube, in_plane=True)[:, 3:13, 3:13] == 4)


# --------------------------------------------------------------------------------------------------
# postprocess: channel layouts and registry
# --------------------------------------------------------------------------------------------------
def test_postprocess_binary_one_and_two_channels(pair):
    foreground = (pair > 0).astype(np.float32) * 0.9
    one = foreground[None]
    two = np.stack([1 - foreground, foreground])
    for probabilities in (one, two):
        mask = postprocess(probabilities, "none")
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        assert postprocess(probabilities, "cc").max() == 1
        assert postprocess(probabilities, "watershed").max() == 2
        assert postprocess(probabilities, "cc", threshold=0.95).max() == 0


def test_postprocess_instance_three_channels(triple):
    probabilities = _soft_instance_probabilities(triple, spatial_dims=2)
    labels = postprocess(probabilities, "watershed", channel_layout="instance", min_size=10)
    assert labels.dtype == np.uint16 and labels.max() == 3
    assert postprocess(probabilities, "cc", channel_layout="instance").max() == 1
    mask = postprocess(probabilities, "none", channel_layout="instance")
    assert mask.dtype == np.uint8
    assert np.array_equal(mask > 0, probabilities[1] + probabilities[2] > 0.5)


def test_postprocess_semantic_class_map():
    probabilities = np.zeros((3, 8, 8), dtype=np.float32)
    probabilities[0] = 1.0
    probabilities[:, 1:3, 1:3] = [[[0.1]], [[0.8]], [[0.1]]]
    probabilities[:, 1:3, 3:5] = [[[0.1]], [[0.1]], [[0.8]]]  # touches the class-1 square
    classes = postprocess(probabilities, "none", channel_layout="semantic")
    assert classes.dtype == np.uint8 and classes[1, 1] == 1 and classes[1, 3] == 2
    assert postprocess(probabilities, "cc", channel_layout="semantic").max() == 2


def test_registering_a_taken_name_fails():
    def other(maps: PredictionMaps, *, threshold: float, min_size: int) -> np.ndarray:
        return maps.foreground

    with pytest.raises(ValueError, match="already registered"):
        register_postprocessor("cc")(other)


def test_postprocess_errors_name_the_choices():
    assert {"none", "cc", "watershed"} <= set(POSTPROCESSORS)
    assert set(POSTPROCESSORS) <= set(list_postprocessors())
    assert get_postprocessor("cc") is get_postprocessor("cc")
    with pytest.raises(ValueError, match="Did you mean 'watershed'.*Available: cc, none, water"):
        postprocess(np.zeros((1, 4, 4)), "watershd")
    with pytest.raises(ValueError, match="needs 3 channels; got 2"):
        postprocess(np.zeros((2, 4, 4)), "cc", channel_layout="instance")
    with pytest.raises(ValueError, match="channel_layout"):
        postprocess(np.zeros((2, 4, 4)), "cc", channel_layout="rgb")
    with pytest.raises(ValueError, match=r"\(C, y, x\)"):
        postprocess(np.zeros((4, 4)), "cc")


# --------------------------------------------------------------------------------------------------
# Block-wise labelling
# --------------------------------------------------------------------------------------------------
BLOCKWISE_SHAPE = (64, 96, 96)
BLOCK = (16, 32, 32)


def _random_blobs(
    shape: tuple[int, ...], seed: int = 0, sigma: float = 2.5, level: float = 1.0
) -> np.ndarray:
    """Smoothed noise above ``level`` standard deviations: separate blobs of many sizes."""
    smooth = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return smooth > level * smooth.std()


def _blobby_mask(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Random blobs, plus a ball centred on a corner shared by 8 blocks and a rod along z."""
    mask = _random_blobs(shape, seed)
    grid = np.indices(shape)
    mask |= sum((g - c) ** 2 for g, c in zip(grid, (32, 64, 32))) <= 36  # corner of 8 blocks
    mask[:, 5, 5] = True  # thin rod: tiny in each block, long in total
    return mask


def _zarr_output(tmp_path, shape, chunks) -> zarr.Array:
    path = str(tmp_path / "labels.zarr")
    return zarr.open_array(path, mode="w", shape=shape, chunks=chunks, dtype="uint32")


@pytest.fixture(scope="module")
def blobby() -> np.ndarray:
    return _blobby_mask(BLOCKWISE_SHAPE)


@pytest.mark.parametrize("min_size", [0, 40])
def test_label_blockwise_equals_whole_volume(tmp_path, blobby, min_size):
    expected = connected_components(blobby, min_size=min_size)
    assert 20 < expected.max() < 2000  # many objects, several crossing block faces
    output = _zarr_output(tmp_path, blobby.shape, BLOCK)
    count = label_blockwise(blobby, output, block_size=BLOCK, min_size=min_size)
    result = output[:]
    assert count == expected.max() == result.max()
    assert sorted(np.unique(result)) == list(range(count + 1))
    assert same_partition(result, expected)


def test_label_blockwise_keeps_objects_only_large_after_merging(tmp_path):
    mask = np.zeros(BLOCKWISE_SHAPE, dtype=bool)
    mask[:, 5, 5] = True  # 16 voxels per block, 64 in all
    mask[3:5, 50:52, 50:52] = True  # 8 voxels
    output = _zarr_output(tmp_path, mask.shape, BLOCK)
    assert label_blockwise(mask, output, block_size=BLOCK, min_size=20) == 1
    assert np.array_equal(output[:] > 0, mask & (np.indices(mask.shape)[1] == 5))


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_label_blockwise_diagonal_connectivity_across_edges_and_corners(tmp_path, connectivity):
    rng = np.random.default_rng(connectivity)
    mask = rng.random((40, 50, 60)) < 0.12  # sparse voxels: many diagonal-only contacts
    block = (16, 20, 25)  # does not divide the shape
    output = _zarr_output(tmp_path, mask.shape, block)
    count = label_blockwise(mask, output, block_size=block, connectivity=connectivity)
    expected = connected_components(mask, connectivity=connectivity)
    assert count == expected.max()
    assert same_partition(output[:], expected)


def test_label_blockwise_from_hdf5_in_2d(tmp_path):
    mask = _random_blobs((96, 80), seed=3, sigma=2.0)
    with h5py.File(tmp_path / "mask.h5", "w") as f:
        source = f.create_dataset("mask", data=mask.astype(np.uint8), chunks=(16, 16))
        output = _zarr_output(tmp_path, mask.shape, (16, 16))
        count = label_blockwise(source, output, block_size=(16, 16), min_size=5)
    expected = connected_components(mask, min_size=5)
    assert count == expected.max()
    assert same_partition(output[:], expected)


def test_label_blockwise_memory_stays_near_a_few_blocks():
    """Allocations while labelling stay far below the volume (source, output exist before)."""
    shape = (96, 160, 160)  # a 9.8 MB uint32 label volume, 150 blocks
    grid = np.indices(shape, sparse=True)
    mask = (grid[0] // 6 + grid[1] // 6 + grid[2] // 6) % 3 == 0  # diagonal sheets across blocks
    output = np.zeros(shape, dtype=np.uint32)
    tracemalloc.start()
    count = label_blockwise(mask, output, block_size=BLOCK)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == connected_components(mask).max()
    message = f"peak {peak / 1e6:.1f} MB for a {output.nbytes / 1e6:.1f} MB label volume"
    assert peak < output.nbytes / 4, message


def test_label_blockwise_reports_progress(tmp_path):
    seen: list[Progress] = []
    mask = np.ones((8, 8), dtype=bool)
    output = _zarr_output(tmp_path, mask.shape, (4, 4))
    assert label_blockwise(mask, output, block_size=(4, 4), callbacks=[seen.append]) == 1
    assert [p.done for p in seen] == list(range(1, 9)) and {p.total for p in seen} == {8}


def test_label_blockwise_checks_its_arguments(tmp_path):
    mask = np.zeros((8, 8), dtype=bool)
    with pytest.raises(TypeError, match="uint32"):
        label_blockwise(mask, np.zeros((8, 8), np.int64), block_size=(4, 4))
    with pytest.raises(ValueError, match="shape"):
        label_blockwise(mask, np.zeros((8, 9), np.uint32), block_size=(4, 4))
    with pytest.raises(ValueError, match="block_size"):
        label_blockwise(mask, np.zeros((8, 8), np.uint32), block_size=(4, 4, 4))
    empty = np.ones((8, 8), np.uint32)
    assert label_blockwise(mask, empty, block_size=(4, 4)) == 0
    assert not empty.any()


# --------------------------------------------------------------------------------------------------
# Class maps, final arrays, and stored probabilities block by block
# --------------------------------------------------------------------------------------------------
def _class_map(shape: tuple[int, int, int]) -> np.ndarray:
    """Two classes of blobs that touch each other (class 2 carved out of class-1 blobs)."""
    classes = _random_blobs(shape, seed=3).astype(np.uint8)
    classes[_random_blobs(shape, seed=4)] = 2
    return classes


def test_label_blockwise_class_map_labels_classes_apart(tmp_path):
    classes = _class_map(BLOCKWISE_SHAPE)
    expected = connected_components(classes)
    merged = connected_components(classes > 0)
    assert expected.max() > merged.max()  # classes do touch: a plain mask would merge them
    output = _zarr_output(tmp_path, classes.shape, BLOCK)
    count = label_blockwise(classes, output, block_size=BLOCK, classes=True)
    assert count == expected.max()
    assert same_partition(output[:], expected)


def test_label_blockwise_final_array_in_the_smallest_dtype(tmp_path, blobby):
    expected = connected_components(blobby, min_size=10)
    scratch = _zarr_output(tmp_path, blobby.shape, BLOCK)
    asked, made = [], []

    def final(count):
        asked.append(count)
        made.append(np.zeros(blobby.shape, smallest_label_dtype(count)))
        return made[-1]

    count = label_blockwise(blobby, scratch, block_size=BLOCK, min_size=10, final=final)
    (result,) = made
    assert asked == [count] and result.dtype == np.uint16
    assert same_partition(result, expected)


def _stored(tmp_path, probabilities: np.ndarray, kind: str, scale: float = 1.0):
    data = np.rint(probabilities * 255).astype(np.uint8) if scale == 255 else probabilities
    if kind == "zarr":
        return zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=data.shape,
                               dtype=data.dtype, chunks=(1, 16, 16, 16), fill_value=0), data
    file = h5py.File(tmp_path / "p.h5", "w")
    return file.create_dataset("p", shape=data.shape, dtype=data.dtype, chunks=True), data


@pytest.mark.parametrize("layout, method, kind, scale", [
    ("binary", "cc", "zarr", 1.0), ("binary", "cc", "hdf5", 255.0), ("binary", "none", "zarr", 1.0),
    ("instance", "cc", "zarr", 1.0), ("semantic", "cc", "zarr", 1.0),
    ("semantic", "none", "hdf5", 255.0)])
def test_postprocess_blockwise_equals_whole_volume(tmp_path, blobby, layout, method, kind, scale):
    shape = BLOCKWISE_SHAPE
    if layout == "binary":
        foreground = ndi.gaussian_filter(blobby.astype(np.float32), 1.0)
        probabilities = np.stack([1 - foreground, foreground])
    elif layout == "instance":
        probabilities = _soft_instance_probabilities(connected_components(blobby), 3)
    else:
        one_hot = np.stack([_class_map(shape) == c for c in range(3)]).astype(np.float32)
        probabilities = one_hot * 0.8 + 0.2 / 3
    probabilities = probabilities.astype(np.float32)
    stored, data = _stored(tmp_path, probabilities, kind, scale)
    stored[...] = data
    whole = data.astype(np.float32) / np.float32(scale)
    expected = postprocess(whole, method, threshold=0.5, min_size=5, channel_layout=layout)
    outputs = []

    def create(dtype):
        outputs.append(np.zeros(shape, dtype))
        return outputs[-1]

    top = postprocess_blockwise(stored, method, create, scratch=lambda: np.zeros(shape, np.uint32),
                                block_size=BLOCK, threshold=0.5, min_size=5, channel_layout=layout,
                                value_scale=scale)
    (result,) = outputs
    assert result.dtype == np.uint16 and top == result.max() == expected.max() >= 1
    if method == "none":
        assert np.array_equal(result, expected)
    else:
        assert top > 20  # many objects, several crossing block faces
        assert same_partition(result, expected)


def test_postprocess_blockwise_refuses_the_watershed_and_bad_layouts():
    probabilities = np.zeros((2, 8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="no block-wise form"):
        postprocess_blockwise(probabilities, "watershed", np.zeros, block_size=(4, 4, 4))
    with pytest.raises(ValueError, match="needs 3 channels"):
        postprocess_blockwise(probabilities, "cc", np.zeros, block_size=(4, 4, 4),
                              channel_layout="instance")
    with pytest.raises(ValueError, match="scratch="):
        postprocess_blockwise(probabilities, "cc", np.zeros, block_size=(4, 4, 4))


def test_watershed_bytes_covers_the_measured_peak():
    assert watershed_bytes((10, 10, 10), 2) == 1000 * 64
    assert watershed_bytes((512, 1024, 1024), 3) > 4 * 2**30


@pytest.mark.parametrize("kind", ["zarr", "hdf5"])
def test_labels_writer_commits_atomically_and_aborts_cleanly(tmp_path, kind):
    from napari_connectomics.inference.stores import LabelsWriter, open_output

    path = tmp_path / ("pred.zarr" if kind == "zarr" else "pred.h5")
    writer = open_output(path, (2, 4, 8, 8), "float16")
    writer.write((slice(0, 4), slice(0, 8), slice(0, 8)), np.full((2, 4, 8, 8), 0.75, np.float32))
    writer.commit()

    def names():
        if kind == "zarr":
            return sorted(zarr.open_group(str(path), mode="r").keys())
        with h5py.File(path, "r") as file:
            return sorted(file.keys())

    with pytest.raises(RuntimeError, match="boom"), LabelsWriter(path) as labels:
        assert float(labels.read("probabilities")[1, 0, 0, 0]) == 0.75
        labels.create((4, 8, 8), np.uint32, final=False)
        labels.create((4, 8, 8), np.uint16)[...] = 3
        raise RuntimeError("boom")
    assert names() == ["probabilities"]
    with LabelsWriter(path) as labels:
        labels.create((4, 8, 8), np.uint32, final=False)
        labels.create((4, 8, 8), np.uint16)[...] = 3
        labels.commit()
    assert names() == ["labels", "probabilities"]
    with pytest.raises(ValueError, match="already holds 'labels'"):
        LabelsWriter(path)
    with LabelsWriter(path, overwrite=True) as labels:
        labels.create((4, 8, 8), np.uint16)[...] = 5
        labels.commit()
    assert names() == ["labels", "probabilities"]
    if kind == "zarr":
        assert int(zarr.open_array(str(path), path="labels", mode="r")[0, 0, 0]) == 5
    else:
        with h5py.File(path, "r") as file:
            assert int(file["labels"][0, 0, 0]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]

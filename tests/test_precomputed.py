"""Neuroglancer precomputed: reading scales with their voxel grid (x, y, z, channel on disk, (c,) z,
y, x here), the real CLI predicting from and to precomputed (equal to Zarr), the dask path,
napari's reader and one-line errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import run_cli
from napari_connectomics.data.volumes import VolumeError, open_volume

ts = pytest.importorskip("tensorstore")

RAW_SHAPE = (16, 80, 80)  # z, y, x: the tiny network's window is 16x64x64
VOXEL = (30.0, 5.0, 5.0)  # z, y, x (nm)
OFFSET = (2, 20, 10)  # z, y, x (voxels)
BLOCK = "8,48,48"  # several blocks (z-slabs locally, tasks with dask) and several chunks


def write_precomputed(folder: Path, scales: list[np.ndarray], *, voxel=(40.0, 4.0, 4.0),
                      offset=(0, 0, 0), chunk=(4, 8, 8), kind="image") -> Path:
    """A precomputed volume written with tensorstore itself (not our writer): ``scales`` are
    (c,) z, y, x arrays, finest first, each half the size of the one before in y and x."""
    first = scales[0]
    channels = first.shape[0] if first.ndim == 4 else 1
    for level, data in enumerate(scales):
        factor = (1, 2**level, 2**level)
        resolution = [v * f for v, f in zip(voxel, factor)]
        voxel_offset = [o // f for o, f in zip(offset, factor)]
        spatial = data.shape[-3:]
        spec = {"driver": "neuroglancer_precomputed", "kvstore": f"file://{folder}/",
                "multiscale_metadata": {"type": kind, "data_type": data.dtype.name,
                                        "num_channels": channels},
                "scale_metadata": {"size": list(spatial[::-1]), "resolution": resolution[::-1],
                                   "voxel_offset": voxel_offset[::-1],
                                   "chunk_size": [min(c, n) for c, n in zip(chunk, spatial)][::-1],
                                   "encoding": "raw"}}
        store = ts.open(spec, create=True, open=level > 0).result()
        xyzc = data.T if data.ndim == 4 else data.T[..., None]  # (c,) z, y, x -> x, y, z, c
        store[...] = xyzc
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def test_reads_channels_zyx_with_resolution_and_offset_lazily(tmp_path):
    data = np.random.default_rng(0).random((2, 6, 20, 30)).astype(np.float32)
    folder = write_precomputed(tmp_path / "em", [data], offset=(3, -2, 10))
    volume = open_volume(folder)
    assert volume.shape == (2, 6, 20, 30) and volume.dtype == np.float32
    assert volume.scale == (1.0, 40.0, 4.0, 4.0)
    assert volume.translate == (0.0, 120.0, -8.0, 40.0)  # voxel_offset * resolution, z, y, x
    assert volume.chunks == (2, 4, 8, 8)
    np.testing.assert_array_equal(volume.read(), data)
    np.testing.assert_array_equal(volume[1, 2:5, ::-3, 7], data[1, 2:5, ::-3, 7])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(volume))[0, 1], data[0, 1])

    for spec in (f"file://{folder}", f"precomputed://{folder}", f"precomputed://file://{folder}",
                 f"{folder}:0", f"{folder}/4_4_40", f"{folder}/0"):
        same = open_volume(spec)
        assert same.shape == volume.shape and same.source == f"{folder}:4_4_40", spec
    assert open_volume(volume.file_spec).translate == volume.translate

    # lazy: a damaged chunk outside the region read is never touched
    chunk = sorted((folder / "4_4_40").iterdir())[-1]
    chunk.write_bytes(b"broken")
    fresh = open_volume(folder)
    np.testing.assert_array_equal(fresh[:, 0:4, 0:8, 0:8], data[:, 0:4, 0:8, 0:8])
    with pytest.raises(Exception):
        fresh.read()

    gray = (data[0] * 255).astype(np.uint8)
    single = open_volume(write_precomputed(tmp_path / "gray", [gray]))
    assert single.shape == (6, 20, 30) and single.scale == (40.0, 4.0, 4.0)  # one channel: z, y, x
    np.testing.assert_array_equal(single.read(), gray)


def test_several_scales_read_scale_n_with_its_own_voxel_grid(tmp_path):
    full = np.random.default_rng(1).integers(0, 255, (4, 32, 48)).astype(np.uint8)
    folder = write_precomputed(tmp_path / "stack", [full, full[:, ::2, ::2], full[:, ::4, ::4]],
                               offset=(2, 8, 16))
    for spec, shape, voxel, origin in [
            (folder, (4, 32, 48), (40.0, 4.0, 4.0), (80.0, 32.0, 64.0)),
            (f"{folder}/1", (4, 16, 24), (40.0, 8.0, 8.0), (80.0, 32.0, 64.0)),
            (f"{folder}:2", (4, 8, 12), (40.0, 16.0, 16.0), (80.0, 32.0, 64.0)),
            (f"{folder}/16_16_40", (4, 8, 12), (40.0, 16.0, 16.0), (80.0, 32.0, 64.0))]:
        volume = open_volume(spec)
        assert (volume.shape, volume.scale, volume.translate) == (shape, voxel, origin), spec
    np.testing.assert_array_equal(open_volume(f"{folder}/1").read(), full[:, ::2, ::2])
    np.testing.assert_array_equal(open_volume(f"{folder}/2")[1:3], full[1:3, ::4, ::4])


def test_bad_inputs_are_one_line_errors_naming_what_exists(tmp_path):
    def error(spec) -> str:
        with pytest.raises(VolumeError) as caught:
            open_volume(spec)
        message = str(caught.value)
        assert "\n" not in message
        return message

    empty = tmp_path / "nothing.precomputed"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    message = error(empty)
    assert "no 'info' file" in message and "notes.txt" in message

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("x")
    message = error(plain)
    assert "not a Zarr store or a Neuroglancer precomputed volume" in message and "a.txt" in message

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "info").write_text("{not json")
    assert "is not JSON" in error(bad)
    (bad / "info").write_text(json.dumps({"type": "image", "data_type": "uint8"}))
    message = error(bad)
    assert "lacks 'scales'" in message and "data_type, type" in message
    (bad / "info").write_text(json.dumps({"type": "image", "data_type": "float16", "scales": []}))
    assert "'float16' is not a precomputed data type (uint8" in error(bad)
    (bad / "info").write_text(json.dumps({"type": "image", "data_type": "uint8", "scales": [
        {"key": "s0", "size": [4, 4], "resolution": [1, 1, 1], "chunk_sizes": [[4, 4, 4]]}]}))
    assert "'size' must be three positive integers (x, y, z), not [4, 4]" in error(bad)

    scaled = write_precomputed(tmp_path / "two", [np.zeros((2, 8, 8), np.uint8)] * 1)
    message = error(f"{scaled}/7")
    assert "scale '7' does not exist" in message and "0 (key 4_4_40, 2x8x8 z-y-x)" in message

    group = tmp_path / "group.precomputed"
    write_precomputed(group / "a", [np.zeros((2, 8, 8), np.uint8)])
    write_precomputed(group / "b", [np.zeros((2, 8, 8), np.uint8)])
    assert "several precomputed volumes (a, b)" in error(group)
    assert "its precomputed volumes are: a, b" in error(f"{group}:c")
    assert open_volume(f"{group}:b").shape == (2, 8, 8)
    assert "only local volumes" in error("precomputed://gs://bucket/em")


def test_outputs_are_written_atomically_with_precomputed_dtypes(tmp_path):
    from napari_connectomics.inference.predict import predict
    from napari_connectomics.inference.stores import open_output, parse_output, write_labels

    assert parse_output(tmp_path / "p.precomputed").key == "probabilities"
    assert parse_output(f"precomputed://{tmp_path / 'p'}").kind == "precomputed"
    assert parse_output(f"{tmp_path / 'p.precomputed'}:probs").key == "probs"
    with pytest.raises(ValueError, match="name one volume"):
        parse_output(f"{tmp_path / 'p.precomputed'}/a/b")
    with pytest.raises(ValueError, match="is a precomputed folder, which cannot be resumed") as err:
        predict(tmp_path / "no.ckpt", np.zeros((4, 8, 8)), output=tmp_path / "p.precomputed",
                resume=True)
    assert "\n" not in str(err.value)

    out = tmp_path / "pred.precomputed"
    probabilities = np.random.default_rng(2).random((2, 4, 16, 24)).astype(np.float32)
    writer = open_output(out, probabilities.shape, "float16", chunks=(1, 2, 8, 8),
                         voxel_size=(40.0, 4.0, 4.0), origin=(80.0, 8.0, 16.0))
    writer.write((slice(0, 4), slice(0, 16), slice(0, 24)), probabilities)
    assert not out.exists() and len(leftovers(tmp_path)) == 1  # only the hidden partial folder
    writer.commit()
    assert leftovers(tmp_path) == []
    info = json.loads((out / "probabilities" / "info").read_text())
    assert info["type"] == "image" and info["data_type"] == "float32"  # no float16 in precomputed
    assert info["scales"][0]["voxel_offset"] == [4, 2, 2] and info["scales"][0]["chunk_sizes"] == [[8, 8, 2]]
    np.testing.assert_array_equal(writer.open_result()[...], probabilities)

    write_labels(out, (probabilities[1] > 0.5).astype(np.uint16), name="labels")
    labels = json.loads((out / "labels" / "info").read_text())
    assert (labels["type"], labels["data_type"]) == ("segmentation", "uint32")
    assert labels["scales"][0]["encoding"] == "compressed_segmentation"
    assert labels["scales"][0]["resolution"] == [4.0, 4.0, 40.0]
    np.testing.assert_array_equal(open_volume(f"{out}:labels").read(), probabilities[1] > 0.5)

    # connected components block by block into the folder (a scratch volume, then the labels)
    from napari_connectomics.inference.postprocess import (
        postprocess,
        postprocess_blockwise,
        same_partition,
    )
    from napari_connectomics.inference.stores import LabelsWriter

    with LabelsWriter(out, "cells") as labels_writer:
        stored_probabilities = labels_writer.read("probabilities")
        top = postprocess_blockwise(
            stored_probabilities, "cc", lambda dtype: labels_writer.create((4, 16, 24), dtype),
            scratch=lambda: labels_writer.create((4, 16, 24), np.uint32, final=False),
            block_size=(2, 8, 8), threshold=0.5)
        labels_writer.commit()
    assert sorted(p.name for p in out.iterdir()) == ["cells", "labels", "probabilities"]
    cells = open_volume(f"{out}:cells").read()
    assert cells.max() == top and same_partition(cells, postprocess(probabilities, "cc", threshold=0.5))

    small = open_output(tmp_path / "u8.precomputed", (1, 4, 16, 24), "uint8")
    small.write((slice(0, 4), slice(0, 16), slice(0, 24)), probabilities[:1])
    small.commit()
    stored = open_volume(tmp_path / "u8.precomputed")
    assert stored.dtype == np.uint8 and stored.shape == (4, 16, 24)
    np.testing.assert_array_equal(stored.read(), np.rint(probabilities[0] * 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# napari
# --------------------------------------------------------------------------------------------


def test_napari_reader_gives_lazy_layers_with_the_voxel_grid(tmp_path):
    import dask.array as da

    from napari_connectomics._reader import napari_get_reader
    from napari_connectomics.inference.stores import open_output, write_labels

    full = np.random.default_rng(3).integers(0, 255, (4, 32, 48)).astype(np.uint8)
    stack = write_precomputed(tmp_path / "stack", [full, full[:, ::2, ::2]], offset=(1, 0, 4))
    reader = napari_get_reader(str(stack))
    assert callable(reader)
    [(data, meta, kind)] = reader(str(stack))
    assert kind == "image" and meta["multiscale"] and meta["name"] == "stack"
    assert all(isinstance(level, da.Array) for level in data)
    assert [level.shape for level in data] == [(4, 32, 48), (4, 16, 24)]
    assert meta["scale"] == (40.0, 4.0, 4.0) and meta["translate"] == (40.0, 0.0, 16.0)
    np.testing.assert_array_equal(np.asarray(data[1][2]), full[2, ::2, ::2])

    out = tmp_path / "pred.precomputed"
    probabilities = np.random.default_rng(4).random((2, 4, 16, 24)).astype(np.float32)
    writer = open_output(out, probabilities.shape, "float32", voxel_size=(40.0, 4.0, 4.0))
    writer.write((slice(0, 4), slice(0, 16), slice(0, 24)), probabilities)
    writer.commit()
    write_labels(out, (probabilities[1] > 0.5).astype(np.uint8), name="labels")
    layers = {kind: (data, meta) for data, meta, kind in napari_get_reader(str(out))(str(out))}
    data, meta = layers["image"]
    assert isinstance(data, da.Array) and data.shape == (2, 4, 16, 24)
    assert meta["channel_axis"] == 0 and meta["name"] == ["pred:probabilities[0]", "pred:probabilities[1]"]
    assert meta["blending"] == "additive" and meta["scale"] == (40.0, 4.0, 4.0)
    labels, label_meta = layers["labels"]
    assert isinstance(labels, da.Array) and label_meta["name"] == "pred:labels"
    np.testing.assert_array_equal(np.asarray(labels), probabilities[1] > 0.5)

    assert napari_get_reader(str(tmp_path)) is not None  # a folder holding volumes
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    assert napari_get_reader(str(nothing)) is None


# --------------------------------------------------------------------------------------------
# The real CLI: precomputed in and out, equal to Zarr in and out; the dask path
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """The same input as Zarr and as precomputed, predicted by the CLI into Zarr and into
    precomputed (labels too): (folder, checkpoint, CompletedProcess of each run)."""
    from conftest import tiny_checkpoint

    folder = tmp_path_factory.mktemp("precomputed")
    checkpoint = tiny_checkpoint(folder / "tiny.ckpt")
    raw = (np.random.default_rng(5).random(RAW_SHAPE) * 255).astype(np.uint8)
    zarr.open_group(str(folder / "em.zarr"), mode="w").create_array("raw", data=raw)
    write_precomputed(folder / "em", [raw], voxel=VOXEL, offset=OFFSET, chunk=(8, 32, 32))
    common = ["--checkpoint", str(checkpoint), "--block", BLOCK, "--threshold", "0.5", "-q"]
    runs = {
        "zarr": run_cli("predict", "--input", f"{folder / 'em.zarr'}/raw",
                        "--output", str(folder / "pred.zarr"), *common),
        "precomputed": run_cli("predict", "--input", f"file://{folder / 'em'}",
                               "--output", str(folder / "pred.precomputed"), *common),
    }
    return folder, checkpoint, runs


@pytest.mark.slow
def test_cli_predicts_precomputed_to_precomputed_as_zarr_to_zarr(predicted):
    from napari_connectomics.cli import _prediction_source

    folder, _, runs = predicted
    for run in runs.values():
        assert run.returncode == 0, run.stderr[-2000:]
    assert "pred.precomputed:labels (uint32" in runs["precomputed"].stdout
    out = folder / "pred.precomputed"
    reference = zarr.open_group(str(folder / "pred.zarr"), mode="r")
    expected = reference["probabilities"][...]
    assert expected.dtype == np.float16  # the config's output dtype

    probabilities = open_volume(f"{out}:probabilities")
    assert probabilities.dtype == np.float32  # float16 is no precomputed data type
    stored = probabilities.read()
    # the same float32 probabilities: Zarr holds them rounded to float16 (to nearest, as numpy)
    np.testing.assert_array_equal(stored.astype(np.float16), expected)
    assert (stored != stored.astype(np.float16)).any()  # and precomputed really kept float32
    np.testing.assert_array_equal(open_volume(f"{out}:labels").read(), reference["labels"][...])

    # the input's voxel grid, carried over; chunks aligned with the blocks
    assert probabilities.scale == (1.0, *VOXEL)
    assert probabilities.translate == (0.0, *(o * v for o, v in zip(OFFSET, VOXEL)))
    image = json.loads((out / "probabilities" / "info").read_text())
    scale = image["scales"][0]
    assert (image["type"], image["num_channels"], scale["encoding"]) == ("image", 2, "raw")
    assert scale["resolution"] == list(VOXEL[::-1]) and scale["voxel_offset"] == list(OFFSET[::-1])
    assert scale["chunk_sizes"] == [[80, 80, 8]]  # x, y, z: locally blocks run as 8-plane z-slabs
    labels = json.loads((out / "labels" / "info").read_text())
    assert labels["type"] == "segmentation" and labels["scales"][0]["voxel_offset"] == scale["voxel_offset"]
    assert (out / "probabilities" / "provenance").is_file()
    assert leftovers(folder) == []

    assert _prediction_source(str(out)).source == f"{out / 'labels'}:{scale['key']}"  # evaluate's default


@pytest.mark.slow
def test_cli_errors_on_a_missing_scale_in_one_line_and_writes_nothing(predicted):
    folder, checkpoint, _ = predicted
    bad = run_cli("predict", "--checkpoint", str(checkpoint), "--input", f"{folder / 'em'}/3",
                  "--output", str(folder / "never.precomputed"))
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert "scale '3' does not exist" in lines[0] and "0 (key 5_5_30, 16x80x80 z-y-x)" in lines[0]
    assert not (folder / "never.precomputed").exists() and leftovers(folder) == []


@pytest.mark.slow
def test_dask_scheduler_writes_precomputed_like_the_default_path(predicted):
    folder, checkpoint, runs = predicted
    out = folder / "dask.precomputed"
    run = run_cli("predict", "--checkpoint", str(checkpoint), "--input", str(folder / "em"),
                  "--output", str(out), "--block", BLOCK, "--scheduler", "dask", "-q")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "dask" in run.stdout and "blocks   8" in run.stdout  # 2 x 2 x 2 tasks, one per block
    distributed = open_volume(f"{out}:probabilities").read()
    single = open_volume(f"{folder / 'pred.precomputed'}:probabilities").read()
    # independent blocks vs overlap-add z-slabs: the same windows, summed in another order
    assert float(np.abs(distributed - single).max()) <= 1e-4
    info = json.loads((out / "probabilities" / "info").read_text())
    assert info["scales"][0]["chunk_sizes"] == [[48, 48, 8]]  # x, y, z: the 8x48x48 blocks' own
    # one chunk file per block, each the block's own box (x, y, z, shifted by the voxel_offset)
    z, y, x = ([(o + a, o + min(a + step, n)) for a in range(0, n, step)]
               for o, n, step in zip(OFFSET, RAW_SHAPE, (8, 48, 48)))
    boxes = {f"{a}-{b}_{c}-{d}_{e}-{f}" for a, b in x for c, d in y for e, f in z}
    assert {p.name for p in (out / "probabilities" / "5_5_30").iterdir()} == boxes
    assert len(boxes) == 8 and leftovers(folder) == []

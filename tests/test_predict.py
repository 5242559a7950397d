"""Prediction engine: equality with MONAI, block-wise == whole volume, TTA, outputs, cancel, dask,
and one-line errors for bad inputs (tiny random-weight models, real Zarr/HDF5 files)."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr
from monai.inferers import sliding_window_inference
from omegaconf import OmegaConf

from napari_connectomics.config import load_config
from napari_connectomics.data.normalize import intensity_stats, normalize_intensity
from napari_connectomics.data.volumes import open_volume
from napari_connectomics.inference.predict import PredictOptions, predict, tta_transforms
from napari_connectomics.inference.stores import open_output, write_labels
from napari_connectomics.inference.windows import make_grid, plan_blocks
from napari_connectomics.models import build_model
from napari_connectomics.models.architectures.base import ConnectomicsModel
from napari_connectomics.models.checkpoint import CONFIG_KEY, atomic_torch_save

TOLERANCE = 1e-4
UNET = ["model.architecture=monai_unet", "model.filters=[4,8]", "model.num_res_units=1"]


def make_cfg(*overrides: str):
    return load_config(overrides=[*UNET, *overrides])


def cfg_3d(*extra: str):
    return make_cfg("model.spatial_dims=3", "data.patch_size=[8,32,32]", *extra)


def cfg_2d(*extra: str):
    return make_cfg("model.spatial_dims=2", "data.patch_size=[32,32]", *extra)


def built(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def save_checkpoint(path: Path, model: torch.nn.Module, cfg) -> Path:
    state = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
             CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}
    return atomic_torch_save(state, path)


class Pointwise(ConnectomicsModel):
    """A 1x1x1 convolution: equivariant to flips and rotations, so TTA must not change it."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2) -> None:
        super().__init__(architecture="pointwise", spatial_dims=3)
        self.conv = torch.nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def image(shape, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 200).astype(np.uint8)


def reference(model, cfg, volume, window, blending="gaussian", padding_mode="constant",
              overlap=0.25, batch=4):
    """MONAI's sliding_window_inference on the normalised volume, then the activation."""
    normalised = normalize_intensity(volume, cfg.data.normalize, intensity_stats(volume))
    x = torch.from_numpy(normalised)[None, None]
    if cfg.model.spatial_dims == 2:
        def predictor(windows):
            return model(windows[:, :, 0])[:, :, None]
    else:
        predictor = model
    with torch.no_grad():
        logits = sliding_window_inference(x, roi_size=window, sw_batch_size=batch,
                                          predictor=predictor, overlap=overlap, mode=blending,
                                          padding_mode=padding_mode)[0]
    act = torch.sigmoid(logits) if logits.shape[0] == 1 else torch.softmax(logits, 0)
    return act.numpy()


def f32(**kwargs) -> PredictOptions:
    return PredictOptions(**{"output_dtype": "float32", "device": "cpu", **kwargs})


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def tree_digest(path: Path) -> str:
    """Hash of every file's name, bytes and mtime below ``path`` (or of the file itself)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
        digest.update(str(file.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def unet3d():
    cfg = cfg_3d()
    return built(cfg), cfg


@pytest.fixture(scope="module")
def unet2d():
    cfg = cfg_2d()
    return built(cfg), cfg


@pytest.fixture(scope="module")
def checkpoint3d(tmp_path_factory, unet3d):
    model, cfg = unet3d
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "unet3d.ckpt", model, cfg)


@pytest.fixture(scope="module")
def volume():
    return image((24, 80, 80))


# --------------------------------------------------------------------------------------------
# Equality with MONAI; blocks == whole volume
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims, blending, out_channels", [
    (3, "gaussian", 2), (3, "constant", 1), (2, "gaussian", 2), (2, "constant", 1)])
def test_whole_volume_matches_monai(volume, dims, blending, out_channels):
    cfg = (cfg_3d if dims == 3 else cfg_2d)(f"model.out_channels={out_channels}")
    model = built(cfg, seed=1)
    window = (8, 32, 32) if dims == 3 else (1, 32, 32)
    result = predict(model, volume, f32(blending=blending), cfg=cfg)
    assert result.blocks == 1 and result.window == window
    assert result.activation == ("sigmoid" if out_channels == 1 else "softmax")
    assert result.probabilities.shape == (out_channels, *volume.shape)
    expected = reference(model, cfg, volume, window, blending)
    assert max_diff(result.probabilities, expected) <= TOLERANCE


@pytest.mark.parametrize("window", [(8, 32, 32), (16, 32, 32)])
def test_blocks_match_whole_volume_3d(unet3d, volume, window):
    model, cfg = unet3d
    # memory_limit_mb=1: a full-plane slab does not fit, so blocks stay independent
    blocks = predict(model, volume, f32(window=window, block_size=(8, 32, 32), memory_limit_mb=1),
                     cfg=cfg)
    whole = predict(model, volume, f32(window=window), cfg=cfg)
    assert blocks.blocks == 27 and whole.blocks == 1
    assert max_diff(blocks.probabilities, reference(model, cfg, volume, window)) <= TOLERANCE
    assert max_diff(blocks.probabilities, whole.probabilities) <= TOLERANCE


def test_blocks_match_whole_volume_2d(unet2d, volume):
    model, cfg = unet2d
    blocks = predict(model, volume, f32(block_size=(8, 32, 32), overlap=0.5), cfg=cfg)
    expected = reference(model, cfg, volume, (1, 32, 32), overlap=0.5)
    assert max_diff(blocks.probabilities, expected) <= TOLERANCE


def test_blocks_match_monai_when_the_window_is_padded():
    """A volume thinner than the smallest window the network takes is padded as MONAI pads it."""
    cfg = make_cfg("model.filters=[4,8,16]", "data.patch_size=[8,32,32]")  # multiples of 4
    model = built(cfg)
    thin = image((3, 40, 40), seed=2)
    options = f32(window=(4, 16, 16), padding_mode="reflect", block_size=(4, 16, 16))
    result = predict(model, thin, options, cfg=cfg)
    expected = reference(model, cfg, thin, (4, 16, 16), padding_mode="reflect")
    assert max_diff(result.probabilities, expected) <= TOLERANCE


class CountingArray:
    """An array-like recording the largest read, to prove blocks read block-sized regions."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.largest = 0

    def __getitem__(self, index):
        data = self.array[index]
        self.largest = max(self.largest, data.size)
        return data


def test_block_reads_are_bounded_by_the_block():
    cfg = cfg_3d("data.normalize=none")  # no statistics pass: every read is a block read
    model = built(cfg)
    data = image((16, 128, 128), seed=3)
    counting = CountingArray(data)
    options = f32(window=(4, 16, 16), block_size=(8, 32, 32), batch_size=16, memory_limit_mb=1)
    result = predict(model, counting, options, cfg=cfg)
    assert result.blocks == 2 * 4 * 4  # independent blocks: a full-plane slab does not fit
    halo_box = (8 + 2 * 3) * (32 + 2 * 15) * (32 + 2 * 15)  # core plus (window - 1) each side
    assert 0 < counting.largest <= halo_box < data.size / 4
    expected = reference(model, cfg, data, (4, 16, 16), batch=16)
    assert max_diff(result.probabilities, expected) <= TOLERANCE


def test_block_plan_covers_the_volume_once():
    grid = make_grid((24, 80, 80), (16, 32, 32), 0.25)
    covered = np.zeros((24, 80, 80), np.int32)
    for block in plan_blocks(grid, (8, 32, 32)):
        covered[block.output_region(grid)] += 1
    assert (covered == 1).all()


def test_automatic_blocks_within_a_memory_limit(unet3d, volume):
    model, cfg = unet3d
    whole = predict(model, volume, f32(), cfg=cfg)
    limited = predict(model, volume, f32(memory_limit_mb=1), cfg=cfg)
    assert whole.blocks == 1 and limited.blocks > 1
    assert max_diff(limited.probabilities, whole.probabilities) <= TOLERANCE


# --------------------------------------------------------------------------------------------
# Overlap-add over z-slabs: every window of the grid computed exactly once
# --------------------------------------------------------------------------------------------


class CountingModel(torch.nn.Module):
    """Wraps a model and counts the windows it is given."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.windows, self.calls = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("window, block_size, overlap, batch, slabs", [
    ((8, 32, 32), (8, 80, 80), 0.25, 4, 3),      # y-x cover the volume: slabs
    ((16, 32, 32), (8, 32, 32), 0.25, 3, 3),     # small blocks converted to full-plane slabs
    ((8, 32, 32), (5, 48, 64), 0.5, 5, 5),       # slabs thinner than the window, odd sizes
    ((8, 32, 32), (24, 80, 80), 0.25, 1, 1),     # one slab: the whole volume
])
def test_slabs_compute_each_window_once(volume, window, block_size, overlap, batch, slabs):
    cfg = cfg_3d()
    inner = built(cfg, seed=2)
    counting = CountingModel(inner).eval()
    options = f32(window=window, block_size=block_size, overlap=overlap, batch_size=batch)
    result = predict(counting, volume, options, cfg=cfg)
    grid = make_grid(volume.shape, window, overlap)
    assert result.blocks == slabs
    assert counting.windows == grid.n_windows
    assert counting.calls == sum(
        -(-len([s for s in grid.starts[0] if lo <= s < lo + block_size[0]])
          * len(grid.starts[1]) * len(grid.starts[2]) // batch)
        for lo in range(0, volume.shape[0], block_size[0]))
    expected = reference(inner, cfg, volume, window, overlap=overlap, batch=batch)
    assert max_diff(result.probabilities, expected) <= TOLERANCE


def test_independent_blocks_recompute_shared_windows(volume):
    """The contrast: independent blocks compute windows straddling their faces more than once."""
    cfg = cfg_3d()
    counting = CountingModel(built(cfg, seed=2)).eval()
    options = f32(window=(8, 32, 32), block_size=(8, 32, 32), memory_limit_mb=1)
    predict(counting, volume, options, cfg=cfg)
    assert counting.windows > make_grid(volume.shape, (8, 32, 32), 0.25).n_windows


def test_slabs_2d_network_and_padded_window():
    cfg = cfg_2d()
    model = built(cfg, seed=3)
    data = image((6, 70, 50), seed=4)
    result = predict(model, data, f32(block_size=(2, 70, 50), overlap=0.5), cfg=cfg)
    assert result.blocks == 3
    expected = reference(model, cfg, data, (1, 32, 32), overlap=0.5)
    assert max_diff(result.probabilities, expected) <= TOLERANCE
    cfg = make_cfg("model.filters=[4,8,16]", "data.patch_size=[8,32,32]")
    model = built(cfg)
    thin = image((3, 40, 40), seed=2)
    for padding in ("reflect", "constant"):
        options = f32(window=(4, 16, 16), padding_mode=padding, block_size=(4, 40, 40))
        result = predict(model, thin, options, cfg=cfg)
        expected = reference(model, cfg, thin, (4, 16, 16), padding_mode=padding)
        assert max_diff(result.probabilities, expected) <= TOLERANCE


def test_slab_reads_are_bounded_by_the_slab(tmp_path):
    cfg = cfg_3d("data.normalize=none")
    model = built(cfg)
    data = image((32, 64, 64), seed=5)
    counting = CountingArray(data)
    options = PredictOptions(window=(4, 16, 16), block_size=(8, 64, 64), batch_size=16,
                             device="cpu", output_dtype="float32")
    result = predict(model, counting, options, cfg=cfg, output=tmp_path / "pred.zarr")
    assert result.blocks == 4
    assert 0 < counting.largest <= (8 + 4) * 64 * 64 < data.size / 2
    expected = reference(model, cfg, data, (4, 16, 16), batch=16)
    assert max_diff(result.probabilities[...], expected) <= TOLERANCE


# --------------------------------------------------------------------------------------------
# Test-time augmentation
# --------------------------------------------------------------------------------------------


def test_tta_transform_sets():
    assert len(tta_transforms(2, (1, 32, 32))) == 8  # y, x flips, each with/without a turn
    assert len(tta_transforms(3, (8, 32, 32))) == 16
    assert len(tta_transforms(3, (8, 32, 48))) == 8  # no rotation of a non-square window


@pytest.mark.parametrize("block_size", [None, (8, 32, 32)])
def test_tta_on_an_equivariant_model_changes_nothing(volume, block_size):
    cfg = cfg_3d()
    torch.manual_seed(0)
    model = Pointwise().eval()
    plain = predict(model, volume, f32(block_size=block_size), cfg=cfg)
    augmented = predict(model, volume, f32(block_size=block_size, tta=True), cfg=cfg)
    assert max_diff(augmented.probabilities, plain.probabilities) <= 1e-5


def test_tta_runs_on_a_2d_network(unet2d):
    model, cfg = unet2d
    section = image((48, 48), seed=4)
    result = predict(model, section, f32(tta=True), cfg=cfg)
    assert result.probabilities.shape == (2, 1, 48, 48)
    assert np.allclose(result.probabilities.sum(0), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def test_roi_and_channels():
    cfg = cfg_3d("data.normalize=none", "model.in_channels=2")
    torch.manual_seed(0)
    model = Pointwise(in_channels=2).eval()
    data = np.stack([image((16, 64, 64), 5), image((16, 64, 64), 6)])
    roi = (slice(4, 12), slice(0, 40), slice(8, 64))
    cropped = predict(model, data, f32(roi=roi), cfg=cfg)
    direct = predict(model, data[:, 4:12, 0:40, 8:64].copy(), f32(), cfg=cfg)
    assert cropped.probabilities.shape == (2, 8, 40, 56)
    assert max_diff(cropped.probabilities, direct.probabilities) <= TOLERANCE


def test_default_window_shrinks_to_a_small_volume(unet3d, caplog):
    model, cfg = unet3d
    small = image((6, 40, 40), seed=7)
    with caplog.at_level(logging.WARNING, logger="napari_connectomics.inference.windows"):
        result = predict(model, small, f32(), cfg=cfg)
    assert result.window == (6, 32, 32)
    assert "larger than the volume" in caplog.text
    assert max_diff(result.probabilities, reference(model, cfg, small, (6, 32, 32))) <= TOLERANCE


def test_options_from_config():
    cfg = cfg_3d("inference.overlap=0.5", "inference.blending=constant",
                 "inference.block_size=[8,64,64]")
    options = PredictOptions.from_config(cfg, batch_size=2, window=None, tta=True)
    assert (options.overlap, options.blending, options.batch_size, options.tta) == (
        0.5, "constant", 2, True)
    assert options.block_size == (8, 64, 64) and options.window is None
    with pytest.raises(ValueError, match="unknown prediction option 'windw'"):
        PredictOptions.from_config(cfg, windw=(8, 8, 8))
    with pytest.raises(ValueError, match="choose one of: gaussian, constant"):
        PredictOptions(blending="linear")


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, dtype, key", [
    ("pred.zarr", "float16", "probabilities"), ("pred.zarr:fg/probs", "uint8", "fg/probs"),
    ("pred.h5", "uint8", "probabilities"), ("pred.h5:p", "float16", "p")])
def test_outputs(tmp_path, unet3d, volume, name, dtype, key):
    model, cfg = unet3d
    exact = predict(model, volume, f32(), cfg=cfg).probabilities
    options = PredictOptions(output_dtype=dtype, block_size=(24, 48, 48))
    result = predict(model, volume, options, cfg=cfg, output=tmp_path / name)
    stored = np.asarray(result.probabilities[...])
    path = tmp_path / name.split(":")[0]
    assert result.output_path == path
    assert stored.dtype == np.dtype(dtype) and stored.shape == (2, *volume.shape)
    if dtype == "uint8":
        assert np.abs(stored.astype(np.int16) - np.rint(exact * 255)).max() <= 1
        assert result.probabilities.attrs["scale"] == 255
    else:
        assert max_diff(stored, exact) <= 1e-3
    assert result.probabilities.attrs["activation"] == "softmax"
    assert open_volume(f"{path}:{key}").shape == stored.shape
    assert hidden_leftovers(tmp_path) == []
    if isinstance(result.probabilities, h5py.Dataset):
        with pytest.raises(ValueError, match="close it first"):
            write_labels(tmp_path / name, np.zeros((2, 2, 2), np.int32))
        result.probabilities.file.close()
    write_labels(tmp_path / name, (exact[1] > 0.5).astype(np.int64) * 70000)
    assert open_volume(f"{path}:labels").dtype == np.uint32
    with pytest.raises(ValueError, match="already holds 'labels'"):
        write_labels(tmp_path / name, np.zeros((2, 2, 2), np.int32))
    write_labels(tmp_path / name, np.ones((2, 2, 2), np.int64), overwrite=True)
    assert open_volume(f"{path}:labels").dtype == np.uint16
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["pred.zarr", "pred.h5"])
def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path, unet3d, name):
    model, cfg = unet3d
    small = image((8, 32, 32))
    target = tmp_path / name
    predict(model, small, PredictOptions(output_dtype="uint8"), cfg=cfg, output=target)
    before = tree_digest(target)
    with pytest.raises(ValueError, match="already exists") as error:
        predict(model, small, PredictOptions(output_dtype="float16"), cfg=cfg, output=target)
    assert "\n" not in str(error.value)
    assert tree_digest(target) == before
    result = predict(model, small, PredictOptions(output_dtype="float16"), cfg=cfg,
                     output=target, overwrite=True)
    assert result.probabilities.dtype == np.float16
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("block_size, name", [
    (None, "pred.zarr"), ((8, 32, 32), "pred.h5"), ((8, 32, 32), None)])
def test_cancelled_run_leaves_no_output(tmp_path, unet3d, volume, block_size, name):
    model, cfg = unet3d
    stop = threading.Event()
    stages = []

    def on_progress(progress):
        stages.append(progress.stage)
        stop.set()

    options = PredictOptions(block_size=block_size, batch_size=1)
    result = predict(model, volume, options, [on_progress], stop, cfg=cfg,
                     output=tmp_path / name if name else None)
    assert result.cancelled and result.probabilities is None and result.output_path is None
    assert stages == ["predict", "stopped"]
    assert list(tmp_path.iterdir()) == []


def test_progress_reports_every_block(unet3d, volume):
    model, cfg = unet3d
    seen = []
    predict(model, volume, PredictOptions(block_size=(24, 40, 40), memory_limit_mb=1),
            [seen.append], cfg=cfg)
    reports = [(p.done, p.total) for p in seen if p.stage == "predict"]
    assert reports == [(i, 4) for i in range(1, 5)]
    assert seen[-1].stage == "done"


def test_progress_reports_every_slab(unet3d, volume):
    model, cfg = unet3d
    seen = []
    result = predict(model, volume, PredictOptions(block_size=(8, 80, 80)), [seen.append], cfg=cfg)
    assert result.blocks == 3
    reports = [(p.done, p.total) for p in seen if p.stage == "predict"]
    assert reports == [(i, 3) for i in range(1, 4)]
    assert seen[-1].stage == "done"


def test_open_output_writes_only_on_commit(tmp_path):
    writer = open_output(tmp_path / "x.zarr", (1, 4, 8, 8), "float16")
    writer.write((slice(0, 4), slice(0, 8), slice(0, 8)), np.full((1, 4, 8, 8), 0.5, np.float32))
    assert not (tmp_path / "x.zarr").exists() and len(hidden_leftovers(tmp_path)) == 1
    writer.commit()
    stored = zarr.open_array(str(tmp_path / "x.zarr"), path="probabilities", mode="r")
    assert float(stored[0, 0, 0, 0]) == 0.5
    assert hidden_leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Dask
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # deselect with -m 'not slow'; runs in the default suite
def test_dask_local_cluster_matches_single_process(tmp_path, checkpoint3d, volume):
    options = f32(block_size=(8, 32, 32), device="auto")
    single = predict(checkpoint3d, volume, options, output=tmp_path / "single.zarr")
    seen = []
    children_before = set(multiprocessing.active_children())
    distributed = predict(checkpoint3d, volume, options, [seen.append],
                          output=tmp_path / "dask.zarr", scheduler="dask")
    assert set(multiprocessing.active_children()) <= children_before  # the cluster's workers are gone
    assert distributed.device == "dask" and distributed.blocks == 27
    assert max_diff(distributed.probabilities[...], single.probabilities[...]) <= TOLERANCE
    assert sorted(p.done for p in seen if p.stage == "predict") == list(range(1, 28))
    assert hidden_leftovers(tmp_path) == []


def test_dask_cancel_through_a_scheduler_address(tmp_path, checkpoint3d, volume):
    from distributed import LocalCluster

    stop = threading.Event()
    stages = []

    def on_progress(progress):
        stages.append(progress.stage)
        stop.set()

    options = PredictOptions(block_size=(8, 32, 32), batch_size=1, device="cpu")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:
        result = predict(checkpoint3d, volume, options, [on_progress], stop,
                         output=tmp_path / "pred.zarr", scheduler="dask",
                         address=cluster.scheduler_address)
    assert result.cancelled and stages[-1] == "stopped"
    assert set(stages[:-1]) == {"predict"} and len(stages) < 27  # blocks done before the stop
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Bad inputs: one-line ValueErrors, existing outputs untouched
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def bad_input_setup(tmp_path, checkpoint3d):
    existing = tmp_path / "existing.h5"
    with h5py.File(existing, "w") as file:
        file["probabilities"] = np.zeros((2, 4, 4, 4), np.float16)
    with h5py.File(tmp_path / "raw.h5", "w") as file:
        file["raw"] = image((8, 32, 32))
        file["label"] = np.zeros((8, 32, 32), np.uint8)
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all" * 10)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.ckpt")
    two_channels = cfg_3d("model.in_channels=2")
    save_checkpoint(tmp_path / "two_channels.ckpt", built(two_channels), two_channels)
    return tmp_path, checkpoint3d, existing


def bad_call(case: str, folder: Path, checkpoint: Path) -> tuple[Path, object, dict]:
    """(checkpoint, volume, extra predict arguments) of each bad-input case."""
    stack = image((8, 32, 32))
    return {
        "missing key": (checkpoint, f"{folder / 'raw.h5'}:nope", {}),
        "2D array for a 3D network": (checkpoint, image((80, 80)), {}),
        "channels, checkpoint 1": (checkpoint, image((3, 8, 32, 32)), {}),
        "channels, checkpoint 2": (folder / "two_channels.ckpt", stack, {}),
        "corrupted checkpoint": (folder / "garbage.ckpt", stack, {}),
        "not our checkpoint": (folder / "foreign.ckpt", stack, {}),
        "window larger than the volume": (checkpoint, image((8, 40, 40)), {"window": (16, 32, 32)}),
        "window not a multiple": (checkpoint, image((8, 40, 40)), {"window": (8, 31, 32)}),
        "dask with HDF5": (checkpoint, stack, {"scheduler": "dask"}),
    }[case]


BAD_INPUTS = {
    "missing key": r"'nope' not found .*arrays there: label, raw",
    "2D array for a 3D network": r"single 2D section .*2D network",
    "channels, checkpoint 1": r"expects 1 input channel .*has 3 channels",
    "channels, checkpoint 2": r"expects 2 input channels .*no channel axis",
    "corrupted checkpoint": r"not a PyTorch checkpoint or is corrupted",
    "not our checkpoint": r"not written by napari-connectomics",
    "window larger than the volume": r"larger than the volume 8x40x40 on z; use --window 8,32,32",
    "window not a multiple": r"multiple of 2",
    "dask with HDF5": r"Zarr store",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_are_one_line_errors_that_touch_nothing(bad_input_setup, case):
    folder, checkpoint, existing = bad_input_setup
    source, data, extra = bad_call(case, folder, checkpoint)
    options = PredictOptions(window=extra.pop("window", None))
    before = tree_digest(existing)
    with pytest.raises(ValueError, match=BAD_INPUTS[case]) as error:
        predict(source, data, options, output=existing, overwrite=True, **extra)
    assert "\n" not in str(error.value)
    assert tree_digest(existing) == before
    assert hidden_leftovers(folder) == []


def test_existing_output_without_overwrite_is_a_one_line_error(bad_input_setup):
    folder, checkpoint, existing = bad_input_setup
    before = tree_digest(existing)
    with pytest.raises(ValueError, match="already exists; pass overwrite=True") as error:
        predict(checkpoint, image((8, 32, 32)), output=existing)
    assert "\n" not in str(error.value) and tree_digest(existing) == before


def test_output_that_is_the_input_is_refused(bad_input_setup):
    folder, checkpoint, _ = bad_input_setup
    raw = folder / "raw.h5"
    before = tree_digest(raw)
    with pytest.raises(ValueError, match="is the input file"):
        predict(checkpoint, f"{raw}:raw", output=f"{raw}:pred", overwrite=True)
    assert tree_digest(raw) == before


# --------------------------------------------------------------------------------------------
# Writing while predicting: finished pieces, the write-behind thread, storage conversion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("shape, window, overlap, slabs, cuts", [
    ((24, 80, 80), (8, 32, 32), 0.25, [(0, 24)], ((8, 16), (32, 64))),      # one slab, cut
    ((24, 80, 80), (8, 32, 32), 0.5, [(0, 10), (10, 24)], ((16,), (40,))),  # two slabs
    ((40, 70, 50), (8, 32, 32), 0.25, [(0, 40)], ((), ())),                  # no cuts
])
def test_stitch_regions_yields_each_piece_once_when_final(shape, window, overlap, slabs, cuts,
                                                          prefetch):
    """Pieces tile the volume once, equal the overlap-add of the whole grid, and no window
    predicted after a piece was handed out touches it (so writing it early is safe)."""
    from napari_connectomics.inference.windows import stitch_block, stitch_regions

    grid = make_grid(shape, window, overlap)
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    weight = torch.rand(2, 1, 1, 1) + 0.5  # any size-preserving "network"
    seen: list[tuple[int, int, int]] = []

    def predict_batch(windows):
        return windows.repeat(1, 2, 1, 1, 1) * weight

    def read(region):
        return data[region][None]

    importance = torch.from_numpy(np.random.default_rng(1).random(window, dtype=np.float32) + 0.1)
    starts = iter([s for lo, hi in slabs for s in grid.windows_touching(
        ((lo, hi), (0, grid.padded[1]), (0, grid.padded[2]))) if lo <= s[0] < hi])

    def counting_batch(windows):
        for _ in range(windows.shape[0]):
            seen.append(next(starts))
        return predict_batch(windows)

    covered = np.zeros(shape, np.int32)
    handed_out = []
    for piece in stitch_regions(grid, slabs, read, counting_batch, importance, batch_size=3,
                                cuts=cuts, prefetch=prefetch):
        if piece.mean is None:
            continue
        handed_out.append((piece.box, len(seen)))
        region = tuple(slice(lo, hi) for lo, hi in piece.box)
        covered[region] += 1
        whole = stitch_block(grid, piece.box, read, predict_batch, importance, batch_size=5)
        assert torch.allclose(piece.mean, whole, atol=1e-5)
    assert (covered == 1).all()
    assert len(seen) == grid.n_windows
    for box, count in handed_out:
        for start in seen[count:]:
            touches = all(s < hi and s + w > lo for s, w, (lo, hi) in zip(start, window, box))
            assert not touches, f"window {start} predicted after piece {box} was handed out"
    if cuts != ((), ()):
        assert handed_out[0][1] < grid.n_windows  # something was final before the last window




@pytest.fixture(params=[False, True], ids=["io-between-batches", "io-in-threads"])
def overlap_io(request, monkeypatch):
    """Both ways of doing I/O: between batches (all cores busy) and in background threads."""
    from napari_connectomics.inference import engines

    monkeypatch.setattr(engines, "overlap_io", lambda device: request.param)
    return request.param


def test_one_slab_writes_pieces_before_the_last_window(tmp_path, monkeypatch, overlap_io):
    from napari_connectomics.inference import stores

    cfg = cfg_3d()
    inner = built(cfg, seed=2)
    events: list[str] = []

    class Recording(torch.nn.Module):
        def forward(self, x):
            events.append("windows")
            return inner(x)

    original = stores.OutputWriter.write

    def write(self, region, probabilities, **kwargs):
        events.append("write")
        return original(self, region, probabilities, **kwargs)

    monkeypatch.setattr(stores.OutputWriter, "write", write)
    data = image((40, 160, 160), seed=6)  # chunks (1, 32, 128, 128): four pieces
    options = PredictOptions(window=(8, 32, 32), block_size=(40, 160, 160), batch_size=8,
                             device="cpu", output_dtype="float32")
    result = predict(Recording().eval(), data, options, cfg=cfg, output=tmp_path / "pred.zarr")
    assert result.blocks == 1
    assert events.count("write") == 4
    assert events.index("write") < len(events) - 1 - events[::-1].index("windows")
    expected = reference(inner, cfg, data, (8, 32, 32), batch=8)
    assert max_diff(result.probabilities[...], expected) <= TOLERANCE
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("name, block_size", [("pred.zarr", (8, 80, 80)), ("pred.h5", (8, 32, 32)),
                                              ("pred.zarr", None)])
def test_a_failing_write_is_raised_and_leaves_nothing(tmp_path, unet3d, volume, monkeypatch,
                                                      overlap_io, name, block_size):
    from napari_connectomics.inference import stores

    model, cfg = unet3d
    original, calls = stores.OutputWriter.write, []

    def write(self, region, probabilities, **kwargs):
        calls.append(region)
        if len(calls) == 2 or block_size is None:
            raise OSError(28, "No space left on device")
        return original(self, region, probabilities, **kwargs)

    monkeypatch.setattr(stores.OutputWriter, "write", write)
    options = PredictOptions(block_size=block_size, memory_limit_mb=1 if name == "pred.h5" else 4096)
    with pytest.raises(OSError, match="No space left"):
        predict(model, volume, options, cfg=cfg, output=tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_cancel_in_the_middle_of_a_slab_with_pieces_written(tmp_path, monkeypatch, overlap_io):
    from napari_connectomics.inference import stores

    cfg = cfg_3d()
    inner = built(cfg, seed=2)
    stop = threading.Event()
    writes = []

    class StopLate(torch.nn.Module):
        calls = 0

        def forward(self, x):
            StopLate.calls += 1
            if writes:  # a piece is written: stop before the slab is done
                stop.set()
            return inner(x)

    original = stores.OutputWriter.write

    def write(self, region, probabilities, **kwargs):
        writes.append(region)
        return original(self, region, probabilities, **kwargs)

    monkeypatch.setattr(stores.OutputWriter, "write", write)
    options = PredictOptions(window=(8, 32, 32), block_size=(40, 160, 160), batch_size=8,
                             device="cpu")
    result = predict(StopLate().eval(), image((40, 160, 160), seed=6), options, (), stop,
                     cfg=cfg, output=tmp_path / "pred.zarr")
    assert result.cancelled and writes
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", ["float16", "uint8", "float32"])
def test_storage_conversion_in_torch_matches_to_storage(dtype):
    from napari_connectomics.inference.engines import _stored
    from napari_connectomics.inference.stores import to_storage

    values = np.random.default_rng(0).random((2, 5, 33, 17), dtype=np.float32)
    values[0, 0, 0, :6] = [0.0, 1.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0000001]  # ties, edges
    assert np.array_equal(_stored(torch.from_numpy(values.copy()), np.dtype(dtype)),
                          to_storage(values, dtype))


def test_whole_input_read_once_gives_the_same_statistics(tmp_path):
    from napari_connectomics.inference.input import prepare_input, read_once

    data = image((40, 160, 160), seed=8)
    zarr.open_array(str(tmp_path / "raw.zarr"), mode="w", shape=data.shape, dtype=data.dtype,
                    chunks=(8, 64, 64))[:] = data
    source = prepare_input(str(tmp_path / "raw.zarr"), 1)
    held = read_once(source, 2**30)
    assert held.volume is not source.volume and held.volume.chunks == (8, 64, 64)
    assert intensity_stats(held.volume, max_voxels=100_000) == intensity_stats(
        source.volume, max_voxels=100_000)
    assert read_once(source, 1024).volume is source.volume  # over a quarter of the limit
    roi = prepare_input(str(tmp_path / "raw.zarr"), 1, (slice(0, 8), slice(None), slice(None)))
    assert read_once(roi, 2**30).volume is roi.volume  # statistics are of the whole volume


def test_probability_codecs(tmp_path, unet3d, volume):
    model, cfg = unet3d
    for dtype, cname in (("float16", "lz4"), ("uint8", "zstd")):
        result = predict(model, volume, PredictOptions(output_dtype=dtype), cfg=cfg,
                         output=tmp_path / f"{dtype}.zarr")
        (codec,) = result.probabilities.compressors
        assert type(codec).__name__ == "BloscCodec" and codec.cname.value == cname


def test_write_behind_keeps_at_most_depth_regions_waiting():
    from napari_connectomics.inference.engines import _WriteBehind

    release, written = threading.Event(), []

    def slow_write(region, data):
        release.wait(5)
        written.append(region)

    behind = _WriteBehind(slow_write, depth=2)
    for i in range(3):  # one being written, two waiting
        behind.put((slice(i, i + 1),), np.zeros(1))
    blocked = threading.Thread(target=behind.put, args=((slice(3, 4),), np.zeros(1)))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # the queue is full: the producer waits, memory stays bounded
    release.set()
    blocked.join(5)
    behind.close()
    assert [r[0].start for r in written] == [0, 1, 2, 3]


def test_io_overlaps_only_with_a_free_core_or_an_accelerator(monkeypatch):
    from napari_connectomics.inference.engines import overlap_io

    assert overlap_io(torch.device("cuda"))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert overlap_io(torch.device("cpu"))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not overlap_io(torch.device("cpu"))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64", "float16"])
@pytest.mark.parametrize("mode", ["percentile", "minmax", "zscore", "none"])
def test_fused_normalisation_equals_normalize_intensity(dtype, mode):
    from napari_connectomics.data.normalize import read_normalized

    rng = np.random.default_rng(3)
    data = (rng.random((6, 40, 30)) * 200 - (50 if dtype[0] in "if" and dtype != "uint8" else 0))
    data = data.astype(dtype)
    stats = intensity_stats(data, max_voxels=1000)
    expected = normalize_intensity(data, mode, stats)
    result = read_normalized(data.copy(), (slice(None),) * 3, has_channels=False, flat=False,
                             mode=mode, stats=stats)[0]
    assert result.dtype == np.float32
    assert np.array_equal(result, expected)


def test_slab_memory_counts_the_read_ahead_only_when_it_runs():
    from napari_connectomics.inference.windows import slab_bytes

    grid = make_grid((96, 512, 512), (32, 128, 128), 0.25)
    assert slab_bytes(grid, 32, 1, 2, 4, prefetch=False) < slab_bytes(grid, 32, 1, 2, 4)
    assert slab_bytes(grid, 96, 1, 2, 4, prefetch=False) == slab_bytes(grid, 96, 1, 2, 4)  # one slab

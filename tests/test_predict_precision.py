"""The GPU side of prediction that a CPU can check: which arithmetic a forward pass gets, how a GPU
run with an output store is planned (z-slabs, streamed), and that streamed slabs give the result
of the whole volume in one piece. The GPU figures themselves are in docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_connectomics.config import load_config
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.inference.options import PRECISIONS, PredictOptions
from napari_connectomics.inference.predict import _plan_blocks, _stream_thickness, predict
from napari_connectomics.inference.predictor import autocast_dtype
from napari_connectomics.inference.windows import make_grid
from napari_connectomics.models import build_model

CUDA = torch.device("cuda")  # a device object needs no GPU; nothing runs on it here
CPU = torch.device("cpu")


@pytest.mark.parametrize("precision, expected", [
    ("32", None), ("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)])
def test_the_forward_pass_autocasts_on_a_gpu_as_the_option_says(precision, expected):
    assert autocast_dtype(precision, CUDA) is expected


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_cpu_always_computes_in_float32(precision):
    assert autocast_dtype(precision, CPU) is None


def test_float32_is_the_default_and_an_unknown_precision_is_one_line():
    assert PredictOptions().precision == "32"
    with pytest.raises(ValueError, match=r"^unknown precision 'half'; choose one of: 32, 16-mixed, bf16-mixed$"):
        PredictOptions(precision="half")


def test_the_cli_refuses_an_unknown_precision(tmp_path):
    run = subprocess.run([sys.executable, "-m", "napari_connectomics.cli", "predict", "x.ckpt", "--input",
                          "in.zarr", "--output", str(tmp_path / "p.zarr"), "--precision", "half"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "--precision: invalid choice: 'half'" in run.stderr


def test_a_gpu_writing_to_a_store_streams_z_slabs_a_cpu_predicts_the_whole_volume():
    grid = make_grid((96, 256, 256), (32, 128, 128), 0.25)
    options = PredictOptions(memory_limit_mb=16384)
    assert _plan_blocks(grid, options, 1, 2, "local", stream=False) == ([], False)
    slabs, are_slabs = _plan_blocks(grid, options, 1, 2, "local", stream=True)
    assert are_slabs and len(slabs) == 4
    step = grid.starts[0][1] - grid.starts[0][0]
    thickness = _stream_thickness(grid)
    assert thickness == step  # a quarter of 96 planes: one scan step of 24
    assert all(s.core[1:] == ((0, grid.padded[1]), (0, grid.padded[2])) for s in slabs)


def test_streamed_slabs_give_the_whole_volume_result(tmp_path):
    cfg = load_config(overrides=["model.architecture=monai_unet", "model.filters=[4,8]",
                                 "data.patch_size=[16,32,32]"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = make_synthetic_em(shape=(40, 64, 64), seed=1).image
    options = PredictOptions(overlap=0.25, device="cpu", output_dtype="float32")
    whole = predict(model, image, options, cfg=cfg).probabilities
    thickness = _stream_thickness(make_grid(image.shape, (16, 32, 32), 0.25))
    streamed = predict(model, image, PredictOptions(overlap=0.25, device="cpu", output_dtype="float32",
                                                    block_size=(thickness, 64, 64)),
                       cfg=cfg, output=tmp_path / "p.zarr")
    np.testing.assert_allclose(streamed.probabilities[:], whole, atol=2e-6)

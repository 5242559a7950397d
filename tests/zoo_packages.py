"""Small BioImage.IO test material shared by tests/test_bioimageio.py and tests/test_segment_zoo.py:
a tiny 2D checkpoint to export, and zoo packages as another tool would write them (TorchScript
weights, spec 0.5). Imports torch: import it from tests that may (after importorskip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from napari_connectomics.config import load_config
from napari_connectomics.models import build_model
from napari_connectomics.models.checkpoint import CONFIG_KEY, atomic_torch_save

__all__ = ["ZooConv", "cfg_container", "tiny_2d_checkpoint", "zoo_package"]


def tiny_2d_checkpoint(path: Path, normalize: str = "percentile") -> Path:
    cfg = load_config(overrides=["model.architecture=monai_unet", "model.spatial_dims=2",
                                 "model.filters=[4,8]", "data.patch_size=[32,32]",
                                 f"data.normalize={normalize}"])
    torch.manual_seed(1)
    model = build_model(cfg)
    state = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
             CONFIG_KEY: cfg_container(cfg)}
    return atomic_torch_save(state, path)


def cfg_container(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


class ZooConv(torch.nn.Module):
    """A zoo-style network: 1 -> 2 channels, channels first or last."""

    def __init__(self, channels_last: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.conv(x)


def zoo_package(folder: Path, *, channels_last: bool = False, time_axis: bool = False,
                preprocessing: list | None = None, postprocessing: list | None = None) -> Path:
    """A folder with rdf.yaml (spec 0.5) and TorchScript weights, as another tool would write it."""
    folder.mkdir(parents=True)
    torch.jit.script(ZooConv(channels_last)).save(str(folder / "weights.pt"))

    def space(axis, output=False):
        size = {"tensor_id": "input", "axis_id": axis} if output else {"min": 8, "step": 8}
        return {"type": "space", "id": axis, "size": size}

    time = {"type": "time", "size": 1}
    inputs = [{"type": "batch"}, *([time] if time_axis else [])]
    outputs = [{"type": "batch"},
               *([{"type": "time", "size": {"tensor_id": "input", "axis_id": "time"}}] if time_axis else [])]
    channel_in = {"type": "channel", "channel_names": ["raw"]}
    channel_out = {"type": "channel", "channel_names": ["background", "foreground"]}
    if channels_last:
        inputs += [space("y"), space("x"), channel_in]
        outputs += [space("y", True), space("x", True), channel_out]
    else:
        inputs += [channel_in, space("y"), space("x")]
        outputs += [channel_out, space("y", True), space("x", True)]
    shape = [1, *([1] if time_axis else []), *([16, 16, 1] if channels_last else [1, 16, 16])]
    np.save(folder / "input.npy", np.zeros(shape, np.float32))
    np.save(folder / "output.npy", np.zeros(shape, np.float32))
    (folder / "README.md").write_text("# a zoo model\n")
    if preprocessing is None:
        preprocessing = [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"]}}]
    if postprocessing is None:
        postprocessing = [{"id": "softmax", "kwargs": {"axis": "channel"}}]
    rdf = {
        "format_version": "0.5.4", "type": "model", "name": "zoo test model", "description": "a conv",
        "authors": [{"name": "someone"}], "cite": [{"text": "a paper", "doi": "10.1000/xyz"}],
        "license": "MIT", "documentation": "README.md",
        "inputs": [{"id": "input", "axes": inputs, "test_tensor": {"source": "input.npy"},
                    "preprocessing": preprocessing}],
        "outputs": [{"id": "output", "axes": outputs, "test_tensor": {"source": "output.npy"},
                     "postprocessing": postprocessing}],
        "weights": {"torchscript": {"source": "weights.pt", "pytorch_version": "2.0"}},
    }
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    return folder / "rdf.yaml"

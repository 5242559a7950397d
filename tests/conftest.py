"""Tests that need a display (a real napari viewer, Qt) are marked `gui` here, and skipped with the
command that fixes it when this machine can give them none: never a Qt core dump."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

GUI_FIXTURES = {"qtbot", "make_napari_viewer", "make_napari_viewer_proxy", "qapp"}
SETUP = Path(__file__).resolve().parents[1] / "tools" / "system-packages.sh"


def _display_problem() -> str | None:
    """Why no display can be had here, or None."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    if shutil.which("Xvfb") is None:
        return f"no display and no Xvfb: run `sudo bash {SETUP}`"
    if subprocess.run(["bash", str(SETUP), "--check"], capture_output=True).returncode != 0:
        return f"the Qt/xcb libraries are missing: run `sudo bash {SETUP}`"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gui = pytest.mark.gui
    for item in items:
        if GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(gui)
    problem = _display_problem()
    if problem is None:
        return
    skip = pytest.mark.skip(reason=problem)
    for item in items:
        if item.get_closest_marker("gui") is not None:
            item.add_marker(skip)


def paint_sparse(viewer, sections=(8, 10, 12, 14), name="painted"):
    """Background 1 and mitochondria 2 on a few sections of the synthetic sample, in a new Labels
    layer (as a user would paint them)."""
    truth = viewer.layers["mitochondria (ground truth)"].data
    labels = np.zeros(truth.shape, np.uint8)
    for z in sections:
        labels[z] = np.where(truth[z] > 0, 2, 1)
    image = viewer.layers["synthetic EM"]
    return viewer.add_labels(labels, name=name, scale=image.scale)


def tiny_checkpoint(path):
    """A tiny 3D network (monai_basic_unet3d, window 16x64x64) saved as training saves it, with
    random weights and the final layer amplified so its probabilities spread over a range a
    threshold can split. Imports torch (call it from tests that may)."""
    import torch
    from omegaconf import OmegaConf

    from napari_connectomics.config import load_config
    from napari_connectomics.models import build_model
    from napari_connectomics.models.checkpoint import CONFIG_KEY, atomic_torch_save

    cfg = load_config(overrides=["model.architecture=monai_basic_unet3d", "model.filters=[2,2,4,4,4]",
                                 "data.patch_size=[16,32,32]", "inference.window_size=[16,64,64]"])
    torch.manual_seed(0)
    model = build_model(cfg)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    with torch.no_grad():
        convs[-1].weight *= 30
    state = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
             CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}
    return atomic_torch_save(state, path)

"""A newcomer adds an architecture: one registration, and every part of the project knows it.

The network here has three deep-supervision scales (not MedNeXt's five), so the default loss weights
must follow its spec rather than a hard-coded list.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest

from napari_connectomics.cli import main
from napari_connectomics.config import ConfigError, load_config
from napari_connectomics.models.architectures.registry import register_architecture
from napari_connectomics.registry import ARCHITECTURES

NAME = "tiny_ds3"
SCALES = 3


@register_architecture(NAME, spatial_dims=(2, 3), size_multiple=2 ** (SCALES - 1), deep_supervision=True,
                       output_scales=SCALES, fields=("filters", "dropout"))
def build_tiny_ds3(cfg):
    """A two-level convolutional pyramid with a head per scale (a test network)."""
    import torch
    from torch import nn

    from napari_connectomics.models.architectures.base import ConnectomicsModel

    conv = nn.Conv3d if cfg.model.spatial_dims == 3 else nn.Conv2d
    pool = nn.AvgPool3d if cfg.model.spatial_dims == 3 else nn.AvgPool2d
    width, out = int(cfg.model.filters[0]), int(cfg.model.out_channels)

    class TinyDS3(ConnectomicsModel):
        def __init__(self) -> None:
            super().__init__()
            self.stem = conv(int(cfg.model.in_channels), width, 3, padding=1)
            self.pool = pool(2)
            self.heads = nn.ModuleList(conv(width, out, 1) for _ in range(SCALES))
            self.up = nn.Upsample(scale_factor=2)
            self.drop = nn.Dropout(float(cfg.model.dropout))

        def forward(self, x):
            features = [torch.relu(self.drop(self.stem(x)))]
            for _ in range(SCALES - 1):
                features.append(self.pool(features[-1]))
            full = self.heads[0](features[0] + sum(_upsample(f, features[0]) for f in features[1:]))
            if not (self.training and self.supports_deep_supervision):
                return full
            return {"output": full, **{f"ds_{i}": self.heads[i](features[i]) for i in range(1, SCALES)}}

    def _upsample(small, like):
        return nn.functional.interpolate(small, size=like.shape[2:], mode="nearest")

    return TinyDS3()


@pytest.fixture(scope="module", autouse=True)
def _registered():
    yield
    ARCHITECTURES.unregister(NAME)


def cli_json(*args: str):
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(list(args)) == 0
    return json.loads(out.getvalue())


def test_list_architectures_and_info_show_its_facts():
    rows = {row["name"]: row for row in cli_json("list-architectures", "--json")}
    assert rows[NAME]["deep_supervision_scales"] == SCALES and rows[NAME]["size_multiple"] == 4
    assert rows[NAME]["description"].startswith("A two-level convolutional pyramid")
    info = cli_json("info", NAME, "deep_supervision=true", "filters=[4,8]", "spatial_dims=2", "--json")
    assert info["output_resolutions"] == ["1", "1/2", "1/4"]
    assert info["parameters"] > 0


def test_config_validation_applies_its_size_rule():
    load_config(overrides=[f"model.architecture={NAME}", "model.spatial_dims=2", "data.patch_size=[64,64]"])
    with pytest.raises(ConfigError, match=f"{NAME} needs every size to be a multiple of 4"):
        load_config(overrides=[f"model.architecture={NAME}", "model.spatial_dims=2", "data.patch_size=[66,64]"])
    with pytest.raises(ConfigError, match="1 to 3 non-negative weights"):
        load_config(overrides=[f"model.architecture={NAME}", "model.deep_supervision=true",
                               "model.deep_supervision_weights=[1,1,1,1,1]"])


def test_trains_with_three_scale_deep_supervision(tmp_path):
    from napari_connectomics.data.synthetic import make_synthetic_em
    from napari_connectomics.training import TrainingData, train

    sample = make_synthetic_em(shape=(16, 64, 64), seed=3)
    cfg = load_config(overrides=[
        f"model.architecture={NAME}", "model.spatial_dims=2", "model.filters=[8,16]", "model.deep_supervision=true",
        "data.patch_size=[32,32]", "data.batch_size=2", "data.samples_per_epoch=4", "training.val_patches=2",
        "training.max_steps=3", "training.log_every_n_steps=1", f"training.output_dir={tmp_path}"])
    result = train(cfg, data=TrainingData(train=[(sample.image, sample.mitochondria)]))
    assert result.global_step == 3
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    scales = sorted(key for key in header if key.startswith("train/scale_"))
    assert scales == [f"train/scale_{i}" for i in range(SCALES)], header
    assert np.isfinite(result.metrics["train/loss"])


@pytest.mark.gui
def test_model_panel_offers_it_with_its_options(make_napari_viewer, qtbot):
    from napari_connectomics.widgets.session import session_for

    viewer = make_napari_viewer()
    _, panel = viewer.window.add_plugin_dock_widget("napari-connectomics", "Model")
    assert NAME in panel.architecture.choices
    panel.architecture.value = NAME
    assert panel.option_names == ["spatial_dims", "in_channels", "out_channels", "filters", "dropout"]
    panel.option("filters").value = "4, 8"
    assert list(session_for(viewer).config.model.filters) == [4, 8]
    assert panel.facts.size_multiple == 4 and panel.facts.deep_supervision_scales == SCALES
    qtbot.waitUntil(lambda: not panel.counting, timeout=90_000)

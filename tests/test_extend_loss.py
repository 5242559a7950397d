"""A newcomer adds a loss: registered once, it passes config validation and trains."""

from __future__ import annotations

import pytest

from napari_connectomics.config import ConfigError, load_config
from napari_connectomics.models.loss_registry import register_loss
from napari_connectomics.registry import LOSSES

NAME = "SoftIoULoss"
built: list[int] = []


@register_loss(NAME)
def soft_iou_loss(out_channels: int = 2, **kwargs):
    """1 - soft IoU of the foreground over annotated voxels (a test loss)."""
    import torch
    from torch import nn

    from napari_connectomics.data.conventions import IGNORE_INDEX

    class SoftIoU(nn.Module):
        def forward(self, logits, target):
            annotated = target != IGNORE_INDEX
            probability = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)[:, 1:2].sum(1, True)
            truth = (target >= 1).to(probability.dtype)
            p, t = probability[annotated], truth[annotated]
            return 1 - (p * t).sum() / (p + t - p * t).sum().clamp(min=1e-6)

    built.append(out_channels)
    return SoftIoU()


@pytest.fixture(scope="module", autouse=True)
def _registered():
    yield
    LOSSES.unregister(NAME)


def test_config_validation_accepts_it_and_still_refuses_unknown_names():
    cfg = load_config(overrides=[f"model.loss_functions=[{NAME},DiceLoss]", "model.loss_weights=[1.0,0.5]"])
    assert list(cfg.model.loss_functions) == [NAME, "DiceLoss"]
    with pytest.raises(ConfigError, match=f"did you mean {NAME}"):
        load_config(overrides=["model.loss_functions=[SoftIouLos]"])


def test_trains_with_it(tmp_path):
    from napari_connectomics.data.synthetic import make_synthetic_em
    from napari_connectomics.training import TrainingData, train

    sample = make_synthetic_em(shape=(16, 64, 64), seed=4)
    cfg = load_config(overrides=[
        "model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[8,16]", "model.num_res_units=1",
        f"model.loss_functions=[{NAME}]", "data.patch_size=[32,32]", "data.batch_size=2",
        "data.samples_per_epoch=4", "training.val_patches=2", "training.max_steps=3",
        "training.log_every_n_steps=1", f"training.output_dir={tmp_path}"])
    result = train(cfg, data=TrainingData(train=[(sample.image, sample.mitochondria)]))
    assert result.global_step == 3 and built and built[-1] == 2
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert f"train/{NAME}" in header, header

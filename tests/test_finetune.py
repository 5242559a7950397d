"""Fine-tuning from a checkpoint (model.pretrained): which weights load, which are skipped and why."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch

from napari_connectomics.config import ConfigError
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.models import build_model
from napari_connectomics.training import TrainingData, load_checkpoint, train
from test_training import small_2d
from napari_connectomics.training.checkpoint import model_state_dict
from napari_connectomics.training.trainer import init_from_pretrained

FIRST_CONV = "model.model.0.conv.unit0.conv.weight"


def tiny_2d(tmp_path: Path, *extra: str):
    """test_training's small 2D config, smaller still."""
    return small_2d(tmp_path, "model.filters=[4,8,16]", "data.patch_size=[32,32]", "data.batch_size=2",
                    "data.samples_per_epoch=4", "training.val_patches=2", "training.max_steps=3", *extra)


@pytest.fixture(scope="module")
def sample():
    return make_synthetic_em(shape=(16, 48, 48), seed=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, sample) -> Path:
    """A real (tiny) training run's last checkpoint."""
    tmp = tmp_path_factory.mktemp("source")
    return train(tiny_2d(tmp), data=TrainingData(train=[(sample.image, sample.mitochondria)])).last_checkpoint


@pytest.fixture(scope="module")
def weights(checkpoint) -> dict[str, torch.Tensor]:
    return model_state_dict(load_checkpoint(checkpoint))


def test_same_architecture_loads_every_weight(tmp_path, checkpoint, weights, caplog):
    model = build_model(tiny_2d(tmp_path))
    assert not torch.equal(model.state_dict()[FIRST_CONV], weights[FIRST_CONV])
    with caplog.at_level(logging.INFO, "napari_connectomics.training.trainer"):
        init_from_pretrained(model, checkpoint)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert f"{len(weights)} of {len(weights)} weights loaded" in caplog.text and "skipped" not in caplog.text


def test_training_starts_from_the_checkpoint(tmp_path, sample, checkpoint, weights):
    class FirstWeights(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    seen = FirstWeights()
    train(tiny_2d(tmp_path, "training.max_steps=1", "system.seed=7", f"model.pretrained={checkpoint}"),
          data=[(sample.image, sample.mitochondria)], callbacks=[seen])
    assert all(torch.equal(seen.state[k], weights[k]) for k in weights)


@pytest.mark.parametrize("change, named", [
    ("model.out_channels=1", "model.model.2.1.conv.unit0.conv.weight (2, 2, 3, 3) -> (1, 1, 3, 3)"),  # last conv
    ("model.in_channels=3", f"{FIRST_CONV} (4, 1, 3, 3) -> (4, 3, 3, 3)"),  # a 2.5D model from a 2D one
])
def test_mismatching_layers_are_skipped_and_named(tmp_path, checkpoint, weights, caplog, change, named):
    model = build_model(tiny_2d(tmp_path, change))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, "napari_connectomics.training.trainer"):
        init_from_pretrained(model, checkpoint)
    after = model.state_dict()
    skipped = [k for k in after if after[k].shape != weights[k].shape]
    line = next(r.getMessage() for r in caplog.records if "Initialised from" in r.getMessage())
    assert f"{len(after) - len(skipped)} of {len(after)} weights loaded; {len(skipped)} skipped, shape differs" in line
    assert named in line and "\n" not in line
    assert all(torch.equal(after[k], before[k]) for k in skipped)  # kept their initial values
    assert all(torch.equal(after[k], weights[k]) for k in after if k not in skipped)


@pytest.mark.parametrize("other", [
    ["model.architecture=mednext_custom", "model.mednext_base_channels=4", "model.mednext_exp_r=1",
     "model.mednext_block_counts=[1,1,1,1,1,1,1,1,1]", "model.spatial_dims=3", "data.patch_size=[16,32,32]"],
    ["model.spatial_dims=3", "data.patch_size=[16,32,32]"],  # same names, only biases and norms would fit
])
def test_unrelated_architecture_is_refused_in_one_line(tmp_path, checkpoint, other):
    model = build_model(tiny_2d(tmp_path, *other))
    with pytest.raises(ConfigError, match="model.pretrained.*do not fit this architecture") as error:
        init_from_pretrained(model, checkpoint)
    assert "\n" not in str(error.value)

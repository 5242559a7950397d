"""training.snapshot_average: validation and checkpoints hold the mean of the last N validations'
weights, and a resumed run trains on from the live weights (real Lightning trainers, CPU)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from napari_connectomics.config import ConfigError, load_config
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.training import TrainingData, load_checkpoint, train
from napari_connectomics.training.snapshot_average import LIVE_STATE_KEY, SnapshotAverage


@pytest.fixture(scope="module")
def data():
    sample = make_synthetic_em(shape=(16, 96, 96), seed=1)
    return TrainingData(train=[(sample.image, sample.mitochondria)])


def config(tmp_path, *extra: str):
    return load_config(overrides=[
        "model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[8,16,32]", "model.num_res_units=1",
        "data.patch_size=[64,64]", "data.batch_size=2", "data.samples_per_epoch=100", "training.val_patches=2",
        "training.max_steps=6", "training.val_check_interval=2", "training.log_every_n_steps=1",
        "training.snapshot_average=3", f"training.output_dir={tmp_path / 'runs'}", "system.torch_threads=2", *extra])


class WeightsAt(L.Callback):
    """The live weights after each optimizer step, and the weights each validation starts with."""

    def __init__(self) -> None:
        self.after_step: dict[int, dict[str, torch.Tensor]] = {}
        self.validated: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            self.validated.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def mean_of(states):
    return {k: torch.stack([s[k] for s in states]).mean(0) for k, v in states[0].items() if v.is_floating_point()}


def test_validation_and_checkpoints_hold_the_mean_of_the_last_snapshots(tmp_path, data):
    seen = WeightsAt()
    result = train(config(tmp_path), data=data, callbacks=[seen])
    assert result.global_step == 6
    # validation at step 2 scores the weights of step 2; at step 6 the mean of steps 2, 4 and 6
    first, last = seen.validated[0], seen.validated[-1]
    assert all(torch.equal(first[k], seen.after_step[2][k]) for k in first)
    expected = mean_of([seen.after_step[s] for s in (2, 4, 6)])
    assert all(torch.allclose(last[k], expected[k]) for k in expected)
    assert not all(torch.equal(expected[k], seen.after_step[6][k]) for k in expected)  # a mean, not step 6
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert all(torch.allclose(checkpoint["state_dict"][k], expected[k]) for k in expected)
    live = checkpoint[LIVE_STATE_KEY]
    assert all(torch.equal(live[k], seen.after_step[6][k]) for k in expected)  # training resumes from these


def test_offer_last_offers_the_latest_mean_whatever_the_scores(tmp_path, data):
    best = train(config(tmp_path, "checkpoint.monitor=val/iou", "checkpoint.mode=max", "checkpoint.min_score=0.0"),
                 data=data)
    assert best.checkpoint == best.best_checkpoint and best.checkpoint_note().startswith("best val/iou")
    last = train(config(tmp_path, "checkpoint.monitor=val/iou", "checkpoint.mode=max", "checkpoint.offer=last"),
                 data=data)
    assert last.checkpoint == last.last_checkpoint
    assert last.checkpoint_note() == "the last, the mean of the weights at the last 3 validations"
    with pytest.raises(ConfigError, match="checkpoint.offer"):
        config(tmp_path, "checkpoint.offer=newest")


def test_a_resumed_run_trains_on_from_the_live_weights(tmp_path, data):
    first = train(config(tmp_path), data=data)
    live = load_checkpoint(first.last_checkpoint)[LIVE_STATE_KEY]

    class AtStart(L.Callback):
        state: dict[str, torch.Tensor] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if not AtStart.state:
                AtStart.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    resumed = train(config(tmp_path, "training.max_steps=8"), data=data, resume=first.last_checkpoint,
                    callbacks=[AtStart()])
    assert resumed.global_step == 8
    assert all(torch.equal(AtStart.state[k], live[k]) for k in live if live[k].is_floating_point())


def test_snapshot_average_refuses_a_bad_count(tmp_path):
    with pytest.raises(ConfigError, match="snapshot_average"):
        config(tmp_path, "training.snapshot_average=-1")
    with pytest.raises(ValueError, match="at least 2"):
        SnapshotAverage(1)

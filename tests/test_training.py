"""Training engine with real Lightning trainers on tiny synthetic data (CPU)."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pytest
import torch

from napari_connectomics.config import ConfigError, load_config
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.progress import Progress
from napari_connectomics.training import CheckpointError, TrainingData, load_checkpoint, load_model_from_checkpoint, train
from napari_connectomics.training.checkpoint import CONFIG_KEY, atomic_torch_save
from napari_connectomics.training.module import NonFiniteLossError
from napari_connectomics.training.trainer import resolve_devices

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample():
    return make_synthetic_em(shape=(16, 96, 96), seed=1)


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory, sample):
    path = tmp_path_factory.mktemp("vol") / "em.h5"
    with h5py.File(path, "w") as f:
        f["image"] = sample.image
        f["label"] = sample.mitochondria
    return path


def small_2d(tmp_path: Path, *extra: str):
    return load_config(overrides=[
        "model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[8,16,32]", "model.num_res_units=1",
        "data.patch_size=[64,64]", "data.batch_size=4", "data.samples_per_epoch=8", "training.val_patches=4",
        "training.max_steps=6", "training.log_every_n_steps=1", f"training.output_dir={tmp_path / 'runs'}",
        "system.torch_threads=2", *extra])


def small_mednext(tmp_path: Path, *extra: str):
    return load_config(overrides=[
        "model.architecture=mednext_custom", "model.mednext_base_channels=4", "model.mednext_exp_r=1",
        "model.mednext_block_counts=[1,1,1,1,1,1,1,1,1]", "model.deep_supervision=true",
        "model.loss_functions=[DiceLoss,CrossEntropyLoss]", "model.loss_weights=[1.0,1.0]",
        "data.patch_size=[16,32,32]", "data.batch_size=2", "data.samples_per_epoch=4", "training.val_patches=2",
        "training.max_steps=3", "training.log_every_n_steps=1", f"training.output_dir={tmp_path / 'runs'}", *extra])


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def column(rows, key):
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def test_train_from_arrays_writes_a_complete_run(tmp_path, sample):
    result = train(small_2d(tmp_path, "training.max_steps=12", "scheduler.name=cosine", "scheduler.warmup_steps=2"),
                   data=TrainingData(train=[(sample.image, sample.mitochondria)]))
    assert result.global_step == 12 and not result.stopped
    assert (result.run_dir / "config.yaml").is_file()
    assert result.run_dir.parent == tmp_path / "runs" / "connectomics"
    assert result.last_checkpoint.is_file() and result.best_checkpoint.is_file()
    rows = read_metrics(result.run_dir)
    assert len(column(rows, "train/loss")) == 12
    assert column(rows, "val/loss") and column(rows, "val/dice") and column(rows, "val/iou")
    assert "val/dice/class_1" in rows[0] or any("val/dice/class_1" in r for r in rows)
    model, cfg = load_model_from_checkpoint(result.best_checkpoint)
    assert cfg.model.architecture == "monai_unet" and cfg.model.spatial_dims == 2
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_deep_supervision_logs_every_scale(tmp_path, sample):
    result = train(small_mednext(tmp_path), data=[(sample.image, sample.mitochondria)])
    rows = read_metrics(result.run_dir)
    for scale in range(5):
        assert column(rows, f"train/scale_{scale}"), f"scale {scale} not logged: {list(rows[0])}"
    assert column(rows, "train/DiceLoss") and column(rows, "train/CrossEntropyLoss")


def test_progress_callbacks_and_stop_within_one_step(tmp_path, sample):
    stop = threading.Event()
    seen: list[Progress] = []

    def on_progress(p: Progress) -> None:
        seen.append(p)
        if p.stage == "train" and p.done >= 2:
            stop.set()

    result = train(small_2d(tmp_path, "training.max_steps=50"), data=[(sample.image, sample.mitochondria)],
                   callbacks=[on_progress], stop_event=stop)
    assert result.stopped
    assert result.global_step == 2
    assert seen[-1].stage == "stopped"
    assert any("train/loss" in p.metrics for p in seen)
    assert all(p.total == 50 for p in seen if p.stage == "train")
    model, _ = load_model_from_checkpoint(result.last_checkpoint)
    assert isinstance(model, torch.nn.Module)


class LearningRates(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_end(self, trainer, *args):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_scheduler_is_attached_with_warmup(tmp_path, sample):
    record = LearningRates()
    train(small_2d(tmp_path, "training.max_steps=10", "scheduler.name=poly", "scheduler.warmup_steps=3",
                   "optimizer.lr=0.01"),
          data=[(sample.image, sample.mitochondria)], callbacks=[record])
    lrs = record.lrs
    assert lrs[0] < lrs[1] < lrs[2] <= 0.01  # warm-up
    assert lrs[-1] < lrs[3]  # then poly decay
    assert lrs[-1] < 0.01 * 0.3


def test_resume_continues_step_optimizer_and_schedule(tmp_path, sample):
    data = [(sample.image, sample.mitochondria)]
    first = train(small_2d(tmp_path, "training.max_steps=4", "scheduler.name=cosine"), data=data)
    record = LearningRates()
    second = train(small_2d(tmp_path, "training.max_steps=8", "scheduler.name=cosine"), data=data,
                   resume=first.last_checkpoint, callbacks=[record])
    assert second.global_step == 8
    assert len(record.lrs) == 4  # only the remaining steps ran
    ckpt = load_checkpoint(second.last_checkpoint)
    adam_step = next(iter(ckpt["optimizer_states"][0]["state"].values()))["step"]
    assert int(adam_step) == 8
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 8


def test_validation_volume_and_sparse_labels(tmp_path, sample):
    sparse = np.zeros_like(sample.mitochondria, dtype=np.uint8)
    sparse[:, 10:20, :] = 1 + sample.mitochondria[:, 10:20, :]  # a painted band: 1 background, 2 mitochondria
    sparse[sample.mitochondria == 1] = 2
    other = make_synthetic_em(shape=(16, 96, 96), seed=5)
    result = train(small_2d(tmp_path, "data.label_mode=sparse"),
                   data=TrainingData(train=[(sample.image, sparse)], val=[(other.image, other.mitochondria + 1)]))
    assert np.isfinite(column(read_metrics(result.run_dir), "train/loss")).all()


def test_nonfinite_loss_skips_a_step_then_recovers(tmp_path, sample, caplog):
    class PoisonOnce(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1:
                batch["image"][:] = float("nan")

    result = train(small_2d(tmp_path, "training.max_steps=4"), data=[(sample.image, sample.mitochondria)],
                   callbacks=[PoisonOnce()])
    assert "non-finite training loss" in caplog.text and "step skipped" in caplog.text
    assert result.global_step == 4


def test_nonfinite_losses_in_a_row_stop_with_a_clear_error(tmp_path, sample):
    class PoisonAll(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            batch["image"][:] = float("nan")

    with pytest.raises(NonFiniteLossError, match="3 non-finite training losses in a row"):
        train(small_2d(tmp_path), data=[(sample.image, sample.mitochondria)], callbacks=[PoisonAll()])


def test_finetune_from_pretrained_with_upkern(tmp_path, sample):
    first = train(small_mednext(tmp_path, "model.kernel_size=3"), data=[(sample.image, sample.mitochondria)])
    second = train(small_mednext(tmp_path, "model.kernel_size=5", f"model.pretrained={first.last_checkpoint}"),
                   data=[(sample.image, sample.mitochondria)])
    model, cfg = load_model_from_checkpoint(second.last_checkpoint)
    assert cfg.model.kernel_size == 5
    assert model.network.enc_block_0[0].conv1.weight.shape[-1] == 5


def test_pretrained_of_another_architecture_is_refused(tmp_path, sample):
    first = train(small_2d(tmp_path), data=[(sample.image, sample.mitochondria)])
    with pytest.raises(ConfigError, match="model.pretrained"):
        train(small_mednext(tmp_path, f"model.pretrained={first.last_checkpoint}"),
              data=[(sample.image, sample.mitochondria)])


def test_monitor_must_be_logged(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint.monitor: 'val_loss'.*val/loss"):
        train(small_2d(tmp_path, "checkpoint.monitor=val_loss"))


def test_the_offered_checkpoint_is_the_best_unless_no_score_reached_min_score(tmp_path, sample):
    """A run scored by IoU whose best never reaches checkpoint.min_score (an undecided model: only
    noise scored) offers its last checkpoint, and says why; otherwise the best."""
    result = train(small_2d(tmp_path, "checkpoint.monitor=val/iou", "checkpoint.mode=max",
                            "checkpoint.min_score=1.0"), data=[(sample.image, sample.mitochondria)])
    assert result.best_checkpoint.is_file() and result.best_score < 1.0 and result.min_score == 1.0
    assert result.checkpoint == result.last_checkpoint != result.best_checkpoint
    assert result.checkpoint_note() == f"the last: val/iou never reached 1, best {result.best_score:.3f}"
    reached = dataclasses.replace(result, min_score=result.best_score)
    assert reached.checkpoint == result.best_checkpoint
    assert reached.checkpoint_note() == f"best val/iou {result.best_score:.3f}"
    unscored = dataclasses.replace(result, best_checkpoint=None, best_score=None)
    assert unscored.checkpoint == result.last_checkpoint and unscored.checkpoint_note() == "the last"


def test_missing_training_paths_error(tmp_path):
    with pytest.raises(ValueError, match="data.train_image and data.train_label"):
        train(small_2d(tmp_path))


def test_more_gpus_than_available_fall_back(caplog):
    cfg = load_config(REPO / "tests/data/plan_mednext_lucchi.yaml")
    accelerator, devices = resolve_devices(cfg)
    if torch.cuda.device_count() == 0:
        assert (accelerator, devices) == ("cpu", 1)
        assert "no GPU" in caplog.text


# --- checkpoint safety -----------------------------------------------------------------------------

class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as handle:
        torch.save({"state_dict": {}, "payload": Payload(str(marker))}, handle, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        train(small_2d(tmp_path), resume=path)
    assert not marker.exists()


def test_corrupted_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not written by napari-connectomics"):
        load_model_from_checkpoint(foreign)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"a": torch.ones(2)}, path)
    before = path.read_bytes()

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"a": torch.zeros(2)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_checkpoint_carries_the_config(tmp_path, sample):
    result = train(small_2d(tmp_path), data=[(sample.image, sample.mitochondria)])
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt[CONFIG_KEY]["model"]["architecture"] == "monai_unet"


# --- command line ----------------------------------------------------------------------------------

def test_cli_train_with_relative_paths_and_summary(tmp_path, volume_file):
    os.symlink(volume_file, tmp_path / "em.h5")
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "model:\n  architecture: monai_unet\n  spatial_dims: 2\n  filters: [8, 16, 32]\n"
        "data:\n  train_image: em.h5:image\n  train_label: em.h5:label\n  patch_size: [64, 64]\n"
        "  samples_per_epoch: 4\n  batch_size: 2\n"
        "training:\n  max_epochs: 2\n  val_patches: 2\n  output_dir: out\n")
    result = subprocess.run([sys.executable, "-m", "napari_connectomics", "train", "--config", str(config),
                             "training.name=cli", "system.num_gpus=1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best checkpoint" in result.stdout and "last val/dice" in result.stdout
    runs = list((tmp_path / "out" / "cli").iterdir())
    assert len(runs) == 1
    saved = load_config(runs[0] / "config.yaml")
    assert saved.data.train_image == f"{tmp_path / 'em.h5'}:image"
    assert (runs[0] / "metrics.csv").is_file() and (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert "no GPU" in result.stderr


def test_cli_train_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "napari_connectomics", "train", "data.train_image=nope.h5:image",
                             "data.train_label=nope.h5:label"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "nope.h5" in result.stderr


def test_instance_target_trains(tmp_path, sample):
    result = train(small_2d(tmp_path, "data.target=instance", "model.out_channels=3"),
                   data=[(sample.image, sample.instances)])
    rows = read_metrics(result.run_dir)
    assert column(rows, "val/dice/class_2"), "contour class must be scored"


@pytest.mark.parametrize("data, overrides, message", [
    (lambda s: [(s.image, s.mitochondria[:, :64])], (), "shape"),
    (lambda s: [(s.image, s.instances)], ("data.target=semantic",), "set model.out_channels="),
    (lambda s: [(s.image, np.zeros_like(s.mitochondria))], ("data.label_mode=sparse",), "no annotated voxel"),
    (lambda s: [(np.where(s.mitochondria > 0, np.nan, s.image.astype(np.float32)), s.mitochondria)], (), "NaN"),
    (lambda s: [(s.image[:1], s.mitochondria[:1])], ("model.spatial_dims=3", "data.patch_size=[16,64,64]"),
     "single section"),
])
def test_bad_training_data_gives_one_line_errors(tmp_path, sample, data, overrides, message):
    with pytest.raises(ValueError) as info:
        train(small_2d(tmp_path, *overrides), data=data(sample))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists(), "a failed start must not leave a run folder"


@pytest.mark.parametrize("override, valid", [
    ("model.loss_functions=[DiceLos]", "DiceLoss"),
    ("optimizer.name=adamw", "AdamW"),
    ("scheduler.name=cosin", "cosine"),
])
def test_unknown_names_list_the_valid_ones(override, valid):
    with pytest.raises(ConfigError, match=valid):
        load_config(overrides=[override])


def test_ddp_two_cpu_processes_through_the_cli(tmp_path, volume_file):
    result = subprocess.run(
        [sys.executable, "-m", "napari_connectomics", "train",
         f"data.train_image={volume_file}:image", f"data.train_label={volume_file}:label",
         "model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[8,16,32]",
         "data.patch_size=[64,64]", "data.batch_size=2", "data.samples_per_epoch=8", "training.val_patches=4",
         "training.max_steps=3", "system.accelerator=cpu", "system.devices=2", "system.strategy=ddp",
         f"training.output_dir={tmp_path / 'runs'}", "training.name=ddp", "system.torch_threads=1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "runs" / "ddp").iterdir())
    assert len(runs) == 1, runs  # both processes wrote into one run folder
    assert result.stdout.count("best checkpoint") == 1  # one summary, from rank 0
    checkpoints = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints
    ckpt = load_checkpoint(runs[0] / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    assert "strategy=ddp" in result.stderr or "distributed_backend=gloo" in result.stderr


def test_binary_with_one_sigmoid_channel_and_plateau_schedule(tmp_path, sample):
    result = train(small_2d(tmp_path, "model.out_channels=1", "model.loss_functions=[BCEWithLogitsLoss,DiceLoss]",
                            "model.loss_weights=[1.0,1.0]", "scheduler.name=plateau", "scheduler.warmup_steps=2"),
                   data=[(sample.image, sample.mitochondria)])
    rows = read_metrics(result.run_dir)
    assert column(rows, "val/iou") and np.isfinite(column(rows, "train/loss")).all()
    model, _ = load_model_from_checkpoint(result.last_checkpoint)
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_train_from_zarr_and_tiff_paths(tmp_path, sample):
    import tifffile
    import zarr

    store = zarr.open_group(str(tmp_path / "em.zarr"), mode="w")
    store.create_array("raw", data=sample.image)
    tifffile.imwrite(tmp_path / "mito.tif", sample.mitochondria)
    cfg = small_2d(tmp_path, f"data.train_image={tmp_path / 'em.zarr'}:raw", f"data.train_label={tmp_path / 'mito.tif'}")
    assert train(cfg).global_step == 6

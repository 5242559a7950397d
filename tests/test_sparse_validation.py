"""Validation of sparse (painted) labels: pieces of every annotated section are held out, a score
on the training data is labelled train_eval/, the schedule follows max_time, array runs repeat."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import numpy as np
import pytest
from test_training import read_metrics, small_2d

from napari_connectomics.config import load_config
from napari_connectomics.data.splits import MAX_HELD_OUT, split_sparse
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.training import TrainingData, train

SECTIONS = (3, 8, 13)


@pytest.fixture(scope="module")
def sample():
    return make_synthetic_em(shape=(16, 96, 96), seed=1)


def scribbles(sample, sections=SECTIONS, seed=0) -> np.ndarray:
    """Strokes as a user paints them on a few sections: 1 background, 2 on mitochondria."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(sample.mitochondria.shape, np.uint8)
    _, ny, nx = labels.shape
    for z in sections:
        for _ in range(5):
            (y0, y1), (x0, x1) = rng.integers(4, ny - 4, 2), rng.integers(4, nx - 4, 2)
            for t in np.linspace(0, 1, 200):
                y, x = int(y0 + t * (y1 - y0)), int(x0 + t * (x1 - x0))
                labels[z, y - 1:y + 2, x - 1:x + 2] = 1
        labels[z][sample.mitochondria[z] > 0] = 2
    return labels


def test_pieces_keep_every_scribbled_section_for_training(sample):
    labels = scribbles(sample)
    train_labels, val_labels, text = split_sparse(labels, 0.2, "pieces", seed=42)
    for z in SECTIONS:
        for value in (1, 2):
            kept = np.count_nonzero(train_labels[z] == value) / np.count_nonzero(labels[z] == value)
            assert kept >= 1 - MAX_HELD_OUT, (z, value, kept)  # most of each class stays in training
    assert val_labels.any() and set(np.unique(val_labels)) == {0, 1, 2}
    assert not (train_labels.astype(bool) & val_labels.astype(bool)).any()
    np.testing.assert_array_equal(np.where(val_labels > 0, val_labels, train_labels), labels)
    assert "tiles" in text and f"of {len(SECTIONS)} annotated sections" in text
    again = split_sparse(labels, 0.2, "pieces", seed=42)
    np.testing.assert_array_equal(again.val, val_labels)  # deterministic from the seed
    assert not np.array_equal(split_sparse(labels, 0.2, "pieces", seed=7).val, val_labels)
    share = np.count_nonzero(val_labels) / np.count_nonzero(labels)
    assert 0.1 < share < 0.35


def test_other_modes_and_too_little_annotation(sample):
    labels = scribbles(sample)
    sections = split_sparse(labels, 0.3, "sections", seed=0)
    assert "1 of 3 annotated sections" in sections.description and not sections.train[13].any()
    nothing = split_sparse(labels, 0.2, "none", seed=0)
    assert not nothing.held_out and "sparse_validation is none" in nothing.description
    np.testing.assert_array_equal(nothing.train, labels)
    assert not split_sparse(labels, 0.0, "pieces", seed=0).held_out
    flat = split_sparse(labels[8], 0.2, "pieces", seed=0)  # a 2D image: pieces of its one section
    assert flat.held_out and flat.train.any() and flat.val.shape == (96, 96)
    dot = np.zeros((4, 8, 8), np.uint8)
    dot[1, 2, 3] = 2
    assert not split_sparse(dot, 0.2, "pieces", seed=0).held_out
    with pytest.raises(ValueError, match="pieces, sections, none"):
        split_sparse(labels, 0.2, "stripes", seed=0)


def test_engine_holds_out_pieces_and_the_run_repeats_headless(tmp_path, sample):
    labels = scribbles(sample)
    result = train(small_2d(tmp_path, "data.label_mode=sparse", "training.max_steps=2"),
                   data=TrainingData(train=[(sample.image, labels)]))
    assert result.held_out and "tiles" in result.validation
    assert "val/iou" in result.metrics and result.monitor == "val/loss"
    saved = load_config(result.run_dir / "config.yaml")
    annotations = result.run_dir / "annotations.h5"
    assert saved.data.train_image == f"{annotations}:image" and saved.data.train_label == f"{annotations}:label"
    assert saved.data.val_image is None  # the same split is made again from the seed

    again = tmp_path / "again"
    run = subprocess.run([sys.executable, "-m", "napari_connectomics", "train", "--config",
                          str(result.run_dir / "config.yaml"), "training.max_steps=2",
                          f"training.output_dir={again}"], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tiles" in run.stdout and "last val/iou" in run.stdout
    (repeated,) = (again / "connectomics").iterdir()
    assert (repeated / "checkpoints" / "last.ckpt").is_file()


def test_validation_arrays_are_saved_too(tmp_path, sample):
    other = make_synthetic_em(shape=(16, 96, 96), seed=5)
    result = train(small_2d(tmp_path, "training.max_steps=1"),
                   data=TrainingData(train=[(sample.image, sample.mitochondria)],
                                     val=[(other.image, other.mitochondria)]))
    saved = load_config(result.run_dir / "config.yaml")
    assert saved.data.val_image.endswith("annotations.h5:val_image")
    assert saved.data.val_label.endswith("annotations.h5:val_label")
    assert result.held_out and result.validation.startswith("separate validation volumes")


@pytest.mark.parametrize("overrides", [("data.label_mode=sparse", "data.sparse_validation=none"),
                                       ("data.val_fraction=0",)])
def test_scores_on_training_data_are_labelled_train_eval(tmp_path, sample, overrides, caplog):
    labels = scribbles(sample) if "data.label_mode=sparse" in overrides else sample.mitochondria
    with caplog.at_level("WARNING"):
        result = train(small_2d(tmp_path, *overrides, "training.max_steps=2"), data=[(sample.image, labels)])
    assert not result.held_out and "nothing held out" in result.validation
    assert "training annotation" in caplog.text
    assert "train_eval/iou" in result.metrics and not any(k.startswith("val/") for k in result.metrics)
    assert result.monitor == "train_eval/loss" and result.best_checkpoint.is_file()
    rows = read_metrics(result.run_dir)
    assert any(r.get("train_eval/loss") for r in rows) and "val/loss" not in rows[0]


class LearningRates(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_end(self, trainer, *args):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_schedule_decays_over_the_time_budget(tmp_path, sample, schedule):
    record = LearningRates()
    lr, min_lr = 1e-2, 1e-4
    # one long epoch: no validation inside the 8 s, so the last step ends within a step time of the budget
    result = train(small_2d(tmp_path, "training.max_steps=100000", "training.max_time=00:00:00:08",
                            "data.samples_per_epoch=4000",
                            f"scheduler.name={schedule}", "scheduler.warmup_steps=2", f"optimizer.lr={lr}",
                            f"scheduler.min_lr={min_lr}"),
                   data=[(sample.image, sample.mitochondria)], callbacks=[record])
    assert 3 < result.global_step < 100000  # the clock ended the run
    assert record.lrs[0] == pytest.approx(lr * 2 / 3)  # warm-up, counted in steps
    assert record.lrs[-1] < min_lr + 0.2 * (lr - min_lr), record.lrs[-5:]  # without the budget: ~lr
    assert record.lrs[-1] >= min_lr


def test_labels_repainted_during_a_run_train_from_the_next_step(sample, tmp_path):
    """LabelUpdates swaps new labels in between two steps: a newly painted section trains, voxels the
    run's validation held out stay held out, and the same weights and optimizer carry on."""
    from napari_connectomics.training.callbacks import LabelUpdates

    first = scribbles(sample, sections=(3, 8))
    repainted = scribbles(sample, sections=(3, 8, 13))  # a correction on a new section
    applied: list[dict[int, int]] = []
    updates = LabelUpdates(on_applied=applied.append)
    seen: dict[str, object] = {}

    class Repaint(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                seen["optimizer"] = trainer.optimizers[0]
                seen["before"] = trainer.datamodule.train_set.sources[0].annotated_total
                updates.submit(0, repainted)

        def on_train_end(self, trainer, pl_module):
            seen["after_optimizer"] = trainer.optimizers[0]
            seen["train_label"] = trainer.datamodule.train_set.sources[0].label.read()
            seen["val_label"] = trainer.datamodule.val_set.sources[0].label.read()

    cfg = small_2d(tmp_path, "data.label_mode=sparse", "data.target=semantic", "model.out_channels=2")
    result = train(cfg, data=[(sample.image, first)], callbacks=[updates, Repaint()])
    assert result.global_step == 6 and result.held_out
    assert updates.applied == 1 and len(applied) == 1
    assert applied[0][0] > seen["before"]  # the new section's strokes are training now
    assert seen["after_optimizer"] is seen["optimizer"]  # same optimizer (and state) throughout
    train_label, val_label = seen["train_label"], seen["val_label"]
    assert np.count_nonzero(train_label[13]) == np.count_nonzero(repainted[13])  # new strokes all train
    assert not (train_label.astype(bool) & val_label.astype(bool)).any()
    np.testing.assert_array_equal(np.where(val_label > 0, val_label, train_label), repainted)
    held_at_start = split_sparse(first, float(cfg.data.val_fraction), "pieces", int(cfg.system.seed)).val > 0
    np.testing.assert_array_equal(val_label > 0, held_at_start & (repainted > 0))


def test_replace_labels_refuses_another_shape(sample, tmp_path):
    from napari_connectomics.training.datamodule import VolumeDataModule

    cfg = small_2d(tmp_path, "data.label_mode=sparse", "data.target=semantic", "model.out_channels=2")
    module = VolumeDataModule(cfg, [(sample.image, scribbles(sample))])
    module.setup("fit")
    with pytest.raises(ValueError, match="repaint the same layer"):
        module.replace_labels(0, np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(IndexError, match="does not exist"):
        module.replace_labels(3, scribbles(sample))

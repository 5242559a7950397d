"""The Train panel's Qt-free logic: checks, config, annotation summary and split, saved runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_connectomics.config import ConfigError, load_config
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.widgets.notify import UserError
from napari_connectomics.widgets.training_request import (
    PANEL_DEFAULTS,
    AnnotationSummary,
    PairChoice,
    PreviewTarget,
    TrainChoices,
    build_config,
    check_annotations,
    check_choices,
    class_value,
    continue_config,
    held_out_split,
    objects_only_warning,
    out_channels_for,
    prepare_run,
    preview_region,
    run_training,
    summarize_labels,
    torch_threads,
)

TINY_MODEL = ["model.architecture=monai_basic_unet3d", "model.filters=[4,4,8,16,32,4]"]


@pytest.fixture(scope="module")
def sample():
    return make_synthetic_em(shape=(16, 96, 96), seed=1)


def painted(sample, sections=(4, 6, 8, 10)) -> np.ndarray:
    """Sparse labels as a user paints them: 1 background, 2 mitochondria, on a few sections."""
    labels = np.zeros(sample.mitochondria.shape, np.uint8)
    for z in sections:
        labels[z] = np.where(sample.mitochondria[z] > 0, 2, 1)
    return labels


# Short names for the config knobs a test sets: name -> (section, field).
KNOB_NAMES = {"label_mode": ("data", "label_mode"), "task": ("data", "target"), "patch_size": ("data", "patch_size"),
              "steps": ("training", "max_steps"), "lr": ("optimizer", "lr")}


def choices_for(sample, tmp_path, labels=None, **overrides) -> TrainChoices:
    knobs = {"data": {"patch_size": [16, 32, 32], "batch_size": 1, "voxel_size": [30.0, 8.0, 8.0]},
             "training": {"max_steps": 2, "output_dir": str(tmp_path / "runs")},
             "optimizer": {"lr": 1e-3}, "system": {"accelerator": "cpu"}}
    for short, (section, name) in KNOB_NAMES.items():
        if short in overrides:
            knobs[section][name] = overrides.pop(short)
    values = dict(
        pairs=[PairChoice("painted", sample.image.copy(), painted(sample) if labels is None else labels,
                          scale=(30.0, 8.0, 8.0), translate=(0.0, 0.0, 0.0))],
        knobs=knobs)
    values.update(overrides)
    return TrainChoices(**values)


@pytest.fixture
def base_cfg():
    return load_config(overrides=TINY_MODEL + ["training.val_patches=2", "data.samples_per_epoch=4"])


# --- cheap checks (GUI thread) ---------------------------------------------------------------------

def test_check_choices_refuses_what_cannot_train(sample, tmp_path):
    with pytest.raises(UserError, match="pick an Image layer"):
        check_choices(choices_for(sample, tmp_path, pairs=[]))
    with pytest.raises(UserError, match="pick the Labels layer"):
        check_choices(choices_for(sample, tmp_path, pairs=[PairChoice("pair 1", sample.image, None)]))
    with pytest.raises(UserError, match="image is 16x96x96 but the labels are 16x32x96") as info:
        check_choices(choices_for(sample, tmp_path, labels=painted(sample)[:, :32]))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="must be integers"):
        check_choices(choices_for(sample, tmp_path, labels=painted(sample).astype(np.float32)))
    with pytest.raises(UserError, match="does not exist"):
        check_choices(choices_for(sample, tmp_path, start="checkpoint", checkpoint=str(tmp_path / "gone.ckpt")))
    with pytest.raises(UserError, match="validation labels"):
        check_choices(choices_for(sample, tmp_path, validation="labels", val_label=np.zeros((2, 2), np.uint8)))
    with pytest.raises(UserError, match="stack.h5"):
        check_choices(choices_for(sample, tmp_path, pairs=[PairChoice("files", "", "")]))
    with pytest.raises(UserError, match="cannot|not found|no such|does not exist"):
        check_choices(choices_for(sample, tmp_path, pairs=[PairChoice("files", str(tmp_path / "no.h5:raw"),
                                                                      str(tmp_path / "no.h5:label"))]))
    check_choices(choices_for(sample, tmp_path))  # a good choice passes


def test_build_config_applies_the_choices(sample, tmp_path, base_cfg):
    classes = {0: "background", 1: "mitochondria", 2: "vesicles"}
    cfg = build_config(base_cfg, choices_for(sample, tmp_path, classes=classes, steps=40, lr=3e-4))
    assert cfg.model.architecture == "monai_basic_unet3d" and list(cfg.model.filters) == [4, 4, 8, 16, 32, 4]
    assert cfg.data.label_mode == "sparse" and cfg.data.target == "semantic"
    assert cfg.model.out_channels == 3  # sparse values 1, 2, 3 -> classes 0, 1, 2
    assert list(cfg.data.patch_size) == [16, 32, 32] and cfg.data.batch_size == 1
    assert cfg.training.max_steps == 40 and cfg.optimizer.lr == pytest.approx(3e-4)
    assert list(cfg.data.voxel_size) == [30.0, 8.0, 8.0]
    assert cfg.system.accelerator == "cpu" and cfg.system.torch_threads == torch_threads()
    assert torch_threads() == max(1, (os.cpu_count() or 2) - 1)
    assert cfg.training.output_dir == str((tmp_path / "runs").resolve())
    assert cfg.data.num_workers == 0 and cfg.data.train_image is None
    assert cfg.model.pretrained is None
    instance = build_config(base_cfg, choices_for(sample, tmp_path, task="instance"))
    assert instance.model.out_channels == 3 and instance.data.target == "instance"
    assert continue_config(cfg, 12, 5).training.max_steps == 17 and cfg.training.max_steps == 40
    with pytest.raises(ConfigError, match="data.patch_size"):
        build_config(base_cfg, choices_for(sample, tmp_path, patch_size=[16, 32]))


def test_unset_knobs_keep_the_base_config_except_the_panel_defaults(sample, tmp_path, base_cfg):
    cfg = build_config(base_cfg, TrainChoices(pairs=choices_for(sample, tmp_path).pairs))
    assert cfg.data.label_mode == PANEL_DEFAULTS["data"]["label_mode"]
    assert cfg.data.target == PANEL_DEFAULTS["data"]["target"]
    assert cfg.training.max_steps == PANEL_DEFAULTS["training"]["max_steps"]
    assert cfg.data.batch_size == base_cfg.data.batch_size and cfg.optimizer.lr == base_cfg.optimizer.lr
    assert list(cfg.data.patch_size) == list(base_cfg.data.patch_size)
    with pytest.raises(ConfigError, match="data.label_mode"):  # the schema's choices, not restated
        build_config(base_cfg, choices_for(sample, tmp_path, label_mode="painted"))
    from napari_connectomics.widgets.forms import section_fields
    from napari_connectomics.widgets.training_request import DEVICES

    assert set(DEVICES) <= set(section_fields("system")["accelerator"].metadata["choices"])


def test_class_values_and_channels():
    assert [class_value(i, "sparse") for i in range(3)] == [1, 2, 3]
    assert [class_value(i, "dense") for i in range(3)] == [0, 1, 2]
    assert out_channels_for("semantic", "sparse", 2) == 2
    assert out_channels_for("semantic", "dense", 2) == 3
    assert out_channels_for("binary", "dense", 9) == 2
    assert out_channels_for("instance", "sparse", 50) == 3


# --- annotation checks and split (training thread) ------------------------------------------------

def test_annotation_checks():
    empty = AnnotationSummary(values=[0], annotated=0, total=10)
    with pytest.raises(UserError, match="nothing is annotated"):
        check_annotations(empty, "sparse", "semantic")
    with pytest.raises(UserError, match="all 0"):
        check_annotations(empty, "dense", "semantic")
    only_background = summarize_labels(np.array([[0, 1], [1, 0]]), "sparse")
    assert only_background.values == [0, 1] and only_background.annotated == 2
    (warning,) = check_annotations(only_background, "sparse", "semantic")
    assert "only label 1" in warning and "background" in warning
    assert check_annotations(summarize_labels(np.array([0, 1, 2]), "sparse"), "sparse", "semantic") == []
    ids = summarize_labels(np.arange(60), "dense")
    with pytest.raises(UserError, match="instance"):
        check_annotations(ids, "dense", "semantic")
    assert check_annotations(ids, "dense", "instance") == []


def test_sections_with_objects_but_no_background_are_named():
    """Strokes marking only the object on a section taught the loop's network to over-segment
    (docs/benchmarks.md): the check names such sections, once there is background elsewhere."""
    labels = np.zeros((12, 8, 8), np.uint8)
    labels[2, :4], labels[2, 4:] = 1, 2  # both classes: fine
    labels[5, 2:4, 2:4] = 2  # objects only
    summary = summarize_labels(labels, "sparse")
    assert summary.objects_only == [5]
    (warning,) = check_annotations(summary, "sparse", "semantic", "painted")
    assert warning.startswith("painted: section 5 has objects painted but no background (1)")
    for z in range(6, 12):
        labels[z, 0, 0] = 3
    many = check_annotations(summarize_labels(labels, "sparse"), "sparse", "semantic", "painted")
    assert many == [objects_only_warning("painted", [5, 6, 7, 8, 9, 10, 11])]
    assert "sections 5, 6, 7, 8, 9 and 2 more have" in many[0]
    assert summarize_labels(labels, "dense").objects_only == [] == summarize_labels(labels[5], "sparse").objects_only
    no_background = summarize_labels(np.where(labels == 1, 0, labels), "sparse")
    assert ["no background (label 1)" in w for w in check_annotations(no_background, "sparse", "semantic")] == [True]


def test_held_out_split_keeps_every_painted_section_for_training(sample):
    labels = painted(sample, sections=(4, 6, 8, 10))
    train, val, where = held_out_split(labels, 0.25, "pieces", seed=0)
    assert "tiles of 4 of 4 annotated sections" in where
    assert all(train[z].any() for z in (4, 6, 8, 10)) and val.any()
    assert not (train.astype(bool) & val.astype(bool)).any()
    train, val, where = held_out_split(labels, 0.25, "sections", seed=0)
    assert "1 of 4 annotated sections" in where
    assert not val[:10].any() and (val[10] == labels[10]).all()
    assert not train[10].any() and (train[:10] == labels[:10]).all()
    one_section = painted(sample, sections=(5,))
    train, val, where = held_out_split(one_section, 0.2, "sections", seed=0)
    assert "rows" in where and train.any() and val.any()
    assert not (train.astype(bool) & val.astype(bool)).any()
    dot = np.zeros((4, 8, 8), np.uint8)
    dot[1, 2, 3] = 2
    assert held_out_split(dot, 0.2, "pieces", seed=0) is None


def test_preview_region_follows_the_view():
    region = preview_region((32, 256, 256), PreviewTarget(z=30, y=10, x=250), window_z=16, max_yx=128)
    assert region == (slice(16, 32), slice(0, 128), slice(128, 256))
    whole = preview_region((8, 64, 64), PreviewTarget(z=3), window_z=16)
    assert whole == (slice(0, 8), slice(0, 64), slice(0, 64))
    flat = preview_region((64, 64), PreviewTarget(z=0, y=32, x=32), window_z=1)
    assert flat == (slice(0, 1), slice(0, 64), slice(0, 64))


# --- prepared runs ----------------------------------------------------------------------------------

def test_prepare_run_saves_annotations_and_points_the_config_at_them(sample, tmp_path, base_cfg):
    choices = choices_for(sample, tmp_path)
    labels_before = choices.pairs[0].label.copy()
    prepared = prepare_run(choices, build_config(base_cfg, choices))
    run = prepared.run_dir
    assert run.parent == (tmp_path / "runs" / "connectomics").resolve()
    with h5py.File(run / "annotations.h5", "r") as f:
        assert set(f) == {"image", "label", "train_label", "val_label"}
        np.testing.assert_array_equal(f["image"][...], sample.image)
        np.testing.assert_array_equal(f["label"][...], labels_before)
        assert all(f["train_label"][z].any() for z in (4, 6, 8, 10)) and f["val_label"][...].any()
        assert list(f["image"].attrs["scale"]) == [30.0, 8.0, 8.0]
    d = prepared.cfg.data
    assert d.train_image == f"{run / 'annotations.h5'}:image"
    assert d.train_label.endswith(":train_label") and d.val_label.endswith(":val_label")
    assert d.val_image == d.train_image
    assert prepared.cfg.model.out_channels == 2 and prepared.data is None
    legend = json.loads((run / "annotations.json").read_text())
    assert legend["classes"] == {"1": "background", "2": "mitochondria"}
    np.testing.assert_array_equal(choices.pairs[0].label, labels_before)


def test_prepare_run_references_the_image_file_and_reads_files(sample, tmp_path, base_cfg):
    stack = tmp_path / "stack.h5"
    with h5py.File(stack, "w") as f:
        f["raw"] = sample.image
        f["labels"] = sample.mitochondria
    choices = choices_for(sample, tmp_path, label_mode="dense")
    choices.pairs[0].image_source = f"{stack}:raw"
    choices.pairs[0].label = (sample.mitochondria > 0).astype(np.uint8)
    prepared = prepare_run(choices, build_config(base_cfg, choices))
    assert prepared.cfg.data.train_image == f"{stack}:raw"
    with h5py.File(prepared.run_dir / "annotations.h5", "r") as f:
        assert "image" not in f and set(f) == {"label"}
    assert prepared.cfg.data.val_image is None  # dense: the data module holds out the last z-range

    files = choices_for(sample, tmp_path, label_mode="dense",
                        pairs=[PairChoice("files", f"{stack}:raw", f"{stack}:labels")])
    check_choices(files)
    prepared = prepare_run(files, build_config(base_cfg, files))
    assert prepared.cfg.data.train_image == f"{stack}:raw" and prepared.cfg.data.train_label == f"{stack}:labels"
    assert prepared.preview_image is None

    validated = choices_for(sample, tmp_path, label_mode="dense", validation="labels",
                            val_label=(sample.mitochondria > 0).astype(np.uint8),
                            pairs=[PairChoice("files", f"{stack}:raw", f"{stack}:labels")])
    prepared = prepare_run(validated, build_config(base_cfg, validated))
    assert prepared.cfg.data.val_image == f"{stack}:raw"
    assert prepared.cfg.data.val_label == f"{prepared.run_dir / 'annotations.h5'}:val_label"


def test_values_beyond_the_legend_warn(sample, tmp_path, base_cfg):
    choices = choices_for(sample, tmp_path, label_mode="dense", labels=sample.instances.astype(np.uint16))
    prepared = prepare_run(choices, build_config(base_cfg, choices))
    assert prepared.cfg.model.out_channels == int(sample.instances.max()) + 1
    assert any("pick the task 'instance'" in w for w in prepared.warnings)


def test_two_pairs_and_validation_labels(sample, tmp_path, base_cfg):
    other = make_synthetic_em(shape=(16, 96, 96), seed=4)
    val_labels = np.where(sample.mitochondria > 0, 2, 1).astype(np.uint8)
    choices = choices_for(sample, tmp_path, validation="labels", val_label=val_labels)
    choices.pairs.append(PairChoice("second", other.image.copy(), painted(other)))
    prepared = prepare_run(choices, build_config(base_cfg, choices))
    assert (prepared.run_dir / "annotations_2.h5").is_file()
    assert prepared.cfg.data.val_label.endswith("annotations.h5:val_label")
    assert len(prepared.data.train) == 2 and len(prepared.data.val) == 1
    assert any("config.yaml names the first one" in w for w in prepared.warnings)


def test_only_background_painted_warns(sample, tmp_path, base_cfg):
    labels = np.zeros(sample.mitochondria.shape, np.uint8)
    labels[5] = 1
    choices = choices_for(sample, tmp_path, labels=labels)
    prepared = prepare_run(choices, build_config(base_cfg, choices))
    assert any("only label 1" in w for w in prepared.warnings)


def test_empty_annotation_writes_nothing(sample, tmp_path, base_cfg):
    choices = choices_for(sample, tmp_path, labels=np.zeros(sample.mitochondria.shape, np.uint8))
    with pytest.raises(UserError, match="nothing is annotated"):
        prepare_run(choices, build_config(base_cfg, choices))
    assert not (tmp_path / "runs").exists()


# --- a tiny run, repeated by the CLI, then fine-tuned ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, sample):
    tmp_path = tmp_path_factory.mktemp("gui_run")
    base = load_config(overrides=TINY_MODEL + ["training.val_patches=2"])
    choices = choices_for(sample, tmp_path)
    prepared = prepare_run(choices, build_config(base, choices))
    events: list = []
    result = run_training(prepared, events.append, threading.Event())
    return prepared, result, events, tmp_path


def test_tiny_run_reports_progress_and_saves_a_config(tiny_run):
    prepared, result, events, _ = tiny_run
    assert result.global_step == 2 and result.last_checkpoint.is_file()
    assert result.run_dir == prepared.run_dir and (prepared.run_dir / "config.yaml").is_file()
    assert any(getattr(e, "metrics", {}).get("train/loss") is not None for e in events)
    assert type(events[0]).__name__ == "RunStarted"


def test_cli_repeats_a_gui_run(tiny_run):
    prepared, _, _, tmp_path = tiny_run
    config = prepared.run_dir / "config.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "napari_connectomics", "train", "--config", str(config), "training.max_steps=2",
         f"training.output_dir={tmp_path / 'again'}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steps" in result.stdout and "best checkpoint" in result.stdout
    (again,) = (tmp_path / "again" / "connectomics").iterdir()
    repeated = load_config(again / "config.yaml")
    assert repeated.data.train_label == prepared.cfg.data.train_label
    assert (again / "checkpoints" / "last.ckpt").is_file()


def test_finetune_from_the_runs_checkpoint(tiny_run, sample, tmp_path):
    _, result, _, _ = tiny_run
    base = load_config(overrides=["model.architecture=monai_unet"])  # the checkpoint's network wins
    choices = choices_for(sample, tmp_path, start="checkpoint", checkpoint=str(result.last_checkpoint), steps=1)
    check_choices(choices)
    prepared = prepare_run(choices, build_config(base, choices))
    assert prepared.cfg.model.architecture == "monai_basic_unet3d"
    assert prepared.cfg.model.pretrained == str(Path(result.last_checkpoint).resolve())
    tuned = run_training(prepared, lambda event: None, threading.Event())
    assert tuned.global_step == 1

    wrong = choices_for(sample, tmp_path, start="checkpoint", checkpoint=str(result.last_checkpoint),
                        task="instance")
    with pytest.raises(UserError, match="predicts 2 classes"):
        prepare_run(wrong, build_config(base, wrong))

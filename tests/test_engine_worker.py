"""The viewer's engine worker process serves the Model and Segment panels as well as training:
parameter counts, step-time probes, checkpoint info and segmentation run there, so torch,
Lightning and MONAI never load into napari; a worker killed during a Segment is one notification
and the next Segment starts a new one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_checkpoint

from napari_connectomics.config import load_config
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.progress import Progress
from napari_connectomics.widgets import shared_array
from napari_connectomics.widgets.segment_request import (
    PostSettings,
    SegmentRequest,
    run_segmentation,
    whole_region,
)
from napari_connectomics.widgets.training_request import PairChoice, TrainChoices, build_config
from napari_connectomics.widgets.step_probe import (
    StepTime,
    first_preview_seconds,
    probe_config,
    probe_key,
    slow_start_warning,
)
from napari_connectomics.widgets.worker_client import EngineWorker, WorkerDied, segment_in_worker

PLUGIN = "napari-connectomics"
TINY_2D = ["model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[4,8,16]",
           "model.num_res_units=1", "data.patch_size=[64,64]", "data.batch_size=2"]
TINY_3D = ["model.architecture=monai_basic_unet3d", "model.filters=[4,4,8,16,32,4]", "training.val_patches=2"]
WAIT_MS = int(os.environ.get("SEG_WAIT_MS", 180_000))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("engine") / "runs" / "tiny" / "t" / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def engine():
    worker = EngineWorker()
    worker.start()
    yield worker
    worker.close()


def shared_blocks() -> list[Path]:
    shm = Path("/dev/shm")
    return sorted(shm.glob("connectomics-*")) if shm.is_dir() else []


# --- without Qt -------------------------------------------------------------------------------


def test_the_first_preview_rule():
    assert first_preview_seconds(0.5, 5) == 1.5  # after the first step (x2, Lightning warms up), then its prediction
    assert first_preview_seconds(20, 5) == 60.0
    assert first_preview_seconds(20, 0) == 40.0  # no previews: the first loss point
    assert slow_start_warning(StepTime(0.5, "CPU"), 5) is None
    assert slow_start_warning(StepTime(20, "CPU"), 5) is None  # a minute: no warning yet
    warning = slow_start_warning(StepTime(25, "CPU"), 5)
    assert warning.startswith("The first preview will take about 75 s (~25 s per training step on CPU)")
    assert "\n" not in warning
    assert "first loss point" in slow_start_warning(StepTime(40, "CPU"), 0)
    assert StepTime(0.4512, "GPU").text() == "~0.45 s per training step on GPU"


def test_the_probe_key_follows_what_a_step_costs():
    cfg = load_config(overrides=TINY_2D)
    assert probe_key(probe_config(cfg)) == probe_key(probe_config(cfg, [64, 64], 2, cfg.system.accelerator))
    assert probe_key(probe_config(cfg, [128, 128])) != probe_key(probe_config(cfg))
    assert probe_key(probe_config(cfg, batch_size=4)) != probe_key(probe_config(cfg))


def test_count_and_probe_in_the_worker_match_this_process(engine):
    from napari_connectomics.models.build import count_parameters

    for overrides in (TINY_2D, TINY_3D):
        cfg = load_config(overrides=overrides)
        assert engine.call("count", cfg, quiet=True) == count_parameters(cfg)
    step = engine.call("probe", probe_config(load_config(overrides=TINY_2D)), quiet=True)
    assert isinstance(step, StepTime) and step.device == "CPU" and 0 < step.seconds < 60 and not step.rough


def test_a_probe_asked_while_a_run_trains_is_timed_after_the_run(engine, tmp_path):
    """Timed beside a run (or a segmentation), a step would measure the contention: the probe
    waits for the run to end."""
    sample = make_synthetic_em(shape=(16, 64, 64), seed=3)
    labels = np.zeros(sample.mitochondria.shape, np.uint8)
    labels[2] = np.where(sample.mitochondria[2] > 0, 2, 1)
    choices = TrainChoices(pairs=[PairChoice("painted", sample.image.copy(), labels)],
                           knobs={"data": {"patch_size": [64, 64], "batch_size": 2},
                                  "training": {"max_steps": 100_000, "output_dir": str(tmp_path / "runs")},
                                  "system": {"accelerator": "cpu"}})
    cfg = build_config(load_config(overrides=TINY_2D), choices)
    stop, stepped, ended = threading.Event(), threading.Event(), {}

    def report(event):
        if isinstance(event, Progress) and event.stage == "train":
            stepped.set()

    def train():
        engine.run({"choices": choices, "cfg": cfg, "preview_every": 0}, report, stop)
        ended["train"] = time.monotonic()

    def probe():
        ended["probe"] = engine.call("probe", probe_config(load_config(overrides=TINY_2D)), quiet=True), time.monotonic()

    threads = [threading.Thread(target=train)]
    threads[0].start()
    try:
        assert stepped.wait(WAIT_MS / 1000), "the run made no step"
        threads.append(threading.Thread(target=probe))
        threads[1].start()
        threads[1].join(3.0)
        assert "probe" not in ended  # still waiting for the run
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT_MS / 1000)
    step, probed_at = ended["probe"]
    assert isinstance(step, StepTime) and step.seconds > 0
    assert probed_at > ended["train"] - 1.0  # the run's "done" and the probe's result race only in the pipe


def test_errors_come_back_as_one_line(engine, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(Exception) as caught:
        engine.call("info", bad, quiet=True)
    assert "\n" not in str(caught.value) and "bad.ckpt" in str(caught.value)
    assert engine.alive  # the worker serves the next request
    assert engine.call("count", load_config(overrides=TINY_2D), quiet=True) > 0


def test_segment_in_the_worker_gives_the_labels_of_this_process(engine, checkpoint, monkeypatch):
    monkeypatch.setattr(shared_array, "SHARED_MIN_BYTES", 0)  # the image goes through shared memory
    volume = np.random.default_rng(0).integers(0, 255, (16, 64, 96), dtype=np.uint8)
    request = SegmentRequest(checkpoint, "em", volume, whole_region(volume.shape), (1.0, 1.0, 1.0),
                             (0.0, 0.0, 0.0), post=PostSettings("cc", 0.5, 0), overlap=0.0, device="cpu")
    events: list = []
    remote = segment_in_worker(engine, request, events.append, threading.Event())
    local = run_segmentation(request, lambda event: None, threading.Event())
    assert not remote.cancelled and remote.labels.labels.max() > 0
    np.testing.assert_array_equal(remote.labels.labels, local.labels.labels)
    np.testing.assert_allclose(remote.prediction.probabilities, local.prediction.probabilities, atol=1e-5)
    assert remote.prediction.info == local.prediction.info
    assert any(isinstance(event, Progress) for event in events)
    assert not shared_blocks()  # unlinked when the request ended


def test_a_stopped_segment_keeps_nothing(engine, checkpoint):
    volume = np.zeros((16, 64, 64), np.uint8)
    request = SegmentRequest(checkpoint, "em", volume, whole_region(volume.shape), (1.0, 1.0, 1.0),
                             (0.0, 0.0, 0.0), overlap=0.0, device="cpu")
    stop = threading.Event()
    stop.set()  # sent with the request: the worker stops before predicting
    outcome = segment_in_worker(engine, request, lambda event: None, stop)
    assert outcome.cancelled and outcome.prediction is None and outcome.labels is None


def test_a_killed_worker_fails_its_requests_and_the_next_one_starts_a_new_worker():
    worker = EngineWorker()
    worker.start()
    pid = worker.pid
    os.kill(pid, signal.SIGSTOP)  # frozen: the count below cannot be answered before the kill
    failures: list[BaseException] = []

    def count() -> None:
        try:
            worker.call("count", load_config(overrides=TINY_2D))
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=count)
    thread.start()
    try:
        for _ in range(200):
            if worker.in_flight:
                break
            threading.Event().wait(0.05)
        assert worker.in_flight == ["count"]
        os.kill(pid, signal.SIGKILL)
        thread.join(60)
        assert len(failures) == 1 and isinstance(failures[0], WorkerDied) and failures[0].announce
        assert "killed (SIGKILL)" in str(failures[0])
        assert worker.call("count", load_config(overrides=TINY_2D), quiet=True) > 0
        assert worker.pid != pid
    finally:
        worker.close()


# --- in a viewer ------------------------------------------------------------------------------


@pytest.fixture
def errors(monkeypatch):
    from napari_connectomics.widgets import notify

    shown: list[str] = []
    monkeypatch.setattr(notify, "show_error", lambda message, *a, **k: shown.append(str(message)))
    return shown


def configure(panel, checkpoint: Path, qtbot) -> None:
    panel.checkpoint_edit.value = str(checkpoint)
    qtbot.waitUntil(lambda: "monai_basic_unet3d" in panel.info_label.value, timeout=WAIT_MS)
    panel.predict_form.overlap.value = 0.0
    panel.predict_form.device.value = "cpu"


@pytest.mark.gui
def test_a_killed_worker_during_a_segment_is_one_notification(make_napari_viewer, qtbot, checkpoint, errors):
    from napari_connectomics.widgets.session import session_for

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (16, 64, 64), dtype=np.uint8), name="em")
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    configure(panel, checkpoint, qtbot)  # the checkpoint was read in the worker
    pid = panel.engine.pid
    os.kill(pid, signal.SIGSTOP)  # frozen: the Segment cannot finish before the kill
    panel.segment_button.native.click()
    qtbot.waitUntil(lambda: "segment" in panel.engine.in_flight, timeout=30_000)
    os.kill(pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert len(errors) == 1 and "killed" in errors[0] and "press Segment" in errors[0], errors
    assert "\n" not in errors[0]
    assert panel.segment_button.enabled and session_for(viewer).busy == ""
    assert "em segmentation" not in viewer.layers
    viewer.add_points([[1, 2, 3]])  # the viewer keeps working
    viewer.dims.set_current_step(0, 5)
    panel.segment_button.native.click()  # the next Segment starts a new worker
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert len(errors) == 1, errors
    assert viewer.layers["em segmentation"].data.shape == (16, 64, 64)
    assert panel.engine.pid != pid


@pytest.mark.gui
def test_the_panels_of_a_viewer_share_one_worker_that_ends_with_the_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Connectomics")
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert dock.model_panel.engine is dock.train_panel.worker is dock.segment_panel.engine is segment.engine
    process = segment.engine.process
    assert process is not None and process.poll() is None
    other = make_napari_viewer()
    _, other_train = other.window.add_plugin_dock_widget(PLUGIN, "Train")
    assert other_train.worker is not dock.train_panel.worker  # one worker per viewer
    qtbot.waitUntil(lambda: not dock.model_panel.counting, timeout=WAIT_MS)
    viewer.close()
    qtbot.waitUntil(lambda: process.poll() is not None, timeout=30_000)


@pytest.mark.gui
def test_the_train_panel_warns_when_the_first_preview_is_over_a_minute_away(make_napari_viewer, qtbot):
    from napari_connectomics.widgets.session import session_for

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 64, 64), np.float32), name="em")
    session_for(viewer).config = load_config(overrides=TINY_2D)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    qtbot.waitUntil(lambda: panel.step_time is not None, timeout=WAIT_MS)  # measured in the worker
    assert panel.step_time.device == "CPU" and panel.step_time.seconds < 15
    assert not panel.slow_warning.isVisibleTo(panel)  # a tiny 2D network: the preview comes at once
    key = probe_key(panel._probe_config())
    panel._step_times[key] = StepTime(40.0, "CPU")  # as a 3D network on a CPU would measure
    panel.preview_every.value = 10
    assert panel.slow_warning.isVisibleTo(panel) and "about 2 min" in panel.slow_warning.text()
    assert "~40 s per training step on CPU" in panel.slow_warning.text()
    panel._step_times[key] = StepTime(0.5, "CPU")
    panel.preview_every.value = 5
    assert not panel.slow_warning.isVisibleTo(panel)


TORCH_FREE_SESSION = r'''
import json, sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from napari_connectomics.config import load_config
from napari_connectomics.widgets import notify
from napari_connectomics.widgets.session import session_for

checkpoint, output, only_count = sys.argv[1], sys.argv[2], sys.argv[3] == "count"
errors = []
notify.show_error = lambda message, *a, **k: errors.append(str(message))
viewer = napari.Viewer(show=False)
app = QApplication.instance()


def wait(condition, what, timeout=600):
    deadline = time.monotonic() + timeout
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")


def heavy():
    return [name for name in ("torch", "lightning", "monai") if name in sys.modules]


viewer.open_sample("napari-connectomics", "synthetic_em")
_, dock = viewer.window.add_plugin_dock_widget("napari-connectomics", "Connectomics")
model = dock.model_panel
wait(lambda: (model.parameter_count is not None or model.parameter_error) and not model.probing,
     "the parameter count")
result = {"count": model.parameter_count, "count_error": model.parameter_error, "step": model.step_time is not None}
if not only_count:
    segment = dock.segment_panel
    segment.checkpoint_edit.value = checkpoint
    wait(lambda: "monai_basic_unet3d" in segment.info_label.value, "the checkpoint info")
    segment.predict_form.overlap.value = 0.0
    segment.predict_form.device.value = "cpu"
    segment.segment_button.native.click()
    wait(lambda: not segment.running and segment.labels_result is not None, "the segmentation")
    result["objects"] = int(np.max(segment.labels_result.labels))
    truth = viewer.layers["mitochondria (ground truth)"].data
    painted = np.zeros(truth.shape, np.uint8)
    for z in (8, 12):
        painted[z] = np.where(truth[z] > 0, 2, 1)
    image = viewer.layers["synthetic EM"]
    labels = viewer.add_labels(painted, name="painted", scale=image.scale)
    session_for(viewer).config = load_config(overrides=[
        "model.architecture=monai_basic_unet3d", "model.filters=[4,4,8,16,32,4]", "training.val_patches=2"])
    train = dock.train_panel
    train.pair_rows[0].image_combo.setCurrentText(image.name)
    train.pair_rows[0].labels_combo.setCurrentText(labels.name)
    train.patch_size.value = "16, 32, 32"
    train.batch_size.value = 1
    train.steps.value = 2
    train.preview_every.value = 0
    train.output_dir.value = output
    train.train_button.click()
    wait(lambda: not train.running and train.last_result is not None, "the training run")
    result["steps"] = train.last_result.global_step
# in thread mode a step timing still running in a thread of this process would be cut off at exit
wait(lambda: not model.probing and not dock.train_panel.probing, "the step timings")
result["heavy"], result["errors"] = heavy(), errors
viewer.close()
print("RESULT " + json.dumps(result))
'''


def _torch_free_session(checkpoint: Path, output: Path, mode: str, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", TORCH_FREE_SESSION, str(checkpoint), str(output), mode],
                          capture_output=True, text=True, timeout=1200, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout[-3000:], done.stderr[-3000:])
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.gui
def test_count_segment_and_training_leave_napari_without_torch(checkpoint, tmp_path):
    """A fresh napari process (this one has imported torch): dock, count and step time, Segment with
    a checkpoint, a two-step training run -- and still no torch, Lightning or MONAI in it."""
    env = {key: value for key, value in os.environ.items() if key != "NAPARI_CONNECTOMICS_TRAINING"}
    result = _torch_free_session(checkpoint, tmp_path / "runs", "all", env)
    assert result["heavy"] == [] and result["errors"] == [], result
    assert result["count"] and result["step"] and result["objects"] > 0 and result["steps"] == 2, result
    # the check can fail: with the engine in napari's threads, the count alone loads torch
    threads = _torch_free_session(checkpoint, tmp_path / "runs", "count",
                                  {**env, "NAPARI_CONNECTOMICS_TRAINING": "thread"})
    assert "torch" in threads["heavy"] and threads["count"] == result["count"]

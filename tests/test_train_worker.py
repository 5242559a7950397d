"""GUI training in a worker process (real viewers): it trains in another process, survives the
worker being killed, leaves no process behind a closed viewer, and hears about repainted labels."""

from __future__ import annotations

import os
import signal

import numpy as np
from conftest import LONG_RUN, WAIT_MS, workers
import pytest

napari = pytest.importorskip("napari")

from napari_connectomics.widgets.train_worker import ERROR_MEMORY, ERROR_USER  # noqa: E402
from napari_connectomics.widgets import notify  # noqa: E402
from napari_connectomics.widgets.errors import UserError  # noqa: E402
from napari_connectomics.widgets.session import session_for  # noqa: E402
from napari_connectomics.widgets.worker_client import worker_error  # noqa: E402

pytestmark = pytest.mark.gui


def test_the_first_train_runs_in_the_worker_process(train_setup, qtbot, errors):
    viewer, panel, painted = train_setup
    assert panel.train_in_process and panel.worker.alive  # started when the panel opened
    panel.steps.value = 3
    panel.train_button.click()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert not errors, errors
    result = panel.last_result
    assert result.global_step == 3 and result.last_checkpoint.is_file()
    assert panel.loss_plot.points("train")
    assert result.pid == panel.worker_pid != os.getpid()  # trained in another process
    assert session_for(viewer).checkpoint in (str(result.last_checkpoint), str(result.best_checkpoint))


def test_a_killed_worker_is_one_notification_and_the_next_train_works(train_setup, qtbot, errors):
    viewer, panel, painted = train_setup
    panel.steps.value = LONG_RUN
    panel.train_button.click()
    qtbot.waitUntil(lambda: len(panel.loss_plot.points("train")) >= 1, timeout=WAIT_MS)
    os.kill(panel.worker_pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert len(errors) == 1 and "killed" in errors[0] and "\n" not in errors[0], errors
    assert panel.train_button.isEnabled() and not panel.stop_button.isEnabled()
    assert session_for(viewer).busy == ""
    viewer.add_points([[1, 2, 3]])  # the viewer keeps working
    viewer.dims.set_current_step(0, 5)
    killed = panel.worker_pid
    panel.steps.value = 2
    panel.train_button.click()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert len(errors) == 1, errors
    assert panel.last_result.global_step == 2 and panel.worker_pid not in (killed, os.getpid())


def test_closing_the_viewer_during_a_run_leaves_no_process(train_setup, qtbot):
    viewer, panel, painted = train_setup
    panel.steps.value = LONG_RUN
    panel.train_button.click()
    qtbot.waitUntil(lambda: len(panel.loss_plot.points("train")) >= 1, timeout=WAIT_MS)
    pid = panel.worker_pid
    assert pid in [p.pid for p in workers()]
    viewer.close()
    # this viewer's worker (workers of earlier tests' viewers end with those viewers' own teardown)
    qtbot.waitUntil(lambda: pid not in [p.pid for p in workers()], timeout=30_000)


def test_annotations_edited_during_a_run_reach_the_worker(train_setup, qtbot, notices):
    viewer, panel, painted = train_setup
    panel.steps.value = LONG_RUN
    panel.train_button.click()
    qtbot.waitUntil(lambda: panel.worker_annotated is not None, timeout=WAIT_MS)
    before = panel.worker_annotated
    assert before == int(np.count_nonzero(painted.data))
    painted.brush_size = 10
    painted.paint((20, 100, 100), 2)  # a new section painted while the network trains
    qtbot.waitUntil(lambda: panel.worker_annotated != before, timeout=60_000)
    assert panel.worker_annotated == int(np.count_nonzero(painted.data)) > before
    # an object painted on a section without background: the worker says so, once
    qtbot.waitUntil(lambda: any("section 20 has objects painted but no background" in m for _, m in notices),
                    timeout=WAIT_MS)
    # ... and the running training swaps them in between two steps (same run, same optimizer)
    qtbot.waitUntil(lambda: panel.worker_labels_applied >= 1, timeout=60_000)
    assert panel.running
    panel.stop_training()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert panel.last_result.stopped
    # labels painted between Stop and Continue train from the continued run's first step
    painted.paint((24, 60, 60), 1)
    assert panel.continue_training()
    qtbot.waitUntil(lambda: panel.worker_labels_applied >= 1 and panel.worker_annotated == int(
        np.count_nonzero(painted.data)), timeout=WAIT_MS)
    assert sum("objects painted but no background" in m for _, m in notices) == 1  # background on 24: none new
    panel.stop_training()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)


def test_worker_errors_become_the_panel_errors():
    assert isinstance(worker_error(ERROR_USER, "pick a layer"), UserError)
    out_of_memory = notify.describe_error(worker_error(ERROR_MEMORY, "CUDA out of memory"), "Training")
    assert "out of memory" in out_of_memory and "\n" not in out_of_memory
    assert notify.describe_error(worker_error("other", "ZeroDivisionError: x"), "Training") == (
        "Training failed: ZeroDivisionError: x")

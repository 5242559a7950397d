"""Tests that need a display (a real napari viewer, Qt) are marked `gui` here, and skipped with the
command that fixes it when this machine can give them none: never a Qt core dump."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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


# --- the real command line in a subprocess (tests/test_cli_predict.py, test_predict_resume.py)

CLI_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli_command(*args: str) -> list[str]:
    """`napari-connectomics ARGS` as a subprocess command line (this interpreter, this checkout)."""
    return [sys.executable, "-m", "napari_connectomics", *args]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `napari-connectomics ARGS` to completion; stdout and stderr captured as text."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=CLI_ENV)


# --- the Train panel in a real viewer (tests/test_train_panel.py, test_train_worker.py, test_gui_state_sweep.py)

TINY_MODEL = ["model.architecture=monai_basic_unet3d", "model.filters=[4,4,8,16,32,4]", "training.val_patches=2"]
WAIT_MS = 240_000  # a run of a few steps of the tiny network, on a busy 2-core machine
LONG_RUN = 2000  # steps: a run that is still training whenever a test acts on it (tests stop it)


def tiny(panel, tmp_path, steps=4, preview_every=0) -> None:
    """Train-panel knobs for a fast run of the tiny network."""
    panel.patch_size.value = "16, 32, 32"
    panel.batch_size.value = 1
    panel.steps.value = steps
    panel.preview_every.value = preview_every
    panel.output_dir.value = str(tmp_path / "runs")


def stop_run(panel, timeout: float = 120) -> None:
    """End a panel's run, if any (never leave a training behind a test)."""
    if panel.job is None or not panel.running:
        return
    try:
        panel.stop_training()
    except RuntimeError:  # the viewer (and the panel) were closed: the worker ended with it
        pass
    panel.wait(timeout)


@pytest.fixture
def errors(monkeypatch):
    """Every error notification the panels show (notify_error goes through notify.show_error)."""
    from napari_connectomics.widgets import notify

    shown: list[str] = []
    monkeypatch.setattr(notify, "show_error", lambda message, *args, **kwargs: shown.append(str(message)))
    return shown


@pytest.fixture
def train_setup(make_napari_viewer, tmp_path):
    """A viewer with the synthetic sample, a sparse annotation 'painted' on it, and the Train panel
    opened through the plugin manifest, set for a 4-step run of the tiny network: (viewer, panel,
    painted)."""
    from napari_connectomics.config import load_config
    from napari_connectomics.widgets.session import session_for

    viewer = make_napari_viewer()
    viewer.open_sample("napari-connectomics", "synthetic_em")
    session_for(viewer).config = load_config(overrides=TINY_MODEL)
    painted = paint_sparse(viewer)
    _, panel = viewer.window.add_plugin_dock_widget("napari-connectomics", "Train")
    tiny(panel, tmp_path)
    yield viewer, panel, painted
    stop_run(panel)


@pytest.fixture
def notices():
    """Every napari notification shown during the test: (severity, message)."""
    from napari.utils.notifications import notification_manager

    shown: list[tuple[str, str]] = []

    def record(event):
        notification = getattr(event, "value", event)
        shown.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield shown
    notification_manager.notification_ready.disconnect(record)


def workers() -> list:
    """Live engine worker processes started by this test process (psutil.Process objects)."""
    import psutil

    from napari_connectomics.widgets.worker_client import WORKER_MODULE

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and WORKER_MODULE in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


# --- BioImage.IO packages offline (tests/test_bioimageio.py, test_segment_zoo.py)


@pytest.fixture(scope="module")
def offline_bioimageio(tmp_path_factory):
    """bioimageio's cache in a fresh writable folder, and every network connection refused and
    recorded (in this process): the tests must pass with no network at all. A module of
    BioImage.IO tests uses it for all its tests (an autouse module fixture requesting it); engine
    workers and CLI subprocesses started meanwhile inherit the cache folder."""
    cache = tmp_path_factory.mktemp("bioimageio-cache")
    from bioimageio.spec import settings

    previous_env, previous_path = os.environ.get("BIOIMAGEIO_CACHE_PATH"), settings.cache_path
    os.environ["BIOIMAGEIO_CACHE_PATH"] = str(cache)
    settings.cache_path = cache
    attempts: list = []
    connect = socket.socket.connect

    def refuse(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError("network disabled in tests")
        return connect(self, address)

    socket.socket.connect = refuse
    try:
        yield attempts
    finally:
        socket.socket.connect = connect
        settings.cache_path = previous_path
        if previous_env is None:
            os.environ.pop("BIOIMAGEIO_CACHE_PATH", None)
        else:
            os.environ["BIOIMAGEIO_CACHE_PATH"] = previous_env
    assert attempts == [], f"bioimageio tried to reach the network: {attempts}"

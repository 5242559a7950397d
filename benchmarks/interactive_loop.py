"""The interactive loop a new user meets: scribble, press Train, watch, press Segment.

A scripted user in a real napari viewer (run under Xvfb) drives the "Connectomics" dock widget by
its visible buttons on a Lucchi crop, with the panels' defaults, and the same scribbles train an
ilastik-style random-forest pixel classifier, the anchor a user would otherwise pick:

    xvfb-run -a -s "-screen 0 1700x1200x24" python benchmarks/interactive_loop.py --json /tmp/loop.json

Data. ``../shared/data/lucchi/lucchi_train.h5`` (``image`` uint8, ``label`` 0/1, z-y-x), crop
z 40:72, y 200:456, x 300:556 (32 x 256 x 256). Scribbles in the plugin's sparse convention
(0 = not annotated, 1 = background, 2 = mitochondria): on crop slices 4, 16 and 28 every
mitochondrion pixel is painted 2, and 30 % of each of those slices' background pixels are painted
1 -- as brush dabs, not salt noise: disks of radius 4 px centred on seeded random (seed 0)
still-unpainted background pixels, clipped to the background (a careful user does not paint over
a mitochondrion), stamped until 30 % of the slice's background is covered. Everything else is 0.

``--default-run`` replaces the timed loop by a new user's first run: Train with every default (the
panel's steps too), wait for the run to end, Segment; its seconds, step, checkpoint and IoU.

GUI (``--skip-gui`` leaves it out). ``napari.Viewer()`` with the crop as an Image layer
("lucchi crop", scale 1) and the scribbles as a Labels layer ("scribbles"), the dock opened with
``add_plugin_dock_widget("napari-connectomics", "Connectomics")``. What the script sets in the
Train panel, as a user must: the image/labels pair, the number of steps (raised so the run cannot
end before the training budget; the panel's default is printed), and the output folder (a
temporary folder instead of ``~/napari-connectomics/runs``; it does not change the figures).
Everything else keeps the panels' defaults (architecture, patch, batch, learning rate,
validation, preview every N steps; Segment's window, overlap, threshold, post-processing).
The Segment button refuses nothing while a run trains, but it needs a checkpoint, and the session
gets one only when a run ends; so at each checkpoint of training time (60, 120 and 300 s, scaled
to ``--seconds``) the user presses Stop, waits for the run to end, presses Segment (whole volume,
the checkpoint the panel offers: the best held-out IoU, else the last), waits for ``lucchi crop
segmentation``, and presses Continue. The training clock is the time the training thread ran
(pressing Train/Continue -> the run has ended), summed over the runs: it includes each run's
start (imports, the first time; Lightning set-up and restoring the checkpoint on Continue) and the
wait after Stop (the step in flight, validation, saving checkpoints); Stop is pressed when the
clock reaches a checkpoint, so the model is scored at the clock value when its run ended
(reported beside the Stop time). Segmenting is outside the clock and reported apart.
IoU is foreground IoU (segmentation labels > 0 against the expert label) over the whole crop;
the IoU over the 29 unpainted slices alone is given beside it.

Measured: seconds on the training clock from pressing Train to the first loss point and to the
first ``<image> preview`` layer; IoU and step at each checkpoint; the longest main-thread stall (a 10 ms
``QTimer``: largest gap between two ticks minus 10 ms) over the whole session, from opening the
dock through the last segmentation, and per phase (the script's own IoU computation is excluded);
the process RSS before the first Train and after the last run (training and segmentation) ended.

Random forest (``--skip-forest`` leaves it out), run after the GUI in the same process: ilastik's
filters -- Gaussian smoothing, Laplacian of Gaussian, Gaussian gradient magnitude, difference of
Gaussians (sigma - 0.66 sigma, as ilastik), structure-tensor eigenvalues (inner scale sigma, outer
sigma / 2, as ilastik) and Hessian-of-Gaussian eigenvalues -- every filter at all seven of
ilastik's scales 0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0 (ilastik's default selection is a subset),
in 3D on the crop (scipy.ndimage and skimage.feature, float32): 70 features per voxel.
``RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=0)`` is fitted on the painted
voxels and predicts the whole crop; feature, fit and predict seconds and the same IoUs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lucchi" / "lucchi_train.h5"
CROP = (slice(40, 72), slice(200, 456), slice(300, 556))
PAINTED_SLICES = (4, 16, 28)
BACKGROUND_SHARE = 0.30
BRUSH_RADIUS = 4
SEED = 0
SIGMAS = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
CHECKPOINTS = (60.0, 120.0, 300.0)  # seconds of training, for --seconds 300
TICK_MS = 10
IMAGE_NAME = "lucchi crop"
LABELS_NAME = "scribbles"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="total training budget; IoU checkpoints at 60/120/300 s scaled to it")
    parser.add_argument("--steps", type=int, default=100_000,
                        help="the Train panel's steps, raised so the run outlasts the budget")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--skip-forest", action="store_true", help="leave out the random forest")
    parser.add_argument("--stall-stacks", action="store_true",
                        help="sample the GUI thread's stack during stalls and print where the longest ones were")
    parser.add_argument("--skip-gui", action="store_true", help="leave out the napari session")
    parser.add_argument("--default-run", action="store_true",
                        help="instead of the timed loop: a first run with every default (the panel's steps "
                             "too), waited for, then Segment")
    parser.add_argument("--data", default=str(DATA), help="the Lucchi HDF5 file")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------
# Data and scribbles
# ------------------------------------------------------------------------------------------


def load_crop(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        image = np.asarray(f["image"][CROP], dtype=np.uint8)
        label = np.asarray(f["label"][CROP]) > 0
    return image, label


def paint_scribbles(label: np.ndarray, seed: int = SEED) -> np.ndarray:
    """Sparse scribbles: mitochondria 2 fully, 30 % of the background 1 as radius-4 brush dabs."""
    rng = np.random.default_rng(seed)
    painted = np.zeros(label.shape, np.uint8)
    r = BRUSH_RADIUS
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = yy ** 2 + xx ** 2 <= r ** 2
    for z in PAINTED_SLICES:
        fg = label[z]
        background = ~fg
        target = int(round(BACKGROUND_SHARE * background.sum()))
        dabs = np.zeros(fg.shape, bool)
        covered = 0
        height, width = fg.shape
        while covered < target:
            free = np.flatnonzero(background & ~dabs)
            for index in rng.choice(free, size=min(len(free), 64), replace=False):
                cy, cx = divmod(int(index), width)
                y0, y1 = max(cy - r, 0), min(cy + r + 1, height)
                x0, x1 = max(cx - r, 0), min(cx + r + 1, width)
                stamp = disk[y0 - cy + r:y1 - cy + r, x0 - cx + r:x1 - cx + r]
                region = dabs[y0:y1, x0:x1]
                new = stamp & background[y0:y1, x0:x1] & ~region
                region |= new
                covered += int(new.sum())
                if covered >= target:
                    break
        painted[z][dabs] = 1
        painted[z][fg] = 2
    return painted


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(prediction, truth).sum()
    return float(np.logical_and(prediction, truth).sum() / union) if union else 1.0


def scores(foreground: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    unpainted = np.ones(truth.shape[0], bool)
    unpainted[list(PAINTED_SLICES)] = False
    return {"iou": iou(foreground, truth), "iou_unpainted": iou(foreground[unpainted], truth[unpainted])}


def git_head() -> str | None:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" (with uncommitted changes)" if dirty else "")


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------
# Random forest anchor
# ------------------------------------------------------------------------------------------


def ilastik_features(image: np.ndarray) -> np.ndarray:
    """(z, y, x, 70) float32: six filter families at seven scales, 3D."""
    from scipy import ndimage as ndi
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals, structure_tensor_eigenvalues

    data = image.astype(np.float32)
    channels: list[np.ndarray] = []
    for sigma in SIGMAS:
        smooth = ndi.gaussian_filter(data, sigma, mode="reflect")
        channels.append(smooth)
        channels.append(ndi.gaussian_laplace(data, sigma, mode="reflect"))
        channels.append(ndi.gaussian_gradient_magnitude(data, sigma, mode="reflect"))
        channels.append(smooth - ndi.gaussian_filter(data, 0.66 * sigma, mode="reflect"))
        # structure tensor: gradient at the inner scale, products smoothed at the outer scale
        gradient = [ndi.gaussian_filter(data, sigma, order=[int(a == b) for b in range(3)], mode="reflect")
                    for a in range(3)]
        elems = [ndi.gaussian_filter(gradient[a] * gradient[b], sigma / 2, mode="reflect")
                 for a in range(3) for b in range(a, 3)]
        del gradient
        channels.extend(np.asarray(structure_tensor_eigenvalues(elems), dtype=np.float32))
        del elems
        hessian = hessian_matrix(data, sigma=sigma, mode="reflect", order="rc", use_gaussian_derivatives=True)
        channels.extend(np.asarray(hessian_matrix_eigvals(hessian), dtype=np.float32))
        del hessian
    return np.stack([c.astype(np.float32, copy=False) for c in channels], axis=-1)


def run_forest(image: np.ndarray, truth: np.ndarray, painted: np.ndarray) -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    features = ilastik_features(image)
    t1 = time.perf_counter()
    annotated = painted > 0
    forest = RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=0)
    forest.fit(features[annotated], painted[annotated])
    t2 = time.perf_counter()
    flat = features.reshape(-1, features.shape[-1])
    foreground_class = list(forest.classes_).index(2)
    chunk = 1 << 18
    probability = np.empty(flat.shape[0], np.float32)
    for start in range(0, flat.shape[0], chunk):
        probability[start:start + chunk] = forest.predict_proba(flat[start:start + chunk])[:, foreground_class]
    t3 = time.perf_counter()
    foreground = probability.reshape(truth.shape) > 0.5
    return {"features": int(features.shape[-1]), "training_voxels": int(annotated.sum()),
            "feature_s": t1 - t0, "fit_s": t2 - t1, "predict_s": t3 - t2, "total_s": t3 - t0,
            **scores(foreground, truth)}


# ------------------------------------------------------------------------------------------
# GUI: the scripted user
# ------------------------------------------------------------------------------------------


class StallMonitor:
    """A 10 ms QTimer on the GUI thread; the longest gap between ticks (minus 10 ms), per phase."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.phase = "start"
        self.last = self.phase_started = time.perf_counter()
        self.worst: list[tuple[float, str, float]] = []  # (stall ms, phase, seconds into the phase)
        self.max_by_phase: dict[str, float] = {}
        self.gaps: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)

    def start(self, phase: str) -> None:
        self.phase = phase
        self.last = self.phase_started = time.perf_counter()
        self.timer.start()

    def tick(self) -> None:
        now = time.perf_counter()
        stall = max(0.0, (now - self.last) * 1000.0 - TICK_MS)
        self.gaps.append(stall)
        if stall > self.max_by_phase.get(self.phase, -1.0):
            self.max_by_phase[self.phase] = stall
        if stall >= 100.0:
            self.worst.append((stall, self.phase, self.last - self.phase_started))
        self.last = now

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_started = time.perf_counter()

    def excluded(self, work: Callable[[], Any]) -> Any:
        """Run the script's own work (not the plugin's) without counting it as a stall."""
        result = work()
        self.last = time.perf_counter()
        return result

    def stop(self) -> None:
        self.timer.stop()

    @property
    def max_ms(self) -> float:
        return max(self.max_by_phase.values(), default=0.0)


class StallSampler:
    """Where the GUI thread is during a stall: a thread samples its Python stack every few ms
    while the monitor's timer is late, and keeps the samples of each stall of 100 ms or more.

    Python frames only: a sample lands between two C calls (Qt, OpenGL) that hold the GIL, so it
    names the Python code that made them.
    """

    def __init__(self, monitor: StallMonitor, every_ms: float = 5.0, late_ms: float = 40.0) -> None:
        import threading

        self.monitor = monitor
        self.every = every_ms / 1000.0
        self.late = late_ms / 1000.0
        self.main_id = threading.main_thread().ident
        self.stalls: list[tuple[float, str, list[str]]] = []  # (ms, phase, most frequent stack)
        self._samples: list[tuple[str, ...]] = []
        self._since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from collections import Counter

        while not self._stop.wait(self.every):
            last = self.monitor.last
            if time.perf_counter() - last > self.late:
                frame = sys._current_frames().get(self.main_id)
                stack = []
                while frame is not None and len(stack) < 40:
                    code = frame.f_code
                    stack.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
                    frame = frame.f_back
                self._since = last
                self._samples.append(tuple(stack))
            elif self._since is not None:  # the stall ended
                ms = (last - self._since) * 1000.0
                if self._samples and ms >= 100.0:
                    frames = Counter(f for sample in self._samples for f in set(sample))
                    common = [f for f, n in frames.most_common() if n >= len(self._samples) / 3]
                    self.stalls.append((ms, self.monitor.phase, common[:25]))
                self._samples, self._since = [], None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)

    def report(self) -> None:
        for ms, phase, frames in sorted(self.stalls, reverse=True)[:8]:
            print(f"stall of ~{ms:.0f} ms in {phase!r}; frames in a third or more of its samples:")
            for frame in frames:
                print(f"    {frame}")


def wait_until(condition: Callable[[], bool], timeout: float, poll_ms: int = 20) -> bool:
    """Run the Qt event loop until condition() holds (polled every poll_ms) or timeout seconds."""
    from qtpy.QtCore import QEventLoop, QTimer

    if condition():
        return True
    loop = QEventLoop()
    deadline = time.perf_counter() + timeout
    poll = QTimer()
    poll.setInterval(poll_ms)
    poll.timeout.connect(lambda: loop.quit() if condition() or time.perf_counter() > deadline else None)
    poll.start()
    loop.exec_()
    poll.stop()
    return condition()


def open_dock_on_crop(image: np.ndarray, painted: np.ndarray, monitor: StallMonitor) -> tuple[Any, Any, Any, Any]:
    """A viewer with the crop and its scribbles, the dock opened (the monitor started just before)
    and the Train panel's pair chosen, as a user does: (viewer, app, dock, image layer)."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer()
    app = QApplication.instance()
    layer = viewer.add_image(image, name=IMAGE_NAME)
    viewer.add_labels(painted, name=LABELS_NAME)
    app.processEvents()
    monitor.start("open dock")
    _, dock = viewer.window.add_plugin_dock_widget("napari-connectomics", "Connectomics")
    wait_until(lambda: False, 1.0)  # a user looks at the dock for a moment
    dock.tabs.setCurrentIndex(1)
    train = dock.train_panel
    train.pair_rows[0].image_combo.setCurrentText(IMAGE_NAME)
    train.pair_rows[0].labels_combo.setCurrentText(LABELS_NAME)
    return viewer, app, dock, layer


def press_segment(viewer: Any, dock: Any, layer: Any) -> None:
    """On the Segment tab, segment the whole crop with the offered checkpoint and wait for the
    segmentation layer (and its post-processing)."""
    segment = dock.segment_panel
    seg_name = IMAGE_NAME + " segmentation"
    dock.tabs.setCurrentIndex(2)
    segment.image_combo.value = layer
    runs_before, result_before = segment.predict_runs, segment.labels_result
    segment.segment_button.native.click()

    def segmented() -> bool:
        post = segment.post_job
        return (segment.predict_runs > runs_before and not segment.running
                and (post is None or not post.running) and segment.labels_result is not None
                and segment.labels_result is not result_before
                and seg_name in viewer.layers)

    if not wait_until(segmented, timeout=1800):
        raise SystemExit(f"Segment produced no '{seg_name}' layer: {segment.status_label.value}")


def run_default(image: np.ndarray, truth: np.ndarray, painted: np.ndarray, output: str) -> dict[str, Any]:
    """A new user's first run: Train with every default (the panel's steps too), wait for it to
    finish, Segment with the checkpoint offered."""
    monitor = StallMonitor()
    viewer, _, dock, layer = open_dock_on_crop(image, painted, monitor)
    train = dock.train_panel
    train.output_dir.value = output
    steps = int(train.steps.value)
    monitor.set_phase("training")
    pressed = time.perf_counter()
    train.train_button.click()
    if not train.running:
        raise SystemExit(f"the Train panel refused to start: {train.status.text()}")
    wait_until(lambda: not train.running, timeout=3600)
    trained = time.perf_counter() - pressed
    status = train.status.text()
    monitor.set_phase("segment")
    seg_pressed = time.perf_counter()
    press_segment(viewer, dock, layer)
    seg_s = time.perf_counter() - seg_pressed
    seg = np.asarray(viewer.layers[IMAGE_NAME + " segmentation"].data) > 0
    figures = monitor.excluded(lambda: scores(seg, truth))
    monitor.stop()
    run = {"default_steps": steps, "step": int(train.last_result.global_step), "training_s": trained,
           "train_status": status, "checkpoint": Path(str(dock.segment_panel.checkpoint_edit.value)).name,
           "segment_s": seg_s, "max_stall_ms": monitor.max_ms, **figures}
    viewer.close()
    return run


def run_gui(image: np.ndarray, truth: np.ndarray, painted: np.ndarray, budget: float, steps: int,
            output: str, stall_stacks: bool = False) -> dict[str, Any]:
    from napari_connectomics.widgets.session import session_for

    checkpoints = [c * budget / CHECKPOINTS[-1] for c in CHECKPOINTS]
    monitor = StallMonitor()
    sampler = StallSampler(monitor) if stall_stacks else None
    viewer, app, dock, layer = open_dock_on_crop(image, painted, monitor)
    train = dock.train_panel
    segment = dock.segment_panel
    model = dock.model_panel
    default_steps = int(train.steps.value)
    train.steps.value = steps
    train.output_dir.value = output
    cfg = session_for(viewer).config
    defaults = {
        "architecture": str(model.architecture.value) if hasattr(model, "architecture") else str(cfg.model.architecture),
        "patch_size": str(train.patch_size.value), "batch_size": int(train.batch_size.value),
        "learning_rate": float(train.lr.value), "device": str(train.device.value),
        "label_mode": str(train.label_mode.value), "task": str(train.task.value),
        "validation": str(train.validation.value), "val_fraction": float(train.val_fraction.value),
        "preview_every": int(train.preview_every.value), "default_steps": default_steps, "steps_set": steps,
        "segment_overlap": float(segment.predict_form.values()["overlap"]),
        "segment_window": str(segment.predict_form.values()["window_size"]),
        "segment_post": str(segment.post_settings()),
    }
    app.processEvents()
    rss_before = rss_mb()
    preview_name = IMAGE_NAME + " preview"
    seg_name = IMAGE_NAME + " segmentation"

    trained = 0.0  # training clock: seconds the training thread ran (press Train/Continue -> run ended)
    outside = {"stop_wait_s": 0.0, "segment_s": 0.0}
    first: dict[str, float | None] = {"loss": None, "preview": None}
    rows: list[dict[str, Any]] = []
    monitor.set_phase("run 1 (first Train)")
    pressed = time.perf_counter()
    train.train_button.click()
    if not train.running:
        raise SystemExit(f"the Train panel refused to start: {train.status.text()}")
    for index, checkpoint in enumerate(checkpoints):
        def watch() -> bool:
            clock = trained + time.perf_counter() - pressed
            if first["loss"] is None and train.loss_plot.points("train"):
                first["loss"] = clock
            if first["preview"] is None and preview_name in viewer.layers:
                first["preview"] = clock
            return not train.running or clock >= checkpoint

        wait_until(watch, timeout=checkpoint + 3600)
        if not train.running:
            raise SystemExit(f"training ended before {checkpoint:.0f} s: {train.status.text()}")
        stop_pressed = time.perf_counter()
        stop_clock = trained + stop_pressed - pressed
        monitor.set_phase(f"stop at {checkpoint:.0f} s")
        train.stop_button.click()
        wait_until(lambda: watch() and not train.running, timeout=1800)
        stopped = time.perf_counter()
        trained += stopped - pressed
        outside["stop_wait_s"] += stopped - stop_pressed
        step = int(train.last_result.global_step) if train.last_result is not None else -1
        losses = train.loss_plot.points("train")
        val = train.loss_plot.points("val")

        monitor.set_phase(f"segment at {checkpoint:.0f} s")
        seg_pressed = time.perf_counter()
        press_segment(viewer, dock, layer)
        seg_done = time.perf_counter()
        outside["segment_s"] += seg_done - seg_pressed
        figures = monitor.excluded(lambda: scores(np.asarray(viewer.layers[seg_name].data) > 0, truth))
        rows.append({"checkpoint_s": checkpoint, "stop_pressed_s": stop_clock, "training_s": trained,
                     "step": step, "train_loss": losses[-1][1] if losses else None,
                     "val_loss": val[-1][1] if val else None,
                     "checkpoint": Path(str(segment.checkpoint_edit.value)).name,
                     "stop_wait_s": stopped - stop_pressed, "segment_s": seg_done - seg_pressed, **figures})
        print(f"  Stop at {stop_clock:6.1f} s, ended at {trained:6.1f} s of training, step {step}: "
              f"IoU {figures['iou']:.4f} (unpainted {figures['iou_unpainted']:.4f}) with "
              f"{rows[-1]['checkpoint']}; stop wait {stopped - stop_pressed:.1f} s, "
              f"segment {seg_done - seg_pressed:.1f} s", flush=True)
        if index + 1 < len(checkpoints):
            dock.tabs.setCurrentIndex(1)
            monitor.set_phase(f"run {index + 2} (Continue)")
            pressed = time.perf_counter()
            train.continue_button.click()
            if not train.running:
                raise SystemExit(f"Continue refused: {train.status.text()}")
    monitor.set_phase("after the last run")
    wait_until(lambda: False, 1.0)
    rss_after = rss_mb()
    engine_loaded = sorted(name for name in ("torch", "lightning", "monai") if name in sys.modules)
    monitor.stop()
    if sampler is not None:
        sampler.stop()
        sampler.report()
    viewer.close()
    return {"defaults": defaults, "first_loss_s": first["loss"], "first_preview_s": first["preview"],
            "checkpoints": rows, "outside_training_s": outside, "max_stall_ms": monitor.max_ms,
            "stall_by_phase_ms": monitor.max_by_phase,
            "stalls_over_100ms": [{"ms": ms, "phase": phase, "s_into_phase": at}
                                  for ms, phase, at in sorted(monitor.worst, reverse=True)],
            "stall_p99_ms": float(np.percentile(monitor.gaps, 99)) if monitor.gaps else None,
            "rss_before_mb": rss_before, "rss_after_mb": rss_after, "engine_imported_in_napari": engine_loaded,
            "segment_mode": "Stop, Segment (whole volume, offered checkpoint), Continue at each checkpoint"}


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(result: dict[str, Any]) -> None:
    crop = result["crop"]
    print()
    print(f"Lucchi crop {crop['shape']} (z 40:72, y 200:456, x 300:556), painted slices {crop['painted_slices']}: "
          f"{crop['mitochondria_px']} mitochondria px (2), {crop['background_px']} background px (1) "
          f"= {crop['background_share']:.1%} of those slices' background, as radius-{BRUSH_RADIUS} dabs")
    gui = result.get("gui")
    if gui:
        d = gui["defaults"]
        print()
        print(f"napari session, panels' defaults: {d['architecture']}, patch {d['patch_size']}, batch "
              f"{d['batch_size']}, lr {d['learning_rate']:g}, device {d['device']}, {d['label_mode']}/{d['task']}, "
              f"validation {d['validation']} {d['val_fraction']:g}, preview every {d['preview_every']}; "
              f"steps raised from the default {d['default_steps']} to {d['steps_set']} so the run outlasts "
              f"the budget. Segment: window {d['segment_window'] or 'checkpoint default'}, overlap "
              f"{d['segment_overlap']:g}, {d['segment_post']}.")
        print(f"IoU checkpoints: {gui['segment_mode']}.")
        print()
        print("| measure | value |")
        print("| --- | ---: |")
        print(f"| Train pressed -> first loss point (training clock) | {fmt(gui['first_loss_s'])} s |")
        print(f"| Train pressed -> first preview layer (training clock) | {fmt(gui['first_preview_s'])} s |")
        for row in gui["checkpoints"]:
            print(f"| foreground IoU, Stop at {row['stop_pressed_s']:.0f} s, run ended at {row['training_s']:.0f} s "
                  f"(step {row['step']}) | **{row['iou']:.4f}** (unpainted slices {row['iou_unpainted']:.4f}) |")
        out = gui["outside_training_s"]
        print(f"| waiting for Stop (inside the training clock) / segmenting (outside it) | "
              f"{out['stop_wait_s']:.1f} s / {out['segment_s']:.1f} s |")
        print(f"| longest main-thread stall, whole session | {gui['max_stall_ms']:.0f} ms |")
        print(f"| 99th percentile of the stalls | {fmt(gui['stall_p99_ms'], '.0f')} ms |")
        print(f"| RSS before the first Train / after the last run | {gui['rss_before_mb']:.0f} MiB / "
              f"{gui['rss_after_mb']:.0f} MiB |")
        print(f"| torch / Lightning / MONAI imported into napari's process | "
              f"{', '.join(gui['engine_imported_in_napari']) or 'none'} |")
        print()
        print("| phase | longest stall (ms) |")
        print("| --- | ---: |")
        for phase, ms in gui["stall_by_phase_ms"].items():
            print(f"| {phase} | {ms:.0f} |")
        worst = gui["stalls_over_100ms"]
        print()
        print(f"{len(worst)} stalls of 100 ms or more; the longest: " + "; ".join(
            f"{w['ms']:.0f} ms in '{w['phase']}' at {w['s_into_phase']:.1f} s" for w in worst[:6]))
        print()
        print("| Stop at s | ended at s | step | train loss | val loss | segmented with | stop wait s | segment s "
              "| IoU | IoU unpainted |")
        print("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
        for row in gui["checkpoints"]:
            print(f"| {row['stop_pressed_s']:.1f} | {row['training_s']:.1f} | {row['step']} | {fmt(row['train_loss'], '.4f')} | "
                  f"{fmt(row['val_loss'], '.4f')} | {row['checkpoint']} | {row['stop_wait_s']:.1f} | "
                  f"{row['segment_s']:.1f} | {row['iou']:.4f} | {row['iou_unpainted']:.4f} |")
    first = result.get("default_run")
    if first:
        print()
        print(f"A first run with every default ({first['default_steps']} steps), waited for, then Segment "
              f"(whole crop, the checkpoint offered):")
        print()
        print("| training s | step | checkpoint | segment s | IoU | IoU unpainted | longest stall |")
        print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
        print(f"| {first['training_s']:.1f} | {first['step']} | {first['checkpoint']} | {first['segment_s']:.1f} | "
              f"**{first['iou']:.4f}** | {first['iou_unpainted']:.4f} | {first['max_stall_ms']:.0f} ms |")
        print(f"Train panel: {first['train_status']}")
    forest = result.get("forest")
    if forest:
        print()
        print(f"Random forest (ilastik filters, {forest['features']} features at sigmas "
              f"{', '.join(f'{s:g}' for s in SIGMAS)}; 100 trees, n_jobs 2; "
              f"{forest['training_voxels']} painted voxels):")
        print()
        print("| features s | fit s | predict s | total s | IoU | IoU unpainted |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        print(f"| {forest['feature_s']:.1f} | {forest['fit_s']:.1f} | {forest['predict_s']:.1f} | "
              f"{forest['total_s']:.1f} | **{forest['iou']:.4f}** | {forest['iou_unpainted']:.4f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = Path(args.data).resolve()
    if not data.is_file():
        print(f"interactive_loop: {data} is missing (the Lucchi training stack); nothing measured")
        return 1
    if not args.skip_forest and importlib.util.find_spec("sklearn") is None:
        print("interactive_loop: the random-forest anchor needs scikit-learn: pip install -e '.[bench]', "
              "or pass --skip-forest")
        return 1
    image, truth = load_crop(data)
    painted = paint_scribbles(truth)
    background = sum(int((~truth[z]).sum()) for z in PAINTED_SLICES)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_head(), "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()), "seconds": args.seconds,
        "crop": {"shape": list(image.shape), "painted_slices": list(PAINTED_SLICES),
                 "mitochondria_px": int((painted == 2).sum()), "background_px": int((painted == 1).sum()),
                 "background_share": float((painted == 1).sum() / background)},
    }
    print(f"commit {result['commit']}, cores {os.cpu_count()}, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    if args.default_run and not args.skip_gui:
        result["default_run"] = run_default(image, truth, painted, tempfile.mkdtemp(prefix="interactive_loop_"))
    elif not args.skip_gui:
        output = tempfile.mkdtemp(prefix="interactive_loop_")
        print(f"napari session: {args.seconds:g} s of training, runs under {output}", flush=True)
        result["gui"] = run_gui(image, truth, painted, args.seconds, args.steps, output, args.stall_stacks)
    if not args.skip_forest:
        print("random forest ...", flush=True)
        result["forest"] = run_forest(image, truth, painted)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

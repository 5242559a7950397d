"""How long the GUI thread is blocked when the dock opens and when a panel adds a layer.

Four measurements, in real napari viewers (run under Xvfb on a machine without a display):

* ``--layers N``: in one viewer whose active layer is a Labels layer being painted, add a
  1 x 256 x 256 preview image N times each way, alternating: napari's way (the new layer gets
  selected, then the user's selection is put back, as the panels did before) and the panels' way
  (:func:`~napari_connectomics.widgets.compat.adding_unselected`). Per way: the blocking call and
  the next pass of the event loop (the redraw), in ms.
* ``--docks N``: N fresh processes, each makes a viewer with a 32 x 256 x 256 image and a Labels
  layer, opens the "Connectomics" dock at once and records the longest gap of a 10 ms ``QTimer``
  (minus 10 ms) over the next 4 s, while the panels are imported and built. The stall the issue
  bounds at 100 ms, for opening the dock alone.
* ``--dock-layers N``: N additions (the panels' way) in a viewer without the dock, then N in a fresh
  viewer with the dock open and its engine worker idle: what the dock adds to napari's cost.
* ``--output-layers N``: the longest gap of a 10 ms ``QTimer`` (minus 10 ms) while a 32 x 256 x 256
  probability image and a segmentation (Labels) are added (the panels' way) N times each, plus one
  not counted, in a viewer without the dock, then with the dock open on its Segment tab, twice each
  way: what napari's own addition of an output layer blocks, with and without the plugin.
* ``--loop-viewer N``: N additions in the interactive loop's viewer (the Lucchi crop, its scribbles,
  the dock): idle, while the Train panel trains with its defaults (napari's other Python threads
  sampled meanwhile: is anything of ours holding the GIL?), and after Stop.

    xvfb-run -a -s "-screen 0 1700x1200x24" python benchmarks/gui_passes.py --layers 8 --docks 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

SHAPE = (32, 256, 256)
TICK_MS = 10
WATCH_SECONDS = 4.0
PREVIEW_STYLE = {"colormap": "magenta", "opacity": 0.6, "blending": "additive", "contrast_limits": (0.0, 1.0)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8, help="additions per way (0: skip)")
    parser.add_argument("--docks", type=int, default=4, help="fresh processes opening the dock (0: skip)")
    parser.add_argument("--dock-layers", type=int, default=0,
                        help="additions (the panels' way) in a viewer without the dock, then in one with it open")
    parser.add_argument("--output-layers", type=int, default=0,
                        help="timer gaps while output layers are added, without and with the dock (0: skip)")
    parser.add_argument("--loop-viewer", type=int, default=0,
                        help="additions in the interactive loop's viewer: idle, while training, after Stop")
    parser.add_argument("--one-dock", action="store_true", help=argparse.SUPPRESS)  # a child of --docks
    return parser.parse_args(argv)


def viewer_with_layers() -> tuple[Any, Any]:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer()
    viewer.add_image(np.random.default_rng(0).random(SHAPE, dtype=np.float32), name="EM")
    viewer.add_labels(np.zeros(SHAPE, np.uint8), name="painted")
    return viewer, QApplication.instance()


def settle(app: Any, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def measure_layers(rounds: int) -> dict[str, Any]:
    from napari_connectomics.widgets.compat import adding_unselected

    viewer, app = viewer_with_layers()
    settle(app, 1.5)
    preview = np.random.default_rng(1).random((1, *SHAPE[1:]), dtype=np.float32)
    times: dict[str, list[tuple[float, float]]] = {"napari (select, then restore)": [], "adding_unselected": []}
    for i in range(rounds):
        for way, record in times.items():
            active, selected = viewer.layers.selection.active, set(viewer.layers.selection)
            started = time.perf_counter()
            if way == "adding_unselected":
                with adding_unselected(viewer):
                    viewer.add_image(preview, name=f"preview {i}", **PREVIEW_STYLE)
            else:
                viewer.add_image(preview, name=f"preview {i}", **PREVIEW_STYLE)
                viewer.layers.selection.update(selected)
                viewer.layers.selection.active = active
            called = time.perf_counter()
            app.processEvents()
            record.append(((called - started) * 1000.0, (time.perf_counter() - called) * 1000.0))
            assert viewer.layers.selection.active.name == "painted", way
            settle(app, 0.3)
            viewer.layers.remove(f"preview {i}")
            settle(app, 0.3)
    viewer.close()
    return {way: {"call_ms_median": round(statistics.median(c for c, _ in r), 1),
                  "call_ms": [round(c) for c, _ in r], "next_pass_ms": [round(p) for _, p in r]}
            for way, r in times.items()}


def time_additions(viewer: Any, app: Any, rounds: int, tag: str) -> dict[str, Any]:
    """Add (the panels' way) and remove a 1 x 256 x 256 preview ``rounds + 1`` times; the first
    addition is not counted in the median."""
    from napari_connectomics.widgets.compat import adding_unselected

    preview = np.random.default_rng(1).random((1, *SHAPE[1:]), dtype=np.float32)
    calls = []
    for i in range(rounds + 1):
        started = time.perf_counter()
        with adding_unselected(viewer):
            viewer.add_image(preview, name=f"{tag} {i}", **PREVIEW_STYLE)
        calls.append((time.perf_counter() - started) * 1000.0)
        settle(app, 0.3)
        viewer.layers.remove(f"{tag} {i}")
        settle(app, 0.3)
    return {"call_ms_median": round(statistics.median(calls[1:]), 1), "call_ms": [round(c) for c in calls]}


def open_dock(viewer: Any, app: Any) -> Any:
    """The "Connectomics" dock, once its panels are built and its first checks have run."""
    _, dock = viewer.window.add_plugin_dock_widget("napari-connectomics", "Connectomics")
    deadline = time.perf_counter() + 60
    while not dock.ready and time.perf_counter() < deadline:
        settle(app, 0.1)
    settle(app, 8.0)  # the dock's first config check and step probe
    return dock


def measure_layers_beside_dock(rounds: int) -> dict[str, Any]:
    """The panels' addition of a preview image in a viewer without the dock, then in a fresh viewer
    with the dock open (its engine worker idle): does the dock make napari's layer addition slower?"""
    report = {}
    for with_dock in (False, True):
        viewer, app = viewer_with_layers()
        if with_dock:
            open_dock(viewer, app)
        else:
            settle(app, 1.5)
        report["dock open" if with_dock else "no dock"] = time_additions(viewer, app, rounds, "preview")
        viewer.close()
        settle(app, 1.0)
    return report


def output_layer_gaps(with_dock: bool, rounds: int) -> dict[str, list[int]]:
    """Longest timer gap (ms, minus the tick) around each addition of a probability image and of a
    segmentation, in a fresh viewer with or without the dock; the first addition of each not counted."""
    from qtpy.QtCore import QTimer

    from napari_connectomics.widgets.compat import adding_unselected

    probabilities = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
    segmentation = (probabilities > 0.7).astype(np.uint32)
    viewer, app = viewer_with_layers()
    if with_dock:
        open_dock(viewer, app).tabs.setCurrentIndex(2)
    settle(app, 1.5)
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append((now - last[0]) * 1000.0 - TICK_MS)
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(TICK_MS)
    found: dict[str, list[int]] = {"image": [], "labels": []}
    for i in range(rounds + 1):
        for kind, record in found.items():
            settle(app, 0.3)
            gaps.clear()
            with adding_unselected(viewer):
                if kind == "image":
                    layer = viewer.add_image(probabilities, name="probabilities", colormap="magma",
                                             blending="additive", opacity=0.5, contrast_limits=(0.0, 1.0))
                else:
                    layer = viewer.add_labels(segmentation, name="segmentation", opacity=0.6)
            settle(app, 0.6)
            if i:
                record.append(round(max(gaps)))
            viewer.layers.remove(layer)
    timer.stop()
    viewer.close()
    settle(app, 1.0)
    return found


def measure_output_layers(rounds: int) -> dict[str, Any]:
    return {f"{'dock open' if with_dock else 'no dock'} {run}": output_layer_gaps(with_dock, rounds)
            for run in (1, 2) for with_dock in (False, True)}


def python_threads(samples: int = 60, every_s: float = 0.05) -> dict[str, int]:
    """What napari's other Python threads are doing: their innermost frames, sampled ``samples`` times."""
    import collections
    import threading
    import traceback

    counts: collections.Counter = collections.Counter()
    main = threading.main_thread().ident
    for _ in range(samples):
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident != main:
                top = traceback.extract_stack(frame)[-1]
                counts[f"{names.get(ident, ident)}: {top.name} ({top.filename.rsplit('/', 1)[-1]}:{top.lineno})"] += 1
        time.sleep(every_s)
    return dict(counts.most_common())


def measure_loop_viewer(rounds: int) -> dict[str, Any]:
    """The interactive loop's viewer (the Lucchi crop and its scribbles, the dock on the Train tab):
    additions idle, then while the Train panel trains (with its defaults), with napari's other
    Python threads sampled meanwhile, then after Stop."""
    import tempfile
    from pathlib import Path

    import napari
    from qtpy.QtWidgets import QApplication

    import interactive_loop as loop

    image, truth = loop.load_crop(Path(loop.DATA))
    viewer = napari.Viewer()
    app = QApplication.instance()
    viewer.add_image(image, name=loop.IMAGE_NAME)
    viewer.add_labels(loop.paint_scribbles(truth), name=loop.LABELS_NAME)
    dock = open_dock(viewer, app)
    dock.tabs.setCurrentIndex(1)
    train = dock.train_panel
    train.pair_rows[0].image_combo.setCurrentText(loop.IMAGE_NAME)
    train.pair_rows[0].labels_combo.setCurrentText(loop.LABELS_NAME)
    train.steps.value = 100_000
    train.output_dir.value = tempfile.mkdtemp(prefix="gui-passes-")
    report: dict[str, Any] = {"idle": time_additions(viewer, app, rounds, "idle")}
    train.train_button.click()
    loop.wait_until(lambda: loop.IMAGE_NAME + " preview" in viewer.layers, 120)
    settle(app, 5.0)
    report["threads while training"] = python_threads()
    report["training"] = time_additions(viewer, app, rounds, "training")
    train.stop_button.click()
    loop.wait_until(lambda: not train.running, 120)
    settle(app, 2.0)
    report["after Stop"] = time_additions(viewer, app, rounds, "after")
    viewer.close()
    return report


def one_dock() -> dict[str, Any]:
    """In this (fresh) process: open the dock at once and watch the GUI thread's timer."""
    from qtpy.QtCore import Qt, QTimer

    viewer, app = viewer_with_layers()
    app.processEvents()
    gaps: list[tuple[float, float]] = []  # (ms since the dock was asked for, gap ms)
    state = {"last": time.perf_counter()}

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(((state["last"] - start) * 1000.0, (now - state["last"]) * 1000.0 - TICK_MS))
        state["last"] = now

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    start = state["last"] = time.perf_counter()
    timer.start()
    _, dock = viewer.window.add_plugin_dock_widget("napari-connectomics", "Connectomics")
    settle(app, WATCH_SECONDS)
    timer.stop()
    ready = bool(dock.ready)
    viewer.close()
    worst = sorted(gaps, key=lambda g: -g[1])[:4]
    return {"ready": ready, "longest_gap_ms": round(worst[0][1]), "worst": [(round(t), round(g)) for t, g in worst]}


def measure_docks(runs: int) -> list[dict[str, Any]]:
    results = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, __file__, "--one-dock"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one_dock:
        print(json.dumps(one_dock()))
        return
    report: dict[str, Any] = {}
    if args.layers:
        report["add_image"] = measure_layers(args.layers)
    if args.dock_layers:
        report["add_image_beside_dock"] = measure_layers_beside_dock(args.dock_layers)
    if args.output_layers:
        report["output_layer_gaps_ms"] = measure_output_layers(args.output_layers)
    if args.loop_viewer:
        report["add_image_in_loop_viewer"] = measure_loop_viewer(args.loop_viewer)
    if args.docks:
        docks = measure_docks(args.docks)
        report["open_dock"] = {"longest_gap_ms": [d["longest_gap_ms"] for d in docks], "runs": docks}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

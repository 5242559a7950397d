"""How long the napari GUI thread stalls while the Train panel trains a network.

A shown viewer (run under Xvfb: ``xvfb-run -a``) opens the synthetic sample, a sparse annotation
is painted into a new Labels layer (background 1, mitochondria 2 on a few sections), and the Train
panel is opened through the plugin manifest and pressed. A ``QTimer`` on the GUI thread ticks
every 10 ms; the longest gap between two ticks is the longest time the viewer could not react
(a gap of 10 ms is no stall at all). Meanwhile the benchmark scrolls through z every 200 ms, so
the viewer redraws and the live preview follows the viewed section, as when a user watches.

    xvfb-run -a python benchmarks/gui_stall.py --steps 30 --runs 2

Output: a Markdown table. "idle" is the same ticking and scrolling without training (the noise
floor of the machine and its display: under Xvfb, OpenGL is rendered in software on the CPU).
Run 1 includes importing torch, Lightning and MONAI in the training thread, once per napari session
(their C extensions hold the GIL while they initialise); later runs show the steady state.
"after 1st loss" is the longest stall once losses arrive, which includes creating the preview
layer in run 1. ``--diagnose MS`` writes every thread's stack at each stall longer than MS.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys
import time

import numpy as np

TICK_MS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--runs", type=int, default=2, help="runs in a row (run 1 imports torch)")
    parser.add_argument("--patch", default="16,64,64", help="training patch z,y,x")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--filters", default="8,8,16,32,64,8", help="monai_basic_unet3d filters")
    parser.add_argument("--preview-every", type=int, help="live preview interval in seconds (0: off; default: the panel's)")
    parser.add_argument("--output", default=None, help="run folder root (default: a temporary folder)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of ticks without training first")
    parser.add_argument("--hidden", action="store_true", help="do not show the viewer window")
    parser.add_argument("--switch-interval", type=float, default=None, metavar="S",
                        help="force sys.setswitchinterval(S) for the whole benchmark (experiments)")
    parser.add_argument("--diagnose", type=float, default=0.0, metavar="MS",
                        help="dump every thread's stack (faulthandler, no GIL needed) to stall_stacks.txt "
                             "whenever the GUI thread has not ticked for MS milliseconds")
    return parser.parse_args(argv)


def paint_sparse(viewer) -> None:
    """Background (1) and mitochondria (2) on three sections, as a user would paint them."""
    ground_truth = viewer.layers["mitochondria (ground truth)"].data
    image = viewer.layers["synthetic EM"]
    painted = np.zeros(ground_truth.shape, np.uint8)
    for z in (6, 16, 26):
        painted[z] = np.where(ground_truth[z] > 0, 2, 1)
    viewer.add_labels(painted, name="painted", scale=image.scale)


def z_scroller(viewer):
    """A (stopped) timer that steps the viewed z-section every 200 ms, as a user watching would."""
    from qtpy.QtCore import QTimer

    z_size = viewer.dims.nsteps[0]
    scroll = QTimer()
    scroll.setInterval(200)
    scroll.timeout.connect(lambda: viewer.dims.set_current_step(0, (viewer.dims.current_step[0] + 1) % z_size))
    return scroll


def measure_idle(app, viewer, seconds: float) -> dict[str, float]:
    """The same ticks and scrolling without training: the machine's own noise floor."""
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    ticks: list[float] = []
    loop = QEventLoop()
    scroll = z_scroller(viewer)

    def tick() -> None:
        ticks.append(time.perf_counter())
        if ticks[-1] - ticks[0] > seconds:
            loop.quit()

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    scroll.start()
    loop.exec_()
    timer.stop()
    scroll.stop()
    gaps = np.diff(np.asarray(ticks)) * 1000.0
    return {"seconds": seconds, "max_ms": float(gaps.max()), "p99_ms": float(np.percentile(gaps, 99)),
            "median_ms": float(np.median(gaps))}


def measure_run(app, viewer, panel, seconds_limit: float = 1800.0, diagnose_ms: float = 0.0,
                stacks=None) -> dict[str, float]:
    """Press Train, tick every 10 ms until the run has ended; the gaps between ticks."""
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    ticks: list[float] = []
    first_loss_at: list[float] = []
    loop = QEventLoop()
    scroll = z_scroller(viewer)

    def tick() -> None:
        now = time.perf_counter()
        ticks.append(now)
        if diagnose_ms > 0:  # re-armed every tick: fires only when the GUI thread stalls
            faulthandler.cancel_dump_traceback_later()
            faulthandler.dump_traceback_later(diagnose_ms / 1000.0, repeat=False, file=stacks)
        if not first_loss_at and panel.loss_plot.points("train"):
            first_loss_at.append(now)
        if not panel.running or now - ticks[0] > seconds_limit:
            loop.quit()

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    started = time.perf_counter()
    if not panel.start_training():
        raise SystemExit("the Train panel refused to start; see the notification above")
    ticks.append(time.perf_counter())
    timer.start()
    scroll.start()
    loop.exec_()
    if diagnose_ms > 0:
        faulthandler.cancel_dump_traceback_later()
    timer.stop()
    scroll.stop()
    app.processEvents()
    gaps = np.diff(np.asarray(ticks)) * 1000.0
    training_gaps = gaps[np.asarray(ticks[1:]) > first_loss_at[0]] if first_loss_at else gaps
    return {
        "seconds": time.perf_counter() - started,
        "steps": int(panel.last_result.global_step) if panel.last_result is not None else 0,
        "max_ms": float(gaps.max()),
        "p99_ms": float(np.percentile(gaps, 99)),
        "median_ms": float(np.median(gaps)),
        "max_training_ms": float(training_gaps.max()) if training_gaps.size else float("nan"),
        "ticks": len(ticks),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_connectomics.config import load_config
    from napari_connectomics.widgets.session import session_for

    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    output = args.output or tempfile.mkdtemp(prefix="gui_stall_")
    viewer = napari.Viewer(show=not args.hidden)
    app = QApplication.instance()
    viewer.open_sample("napari-connectomics", "synthetic_em")
    paint_sparse(viewer)
    session_for(viewer).config = load_config(overrides=[
        "model.architecture=monai_basic_unet3d", f"model.filters=[{args.filters}]"])
    _, panel = viewer.window.add_plugin_dock_widget("napari-connectomics", "Train")
    panel.patch_size.value = args.patch
    panel.batch_size.value = args.batch
    panel.steps.value = args.steps
    if args.preview_every is not None:
        panel.preview_every.value = args.preview_every
    panel.output_dir.value = output
    app.processEvents()

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"cores: {os.cpu_count()} (load average {load}), torch threads: all but one; "
          f"python {sys.version.split()[0]}, napari {napari.__version__}, display {os.environ.get('DISPLAY', '-')}")
    print(f"patch {args.patch}, batch {args.batch}, filters [{args.filters}], preview every {panel.preview_every.value} s")
    print()
    print("| run | steps | wall s | longest stall ms | after 1st loss ms | p99 gap ms | median gap ms |")
    print("|---|---|---|---|---|---|---|")
    idle = measure_idle(app, viewer, args.idle)
    print(f"| idle (no training) | - | {idle['seconds']:.1f} | {idle['max_ms']:.0f} | - | {idle['p99_ms']:.0f} | "
          f"{idle['median_ms']:.1f} |", flush=True)
    stacks = open("stall_stacks.txt", "w") if args.diagnose > 0 else None  # noqa: SIM115
    for run in range(1, args.runs + 1):
        result = measure_run(app, viewer, panel, diagnose_ms=args.diagnose, stacks=stacks)
        note = " (imports torch)" if run == 1 else ""
        print(f"| {run}{note} | {result['steps']} | {result['seconds']:.1f} | {result['max_ms']:.0f} | "
              f"{result['max_training_ms']:.0f} | {result['p99_ms']:.0f} | {result['median_ms']:.1f} |",
              flush=True)
    if stacks is not None:
        stacks.close()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

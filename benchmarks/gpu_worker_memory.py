"""The Train panel's run on a GPU: the panel's GPU default trains in the engine worker, and the GPU
memory in use afterwards returns to the level before the run.

Drives the same path the Train panel takes when Train is pressed (``TrainChoices`` ->
``build_config(default_config(gpu=True))`` -> the engine worker process's ``train`` request), on
scribbles painted as ``interactive_loop.py`` paints them on a Lucchi crop, without a viewer (napari
and Qt are not installed on the GPU machine). Samples the GPU's memory in use (``nvidia-smi``,
the whole card, every process) before the worker starts, while it trains, after the run (worker
still alive, ready for the next Train) and after the worker is closed.

    python benchmarks/gpu_worker_memory.py --steps 60 --data .gpu
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import gpu_lucchi
import interactive_loop as loop
from napari_connectomics.widgets.defaults import default_config
from napari_connectomics.widgets.training_request import PairChoice, TrainChoices, build_config
from napari_connectomics.widgets.worker_client import EngineWorker

CROP = (slice(0, 32), slice(200, 456), slice(300, 556))  # of the held-out slices


def gpu_used_mib() -> int:
    """MiB in use on GPU 0, all processes (what other users of the card would see); -1 without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return -1
    return int(out.split()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=gpu_lucchi.SHARED)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    volumes = gpu_lucchi.load_volumes(args.data)
    image = np.ascontiguousarray(volumes["heldout_image"][CROP])
    scribbles = loop.paint_scribbles(volumes["heldout_label"][CROP] > 0)
    choices = TrainChoices(pairs=[PairChoice("scribbles", image, scribbles)],
                           knobs={"training": {"output_dir": tempfile.mkdtemp(prefix="gpu_worker_"),
                                               "max_steps": args.steps}})
    cfg = build_config(default_config(gpu=True), choices)
    print(f"panel GPU default: {cfg.model.architecture} {cfg.model.get('mednext_size', '')}, "
          f"deep supervision {cfg.model.get('deep_supervision')}, patch {list(cfg.data.patch_size)} x "
          f"{cfg.data.batch_size}, {cfg.training.precision}, {args.steps} steps on {image.shape}", flush=True)

    figures: dict[str, float] = {"no_worker": gpu_used_mib()}
    engine = EngineWorker()
    engine.start()
    probe = engine.call("probe", cfg, quiet=True)  # what the panel measures before the first Train
    time.sleep(1.0)
    figures["before"] = gpu_used_mib()  # the dock open, its worker probed: the user's starting point
    figures["probe_seconds_per_step"] = round(float(getattr(probe, "seconds", float("nan"))), 3)
    peak, sampling = [figures["before"]], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            peak.append(gpu_used_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    events: list[object] = []
    sampler.start()
    start = time.perf_counter()
    _prepared, summary = engine.run({"choices": choices, "cfg": cfg, "preview_every": 0}, events.append,
                                    threading.Event())
    figures["seconds"] = round(time.perf_counter() - start, 1)
    sampling.set()
    sampler.join()
    time.sleep(1.0)
    figures["peak_during"] = max(peak)
    figures["after_run_worker_alive"] = gpu_used_mib()
    engine.close()
    time.sleep(1.0)
    figures["after_worker_closed"] = gpu_used_mib()
    figures["steps"] = summary.global_step
    print(json.dumps(figures, indent=1))
    print(f"GPU memory in use: {figures['no_worker']} MiB with no worker, {figures['before']} MiB before, {figures['peak_during']} MiB at most during "
          f"the run, {figures['after_run_worker_alive']} MiB after it (worker ready for the next Train), "
          f"{figures['after_worker_closed']} MiB after the worker closed")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

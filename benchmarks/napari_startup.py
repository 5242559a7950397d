"""What the plugin adds to napari's start-up, and what opening its dock widget costs.

Each measurement is a fresh interpreter under the current display (run under Xvfb: ``xvfb-run -a``).
Start-up with the plugin enabled and disabled (napari's own ``plugins.disabled_plugins`` setting,
through its environment variable) alternate, so machine noise hits both alike; the figure is the
difference of the medians. Also reported: whether torch, MONAI or Lightning were imported at
start-up, and the time and heavy imports of opening the "Connectomics" dock widget.

    xvfb-run -a python benchmarks/napari_startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

STARTUP = r"""
import json, sys, time
t0 = time.perf_counter()
import napari
viewer = napari.Viewer(show=False)
seconds = time.perf_counter() - t0
ours = sorted(m for m in sys.modules if m.startswith("napari_connectomics"))
heavy = [m for m in ("torch", "monai", "lightning") if m in sys.modules]
dock = None
if {open_dock}:
    t1 = time.perf_counter()
    viewer.window.add_plugin_dock_widget("napari-connectomics", "Connectomics")
    dock = time.perf_counter() - t1
    heavy_after_dock = [m for m in ("torch", "monai", "lightning") if m in sys.modules]
else:
    heavy_after_dock = None
viewer.close()
print(json.dumps(dict(seconds=seconds, ours=ours, heavy=heavy, dock=dock, heavy_after_dock=heavy_after_dock)))
"""

DISABLE = {"NAPARI_PLUGINS_DISABLED_PLUGINS": '["napari-connectomics"]'}


def run_once(enabled: bool, open_dock: bool = False) -> dict:
    env = {**os.environ, **({} if enabled else DISABLE)}
    code = STARTUP.replace("{open_dock}", str(open_dock))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"start-up run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _seconds(runs: list[dict]) -> str:
    return ", ".join(f"{run['seconds']:.2f}" for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    run_once(True)  # warm the file cache for both variants alike
    run_once(False)
    with_plugin, without_plugin = [], []
    for _ in range(args.repeat):
        with_plugin.append(run_once(True))
        without_plugin.append(run_once(False))
    docked = [run_once(True, open_dock=True) for _ in range(max(1, args.repeat // 2))]

    on = statistics.median(r["seconds"] for r in with_plugin)
    off = statistics.median(r["seconds"] for r in without_plugin)
    print(f"viewer start-up, plugin enabled : median {on:.2f} s  ({_seconds(with_plugin)})")
    print(f"viewer start-up, plugin disabled: median {off:.2f} s  ({_seconds(without_plugin)})")
    print(f"added by the plugin: {on - off:+.3f} s ({(on / off - 1) * 100:+.1f} %)")
    print(f"plugin modules imported at start-up: {with_plugin[0]['ours'] or 'none'}; "
          f"torch/MONAI/Lightning imported: {with_plugin[0]['heavy'] or 'none'}")
    dock = statistics.median(r["dock"] for r in docked)
    print(f"opening the Connectomics dock widget: median {dock:.2f} s; "
          f"torch/MONAI/Lightning imported then: {docked[0]['heavy_after_dock'] or 'none'}")


if __name__ == "__main__":
    main()

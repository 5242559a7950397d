"""Peak memory of block-wise prediction on a volume whose output would not fit in RAM comfortably.

A 320x1024x1024 uint8 Zarr volume (made chunk by chunk, never whole in memory) is predicted by a
deliberately tiny 3D network, so that reading, stitching and writing dominate; the float32
two-channel output would be 2.7 GB, MONAI's in-memory path needs about 34 bytes per voxel (~11 GB).
The prediction runs in a fresh process and reports its peak RSS (`ru_maxrss`).

    python benchmarks/infer_memory.py --shape 320,1024,1024 --block 64,256,256
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time, torch
from napari_connectomics.config import load_config
from napari_connectomics.models import build_model
from napari_connectomics.inference.predict import PredictOptions, predict
folder, window, block = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
torch.manual_seed(0)
cfg = load_config(overrides=["model.architecture=monai_unet", "model.filters=[2,4]", "model.num_res_units=0",
                             f"data.patch_size={window}"])
model = build_model(cfg).eval()
start = time.perf_counter()
result = predict(model, folder + "/raw.zarr", PredictOptions(window=tuple(window), overlap=0.25, batch_size=4,
                 block_size=tuple(block) if block else None), cfg=cfg, output=folder + "/pred.zarr")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "blocks": result.blocks, "output_shape": list(result.probabilities.shape),
                  "output_dtype": str(result.probabilities.dtype)}))
"""


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def make_volume(path: Path, shape: list[int], chunks: tuple[int, int, int] = (32, 256, 256)) -> None:
    """A textured uint8 volume written chunk-slab by chunk-slab."""
    import zarr

    array = zarr.open_array(str(path), mode="w", shape=tuple(shape), dtype=np.uint8, chunks=chunks)
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], chunks[0]):
        depth = min(chunks[0], shape[0] - z)
        array[z:z + depth] = rng.integers(60, 200, size=(depth, *shape[1:]), dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=_ints, default=[320, 1024, 1024])
    parser.add_argument("--window", type=_ints, default=[32, 128, 128])
    parser.add_argument("--block", type=_ints, default=[64, 256, 256], help="0 for the automatic plan")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp())
    try:
        start = time.perf_counter()
        make_volume(folder / "raw.zarr", args.shape)
        made = time.perf_counter() - start
        block = None if args.block == [0] else args.block
        child = subprocess.run([sys.executable, "-c", CHILD, str(folder), json.dumps(args.window), json.dumps(block)],
                               capture_output=True, text=True, check=True)
        report = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    voxels = int(np.prod(args.shape))
    print(f"volume {args.shape} uint8 ({voxels / 1e6:.0f} M voxels, made in {made:.0f} s), window {args.window}, "
          f"blocks {block or 'automatic'}, tiny 3D U-Net (filters 2, 4)\n")
    print("| peak RSS (GiB) | seconds | blocks | output | float32 2-channel output would be |")
    print("| ---: | ---: | ---: | --- | ---: |")
    print(f"| {report['peak_rss_gib']:.2f} | {report['seconds']:.0f} | {report['blocks']} | "
          f"{report['output_shape']} {report['output_dtype']} | {2 * 4 * voxels / 1e9:.1f} GB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Our block-wise predict (Zarr in, Zarr out) against MONAI's in-memory sliding window, one run.

Same model (a small random-weight 3D U-Net), window, overlap, batch and blending. MONAI gets the
volume as a tensor already in memory and returns probabilities in memory; ours reads the input
from a Zarr store, normalises it, predicts block by block and writes float16 probabilities to a
Zarr store (temporary name, renamed when complete). Each timing is the best of `--repeat` runs.

    python benchmarks/infer_overhead.py --shape 64,512,512 --block 64,256,256
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from monai.inferers import sliding_window_inference

from napari_connectomics.config import load_config
from napari_connectomics.data.normalize import intensity_stats, normalize_intensity
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.models import build_model
from napari_connectomics.inference.predict import PredictOptions, predict


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=_ints, default=(64, 512, 512))
    parser.add_argument("--window", type=_ints, default=(32, 128, 128))
    parser.add_argument("--block", type=_ints, default=(64, 256, 256))
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    cfg = load_config(overrides=["model.architecture=monai_unet", "model.filters=[8,16,32]",
                                 f"data.patch_size={list(args.window)}"])
    model = build_model(cfg).eval()
    image = make_synthetic_em(shape=args.shape, seed=0).image
    folder = Path(tempfile.mkdtemp())
    source = zarr.open_array(str(folder / "raw.zarr"), mode="w", shape=image.shape, dtype=image.dtype,
                             chunks=(16, 256, 256))
    source[:] = image

    def monai_run() -> float:
        stats = intensity_stats(image)
        x = torch.from_numpy(normalize_intensity(image, cfg.data.normalize, stats))[None, None]
        start = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(x, args.window, args.batch, model, overlap=args.overlap, mode="gaussian")
            torch.softmax(logits, dim=1)
        return time.perf_counter() - start

    def ours(block: tuple[int, ...] | None) -> float:
        out = folder / "pred.zarr"
        start = time.perf_counter()
        predict(model, str(folder / "raw.zarr"), PredictOptions(window=args.window, overlap=args.overlap,
                                                                 batch_size=args.batch, block_size=block),
                cfg=cfg, output=out, overwrite=True)
        seconds = time.perf_counter() - start
        shutil.rmtree(out, ignore_errors=True)
        return seconds

    rows = [("MONAI sliding_window_inference, tensor in memory", min(monai_run() for _ in range(args.repeat)))]
    rows.append((f"ours, Zarr -> Zarr, blocks {'x'.join(map(str, args.block))}",
                 min(ours(args.block) for _ in range(args.repeat))))
    rows.append(("ours, Zarr -> Zarr, automatic plan", min(ours(None) for _ in range(args.repeat))))
    shutil.rmtree(folder, ignore_errors=True)
    base = rows[0][1]
    print(f"volume {args.shape}, window {args.window}, overlap {args.overlap}, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeat}\n")
    print("| engine | seconds | vs MONAI |")
    print("| --- | ---: | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

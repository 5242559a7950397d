"""Our block-wise predict (Zarr in, Zarr out) against MONAI's in-memory sliding window, one run.

Same model (a small random-weight 3D U-Net), window, overlap, batch, Gaussian blending, padding
and torch threads. Both sides do the same compute: MONAI's timing includes measuring the intensity
statistics and normalising the volume in memory (ours measures them on the Zarr input and
normalises what it reads), then ``sliding_window_inference`` and the softmax, with the volume and
the probabilities in memory; ours also reads the input from a Zarr store, converts the
probabilities to float16 and writes them to a Zarr store (temporary name, renamed when complete).
That I/O is the overhead measured here.

Every engine runs once untimed (warm-up), then the engines take turns for ``--repeat`` rounds, so
that load from other processes on a shared machine falls on all of them alike; each round's
ratio is ours / MONAI of that round. The summary is the best time of each engine and the median
of the per-round ratios (paired, so robust to one lucky or unlucky run). On Linux the CPU time
other processes used during each run is measured too (``/proc/stat`` minus this process), so a
round slowed down by other work on a shared machine can be told apart.

    python benchmarks/infer_overhead.py --shape 64,512,512 --block 64,256,256 --repeat 5
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import zarr
from monai.inferers import sliding_window_inference

from napari_connectomics.config import load_config
from napari_connectomics.data.normalize import intensity_stats, normalize_intensity
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.inference.predict import PredictOptions, predict
from napari_connectomics.models import build_model


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _busy_seconds() -> float | None:
    """CPU seconds all processes have been busy since boot, minus this process's (Linux only)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / ticks - (own.user + own.system)


def _timed(run) -> tuple[float, float | None]:
    """(seconds, CPU seconds other processes used meanwhile)."""
    before = _busy_seconds()
    seconds = run()
    after = _busy_seconds()
    return seconds, (after - before if before is not None and after is not None else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=_ints, default=(64, 512, 512))
    parser.add_argument("--window", type=_ints, default=(32, 128, 128))
    parser.add_argument("--block", type=_ints, default=(64, 256, 256))
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
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
        start = time.perf_counter()
        x = torch.from_numpy(normalize_intensity(image, cfg.data.normalize, intensity_stats(image)))[None, None]
        with torch.inference_mode():
            logits = sliding_window_inference(x, args.window, args.batch, model, overlap=args.overlap,
                                              mode="gaussian", sigma_scale=0.125, padding_mode="constant")
            torch.softmax(logits, dim=1)
        return time.perf_counter() - start

    def ours(block: tuple[int, ...] | None) -> float:
        out = folder / "pred.zarr"
        start = time.perf_counter()
        predict(model, str(folder / "raw.zarr"),
                PredictOptions(window=args.window, overlap=args.overlap, batch_size=args.batch,
                               blending="gaussian", padding_mode="constant", device="cpu",
                               output_dtype="float16", block_size=block),
                cfg=cfg, output=out, overwrite=True)
        seconds = time.perf_counter() - start
        shutil.rmtree(out, ignore_errors=True)
        return seconds

    engines = [
        ("MONAI sliding_window_inference, in memory (normalisation included)", monai_run),
        (f"ours, Zarr -> Zarr, blocks {'x'.join(map(str, args.block))}", lambda: ours(args.block)),
        ("ours, Zarr -> Zarr, automatic plan", lambda: ours(None)),
    ]
    try:
        for _, run in engines:  # warm-up: allocator, oneDNN kernels, Zarr codecs
            run()
        measured = [[_timed(run) for _, run in engines] for _ in range(args.repeat)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"volume {args.shape}, window {args.window}, overlap {args.overlap}, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}, {args.repeat} rounds after one warm-up round\n")
    times = [[seconds for seconds, _ in round_] for round_ in measured]
    rounds = " | ".join(f"round {r + 1}" for r in range(args.repeat))
    print(f"| engine | {rounds} | best (s) | best vs MONAI | median ratio |")
    print("| --- |" + " ---: |" * (args.repeat + 3))
    best_monai = min(t[0] for t in times)
    for e, (name, _) in enumerate(engines):
        cells = []
        for t in times:
            cells.append(f"{t[e]:.2f} s" if e == 0 else f"{t[e]:.2f} s ({t[e] / t[0]:.2f}x)")
        best = min(t[e] for t in times)
        median = statistics.median(t[e] / t[0] for t in times)
        print(f"| {name} | {' | '.join(cells)} | {best:.2f} | {best / best_monai:.2f}x | {median:.2f}x |")
    if all(other is not None for round_ in measured for _, other in round_):
        cells = [" / ".join(f"{other:.1f}" for _, other in round_) for round_ in measured]
        print(f"| CPU seconds used by other processes (per engine, in order) | {' | '.join(cells)} | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

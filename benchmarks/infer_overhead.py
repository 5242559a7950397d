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
ratio is ours / MONAI of that round (the faster MONAI variant of the round on a GPU). The summary is the best time of each engine and the median
of the per-round ratios (paired, so robust to one lucky or unlucky run). On Linux the CPU time
other processes used during each run is measured too (``/proc/stat`` minus this process), so a
round slowed down by other work on a shared machine can be told apart.

    python benchmarks/infer_overhead.py --shape 64,512,512 --block 64,256,256 --repeat 5

On a GPU (``--device cuda``) MONAI runs its windows there twice: with its output on the CPU
(``sw_device='cuda', device='cpu'``, what it does for a CPU volume) and with everything on the GPU
(``device='cuda'``, then the probabilities copied back); ours reads and writes Zarr as on the CPU.
A large synthetic volume is the 64^3 sample tiled (``--shape 96,1024,1024``), made in seconds.

    python benchmarks/infer_overhead.py --device cuda --shape 96,1024,1024 --block 32,1024,1024 \
        --memory-limit 16384 --repeat 5
"""

from __future__ import annotations

import argparse
import logging
import math
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


def _synthetic(shape: tuple[int, ...]):
    """The synthetic EM sample, tiled (mirrored, so no seams) up to ``shape`` when that is large."""
    import numpy as np

    tile = tuple(min(n, 256) for n in shape)
    image = make_synthetic_em(shape=tile, seed=0).image
    if tile == tuple(shape):
        return image
    reps = [-(-n // t) for n, t in zip(shape, tile)]
    return np.ascontiguousarray(np.pad(image, [(0, (r - 1) * t) for r, t in zip(reps, tile)],
                                       mode="symmetric")[:shape[0], :shape[1], :shape[2]])


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
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="32", help="ours: the forward pass's arithmetic on a "
                        "GPU (MONAI always runs float32); on a GPU float16 autocast is timed too")
    parser.add_argument("--memory-limit", type=int, default=None, metavar="MB",
                        help="ours: memory for one prediction (default: the config's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    cfg = load_config(overrides=["model.architecture=monai_unet", "model.filters=[8,16,32]",
                                 f"data.patch_size={list(args.window)}"])
    device = torch.device(args.device)
    model = build_model(cfg).eval().to(device)
    image = _synthetic(args.shape)
    folder = Path(tempfile.mkdtemp())
    source = zarr.open_array(str(folder / "raw.zarr"), mode="w", shape=image.shape, dtype=image.dtype,
                             chunks=(16, 256, 256))
    source[:] = image

    kept: dict[str, torch.Tensor] = {}  # one output of each engine, for the agreement check

    def monai_run(output_device: torch.device) -> float:
        start = time.perf_counter()
        x = torch.from_numpy(normalize_intensity(image, cfg.data.normalize, intensity_stats(image)))[None, None]
        with torch.inference_mode():
            logits = sliding_window_inference(x, args.window, args.batch, model, overlap=args.overlap,
                                              mode="gaussian", sigma_scale=0.125, padding_mode="constant",
                                              sw_device=device, device=output_device)
            kept["MONAI"] = torch.softmax(logits, dim=1).cpu()[0]
        return time.perf_counter() - start

    def ours(block: tuple[int, ...] | None, precision: str = args.precision) -> float:
        out = folder / "pred.zarr"
        start = time.perf_counter()
        result = predict(model, str(folder / "raw.zarr"),
                PredictOptions(window=args.window, overlap=args.overlap, batch_size=args.batch,
                               blending="gaussian", padding_mode="constant", device=args.device,
                               precision=precision, output_dtype="float16", block_size=block,
                               **memory),
                cfg=cfg, output=out, overwrite=True)
        seconds = time.perf_counter() - start
        kept[f"ours, blocks {block}, precision {precision}"] = torch.from_numpy(result.probabilities[:])
        shutil.rmtree(out, ignore_errors=True)
        return seconds

    memory = {} if args.memory_limit is None else {"memory_limit_mb": args.memory_limit}
    engines = [
        ("MONAI sliding_window_inference, in memory (normalisation included)", lambda: monai_run(torch.device("cpu"))),
    ]
    if device.type == "cuda":
        engines.append(("MONAI, output on the GPU too (then copied back)", lambda: monai_run(device)))
    engines += [
        (f"ours, Zarr -> Zarr, blocks {'x'.join(map(str, args.block))}", lambda: ours(args.block)),
        ("ours, Zarr -> Zarr, automatic plan", lambda: ours(None)),
    ]
    if device.type == "cuda" and args.precision != "16-mixed":
        engines.append(("ours, Zarr -> Zarr, automatic plan, float16 autocast",
                        lambda: ours(None, "16-mixed")))
    try:
        for _, run in engines:  # warm-up: allocator, oneDNN kernels, Zarr codecs
            run()
        measured = [[_timed(run) for _, run in engines] for _ in range(args.repeat)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"volume {args.shape}, window {args.window}, overlap {args.overlap}, batch {args.batch}, "
          f"{where}, torch threads {torch.get_num_threads()}, our precision {args.precision}, "
          f"{args.repeat} rounds after one warm-up round\n")
    times = [[seconds for seconds, _ in round_] for round_ in measured]
    rounds = " | ".join(f"round {r + 1}" for r in range(args.repeat))
    print(f"| engine | {rounds} | best (s) | best vs MONAI | median ratio | Mvoxels/s (best) |")
    print("| --- |" + " ---: |" * (args.repeat + 4))
    monai = 2 if device.type == "cuda" else 1  # ratios are to the faster MONAI of each round
    reference = [min(t[:monai]) for t in times]
    best_monai = min(reference)
    for e, (name, _) in enumerate(engines):
        cells = []
        for t, ref in zip(times, reference):
            cells.append(f"{t[e]:.2f} s" if e < monai else f"{t[e]:.2f} s ({t[e] / ref:.2f}x)")
        best = min(t[e] for t in times)
        median = statistics.median(t[e] / ref for t, ref in zip(times, reference))
        rate = math.prod(args.shape) / best / 1e6
        print(f"| {name} | {' | '.join(cells)} | {best:.2f} | {best / best_monai:.2f}x | {median:.2f}x "
              f"| {rate:.1f} |")
    step = float(torch.finfo(torch.float16).eps) / 2  # float16's spacing just below 1.0
    reference = kept.pop("MONAI")
    print(f"\nlargest |ours - MONAI| (probabilities; stored float16 values just below 1 are {step:.1e} apart):")
    for name, values in kept.items():
        print(f"- {name}: {float((values.float() - reference).abs().max()):.1e}")
    if all(other is not None for round_ in measured for _, other in round_):
        cells = [" / ".join(f"{other:.1f}" for _, other in round_) for round_ in measured]
        print(f"| CPU seconds used by other processes (per engine, in order) | {' | '.join(cells)} | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

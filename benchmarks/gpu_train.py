"""Our whole training loop on a GPU: `train()` with MedNeXt and deep supervision at full patch size.

Runs `napari_connectomics.training.train` (patch sampling, augmentation, Lightning, multi-scale
loss, validation, checkpoints) on the synthetic EM volume for each precision and reports
optimizer steps per second between steps (after warm-up), peak GPU memory and the last losses.

    python benchmarks/gpu_train.py --precisions 32,bf16-mixed,16-mixed --patch 128,128,128 --steps 30
    python benchmarks/gpu_train.py --device cpu --patch 32,64,64 --steps 4    # smoke test on a CPU
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time

import lightning as L
import torch

from napari_connectomics.config import load_config
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.training import TrainingData, train


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="32,bf16-mixed,16-mixed")
    parser.add_argument("--patch", default="128,128,128")
    parser.add_argument("--size", default="S", help="MedNeXt preset")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    patch = [int(s) for s in args.patch.split(",")]
    shape = (max(patch[0] * 2, 32), max(patch[1] * 2, 64), max(patch[2] * 2, 64))
    sample = make_synthetic_em(shape=shape, seed=0)
    data = TrainingData(train=[(sample.image, sample.mitochondria)])
    device = torch.cuda.get_device_name(0) if args.device == "gpu" else "cpu"
    print(f"device {device}, MedNeXt-{args.size} k3 with deep supervision, batch {args.batch} x {patch}, "
          f"synthetic volume {shape}, {args.steps} steps timed after {args.warmup}\n")
    print("| precision | steps/s | s/step | peak GiB | first loss | last loss | val/dice |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for precision in args.precisions.split(","):
        total = args.steps + args.warmup
        cfg = load_config(overrides=[
            "model.architecture=mednext", f"model.mednext_size={args.size}", "model.kernel_size=3",
            "model.deep_supervision=true", "model.loss_functions=[DiceLoss,CrossEntropyLoss]",
            "model.loss_weights=[1.0,1.0]", f"data.patch_size={patch}", f"data.batch_size={args.batch}",
            f"data.samples_per_epoch={total * args.batch}", f"data.num_workers={args.workers}",
            "training.val_patches=4", f"training.max_steps={total}", f"training.precision={precision}",
            "training.log_every_n_steps=1", f"system.accelerator={args.device}",
            f"system.num_gpus={1 if args.device == 'gpu' else 0}", "optimizer.eps=1e-4",
            f"training.output_dir={tempfile.mkdtemp()}"])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        clock = StepClock()
        result = train(cfg, data=data, callbacks=[clock])
        t = clock.times
        rate = args.steps / (t[-1] - t[args.warmup - 1])
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        import csv

        rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
        losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
        dice = [float(r["val/dice"]) for r in rows if r.get("val/dice")]
        print(f"| {precision} | {rate:.2f} | {1 / rate:.3f} | {peak:.1f} | {losses[0]:.3f} | {losses[-1]:.3f} | "
              f"{dice[-1] if dice else float('nan'):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

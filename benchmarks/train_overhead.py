"""What our training loop costs over a bare PyTorch loop, side by side in one run.

- bare: the same network, loss, optimizer, batch and patch, on tensors made once in memory;
- ours: `napari_connectomics.training.train` (patch sampling from the volume, augmentation,
  Lightning), timed between optimizer steps after warm-up, without validation;
- the per-sample cost of each augmentation alone, against no augmentation.

    python benchmarks/train_overhead.py --config examples/lucchi_cpu.yaml --steps 40
    python benchmarks/train_overhead.py --precisions 32,auto --workers 0 --samples 0   # bfloat16 on this CPU?

``--precisions`` runs both loops once per ``training.precision`` (``auto`` resolved as training
resolves it: bf16-mixed on a CPU with AVX512-BF16 or AMX, else 32).

The volume is the config's (the Lucchi stack when ../shared/data is present), else the synthetic
sample. Figures go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import lightning as L
import torch

from napari_connectomics.config import load_config
from napari_connectomics.data.synthetic import make_synthetic_em
from napari_connectomics.data.volumes import open_volume
from napari_connectomics.models import build_model
from napari_connectomics.models.losses import build_loss
from napari_connectomics.training import TrainingData, train
from napari_connectomics.training.optim import build_optimizer
from napari_connectomics.training.precision import resolve_precision, training_autocast

logger = logging.getLogger("train_overhead")
AUGMENTATIONS = ("flip", "rotate90", "affine", "elastic", "intensity", "noise", "missing_section",
                 "misalignment", "motion_blur")


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter())


def bare_loop(cfg, steps: int, warmup: int) -> float:
    """Steps per second of forward + loss + backward + AdamW on pre-made tensors, in the config's
    precision (autocast as Lightning does it)."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(cfg, model.parameters())
    shape = (cfg.data.batch_size, cfg.model.in_channels, *cfg.data.patch_size)
    x = torch.rand(shape)
    y = (torch.rand((shape[0], 1, *shape[2:])) > 0.9).long()
    times = []
    for _ in range(warmup + steps):
        optimizer.zero_grad(set_to_none=True)
        with training_autocast(cfg.training.precision, torch.device("cpu")):
            loss, _ = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
    return steps / (times[-1] - times[warmup - 1])


def our_loop(cfg, data, steps: int, warmup: int, workers: int) -> float:
    clock = StepClock()
    batch = cfg.data.batch_size
    overrides = [f"training.max_steps={warmup + steps}", f"data.samples_per_epoch={(warmup + steps + 1) * batch}",
                 "training.val_check_interval=null", "checkpoint.save_last=false", f"data.num_workers={workers}",
                 "training.max_time=null", "training.output_dir=/tmp/train_overhead_runs"]
    cfg = _with(cfg, overrides)
    train(cfg, data=data, callbacks=[clock])
    t = clock.times
    return steps / (t[-1] - t[warmup - 1])


def _with(cfg, overrides: list[str]):
    """The config with dotlist overrides applied and validated again."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return load_config(overrides=OmegaConf.to_container(merged))


def augmentation_costs(cfg, data, samples: int) -> dict[str, float]:
    """Milliseconds per training sample with each augmentation alone (probability 1)."""
    from napari_connectomics.training.datamodule import VolumeDataModule

    costs = {}
    for name in ("none", *AUGMENTATIONS):
        overrides = [f"data.augmentation.{a}={1.0 if a == name else 0.0}" for a in AUGMENTATIONS]
        module = VolumeDataModule(_with(cfg, overrides), data)
        module.setup("fit")
        dataset = module.train_set
        start = time.perf_counter()
        for i in range(samples):
            dataset[i]
        costs[name] = 1000 * (time.perf_counter() - start) / samples
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="examples/lucchi_cpu.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--samples", type=int, default=40, help="samples per augmentation timing (0: skip)")
    parser.add_argument("--precisions", default=None, help="comma list of training.precision values to compare "
                        "(default: the config's)")
    parser.add_argument("--workers", default="0,1", help="comma list of loader worker counts for our loop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    cfg = load_config(args.config)
    data = None
    image_path = cfg.data.train_image.split(":")[0] if cfg.data.train_image else ""
    if not Path(image_path).exists():
        sample = make_synthetic_em(shape=(32, 512, 512), seed=0)
        data = TrainingData(train=[(sample.image, sample.mitochondria)])
        source = "synthetic (32, 512, 512)"
    else:
        source = f"{cfg.data.train_image} {open_volume(cfg.data.train_image).shape}"
    torch.set_num_threads(cfg.system.torch_threads or torch.get_num_threads())

    precisions = args.precisions.split(",") if args.precisions else [str(cfg.training.precision)]
    rows = []
    for precision in precisions:
        run_cfg = _with(cfg, [f"training.precision={precision}"])
        shown = precision if precision != "auto" else f"auto = {resolve_precision(precision, 'cpu')}"
        rows.append((f"bare PyTorch loop, tensors in memory, {shown}", bare_loop(run_cfg, args.steps, args.warmup)))
        for workers in (int(n) for n in args.workers.split(",")):
            rows.append((f"ours (train(), {workers} loader worker{'s' if workers != 1 else ''}), {shown}",
                         our_loop(run_cfg, data, args.steps, args.warmup, workers)))
    bare = rows[0][1]
    print(f"Config {args.config}, data {source}, batch {cfg.data.batch_size} x {list(cfg.data.patch_size)}, "
          f"{args.steps} timed steps after {args.warmup}, torch threads {torch.get_num_threads()}\n")
    print("| loop | steps/s | vs the first row |")
    print("| --- | ---: | ---: |")
    for name, rate in rows:
        print(f"| {name} | {rate:.2f} | {rate / bare:.2f}x |")
    if args.samples < 1:
        return 0
    costs = augmentation_costs(cfg, data, args.samples)
    print("\n| augmentation (probability 1, alone) | ms per sample | added ms |")
    print("| --- | ---: | ---: |")
    for name, ms in costs.items():
        print(f"| {name} | {ms:.2f} | {ms - costs['none']:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

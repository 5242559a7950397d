"""Training-step and inference throughput of the registered networks, side by side in one run.

Each network runs forward + backward + AdamW step on random patches (deep supervision and its
multi-scale loss when the architecture has it), then a forward pass in eval mode; the figure is
the median over the timed steps after warm-up. Peak GPU memory is reported on CUDA.

    python benchmarks/bench_models.py                                   # CPU, small patch
    python benchmarks/bench_models.py --device cuda --patch 128,128,128 --precision bf16-mixed \
        --models mednext:S:3,mednext:B:3,mednext:M:3,mednext:L:3 --json out.json
    python benchmarks/bench_models.py --models monai_unet --patch 128,128 --batch 8 --steps 15 --warmup 3 \
        --set "model.filters=[16,32,64,128,256]" --set model.num_res_units=2      # the CPU preset's network
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from napari_connectomics.config import load_config
from napari_connectomics.models import build_model

logger = logging.getLogger("bench_models")

DEFAULT_MODELS = "mednext:S:3,mednext:S:5,monai_unet,monai_basic_unet3d,monai_segresnet"


def _config(spec: str, patch: list[int], ds: bool, mednext_checkpoint: str | None = None,
            extra: list[str] | None = None):
    name, *rest = spec.split(":")
    overrides = [f"model.architecture={name}", f"data.patch_size={patch}", f"model.spatial_dims={len(patch)}"]
    if name.startswith("mednext"):
        size, kernel = (rest + ["S", "3"])[:2] if rest else ("S", "3")
        overrides += [f"model.mednext_size={size}", f"model.kernel_size={kernel}", f"model.deep_supervision={ds}"]
        if mednext_checkpoint:
            overrides.append(f"model.mednext_checkpoint={mednext_checkpoint}")
    return load_config(overrides=overrides + list(extra or []))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loss(output, target: torch.Tensor) -> torch.Tensor:
    outputs = [output["output"], *[output[k] for k in sorted(output) if k.startswith("ds_")]] if isinstance(output, dict) else [output]
    weights = [0.5 ** i for i in range(len(outputs))]
    total = 0.0
    for w, out in zip(weights, outputs):
        t = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        total = total + w * F.cross_entropy(out.float(), t)
    return total / sum(weights)


def bench(spec: str, patch: list[int], batch: int, steps: int, warmup: int, device: torch.device,
          precision: str, ds: bool, mednext_checkpoint: str | None = None, extra: list[str] | None = None) -> dict:
    cfg = _config(spec, patch, ds, mednext_checkpoint, extra)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    params = model.get_model_info()["parameters"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, *patch, device=device)
    y = torch.randint(0, 2, (batch, *patch), device=device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model.train()
    times = []
    for step in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = _loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    train_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    model.eval()
    infer = []
    with torch.inference_mode(), autocast:
        for step in range(warmup + steps):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if step >= warmup:
                infer.append(time.perf_counter() - start)
    row = {
        "model": spec + (f" (checkpoint {mednext_checkpoint})" if mednext_checkpoint else ""), "deep_supervision": bool(model.supports_deep_supervision), "parameters": params,
        "patch": patch, "batch": batch, "precision": precision, "device": str(device),
        "train_step_s": statistics.median(times), "infer_s": statistics.median(infer),
        "train_voxels_per_s": batch * float(torch.tensor(patch).prod()) / statistics.median(times),
        "train_peak_gib": train_peak, "loss": float(loss.detach()),
    }
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma list: name or mednext:SIZE:KERNEL")
    parser.add_argument("--patch", default="32,64,64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32", choices=("32", "16-mixed", "bf16-mixed"))
    parser.add_argument("--no-ds", action="store_true", help="MedNeXt without deep supervision")
    parser.add_argument("--mednext-checkpoint", choices=("none", "outside_block"),
                        help="override the MedNeXt presets' gradient checkpointing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every network (repeatable), e.g. model.num_res_units=2")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("napari_connectomics").setLevel(logging.WARNING)

    device = torch.device(args.device)
    patch = [int(s) for s in args.patch.split(",")]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        logger.info("device: %s", torch.cuda.get_device_name(device))
    rows = []
    for spec in args.models.split(","):
        try:
            row = bench(spec, patch, args.batch, args.steps, args.warmup, device, args.precision, not args.no_ds,
                        args.mednext_checkpoint, args.set)
        except torch.cuda.OutOfMemoryError:
            row = {"model": spec, "error": "out of memory", "patch": patch, "batch": args.batch}
            torch.cuda.empty_cache()
        rows.append(row)
        logger.info(json.dumps(row))
    print("| model | DS | parameters | patch x batch | precision | train step (s) | voxels/s | forward (s) | peak GiB |")
    print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | | | {r['patch']} x {r['batch']} | | {r['error']} | | | |")
            continue
        peak = f"{r['train_peak_gib']:.1f}" if r["train_peak_gib"] is not None else "-"
        print(f"| {r['model']} | {'yes' if r['deep_supervision'] else 'no'} | {r['parameters']:,} | "
              f"{'x'.join(map(str, r['patch']))} x {r['batch']} | {r['precision']} | {r['train_step_s']:.3f} | "
              f"{r['train_voxels_per_s']:.3g} | {r['infer_s']:.3f} | {peak} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

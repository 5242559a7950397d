"""The GPU recipe on Lucchi: train for a fixed time, then foreground IoU on held-out slices.

Trains a config (default: the plan's recipe, ``examples/configs/mednext_lucchi.yaml``: MedNeXt-S,
kernel 3, deep supervision, 3D, 128^3 patches) with ``train()`` for ``--minutes`` (the schedule
follows the time budget), then predicts the held-out slices with the predict defaults in float32,
in float16 autocast (how far the probabilities move) and with TTA, and scores the thresholded
probabilities against the expert labels.

The volumes come from ``--data``: either the shared HDF5 file (``../shared/data/lucchi/
lucchi_train.h5``; the last 20 % of z held out, as ``data.val_fraction`` does) or a folder of
``{train,heldout}_{image,label}.npy.xz`` arrays (what travels to a GPU machine, which cannot see
``../shared``; ``--pack FOLDER`` writes it from the shared file: the held-out slices whole and a
512 x 512 crop of the training slices, 46 MB, inside the device tool's 64 MiB). The held-out slices
are never trained on; validation during training uses a few
of their patches only to pick nothing: the last checkpoint is scored.

``--save-weights PATH`` keeps the trained weights without the optimizer's state (small enough to
bring back from a GPU machine, e.g. as the starting point of a fine-tuning comparison).

    python benchmarks/gpu_lucchi.py --minutes 4 --precision bf16-mixed
    python benchmarks/gpu_lucchi.py --config src/napari_connectomics/configs/interactive_cpu.yaml \\
        --minutes 2 --patch 256,256 --batch 32 --save-weights pretrained_2d.ckpt
    python benchmarks/gpu_lucchi.py --device cpu --minutes 0.3 --patch 32,64,64   # smoke test
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import lzma
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_connectomics.config import load_config
from napari_connectomics.inference.metrics import semantic_metrics
from napari_connectomics.inference.predict import PredictOptions, predict
from napari_connectomics.training import TrainingData, train

SHARED = "../shared/data/lucchi/lucchi_train.h5"
HELD_OUT_FRACTION = 0.2  # the last 20 % of z, as examples/lucchi_cpu.yaml holds out


def load_volumes(source: str) -> dict[str, np.ndarray]:
    """train/heldout image/label arrays from the shared HDF5 file or a folder of .npy.xz files."""
    path = Path(source)
    if path.is_dir():
        arrays = {}
        for name in ("train_image", "train_label", "heldout_image", "heldout_label"):
            arrays[name] = np.load(io.BytesIO(lzma.decompress((path / f"{name}.npy.xz").read_bytes())))
        return arrays
    import h5py

    with h5py.File(path, "r") as f:
        image, label = f["image"][:], f["label"][:]
    z0 = image.shape[0] - int(round(image.shape[0] * HELD_OUT_FRACTION))
    return {"train_image": image[:z0], "train_label": label[:z0],
            "heldout_image": image[z0:], "heldout_label": label[z0:]}


TRAIN_CROP = (slice(None), slice(128, 640), slice(256, 768))  # what --pack keeps of the training slices


def pack(target: Path, source: str = SHARED) -> None:
    """The volumes as xz-compressed .npy files (EM noise: about 75 % of the raw size)."""
    target.mkdir(parents=True, exist_ok=True)
    volumes = load_volumes(source)
    for name in ("train_image", "train_label"):
        volumes[name] = volumes[name][TRAIN_CROP]
    for name, array in volumes.items():
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array))
        (target / f"{name}.npy.xz").write_bytes(lzma.compress(buffer.getvalue(), preset=6))
        print(f"{target / name}.npy.xz {array.shape}")


def foreground_iou(probabilities: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    mask = (probabilities[-1] >= threshold).astype(np.uint8)
    return float(semantic_metrics(mask, (truth > 0).astype(np.uint8), num_classes=2)["iou"])


def save_weights(checkpoint: Path, target: Path) -> None:
    """The checkpoint without optimizer, scheduler and callback states (weights and config only)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in ("optimizer_states", "lr_schedulers", "callbacks", "loops"):
        state.pop(key, None)
    torch.save(state, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="examples/configs/mednext_lucchi.yaml")
    parser.add_argument("--data", default=SHARED)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--patch", default=None, help="z,y,x (3D) or y,x (2D); default: the config's")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
    parser.add_argument("--save-weights", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--pack", type=Path, default=None, metavar="FOLDER",
                        help="only write the volumes for a GPU machine into FOLDER (from --data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    if args.pack is not None:
        pack(args.pack, args.data)
        return 0

    volumes = load_volumes(args.data)
    seconds = int(round(args.minutes * 60))
    overrides = [
        f"training.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}", "training.max_steps=1000000",
        "training.max_epochs=100000", f"training.precision={args.precision}", "training.val_patches=8",
        "training.val_check_interval=500", f"data.num_workers={args.workers}",
        "data.train_image=null", "data.train_label=null", "checkpoint.monitor=val/loss",
        "checkpoint.mode=min", "checkpoint.save_top_k=1", f"system.accelerator={args.device}",
        f"system.num_gpus={1 if args.device == 'gpu' else 0}",
        f"training.output_dir={tempfile.mkdtemp(prefix='gpu_lucchi_')}"]
    if args.patch:
        overrides.append(f"data.patch_size=[{args.patch}]")
    if args.batch:
        overrides.append(f"data.batch_size={args.batch}")
    cfg = load_config(args.config, overrides=overrides)
    held_image, held_label = volumes["heldout_image"], volumes["heldout_label"]
    data = TrainingData(train=[(volumes["train_image"], volumes["train_label"])],
                        val=[(held_image, held_label)])
    device_name = torch.cuda.get_device_name(0) if args.device == "gpu" else "CPU"
    print(f"{args.config} on {device_name}: {cfg.model.architecture} {cfg.model.get('mednext_size', '')} "
          f"{cfg.model.spatial_dims}D, patch {list(cfg.data.patch_size)} x {cfg.data.batch_size}, "
          f"{args.precision}, {args.minutes:g} min; train {volumes['train_image'].shape}, "
          f"held out {held_image.shape}", flush=True)

    start = time.perf_counter()
    result = train(cfg, data=data)
    train_seconds = time.perf_counter() - start
    checkpoint = result.last_checkpoint or result.best_checkpoint
    figures: dict[str, object] = {"config": args.config, "device": device_name, "precision": args.precision,
                                  "minutes": args.minutes, "steps": result.global_step,
                                  "train_seconds": round(train_seconds, 1),
                                  "patch": list(cfg.data.patch_size), "batch": int(cfg.data.batch_size)}
    print(f"trained {result.global_step} steps in {train_seconds:.0f} s "
          f"({result.global_step / train_seconds:.2f} steps/s)", flush=True)

    print("\n| prediction | foreground IoU (threshold 0.5) | largest change of a probability | seconds |\n"
          "| --- | ---: | ---: | ---: |")
    reference = None
    runs = [("float32", "32", False), ("float16 autocast", "16-mixed", False),
            ("float16 autocast + TTA", "16-mixed", True)]
    for name, precision, tta in runs:
        if args.device == "cpu" and precision != "32":
            continue  # autocast is a GPU option
        begin = time.perf_counter()
        predicted = predict(str(checkpoint), held_image,
                            PredictOptions(tta=tta, precision=precision, output_dtype="float32", device="auto"))
        took = time.perf_counter() - begin
        probabilities = np.asarray(predicted.probabilities)
        iou = foreground_iou(probabilities, held_label)
        change = float(np.abs(probabilities - reference).max()) if reference is not None and not tta else None
        reference = probabilities if reference is None else reference
        figures[name] = {"iou": round(iou, 4), "seconds": round(took, 1), "largest_change": change}
        print(f"| sliding window (predict defaults), {name} | {iou:.3f} | "
              f"{'-' if change is None else f'{change:.1e}'} | {took:.1f} |", flush=True)
    if args.save_weights is not None:
        save_weights(Path(checkpoint), args.save_weights)
        print(f"weights saved to {args.save_weights} ({args.save_weights.stat().st_size / 2**20:.1f} MiB)")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tuning from a model trained on another region vs training from scratch, on the same scribbles.

Issue 13, item 3: starting from a model trained on one EM volume, fine-tune on another volume with
sparse scribbles (the Train panel's "start from checkpoint", i.e. ``model.pretrained``), and measure
how much it beats training from scratch on the same scribbles and time budget (target +0.10 IoU).

    python benchmarks/finetune_scribbles.py --pretrained SOURCE.ckpt --seconds 30,60,120

Source model (``--pretrained``): the panels' CPU network (``configs/interactive_cpu.yaml``) trained
on the Lucchi training stack's z 0:132 (dense labels); ``--make-pretrained PATH --pretrain-steps N``
trains one that way (for a real comparison use a long run, e.g. on a GPU).

Target: ``../shared/data/lucchi/lucchi_train.h5``, z 133:165, y 200:456, x 300:556 (32 x 256 x 256,
never seen by the source model). ``--imaging shifted`` (the default) images it differently, the same
every run: gamma 1.6, in-plane Gaussian blur sigma 1 px, contrast x0.7 around mid-grey and +0.08
brightness, Gaussian noise sigma 0.04 (seed 0), on the 0..1 scale; ``--imaging same`` leaves it as is.
Scribbles as ``interactive_loop.py`` paints them: every mitochondrion pixel on crop slices 4, 16, 28
and 30 % of those slices' background as radius-4 brush dabs (seed 0).

Per budget and arm (scratch, fine-tuned) the Train panel's path runs headless (``TrainChoices`` ->
``build_config(default_config(gpu=False))`` -> ``prepare_run`` -> ``train``; sparse labels, the
panel's validation pieces held out), on the CPU with ``--threads`` torch threads, the same seed,
``training.max_time`` = the budget and ``--steps`` raised so time ends the run. The run's last
weights predict the whole crop; foreground IoU (probability > 0.5) against the expert labels, also
over the 29 unpainted slices alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import interactive_loop as loop

TARGET = (slice(133, 165), slice(200, 456), slice(300, 556))
SOURCE_Z = slice(0, 132)
logger = logging.getLogger("finetune_scribbles")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="the source checkpoint (made by --make-pretrained)")
    parser.add_argument("--seconds", default="30,60,120", help="comma-separated training budgets, seconds")
    parser.add_argument("--imaging", choices=("shifted", "same"), default="shifted")
    parser.add_argument("--steps", type=int, default=100_000, help="the panel's steps, raised past the budget")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data", default=str(loop.DATA), help="the Lucchi HDF5 file")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--make-pretrained", action="store_true",
                        help="first train the source model on z 0:132 and save it at --pretrained")
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    return parser.parse_args(argv)


def shifted_imaging(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same tissue as another microscope might image it (see the module docstring)."""
    from scipy import ndimage as ndi

    x = (image.astype(np.float32) / 255.0) ** 1.6
    x = ndi.gaussian_filter(x, sigma=(0, 1.0, 1.0))
    x = 0.5 + 0.7 * (x - 0.5) + 0.08
    x = x + np.random.default_rng(seed).normal(0.0, 0.04, x.shape).astype(np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def make_pretrained(path: Path, data: Path, steps: int, threads: int) -> None:
    """The source model: the panels' CPU network trained on dense labels of z 0:132."""
    import h5py

    from napari_connectomics.training import TrainingData, train
    from napari_connectomics.widgets.defaults import default_config

    with h5py.File(data, "r") as f:
        image, label = f["image"][SOURCE_Z], (f["label"][SOURCE_Z] > 0).astype(np.uint8)
    cfg = default_config(gpu=False)
    cfg.data.target, cfg.data.label_mode = "semantic", "dense"
    cfg.training.max_steps, cfg.system.torch_threads = steps, threads
    cfg.training.output_dir = tempfile.mkdtemp(prefix="finetune-source-")
    result = train(cfg, data=TrainingData(train=[(image, label)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Path(result.last_checkpoint).read_bytes())
    logger.warning("source model: %d steps, saved as %s", result.global_step, path)


def max_time(seconds: float) -> str:
    s = int(round(seconds))
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_arm(image: np.ndarray, painted: np.ndarray, truth: np.ndarray, seconds: float, checkpoint: str | None,
            args: argparse.Namespace, output: Path) -> dict[str, Any]:
    """One training run the Train panel's way, then the whole crop predicted and scored."""
    from napari_connectomics.inference.predict import PredictOptions, predict
    from napari_connectomics.training import train
    from napari_connectomics.widgets.defaults import default_config
    from napari_connectomics.widgets.training_request import PairChoice, TrainChoices, build_config, prepare_run

    choices = TrainChoices(
        pairs=[PairChoice("target crop", image, painted)],
        knobs={"training": {"max_steps": args.steps, "max_time": max_time(seconds), "output_dir": str(output)},
               "system": {"accelerator": "cpu", "seed": args.seed}},
        start="checkpoint" if checkpoint else "scratch", checkpoint=checkpoint)
    cfg = build_config(default_config(gpu=False), choices)
    cfg.system.torch_threads = args.threads
    prepared = prepare_run(choices, cfg)
    started = time.monotonic()
    result = train(prepared.cfg, data=prepared.data, run_dir=prepared.run_dir)
    train_s = time.monotonic() - started
    probabilities = np.asarray(predict(str(result.last_checkpoint), image,
                                       PredictOptions(device="cpu", output_dtype="float32")).probabilities)
    foreground = (1.0 - probabilities[0] if probabilities.shape[0] > 1 else probabilities[0]) > 0.5
    return {"steps": int(result.global_step), "train_s": round(train_s, 1),
            **{k: round(v, 4) for k, v in loop.scores(foreground, truth).items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import h5py
    import torch

    from napari_connectomics.training.quiet import quiet_libraries

    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("napari_connectomics.training.trainer").setLevel(logging.INFO)  # "Initialised from ..."
    torch.set_num_threads(args.threads)
    if args.make_pretrained:
        make_pretrained(Path(args.pretrained), Path(args.data), args.pretrain_steps, args.threads)
    pretrained = str(Path(args.pretrained).resolve())
    with h5py.File(args.data, "r") as f:
        image, truth = np.asarray(f["image"][TARGET], np.uint8), np.asarray(f["label"][TARGET]) > 0
    if args.imaging == "shifted":
        image = shifted_imaging(image)
    painted = loop.paint_scribbles(truth)
    output = Path(tempfile.mkdtemp(prefix="finetune-scribbles-"))

    rows = []
    for seconds in (float(s) for s in args.seconds.split(",")):
        row: dict[str, Any] = {"seconds": seconds}
        for arm, checkpoint in (("scratch", None), ("finetuned", pretrained)):
            row[arm] = run_arm(image, painted, truth, seconds, checkpoint, args, output / f"{int(seconds)}s-{arm}")
            logger.warning("%s", json.dumps({"seconds": seconds, "arm": arm, **row[arm]}))
        rows.append(row)

    print(f"\nTarget z 133:165, y 200:456, x 300:556 of {args.data}, imaging {args.imaging}; "
          f"source {pretrained}; {args.threads} torch threads, seed {args.seed}.\n")
    print("| budget (s) | scratch IoU | fine-tuned IoU | difference | unpainted slices: scratch / fine-tuned "
          "| steps: scratch / fine-tuned |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s, f = row["scratch"], row["finetuned"]
        print(f"| {row['seconds']:g} | {s['iou']:.3f} | {f['iou']:.3f} | {f['iou'] - s['iou']:+.3f} "
              f"| {s['iou_unpainted']:.3f} / {f['iou_unpainted']:.3f} | {s['steps']} / {f['steps']} |")
    print("\nCommand: python benchmarks/finetune_scribbles.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

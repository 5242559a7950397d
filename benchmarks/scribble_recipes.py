"""Headless recipe comparison on the interactive loop's scribbles: IoU after N training steps.

The GUI benchmark (:mod:`interactive_loop`) measures the whole loop by the clock; this one asks a
narrower question, by steps, so it can run beside other jobs: which training recipe generalises
best from the same scribbles (three painted sections of the Lucchi crop) to the whole crop?
It trains the way the Train panel does (``TrainChoices`` -> ``build_config`` -> ``prepare_run`` on
the CPU preset, sparse labels, validation pieces held out), with config overrides given on the
command line, and at each of ``--steps`` predicts the whole crop with the current weights:

    python benchmarks/scribble_recipes.py --steps 160,320,840
    python benchmarks/scribble_recipes.py --steps 160,320,840 "model.filters=[8,16,32,64,128]"
    python benchmarks/scribble_recipes.py --context 1        # neighbouring sections as channels

Per step it prints one JSON line: foreground IoU at 0.5 (``iou``), after smoothing the probabilities
along z (Gaussian, sigma 1 section: ``iou_z_smoothed``), the best threshold of 0.3..0.9 and its IoU,
false positive / negative voxels and the last train and validation losses. ``--background-share``
changes how much of each painted section's background is painted (1.0: all of it);
``--unannotated-background W`` adds a loss (weight W) pulling unannotated voxels towards background;
``--border W,K`` replaces cross-entropy by one weighing annotated voxels within K px of the other
class 1 + W times; ``--balanced-ce`` weighs each class's annotated voxels by the inverse of its share; ``--dense-all`` paints every section with the expert label (the crop's ceiling);
``--correction N`` adds N mitochondrion dabs on one more section (``--correction-unclipped``: spilling
over its border, as a quick brush does; ``--correction-background M``: and M background dabs around the
object there, what the Train panel's objects-only warning asks for); ``--tta`` also scores each step with test-time augmentation; ``--save DIR`` keeps each step's
probabilities. ``--at-validation`` scores after every validation instead, with that validation's
loss and IoU (``val_loss``, ``val_iou``): which checkpoint a selection rule would pick, and its IoU.
``--snapshot-average K`` also scores the mean of the weights at the last K scorings (``iou_avg``): with
``--at-validation`` and ``training.snapshot_average=K`` that is the model the run validates and saves.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import interactive_loop as loop

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
AROUND_PX = 12  # how far from the object a user paints the background of a correction


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="160,320,840", help="comma-separated steps to score at")
    parser.add_argument("--context", type=int, default=0,
                        help="K sections either side stacked as input channels (2K+1 channels)")
    parser.add_argument("--background-share", type=float, default=loop.BACKGROUND_SHARE)
    parser.add_argument("--data", default=str(loop.DATA), help="the Lucchi HDF5 file")
    parser.add_argument("--unannotated-background", type=float, default=0.0, metavar="WEIGHT",
                        help="add a loss pulling unannotated voxels towards background, with this weight")
    parser.add_argument("--border", metavar="WEIGHT,WIDTH",
                        help="replace cross-entropy by one that weighs annotated voxels within WIDTH px of an "
                             "annotated voxel of another class 1 + WEIGHT times")
    parser.add_argument("--balanced-ce", action="store_true",
                        help="cross-entropy with each class weighted by the inverse of its annotated share")
    parser.add_argument("--dense-all", action="store_true",
                        help="paint every section fully (the expert label): the crop's ceiling, not a scribble run")
    parser.add_argument("--tta", action="store_true",
                        help="also score each step with test-time augmentation (iou_tta, and z-smoothed)")
    parser.add_argument("--save", metavar="DIR", help="also save each step's foreground probabilities (step<N>.npy)")
    parser.add_argument("--correction", type=int, default=0, metavar="N",
                        help="also paint N mitochondrion dabs (radius 3, as napari's brush size 6) on section "
                             "--correction-section, at seeded random mitochondrion pixels: a user's correction")
    parser.add_argument("--correction-section", type=int, default=10)
    parser.add_argument("--correction-unclipped", action="store_true",
                        help="the correction's dabs are whole disks, so they spill over the object's border")
    parser.add_argument("--correction-background", type=int, default=0, metavar="M",
                        help="with --correction: also paint M background dabs on that section, at seeded random "
                             f"background pixels within {AROUND_PX} px of the mitochondrion, clipped to the background")
    parser.add_argument("--snapshot-average", type=int, default=0, metavar="K",
                        help="also score the mean of the weights at the last K scorings (iou_avg), "
                             "batch-norm statistics averaged too")
    parser.add_argument("--at-validation", action="store_true",
                        help="score after every validation (up to the last of --steps), with its val loss and IoU")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (OmegaConf dotlist)")
    return parser.parse_args(argv)


UNANNOTATED_BACKGROUND = "UnannotatedBackgroundLoss"


def register_unannotated_background() -> None:
    """An experiment's loss: -log p(background) averaged over the *unannotated* voxels of a batch
    (a prior that most of an EM volume is background), registered for this process only."""
    import torch
    from torch import nn

    from napari_connectomics.data.conventions import IGNORE_INDEX
    from napari_connectomics.models.loss_registry import register_loss
    from napari_connectomics.registry import LOSSES

    class UnannotatedBackground(nn.Module):
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            unannotated = (target == IGNORE_INDEX).squeeze(1)
            if not unannotated.any():
                return logits.sum() * 0.0
            return -torch.log_softmax(logits, dim=1)[:, 0][unannotated].mean()

    if UNANNOTATED_BACKGROUND not in LOSSES:
        register_loss(UNANNOTATED_BACKGROUND)(lambda out_channels=2, **_: UnannotatedBackground())


BORDER_CE = "BorderWeightedCrossEntropy"
BALANCED_CE = "BalancedCrossEntropy"


def register_weighted_ce(name: str, voxel_weights: Any) -> None:
    """Register ``name`` for this process: cross-entropy over the annotated voxels, each weighted by
    ``voxel_weights(labels, annotated, classes)`` (a tensor shaped like ``labels``), normalised by
    the annotated voxels' total weight."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from napari_connectomics.data.conventions import IGNORE_INDEX
    from napari_connectomics.models.loss_registry import register_loss
    from napari_connectomics.registry import LOSSES

    class WeightedCE(nn.Module):
        def __init__(self, out_channels: int = 2):
            super().__init__()
            self.classes = max(out_channels, 2)

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            labels = target.squeeze(1)
            annotated = labels != IGNORE_INDEX
            weights = voxel_weights(labels, annotated, self.classes) * annotated.float()
            per_voxel = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")
            return (per_voxel * weights).sum() / weights.sum().clamp(min=1e-12)

    if name not in LOSSES:
        register_loss(name)(lambda out_channels=2, **_: WeightedCE(out_channels))


def border_weights(weight: float, width: int) -> Any:
    """Annotated voxels within ``width`` px of an annotated voxel of another class weigh ``1 +
    weight`` (the U-Net paper's border weights, for scribbles: only where both sides of a border
    were painted)."""
    def weights(labels: Any, annotated: Any, classes: int) -> Any:
        import torch
        import torch.nn.functional as F

        pool = F.max_pool2d if labels.ndim == 3 else F.max_pool3d
        border = torch.zeros_like(annotated)
        for c in range(classes):
            is_c = (labels == c).unsqueeze(1).float()
            near_c = pool(is_c, 2 * width + 1, stride=1, padding=width).squeeze(1) > 0
            border |= near_c & annotated & (labels != c)
        return 1.0 + weight * border.float()

    return weights


def balanced_weights(labels: Any, annotated: Any, classes: int) -> Any:
    """Each class weighs the inverse of its share of the batch's annotated voxels, so a few painted
    mitochondria count as much as the generously painted background."""
    import torch

    counts = torch.stack([((labels == c) & annotated).sum() for c in range(classes)]).float()
    return (1.0 / counts.clamp(min=1.0))[labels.clamp(min=0)]


def painted_correction(painted: np.ndarray, truth: np.ndarray, dabs: int, section: int,
                       radius: int = 3, seed: int = 0, clip: bool = True) -> np.ndarray:
    """``painted`` plus ``dabs`` mitochondrion (2) dabs on ``section``, centred on random true
    mitochondrion pixels: clipped to the object, or whole disks that spill over its border."""
    painted = painted.copy()
    for disk in random_disks(truth[section], dabs, radius, seed):
        painted[section][disk & truth[section] if clip else disk] = 2
    return painted


def random_disks(where: np.ndarray, count: int, radius: int, seed: int) -> Iterator[np.ndarray]:
    """``count`` disk masks of ``radius`` centred on seeded random true pixels of ``where`` (y, x)."""
    ys, xs = np.nonzero(where)
    yy, xx = np.mgrid[:where.shape[0], :where.shape[1]]
    for k in np.random.default_rng(seed).choice(len(ys), size=min(count, len(ys)), replace=False):
        yield (yy - ys[k]) ** 2 + (xx - xs[k]) ** 2 <= radius ** 2


def painted_background_around(painted: np.ndarray, truth: np.ndarray, dabs: int, section: int,
                              radius: int = 3, seed: int = 1) -> np.ndarray:
    """``painted`` plus ``dabs`` background (1) dabs on ``section`` centred on random background pixels
    within :data:`AROUND_PX` of a mitochondrion, clipped to the background: a careful user's answer to
    the objects-only warning."""
    from scipy import ndimage as ndi

    painted = painted.copy()
    objects = truth[section] > 0
    ring = ndi.binary_dilation(objects, iterations=AROUND_PX) & ~objects
    for disk in random_disks(ring, dabs, radius, seed):
        painted[section][disk & ~objects] = 1
    return painted


def stacked_sections(image: np.ndarray, k: int) -> np.ndarray:
    """(2k+1, z, y, x): each section with its k neighbours either side (mirrored at the ends)."""
    padded = np.pad(image, ((k, k), (0, 0), (0, 0)), mode="reflect")
    return np.stack([padded[i:i + image.shape[0]] for i in range(2 * k + 1)])


def score(foreground: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    from scipy import ndimage as ndi

    mask = foreground > 0.5
    best_iou, best_t = max((loop.iou(foreground > t, truth), t) for t in THRESHOLDS)
    return {"iou": round(loop.iou(mask, truth), 4),
            "iou_z_smoothed": round(loop.iou(ndi.gaussian_filter1d(foreground, 1.0, axis=0) > 0.5, truth), 4),
            "best_threshold": best_t, "iou_at_best": round(best_iou, 4),
            "false_positive": int((mask & ~truth).sum()), "false_negative": int((~mask & truth).sum())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import lightning as L
    from omegaconf import OmegaConf

    from napari_connectomics.inference.predict import PredictOptions, predict
    from napari_connectomics.training import train
    from napari_connectomics.training.quiet import quiet_libraries
    from napari_connectomics.widgets.defaults import default_config
    from napari_connectomics.widgets.training_request import PairChoice, TrainChoices, build_config, prepare_run

    quiet_libraries()
    logging.basicConfig(level=logging.WARNING)
    steps = sorted(int(s) for s in args.steps.split(","))
    image, truth = loop.load_crop(Path(args.data))
    loop.BACKGROUND_SHARE = args.background_share
    painted = (truth > 0).astype(np.uint8) + 1 if args.dense_all else loop.paint_scribbles(truth)
    if args.correction:
        painted = painted_correction(painted, truth, args.correction, args.correction_section,
                                     clip=not args.correction_unclipped)
        if args.correction_background:
            painted = painted_background_around(painted, truth, args.correction_background, args.correction_section)
    if args.context:
        image = stacked_sections(image, args.context)
    output = tempfile.mkdtemp(prefix="scribble-recipes-")
    choices = TrainChoices(pairs=[PairChoice("lucchi crop", image, painted)],
                           knobs={"training": {"max_steps": steps[-1], "output_dir": output}})
    cfg = build_config(default_config(gpu=False), choices)
    if args.context:
        cfg.model.in_channels = 2 * args.context + 1
    cfg.merge_with_dotlist(list(args.overrides))
    if args.unannotated_background > 0:
        register_unannotated_background()
        weights = cfg.model.loss_weights or [1.0] * len(cfg.model.loss_functions)
        cfg.model.loss_functions = [*cfg.model.loss_functions, UNANNOTATED_BACKGROUND]
        cfg.model.loss_weights = [*weights, args.unannotated_background]
    if args.border:
        border_weight, border_width = args.border.split(",")
        register_weighted_ce(BORDER_CE, border_weights(float(border_weight), int(border_width)))
        cfg.model.loss_functions = [BORDER_CE if name == "CrossEntropyLoss" else name
                                    for name in cfg.model.loss_functions]
    if args.balanced_ce:
        register_weighted_ce(BALANCED_CE, balanced_weights)
        cfg.model.loss_functions = [BALANCED_CE if name == "CrossEntropyLoss" else name
                                    for name in cfg.model.loss_functions]
    prepared = prepare_run(choices, cfg)
    started = time.monotonic()

    snapshots: list[dict[str, Any]] = []

    def averaged_model(model: Any) -> Any:
        """A copy of ``model`` with the mean of the last ``--snapshot-average`` snapshots' weights."""
        import copy

        from napari_connectomics.training.snapshot_average import mean_state

        averaged = copy.deepcopy(model)
        averaged.load_state_dict(mean_state(snapshots[-args.snapshot_average:]))
        return averaged

    class ScoreAtSteps(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step in steps and not args.at_validation:
                self.score(trainer, pl_module)
            if trainer.global_step >= steps[-1]:  # also when an override raised training.max_steps
                trainer.should_stop = True

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if args.at_validation and not trainer.sanity_checking:
                self.score(trainer, pl_module)

        def score(self, trainer: Any, pl_module: Any) -> None:
            seconds = time.monotonic() - started
            options = PredictOptions(device="cpu", output_dtype="float32")
            probabilities = np.asarray(predict(pl_module.model, image, options, cfg=prepared.cfg).probabilities,
                                       np.float32)
            if args.tta:
                options = PredictOptions(device="cpu", output_dtype="float32", tta=True)
                with_tta = np.asarray(predict(pl_module.model, image, options, cfg=prepared.cfg).probabilities,
                                      np.float32)
                tta_foreground = 1.0 - with_tta[0] if with_tta.shape[0] > 1 else with_tta[0]
                tta_scores = score(tta_foreground, truth)
                row_tta = {"iou_tta": tta_scores["iou"], "iou_tta_z_smoothed": tta_scores["iou_z_smoothed"]}
            else:
                row_tta = {}
            if args.snapshot_average:
                snapshots.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})
                options = PredictOptions(device="cpu", output_dtype="float32")
                averaged = np.asarray(predict(averaged_model(pl_module.model), image, options,
                                              cfg=prepared.cfg).probabilities, np.float32)
                avg_foreground = 1.0 - averaged[0] if averaged.shape[0] > 1 else averaged[0]
                row_tta = {**row_tta, "iou_avg": score(avg_foreground, truth)["iou"]}
            pl_module.train()
            foreground = 1.0 - probabilities[0] if probabilities.shape[0] > 1 else probabilities[0]
            if args.save:
                Path(args.save).mkdir(parents=True, exist_ok=True)
                np.save(Path(args.save) / f"step{trainer.global_step}.npy", foreground.astype(np.float16))
            metrics = trainer.callback_metrics
            row = {"step": int(trainer.global_step), "seconds": round(seconds, 1), **score(foreground, truth), **row_tta,
                   "train_loss": round(float(metrics.get("train/loss", float("nan"))), 4),
                   "val_loss": round(float(metrics.get("val/loss", float("nan"))), 4),
                   "val_iou": round(float(metrics.get("val/iou", float("nan"))), 4)}
            print(json.dumps(row), flush=True)

    print(json.dumps({"overrides": list(args.overrides), "context": args.context,
                      "background_share": args.background_share, "config": OmegaConf.to_container(prepared.cfg.model)}))
    train(prepared.cfg, data=prepared.data, callbacks=[ScoreAtSteps()], run_dir=prepared.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The embedded default, end to end: train briefly, predict, post-process, evaluate, write outputs.

Without ``--data`` it trains a small 2D U-Net on one synthetic EM volume and segments another
(different seed); with ``--data file.h5:image`` (and its labels beside it, ``:label``) it holds out
the last 20 % of z of that volume instead. ``run_architecture_sweep`` is the quick check that every
registered network builds and runs on the sample.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DemoResult", "DemoRow", "run_architecture_sweep", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoRow:
    architecture: str
    spatial_dims: int
    parameters: int
    output_shape: tuple[int, ...]
    seconds: float


@dataclass(frozen=True)
class DemoResult:
    output_dir: Path
    checkpoint: Path
    prediction: Path
    overlay: Path
    scores: dict[str, Any]


def demo_config(output_dir: Path, steps: int) -> Any:
    """A 2D U-Net that a 2-core CPU trains in well under a minute."""
    from .config import load_config

    return load_config(overrides=[
        "model.architecture=monai_unet", "model.spatial_dims=2", "model.filters=[16,32,64,128]",
        "model.loss_functions=[DiceLoss,CrossEntropyLoss]", "model.loss_weights=[1.0,1.0]",
        "data.patch_size=[128,128]", "data.batch_size=8", f"data.samples_per_epoch={8 * steps}",
        "training.val_patches=8", f"training.max_steps={steps}", "optimizer.lr=3e-3",
        "scheduler.name=cosine", "scheduler.warmup_steps=10", "checkpoint.monitor=val/iou", "checkpoint.mode=max",
        f"training.output_dir={output_dir / 'runs'}", "training.name=demo", "system.torch_threads=2"])


def _demo_data(data: str | None, seed: int) -> tuple[Any, Any, Any, Any, tuple[float, ...]]:
    """(train image, train labels, test image, test labels, voxel size)."""
    from .data.synthetic import make_synthetic_em
    from .data.volumes import open_volume, parse_volume_path

    if data is None:
        train = make_synthetic_em(shape=(32, 256, 256), seed=seed)
        test = make_synthetic_em(shape=(16, 256, 256), seed=seed + 1)
        return train.image, train.mitochondria, test.image, test.mitochondria, train.voxel_size
    path, key = parse_volume_path(data)
    image = open_volume(data).read()
    label_key = "label" if key in (None, "image", "raw") else key.replace("image", "label")
    labels = (open_volume(f"{path}:{label_key}").read() > 0).astype(np.uint8)
    split = int(round(image.shape[0] * 0.8))
    return image[:split], labels[:split], image[split:], labels[split:], (1.0, 1.0, 1.0)


def run_demo(output_dir: str | Path = "outputs/demo", data: str | None = None, steps: int = 300,
             seed: int = 0) -> DemoResult:
    """Train, predict, post-process and evaluate; write the run, the prediction, an overlay PNG, scores."""
    from .inference.metrics import evaluate
    from .inference.postprocess import postprocess
    from .inference.predict import PredictOptions, predict
    from .inference.stores import write_labels
    from .training import TrainingData, train

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    train_image, train_labels, test_image, test_labels, voxel_size = _demo_data(data, seed)
    logger.info("Demo: training on %s, testing on %s", train_image.shape, test_image.shape)

    start = time.perf_counter()
    result = train(demo_config(output_dir, steps), data=TrainingData(train=[(train_image, train_labels)]))
    checkpoint = result.checkpoint
    logger.info("Trained %d steps in %.0f s", result.global_step, time.perf_counter() - start)

    prediction_path = output_dir / "prediction.zarr"
    predicted = predict(checkpoint, test_image, PredictOptions(), output=prediction_path, overwrite=True)
    probabilities = np.asarray(predicted.probabilities[:], dtype=np.float32)
    if probabilities.max() > 1.0:  # stored as uint8 0-255
        probabilities /= 255.0
    labels = postprocess(probabilities, "cc", threshold=0.5, min_size=50)
    write_labels(prediction_path, labels, name="labels", overwrite=True)

    scores = evaluate(labels, test_labels, instance=False)
    (output_dir / "scores.json").write_text(json.dumps(scores, indent=2))
    overlay = write_overlay(output_dir / "overlay.png", test_image, test_labels, labels)
    logger.info("Demo done: foreground IoU %.3f, Dice %.3f on the held-out volume; outputs in %s",
                scores["iou"], scores["dice"], output_dir)
    return DemoResult(output_dir, checkpoint, prediction_path, overlay, scores)


def write_overlay(path: Path, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> Path:
    """The middle slice: grey EM, ground truth outlined in green, prediction outlined in magenta."""
    import imageio.v3 as iio
    from skimage.segmentation import find_boundaries

    z = image.shape[0] // 2
    grey = image[z].astype(np.float32)
    grey = (255 * (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[find_boundaries(truth[z] > 0, mode="inner")] = (40, 220, 40)
    rgb[find_boundaries(prediction[z] > 0, mode="inner")] = (230, 40, 230)
    iio.imwrite(path, rgb)
    return path


def _normalise(image: np.ndarray) -> np.ndarray:
    """Percentile scaling to [0, 1], as training does by default."""
    low, high = (float(v) for v in np.percentile(image, (1, 99)))
    return np.clip((image.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1, dtype=np.float32)


def run_architecture_sweep(shape: tuple[int, int, int] = (32, 128, 128), seed: int = 0) -> list[DemoRow]:
    """Forward the synthetic sample through each available architecture (3D, and 2D on one slice)."""
    import torch

    from .config import load_config
    from .data.synthetic import make_synthetic_em
    from .models import build_model
    from .models.architectures.registry import get_architecture_spec, is_architecture_available, list_architectures

    sample = make_synthetic_em(shape=shape, seed=seed)
    volume = torch.from_numpy(_normalise(sample.image))
    logger.info("Synthetic EM sample %s, %.1f %% mitochondria, %d instances", sample.image.shape,
                100 * sample.mitochondria.mean(), int(sample.instances.max()))
    torch.manual_seed(seed)
    rows: list[DemoRow] = []
    for name in list_architectures():
        if not is_architecture_available(name):
            logger.warning("%-20s skipped: missing %s", name, ", ".join(get_architecture_spec(name).requires))
            continue
        for dims in get_architecture_spec(name).spatial_dims:
            image = volume if dims == 3 else volume[volume.shape[0] // 2]
            cfg = load_config(overrides=[f"model.architecture={name}", f"model.spatial_dims={dims}",
                                         f"data.patch_size={list(image.shape)}"])
            model = build_model(cfg).eval()
            start = time.perf_counter()
            with torch.inference_mode():
                output = model(image[None, None])
            seconds = time.perf_counter() - start
            row = DemoRow(name, dims, model.get_model_info()["parameters"], tuple(output.shape), seconds)
            rows.append(row)
            logger.info("%-20s %dD %12s parameters -> output %s in %.2f s", name, dims,
                        f"{row.parameters:,}", row.output_shape, seconds)
    logger.info("Architecture sweep done: %d networks ran on the synthetic EM sample.", len(rows))
    return rows

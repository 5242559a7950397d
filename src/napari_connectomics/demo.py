"""The embedded default: the synthetic EM sample through every registered architecture.

Until training and inference land this builds each available network from the default config
and runs it on the synthetic volume, so a fresh install proves the whole model layer works.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["DemoRow", "run_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoRow:
    architecture: str
    spatial_dims: int
    parameters: int
    output_shape: tuple[int, ...]
    seconds: float


def _normalise(image: np.ndarray) -> np.ndarray:
    """Percentile scaling to [0, 1], as training will do by default."""
    low, high = (float(v) for v in np.percentile(image, (1, 99)))
    return np.clip((image.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1, dtype=np.float32)


def run_demo(shape: tuple[int, int, int] = (32, 128, 128), seed: int = 0) -> list[DemoRow]:
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
    logger.info("Demo done: %d networks ran on the synthetic EM sample.", len(rows))
    return rows

"""napari sample data: the synthetic EM volume with its mitochondria instance labels.

Imports numpy/scipy only (no torch), so offering the sample costs napari nothing at start-up.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_synthetic_sample", "SAMPLE_SHAPE"]

SAMPLE_SHAPE = (32, 256, 256)


def make_synthetic_sample(shape: tuple[int, ...] = SAMPLE_SHAPE, seed: int = 0) -> list[tuple[Any, dict, str]]:
    """Layer data tuples: the EM image and the mitochondria instances, at the sample's voxel size."""
    from .data.synthetic import make_synthetic_em

    sample = make_synthetic_em(shape=shape, seed=seed)
    scale = tuple(sample.voxel_size[-sample.image.ndim:])
    return [
        (sample.image, {"name": "synthetic EM", "scale": scale, "metadata": {"voxel_size_nm": scale}}, "image"),
        (sample.instances, {"name": "mitochondria (ground truth)", "scale": scale, "opacity": 0.5}, "labels"),
    ]

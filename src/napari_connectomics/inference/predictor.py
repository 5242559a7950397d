"""The network on a batch of windows: device choice, arithmetic, activation, test-time augmentation.

:class:`WindowPredictor` is what every engine calls; it hides 2D networks (windows of one
section) and TTA (flips, in-plane quarter turns, probabilities averaged) behind one call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import combinations
from typing import Any

import torch

from ..models.architectures.base import main_output

__all__ = ["MIXED_PRECISION_DTYPES", "WindowPredictor", "activate", "activation_for", "autocast_dtype",
           "model_on", "resolve_device", "tta_transforms"]


def activation_for(cfg: Any) -> str:
    """Sigmoid for one output channel (binary target), softmax over the channels otherwise
    (two-class binary, semantic classes, instance background/interior/contour)."""
    return "sigmoid" if int(cfg.model.out_channels) == 1 else "softmax"


def activate(logits: torch.Tensor, activation: str, dim: int = 1) -> torch.Tensor:
    if activation == "identity":  # a BioImage.IO model without postprocessing: its output as is
        return logits
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=dim)


def resolve_device(name: str) -> torch.device:
    """'auto': the GPU when torch sees one, else the CPU; an unavailable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but torch sees no CUDA GPU; "
                             "use device='auto' or 'cpu'")
        return torch.device("cuda")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' was asked for but is not available; "
                             "use device='auto' or 'cpu'")
        return torch.device("mps")
    return torch.device("cpu")


# Lightning's mixed precisions and the dtype each autocasts to (training reads this too)
MIXED_PRECISION_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the forward pass autocasts to, or None for float32: only on a CUDA GPU (a CPU's
    float16/bfloat16 convolutions are slower than float32 there). Not the default: on an H200,
    float16 autocast moved trained networks' probabilities by up to 4e-3 (MedNeXt-S) and 2e-2 (2D
    U-Net), far more than a float16 output's rounding, for 0-40 % less time (docs/benchmarks.md)."""
    if device.type != "cuda":
        return None
    return MIXED_PRECISION_DTYPES.get(precision)


def tta_transforms(spatial_dims: int, window: Sequence[int]) -> list[tuple[tuple[int, ...], int]]:
    """(flipped axes, quarter turns) pairs: every flip of the spatial axes (y, x for 2D networks,
    z, y, x for 3D), each also turned by 90 degrees in-plane when the window is square in y-x."""
    axes = (3, 4) if spatial_dims == 2 else (2, 3, 4)
    flips = [combo for r in range(len(axes) + 1) for combo in combinations(axes, r)]
    turns = (0, 1) if window[-1] == window[-2] else (0,)
    return [(flip, k) for k in turns for flip in flips]


class WindowPredictor:
    """A batch of windows (N, C, z, y, x) on ``device`` -> the network's output there: logits,
    or with ``tta`` the mean of the probabilities over all transforms (a running sum, never a
    stack of passes). A 2D network gets windows of one section as (N, C, y, x)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, spatial_dims: int,
                 activation: str, tta: bool, window: Sequence[int],
                 autocast: torch.dtype | None = None) -> None:
        self.model, self.device, self.autocast = model, device, autocast
        self.spatial_dims, self.activation, self.tta = spatial_dims, activation, tta
        self.transforms = tta_transforms(spatial_dims, window) if tta else [((), 0)]

    @property
    def returns_probabilities(self) -> bool:
        return self.tta

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if not self.tta:
                return self._forward(batch)
            total: torch.Tensor | None = None
            for flips, turns in self.transforms:
                logits = self._forward(_transform(batch, flips, turns))
                probabilities = _untransform(activate(logits, self.activation), flips, turns)
                total = probabilities if total is None else total.add_(probabilities)
            assert total is not None
            return total / len(self.transforms)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            if self.spatial_dims == 2:
                return main_output(self.model(batch[:, :, 0])).float()[:, :, None]
            return main_output(self.model(batch)).float()


def _transform(batch: torch.Tensor, flips: tuple[int, ...], turns: int) -> torch.Tensor:
    batch = torch.flip(batch, flips) if flips else batch
    return torch.rot90(batch, turns, (3, 4)) if turns else batch


def _untransform(batch: torch.Tensor, flips: tuple[int, ...], turns: int) -> torch.Tensor:
    batch = torch.rot90(batch, -turns, (3, 4)) if turns else batch
    return torch.flip(batch, flips) if flips else batch


@contextmanager
def model_on(model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """The model in eval mode on ``device``; a caller's model gets its mode and device back."""
    was_training = model.training
    parameter = next(model.parameters(), None)
    previous = parameter.device if parameter is not None else None
    model.eval().to(device)
    try:
        yield model
    finally:
        model.train(was_training)
        if previous is not None:
            model.to(previous)

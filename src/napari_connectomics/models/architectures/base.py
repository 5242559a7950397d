"""The interface every network of the registry presents to training and inference."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ConnectomicsModel", "ModelOutput", "main_output"]

# A tensor, or in training with deep supervision {'output': full, 'ds_1': 1/2, 'ds_2': 1/4, ...}.
ModelOutput = torch.Tensor | dict[str, torch.Tensor]


class ConnectomicsModel(nn.Module):
    """Base class: a network plus the facts the engine needs about it.

    Deep-supervision contract: in training mode a model with ``supports_deep_supervision`` returns
    ``{'output': full, 'ds_1': 1/2, ..., 'ds_{k}': 1/2**k}``; in eval mode it returns the
    full-resolution tensor only (and should skip computing the extra heads).
    """

    def __init__(
        self,
        *,
        architecture: str = "",
        spatial_dims: int = 3,
        supports_deep_supervision: bool = False,
        output_scales: int = 1,
        size_multiple: int = 1,
        fixed_input_size: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.architecture = architecture or type(self).__name__
        self.spatial_dims = spatial_dims
        self.supports_deep_supervision = supports_deep_supervision
        self.output_scales = output_scales if supports_deep_supervision else 1
        self.size_multiple = size_multiple
        self.fixed_input_size = list(fixed_input_size) if fixed_input_size is not None else None

    def forward(self, x: torch.Tensor) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_model_info(self) -> dict[str, Any]:
        """Name, deep supervision, scales and parameter counts, for logs, the CLI and the GUI."""
        parameters = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {
            "name": self.architecture,
            "class": type(self).__name__,
            "deep_supervision": self.supports_deep_supervision,
            "output_scales": self.output_scales,
            "parameters": parameters,
            "trainable_parameters": trainable,
            "spatial_dims": self.spatial_dims,
            "size_multiple": self.size_multiple,
            "fixed_input_size": self.fixed_input_size,
        }


def main_output(output: ModelOutput) -> torch.Tensor:
    """The full-resolution tensor of a model output, whatever its form."""
    return output["output"] if isinstance(output, dict) else output

"""Adapters that give third-party networks the ConnectomicsModel interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ConnectomicsModel, ModelOutput

__all__ = ["MONAIModelWrapper", "MedNeXtModel"]


class MONAIModelWrapper(ConnectomicsModel):
    """A MONAI network with a single full-resolution output."""

    def __init__(self, model: nn.Module, **info: Any) -> None:
        super().__init__(**info)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MedNeXtModel(ConnectomicsModel):
    """MedNeXt (ours or the official one), turning its list of scales into the dict contract.

    The network's ``do_ds`` flag is switched per call: the extra heads run in training only, so
    inference neither computes nor returns them.
    """

    def __init__(self, network: nn.Module, **info: Any) -> None:
        super().__init__(**info)
        self.network = network

    def forward(self, x: torch.Tensor) -> ModelOutput:
        with_heads = self.supports_deep_supervision and self.training
        self.network.do_ds = with_heads
        outputs = self.network(x)
        if not with_heads:
            return outputs
        return {"output": outputs[0], **{f"ds_{i}": out for i, out in enumerate(outputs[1:], start=1)}}

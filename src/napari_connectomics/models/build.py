"""build_model(cfg): the one way the engine turns a config into a network."""

from __future__ import annotations

import logging
from typing import Any

from ..config import as_config
from .architectures.registry import get_architecture_builder

__all__ = ["build_model", "count_parameters"]

logger = logging.getLogger(__name__)


def build_model(cfg: Any, device: Any = None):
    """Build the network named by ``cfg.model.architecture`` and log what was built.

    ``cfg`` may be a full config from :func:`load_config` or a partial mapping (only a ``model``
    section, say), which is merged onto the defaults and validated first. The model stays on the
    CPU unless ``device`` is given: Lightning moves it (and wraps it for DDP) when training.
    """
    cfg = as_config(cfg)
    model = get_architecture_builder(cfg.model.architecture)(cfg)
    info = model.get_model_info()
    logger.info(
        "Model %s: %s parameters, deep supervision %s, %dD",
        cfg.model.architecture,
        f"{info['parameters']:,}",
        "on (%d scales)" % info["output_scales"] if info["deep_supervision"] else "off",
        info["spatial_dims"],
    )
    if device is not None:
        model = model.to(device)
    return model


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())

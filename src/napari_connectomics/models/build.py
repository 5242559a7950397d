"""build_model(cfg): the one way the engine turns a config into a network; model_info(cfg) for
its facts without allocating it."""

from __future__ import annotations

import logging
from typing import Any

from ..config import as_config
from .architectures.registry import get_architecture_spec

__all__ = ["build_model", "count_parameters", "model_info"]

logger = logging.getLogger(__name__)


def build_model(cfg: Any, device: Any = None):
    """Build the network named by ``cfg.model.architecture`` and log what was built.

    ``cfg`` may be a full config from :func:`load_config` or a partial mapping (only a ``model``
    section, say), which is merged onto the defaults and validated first. The model stays on the
    CPU unless ``device`` is given: Lightning moves it (and wraps it for DDP) when training.
    """
    cfg = as_config(cfg)
    model = get_architecture_spec(cfg.model.architecture).build(cfg)
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


def model_info(cfg: Any) -> dict[str, Any]:
    """``get_model_info()`` of the network ``cfg`` (validated) describes, as build_model builds it.

    Built on the meta device, so even MedNeXt-L or UNETR allocate nothing and take milliseconds;
    networks whose constructor reads tensor values (SwinUNETR) are built on the CPU instead. No
    log line: the CLI's ``info`` and the Model panel call it on every option change.
    """
    import torch

    spec = get_architecture_spec(cfg.model.architecture)
    try:
        with torch.device("meta"):
            model = spec.build(cfg)
    except (RuntimeError, NotImplementedError):
        model = spec.build(cfg)
    return model.get_model_info()


def count_parameters(cfg_or_model: Any) -> int:
    """Parameters of a model, or of the network a (validated) config describes (see model_info)."""
    import torch

    if isinstance(cfg_or_model, torch.nn.Module):
        return int(sum(p.numel() for p in cfg_or_model.parameters()))
    return int(model_info(cfg_or_model)["parameters"])

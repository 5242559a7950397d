"""UpKern: initialise a large-kernel MedNeXt from a trained small-kernel one (MedNeXt paper, 2.3).

Training k=5/7 from scratch performs worse than training k=3 first and then upsampling its
kernels; every weight that does not depend on the kernel size is reused as is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["resize_kernel", "upkern_load_weights"]

logger = logging.getLogger(__name__)

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_kernel(weight: torch.Tensor, spatial_size: tuple[int, ...]) -> torch.Tensor:
    """Interpolate a conv weight (out, in/groups, *k) to ``spatial_size``.

    Out-channels act as the batch and in-channels (per group) as channels, so each filter is
    resized on its own with (tri/bi)linear interpolation, ``align_corners=False``.
    """
    mode = _MODES[len(spatial_size)]
    resized = F.interpolate(weight.float(), size=spatial_size, mode=mode, align_corners=False)
    return resized.to(weight.dtype)


def _only_kernel_differs(target: torch.Size, source: torch.Size) -> bool:
    """Same rank and same channel dims (first two), different spatial kernel: resizable."""
    return (len(target) == len(source) and len(target) - 2 in _MODES
            and target[:2] == source[:2] and target[2:] != source[2:])


def upkern_load_weights(target: nn.Module,
                        source: nn.Module | Mapping[str, torch.Tensor]) -> nn.Module:
    """Load ``source``'s weights into ``target``, resizing depthwise kernels that differ in size.

    For each state-dict key present in both: copy when the shapes match (1x1 convs, biases, norm
    and GRN parameters), interpolate when only the spatial kernel differs, otherwise leave the
    target's initialisation and log a warning. Keys only in ``target`` keep their initialisation.

    Args:
        target: network to initialise, e.g. ``create_mednext_v1(..., kernel_size=5)``.
        source: trained network (or its state dict) of the same size, e.g. with ``kernel_size=3``.

    Returns:
        ``target``, modified in place.
    """
    source_sd = source.state_dict() if isinstance(source, nn.Module) else source
    new_sd = target.state_dict()
    copied, resized, mismatched = 0, 0, []
    for key, current in new_sd.items():
        if key not in source_sd:
            continue
        value = source_sd[key].detach()
        if value.shape == current.shape:
            new_sd[key] = value
            copied += 1
        elif _only_kernel_differs(current.shape, value.shape):
            new_sd[key] = resize_kernel(value, tuple(current.shape[2:]))
            resized += 1
        else:
            mismatched.append(f"{key}: {tuple(value.shape)} -> {tuple(current.shape)}")
    with torch.no_grad():
        target.load_state_dict(new_sd, strict=True)

    only_target = len(new_sd) - copied - resized - len(mismatched)
    logger.info("UpKern: %d tensors copied, %d kernels resized, %d kept their init "
                "(%d only in target, %d incompatible shapes)",
                copied, resized, only_target + len(mismatched), only_target, len(mismatched))
    if mismatched:
        logger.warning("UpKern skipped tensors whose channel shapes differ: %s",
                       "; ".join(mismatched))
    return target

"""2.5D input: the facts that follow from ``data.context_sections`` and ``data.context_step``.

A 2D network with context ``k`` sees each section together with its ``k`` neighbours on each side as
input channels (see :mod:`napari_connectomics.data.sections` for the channel order and the ends of
the volume), so it is built for ``model.in_channels * (2k + 1)`` channels: :func:`network_in_channels`
is the one place that says so. The step between neighbours is ``data.context_step``, or, unset, the
rule of :func:`context_step`. Both are read from the config a checkpoint carries, so a network
predicts with the channels it was trained on.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError

__all__ = ["CONTEXT_SPACING", "check_context", "context_step", "network_in_channels"]

# Automatic data.context_step: neighbours at least this many in-plane voxel sizes apart along z.
CONTEXT_SPACING = 2.0


def context_step(cfg: Any) -> int:
    """Sections between two context neighbours: ``data.context_step``, or the smallest step that
    puts them at least :data:`CONTEXT_SPACING` in-plane voxel sizes apart, from ``data.voxel_size``
    (1 for anisotropic EM, whose z spacing is at least twice the in-plane one; 2 for isotropic
    FIB-SEM), so that the neighbours add context rather than near-copies of the section."""
    data = cfg.data
    if data.context_step is not None:
        return int(data.context_step)
    z, y, x = (float(v) for v in data.voxel_size)
    return max(1, math.ceil(round(CONTEXT_SPACING * min(y, x) / z, 6)))


def network_in_channels(cfg: Any) -> int:
    """The channels the network takes: the image's channels times the 2k + 1 sections it sees."""
    return int(cfg.model.in_channels) * (2 * int(cfg.data.context_sections) + 1)


def check_context(cfg: Any) -> None:
    """Context sections are channels of a 2D network: a 3D network already sees its neighbours."""
    sections = int(cfg.data.context_sections)
    if sections > 0 and int(cfg.model.spatial_dims) != 2:
        raise ConfigError("data.context_sections", sections,
                          "context sections are extra input channels of a 2D network; set "
                          "model.spatial_dims=2, or data.context_sections=0 for a 3D network")

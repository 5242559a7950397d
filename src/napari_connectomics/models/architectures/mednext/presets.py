"""MedNeXt v1's facts without torch: the S/B/M/L presets, kernel sizes, levels and stages.

The registry (``mednext_models.py``), config validation and the network all read them from here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHECKPOINT_STYLES", "MEDNEXT_KERNEL_SIZES", "MEDNEXT_PRESETS", "NUM_LEVELS", "NUM_STAGES",
           "PRESET_DEFAULT", "SIZE_MULTIPLE"]

NUM_STAGES = 9  # enc0..enc3, bottleneck, dec3..dec0
NUM_LEVELS = 4  # stride-2 resamplings
SIZE_MULTIPLE = 2**NUM_LEVELS
CHECKPOINT_STYLES = (None, "outside_block")

_B_EXP_R = (2, 3, 4, 4, 4, 4, 4, 3, 2)
_L_STAGES = (3, 4, 8, 8, 8, 8, 8, 4, 3)


def _preset(exp_r: int | tuple[int, ...], block_counts: tuple[int, ...],
            checkpoint_style: str | None) -> dict[str, Any]:
    """One preset; every preset uses both residual kinds, as in the paper."""
    return dict(exp_r=exp_r, block_counts=block_counts, checkpoint_style=checkpoint_style,
                do_res=True, do_res_up_down=True)


# The table of the paper / original code (base channels 32). As in the original, M and L
# checkpoint every block by default, trading recomputation for activation memory.
MEDNEXT_PRESETS: dict[str, dict[str, Any]] = {
    "S": _preset(2, (2,) * 9, None),
    "B": _preset(_B_EXP_R, (2,) * 9, None),
    "M": _preset(_B_EXP_R, (3, 4, 4, 4, 4, 4, 4, 4, 3), "outside_block"),
    "L": _preset(_L_STAGES, _L_STAGES, "outside_block"),
}
MEDNEXT_KERNEL_SIZES = (3, 5, 7)
# Sentinel default of ``checkpoint_style``: use the preset's choice. ``None`` switches it off.
PRESET_DEFAULT = "preset"



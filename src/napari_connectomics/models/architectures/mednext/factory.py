"""The S/B/M/L presets of MedNeXt v1 and ``create_mednext_v1``, the original's entry point."""

from __future__ import annotations

from .blocks import Dim, NormType
from .network import MedNeXt
from .presets import MEDNEXT_KERNEL_SIZES, MEDNEXT_PRESETS, PRESET_DEFAULT

__all__ = ["MEDNEXT_KERNEL_SIZES", "MEDNEXT_PRESETS", "PRESET_DEFAULT", "create_mednext_v1"]


def create_mednext_v1(
    num_input_channels: int,
    num_classes: int,
    model_id: str,
    kernel_size: int = 3,
    deep_supervision: bool = False,
    dim: Dim = "3d",
    norm_type: NormType = "group",
    grn: bool = False,
    checkpoint_style: str | None = PRESET_DEFAULT,
) -> MedNeXt:
    """Build a preset MedNeXt v1 with the original's signature plus a few opt-in extras.

    Args:
        num_input_channels: input image channels.
        num_classes: output channels.
        model_id: ``'S'``, ``'B'``, ``'M'`` or ``'L'``.
        kernel_size: 3, 5 or 7 (train k=5/7 from a k=3 network with ``upkern_load_weights``).
        deep_supervision: build and return the four extra low-resolution heads.
        dim: ``'3d'`` (as the original presets) or ``'2d'``.
        norm_type: ``'group'`` (original) or ``'layer'``.
        grn: global response normalisation; off in the original presets.
        checkpoint_style: ``None`` or ``'outside_block'``; by default the preset's choice
            (off for S/B, on for M/L).

    Raises:
        ValueError: for an unknown ``model_id`` or a kernel size other than 3, 5, 7.
    """
    if model_id not in MEDNEXT_PRESETS:
        raise ValueError(f"unknown MedNeXt model_id {model_id!r}; "
                         f"valid choices: {', '.join(MEDNEXT_PRESETS)}")
    if kernel_size not in MEDNEXT_KERNEL_SIZES:
        raise ValueError(f"MedNeXt kernel_size must be one of "
                         f"{', '.join(map(str, MEDNEXT_KERNEL_SIZES))}, got {kernel_size!r}")
    preset = MEDNEXT_PRESETS[model_id]
    if checkpoint_style == PRESET_DEFAULT:
        checkpoint_style = preset["checkpoint_style"]
    exp_r = preset["exp_r"]
    return MedNeXt(
        in_channels=num_input_channels,
        n_channels=32,
        n_classes=num_classes,
        exp_r=exp_r if isinstance(exp_r, int) else list(exp_r),
        kernel_size=kernel_size,
        deep_supervision=deep_supervision,
        do_res=preset["do_res"],
        do_res_up_down=preset["do_res_up_down"],
        checkpoint_style=checkpoint_style,
        block_counts=list(preset["block_counts"]),
        norm_type=norm_type,
        dim=dim,
        grn=grn,
    )

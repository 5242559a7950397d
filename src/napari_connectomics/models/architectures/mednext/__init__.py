"""MedNeXt v1, implemented here and weight-compatible with the original ``nnunet_mednext``.

``create_mednext_v1`` builds the S/B/M/L presets, ``MedNeXt`` takes every parameter, and
``upkern_load_weights`` initialises a large-kernel network from a trained small-kernel one.
"""

from .blocks import LayerNorm, MedNeXtBlock, MedNeXtDownBlock, MedNeXtUpBlock, OutBlock
from .factory import MEDNEXT_KERNEL_SIZES, MEDNEXT_PRESETS, create_mednext_v1
from .network import SIZE_MULTIPLE, MedNeXt, check_input_shape
from .upkern import upkern_load_weights

__all__ = [
    "MEDNEXT_KERNEL_SIZES",
    "MEDNEXT_PRESETS",
    "SIZE_MULTIPLE",
    "LayerNorm",
    "MedNeXt",
    "MedNeXtBlock",
    "MedNeXtDownBlock",
    "MedNeXtUpBlock",
    "OutBlock",
    "check_input_shape",
    "create_mednext_v1",
    "upkern_load_weights",
]

"""MedNeXt v1, implemented here and weight-compatible with the original ``nnunet_mednext``.

``create_mednext_v1`` builds the S/B/M/L presets, ``MedNeXt`` takes every parameter, and
``upkern_load_weights`` initialises a large-kernel network from a trained small-kernel one.
The torch-free facts (presets, kernel sizes, levels) are in ``presets``; the package imports
torch only when a network name is first used, so the registry can read the facts cheaply.
"""

from __future__ import annotations

import importlib
from typing import Any

from .presets import MEDNEXT_KERNEL_SIZES, MEDNEXT_PRESETS, SIZE_MULTIPLE

_LAZY = {
    "LayerNorm": "blocks", "MedNeXtBlock": "blocks", "MedNeXtDownBlock": "blocks", "MedNeXtUpBlock": "blocks",
    "OutBlock": "blocks", "create_mednext_v1": "factory", "MedNeXt": "network", "check_input_shape": "network",
    "upkern_load_weights": "upkern",
}

__all__ = ["MEDNEXT_KERNEL_SIZES", "MEDNEXT_PRESETS", "SIZE_MULTIPLE", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

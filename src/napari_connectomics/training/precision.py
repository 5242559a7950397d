"""Which arithmetic a training run uses: ``training.precision``, with ``auto`` resolved per device.

bfloat16 autocast pays only where the hardware computes bfloat16 natively: on a CPU with
AVX512-BF16 or AMX a 2D U-Net step takes 0.24 s instead of 0.40 s (docs/benchmarks.md), while a
CPU without them emulates it and gets slower. ``auto`` therefore asks the device, so the panels'
configs and the CPU recipe can say ``auto`` and run fast on every machine. The step probe and the
trainer both read :func:`resolve_precision`, so the estimate the panel shows is the step training takes.
"""

from __future__ import annotations

import logging

import torch

from ..inference.predictor import MIXED_PRECISION_DTYPES

__all__ = ["AUTO", "autocast_dtype", "cpu_computes_bf16", "resolve_precision", "training_autocast"]

logger = logging.getLogger(__name__)

AUTO = "auto"
HALF_PRECISIONS = ("16-mixed", "16", "16-true")  # float16: CUDA only


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), so autocast to it is faster."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision for ``accelerator`` ("cpu", "gpu", ...): ``auto`` becomes bf16-mixed
    where the device computes bfloat16 natively, else 16-mixed on a GPU and 32-true elsewhere;
    float16 on a CPU falls back to 32-true with a warning."""
    precision = str(precision)
    on_cuda = accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    if precision == AUTO:
        if on_cuda:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "bf16-mixed" if accelerator == "cpu" and cpu_computes_bf16() else "32-true"
    if accelerator == "cpu" and precision in HALF_PRECISIONS:
        logger.warning("training.precision=%s needs a GPU: training in 32-bit on the CPU", precision)
        return "32-true"
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved mixed precision (None: no autocast)."""
    return MIXED_PRECISION_DTYPES.get(precision)


def training_autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context a run in ``precision`` trains under on ``device`` (disabled when it
    resolves to no mixed precision), for loops that time a step outside Lightning."""
    dtype = autocast_dtype(resolve_precision(precision, "gpu" if device.type == "cuda" else "cpu"))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

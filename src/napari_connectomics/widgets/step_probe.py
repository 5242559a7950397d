"""How long one training step of a config takes on this machine, so the panels can say so up front.

A 2D U-Net step takes a second on two CPU cores and a 3D MedNeXt step a minute: the user should
know before pressing Train. :func:`measure_step` builds the network, its loss and optimizer, and
times forward + backward + optimizer steps on a random batch of ``data.batch_size`` patches on the
device the config trains on. It imports torch, so the panels run it in the engine worker process
(``probe`` requests; with ``NAPARI_CONNECTOMICS_TRAINING=thread``, in a background thread); the
rest of this module (the config, the key, the text) is torch-free.

The rule for the Train panel's warning (stated once, in :func:`first_preview_seconds`): the first
preview shows about ``3 * step`` seconds after Train (the worker has already started and imported
torch when the panel opened).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from .live_feedback import PREVIEW_SECONDS

__all__ = [
    "SLOW_FIRST_PREVIEW_SECONDS",
    "StepTime",
    "first_preview_seconds",
    "measure_step",
    "probe_config",
    "probe_key",
    "slow_start_warning",
]

logger = logging.getLogger(__name__)

TIMED_STEPS = 2  # timed steps after one warm-up step
PROBE_BUDGET_SECONDS = 10.0  # a warm-up step slower than this is the estimate (no timed steps)
SLOW_STEP_SECONDS = 1.0  # after a warm-up step slower than this, one timed step is enough
SLOW_FIRST_PREVIEW_SECONDS = 60.0  # the Train panel warns above this


@dataclass(frozen=True)
class StepTime:
    """Seconds per training step of a config on ``device`` ("CPU" or "GPU"); ``rough`` when only the
    warm-up step was timed (a slow network: its first step overestimates the next ones a little)."""

    seconds: float
    device: str
    rough: bool = False

    def text(self) -> str:
        """'~0.45 s per training step on CPU'."""
        return f"~{_duration(self.seconds)} per training step on {self.device}"


def first_preview_seconds(step_seconds: float, preview_every: float = PREVIEW_SECONDS) -> float:
    """Seconds from Train to the first preview (``preview_every`` 0: to the first loss point).

    The first preview is drawn after a run's first step, which counts double (Lightning warms up),
    and its own prediction costs about a step: ``3 * step``; without previews the first loss point
    comes after the first step, ``2 * step``.
    """
    step = max(0.0, float(step_seconds))
    return (3 if preview_every > 0 else 2) * step


def slow_start_warning(step: StepTime, preview_every: float = PREVIEW_SECONDS) -> str | None:
    """The Train panel's warning line when the first preview (or loss) is over a minute away."""
    wait = first_preview_seconds(step.seconds, preview_every)
    if wait <= SLOW_FIRST_PREVIEW_SECONDS:
        return None
    what = "preview" if preview_every > 0 else "loss point"
    return (f"The first {what} will take about {_duration(wait)} ({step.text()}): a smaller patch or "
            "batch, a 2D network or a GPU is faster.")


def probe_config(cfg: Any, patch_size: Any = None, batch_size: int | None = None,
                 accelerator: str | None = None) -> Any:
    """``cfg`` with the Train panel's patch, batch and device (None: the config's), resolved."""
    from ..config import resolve_config

    probe = copy.deepcopy(cfg)
    if patch_size is not None:
        probe.data.patch_size = [int(n) for n in patch_size]
    if batch_size is not None:
        probe.data.batch_size = int(batch_size)
    if accelerator is not None:
        probe.system.accelerator = str(accelerator)
    return resolve_config(probe)


def probe_key(cfg: Any) -> str:
    """What a step's time depends on (the network, loss, optimizer, batch, patch, device, precision)."""
    parts = {"model": cfg.model, "optimizer": cfg.optimizer, "patch": cfg.data.patch_size,
             "batch": cfg.data.batch_size, "device": cfg.system.accelerator, "precision": cfg.training.precision}
    return OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in parts.items()}))


def measure_step(cfg: Any, timed_steps: int = TIMED_STEPS, budget: float = PROBE_BUDGET_SECONDS) -> StepTime:
    """Time training steps of ``cfg`` (validated) on its device: one warm-up, then ``timed_steps``.

    Imports torch. Runs on random data (the step's cost does not depend on the values); the
    patch is rounded up to the network's size multiple as the trainer pads it.
    """
    import torch

    from ..config import effective_input_size, network_in_channels
    from ..models.architectures.registry import get_architecture_spec
    from ..models.build import build_model
    from ..models.losses import build_loss
    from ..training.optim import build_optimizer
    from ..training.precision import training_autocast

    device = _device(str(cfg.system.accelerator), torch)
    spec = get_architecture_spec(cfg.model.architecture)
    if spec.fixed_input_size:
        patch = [int(n) for n in effective_input_size(cfg)]
    else:
        multiple = max(1, spec.size_multiple_for(cfg.model))
        patch = [math.ceil(int(n) / multiple) * multiple for n in cfg.data.patch_size]
    batch = int(cfg.data.batch_size)
    model = build_model(cfg).to(device).train()
    criterion = build_loss(cfg).to(device)
    optimizer = build_optimizer(cfg, model.parameters())
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, network_in_channels(cfg), *patch, generator=generator).to(device)
    label = torch.randint(0, max(2, int(cfg.model.out_channels)), (batch, 1, *patch), generator=generator).to(device)

    def step() -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with training_autocast(cfg.training.precision, device):
            outputs = model(image)
        loss, _ = criterion(outputs, label)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    name = "GPU" if device.type == "cuda" else "CPU"
    try:
        warm_up = step()
        if warm_up > budget or timed_steps < 1:
            return StepTime(warm_up, name, rough=True)
        timed = timed_steps if warm_up < SLOW_STEP_SECONDS else 1  # a slow network: one step says enough
        seconds = min(step() for _ in range(timed))  # the fastest: the least disturbed by other work
    finally:
        model = optimizer = image = label = None  # the network and its batch go before the cache is emptied
        if device.type == "cuda":
            torch.cuda.empty_cache()
    logger.info("a training step of %s takes %.3f s on %s", cfg.model.architecture, seconds, name)
    return StepTime(seconds, name)


def _device(accelerator: str, torch: Any) -> Any:
    """The device training would use: the GPU for 'gpu' and 'auto' when torch sees one."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    if accelerator in ("gpu", "cuda"):
        from .errors import UserError

        raise UserError("device GPU: torch sees no CUDA GPU on this machine; pick auto or CPU")
    return torch.device("cpu")


def _duration(seconds: float) -> str:
    """'0.45 s', '12 s', '3 min', '1.5 h'."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

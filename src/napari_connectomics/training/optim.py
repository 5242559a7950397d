"""Optimizer and learning-rate schedule from the config, with linear warm-up.

Every schedule is a per-step multiplier of the base learning rate (warm-up, then constant, cosine,
poly or step decay), so it works the same with epoch- or step-limited runs and resumes exactly;
'plateau' is ReduceLROnPlateau on the validation loss, behind the same warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from omegaconf import DictConfig

__all__ = ["build_optimizer", "build_schedulers", "lr_multiplier"]


def build_optimizer(cfg: DictConfig, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    opt = cfg.optimizer
    params = [p for p in parameters if p.requires_grad]
    if opt.name == "AdamW":
        return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay, betas=tuple(opt.betas), eps=opt.eps)
    if opt.name == "Adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay, betas=tuple(opt.betas), eps=opt.eps)
    if opt.name == "SGD":
        return torch.optim.SGD(params, lr=opt.lr, weight_decay=opt.weight_decay, momentum=opt.momentum, nesterov=opt.momentum > 0)
    raise ValueError(f"optimizer.name: {opt.name!r} is not valid; choose one of AdamW, Adam, SGD")


def lr_multiplier(cfg: DictConfig, total_steps: int,
                  time_fraction: Callable[[], float] | None = None) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    With a time budget (``time_fraction``: the elapsed share of ``training.max_time``) cosine and poly
    decay over whichever ends the run first, steps or time: a run that the clock ends still reaches
    ``scheduler.min_lr``. Warm-up is counted in steps.
    """
    sched = cfg.scheduler
    warmup = max(0, int(sched.warmup_steps))
    floor = sched.min_lr / cfg.optimizer.lr if cfg.optimizer.lr > 0 else 0.0
    decay_steps = max(1, total_steps - warmup)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        t = min(1.0, (step - warmup) / decay_steps)
        if time_fraction is not None:
            t = max(t, time_fraction())
        if sched.name == "cosine":
            value = 0.5 * (1.0 + math.cos(math.pi * t))
        elif sched.name == "poly":
            value = (1.0 - t) ** sched.poly_power
        elif sched.name == "step":
            value = sched.gamma ** ((step - warmup) // sched.step_size)
        else:  # 'none' and 'plateau' (plateau decays on its own)
            value = 1.0
        return floor + (1.0 - floor) * value

    return multiplier


def build_schedulers(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int, *,
                     time_fraction: Callable[[], float] | None = None,
                     monitor: str) -> list[dict[str, Any]]:
    """Lightning scheduler configs: the per-step multiplier, plus ReduceLROnPlateau for 'plateau'
    (on ``monitor``, the logged validation loss)."""
    schedulers: list[dict[str, Any]] = []
    if cfg.scheduler.name != "none" or cfg.scheduler.warmup_steps > 0:
        lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg, total_steps, time_fraction))
        schedulers.append({"scheduler": lambda_lr, "interval": "step", "name": "lr"})
    if cfg.scheduler.name == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.scheduler.gamma, patience=cfg.scheduler.patience,
            min_lr=cfg.scheduler.min_lr)
        # strict=False: a run that validates every N steps has no validation loss at some epoch ends.
        schedulers.append({"scheduler": plateau, "interval": "epoch", "monitor": monitor, "strict": False,
                           "name": "lr_plateau"})
    return schedulers

"""MedNeXt v1: a ConvNeXt-style U-Net with additive skips, weight-compatible with the original."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from numbers import Integral

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import (
    Dim,
    MedNeXtBlock,
    MedNeXtDownBlock,
    MedNeXtUpBlock,
    NormType,
    OutBlock,
    conv_class,
)
from .presets import CHECKPOINT_STYLES, NUM_LEVELS, NUM_STAGES, SIZE_MULTIPLE

__all__ = ["CHECKPOINT_STYLES", "NUM_STAGES", "SIZE_MULTIPLE", "MedNeXt", "check_input_shape"]

logger = logging.getLogger(__name__)



def check_input_shape(shape: Sequence[int], dim: str) -> None:
    """Raise a one-line ValueError when MedNeXt cannot process an input of this shape.

    Four stride-2 levels need every spatial size to be a multiple of 16, and the bottleneck must
    hold more than one voxel: GroupNorm with one channel per group cannot normalise a single value.
    """
    n_spatial = 2 if dim == "2d" else 3
    shape = tuple(int(s) for s in shape)
    if len(shape) != n_spatial + 2:
        layout = "(N, C, H, W)" if n_spatial == 2 else "(N, C, D, H, W)"
        raise ValueError(f"MedNeXt(dim={dim!r}) expects a {n_spatial + 2}D input {layout}, "
                         f"got shape {shape}")
    spatial = shape[2:]
    if any(s <= 0 or s % SIZE_MULTIPLE for s in spatial):
        fixed = tuple(max(SIZE_MULTIPLE, math.ceil(s / SIZE_MULTIPLE) * SIZE_MULTIPLE)
                      for s in spatial)
        raise ValueError(f"MedNeXt needs every spatial size to be a multiple of {SIZE_MULTIPLE}, "
                         f"got {spatial}; pad or crop the input to {fixed}")
    if all(s == SIZE_MULTIPLE for s in spatial):
        raise ValueError(f"MedNeXt needs more than one voxel at the 1/{SIZE_MULTIPLE} bottleneck, "
                         f"got spatial size {spatial}; use at least {2 * SIZE_MULTIPLE} "
                         "along one axis")


def _per_stage(value: int | Sequence[int], name: str) -> list[int]:
    """Expand an int to one value per stage, or check that a sequence has one per stage."""
    values = [int(value)] * NUM_STAGES if isinstance(value, Integral) else [int(v) for v in value]
    if len(values) != NUM_STAGES or any(v < 1 for v in values):
        raise ValueError(f"{name} must be a positive int or {NUM_STAGES} positive ints "
                         f"(enc0-3, bottleneck, dec3-0), got {value!r}")
    return values


def _check_kernel(kernel: int, name: str) -> int:
    """Odd kernels only: the 'same' padding k//2 and the up blocks' 2n-1 arithmetic rely on it."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"{name} must be a positive odd int, got {kernel}")
    return kernel


class MedNeXt(nn.Module):
    """MedNeXt v1 (Roy et al., "MedNeXt: Transformer-driven Scaling of ConvNets for Medical Image
    Segmentation", MICCAI 2023), 2D or 3D.

    Four encoder stages with stride-2 :class:`MedNeXtDownBlock` s, a bottleneck at 1/16 resolution
    and four decoder stages with stride-2 :class:`MedNeXtUpBlock` s; skips are *added* to the
    upsampled features. Module names, parameter shapes and state-dict order match the original
    ``nnunet_mednext`` so its checkpoints load with ``strict=True``.

    Args:
        in_channels: input image channels.
        n_channels: channels C of the first stage; stage i has ``C * 2**i`` (bottleneck 16C).
        n_classes: output channels (logits) of every head.
        exp_r: expansion ratio, one int or 9 (enc0-3, bottleneck, dec3-0). ``down_i`` uses the
            ratio of the stage it leads into (``exp_r[i + 1]``), ``up_i`` that of ``dec_block_i``.
        kernel_size: odd depthwise kernel size for every block unless overridden below.
        enc_kernel_size: kernel of the encoder blocks and down blocks (default ``kernel_size``).
        dec_kernel_size: kernel of the bottleneck, up blocks and decoder blocks (default
            ``kernel_size``).
        deep_supervision: build heads ``out_1..out_4`` and return five scales. Stored as
            ``self.do_ds`` and read at every forward, so a wrapper can switch the extra heads off
            (e.g. at inference) without rebuilding; it cannot switch them on if they were not built.
        do_res: identity residual inside every MedNeXtBlock.
        do_res_up_down: 1x1 strided residual in the down and up blocks.
        checkpoint_style: ``None`` or ``'outside_block'``: recompute every block in the backward
            pass (gradient checkpointing) to save activation memory in training.
        block_counts: number of blocks per stage, one list of 9.
        norm_type: ``'group'`` (GroupNorm, one group per channel) or ``'layer'``.
        dim: ``'3d'`` for (N, C, D, H, W) input or ``'2d'`` for (N, C, H, W).
        grn: global response normalisation in every block except ``down_0`` (as the original).

    Returns (forward):
        The full-resolution logits, or with ``do_ds`` the list ``[full, 1/2, 1/4, 1/8, 1/16]``.
    """

    def __init__(
        self,
        in_channels: int,
        n_channels: int = 32,
        n_classes: int = 2,
        exp_r: int | Sequence[int] = 4,
        kernel_size: int = 7,
        enc_kernel_size: int | None = None,
        dec_kernel_size: int | None = None,
        deep_supervision: bool = False,
        do_res: bool = False,
        do_res_up_down: bool = False,
        checkpoint_style: str | None = None,
        block_counts: Sequence[int] = (2,) * NUM_STAGES,
        norm_type: NormType = "group",
        dim: Dim = "3d",
        grn: bool = False,
    ) -> None:
        super().__init__()
        conv = conv_class(dim)  # also validates dim
        if checkpoint_style not in CHECKPOINT_STYLES:
            raise ValueError(f"checkpoint_style must be one of {CHECKPOINT_STYLES}, "
                             f"got {checkpoint_style!r}")
        if in_channels < 1 or n_channels < 1 or n_classes < 1:
            raise ValueError("in_channels, n_channels and n_classes must be positive, got "
                             f"{in_channels}, {n_channels}, {n_classes}")
        exp_rs = _per_stage(exp_r, "exp_r")
        counts = _per_stage(block_counts, "block_counts")
        enc_k = _check_kernel(kernel_size if enc_kernel_size is None else enc_kernel_size,
                              "enc_kernel_size")
        dec_k = _check_kernel(kernel_size if dec_kernel_size is None else dec_kernel_size,
                              "dec_kernel_size")

        self.in_channels = in_channels
        self.n_classes = n_classes
        self.dim = dim
        self.do_ds = deep_supervision
        self.checkpoint_style = checkpoint_style

        # Kept only for checkpoint compatibility (the original fed it to reentrant checkpointing).
        # Frozen, so DDP does not wait for a gradient that never comes.
        self.dummy_tensor = nn.Parameter(torch.ones(1), requires_grad=False)

        block_args = dict(norm_type=norm_type, dim=dim)
        self.stem = conv(in_channels, n_channels, kernel_size=1)
        for i in range(NUM_LEVELS):
            ch = n_channels * 2**i
            self.add_module(f"enc_block_{i}", self._stage(ch, exp_rs[i], enc_k, counts[i],
                                                          do_res, grn, block_args))
            self.add_module(f"down_{i}", MedNeXtDownBlock(
                ch, 2 * ch, exp_rs[i + 1], enc_k, do_res=do_res_up_down,
                grn=grn and i > 0, **block_args))
        bottom = n_channels * 2**NUM_LEVELS
        self.bottleneck = self._stage(bottom, exp_rs[NUM_LEVELS], dec_k, counts[NUM_LEVELS],
                                      do_res, grn, block_args)
        for i in reversed(range(NUM_LEVELS)):
            ch = n_channels * 2**i
            stage = NUM_STAGES - 1 - i  # dec_block_3 is stage 5, ..., dec_block_0 is stage 8
            self.add_module(f"up_{i}", MedNeXtUpBlock(
                2 * ch, ch, exp_rs[stage], dec_k, do_res=do_res_up_down, grn=grn, **block_args))
            self.add_module(f"dec_block_{i}", self._stage(ch, exp_rs[stage], dec_k, counts[stage],
                                                          do_res, grn, block_args))
        self.out_0 = OutBlock(n_channels, n_classes, dim)
        if deep_supervision:
            for i in range(1, NUM_LEVELS + 1):
                self.add_module(f"out_{i}", OutBlock(n_channels * 2**i, n_classes, dim))
        logger.debug("built MedNeXt(%s): exp_r=%s, blocks=%s, kernels enc %d / dec %d",
                     dim, exp_rs, counts, enc_k, dec_k)

    @staticmethod
    def _stage(channels: int, exp_r: int, kernel: int, n_blocks: int, do_res: bool, grn: bool,
               block_args: dict[str, str]) -> nn.Sequential:
        """``n_blocks`` same-width MedNeXt blocks; indices 0.. become the state-dict keys."""
        return nn.Sequential(*(
            MedNeXtBlock(channels, channels, exp_r, kernel, do_res=do_res, grn=grn, **block_args)
            for _ in range(n_blocks)))

    def _checkpointing(self) -> bool:
        """Checkpoint only when a backward pass can follow; in eval it would only cost time."""
        return (self.checkpoint_style == "outside_block" and self.training
                and torch.is_grad_enabled())

    @staticmethod
    def _run(block: nn.Module, x: torch.Tensor, ckpt: bool) -> torch.Tensor:
        return checkpoint(block, x, use_reentrant=False) if ckpt else block(x)

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor, ckpt: bool) -> torch.Tensor:
        """Run a stage block by block, so each block is its own checkpoint segment."""
        for block in stage:
            x = self._run(block, x, ckpt)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        check_input_shape(x.shape, self.dim)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"MedNeXt was built for {self.in_channels} input channels, "
                             f"got {x.shape[1]} (input shape {tuple(x.shape)})")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check_input(x)
        if self.do_ds and not hasattr(self, "out_1"):
            raise RuntimeError("do_ds is set but this MedNeXt was built without deep "
                               "supervision heads; build it with deep_supervision=True")
        ckpt = self._checkpointing()

        x = self.stem(x)
        skips: list[torch.Tensor] = []
        for i in range(NUM_LEVELS):
            x = self._run_stage(getattr(self, f"enc_block_{i}"), x, ckpt)
            skips.append(x)
            x = self._run(getattr(self, f"down_{i}"), x, ckpt)
        x = self._run_stage(self.bottleneck, x, ckpt)

        low_res: list[torch.Tensor] = []  # 1/16, 1/8, 1/4, 1/2
        if self.do_ds:
            low_res.append(self._run(getattr(self, f"out_{NUM_LEVELS}"), x, ckpt))
        for i in reversed(range(NUM_LEVELS)):
            x = skips.pop() + self._run(getattr(self, f"up_{i}"), x, ckpt)
            x = self._run_stage(getattr(self, f"dec_block_{i}"), x, ckpt)
            if self.do_ds and i > 0:
                low_res.append(self._run(getattr(self, f"out_{i}"), x, ckpt))
        out = self._run(self.out_0, x, ckpt)
        return [out, *reversed(low_res)] if self.do_ds else out

"""The building blocks of MedNeXt v1 (Roy et al., MICCAI 2023), 2D or 3D.

Parameter names and shapes follow the original ``nnunet_mednext`` so that its checkpoints load
with ``strict=True``: ``conv1`` (depthwise), ``norm``, ``conv2`` (expansion), ``conv3``
(compression), ``grn_beta``/``grn_gamma`` (GRN), ``res_conv`` (resampling residual) and
``conv_out`` (output head).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Dim",
    "LayerNorm",
    "MedNeXtBlock",
    "MedNeXtDownBlock",
    "MedNeXtUpBlock",
    "NormType",
    "OutBlock",
    "conv_class",
]

Dim = Literal["2d", "3d"]
NormType = Literal["group", "layer"]

_CONV: dict[str, type[nn.Module]] = {"2d": nn.Conv2d, "3d": nn.Conv3d}
_CONV_T: dict[str, type[nn.Module]] = {"2d": nn.ConvTranspose2d, "3d": nn.ConvTranspose3d}
_GRN_EPS = 1e-6


def _spatial_ndim(dim: str) -> int:
    """2 for '2d', 3 for '3d'; anything else is a programming error worth a clear message."""
    if dim not in _CONV:
        raise ValueError(f"dim must be '2d' or '3d', got {dim!r}")
    return int(dim[0])


def conv_class(dim: str, transposed: bool = False) -> type[nn.Module]:
    """The (transposed) convolution class for ``dim``; raises a clear error for other dims."""
    _spatial_ndim(dim)
    return (_CONV_T if transposed else _CONV)[dim]


def _pad_front(x: torch.Tensor, spatial_ndim: int) -> torch.Tensor:
    """Add one zero voxel at the start of every spatial axis (2n-1 -> 2n), as the original does."""
    return F.pad(x, (1, 0) * spatial_ndim)


class LayerNorm(nn.Module):
    """Layer normalisation over the channel axis of a channels-first (N, C, *spatial) tensor.

    ``nn.LayerNorm`` normalises the trailing axes, which for MedNeXt's layout would be the spatial
    ones; this normalises each voxel's channel vector instead (ConvNeXt's "channels_first" mode).

    Args:
        num_channels: size of the channel axis.
        eps: added to the variance for numerical stability.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        # Broadcast the per-channel affine over however many spatial axes there are (2D or 3D).
        shape = (-1,) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _make_norm(norm_type: str, channels: int) -> nn.Module:
    """The block's normalisation layer; GroupNorm with one group per channel is the default."""
    if norm_type == "group":
        return nn.GroupNorm(num_groups=channels, num_channels=channels)
    if norm_type == "layer":
        return LayerNorm(channels, eps=1e-5)
    raise ValueError(f"norm_type must be 'group' or 'layer', got {norm_type!r}")


class MedNeXtBlock(nn.Module):
    """ConvNeXt-style block: depthwise conv -> norm -> 1x1 expand -> GELU -> [GRN] -> 1x1 compress.

    Args:
        in_channels: input channels (also the depthwise conv's groups).
        out_channels: output channels; must equal ``in_channels`` when ``do_res``.
        exp_r: expansion ratio of the inverted bottleneck (hidden width ``exp_r * in_channels``).
        kernel_size: odd size of the depthwise kernel.
        do_res: add the input to the output (needs ``in_channels == out_channels``).
        norm_type: ``'group'`` (GroupNorm with one group per channel) or ``'layer'``
            (channels-first :class:`LayerNorm`).
        dim: ``'2d'`` or ``'3d'``.
        grn: apply ConvNeXt-V2 global response normalisation to the expanded features.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        exp_r: int = 4,
        kernel_size: int = 7,
        do_res: bool = True,
        norm_type: NormType = "group",
        dim: Dim = "3d",
        grn: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_ndim = _spatial_ndim(dim)
        if do_res and in_channels != out_channels:
            raise ValueError(
                f"a residual MedNeXtBlock needs in_channels == out_channels, "
                f"got {in_channels} and {out_channels}")
        self.do_res = do_res
        self.grn = grn
        hidden = exp_r * in_channels
        conv = _CONV[dim]

        self.conv1 = conv(in_channels, in_channels, kernel_size, stride=1,
                          padding=kernel_size // 2, groups=in_channels)
        self.norm = _make_norm(norm_type, in_channels)
        self.conv2 = conv(in_channels, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.conv3 = conv(hidden, out_channels, kernel_size=1)
        if grn:
            # Zero init makes GRN the identity at start; beta is registered first like the original.
            grn_shape = (1, hidden) + (1,) * self.spatial_ndim
            self.grn_beta = nn.Parameter(torch.zeros(grn_shape))
            self.grn_gamma = nn.Parameter(torch.zeros(grn_shape))

    def _global_response_norm(self, x: torch.Tensor) -> torch.Tensor:
        """ConvNeXt-V2 GRN: rescale each channel by its spatial L2 energy over the channel mean."""
        spatial_axes = tuple(range(-self.spatial_ndim, 0))
        gx = torch.norm(x, p=2, dim=spatial_axes, keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + _GRN_EPS)
        return self.grn_gamma * (x * nx) + self.grn_beta + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.conv2(self.norm(self.conv1(x))))
        if self.grn:
            out = self._global_response_norm(out)
        out = self.conv3(out)
        return x + out if self.do_res else out


class MedNeXtDownBlock(MedNeXtBlock):
    """A MedNeXt block whose depthwise conv has stride 2: halves every spatial size.

    Args:
        in_channels: input channels.
        out_channels: output channels (usually ``2 * in_channels``).
        exp_r: expansion ratio.
        kernel_size: odd depthwise kernel size.
        do_res: add a strided 1x1 conv of the input (``res_conv``); the block has no identity
            residual since the shapes differ.
        norm_type: ``'group'`` or ``'layer'``.
        dim: ``'2d'`` or ``'3d'``.
        grn: use global response normalisation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        exp_r: int = 4,
        kernel_size: int = 7,
        do_res: bool = False,
        norm_type: NormType = "group",
        dim: Dim = "3d",
        grn: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, exp_r, kernel_size, do_res=False,
                         norm_type=norm_type, dim=dim, grn=grn)
        conv = _CONV[dim]
        # Replacing conv1 keeps its place in the state dict (conv1, norm, conv2, conv3, res_conv).
        self.conv1 = conv(in_channels, in_channels, kernel_size, stride=2,
                          padding=kernel_size // 2, groups=in_channels)
        self.resample_do_res = do_res
        if do_res:
            self.res_conv = conv(in_channels, out_channels, kernel_size=1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.resample_do_res:
            out = out + self.res_conv(x)
        return out


class MedNeXtUpBlock(MedNeXtBlock):
    """A MedNeXt block whose depthwise conv is a stride-2 transposed conv: doubles every size.

    With padding ``k // 2`` the transposed conv yields ``2n - 1`` voxels. As in the original, the
    block's output (after ``conv3``) is padded with one zero voxel at the *front* of every spatial
    axis to reach ``2n``; the residual path is padded the same way before it is added.

    Args:
        in_channels: input channels.
        out_channels: output channels (usually ``in_channels // 2``).
        exp_r: expansion ratio.
        kernel_size: odd depthwise kernel size.
        do_res: add a stride-2 1x1 transposed conv of the input (``res_conv``).
        norm_type: ``'group'`` or ``'layer'``.
        dim: ``'2d'`` or ``'3d'``.
        grn: use global response normalisation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        exp_r: int = 4,
        kernel_size: int = 7,
        do_res: bool = False,
        norm_type: NormType = "group",
        dim: Dim = "3d",
        grn: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, exp_r, kernel_size, do_res=False,
                         norm_type=norm_type, dim=dim, grn=grn)
        conv_t = _CONV_T[dim]
        self.conv1 = conv_t(in_channels, in_channels, kernel_size, stride=2,
                            padding=kernel_size // 2, groups=in_channels)
        self.resample_do_res = do_res
        if do_res:
            self.res_conv = conv_t(in_channels, out_channels, kernel_size=1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _pad_front(super().forward(x), self.spatial_ndim)
        if self.resample_do_res:
            out = out + _pad_front(self.res_conv(x), self.spatial_ndim)
        return out


class OutBlock(nn.Module):
    """Segmentation head: a 1x1 *transposed* conv, so the weight layout is (in, n_classes, 1, ...).

    A transposed 1x1 conv computes the same map as a plain one; it is kept for checkpoint
    compatibility with the original.

    Args:
        in_channels: feature channels.
        n_classes: output channels (logits).
        dim: ``'2d'`` or ``'3d'``.
    """

    def __init__(self, in_channels: int, n_classes: int, dim: Dim = "3d") -> None:
        super().__init__()
        _spatial_ndim(dim)
        self.conv_out = _CONV_T[dim](in_channels, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(x)

"""Segmentation losses: a registry of MONAI/torch losses that skip unannotated voxels, plus deep supervision.

Every registered loss takes the same inputs, whatever form its MONAI/torch core needs:

- ``logits``: ``(B, C_out, *spatial)``, 2D or 3D. ``C_out == 1`` is a sigmoid binary output (class 1 =
  foreground); ``C_out >= 2`` is a softmax over ``C_out`` classes.
- ``target``: int64 class indices ``(B, 1, *spatial)`` with values ``0..C-1`` and ``IGNORE_INDEX``
  where nothing was annotated (sparse annotations, padding).

Each loss turns the target into its own form (one-hot float for Dice/Tversky/Focal/BCE, channel-squeezed
long for cross-entropy, float 0/1 for a one-channel BCE) and makes ignored voxels contribute nothing:
neither to a numerator nor to a denominator, and they receive exactly zero gradient. A batch without a
single annotated voxel gives a loss of exactly 0 that still backpropagates (zeros), never NaN.

Overlap losses (Dice, Tversky) use ``batch=True``: their soft counts are pooled over the whole batch
before the ratio, because with sparse annotations a single patch often holds few or no annotated
voxels of a class and a per-sample ratio would be noise (or a constant term that only dilutes the mean).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss, TverskyLoss
from torch import Tensor, nn

from ..data.conventions import IGNORE_INDEX
from .architectures.registry import deep_supervision_weights
from .loss_registry import get_loss, list_losses, register_loss

__all__ = [
    "DeepSupervisionLoss",
    "SegmentationLoss",
    "build_loss",
    "downsample_target",
    "get_loss",
    "list_losses",
    "register_loss",
]

logger = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------------
# Target forms and masking helpers
# --------------------------------------------------------------------------------------------------
def _annotated(target: Tensor) -> Tensor:
    """Boolean mask ``(B, 1, *spatial)`` of the voxels that carry a label."""
    return target != IGNORE_INDEX


def _probabilities(logits: Tensor) -> Tensor:
    """Softmax over channels, or sigmoid for a one-channel binary output."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _one_hot(target: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
    """Float target with ``channels`` channels: 0/1 foreground for one channel, one-hot otherwise.

    Ignored voxels come out as class 0; every caller masks them.
    """
    if channels == 1:
        return (target == 1).to(dtype)
    labels = target.clamp(min=0).squeeze(1)
    return F.one_hot(labels, channels).movedim(-1, 1).to(dtype)


def _masked_mean(elementwise: Tensor, mask: Tensor) -> Tensor:
    """Mean of an element-wise loss over annotated elements only; 0 (with a gradient path) when none."""
    mask = mask.expand_as(elementwise)
    total = torch.where(mask, elementwise, torch.zeros_like(elementwise)).sum()
    return total / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------------
# Registered losses
# --------------------------------------------------------------------------------------------------
class _MaskedOverlapLoss(nn.Module):
    """A MONAI overlap loss fed probabilities and one-hot targets that are zero at ignored voxels.

    Zeroing both sides removes ignored voxels from intersection and from both sums, so they change
    neither numerator nor denominator; MONAI's own activation is switched off because the softmax
    must happen before the masking.
    """

    monai_class: type[nn.Module]

    def __init__(self, out_channels: int = 2, **kwargs: Any):
        super().__init__()
        self.out_channels = out_channels
        options = {"include_background": True, "batch": True, **kwargs}
        options.update(softmax=False, sigmoid=False, to_onehot_y=False)
        self.loss = self.monai_class(**options)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        mask = _annotated(target)
        probs = torch.where(mask, _probabilities(logits), 0.0)
        onehot = torch.where(mask, _one_hot(target, logits.shape[1], probs.dtype), 0.0)
        return self.loss(probs, onehot)


class MaskedDiceLoss(_MaskedOverlapLoss):
    """MONAI DiceLoss over annotated voxels (soft Dice, batch-pooled)."""

    monai_class = DiceLoss


class MaskedTverskyLoss(_MaskedOverlapLoss):
    """MONAI TverskyLoss over annotated voxels (alpha/beta weigh false positives/negatives)."""

    monai_class = TverskyLoss


class MaskedBCEWithLogitsLoss(nn.Module):
    """torch BCEWithLogitsLoss per element, averaged over annotated voxels (one-hot when C_out > 1)."""

    def __init__(self, out_channels: int = 2, **kwargs: Any):
        super().__init__()
        self.out_channels = out_channels
        self.loss = nn.BCEWithLogitsLoss(**{**kwargs, "reduction": "none"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        elementwise = self.loss(logits, _one_hot(target, logits.shape[1], logits.dtype))
        return _masked_mean(elementwise, _annotated(target))


class MaskedCrossEntropyLoss(nn.Module):
    """torch CrossEntropyLoss with ``ignore_index``; a one-channel output uses its binary form (BCE).

    The mean is taken by hand (sum / annotated weight) so that an all-ignored batch gives 0, not the
    NaN that torch's own mean returns there; otherwise the value equals torch's.
    """

    def __init__(self, out_channels: int = 2, **kwargs: Any):
        super().__init__()
        self.out_channels = out_channels
        self.loss = nn.CrossEntropyLoss(**{**kwargs, "ignore_index": IGNORE_INDEX, "reduction": "none"})
        self.binary = MaskedBCEWithLogitsLoss(out_channels=1)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[1] == 1:
            return self.binary(logits, target)
        labels = target.squeeze(1).long()
        per_voxel = self.loss(logits, labels)  # 0 at ignored voxels
        mask = labels != IGNORE_INDEX
        class_weight = self.loss.weight
        if class_weight is None:
            denominator = mask.sum()
        else:
            denominator = torch.where(mask, class_weight[labels.clamp(min=0)], 0.0).sum()
        return per_voxel.sum() / denominator.to(per_voxel.dtype).clamp(min=torch.finfo(per_voxel.dtype).tiny)


class MaskedFocalLoss(nn.Module):
    """MONAI FocalLoss (softmax, or sigmoid for one channel) averaged over annotated voxels.

    The average runs over annotated voxels times channels, as MONAI's ``reduction='mean'`` does over
    all of them, so without ignored voxels the value equals MONAI's.
    """

    def __init__(self, out_channels: int = 2, **kwargs: Any):
        super().__init__()
        self.out_channels = out_channels
        options = {"include_background": True, **kwargs}
        options.update(use_softmax=out_channels > 1, reduction="none", to_onehot_y=False)
        self.loss = FocalLoss(**options)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        elementwise = self.loss(logits, _one_hot(target, logits.shape[1], logits.dtype))
        return _masked_mean(elementwise, _annotated(target))


class MaskedDiceCELoss(nn.Module):
    """Dice + cross-entropy (BCE for one channel), weighted like MONAI's DiceCELoss.

    Composed from the masked Dice and CE above rather than wrapping ``monai.losses.DiceCELoss``: that
    loss applies its softmax internally, so ignored voxels could not be removed from its Dice term.
    """

    def __init__(self, out_channels: int = 2, lambda_dice: float = 1.0, lambda_ce: float = 1.0, **dice_kwargs: Any):
        super().__init__()
        self.out_channels = out_channels
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.dice = MaskedDiceLoss(out_channels, **dice_kwargs)
        self.ce = MaskedCrossEntropyLoss(out_channels)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_ce * self.ce(logits, target)


# --------------------------------------------------------------------------------------------------
# Weighted sum of losses
# --------------------------------------------------------------------------------------------------
def _unique_keys(names: Sequence[str]) -> list[str]:
    """Log keys: the loss names, with ``_2``, ``_3``... when a name is listed more than once."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return keys


def _check_inputs(logits: Tensor, target: Tensor, out_channels: int) -> Tensor:
    """Validate shapes and label values; returns the target as int64 ``(B, 1, *spatial)``."""
    if logits.ndim not in (4, 5):
        raise ValueError(f"logits must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(logits.shape)}")
    if logits.shape[1] != out_channels:
        raise ValueError(f"logits have {logits.shape[1]} channels but the loss was built for {out_channels}")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits: expected {expected}")
    classes = max(out_channels, 2)
    if bool(((target < IGNORE_INDEX) | (target >= classes)).any()):
        raise ValueError(f"target values must be {IGNORE_INDEX} (ignored) or 0..{classes - 1}")
    return target.long()


class SegmentationLoss(nn.Module):
    """Weighted sum of the configured losses, each fed the target in its form, ignoring IGNORE_INDEX voxels."""

    def __init__(self, names: Sequence[str], weights: Sequence[float] | None = None, out_channels: int = 2):
        super().__init__()
        names = list(names)
        if not names:
            raise ValueError(f"name at least one loss; available: {', '.join(list_losses())}")
        weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
        if len(weights) != len(names):
            raise ValueError(f"got {len(weights)} loss weights for {len(names)} losses {names}; give one per loss")
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        self.names = names
        self.keys = _unique_keys(names)
        self.weights = weights
        self.out_channels = out_channels
        self.losses = nn.ModuleList(get_loss(name, out_channels=out_channels) for name in names)

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and each loss's (unweighted, detached) value keyed by loss name."""
        target = _check_inputs(logits, target, self.out_channels)
        logits = logits.float()  # sums over a patch overflow in half precision
        total = logits.new_zeros(())
        values: dict[str, Tensor] = {}
        for key, weight, loss in zip(self.keys, self.weights, self.losses):
            value = loss(logits, target)
            total = total + weight * value
            values[key] = value.detach()
        return total, values


# --------------------------------------------------------------------------------------------------
# Deep supervision
# --------------------------------------------------------------------------------------------------
def _block_ratios(fine: Sequence[int], coarse: Sequence[int]) -> list[int]:
    """Integer down-sampling ratio per axis; an error when a coarse size does not divide the fine one."""
    if len(fine) != len(coarse):
        raise ValueError(f"size {tuple(coarse)} has {len(coarse)} axes, the target has {len(fine)} spatial axes")
    ratios = []
    for f, c in zip(fine, coarse):
        if c < 1 or f % c:
            raise ValueError(f"cannot downsample target size {tuple(fine)} to {tuple(coarse)}: ratios must be integers")
        ratios.append(f // c)
    return ratios


def downsample_target(target: Tensor, size: Sequence[int]) -> Tensor:
    """Class-index target at a coarser ``size`` by majority vote of the annotated voxels of each block.

    Interpolating class ids would invent classes (and nearest-neighbour throws away sparse strokes):
    each coarse voxel takes the most frequent *annotated* class among the fine voxels it covers and is
    ``IGNORE_INDEX`` only when none of them is annotated. Ties go to the smaller class id. The block
    is ``fine // coarse`` per axis (integer, may differ per axis or be 1). Works for 2D and 3D.
    """
    size = [int(s) for s in size]
    spatial = list(target.shape[2:])
    ratios = _block_ratios(spatial, size)
    if all(r == 1 for r in ratios):
        return target
    lead = list(target.shape[:2])
    # (B, C, s0, r0, s1, r1, ...) -> (B, C, s0, s1, ..., r0, r1, ...) -> (coarse voxels, block)
    interleaved = [n for pair in zip(size, ratios) for n in pair]
    blocks = target.reshape(*lead, *interleaved)
    nd = len(size)
    order = [0, 1, *(2 + 2 * i for i in range(nd)), *(3 + 2 * i for i in range(nd))]
    blocks = blocks.permute(order).reshape(-1, math.prod(ratios))

    num_coarse = blocks.shape[0]
    num_classes = max(int(blocks.max()) + 1, 1) if blocks.numel() else 1
    annotated = blocks != IGNORE_INDEX
    coarse_ids = torch.arange(num_coarse, device=target.device).unsqueeze(1)
    # Ignored children vote into one extra, discarded bin, so no boolean indexing (no sync, fixed shapes).
    bins = torch.where(annotated, coarse_ids * num_classes + blocks, num_coarse * num_classes)
    counts = torch.bincount(bins.flatten(), minlength=num_coarse * num_classes + 1)
    counts = counts[:-1].reshape(num_coarse, num_classes)
    majority = counts.argmax(dim=1)  # torch returns the first maximum: ties -> smaller class id
    labels = torch.where(counts.sum(dim=1) > 0, majority, IGNORE_INDEX)
    return labels.reshape(*lead, *size).to(target.dtype)


def _scale_index(key: str) -> int:
    """0 for 'output', k for 'ds_k' (the model's training-mode contract)."""
    if key == "output":
        return 0
    if key.startswith("ds_") and key[3:].isdigit() and int(key[3:]) > 0:
        return int(key[3:])
    raise ValueError(f"unexpected model output {key!r}: expected 'output' and 'ds_1', 'ds_2', ...")


def _outputs_by_scale(outputs: Tensor | Mapping[str, Tensor]) -> dict[int, Tensor]:
    """Scale index -> logits, full resolution first."""
    if isinstance(outputs, Tensor):
        return {0: outputs}
    if "output" not in outputs:
        raise ValueError(f"model outputs {sorted(outputs)} lack the full-resolution 'output'")
    return dict(sorted((_scale_index(key), value) for key, value in outputs.items()))


class DeepSupervisionLoss(nn.Module):
    """The segmentation loss at every output scale, weighted and normalised over the scales present.

    Targets for coarse scales come from :func:`downsample_target`, so ignored regions stay ignored and
    class ids are never blended. A plain tensor (no deep supervision) is the one-scale case.
    """

    def __init__(self, loss: SegmentationLoss, weights: Sequence[float] | None = None):
        super().__init__()
        if weights is not None:
            weights = list(weights)
            if not weights:
                raise ValueError("deep supervision needs at least one weight (full resolution first)")
            if any(w < 0 for w in weights):
                raise ValueError(f"deep supervision weights must be >= 0, got {weights}")
        self.loss = loss
        # None: the default for however many scales the model returns (halving per scale).
        self.weights = None if weights is None else [float(w) for w in weights]

    def scale_weights(self, num_scales: int) -> list[float]:
        """Weights of the first ``num_scales`` scales, normalised to sum to 1."""
        if self.weights is None:
            present = deep_supervision_weights(num_scales)
            return [w / sum(present) for w in present]
        if num_scales > len(self.weights):
            raise ValueError(f"the model returns {num_scales} output scales but only {len(self.weights)} "
                             f"deep supervision weights are configured ({self.weights})")
        present = self.weights[:num_scales]
        total = sum(present)
        if total <= 0:
            raise ValueError(f"deep supervision weights of the present scales sum to 0: {present}")
        return [w / total for w in present]

    def forward(self, outputs: Tensor | Mapping[str, Tensor], target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss; logs ``loss/scale_k`` per scale plus each loss's value at full resolution."""
        scales = _outputs_by_scale(outputs)
        weights = self.scale_weights(max(scales) + 1)
        if target.ndim == scales[0].ndim - 1:
            target = target.unsqueeze(1)
        total = scales[0].new_zeros((), dtype=torch.float32)
        logs: dict[str, Tensor] = {}
        for index, logits in scales.items():
            scale_target = downsample_target(target, logits.shape[2:])
            value, per_loss = self.loss(logits, scale_target)
            total = total + weights[index] * value
            logs[f"loss/scale_{index}"] = value.detach()
            if index == 0:
                logs.update(per_loss)
        return total, logs


def build_loss(cfg: Any) -> DeepSupervisionLoss:
    """The training loss from ``cfg.model``: loss_functions, loss_weights, out_channels, deep_supervision_weights."""
    model = cfg.model
    segmentation = SegmentationLoss(
        list(model.loss_functions), list(model.loss_weights), out_channels=int(model.out_channels)
    )
    ds_weights = getattr(model, "deep_supervision_weights", None)
    loss = DeepSupervisionLoss(segmentation, None if ds_weights is None else list(ds_weights))
    logger.info("loss: %s", " + ".join(f"{w:g}*{n}" for w, n in zip(segmentation.weights, segmentation.names)))
    return loss

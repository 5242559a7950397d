"""Losses: registry, target forms per loss, ignored voxels, deep-supervision targets and weighting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from omegaconf import OmegaConf

from napari_connectomics.data.conventions import IGNORE_INDEX
from napari_connectomics.models.losses import (
    DeepSupervisionLoss,
    SegmentationLoss,
    build_loss,
    downsample_target,
    get_loss,
    list_losses,
)

IGNORE = IGNORE_INDEX
# The built-in losses (other tests may register more).
LOSS_NAMES = ("DiceLoss", "CrossEntropyLoss", "BCEWithLogitsLoss", "DiceCELoss", "FocalLoss", "TverskyLoss")
SHAPES = {2: (2, 8, 8), 3: (2, 4, 8, 8)}  # batch + spatial


def make_batch(channels: int, dims: int, seed: int = 0, ignore_fraction: float = 0.3):
    """Random logits and a class-index target with some ignored voxels."""
    gen = torch.Generator().manual_seed(seed)
    batch, *spatial = SHAPES[dims]
    logits = torch.randn(batch, channels, *spatial, generator=gen)
    classes = max(channels, 2)
    target = torch.randint(0, classes, (batch, 1, *spatial), generator=gen)
    ignored = torch.rand(target.shape, generator=gen) < ignore_fraction
    return logits, target.masked_fill(ignored, IGNORE)


def perfect_logits(target: torch.Tensor, channels: int, scale: float = 10.0) -> torch.Tensor:
    """Confident logits that agree with the target (ignored voxels: anything)."""
    labels = target.clamp(min=0)
    if channels == 1:
        return (labels.float() * 2 - 1) * scale
    return F.one_hot(labels[:, 0], channels).movedim(-1, 1).float() * 2 * scale - scale


# --------------------------------------------------------------------------- registry
def test_registry_lists_every_config_name_sorted():
    names = list_losses()
    assert names == sorted(names)
    assert set(LOSS_NAMES) <= set(names)


def test_unknown_loss_names_choices_and_suggestion():
    with pytest.raises(ValueError, match="Did you mean 'DiceLoss'") as info:
        get_loss("DiceLos")
    assert "CrossEntropyLoss" in str(info.value)
    with pytest.raises(ValueError, match="not found"):
        SegmentationLoss(["NoSuchLoss"])


def test_weights_must_match_names():
    with pytest.raises(ValueError, match="one per loss"):
        SegmentationLoss(["DiceLoss", "CrossEntropyLoss"], [1.0])
    with pytest.raises(ValueError):
        SegmentationLoss([])


def test_logit_channels_and_target_values_are_checked():
    loss = SegmentationLoss(["DiceLoss"], out_channels=3)
    logits, target = make_batch(2, 2)
    with pytest.raises(ValueError, match="channels"):
        loss(logits, target)
    logits, target = make_batch(3, 2)
    with pytest.raises(ValueError, match="target values"):
        loss(logits, target + 3)
    with pytest.raises(ValueError, match="integer"):
        loss(logits, target.float())


# --------------------------------------------------------------------------- every loss, every form
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_runs_backpropagates_and_ignores_unannotated_voxels(name, channels, dims):
    loss = SegmentationLoss([name], out_channels=channels)
    logits, target = make_batch(channels, dims)
    logits.requires_grad_(True)
    value, parts = loss(logits, target)
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    assert set(parts) == {name} and not parts[name].requires_grad
    value.backward()
    ignored = (target == IGNORE).expand_as(logits)
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[ignored] == 0).all(), "ignored voxels must get no gradient"
    assert logits.grad[~ignored].abs().sum() > 0

    # Whatever the network says at ignored voxels changes nothing.
    changed = logits.detach().clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 50
    changed.requires_grad_(True)
    value2, _ = loss(changed, target)
    value2.backward()
    torch.testing.assert_close(value2, value)
    torch.testing.assert_close(changed.grad, logits.grad)


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_all_ignored_batch_gives_zero_with_a_gradient_path(name, channels):
    loss = SegmentationLoss([name], out_channels=channels)
    logits, target = make_batch(channels, 3)
    logits.requires_grad_(True)
    value, _ = loss(logits, torch.full_like(target, IGNORE))
    assert value.item() == 0.0
    value.backward()
    assert (logits.grad == 0).all()


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_perfect_prediction_beats_a_wrong_one(name, channels):
    loss = SegmentationLoss([name], out_channels=channels)
    _, target = make_batch(channels, 2)
    good = perfect_logits(target, channels)
    wrong = perfect_logits((target.clamp(min=0) + 1) % max(channels, 2), channels)
    assert loss(good, target)[0] < loss(wrong, target)[0]
    assert loss(good, target)[0] < 0.05


def test_cross_entropy_equals_torch_with_ignore_index():
    logits, target = make_batch(3, 3)
    value, _ = SegmentationLoss(["CrossEntropyLoss"], out_channels=3)(logits, target)
    expected = F.cross_entropy(logits, target[:, 0], ignore_index=IGNORE)
    torch.testing.assert_close(value, expected)
    weight = torch.tensor([0.2, 1.0, 3.0])
    weighted = get_loss("CrossEntropyLoss", out_channels=3, weight=weight)(logits, target)
    torch.testing.assert_close(weighted, F.cross_entropy(logits, target[:, 0], weight=weight, ignore_index=IGNORE))


def test_without_ignored_voxels_the_values_are_monais():
    """The masking wraps MONAI's losses; on fully annotated data they give MONAI's numbers."""
    logits, target = make_batch(3, 3, ignore_fraction=0.0)
    cases = {
        "DiceLoss": DiceLoss(softmax=True, to_onehot_y=True, batch=True),
        "DiceCELoss": DiceCELoss(softmax=True, to_onehot_y=True, batch=True),
        "FocalLoss": FocalLoss(use_softmax=True, to_onehot_y=True),
    }
    for name, reference in cases.items():
        torch.testing.assert_close(get_loss(name, out_channels=3)(logits, target), reference(logits, target))


def test_ignored_voxels_are_out_of_the_dice_denominator():
    """Masked Dice equals MONAI's Dice on the annotated voxels alone."""
    logits, target = make_batch(2, 2)
    keep = target[:, 0] != IGNORE  # (B, H, W)
    flat_logits = logits.movedim(1, -1)[keep].T.reshape(1, 2, -1)  # (1, C, N annotated)
    flat_target = target[:, 0][keep].reshape(1, 1, -1)
    expected = DiceLoss(softmax=True, to_onehot_y=True, batch=True)(flat_logits, flat_target)
    torch.testing.assert_close(get_loss("DiceLoss", out_channels=2)(logits, target), expected)


def test_weighted_sum_and_per_loss_values():
    names, weights = ["DiceLoss", "CrossEntropyLoss"], [0.3, 2.0]
    logits, target = make_batch(2, 3)
    total, parts = SegmentationLoss(names, weights, out_channels=2)(logits, target)
    torch.testing.assert_close(total, 0.3 * parts["DiceLoss"] + 2.0 * parts["CrossEntropyLoss"])
    _, doubled = SegmentationLoss(["DiceLoss", "DiceLoss"], out_channels=2)(logits, target)
    assert set(doubled) == {"DiceLoss", "DiceLoss_2"}


# --------------------------------------------------------------------------- downsample_target
def test_downsample_majority_ignore_single_child_and_ties():
    target = torch.tensor([[[[0, 1, IGNORE, IGNORE],
                             [1, 1, IGNORE, IGNORE],
                             [2, 2, 0, IGNORE],
                             [0, 0, IGNORE, IGNORE]]]])
    coarse = downsample_target(target, (2, 2))
    # majority 1 | all ignored; tie 2/0 -> smaller id 0 | one annotated child -> its class
    assert coarse.tolist() == [[[[1, IGNORE], [0, 0]]]]
    assert coarse.dtype == target.dtype


def test_downsample_ignored_children_do_not_vote():
    target = torch.tensor([[[[2, IGNORE], [IGNORE, IGNORE]]]])
    assert downsample_target(target, (1, 1)).item() == 2
    mostly_ignored = torch.tensor([[[[IGNORE, IGNORE], [IGNORE, 1]]]])
    assert downsample_target(mostly_ignored, (1, 1)).item() == 1


def test_downsample_anisotropic_3d():
    target = torch.full((1, 1, 2, 4, 4), IGNORE)
    target[0, 0, 0, :2, :2] = torch.tensor([[3, 3], [1, IGNORE]])
    target[0, 0, 1, 2:, 2:] = 2
    coarse = downsample_target(target, (2, 2, 2))  # ratio (1, 2, 2): z untouched
    expected = torch.full((1, 1, 2, 2, 2), IGNORE)
    expected[0, 0, 0, 0, 0] = 3
    expected[0, 0, 1, 1, 1] = 2
    assert torch.equal(coarse, expected)


def test_downsample_identity_and_bad_ratio():
    _, target = make_batch(3, 3)
    assert downsample_target(target, target.shape[2:]) is target
    with pytest.raises(ValueError, match="integer"):
        downsample_target(target, (3, 4, 4))


@pytest.mark.parametrize("dims,size", [(2, (2, 4)), (3, (1, 2, 2)), (3, (4, 1, 8))])
def test_downsample_never_invents_classes(dims, size):
    gen = torch.Generator().manual_seed(1)
    batch, *spatial = SHAPES[dims]
    present = torch.tensor([0, 2, 5, IGNORE])  # class ids with gaps
    target = present[torch.randint(0, 4, (batch, 1, *spatial), generator=gen)]
    coarse = downsample_target(target, size)
    assert coarse.shape == (batch, 1, *size)
    assert set(coarse.unique().tolist()) <= set(present.tolist())


def test_downsample_matches_a_loop_reference():
    gen = torch.Generator().manual_seed(2)
    target = torch.randint(-1, 3, (2, 1, 4, 8, 8), generator=gen)
    ratios = (2, 4, 2)
    coarse = downsample_target(target, (2, 2, 4))
    for b in range(2):
        for z in range(2):
            for y in range(2):
                for x in range(4):
                    block = target[b, 0, z * 2:(z + 1) * 2, y * 4:(y + 1) * 4, x * 2:(x + 1) * 2].flatten()
                    block = block[block != IGNORE]
                    if block.numel() == 0:
                        expected = IGNORE
                    else:
                        counts = torch.bincount(block)
                        expected = int((counts == counts.max()).nonzero()[0])
                    assert coarse[b, 0, z, y, x].item() == expected, ratios


# --------------------------------------------------------------------------- deep supervision
def ds_outputs(channels: int = 2, scales: int = 3):
    gen = torch.Generator().manual_seed(3)
    full = 16
    outputs = {"output": torch.randn(2, channels, full, full, full, generator=gen)}
    for k in range(1, scales):
        size = full // 2**k
        outputs[f"ds_{k}"] = torch.randn(2, channels, size, size, size, generator=gen)
    target = torch.randint(-1, max(channels, 2), (2, 1, full, full, full), generator=gen)
    return outputs, target


def test_deep_supervision_matches_hand_computed_weighted_sum():
    seg = SegmentationLoss(["DiceLoss", "CrossEntropyLoss"], out_channels=2)
    ds = DeepSupervisionLoss(seg)
    outputs, target = ds_outputs(scales=3)
    total, logs = ds(outputs, target)

    raw = [1.0, 1 / 2, 1 / 4]  # halving per scale
    weights = [w / sum(raw) for w in raw]
    assert ds.scale_weights(3) == pytest.approx(weights) and sum(ds.scale_weights(3)) == pytest.approx(1.0)
    expected = 0.0
    for k, key in enumerate(["output", "ds_1", "ds_2"]):
        value, _ = seg(outputs[key], downsample_target(target, outputs[key].shape[2:]))
        torch.testing.assert_close(logs[f"loss/scale_{k}"], value)
        expected = expected + weights[k] * value
    torch.testing.assert_close(total, expected)
    _, full_parts = seg(outputs["output"], target)
    for name in ("DiceLoss", "CrossEntropyLoss"):
        torch.testing.assert_close(logs[name], full_parts[name])
    assert set(logs) == {"loss/scale_0", "loss/scale_1", "loss/scale_2", "DiceLoss", "CrossEntropyLoss"}


def test_deep_supervision_backpropagates_to_every_scale():
    outputs, target = ds_outputs(scales=5)
    for value in outputs.values():
        value.requires_grad_(True)
    total, _ = DeepSupervisionLoss(SegmentationLoss(["DiceCELoss"], out_channels=2))(outputs, target)
    total.backward()
    assert all(value.grad is not None and value.grad.abs().sum() > 0 for value in outputs.values())


def test_tensor_output_without_deep_supervision():
    seg = SegmentationLoss(["DiceLoss"], out_channels=2)
    outputs, target = ds_outputs()
    total, logs = DeepSupervisionLoss(seg)(outputs["output"], target)
    torch.testing.assert_close(total, seg(outputs["output"], target)[0])
    assert set(logs) == {"loss/scale_0", "DiceLoss"}


def test_custom_weights_normalised_and_wrong_length_rejected():
    seg = SegmentationLoss(["CrossEntropyLoss"], out_channels=2)
    outputs, target = ds_outputs(scales=2)
    total, logs = DeepSupervisionLoss(seg, [3.0, 1.0])(outputs, target)
    torch.testing.assert_close(total, 0.75 * logs["loss/scale_0"] + 0.25 * logs["loss/scale_1"])
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(seg, [1.0])(outputs, target)
    with pytest.raises(ValueError):
        DeepSupervisionLoss(seg, [])
    with pytest.raises(ValueError, match="ds_"):
        DeepSupervisionLoss(seg)({"output": outputs["output"], "aux": outputs["ds_1"]}, target)


def test_build_loss_from_config():
    cfg = OmegaConf.create({"model": {"loss_functions": ["DiceLoss", "BCEWithLogitsLoss"], "loss_weights": [1.0, 0.5],
                                      "out_channels": 1, "deep_supervision_weights": [1.0, 1.0]}})
    loss = build_loss(cfg)
    assert isinstance(loss, DeepSupervisionLoss)
    assert loss.loss.names == ["DiceLoss", "BCEWithLogitsLoss"] and loss.loss.weights == [1.0, 0.5]
    outputs, target = ds_outputs(channels=1, scales=2)
    total, logs = loss(outputs, target)
    torch.testing.assert_close(total, 0.5 * logs["loss/scale_0"] + 0.5 * logs["loss/scale_1"])


def test_build_loss_from_the_default_config():
    from napari_connectomics.config import load_config

    loss = build_loss(load_config())
    assert loss.weights is None  # the default: halving per scale, for however many scales the model returns
    assert loss.scale_weights(5) == pytest.approx([w / 1.9375 for w in (1, 1 / 2, 1 / 4, 1 / 8, 1 / 16)])
    assert loss.scale_weights(7)[-1] == pytest.approx(1 / 64 / sum(0.5 ** i for i in range(7)))

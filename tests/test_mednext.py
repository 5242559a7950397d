"""MedNeXt v1: weight compatibility with the original, forward contract, checkpointing, UpKern."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_connectomics.models.architectures.mednext import (
    MEDNEXT_PRESETS,
    LayerNorm,
    MedNeXt,
    MedNeXtBlock,
    MedNeXtUpBlock,
    create_mednext_v1,
    upkern_load_weights,
)
from napari_connectomics.models.architectures.mednext import network as mednext_network

REFERENCE = (Path(__file__).resolve().parents[1].parent / "shared" / "reference"
             / "mednext_v1_state_dicts.json")
REFERENCE_IDS = [f"{size}_k{k}_ds{ds}" for size in "SBML" for k in (3, 5) for ds in (0, 1)]


@pytest.fixture(scope="module")
def reference() -> dict:
    if not REFERENCE.is_file():
        pytest.skip(f"reference state dicts of the original MedNeXt not found at {REFERENCE}")
    return json.loads(REFERENCE.read_text())["models"]


def small(**kwargs) -> MedNeXt:
    """A MedNeXt narrow enough to run forward and backward on CPU in a fraction of a second."""
    args = dict(in_channels=1, n_channels=4, n_classes=2, exp_r=2, kernel_size=3,
                do_res=True, do_res_up_down=True, block_counts=[1] * 9)
    args.update(kwargs)
    return MedNeXt(**args)


def seeded(seed: int, factory, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return factory(**kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- weight compatibility with the original -------------------------------------------------------

@pytest.mark.parametrize("model_key", REFERENCE_IDS)
def test_state_dict_matches_original(reference: dict, model_key: str) -> None:
    size, kernel, ds = model_key.split("_")
    with torch.device("meta"):
        model = create_mednext_v1(1, 2, size, int(kernel[1:]), ds == "ds1")
    expected = reference[model_key]
    got = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert [k for k, _ in got] == [k for k, _ in expected["state_dict"]]  # same keys, same order
    assert got == expected["state_dict"]
    assert n_params(model) == expected["params"]


def test_kernel_7_builds() -> None:
    with torch.device("meta"):
        model = create_mednext_v1(1, 2, "S", kernel_size=7)
    assert model.enc_block_0[0].conv1.weight.shape == (32, 1, 7, 7, 7)
    assert model.up_0.conv1.weight.shape == (64, 1, 7, 7, 7)  # depthwise transposed conv


@pytest.mark.parametrize("dim", ["3d", "2d"])
def test_grn_on_every_block_but_down_0(dim: str) -> None:
    with torch.device("meta"):
        model = create_mednext_v1(1, 2, "B", dim=dim, grn=True)
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, MedNeXtBlock)}
    assert len(blocks) == 9 * 2 + 8
    spatial = (1,) * int(dim[0])
    for name, block in blocks.items():
        if name == "down_0":
            assert not hasattr(block, "grn_gamma") and not hasattr(block, "grn_beta")
            continue
        hidden = block.conv2.out_channels
        assert block.grn_gamma.shape == (1, hidden, *spatial), name
        assert block.grn_beta.shape == (1, hidden, *spatial), name
    keys = list(model.state_dict())
    assert "down_0.grn_gamma" not in keys and "down_1.grn_gamma" in keys
    assert "enc_block_0.0.grn_beta" in keys and "bottleneck.1.grn_gamma" in keys


def test_grn_matches_formula() -> None:
    torch.manual_seed(0)
    block = MedNeXtBlock(3, 3, exp_r=2, kernel_size=3, do_res=False, grn=True)
    nn.init.normal_(block.grn_gamma)
    nn.init.normal_(block.grn_beta)
    x = torch.randn(2, 3, 4, 5, 6)
    h = block.act(block.conv2(block.norm(block.conv1(x))))
    gx = h.pow(2).sum(dim=(2, 3, 4), keepdim=True).sqrt()
    nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
    expected = block.conv3(block.grn_gamma * (h * nx) + block.grn_beta + h)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("dim", ["3d", "2d"])
def test_layer_norm_is_channels_first(dim: str) -> None:
    torch.manual_seed(0)
    norm = LayerNorm(5)
    assert norm.eps == 1e-5 and torch.equal(norm.weight, torch.ones(5))
    assert torch.equal(norm.bias, torch.zeros(5))
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 5, *(4,) * int(dim[0]))
    channels_last = x.movedim(1, -1)
    expected = F.layer_norm(channels_last, (5,), norm.weight, norm.bias, 1e-5).movedim(-1, 1)
    torch.testing.assert_close(norm(x), expected)


# --- forward contract -----------------------------------------------------------------------------

@pytest.mark.parametrize("dim, size", [("3d", (32, 32, 32)), ("2d", (64, 48))])
@pytest.mark.parametrize("norm_type", ["group", "layer"])
def test_forward_shapes(dim: str, size: tuple[int, ...], norm_type: str) -> None:
    model = small(dim=dim, norm_type=norm_type, n_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size)


@pytest.mark.parametrize("dim, size", [("3d", (32, 32, 64)), ("2d", (64, 32))])
def test_forward_deep_supervision_halves(dim: str, size: tuple[int, ...]) -> None:
    model = small(dim=dim, deep_supervision=True).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 1, *size))
    assert isinstance(outs, list) and len(outs) == 5
    for level, out in enumerate(outs):
        assert out.shape == (1, 2, *(s // 2**level for s in size))


def test_deep_supervision_switch_at_forward_time() -> None:
    model = small(deep_supervision=True).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        full = model(x)[0]
        model.do_ds = False
        single = model(x)
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, full)

    without_heads = small()
    without_heads.do_ds = True
    with pytest.raises(RuntimeError, match="deep_supervision=True"):
        without_heads(x)


def test_preset_forward_3d_and_2d() -> None:
    torch.manual_seed(0)
    model = create_mednext_v1(1, 2, "S", deep_supervision=True).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 1, 32, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(1, 2, *(32 // 2**i,) * 3) for i in range(5)]

    model_2d = create_mednext_v1(2, 3, "S", kernel_size=5, dim="2d").eval()
    with torch.no_grad():
        assert model_2d(torch.randn(1, 2, 64, 64)).shape == (1, 3, 64, 64)


def test_outputs_are_logits_of_transposed_heads() -> None:
    model = create_mednext_v1(1, 2, "S", deep_supervision=True)
    assert isinstance(model.out_0.conv_out, nn.ConvTranspose3d)
    state = model.state_dict()
    # The original's layout (in, out, 1, 1, 1); a plain Conv3d would want (2, 32, 1, 1, 1).
    state["out_0.conv_out.weight"] = torch.randn(32, 2, 1, 1, 1)
    state["out_4.conv_out.weight"] = torch.randn(512, 2, 1, 1, 1)
    fresh = create_mednext_v1(1, 2, "S", deep_supervision=True)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.out_0.conv_out.weight, state["out_0.conv_out.weight"])


def test_state_dict_round_trip_gives_same_outputs() -> None:
    model = seeded(1, small, deep_supervision=True, grn=True).eval()
    nn.init.normal_(model.enc_block_0[0].grn_gamma)  # so GRN is not the identity
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = seeded(2, small, deep_supervision=True, grn=True).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        for a, b in zip(model(x), fresh(x), strict=True):
            assert torch.equal(a, b)


# --- up block -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim, size", [("3d", (3, 4, 5)), ("2d", (4, 5))])
def test_up_block_pads_at_the_front(dim: str, size: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    block = MedNeXtUpBlock(4, 2, exp_r=2, kernel_size=3, do_res=True, dim=dim)
    for p in block.parameters():  # non-zero biases everywhere: only padding can produce zeros
        nn.init.uniform_(p, 0.1, 0.5)
    x = torch.randn(1, 4, *size)
    out = block(x)
    assert out.shape == (1, 2, *(2 * s for s in size))

    n = len(size)
    interior = out[(slice(None), slice(None)) + (slice(1, None),) * n]
    for axis in range(2, 2 + n):
        assert torch.all(out.select(axis, 0) == 0), f"front plane of axis {axis} is not padding"
        assert torch.all(interior.select(axis, -1) != 0), f"back plane of axis {axis} is padded"
    # The interior is the unpadded block (2n-1 voxels) plus the 1x1 transposed residual.
    unpadded = MedNeXtBlock.forward(block, x) + block.res_conv(x)
    assert unpadded.shape[2:] == tuple(2 * s - 1 for s in size)
    torch.testing.assert_close(interior, unpadded)


def test_up_block_weight_layout() -> None:
    block = MedNeXtUpBlock(8, 4, exp_r=2, kernel_size=5, do_res=True)
    assert block.conv1.weight.shape == (8, 1, 5, 5, 5)
    assert block.res_conv.weight.shape == (8, 4, 1, 1, 1)


# --- checkpointing and DDP ------------------------------------------------------------------------

def test_checkpointing_same_outputs_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = seeded(0, small, deep_supervision=True, grn=True)
    ckpt = seeded(1, small, deep_supervision=True, grn=True, checkpoint_style="outside_block")
    ckpt.load_state_dict(plain.state_dict(), strict=True)

    calls = []
    real_checkpoint = mednext_network.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(mednext_network, "checkpoint", counting)
    x = torch.randn(2, 1, 32, 32, 32)
    outs = []
    for model in (plain, ckpt):
        model.train()
        result = model(x)
        sum((o.float() ** 2).mean() for o in result).backward()
        outs.append(result)
    # 9 stages of 1 block + 4 down + 4 up + 5 heads
    assert len(calls) == 22 and set(calls) == {False}
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7, msg=name)

    calls.clear()
    ckpt.eval()
    ckpt(x)
    ckpt.train()
    with torch.no_grad():
        ckpt(x)
    assert calls == []  # no checkpointing without a backward pass to come


def test_dummy_tensor_is_first_and_frozen() -> None:
    model = small(deep_supervision=True)
    assert next(iter(model.state_dict())) == "dummy_tensor"
    assert model.dummy_tensor.shape == (1,) and model.dummy_tensor.item() == 1.0
    assert not model.dummy_tensor.requires_grad
    assert any(p is model.dummy_tensor for p in model.parameters())

    model.train()
    sum(o.mean() for o in model(torch.randn(1, 1, 32, 32, 32))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []  # DDP needs no find_unused_parameters


# --- input and argument validation ----------------------------------------------------------------

@pytest.mark.parametrize("shape, match", [
    ((1, 1, 20, 32, 32),
     r"multiple of 16, got \(20, 32, 32\); pad or crop the input to \(32, 32, 32\)"),
    ((1, 1, 16, 16, 16), "more than one voxel"),
    ((1, 1, 32, 32), "5D input"),
    ((1, 2, 32, 32, 32), "1 input channels"),
])
def test_bad_input_3d(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        small()(torch.zeros(shape))


def test_bad_input_2d() -> None:
    model = small(dim="2d")
    with pytest.raises(ValueError, match="4D input"):
        model(torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.zeros(1, 1, 64, 40))
    assert model.eval()(torch.zeros(1, 1, 16, 32)).shape == (1, 2, 16, 32)


@pytest.mark.parametrize("kwargs, match", [
    (dict(model_id="XL"), "S, B, M, L"),
    (dict(model_id="S", kernel_size=4), "3, 5, 7"),
])
def test_factory_rejects_unknown_choices(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_mednext_v1(1, 2, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(exp_r=[2] * 8), "exp_r"),
    (dict(block_counts=[2] * 10), "block_counts"),
    (dict(kernel_size=4), "odd"),
    (dict(checkpoint_style="inside_block"), "checkpoint_style"),
    (dict(norm_type="batch"), "norm_type"),
    (dict(dim="1d"), "dim"),
])
def test_network_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        small(**kwargs)


def test_presets_and_checkpoint_default() -> None:
    assert set(MEDNEXT_PRESETS) == {"S", "B", "M", "L"}
    assert all(p["do_res"] and p["do_res_up_down"] for p in MEDNEXT_PRESETS.values())
    with torch.device("meta"):
        assert create_mednext_v1(1, 2, "S").checkpoint_style is None
        assert create_mednext_v1(1, 2, "M").checkpoint_style == "outside_block"
        assert create_mednext_v1(1, 2, "L", checkpoint_style=None).checkpoint_style is None
        layer = create_mednext_v1(1, 2, "S", norm_type="layer")
    assert isinstance(layer.bottleneck[0].norm, LayerNorm)


def test_explicit_encoder_decoder_kernels() -> None:
    with torch.device("meta"):
        model = small(kernel_size=3, enc_kernel_size=5, dec_kernel_size=7)
    assert model.enc_block_3[0].conv1.kernel_size == (5, 5, 5)
    assert model.down_3.conv1.kernel_size == (5, 5, 5)
    assert model.bottleneck[0].conv1.kernel_size == (7, 7, 7)
    assert model.up_0.conv1.kernel_size == (7, 7, 7)


# --- UpKern ---------------------------------------------------------------------------------------

def test_upkern_3_to_5_to_7(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    k3 = create_mednext_v1(1, 2, "S", kernel_size=3)
    for p in k3.parameters():  # move norm/bias params off their init so copies are meaningful
        if p.requires_grad:
            p.data.add_(0.01 * torch.randn_like(p))
    k5 = create_mednext_v1(1, 2, "S", kernel_size=5)
    with caplog.at_level(logging.INFO, logger="napari_connectomics"):
        assert upkern_load_weights(k5, k3) is k5
    assert "kernels resized" in caplog.text

    src, dst = k3.state_dict(), k5.state_dict()
    dw = "enc_block_1.0.conv1.weight"
    assert src[dw].shape == (64, 1, 3, 3, 3) and dst[dw].shape == (64, 1, 5, 5, 5)
    expected = F.interpolate(src[dw], size=(5, 5, 5), mode="trilinear", align_corners=False)
    torch.testing.assert_close(dst[dw], expected)
    resized_up = F.interpolate(src["up_2.conv1.weight"], size=(5, 5, 5), mode="trilinear",
                               align_corners=False)
    torch.testing.assert_close(dst["up_2.conv1.weight"], resized_up)
    for key in ("enc_block_1.0.conv1.bias", "enc_block_1.0.norm.weight", "up_2.norm.bias",
                "stem.weight", "down_0.conv2.weight", "up_1.res_conv.weight",
                "out_0.conv_out.weight", "dummy_tensor"):
        assert torch.equal(dst[key], src[key]), key

    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(k3.eval()(x), k5.eval()(x))  # an initialisation, not a copy

    k7 = create_mednext_v1(1, 2, "S", kernel_size=7)
    upkern_load_weights(k7, k5.state_dict())  # a state dict works as source too
    assert k7.state_dict()["bottleneck.0.conv1.weight"].shape == (512, 1, 7, 7, 7)
    assert torch.equal(k7.state_dict()["bottleneck.0.conv3.weight"],
                       src["bottleneck.0.conv3.weight"])


def test_upkern_2d_bilinear_and_extra_keys() -> None:
    source = seeded(0, small, dim="2d", kernel_size=3)
    target = seeded(1, small, dim="2d", kernel_size=5, deep_supervision=True)
    head_init = target.out_1.conv_out.weight.detach().clone()
    upkern_load_weights(target, source)
    expected = F.interpolate(source.enc_block_0[0].conv1.weight.detach(), size=(5, 5),
                             mode="bilinear", align_corners=False)
    torch.testing.assert_close(target.enc_block_0[0].conv1.weight, expected)
    assert torch.equal(target.out_1.conv_out.weight, head_init)  # only in target: kept

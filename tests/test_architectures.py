"""Architecture registry and every registered network: build, forward, deep-supervision contract."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from napari_connectomics.models import build_model
from napari_connectomics.models.architectures import ConnectomicsModel
from napari_connectomics.models.architectures.registry import (
    get_architecture_builder,
    get_architecture_spec,
    is_architecture_available,
    list_architectures,
    register_architecture,
)

BUILTIN = ["mednext", "mednext_custom", "monai_basic_unet3d", "monai_segresnet", "monai_swin_unetr",
           "monai_unet", "monai_unetr"]

# Small but real settings so every network runs on 2 CPU cores in a second or two.
SMALL = {
    "monai_basic_unet3d": ["model.filters=[8,8,16,16,32]"],
    "monai_unet": ["model.filters=[8,16,32]", "model.num_res_units=1"],
    "monai_unetr": ["model.hidden_size=96", "model.mlp_dim=192", "model.num_heads=4", "model.feature_size=8"],
    "monai_swin_unetr": ["model.feature_size=12"],
    "monai_segresnet": ["model.init_filters=8"],
    "mednext": [],
    "mednext_custom": ["model.mednext_base_channels=8", "model.mednext_exp_r=2", "model.mednext_block_counts=[1,1,1,1,1,1,1,1,1]"],
}
PATCH = {2: [64, 64], 3: [32, 32, 64]}


def _cfg(name: str, dims: int, *overrides: str):
    from napari_connectomics.config import load_config

    return load_config(overrides=[f"model.architecture={name}", f"model.spatial_dims={dims}",
                                  f"data.patch_size={PATCH[dims]}", "model.out_channels=3", "data.target=semantic", *overrides])


def test_builtin_names_are_registered():
    assert list_architectures() == sorted(list_architectures())
    for name in BUILTIN:
        assert name in list_architectures()
        assert is_architecture_available(name)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"'mednex' not found\. Did you mean 'mednext'\? Available: mednext"):
        get_architecture_builder("mednex")
    assert not is_architecture_available("mednex")


def test_register_a_new_architecture_and_refuse_a_duplicate():
    @register_architecture("test_identity", spatial_dims=(3,), size_multiple=4)
    def build_identity(cfg):
        """An identity network, for the registry test."""
        model = ConnectomicsModel(architecture="test_identity")
        model.forward = lambda x: x  # type: ignore[method-assign]
        return model

    assert "test_identity" in list_architectures()
    spec = get_architecture_spec("test_identity")
    assert spec.description == "An identity network, for the registry test."
    assert spec.size_multiple_for(None) == 4
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("test_identity")(lambda cfg: None)


def test_missing_dependency_makes_an_architecture_unavailable():
    register_architecture("test_needs_missing", requires=("no_such_module_xyz",))(lambda cfg: None)
    assert not is_architecture_available("test_needs_missing")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", BUILTIN)
def test_every_architecture_builds_and_runs_in_train_and_eval(name, dims):
    torch.manual_seed(0)
    model = build_model(_cfg(name, dims, *SMALL[name]))
    assert isinstance(model, ConnectomicsModel)
    x = torch.randn(1, 1, *PATCH[dims])
    model.train()
    out = model(x)
    full = out["output"] if isinstance(out, dict) else out
    assert full.shape == (1, 3, *PATCH[dims])
    full.float().mean().backward()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (1, 3, *PATCH[dims])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ["mednext", "mednext_custom"])
def test_deep_supervision_dict_in_training_tensor_in_eval(name, dims):
    model = build_model(_cfg(name, dims, *SMALL[name], "model.deep_supervision=true"))
    assert model.supports_deep_supervision and model.output_scales == 5
    x = torch.randn(1, 1, *PATCH[dims])
    model.train()
    out = model(x)
    assert list(out) == ["output", "ds_1", "ds_2", "ds_3", "ds_4"]
    for i, key in enumerate(out):
        assert out[key].shape == (1, 3, *[s // 2 ** i for s in PATCH[dims]])

    calls = []
    head = model.network.out_1
    handle = head.register_forward_hook(lambda *a: calls.append(1))
    model.eval()
    with torch.no_grad():
        y = model(x)
    handle.remove()
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3, *PATCH[dims])
    assert calls == [], "eval mode must not run the extra deep-supervision heads"


def test_without_deep_supervision_training_returns_a_tensor():
    model = build_model(_cfg("mednext_custom", 3, *SMALL["mednext_custom"]))
    model.train()
    assert isinstance(model(torch.randn(1, 1, *PATCH[3])), torch.Tensor)


def test_model_info_and_build_log(caplog):
    with caplog.at_level(logging.INFO, logger="napari_connectomics"):
        model = build_model(_cfg("mednext", 3, "model.deep_supervision=true"))
    info = model.get_model_info()
    assert info["name"] == "mednext" and info["deep_supervision"] is True and info["output_scales"] == 5
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["size_multiple"] == 16
    assert "mednext" in caplog.text and f"{info['parameters']:,}" in caplog.text and "deep supervision on" in caplog.text


def test_mednext_preset_matches_the_reference_count():
    model = build_model({"model": {"architecture": "mednext", "mednext_size": "S", "kernel_size": 3,
                                   "out_channels": 2, "deep_supervision": True}})
    assert model.get_model_info()["parameters"] == 5_552_843  # MEDNEXT.md, S k3 with DS


def test_unetr_declares_its_fixed_input_size():
    model = build_model(_cfg("monai_unetr", 3, *SMALL["monai_unetr"]))
    assert model.fixed_input_size == PATCH[3]
    assert get_architecture_spec("monai_unetr").fixed_input_size


def test_size_multiples_are_declared():
    expected = {"mednext": 16, "monai_swin_unetr": 32, "monai_unetr": 16, "monai_basic_unet3d": 16, "monai_segresnet": 8}
    for name, multiple in expected.items():
        assert get_architecture_spec(name).size_multiple_for(_cfg(name, 3, *SMALL[name]).model) == multiple
    assert get_architecture_spec("monai_unet").size_multiple_for(_cfg("monai_unet", 3, *SMALL["monai_unet"]).model) == 4


def test_official_mednext_impl_needs_its_package():
    from napari_connectomics.config import ConfigError

    pytest.importorskip("torch")
    if is_architecture_available("mednext") and __import__("importlib.util").util.find_spec("nnunet_mednext"):
        pytest.skip("nnunet_mednext is installed here")
    with pytest.raises(ConfigError, match="nnunet_mednext is not installed"):
        build_model(_cfg("mednext", 3, "model.mednext_impl=official"))


def test_registry_and_config_do_not_import_torch():
    code = ("import sys; from napari_connectomics.config import load_config; "
            "load_config(overrides=['model.architecture=mednext']); "
            "from napari_connectomics.models.architectures.registry import list_architectures; list_architectures(); "
            "assert 'torch' not in sys.modules and 'monai' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)

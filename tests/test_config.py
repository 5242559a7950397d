"""Config: defaults, YAML + dotlist merging, save/load, and every error path naming key and choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from napari_connectomics.config import (
    ConfigError,
    as_config,
    default_patch_size,
    effective_input_size,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("system", "model", "data", "optimizer", "scheduler", "training", "checkpoint", "inference")


def test_defaults_have_every_section_and_resolve_the_patch():
    cfg = load_config()
    assert tuple(cfg.keys()) == SECTIONS
    assert list(cfg.data.patch_size) == default_patch_size(3)
    assert effective_input_size(cfg) == list(cfg.data.patch_size)


def test_plan_fields_exist():
    cfg = load_config()
    for key in ("mednext_size", "mednext_base_channels", "mednext_exp_r", "mednext_do_res",
                "mednext_do_res_up_down", "mednext_block_counts", "mednext_checkpoint", "mednext_norm",
                "mednext_dim", "mednext_grn", "deep_supervision", "loss_functions", "loss_weights",
                "input_size", "filters", "kernel_size", "dropout", "norm", "activation"):
        assert key in cfg.model, key


def test_plan_example_config_loads_as_written():
    cfg = load_config(REPO / "tests/data/plan_mednext_lucchi.yaml")
    assert cfg.model.architecture == "mednext"
    assert cfg.model.deep_supervision is True
    assert list(cfg.model.loss_functions) == ["DiceLoss", "CrossEntropyLoss"]
    assert cfg.optimizer.lr == pytest.approx(1e-3)
    assert cfg.training.precision == "16-mixed"
    assert cfg.checkpoint.monitor == "val/loss"
    assert list(cfg.model.input_size) == [128, 128, 128]


@pytest.mark.parametrize("name", sorted(str(p.relative_to(REPO / "examples"))
                                         for p in (REPO / "examples").glob("**/*.yaml")))
def test_example_configs_load(name):
    load_config(REPO / "examples" / name)


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  architecture: mednext\n  kernel_size: 5\ndata:\n  batch_size: 4\n")
    cfg = load_config(path, ["model.kernel_size=7", "data.patch_size=[32,64,64]", "optimizer.lr=3e-4"])
    assert cfg.model.architecture == "mednext"
    assert cfg.model.kernel_size == 7
    assert cfg.data.batch_size == 4
    assert list(cfg.data.patch_size) == [32, 64, 64]
    assert cfg.optimizer.lr == pytest.approx(3e-4)


def test_mapping_overrides_and_partial_config():
    cfg = as_config(OmegaConf.create({"model": {"architecture": "mednext", "mednext_size": "B"}}))
    assert cfg.model.mednext_size == "B"
    assert cfg.training.max_epochs == 100  # defaults filled in


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config(overrides=["model.architecture=mednext", "model.deep_supervision=true",
                                 "data.patch_size=[32,64,64]"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temporary file left
    again = load_config(out)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


def test_save_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_text("model:\n  architecture: mednext\n")
    import napari_connectomics.config.io as io

    def broken(_cfg):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "config_to_yaml", broken)
    with pytest.raises(RuntimeError):
        save_config(load_config(), target)
    assert target.read_text() == "model:\n  architecture: mednext\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_mednext_dim_is_an_alias_of_spatial_dims():
    cfg = load_config(overrides=["model.architecture=mednext", "model.mednext_dim=2d"])
    assert cfg.model.spatial_dims == 2
    assert cfg.model.mednext_dim is None
    assert list(cfg.data.patch_size) == default_patch_size(2)


def test_mednext_dim_conflicting_with_spatial_dims():
    with pytest.raises(ConfigError, match="contradicts model.spatial_dims=3"):
        load_config(overrides=["model.mednext_dim=2d", "model.spatial_dims=3"])


def test_input_size_only_when_given():
    cfg = load_config(overrides=["model.architecture=monai_unetr", "data.patch_size=[32,64,64]"])
    assert cfg.model.input_size is None
    assert effective_input_size(cfg) == [32, 64, 64]


# --- error paths: one line, naming the key, the bad value and the valid choices -----------------

def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_suggests_the_closest():
    message = _error("model.mednext_sise=S")
    assert "model.mednext_sise" in message and "did you mean 'model.mednext_size'" in message


def test_unknown_section_suggests_the_closest():
    assert "did you mean 'optimizer'" in _error("optimiser.lr=0.1")


def test_unknown_key_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"training.max_epoch.*did you mean 'training.max_epochs'"):
        load_config(path)


def test_wrong_type_names_key_value_and_type():
    message = _error("model.kernel_size=abc")
    assert message == "model.kernel_size: 'abc' is not valid; expected an integer"


def test_wrong_list_element_type():
    assert "model.filters[1]" in _error("model.filters=[16,x]")


def test_wrong_container_type():
    assert "model.filters" in _error("model.filters=abc")


def test_invalid_choice_lists_choices():
    message = _error("model.architecture=mednext", "model.mednext_size=XL")
    assert message == "model.mednext_size: 'XL' is not valid; choose one of S, B, M, L"


def test_choice_typo_suggests():
    assert "did you mean AdamW" in _error("optimizer.name=adamw")


@pytest.mark.parametrize("kernel", [4, 9])
def test_mednext_kernel_choices(kernel):
    message = _error("model.architecture=mednext", f"model.kernel_size={kernel}")
    assert f"model.kernel_size: {kernel} is not valid" in message and "3, 5, 7" in message


def test_even_kernel_for_other_architectures():
    assert "odd kernel size" in _error("model.architecture=monai_unet", "model.kernel_size=4")


def test_mednext_patch_not_a_multiple_of_16():
    message = _error("model.architecture=mednext", "data.patch_size=[20,64,64]")
    assert "data.patch_size: [20, 64, 64]" in message
    assert "multiple of 16" in message and "[16, 64, 64]" in message


def test_mednext_single_voxel_bottleneck():
    assert "bottleneck" in _error("model.architecture=mednext", "data.patch_size=[16,16,16]")


def test_swin_unetr_needs_multiples_of_32():
    assert "multiple of 32" in _error("model.architecture=monai_swin_unetr", "data.patch_size=[16,64,64]")


def test_patch_length_must_match_spatial_dims():
    assert "give 2 sizes (y, x)" in _error("model.spatial_dims=2", "data.patch_size=[32,128,128]")


def test_unetr_window_must_equal_input_size():
    message = _error("model.architecture=monai_unetr", "data.patch_size=[32,64,64]",
                     "inference.window_size=[64,64,64]")
    assert "fixed input size" in message


def test_unknown_architecture_suggests():
    message = _error("model.architecture=mednxt")
    assert "model.architecture: 'mednxt'" in message and "did you mean mednext" in message
    assert "monai_unet" in message


def test_deep_supervision_on_an_architecture_without_it():
    message = _error("model.architecture=monai_unet", "model.deep_supervision=true")
    assert "mednext" in message and "no deep-supervision outputs" in message


def test_unknown_loss_suggests():
    assert "did you mean DiceLoss" in _error("model.loss_functions=[DiceLos]")


def test_loss_weights_must_match_losses():
    assert "one weight per loss" in _error("model.loss_functions=[DiceLoss,CrossEntropyLoss]",
                                           "model.loss_weights=[1.0]")


def test_exp_r_list_must_have_nine_entries():
    assert "model.mednext_exp_r" in _error("model.architecture=mednext_custom", "model.mednext_exp_r=[2,3]")


@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=-1", "optimizer.lr"),
    ("inference.overlap=0.99", "inference.overlap"),
    ("data.batch_size=0", "data.batch_size"),
    ("optimizer.lr=.nan", "optimizer.lr"),
])
def test_out_of_range_values(override, key):
    assert _error(override).startswith(key)


def test_override_without_equals():
    assert "not of the form key=value" in _error("model.architecture")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  architecture: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)


def test_yaml_list_instead_of_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- data\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_empty_yaml_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path).model.architecture == load_config().model.architecture

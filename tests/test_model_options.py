"""The Model panel's Qt-free rules: options per architecture, value conversion, checks, facts, counts."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from napari_connectomics.config import ConfigError, load_config
from napari_connectomics.config.schema import ModelConfig
from napari_connectomics.models.architectures import registry
from napari_connectomics.widgets import model_options as mo

REFERENCE = Path("/work/shared/reference/mednext_v1_state_dicts.json")


def cfg_with(**model):
    return load_config(overrides={"model": model})


# --- which options each architecture offers ----------------------------------------------------

BUILTIN = ["mednext", "mednext_custom", "monai_basic_unet3d", "monai_segresnet", "monai_swin_unetr", "monai_unet",
           "monai_unetr"]


def test_every_registered_architecture_offers_model_fields_from_its_spec():
    fields = set(ModelConfig.__dataclass_fields__)
    for architecture in registry.list_architectures():
        offered = mo.fields_for(architecture)
        assert set(offered) <= fields, architecture
        assert offered[:3] == list(registry.COMMON_FIELDS)
        assert offered == list(registry.get_architecture_spec(architecture).all_fields)
    with pytest.raises(ValueError, match="not found"):
        mo.fields_for("not_registered")


@pytest.mark.parametrize("architecture", BUILTIN)
def test_options_cover_what_the_builder_reads(architecture):
    """Drift guard: a field a builder starts reading must be declared in its spec (or excused)."""
    source = inspect.getsource(registry.get_architecture_spec(architecture).builder)
    read = set(re.findall(r"(?:cfg\.model|\bm)\.(\w+)", source))
    excused = {"architecture", "mednext_impl"}  # impl swaps code, not the network's shape
    assert read - excused <= set(mo.fields_for(architecture)), read - set(mo.fields_for(architecture))


def test_mednext_and_monai_key_options_are_offered():
    assert {"mednext_size", "kernel_size", "deep_supervision", "mednext_norm"} <= set(mo.fields_for("mednext"))
    assert {"filters", "norm", "activation", "dropout", "num_res_units"} <= set(mo.fields_for("monai_unet"))
    assert {"feature_size", "hidden_size", "num_heads", "mlp_dim", "pos_embed", "input_size"} <= set(
        mo.fields_for("monai_unetr"))


# --- widget <-> config values ---------------------------------------------------------------------

def test_values_convert_between_widget_and_config():
    assert mo.widget_value("monai_unet", "filters", [16, 32, 64]) == "16, 32, 64"
    assert mo.config_value("filters", "16, 32,64") == [16, 32, 64]
    assert mo.config_value("input_size", "") is None
    assert mo.config_value("deep_supervision_weights", "1, 0.5") == [1.0, 0.5]
    assert mo.config_value("mednext_exp_r", "3") == 3
    assert mo.config_value("mednext_exp_r", "2,3,4,4,4,4,4,3,2") == [2, 3, 4, 4, 4, 4, 4, 3, 2]
    assert mo.widget_value("mednext_custom", "mednext_exp_r", 4) == "4"
    assert mo.widget_value("monai_unetr", "feature_size", None) == 16
    assert mo.widget_value("monai_swin_unetr", "feature_size", None) == 24
    assert mo.config_value("kernel_size", 5) == 5
    with pytest.raises(ValueError, match="list of ints"):
        mo.config_value("filters", "16, lots")
    with pytest.raises(ValueError, match="expansion ratio"):
        mo.config_value("mednext_exp_r", "")


def test_optional_choice_keeps_unset_as_a_named_entry():
    labelled = mo.optional_choice_labels("mednext", "mednext_checkpoint")
    assert (labelled[0][1], "preset" in labelled[0][0]) == (None, True)
    assert [value for _, value in labelled] == [None, "outside_block", "none"]
    assert mo.optional_choice_labels("mednext", "mednext_norm") is None


def test_set_model_value_reports_a_wrong_type_in_one_line():
    cfg = cfg_with()
    with pytest.raises(ConfigError, match="model.kernel_size"):
        mo.set_model_value(cfg, "kernel_size", "big")
    with pytest.raises(ConfigError, match="not a model option"):
        mo.set_model_value(cfg, "kernal_size", 3)


# --- checks ---------------------------------------------------------------------------------------

def test_checked_config_validates_a_copy():
    cfg = cfg_with(architecture="mednext")
    cfg.model.kernel_size = 4
    with pytest.raises(ConfigError, match="MedNeXt kernels"):
        mo.checked_config(cfg)
    cfg.model.kernel_size = 5
    checked = mo.checked_config(cfg)
    assert checked is not cfg and checked.model.kernel_size == 5


@pytest.mark.parametrize("model, match", [
    ({"architecture": "monai_unetr", "norm": "group"}, "monai_unetr supports batch, instance"),
    ({"architecture": "monai_unet", "norm": "layer"}, "monai_unet supports"),
    ({"architecture": "monai_unetr", "num_heads": 7}, "divisible"),
    ({"architecture": "monai_swin_unetr", "feature_size": 16}, "multiple of 12"),
])
def test_checked_config_refuses_what_only_fails_while_building(model, match):
    with pytest.raises(ConfigError, match=match):
        mo.checked_config(cfg_with(**model))


def test_an_unavailable_architecture_is_labelled_and_refused(monkeypatch):
    spec = registry.ArchitectureSpec(name="needs_extra", builder=lambda cfg: None,
                                     requires=("no_such_module_for_tests",))
    monkeypatch.setitem(registry.ARCHITECTURES._items, "needs_extra", spec)
    assert mo.architecture_label("needs_extra") == "needs_extra (unavailable: pip install no_such_module_for_tests)"
    assert mo.architecture_label("mednext") == "mednext"
    cfg = cfg_with()
    cfg.model.architecture = "needs_extra"
    with pytest.raises(ConfigError, match="unavailable.*pip install no_such_module_for_tests"):
        mo.checked_config(cfg)
    assert not mo.model_facts(cfg).available


def test_switching_sets_aside_hidden_options_that_would_be_invalid_and_restores_them():
    cfg = cfg_with(architecture="mednext", deep_supervision=True, deep_supervision_weights=[1, 0.5],
                   kernel_size=5)
    aside: dict = {}
    mo.switch_architecture(cfg, "monai_unet", aside)
    assert cfg.model.deep_supervision is False and cfg.model.deep_supervision_weights is None
    assert aside == {"deep_supervision": True, "deep_supervision_weights": [1.0, 0.5]}
    assert cfg.model.kernel_size == 5  # offered by monai_unet: kept
    mo.checked_config(cfg)
    mo.switch_architecture(cfg, "mednext", aside)
    assert cfg.model.deep_supervision is True and list(cfg.model.deep_supervision_weights) == [1.0, 0.5]
    assert aside == {}


def test_switching_leaves_problems_with_shown_options_to_the_user():
    cfg = cfg_with(architecture="monai_unet", kernel_size=9)
    mo.switch_architecture(cfg, "mednext", {})
    assert cfg.model.kernel_size == 9
    with pytest.raises(ConfigError, match="MedNeXt kernels"):
        mo.checked_config(cfg)


# --- facts ----------------------------------------------------------------------------------------

def test_facts_of_mednext_with_deep_supervision():
    facts = mo.model_facts(cfg_with(architecture="mednext", mednext_size="B", deep_supervision=True))
    assert (facts.size_multiple, facts.output_scales, facts.deep_supervision) == (16, 5, True)
    assert facts.output_resolutions == ["1", "1/2", "1/4", "1/8", "1/16"]
    text = "\n".join(facts.lines("10,957,867"))
    assert "Patch multiple: 16" in text and "5 scales" in text and "Parameters: 10,957,867" in text


def test_facts_follow_the_options():
    assert mo.model_facts(cfg_with(architecture="monai_unet", filters=[8, 16, 32, 64])).size_multiple == 8
    assert mo.model_facts(cfg_with(architecture="mednext")).output_scales == 1
    unetr = mo.model_facts(load_config(overrides={"model": {"architecture": "monai_unetr"},
                                                  "data": {"patch_size": [32, 64, 64]}}))
    assert unetr.fixed_input_size == (32, 64, 64) and not unetr.deep_supervision_supported
    assert "fixed input 32x64x64" in "\n".join(unetr.lines("1"))


def test_parameter_key_ignores_the_patch_unless_the_input_size_is_fixed():
    a = load_config(overrides={"data": {"patch_size": [32, 64, 64]}})
    b = load_config(overrides={"data": {"patch_size": [32, 128, 128]}})
    assert mo.parameter_key(a) == mo.parameter_key(b)
    a.model.architecture = b.model.architecture = "monai_unetr"
    assert mo.parameter_key(a) != mo.parameter_key(b)


# --- parameter count (torch) ----------------------------------------------------------------------

@pytest.mark.parametrize("model", [
    {"architecture": "mednext", "mednext_size": "B", "kernel_size": 5, "deep_supervision": True},
    {"architecture": "monai_unet", "filters": [8, 16, 32], "norm": "instance"},
    {"architecture": "monai_swin_unetr", "feature_size": 12},  # not meta-buildable: built on the CPU
])
def test_count_parameters_matches_build_model(model):
    from napari_connectomics.models.build import build_model

    cfg = cfg_with(**model)
    assert mo.count_parameters(cfg) == build_model(cfg).get_model_info()["parameters"]


@pytest.mark.skipif(not REFERENCE.is_file(), reason="reference counts not present")
def test_count_parameters_matches_the_official_mednext():
    models = json.loads(REFERENCE.read_text())["models"]
    for key in ("B_k5_ds1", "S_k3_ds0"):
        size, kernel, ds = key.split("_")
        cfg = cfg_with(architecture="mednext", mednext_size=size, kernel_size=int(kernel[1:]),
                       deep_supervision=ds == "ds1")
        assert mo.count_parameters(cfg) == models[key]["params"]


def test_importing_the_options_and_the_panel_does_not_import_torch():
    code = ("import sys\n"
            "import napari_connectomics.widgets.model_options\n"
            "import napari_connectomics.widgets.model_panel\n"
            "heavy = [m for m in ('torch', 'monai') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_options_module_needs_no_qt():
    code = ("import sys\n"
            "import napari_connectomics.widgets.model_options\n"
            "assert not [m for m in ('qtpy', 'PyQt5', 'PySide2', 'napari') if m in sys.modules]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_omegaconf_lists_convert_for_widgets():
    cfg = cfg_with(filters=[4, 8])
    assert mo.widget_value("monai_unet", "filters", cfg.model.filters) == "4, 8"
    assert OmegaConf.is_list(cfg.model.filters)

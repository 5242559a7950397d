"""The Model panel through napari's manifest: architecture, options, info, YAML load/save."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

napari = pytest.importorskip("napari")

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_connectomics.config import load_config, save_config  # noqa: E402
from napari_connectomics.models.architectures import registry  # noqa: E402
from napari_connectomics.widgets import model_panel as panel_module  # noqa: E402
from napari_connectomics.widgets.session import session_for  # noqa: E402

pytestmark = pytest.mark.gui

COUNT_TIMEOUT_MS = 90_000  # the first count imports torch and MONAI in the background


@pytest.fixture
def panel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-connectomics", "Model")
    qtbot.waitUntil(lambda: not widget.counting, timeout=COUNT_TIMEOUT_MS)
    yield widget
    qtbot.waitUntil(lambda: not widget.counting, timeout=COUNT_TIMEOUT_MS)  # no job outlives the test


def built_parameters(cfg) -> int:
    from napari_connectomics.models.build import build_model

    return build_model(cfg).get_model_info()["parameters"]


def errors_since(start: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[start:]]


def test_mednext_options_reach_the_session_and_the_info(panel, qtbot):
    panel.architecture.value = "mednext"
    assert {"mednext_size", "kernel_size", "deep_supervision", "mednext_norm"} <= set(panel.option_names)
    panel.option("spatial_dims").value = 3  # the panels start 2D on a CPU (widgets/defaults.py)
    panel.option("mednext_size").value = "B"
    panel.option("kernel_size").value = 5
    panel.option("deep_supervision").value = True

    model = session_for(panel.viewer).config.model
    assert (model.architecture, model.mednext_size, model.kernel_size, model.deep_supervision) == (
        "mednext", "B", 5, True)
    assert (panel.facts.output_scales, panel.facts.size_multiple) == (5, 16)
    assert "5 scales" in panel.info_label.text() and "Patch multiple: 16" in panel.info_label.text()
    assert panel.error is None

    expected = built_parameters(session_for(panel.viewer).config)
    qtbot.waitUntil(lambda: panel.parameter_count == expected, timeout=COUNT_TIMEOUT_MS)
    assert expected == 10_957_867  # MedNeXt-B, k5, deep supervision: the official network's count
    assert f"{expected:,}" in panel.info_label.text()


def test_monai_unet_shows_its_options_and_sets_mednext_only_ones_aside(panel, qtbot):
    panel.architecture.value = "mednext"
    panel.option("deep_supervision").value = True
    panel.architecture.value = "monai_unet"
    assert {"filters", "norm", "activation", "dropout", "num_res_units"} <= set(panel.option_names)
    assert "mednext_size" not in panel.option_names
    session = session_for(panel.viewer)
    assert session.config.model.architecture == "monai_unet"
    assert session.config.model.deep_supervision is False  # U-Nets have no extra heads

    panel.option("filters").value = "8, 16, 32, 64"
    panel.option("norm").value = "instance"
    assert list(session.config.model.filters) == [8, 16, 32, 64] and session.config.model.norm == "instance"
    assert panel.facts.size_multiple == 8
    expected = built_parameters(session.config)
    qtbot.waitUntil(lambda: panel.parameter_count == expected, timeout=COUNT_TIMEOUT_MS)

    panel.architecture.value = "mednext"  # back: the deep supervision set before is restored
    assert session.config.model.deep_supervision is True and panel.option("deep_supervision").value is True
    assert list(session.config.model.filters) == [8, 16, 32, 64]  # kept while hidden


def test_norm_choices_are_those_the_network_has(panel):
    panel.architecture.value = "monai_unetr"
    assert tuple(panel.option("norm").choices) == ("batch", "instance")
    assert panel.option("feature_size").value == 16  # unset shows what the builder uses


def test_an_invalid_option_is_reported_and_the_next_edit_recovers(panel, qtbot):
    session = session_for(panel.viewer)
    panel.architecture.value = "mednext"
    before = session.config
    panel.option("kernel_size").value = 4
    assert "MedNeXt kernels" in panel.status_label.text() and "e05d5d" in panel.status_label.styleSheet()
    assert panel.error is not None and session.config is before  # the session keeps the last valid config
    assert "fix the options first" in panel.info_label.text()
    assert panel.option("kernel_size").enabled and panel.architecture.enabled

    panel.option("kernel_size").value = 7
    assert panel.error is None and panel.status_label.text() == ""
    assert session.config.model.kernel_size == 7
    panel.option("out_channels").value = 1
    assert session.config.model.out_channels == 1 and session.config.model.kernel_size == 7


def test_a_bad_list_is_reported_in_one_line(panel):
    panel.architecture.value = "monai_unet"
    panel.option("filters").value = "8, sixteen"
    assert "list of ints" in panel.status_label.text()
    panel.option("filters").value = "8, 16"
    assert panel.error is None and list(session_for(panel.viewer).config.model.filters) == [8, 16]


def test_rapid_edits_build_the_network_once(panel, qtbot, monkeypatch):
    panel.use_worker = False  # count in this process, where the patched function is
    calls: list[str] = []
    from napari_connectomics.models import build

    real = build.count_parameters

    def counting(cfg):
        calls.append(cfg.model.mednext_size)
        return real(cfg)

    monkeypatch.setattr(build, "count_parameters", counting)
    panel.architecture.value = "mednext"
    for size in ("B", "M", "L", "B"):
        panel.option("mednext_size").value = size
    assert panel.counting and "computing" in panel.info_label.text()
    qtbot.waitUntil(lambda: not panel.counting, timeout=COUNT_TIMEOUT_MS)
    assert calls == ["B"]
    panel.option("mednext_size").value = "S"
    qtbot.waitUntil(lambda: not panel.counting, timeout=COUNT_TIMEOUT_MS)
    panel.option("mednext_size").value = "B"  # counted before: shown at once, nothing built
    assert not panel.counting and calls == ["B", "S"]
    assert panel.parameter_count == built_parameters(session_for(panel.viewer).config)


def test_saved_yaml_loads_with_the_cli_loader(panel, tmp_path):
    panel.architecture.value = "mednext"
    panel.option("mednext_size").value = "B"
    panel.option("kernel_size").value = 5
    panel.option("deep_supervision").value = True
    path = tmp_path / "model.yaml"
    path.write_text("old contents\n")  # saving over a file replaces it whole (save_config is atomic)
    assert panel.save_config_file(path) == path

    code = ("import json, sys\nfrom omegaconf import OmegaConf\n"
            "from napari_connectomics.config import load_config\n"
            "print(json.dumps(OmegaConf.to_container(load_config(sys.argv[1]).model)))\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout)
    assert loaded == OmegaConf.to_container(session_for(panel.viewer).config.model)
    assert (loaded["architecture"], loaded["mednext_size"], loaded["kernel_size"], loaded["deep_supervision"]) == (
        "mednext", "B", 5, True)


def test_saving_invalid_options_is_refused(panel, tmp_path):
    panel.architecture.value = "mednext"
    panel.option("kernel_size").value = 4
    start = len(notification_manager.records)
    assert panel.save_config_file(tmp_path / "bad.yaml") is None
    assert not (tmp_path / "bad.yaml").exists()
    assert any("MedNeXt kernels" in m for m in errors_since(start))


def test_loading_a_yaml_replaces_the_config_and_the_panel_follows(panel, tmp_path):
    cfg = load_config(overrides={"model": {"architecture": "monai_segresnet", "init_filters": 8}})
    save_config(cfg, tmp_path / "segresnet.yaml")
    assert panel.load_config_file(tmp_path / "segresnet.yaml") is not None
    session = session_for(panel.viewer)
    assert session.config.model.architecture == "monai_segresnet"
    assert panel.architecture.value == "monai_segresnet" and panel.option("init_filters").value == 8
    assert panel.facts.size_multiple == 8 and "Loaded segresnet.yaml" in panel.status_label.text()


@pytest.mark.parametrize("text, match", [
    ("model: [unclosed\n", "not valid YAML"),
    ("model:\n  architecture: mednxt\n", "did you mean mednext"),
    ("model:\n  kernal_size: 5\n", "unknown config key"),
])
def test_a_bad_yaml_is_a_notification_and_changes_nothing(panel, tmp_path, text, match):
    session = session_for(panel.viewer)
    panel.architecture.value = "mednext"
    before = session.config
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    start = len(notification_manager.records)
    assert panel.load_config_file(path) is None
    messages = errors_since(start)
    assert len(messages) == 1 and match in messages[0] and "\n" not in messages[0]
    assert session.config is before and panel.architecture.value == "mednext"
    panel.option("mednext_size").value = "M"  # still usable
    assert session.config.model.mednext_size == "M"


def test_the_panel_follows_a_config_set_elsewhere(panel):
    session = session_for(panel.viewer)
    session.config = load_config(overrides={"model": {"architecture": "monai_unet", "filters": [4, 8, 16]}})
    assert panel.architecture.value == "monai_unet" and panel.option("filters").value == "4, 8, 16"
    assert panel.facts.size_multiple == 4
    session.config = load_config(overrides={"model": {"architecture": "monai_unetr"},
                                            "data": {"patch_size": [32, 64, 64]}})
    assert panel.facts.fixed_input_size == (32, 64, 64)


def test_two_panels_of_one_viewer_stay_in_step(panel, qtbot):
    other = panel_module.ModelPanel(panel.viewer)
    qtbot.addWidget(other)
    panel.architecture.value = "mednext"
    panel.option("mednext_size").value = "L"
    assert other.architecture.value == "mednext" and other.option("mednext_size").value == "L"
    qtbot.waitUntil(lambda: not other.counting, timeout=COUNT_TIMEOUT_MS)


def test_an_unavailable_architecture_says_why(make_napari_viewer, qtbot, monkeypatch):
    spec = registry.ArchitectureSpec(name="needs_extra", builder=lambda cfg: None,
                                     requires=("no_such_module_for_tests",))
    monkeypatch.setitem(registry.ARCHITECTURES._items, "needs_extra", spec)
    viewer = make_napari_viewer()
    _, panel = viewer.window.add_plugin_dock_widget("napari-connectomics", "Model")
    labels = [panel.architecture.native.itemText(i) for i in range(panel.architecture.native.count())]
    assert "needs_extra (unavailable: pip install no_such_module_for_tests)" in labels
    before = session_for(viewer).config
    panel.architecture.value = "needs_extra"
    assert "pip install no_such_module_for_tests" in panel.status_label.text()
    assert session_for(viewer).config is before
    panel.architecture.value = "mednext"
    assert panel.error is None and session_for(viewer).config.model.architecture == "mednext"
    qtbot.waitUntil(lambda: not panel.counting, timeout=COUNT_TIMEOUT_MS)


def test_edits_elsewhere_keep_pending_model_edits(panel):
    session = session_for(panel.viewer)
    panel.architecture.value = "mednext"
    panel.option("kernel_size").value = 4  # invalid: waits in the panel
    edited = session.config.copy()
    edited.training.max_epochs = 7
    session.config = edited  # the Train panel changes its own fields
    assert panel.option("kernel_size").value == 4 and "MedNeXt kernels" in panel.status_label.text()
    panel.option("kernel_size").value = 5
    assert session.config.model.kernel_size == 5 and session.config.training.max_epochs == 7


def test_the_info_shows_how_long_a_training_step_takes(panel, qtbot):
    qtbot.waitUntil(lambda: not panel.probing, timeout=COUNT_TIMEOUT_MS)  # measured in the worker
    assert panel.step_time is not None and panel.step_time.seconds > 0 and panel.step_time.device == "CPU"
    assert f"{panel.parameter_count:,} · ~" in panel.info_label.text()
    assert "per training step on CPU" in panel.info_label.text()

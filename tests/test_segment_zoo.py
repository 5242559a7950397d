"""The Segment panel with BioImage.IO model packages (issue 12): a package is accepted wherever a
checkpoint is (the field, the file dialog's filter, an unpacked folder), its info line names it,
Segment runs it through the block-wise engine in the worker with the probabilities of the
checkpoint it was exported from, and a package that cannot be run is one notification with the
layers unchanged. Offline (conftest.offline_bioimageio); tiny 2D networks, a 4 x 72 x 56 stack."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")
napari = pytest.importorskip("napari")

from zoo_packages import tiny_2d_checkpoint, zoo_package  # noqa: E402

from napari_connectomics.widgets.errors import UserError  # noqa: E402
from napari_connectomics.widgets.segment_request import (  # noqa: E402
    CHECKPOINT_FILTER,
    OUTPUT_KEY,
    check_checkpoint_path,
    read_checkpoint_info,
)
from napari_connectomics.widgets.session import session_for  # noqa: E402

PLUGIN = "napari-connectomics"
WAIT_MS = int(os.environ.get("SEG_WAIT_MS", 180_000))  # generous: the cores are shared
PACKAGE_INFO = ("BioImage.IO model 'tiny zoo model': monai_unet, 2D (batch,channel,y,x), "
                "1 -> 2 channels, target binary, window 32x32")


@pytest.fixture(scope="module", autouse=True)
def offline(offline_bioimageio):
    """Every test of this module offline (conftest.offline_bioimageio); the engine workers the
    viewers start inherit its bioimageio cache folder."""
    return offline_bioimageio


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, its exported package) of a tiny 2D network (without bioimageio's own test,
    which tests/test_bioimageio.py runs)."""
    from napari_connectomics.inference.bioimageio_export import export_bioimageio

    folder = tmp_path_factory.mktemp("segment-zoo")
    checkpoint = tiny_2d_checkpoint(folder / "tiny2d.ckpt")
    result = export_bioimageio(checkpoint, folder / "tiny2d.zip", name="tiny zoo model", test=False)
    return checkpoint, result.path


@pytest.fixture(scope="module")
def em() -> np.ndarray:
    from napari_connectomics.data.synthetic import make_synthetic_em

    return make_synthetic_em(shape=(16, 72, 56), seed=4).image[:4]  # 4 x 72 x 56


def dock_panel(viewer):
    _dock, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    panel.predict_form.device.value = "cpu"
    return panel


def choose(panel, path: Path, qtbot, shown: str) -> str:
    """Put ``path`` in the checkpoint field and wait for the info line to show ``shown``."""
    panel.checkpoint_edit.value = str(path)
    qtbot.waitUntil(lambda: shown in panel.info_label.value, timeout=WAIT_MS)
    return panel.info_label.value


def run(panel, qtbot) -> None:
    panel.segment_button.native.click()
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)


# ---------------------------------------------------------------------------------------------


def test_packages_are_accepted_and_described(packaged, tmp_path):
    """Without a viewer: the path check takes a .zip, an rdf.yaml and an unpacked folder (not any
    folder), the dialog offers them, and the info names the package, its axes and channels."""
    checkpoint, package = packaged
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    assert check_checkpoint_path(str(package)) == package
    assert check_checkpoint_path(folder) == folder
    assert check_checkpoint_path(folder / "rdf.yaml") == folder / "rdf.yaml"
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="is a folder.*rdf.yaml"):
        check_checkpoint_path(tmp_path / "plain")
    assert all(pattern in CHECKPOINT_FILTER for pattern in ("*.ckpt", "*.zip", "*.yaml"))

    for source in (package, folder, folder / "rdf.yaml"):
        info = read_checkpoint_info(source)
        assert info.summary() == PACKAGE_INFO, source
    info = read_checkpoint_info(checkpoint)
    assert not info.package and info.summary().startswith("monai_unet, 2D, target binary")

    foreign = read_checkpoint_info(zoo_package(tmp_path / "zoo"))
    assert foreign.summary() == ("BioImage.IO model 'zoo test model': torchscript network, 2D "
                                 "(batch,channel,y,x), 1 -> 2 channels, target binary, window 256x256")
    with pytest.raises(UserError, match="time axis.*not supported") as caught:
        read_checkpoint_info(zoo_package(tmp_path / "timed", time_axis=True))
    assert "\n" not in str(caught.value)


def test_segment_with_a_package_equals_its_checkpoint(make_napari_viewer, qtbot, packaged, em, errors):
    checkpoint, package = packaged
    viewer = make_napari_viewer()
    image = viewer.add_image(em.copy(), name="em")
    panel = dock_panel(viewer)
    assert choose(panel, package, qtbot, "tiny zoo model") == PACKAGE_INFO

    run(panel, qtbot)
    assert not errors
    probabilities = viewer.layers["em probabilities"]
    assert probabilities.data.shape == em.shape and probabilities.data.dtype == np.float32
    from_package = np.asarray(probabilities.data).copy()
    assert 0.0 <= from_package.min() and from_package.max() <= 1.0
    assert np.ptp(from_package) > 0.01  # a comparison of spread values, not of constants
    assert isinstance(viewer.layers["em segmentation"], napari.layers.Labels)

    info = choose(panel, checkpoint, qtbot, "monai_unet, 2D, target binary")
    assert "BioImage.IO" not in info
    run(panel, qtbot)
    assert not errors
    assert viewer.layers["em probabilities"] is probabilities  # the same layer, updated
    from_checkpoint = np.asarray(probabilities.data)
    assert np.abs(from_package - from_checkpoint).max() <= 1e-3
    assert np.array_equal(image.data, em) and panel.predict_runs == 2
    assert len([layer for layer in viewer.layers if OUTPUT_KEY in layer.metadata]) == 2


def test_an_unsupported_package_is_one_notification(make_napari_viewer, qtbot, em, errors, tmp_path):
    """A time axis (as in tests/test_bioimageio.py): the info line says so, Segment notifies the
    one-line error once, and no layer is added or changed."""
    rdf = zoo_package(tmp_path / "zoo", time_axis=True)
    viewer = make_napari_viewer()
    image = viewer.add_image(em.copy(), name="em")
    panel = dock_panel(viewer)
    info = choose(panel, rdf.parent, qtbot, "time axis")  # the unpacked folder
    assert "not supported" in info and not errors

    run(panel, qtbot)
    assert len(errors) == 1, errors
    assert "time axis" in errors[0] and "not supported" in errors[0] and "\n" not in errors[0]
    assert [layer.name for layer in viewer.layers] == ["em"]
    assert np.array_equal(image.data, em)
    assert panel.segment_button.enabled and not panel.running and session_for(viewer).busy == ""

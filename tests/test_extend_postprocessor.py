"""A newcomer adds a post-processor: registered once, `predict --help` and the Segment panel offer it."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import numpy as np
import pytest

from napari_connectomics.cli import main
from napari_connectomics.inference.postprocess import postprocess
from napari_connectomics.inference.postprocessors import register_postprocessor
from napari_connectomics.registry import POSTPROCESSORS

NAME = "largest"


@register_postprocessor(NAME, label="largest object only")
def largest_object(maps, *, threshold: float, min_size: int):
    """Keeps only the largest connected object (a test post-processor)."""
    from skimage.measure import label

    objects = label(maps.foreground > threshold)
    if objects.max() == 0:
        return objects.astype(np.uint16)
    sizes = np.bincount(objects.ravel())
    sizes[0] = 0
    return (objects == sizes.argmax()).astype(np.uint16)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    yield
    POSTPROCESSORS.unregister(NAME)


def test_it_runs_through_postprocess():
    probabilities = np.zeros((2, 1, 8, 8), np.float32)
    probabilities[1, 0, :2, :2] = 1  # 4 voxels
    probabilities[1, 0, 4:, 4:] = 1  # 16 voxels
    probabilities[0] = 1 - probabilities[1]
    labels = postprocess(probabilities, NAME)
    assert labels.sum() == 16 and labels[0, 5, 5] == 1 and labels[0, 0, 0] == 0


def test_predict_help_offers_it():
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        main(["predict", "--help"])
    help_text = " ".join(out.getvalue().split())
    assert f"{NAME}: Keeps only the largest connected object" in help_text
    assert "cc: connected components" in help_text


@pytest.mark.gui
def test_segment_panel_offers_it(make_napari_viewer):
    viewer = make_napari_viewer()
    _, panel = viewer.window.add_plugin_dock_widget("napari-connectomics", "Segment")
    choices = panel.post_form.instances.choices
    assert NAME in choices and "cc" in choices
    panel.post_form.instances.value = NAME
    assert panel.post_form.instances.value == NAME

"""napari API shims (widgets/compat.py) in a real viewer: new layers leave the user's selection alone."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_connectomics.widgets.compat import adding_unselected, restoring_selection  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def painting(make_napari_viewer):
    """A viewer whose active layer is the Labels layer being painted."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 16, 16), np.float32), name="EM")
    painted = viewer.add_labels(np.zeros((4, 16, 16), np.uint8), name="painted")
    viewer.layers.selection.active = painted
    return viewer, image, painted


def shown_selection(viewer) -> set[str]:
    """The names of the rows napari's layer list widget shows selected."""
    view = viewer.window._qt_viewer.layers
    return {index.data() for index in view.selectionModel().selectedRows()}  # DisplayRole: the name


@pytest.mark.parametrize("guard", [adding_unselected, lambda viewer: restoring_selection(viewer.layers)],
                         ids=["events-held", "restore"])
@pytest.mark.parametrize("both", [False, True], ids=["one-active", "two-selected"])
def test_added_layers_leave_the_selection_alone(painting, guard, both):
    viewer, image, painted = painting
    if both:  # two layers selected: napari then has no active layer
        viewer.layers.selection.add(image)
    before = (viewer.layers.selection.active, set(viewer.layers.selection))
    assert shown_selection(viewer) == {layer.name for layer in before[1]}
    with guard(viewer):
        added = viewer.add_image(np.ones((4, 16, 16), np.float32), name="preview")
        viewer.add_labels(np.ones((4, 16, 16), np.uint8), name="segmentation")
    assert (viewer.layers.selection.active, set(viewer.layers.selection)) == before
    assert shown_selection(viewer) == {layer.name for layer in before[1]}  # the layer list agrees
    assert before[1] == ({image, painted} if both else {painted})
    assert added in viewer.layers and viewer.layers[-1].name == "segmentation"
    viewer.add_image(np.ones((2, 2), np.float32), name="after")  # napari's own behaviour is back
    assert viewer.layers.selection.active.name == "after"


def test_selection_is_restored_when_the_block_raises(painting):
    viewer, _, painted = painting
    with pytest.raises(ValueError), adding_unselected(viewer):
        viewer.add_image(np.ones((4, 16, 16), np.float32), name="preview")
        raise ValueError("the add failed half-way")
    assert viewer.layers.selection.active is painted
    viewer.add_image(np.ones((2, 2), np.float32), name="after")
    assert viewer.layers.selection.active.name == "after"

"""napari API differences between the versions the plugin supports (napari >= 0.5)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["adding_unselected", "restoring_selection", "viewer_camera"]


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None)
    return camera if camera is not None else viewer.camera


@contextmanager
def adding_unselected(viewer: Any) -> Iterator[None]:
    """Layers added inside the block are not selected; the user's selection stays as it is.

    napari selects every new layer, and putting the user's selection back rebuilds the layer
    controls twice: on a 2-core laptop that churn is ~40 of the ~100 ms an ``add_image`` blocks
    the GUI. Here the selection's events are held back while layers are added and the selection is
    put back before anyone hears of it, so neither change reaches the views (public API only;
    napari's own switch for this, ``LayerList._activate_on_insert``, is private to plugins).
    """
    selection = viewer.layers.selection
    with selection.events.blocker_all():
        with restoring_selection(viewer.layers):
            yield


@contextmanager
def restoring_selection(layers: Any) -> Iterator[None]:
    """Put the selection and the active layer of ``layers`` back as they were before the block."""
    selection = layers.selection
    active, selected = selection.active, set(selection)
    try:
        yield
    finally:
        kept = {layer for layer in selected if layer in layers}
        selection.intersection_update(kept)
        selection.update(kept)
        if active is not None and active in layers:
            selection.active = active

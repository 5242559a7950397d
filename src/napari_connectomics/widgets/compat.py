"""napari API differences between the versions the plugin supports (napari >= 0.5)."""

from __future__ import annotations

from typing import Any

__all__ = ["viewer_camera"]


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None)
    return camera if camera is not None else viewer.camera

"""The Train panel's image/labels pairs: one row of layer pickers (or file specs) per pair, and how
the chosen layers are read (private copies, so the user keeps painting while a network trains)."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QStackedWidget,
    QWidget,
)

from .notify import UserError

__all__ = ["PairRow", "image_source", "labels_box", "refill_combo", "snapshot_image", "snapshot_labels",
           "spatial_data", "voxel_size_of"]

_REFERENCE_SUFFIXES = (".tif", ".tiff", ".npy")


def snapshot_labels(layer: Any) -> np.ndarray:
    """A private copy of a Labels layer's data (the user keeps painting while the network trains)."""
    if getattr(layer, "multiscale", False):
        raise UserError(f"{layer.name} is a multiscale Labels layer; paint into a single-scale Labels layer")
    return np.array(layer.data, copy=True)


def snapshot_image(layer: Any, box: tuple[slice, ...] | None = None) -> Any:
    """An in-memory image is copied; a lazy one (dask/zarr over a file) is read-only and kept as is.
    With ``box`` (spatial slices, see :func:`labels_box`), only that part, read into memory: of a
    lazy volume, only the chunks under it are read."""
    data = spatial_data(layer)
    if getattr(layer, "rgb", False):
        raise UserError(f"{layer.name} is an RGB image; convert it to a greyscale volume first")
    if box is not None:
        return np.array(data[(Ellipsis, *box)], copy=True)
    return data.copy() if isinstance(data, np.ndarray) else data


def spatial_data(layer: Any) -> Any:
    """A layer's full-resolution data (the first level of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def labels_box(image: Any, labels: Any, tolerance: float = 1e-3) -> tuple[slice, ...] | None:
    """The image voxels under a Labels layer smaller than its Image layer, or None.

    A Labels layer painted over part of a large image (e.g. a crop with its offset, over a lazy
    volume) trains with that part of the image: it must have the image's scale and lie on its
    voxel grid (its translate a whole number of voxels from the image's), inside it. Anything else
    (same shape, another scale, off the grid, outside) is None: the pair is checked as it is.
    """
    label_shape = tuple(int(n) for n in np.shape(labels.data))
    ndim = len(label_shape)
    image_shape = tuple(int(n) for n in np.shape(spatial_data(image)))[-ndim:]
    if ndim == 0 or len(image_shape) != ndim or label_shape == image_shape:
        return None
    scale = np.asarray(image.scale, dtype=float)[-ndim:]
    if not np.allclose(np.asarray(labels.scale, dtype=float)[-ndim:], scale, rtol=tolerance, atol=0):
        return None
    shift = np.asarray(labels.translate, dtype=float)[-ndim:] - np.asarray(image.translate, dtype=float)[-ndim:]
    offset = shift / scale
    start = np.round(offset)
    if not np.allclose(offset, start, atol=tolerance):
        return None
    stop = start + np.asarray(label_shape)
    if np.any(start < 0) or np.any(stop > np.asarray(image_shape)):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def image_source(layer: Any) -> str | None:
    """The file spec a layer was read from, when it names one volume (our reader records it)."""
    source = (getattr(layer, "metadata", None) or {}).get("source")
    if isinstance(source, str) and source:
        return source
    path = getattr(getattr(layer, "source", None), "path", None)
    if path and str(path).lower().endswith(_REFERENCE_SUFFIXES):
        return str(path)
    return None


def voxel_size_of(layer: Any) -> list[float]:
    """The layer's scale as z-y-x voxel size (a 2D layer gets z = 1)."""
    scale = [float(s) for s in layer.scale][-3:]
    return [1.0] * (3 - len(scale)) + scale


class PairRow(QWidget):
    """One training pair: Image and Labels layer pickers, or image and labels file specs."""

    def __init__(self, index: int, removable: bool, on_remove: Any) -> None:
        super().__init__()
        self.index = index
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.image_combo.setToolTip("the Image layer the labels were painted on")
        self.labels_combo.setToolTip("the Labels layer with your annotation (same shape as the image)")
        self.image_path = QLineEdit()
        self.labels_path = QLineEdit()
        self.image_path.setPlaceholderText("image: stack.h5:raw, stack.zarr/raw, stack.tif")
        self.labels_path.setPlaceholderText("labels: stack.h5:labels")
        self.pages = QStackedWidget()
        for first, second in ((self.image_combo, self.labels_combo), (self.image_path, self.labels_path)):
            page = QWidget()
            grid = QGridLayout(page)
            grid.setContentsMargins(0, 0, 0, 0)
            grid.addWidget(QLabel("image"), 0, 0)
            grid.addWidget(first, 0, 1)
            grid.addWidget(QLabel("labels"), 1, 0)
            grid.addWidget(second, 1, 1)
            grid.setColumnStretch(1, 1)
            self.pages.addWidget(page)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.pages, 1)
        self.remove_button = QPushButton("−")
        self.remove_button.setFixedWidth(28)
        self.remove_button.setToolTip("remove this pair")
        self.remove_button.setVisible(removable)
        self.remove_button.clicked.connect(lambda: on_remove(self))
        layout.addWidget(self.remove_button)

    def set_files_mode(self, files: bool) -> None:
        self.pages.setCurrentIndex(1 if files else 0)


def refill_combo(combo: QComboBox, names: list[str], default: str | None) -> None:
    """Replace a combo's items, keeping its current choice when it still exists."""
    current = combo.currentText()
    if [combo.itemText(i) for i in range(combo.count())] == names:
        return
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    choice = current if current in names else default
    if choice is not None:
        combo.setCurrentText(choice)
    combo.blockSignals(False)
    combo.currentTextChanged.emit(combo.currentText())

"""The Train panel's class legend: label value -> class name in the Labels layer's colours, with a
button per class that selects the value to paint (napari's default 1 is background when sparse)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtWidgets import QFrame, QGridLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from .notify import show_warning
from .training_request import class_value, default_class_names

__all__ = ["ClassLegend"]

WARNING_STYLE = "color: #e0a040;"


class _Swatch(QLabel):
    """A colour square: the Labels layer's colour for one value (empty when transparent)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFixedSize(18, 18)
        self.setFrameShape(QFrame.Shape.Box)

    def set_rgba(self, rgba: Any) -> None:
        if rgba is None or len(rgba) < 3 or (len(rgba) > 3 and float(rgba[3]) == 0.0):
            self.setStyleSheet("background: transparent;")
            self.setToolTip("transparent (not drawn)")
            return
        r, g, b = (int(round(float(c) * 255)) for c in rgba[:3])
        self.setStyleSheet(f"background: rgb({r}, {g}, {b});")
        self.setToolTip(f"rgb({r}, {g}, {b})")


@dataclass
class _LegendRow:
    """The widgets of one legend row (class index, value, colour, name, buttons)."""

    index: int
    value_label: QLabel
    swatch: _Swatch
    name: QLineEdit
    paint: QPushButton
    remove: QPushButton | None


class ClassLegend(QWidget):
    """Label value -> class name, in the Labels layer's colours, with a paint button per class.

    napari paints 1 by default, which is *background* in sparse mode; the legend shows what each
    value means and selects the right label to paint, and warns when only background is painted.
    Class names are kept per class index (0 = background), so switching sparse/dense keeps them.
    """

    def __init__(self, activate_layer: Any = None) -> None:
        super().__init__()
        self._activate_layer = activate_layer
        self._layer: Any = None
        self._mode = "sparse"
        self._task = "semantic"
        self._names: dict[int, str] = default_class_names()
        self._painted: set[int] = set()
        self.rows: list[_LegendRow] = []
        self._grid = QGridLayout()
        self._grid.setContentsMargins(0, 0, 0, 0)
        self.add_button = QPushButton("+ class")
        self.add_button.setToolTip("add a class (painted with the next label value)")
        self.add_button.clicked.connect(self.add_class)
        self.new_object_button = QPushButton("paint a new object")
        self.new_object_button.setToolTip("instance task: select an unused label value for the next object")
        self.new_object_button.clicked.connect(self.paint_new_object)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.warning = QLabel()
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet(WARNING_STYLE)
        self.warning.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.hint)
        layout.addLayout(self._grid)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.new_object_button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        layout.addWidget(self.warning)
        self._rebuild()

    # --- state -----------------------------------------------------------------------------------
    @property
    def layer(self) -> Any:
        return self._layer

    def set_layer(self, layer: Any) -> None:
        """Follow a Labels layer: its colours, and what is painted into it from now on."""
        if layer is self._layer:
            return
        self._disconnect()
        self._layer = layer
        self._painted = set()
        if layer is not None:
            layer.events.colormap.connect(self._refresh_colours)
            layer.events.paint.connect(self._on_paint)
        self._rebuild()

    def set_mode(self, mode: str) -> None:
        self._mode = mode
        self._rebuild()

    def set_task(self, task: str) -> None:
        self._task = task
        self._rebuild()

    def class_names(self) -> dict[int, str]:
        """Class index -> name, as edited."""
        for row in self.rows:
            self._names[row.index] = row.name.text().strip() or f"class {row.index}"
        return dict(self._names)

    def value_of(self, index: int) -> int:
        return class_value(index, self._mode)

    # --- actions ---------------------------------------------------------------------------------
    def add_class(self) -> None:
        self.class_names()
        index = max(self._names) + 1
        self._names[index] = f"class {index}"
        self._rebuild()

    def remove_class(self, index: int) -> None:
        self.class_names()
        self._names.pop(index, None)
        self._rebuild()

    def paint(self, value: int) -> None:
        """Select ``value`` as the label to paint and switch the layer to the paint brush."""
        if self._layer is None:
            show_warning("pick the Labels layer you paint into first")
            return
        self._layer.selected_label = int(value)
        self._layer.mode = "paint"
        if self._activate_layer is not None:
            self._activate_layer(self._layer)

    def paint_new_object(self) -> None:
        """Instance task: each object gets its own value (the largest painted + 1)."""
        if self._layer is None:
            show_warning("pick the Labels layer you paint into first")
            return
        largest = int(np.max(self._layer.data)) if np.size(self._layer.data) else 0
        self.paint(max(largest + 1, class_value(1, self._mode)))

    # --- painted values --------------------------------------------------------------------------
    def _on_paint(self, event: Any) -> None:
        self._painted |= _painted_values(getattr(event, "value", None))
        self._refresh_warning()

    def note_painted(self, values: set[int]) -> None:
        """Values known to be painted (e.g. found when a run starts)."""
        self._painted |= set(values)
        self._refresh_warning()

    def _refresh_warning(self) -> None:
        text = ""
        painted = {v for v in self._painted if v != 0}
        if self._mode == "sparse" and painted == {1}:
            text = ("Only label 1 is painted so far, and 1 is background in sparse mode. Paint objects "
                    f"with 2 (the 'paint' button of {self._names.get(1, 'class 1')!r}).")
        self.warning.setText(text)
        self.warning.setVisible(bool(text))

    # --- drawing ---------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        self.class_names() if self.rows else None
        while self._grid.count():
            item = self._grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.rows = []
        instance = self._task == "instance"
        shown = {0: self._names.get(0, "background")}
        if instance:
            shown[1] = "objects (each painted with its own value)"
        else:
            shown.update({k: v for k, v in sorted(self._names.items()) if k != 0})
        for position, (index, name) in enumerate(shown.items()):
            self.rows.append(self._make_row(position, index, name, removable=not instance and index >= 2))
        self.add_button.setVisible(not instance)
        self.new_object_button.setVisible(instance)
        if self._mode == "sparse":
            self.hint.setText("Sparse: 0 = not annotated (ignored), 1 = background, 2.. = classes. "
                              "napari paints 1 by default: that is background here.")
        else:
            self.hint.setText("Dense: every voxel is annotated; 0 = background, 1.. = classes.")
        self._refresh_colours()
        self._refresh_warning()

    def _make_row(self, position: int, index: int, name: str, removable: bool) -> _LegendRow:
        value = class_value(index, self._mode)
        objects = self._task == "instance" and index == 1  # one row for all objects, each its own value
        value_label = QLabel(f"{value}, {value + 1}, …" if objects else f"{value}")
        swatch = _Swatch()
        edit = QLineEdit(name)
        edit.setReadOnly(objects)
        edit.setToolTip("class name (saved with the run)")
        paint = QPushButton("paint")
        paint.setToolTip(f"paint label {value} into the Labels layer")
        if objects:
            paint.clicked.connect(self.paint_new_object)
        else:
            paint.clicked.connect(lambda _=False, v=value: self.paint(v))
        remove = None
        for column, widget in enumerate((swatch, value_label, edit, paint)):
            self._grid.addWidget(widget, position, column)
        if removable:
            remove = QPushButton("−")
            remove.setFixedWidth(28)
            remove.setToolTip("remove this class")
            remove.clicked.connect(lambda _=False, i=index: self.remove_class(i))
            self._grid.addWidget(remove, position, 4)
        self._grid.setColumnStretch(2, 1)
        return _LegendRow(index, value_label, swatch, edit, paint, remove)

    def _refresh_colours(self, event: Any = None) -> None:
        for row in self.rows:
            row.swatch.set_rgba(self.colour_of(class_value(row.index, self._mode)))

    def colour_of(self, value: int) -> Any:
        """The layer's RGBA for ``value`` (None without a layer, or for the transparent 0)."""
        if self._layer is None:
            return None
        try:
            return np.asarray(self._layer.colormap.map(int(value))).ravel()
        except Exception:  # older napari: get_color
            colour = self._layer.get_color(int(value))
            return None if colour is None else np.asarray(colour).ravel()

    def _disconnect(self) -> None:
        if self._layer is None:
            return
        for emitter, slot in ((self._layer.events.colormap, self._refresh_colours),
                              (self._layer.events.paint, self._on_paint)):
            try:
                emitter.disconnect(slot)
            except (TypeError, ValueError, RuntimeError):
                pass


def _painted_values(history: Any) -> set[int]:
    """Label values written by a napari paint event (its undo-history atoms)."""
    found: set[int] = set()
    for atom in history or ():
        value = getattr(atom, "new_value", None)
        if value is None and isinstance(atom, tuple) and len(atom) == 3:
            value = atom[2]
        if value is None:
            continue
        try:
            found.update(int(v) for v in np.unique(np.asarray(value)))
        except (TypeError, ValueError):
            continue
    return found

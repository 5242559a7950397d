"""magicgui widgets generated from the config dataclasses' field metadata (help, choices, bounds).

A knob is declared once in ``config/schema.py``; the CLI's ``info``, the validator and these forms
all read the same default, help line, choices and bounds, so the GUI cannot drift from the CLI.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from functools import partial
from typing import Any

from magicgui import widgets

from ..config import schema
from ..config.validation import field_types
from ..registry import NamedRegistry

__all__ = ["ConfigForm", "knob_value", "knob_widget", "parse_list", "section_fields"]

SECTIONS: dict[str, type] = {
    "system": schema.SystemConfig,
    "model": schema.ModelConfig,
    "data": schema.DataConfig,
    "optimizer": schema.OptimizerConfig,
    "scheduler": schema.SchedulerConfig,
    "training": schema.TrainingConfig,
    "checkpoint": schema.CheckpointConfig,
    "inference": schema.InferenceConfig,
    "augmentation": schema.AugmentationConfig,
}

_FLOAT_MAX = 1e9
_INT_MAX = 10**9


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    """The dataclass fields of a config section (``"model"``, ``"data"``, ...), by name."""
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def _base_type(annotation: Any) -> Any:
    hints = typing.get_args(annotation)
    if hints and type(None) in hints:
        return next(h for h in hints if h is not type(None))
    return annotation


def knob_widget(section: str, name: str, value: Any = dataclasses.MISSING, label: str | None = None) -> widgets.Widget:
    """A magicgui widget for ``section.name``: ComboBox for choices, SpinBox/FloatSpinBox with the
    declared bounds, CheckBox for booleans, LineEdit (comma-separated) for lists; tooltip = help."""
    field = section_fields(section)[name]
    meta = field.metadata
    kind = _base_type(field_types(SECTIONS[section])[name])
    if value is dataclasses.MISSING:
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    options: dict[str, Any] = {"name": name, "label": label or name.replace("_", " "), "tooltip": meta.get("help")}
    choices = meta.get("choices")
    if isinstance(choices, NamedRegistry):  # read when shown, so entries registered later appear too
        names = choices.names()
        widget = widgets.ComboBox(choices=partial(_registry_choices, choices),
                                  value=value if value in names else names[0], **options)
    elif choices:
        real = [c for c in choices if c is not None]
        widget: widgets.Widget = widgets.ComboBox(choices=real, value=value if value in real else real[0], **options)
    elif kind is bool:
        widget = widgets.CheckBox(value=bool(value), **options)
    elif kind is int:
        low = meta.get("minimum")
        high = meta.get("maximum")
        widget = widgets.SpinBox(value=int(value if value is not None else (low or 0)),
                                 min=int(low) if low is not None else -_INT_MAX,
                                 max=int(high) if high is not None else _INT_MAX, **options)
    elif kind is float:
        low = meta.get("minimum")
        high = meta.get("maximum")
        widget = widgets.FloatSpinBox(value=float(value if value is not None else (low or 0.0)),
                                      min=float(low) if low is not None else -_FLOAT_MAX,
                                      max=float(high) if high is not None else _FLOAT_MAX,
                                      step=_step_for(float(value or 0.0)), **options)
    else:  # lists and free strings: a line edit; lists as comma-separated values
        text = "" if value is None else ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        widget = widgets.LineEdit(value=text, **options)
    return widget


def knob_value(section: str, widget: widgets.Widget) -> Any:
    """The config value of a :func:`knob_widget`: a list field parsed from its text (one-line
    ValueError on a bad item), an empty text field None, anything else as the widget holds it."""
    value = widget.value
    kind = _base_type(field_types(SECTIONS[section])[widget.name])
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind) or (int,)
        return parse_list(value, item if item in (int, float) else str)
    if isinstance(widget, widgets.LineEdit):
        return value or None
    return value


def _registry_choices(registry: NamedRegistry, _widget: Any = None) -> list[tuple[str, str]]:
    """(label, name) of a registry's entries; an entry's ``label`` attribute names it when set."""
    return [(getattr(entry, "label", "") or name, name) for name, entry in registry.items()]


def _step_for(value: float) -> float:
    if value == 0:
        return 0.05
    magnitude = abs(value)
    step = 10 ** int(f"{magnitude:e}".split("e")[1])
    return step


def parse_list(text: str, cast: type = int) -> list[Any] | None:
    """``"32, 128, 128"`` -> ``[32, 128, 128]``; empty -> None; a bad item raises a one-line ValueError."""
    items = [item for item in text.replace("x", ",").replace(" ", ",").split(",") if item]
    if not items:
        return None
    try:
        return [cast(item) for item in items]
    except ValueError:
        raise ValueError(f"{text!r} is not a list of {cast.__name__}s; write e.g. 32, 128, 128") from None


class ConfigForm(widgets.Container):
    """A form of some fields of one config section; ``values()`` gives them as config values."""

    def __init__(self, section: str, names: Iterable[str], values: dict[str, Any] | None = None,
                 labels: dict[str, str] | None = None) -> None:
        values = values or {}
        labels = labels or {}
        self.section = section
        made = [knob_widget(section, n, values.get(n, dataclasses.MISSING), labels.get(n)) for n in names]
        super().__init__(widgets=made, labels=True)

    def values(self) -> dict[str, Any]:
        """The form's values with list fields parsed (one-line ValueError on a bad list)."""
        return {widget.name: knob_value(self.section, widget) for widget in self}

    def set_values(self, values: dict[str, Any]) -> None:
        for widget in self:
            if widget.name in values:
                value = values[widget.name]
                if isinstance(widget, widgets.LineEdit):
                    value = "" if value is None else (", ".join(str(v) for v in value)
                                                      if isinstance(value, (list, tuple)) else str(value))
                widget.value = value

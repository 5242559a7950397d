"""What the Model panel shows and edits, without Qt: options per architecture, config edits, facts.

The panel is a thin Qt layer over these functions, so the rules live here where a test (or the
CLI) can reach them without a display:

* :func:`fields_for` offers the ``model.*`` fields each network reads, from its registry spec;
* :func:`widget_value` / :func:`config_value` convert between what the form shows and the config;
* :func:`checked_config` is the one gate a config passes before it reaches the shared session:
  the CLI's validator plus the few rules the builders only check while building;
* :func:`model_facts` gives the spec's facts (size multiple, deep-supervision scales, 2D/3D,
  availability) instantly, and :func:`count_parameters` the parameter count, which needs torch
  and therefore runs in a background job.

Importing this module never imports torch or Qt.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError, effective_input_size, resolve_config, validate_config
from ..config.validation import needs_resolving
from ..config.schema import ModelConfig
from ..config.validation import field_types
from ..models.architectures.registry import (
    ArchitectureFacts,
    get_architecture_spec,
    is_architecture_available,
    list_architectures,
)
from .forms import parse_list

__all__ = [
    "FIELD_LABELS",
    "ModelFacts",
    "architecture_label",
    "checked_config",
    "config_value",
    "count_parameters",
    "fields_for",
    "follow_dimensions",
    "missing_modules",
    "model_facts",
    "optional_choice_labels",
    "parameter_key",
    "set_model_value",
    "switch_architecture",
    "widget_value",
]

# Shorter labels where the field name repeats the architecture; the rest use "field name".
FIELD_LABELS: dict[str, str] = {
    "spatial_dims": "dimensions",
    "in_channels": "input channels",
    "out_channels": "output channels",
    "mednext_size": "size",
    "mednext_base_channels": "base channels",
    "mednext_exp_r": "expansion ratio",
    "mednext_block_counts": "blocks per stage",
    "mednext_do_res": "residual blocks",
    "mednext_do_res_up_down": "residual up/down",
    "mednext_norm": "norm",
    "mednext_grn": "GRN",
    "mednext_checkpoint": "grad. checkpointing",
    "deep_supervision_weights": "DS weights",
    "filters": "filters per level",
    "input_size": "input size",
}

_MODEL_HINTS = field_types(ModelConfig)
_MODEL_FIELDS = set(_MODEL_HINTS)


def _panel_fields() -> set[str]:
    """Every field some architecture offers: the only ones an architecture switch may set aside."""
    return set().union(*(get_architecture_spec(name).all_fields for name in list_architectures()))


def fields_for(architecture: str) -> list[str]:
    """The model fields the panel offers for ``architecture`` (common ones first): its spec's.
    `mednext_impl` and `pretrained` are left to the YAML file: neither changes the network's shape."""
    return list(get_architecture_spec(architecture).all_fields)


def missing_modules(architecture: str) -> list[str]:
    """Modules an architecture's builder needs that cannot be imported here."""
    return get_architecture_spec(architecture).missing_modules()


def architecture_label(architecture: str) -> str:
    """The drop-down entry: the name, plus how to install what is missing."""
    if is_architecture_available(architecture):
        return architecture
    return f"{architecture} (unavailable: pip install {' '.join(missing_modules(architecture))})"


def optional_choice_labels(architecture: str, name: str) -> list[tuple[str, Any]] | None:
    """(label, value) choices for a choice field whose unset value (None) means something.

    knob_widget drops None from choices; for these fields "unset" is a real option (MedNeXt's
    checkpointing: None keeps the preset's choice), so the panel offers it under a name.
    """
    choices = ModelConfig.__dataclass_fields__[name].metadata.get("choices")
    if not choices or None not in choices:
        return None
    none_label = get_architecture_spec(architecture).none_labels.get(name, "default")
    return [(none_label if c is None else str(c), c) for c in choices]


def _base_type(name: str) -> Any:
    hint = _MODEL_HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return args[0]
    return hint


def widget_value(architecture: str, name: str, value: Any) -> Any:
    """A config value as the panel's widget shows it (lists as "a, b, c", unset as the default used)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if value is None:
        unset = get_architecture_spec(architecture).unset_defaults.get(name)
        if unset is not None:
            return unset
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if name == "mednext_exp_r":
        return str(value)
    return value


def config_value(name: str, shown: Any) -> Any:
    """A widget's value as the config field ``model.<name>`` takes it.

    Raises:
        ValueError: one line, for text that is not the list (or number) the field needs.
    """
    if name == "mednext_exp_r":  # an int, or one per stage
        items = parse_list(str(shown))
        if items is None:
            raise ValueError("expansion ratio: give an int, or 9 ints (one per stage)")
        return items[0] if len(items) == 1 else items
    kind = _base_type(name)
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind) or (int,)
        return parse_list(str(shown), item if item in (int, float) else str)
    if kind is str and shown == "":
        return None
    return shown


def set_model_value(cfg: DictConfig, name: str, value: Any) -> None:
    """``cfg.model.<name> = value`` in place, a wrong type reported as one-line ConfigError."""
    if name not in _MODEL_FIELDS:
        raise ConfigError(f"model.{name}", value, message=f"model.{name} is not a model option")
    try:
        cfg.model[name] = value
    except OmegaConfBaseException as err:
        raise ConfigError(f"model.{name}", value, str(err).strip().splitlines()[0]) from None


def follow_dimensions(cfg: DictConfig) -> None:
    """After ``model.spatial_dims`` changed (in place): a training patch of the other dimensionality
    becomes the default patch of the new one, so switching 2D <-> 3D in the form stays valid."""
    from ..config.validation import default_patch_size

    dims = int(cfg.model.spatial_dims)
    patch = cfg.data.patch_size
    if patch is not None and len(patch) != dims:
        cfg.data.patch_size = default_patch_size(dims)


def checked_config(cfg: DictConfig) -> DictConfig:
    """A validated copy of ``cfg``, or the first problem as a one-line :class:`ConfigError`.

    Beyond :func:`validate_config` (what the CLI checks, the architecture's own rules included) it
    refuses an architecture whose optional dependency is missing, which only fails while building.
    Checking it here keeps a config that cannot build out of the shared session.
    """
    candidate = validate_config(copy.deepcopy(cfg))
    model = candidate.model
    missing = missing_modules(model.architecture)
    if missing:
        raise ConfigError("model.architecture", model.architecture,
                          message=f"{model.architecture} is unavailable: it needs {', '.join(missing)}; "
                          f"pip install {' '.join(missing)}")
    return candidate


def switch_architecture(cfg: DictConfig, architecture: str, set_aside: dict[str, Any]) -> None:
    """Make ``cfg`` (in place) use ``architecture``, keeping the options the user already set.

    An option the new network doesn't offer but that would make the config invalid (deep
    supervision on, switching from MedNeXt to a U-Net) can't be fixed in the form, so it goes
    back to its default and its value is put in ``set_aside``; switching to a network that offers
    it again brings the value back. Problems with options the new network shows are left for
    the user to see and fix.
    """
    set_model_value(cfg, "architecture", architecture)
    shown = set(fields_for(architecture))
    for name in [n for n in set_aside if n in shown]:
        set_model_value(cfg, name, set_aside.pop(name))
    panel_fields = _panel_fields()
    for _ in range(len(panel_fields)):
        try:
            checked_config(cfg)
            return
        except ConfigError as err:
            name = err.key.removeprefix("model.")
            if name in shown or name not in panel_fields:
                return
            value = cfg.model[name]
            set_aside.setdefault(name, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
            set_model_value(cfg, name, _default(name))


def _default(name: str) -> Any:
    field = ModelConfig.__dataclass_fields__[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


class ModelFacts(ArchitectureFacts):
    """The spec's facts of the configured network, as the panel's info box shows them."""

    def lines(self, parameters: str) -> list[str]:
        """The info box, one fact a line; ``parameters`` is the count (or its state) as text."""
        dims = " / ".join(f"{d}D" for d in self.supported_spatial_dims)
        lines = [self.description] if self.description else []
        if not self.available:
            lines.append(f"Unavailable: pip install {' '.join(self.missing)}")
        lines.append(f"Parameters: {parameters}")
        multiple = f"Patch multiple: {self.size_multiple} (patch and window sizes)"
        if self.fixed_input_size is not None:
            multiple += f"; fixed input {'x'.join(map(str, self.fixed_input_size))}"
        lines.append(multiple)
        if not self.deep_supervision_supported:
            lines.append("Deep supervision: not supported")
        elif self.deep_supervision:
            lines.append(f"Deep supervision: on, {self.output_scales} scales "
                         f"({', '.join(self.output_resolutions)})")
        else:
            lines.append("Deep supervision: off (supported)")
        lines.append(f"Dimensions: {self.spatial_dims}D (supports {dims})")
        return lines


def model_facts(cfg: DictConfig) -> ModelFacts:
    """The spec's facts of ``cfg.model`` (torch-free, instant); works on unvalidated configs too."""
    resolved = resolve_config(copy.deepcopy(cfg)) if needs_resolving(cfg) else cfg  # a copy: ~10 ms
    facts = get_architecture_spec(resolved.model.architecture).facts(resolved)
    return ModelFacts(**vars(facts))


def parameter_key(cfg: DictConfig) -> tuple[str, tuple[int, ...] | None]:
    """What the parameter count depends on: the model section, and the input size for fixed-input
    networks (UNETR's position embedding grows with it). Used to cache counts."""
    spec = get_architecture_spec(cfg.model.architecture)
    size = tuple(effective_input_size(cfg)) if spec.fixed_input_size else None
    return OmegaConf.to_yaml(cfg.model), size


def count_parameters(cfg: DictConfig) -> int:
    """Parameters of the network ``cfg`` (validated) describes, as :func:`build_model` builds it,
    on the meta device. Imports torch: call it off the GUI thread."""
    from ..models.build import count_parameters as count

    return count(cfg)

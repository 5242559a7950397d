"""What the Model panel shows and edits, without Qt: options per architecture, config edits, facts.

The panel is a thin Qt layer over these functions, so the rules live here where a test (or the
CLI) can reach them without a display:

* :data:`ARCHITECTURE_FIELDS` says which ``model.*`` fields each registered network really reads
  (a test checks it against the builders' source so the two cannot drift apart);
* :func:`widget_value` / :func:`config_value` convert between what the form shows and the config;
* :func:`checked_config` is the one gate a config passes before it reaches the shared session:
  the CLI's validator plus the few rules the builders only check while building;
* :func:`model_facts` gives the registry facts (size multiple, deep-supervision scales, 2D/3D,
  availability) instantly, and :func:`count_parameters` the parameter count, which needs torch
  and therefore runs in a background job.

Importing this module never imports torch or Qt.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import typing
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError, effective_input_size, resolve_config, validate_config
from ..config.schema import ModelConfig
from ..models.architectures.registry import (
    get_architecture_builder,
    get_architecture_spec,
    is_architecture_available,
)
from .forms import parse_list

__all__ = [
    "ARCHITECTURE_FIELDS",
    "COMMON_FIELDS",
    "FIELD_LABELS",
    "ModelFacts",
    "architecture_label",
    "checked_config",
    "config_value",
    "count_parameters",
    "fields_for",
    "missing_modules",
    "model_facts",
    "optional_choice_labels",
    "parameter_key",
    "set_model_value",
    "switch_architecture",
    "widget_value",
]

# Shown for every architecture: what the data decides rather than the network.
COMMON_FIELDS: tuple[str, ...] = ("spatial_dims", "in_channels", "out_channels")

# The model fields each built-in builder reads (besides COMMON_FIELDS), in the order shown.
# `mednext_impl` and `pretrained` are left to the YAML file: neither changes the network's shape.
ARCHITECTURE_FIELDS: dict[str, tuple[str, ...]] = {
    "mednext": ("mednext_size", "kernel_size", "deep_supervision", "deep_supervision_weights",
                "mednext_norm", "mednext_grn", "mednext_checkpoint"),
    "mednext_custom": ("mednext_base_channels", "mednext_exp_r", "mednext_block_counts", "kernel_size",
                       "deep_supervision", "deep_supervision_weights", "mednext_do_res",
                       "mednext_do_res_up_down", "mednext_norm", "mednext_grn", "mednext_checkpoint"),
    "monai_basic_unet3d": ("filters", "norm", "activation", "dropout"),
    "monai_unet": ("filters", "kernel_size", "num_res_units", "norm", "activation", "dropout"),
    "monai_segresnet": ("init_filters", "norm", "activation", "dropout"),
    "monai_unetr": ("input_size", "feature_size", "hidden_size", "mlp_dim", "num_heads", "pos_embed",
                    "norm", "dropout"),
    "monai_swin_unetr": ("feature_size", "norm", "dropout", "attn_drop_rate", "dropout_path_rate",
                         "use_checkpoint"),
}

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

# What the builders use when an optional field is unset, shown instead of an empty box.
_UNSET_DISPLAY: dict[tuple[str, str], Any] = {
    ("monai_unetr", "feature_size"): 16,
    ("monai_swin_unetr", "feature_size"): 24,
}

# Labels of the `None` entry of optional choice fields (the value keeps meaning "unset").
_NONE_LABELS: dict[tuple[str, str], str] = {
    ("mednext", "mednext_checkpoint"): "preset's choice (M/L on)",
    ("mednext_custom", "mednext_checkpoint"): "off (default)",
}

_MODEL_HINTS = typing.get_type_hints(ModelConfig)
_MODEL_FIELDS = set(_MODEL_HINTS)
# Every field some architecture offers: the only ones an architecture switch may set aside.
_PANEL_FIELDS = set(COMMON_FIELDS).union(*ARCHITECTURE_FIELDS.values())


def fields_for(architecture: str) -> list[str]:
    """The model fields the panel offers for ``architecture`` (common ones first)."""
    return [*COMMON_FIELDS, *ARCHITECTURE_FIELDS.get(architecture, ())]


def missing_modules(architecture: str) -> list[str]:
    """Modules an architecture's builder needs that cannot be imported here."""
    spec = get_architecture_spec(architecture)
    return [module for module in spec.requires if importlib.util.find_spec(module) is None]


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
    none_label = _NONE_LABELS.get((architecture, name), "default")
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
    if value is None and (architecture, name) in _UNSET_DISPLAY:
        return _UNSET_DISPLAY[(architecture, name)]
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


def checked_config(cfg: DictConfig) -> DictConfig:
    """A validated copy of ``cfg``, or the first problem as a one-line :class:`ConfigError`.

    Beyond :func:`validate_config` (what the CLI checks) it refuses what only fails while
    building: an architecture whose optional dependency is missing, a norm the network lacks,
    UNETR heads that don't divide the hidden size, a SwinUNETR feature size not a multiple of 12.
    Checking them here keeps a config that cannot build out of the shared session.
    """
    candidate = validate_config(copy.deepcopy(cfg))
    model = candidate.model
    missing = missing_modules(model.architecture)
    if missing:
        raise ConfigError("model.architecture", model.architecture,
                          message=f"{model.architecture} is unavailable: it needs {', '.join(missing)}; "
                          f"pip install {' '.join(missing)}")
    spec = get_architecture_spec(model.architecture)
    if spec.norms is not None and "norm" in fields_for(model.architecture) and model.norm not in spec.norms:
        raise ConfigError("model.norm", model.norm, f"{spec.name} supports {', '.join(spec.norms)}")
    if model.architecture == "monai_unetr" and model.hidden_size % model.num_heads:
        raise ConfigError("model.num_heads", model.num_heads,
                          f"model.hidden_size ({model.hidden_size}) must be divisible by it")
    if model.architecture == "monai_swin_unetr" and (model.feature_size or 24) % 12:
        raise ConfigError("model.feature_size", model.feature_size,
                          "SwinUNETR needs a multiple of 12, e.g. 24 or 48")
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
    for _ in range(len(_PANEL_FIELDS)):
        try:
            checked_config(cfg)
            return
        except ConfigError as err:
            name = err.key.removeprefix("model.")
            if name in shown or name not in _PANEL_FIELDS:
                return
            value = cfg.model[name]
            set_aside.setdefault(name, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
            set_model_value(cfg, name, _default(name))


def _default(name: str) -> Any:
    field = ModelConfig.__dataclass_fields__[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


@dataclass(frozen=True)
class ModelFacts:
    """What the registry says about the configured network, known without building it."""

    architecture: str
    description: str
    available: bool
    missing: tuple[str, ...]
    spatial_dims: int
    supported_dims: tuple[int, ...]
    size_multiple: int
    fixed_input_size: tuple[int, ...] | None
    deep_supervision_supported: bool
    deep_supervision: bool
    output_scales: int

    @property
    def output_resolutions(self) -> list[str]:
        """"1", "1/2", ... one per output of a training forward pass."""
        return ["1" if i == 0 else f"1/{2 ** i}" for i in range(self.output_scales)]

    def lines(self, parameters: str) -> list[str]:
        """The info box, one fact a line; ``parameters`` is the count (or its state) as text."""
        dims = " / ".join(f"{d}D" for d in self.supported_dims)
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
    """Registry facts of ``cfg.model`` (torch-free, instant); works on unvalidated configs too."""
    resolved = resolve_config(copy.deepcopy(cfg))
    model = resolved.model
    spec = get_architecture_spec(model.architecture)
    ds = bool(model.deep_supervision and spec.deep_supervision)
    try:
        multiple = spec.size_multiple_for(model)
    except (TypeError, ValueError):  # a half-edited option the validator will name
        multiple = 0
    return ModelFacts(
        architecture=spec.name,
        description=spec.description,
        available=is_architecture_available(spec.name),
        missing=tuple(missing_modules(spec.name)),
        spatial_dims=int(model.spatial_dims),
        supported_dims=tuple(spec.spatial_dims),
        size_multiple=multiple,
        fixed_input_size=tuple(effective_input_size(resolved)) if spec.fixed_input_size else None,
        deep_supervision_supported=spec.deep_supervision,
        deep_supervision=ds,
        output_scales=spec.output_scales if ds else 1,
    )


def parameter_key(cfg: DictConfig) -> tuple[str, tuple[int, ...] | None]:
    """What the parameter count depends on: the model section, and the input size for fixed-input
    networks (UNETR's position embedding grows with it). Used to cache counts."""
    spec = get_architecture_spec(cfg.model.architecture)
    size = tuple(effective_input_size(cfg)) if spec.fixed_input_size else None
    return OmegaConf.to_yaml(cfg.model), size


def count_parameters(cfg: DictConfig) -> int:
    """Parameters of the network ``cfg`` (validated) describes, as :func:`build_model` builds it.

    Built on the meta device, so even MedNeXt-L or UNETR allocate nothing and take milliseconds;
    networks whose constructor reads tensor values (SwinUNETR) are built on the CPU instead. The
    builder is called directly to skip build_model's log line on every option change.
    Imports torch: call it off the GUI thread.
    """
    import torch

    builder = get_architecture_builder(cfg.model.architecture)
    try:
        with torch.device("meta"):
            model = builder(cfg)
    except (RuntimeError, NotImplementedError):
        model = builder(cfg)
    return int(model.get_model_info()["parameters"])


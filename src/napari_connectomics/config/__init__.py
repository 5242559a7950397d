"""Typed configuration: dataclass schema, YAML load/save with overrides, validation."""

from .context import context_step, network_in_channels
from .errors import ConfigError
from .io import as_config, config_to_yaml, default_config, load_config, save_config
from .schema import ConnectomicsConfig
from .validation import default_patch_size, effective_input_size, resolve_config, validate_config

__all__ = [
    "ConfigError",
    "ConnectomicsConfig",
    "as_config",
    "config_to_yaml",
    "context_step",
    "default_config",
    "default_patch_size",
    "effective_input_size",
    "load_config",
    "network_in_channels",
    "resolve_config",
    "save_config",
    "validate_config",
]

"""Load, merge and save configs: YAML files and ``key=value`` overrides onto the typed defaults."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ConfigError, closest
from .schema import ConnectomicsConfig
from .validation import validate_config

__all__ = ["as_config", "default_config", "load_config", "save_config", "config_to_yaml"]


def default_config() -> DictConfig:
    """The typed defaults, unvalidated (struct mode: unknown keys are refused)."""
    return OmegaConf.structured(ConnectomicsConfig)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    validate: bool = True,
) -> DictConfig:
    """Merge a YAML file (optional) and overrides onto the defaults, then validate.

    ``overrides`` is a list of ``key=value`` strings (values parsed as YAML, as on the command
    line) or a nested mapping. Raises :class:`ConfigError` naming the key, the bad value and what
    would be valid.
    """
    layers: list[DictConfig] = []
    if path is not None:
        layers.append(_read_yaml(Path(path)))
    if overrides:
        layers.append(_overrides_layer(overrides))
    _check_alias_conflict(layers)

    cfg = default_config()
    for layer in layers:
        cfg = _merge(cfg, layer)
    return validate_config(cfg) if validate else cfg


def as_config(cfg: DictConfig | ConnectomicsConfig | Mapping[str, Any]) -> DictConfig:
    """A validated, typed config from whatever a caller holds.

    A full typed config is validated as is; a partial one (a plain dict or an untyped
    ``OmegaConf.create({...})`` with only some sections, as the plan's examples build) is merged
    onto the defaults first.
    """
    if isinstance(cfg, ConnectomicsConfig):
        cfg = OmegaConf.structured(cfg)
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is ConnectomicsConfig:
        return validate_config(cfg)
    container = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    return load_config(overrides=container)


def save_config(cfg: DictConfig | ConnectomicsConfig, path: str | os.PathLike) -> Path:
    """Write the config as YAML atomically (never a half-written file under the final name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = config_to_yaml(cfg)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def config_to_yaml(cfg: DictConfig | ConnectomicsConfig) -> str:
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_yaml(cfg)


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(str(path), message=f"config file {str(path)!r} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(str(path), message=f"config file {str(path)!r} is not valid YAML{where}: "
                          f"{getattr(err, 'problem', err)}") from None
    except (OSError, ValueError) as err:  # OmegaConf refuses a scalar document ("Invalid loaded object type")
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise ConfigError(str(path), message=f"config file {str(path)!r} must hold a mapping of sections "
                          f"(system, model, data, ...): {err}") from None
    if loaded is None:
        return OmegaConf.create({})
    if not isinstance(loaded, DictConfig):
        raise ConfigError(str(path), message=f"config file {str(path)!r} must hold a mapping of sections "
                          "(system, model, data, ...), not a list")
    return loaded


def _overrides_layer(overrides: Sequence[str] | Mapping[str, Any]) -> DictConfig:
    if isinstance(overrides, Mapping):
        return OmegaConf.create(dict(overrides))
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(item, message=f"override {item!r} is not of the form key=value "
                              "(for example model.architecture=mednext)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError("overrides", message=f"could not parse the overrides {list(overrides)}: {err}") from None


def _merge(cfg: DictConfig, layer: DictConfig) -> DictConfig:
    """Merge one layer, turning OmegaConf's multi-line errors into one actionable line."""
    try:
        return OmegaConf.merge(cfg, layer)
    except ConfigKeyError as err:
        key = str(err.full_key or err.key)
        raise _unknown_key_error(key, _value_at(layer, key)) from None
    except ValidationError as err:
        key = str(err.full_key or err.key)
        value = _value_at(layer, key)
        expected_type = _expected_type(key)
        raise ConfigError(key, value, f"expected {expected_type}" if expected_type else err.msg) from None
    except (TypeError, OmegaConfBaseException) as err:  # e.g. a mapping given for a list field
        key = _mismatched_key(cfg, layer) or "config"
        value = _value_at(layer, key) if key != "config" else None
        expected_type = _expected_type(key) if key != "config" else None
        raise ConfigError(key, value, f"expected {expected_type}" if expected_type else
                          str(err).strip().splitlines()[0]) from None


def _mismatched_key(cfg: Any, layer: Any, prefix: str = "") -> str | None:
    """The first key whose value in ``layer`` is a mapping/list where ``cfg`` has another kind."""
    for name in layer:
        key = f"{prefix}{name}"
        if name not in cfg:
            continue
        ours, theirs = cfg[name], layer[name]
        if OmegaConf.is_dict(ours) and OmegaConf.is_dict(theirs):
            found = _mismatched_key(ours, theirs, f"{key}.")
            if found:
                return found
        elif OmegaConf.is_dict(theirs) or (OmegaConf.is_list(theirs) and not OmegaConf.is_list(ours)) or \
                (OmegaConf.is_list(ours) and OmegaConf.is_dict(theirs)):
            return key
    return None


def _unknown_key_error(key: str, value: Any) -> ConfigError:
    parent, _, name = key.rpartition(".")
    defaults = default_config()
    node = OmegaConf.select(defaults, parent) if parent else defaults
    valid = list(node.keys()) if isinstance(node, DictConfig) else []
    hint = closest(name, valid)
    message = f"unknown config key {key!r}"
    if value is not None:
        message += f" (value {value!r})"
    if hint:
        message += f"; did you mean {(parent + '.' if parent else '') + hint!r}?"
    else:
        message += f"; valid keys{' of ' + parent if parent else ''}: {', '.join(valid)}"
    return ConfigError(key, value, message=message)


def _expected_type(key: str) -> str | None:
    """A readable name of the type a field expects, from the schema's annotations."""
    import typing

    from . import schema

    parts = key.split("[")[0].split(".")
    cls: Any = ConnectomicsConfig
    hint: Any = None
    for part in parts:
        hints = typing.get_type_hints(cls, vars(schema))
        if part not in hints:
            return None
        hint = hints[part]
        cls = hint
    if "[" in key:  # an element of a list field
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = typing.get_args(args[0])[0] if args and typing.get_args(args[0]) else hint
    return _type_name(hint)


def _type_name(hint: Any) -> str:
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return _type_name(args[0]) + " or null"
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _value_at(layer: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(layer, key, throw_on_missing=False)
    except OmegaConfBaseException:
        return None
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _check_alias_conflict(layers: list[DictConfig]) -> None:
    """`model.mednext_dim` is an alias of `model.spatial_dims`: both given and different is an error."""
    dims = alias = None
    for layer in layers:
        model = layer.get("model") if isinstance(layer, DictConfig) else None
        if isinstance(model, DictConfig):
            dims = model.get("spatial_dims", dims)
            alias = model.get("mednext_dim", alias)
    if dims is not None and alias in ("2d", "3d") and f"{dims}d" != alias:
        raise ConfigError("model.mednext_dim", alias,
                          message=f"model.mednext_dim={alias!r} contradicts model.spatial_dims={dims}; "
                          "set only model.spatial_dims")

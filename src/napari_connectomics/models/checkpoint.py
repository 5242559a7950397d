"""Checkpoint files: written atomically, read without unpickling arbitrary objects.

Lightning-free (torch and omegaconf only), so prediction can load a model without importing the
training engine; :mod:`..training.checkpoint` adds Lightning's checkpoint IO on top.

A checkpoint carries the resolved config (``CONFIG_KEY``), so a model can be rebuilt from the file
alone. Loading always uses ``torch.load(weights_only=True)``: a file carrying a pickled Python
object other than tensors and plain data is refused, since unpickling it could run code.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "CONFIG_KEY",
    "CheckpointError",
    "atomic_torch_save",
    "checkpoint_config",
    "config_container",
    "config_from_checkpoint",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "model_state_dict",
]

logger = logging.getLogger(__name__)

CONFIG_KEY = "napari_connectomics_config"
MODEL_PREFIX = "model."


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, unsafe or not one of ours (one-line message)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; every failure is a :class:`CheckpointError` saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "GLOBAL" in text or "Unsupported global" in text:  # a pickled object, not a broken file
            raise CheckpointError(
                f"refused to load {str(path)!r}: it holds pickled Python objects beyond tensors and plain data, "
                "which could run code; only load checkpoints from a source you trust") from None
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint or is corrupted") from None
    except Exception:  # torch raises RuntimeError, KeyError, EOFError... for files it cannot parse
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint or is corrupted") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


def config_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> DictConfig:
    """The resolved config stored in one of our checkpoints, merged onto the current defaults."""
    from ..config import load_config

    stored = checkpoint.get(CONFIG_KEY)
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source} was not written by napari-connectomics (it carries no config); "
                              "train with `napari-connectomics train` or load its weights with model.pretrained")
    return load_config(overrides=stored)


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights from a Lightning checkpoint (``model.`` prefix removed) or a plain state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith(MODEL_PREFIX) for k in state):
        return {k[len(MODEL_PREFIX):]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_model_from_checkpoint(path: str | os.PathLike,
                               map_location: Any = "cpu") -> tuple[torch.nn.Module, DictConfig]:
    """Rebuild the network from the config inside the checkpoint and load its weights (strict).

    A BioImage.IO model (``model.zip``, ``rdf.yaml``, ``bioimageio.yaml`` or a folder holding one)
    is read by :func:`.bioimageio.load_bioimageio_model` instead (on the CPU)."""
    from .bioimageio import is_bioimageio_source

    if is_bioimageio_source(path):
        from .bioimageio import load_bioimageio_model

        return load_bioimageio_model(path)
    from .build import build_model

    checkpoint = load_checkpoint(path, map_location)
    cfg = config_from_checkpoint(checkpoint, source=repr(str(path)))
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(model_state_dict(checkpoint), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{str(path)!r} does not match its own config ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected weights, e.g. {(missing or unexpected)[0]})")
    return model, cfg


def checkpoint_config(path: str | os.PathLike) -> DictConfig:
    """The config a checkpoint or BioImage.IO model predicts with, without building the network."""
    from .bioimageio import bioimageio_config, is_bioimageio_source

    if is_bioimageio_source(path):
        return bioimageio_config(path)
    return config_from_checkpoint(load_checkpoint(path), source=repr(str(path)))


def config_container(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data (safe under weights_only loading)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]

"""Lightning's checkpoint IO over :mod:`..models.checkpoint` (atomic writes, safe reads).

The Lightning-free helpers live in :mod:`napari_connectomics.models.checkpoint` so that prediction
imports no Lightning; they are re-exported here for existing imports.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..models.checkpoint import (
    CONFIG_KEY,
    MODEL_PREFIX,
    CheckpointError,
    atomic_torch_save,
    config_container,
    config_from_checkpoint,
    load_checkpoint,
    load_model_from_checkpoint,
    model_state_dict,
)
from .disk import DiskFullError, no_space

__all__ = [
    "AtomicCheckpointIO",
    "CONFIG_KEY",
    "DiskFullError",
    "MODEL_PREFIX",
    "CheckpointError",
    "atomic_torch_save",
    "config_container",
    "config_from_checkpoint",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "model_state_dict",
]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes atomically and reads with weights_only loading; a full disk
    is a :class:`DiskFullError` saying how large the checkpoint is."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        try:
            atomic_torch_save(checkpoint, path)  # on failure the temporary file is already removed
        except Exception as err:
            if no_space(err) is None:
                raise
            raise DiskFullError(path, needed=saved_size(checkpoint), what="the checkpoint") from err

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


def saved_size(obj: Any) -> int:
    """The bytes ``torch.save(obj)`` writes, counted without keeping or storing them."""
    sink = _ByteCounter()
    torch.save(obj, sink)
    return sink.count


class _ByteCounter(io.RawIOBase):
    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.count += size
        return size

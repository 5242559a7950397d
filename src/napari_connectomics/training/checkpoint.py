"""Lightning's checkpoint IO over :mod:`..models.checkpoint` (atomic writes, safe reads).

The Lightning-free helpers live in :mod:`napari_connectomics.models.checkpoint` so that prediction
imports no Lightning; they are re-exported here for existing imports.
"""

from __future__ import annotations

from typing import Any

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

__all__ = [
    "AtomicCheckpointIO",
    "CONFIG_KEY",
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
    """Lightning checkpoint IO that writes atomically and reads with weights_only loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")

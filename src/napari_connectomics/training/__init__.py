"""Training engine: Lightning module and data module, trainer factory, checkpoints, `train()`.

Names are imported on first use, so importing a submodule (metrics, checkpoint) stays light.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CheckpointError": "..models.checkpoint",  # Lightning-free home of the checkpoint helpers
    "load_checkpoint": "..models.checkpoint",
    "load_model_from_checkpoint": "..models.checkpoint",
    "TrainingData": "datamodule",
    "TrainResult": "result",
    "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(import_module(module if module.startswith(".") else f".{module}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

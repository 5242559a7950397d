"""The loss registry, without torch: names a config may list in ``model.loss_functions``.

An entry is a factory ``factory(out_channels=..., **kwargs) -> nn.Module`` whose
``forward(logits, target)`` follows the conventions of :mod:`.losses` (class-index targets with
IGNORE_INDEX where nothing was annotated). The built-ins are registered here by the name of their
class in :mod:`.losses`, which is imported (with torch and MONAI) only when a loss is built, so
config validation and the panels list the names cheaply.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from ..registry import LOSSES

__all__ = ["get_loss", "list_losses", "register_loss"]

LossFactory = Callable[..., Any]
_F = TypeVar("_F", bound=LossFactory)


def register_loss(name: str) -> Callable[[_F], _F]:
    """Decorator: register ``factory(out_channels=..., **kwargs) -> nn.Module`` under ``name``.

    Registering a name twice is an error, so a plugin cannot silently replace a built-in loss.
    """
    return LOSSES.register(name)  # type: ignore[return-value]


def list_losses() -> list[str]:
    """All registered loss names, sorted."""
    return LOSSES.names()


def get_loss(name: str, **kwargs: Any) -> Any:
    """An instance of the loss registered under ``name``; kwargs go to its factory (``out_channels``...)."""
    return LOSSES.get(name)(**kwargs)


def _builtin(class_name: str) -> LossFactory:
    def factory(**kwargs: Any) -> Any:
        return getattr(importlib.import_module(".losses", __package__), class_name)(**kwargs)

    factory.__name__ = class_name
    factory.__doc__ = f"Builds :class:`napari_connectomics.models.losses.{class_name}`."
    return factory


for _name, _class_name in (
    ("DiceLoss", "MaskedDiceLoss"),
    ("TverskyLoss", "MaskedTverskyLoss"),
    ("BCEWithLogitsLoss", "MaskedBCEWithLogitsLoss"),
    ("CrossEntropyLoss", "MaskedCrossEntropyLoss"),
    ("FocalLoss", "MaskedFocalLoss"),
    ("DiceCELoss", "MaskedDiceCELoss"),
):
    register_loss(_name)(_builtin(_class_name))

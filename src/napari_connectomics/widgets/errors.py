"""The panels' one-line user error, in a module without napari or Qt, so the training worker
process (which must not import napari) can raise it too."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A choice in a panel that can't work (no layer picked, shapes differ...); the message says how to fix it."""

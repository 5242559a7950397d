"""Failures as one-line napari notifications; the panels stay usable.

Expected errors (bad layer choice, bad config, missing file) carry their own one-line message;
anything else is reported with its type, and the traceback goes to the log.
"""

from __future__ import annotations

import logging

from napari.utils.notifications import show_error, show_info, show_warning

from ..config import ConfigError
from .errors import UserError

__all__ = ["UserError", "describe_error", "notify_error", "show_info", "show_warning"]

logger = logging.getLogger(__name__)


def describe_error(error: BaseException, action: str = "") -> str:
    """One line for the user: the error's own message, prefixed with what was being done."""
    prefix = f"{action} failed: " if action else ""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return (f"{prefix}out of memory. Reduce the patch size, the batch size or the window, "
                "or pick the CPU device.")
    if isinstance(error, (UserError, ConfigError, FileNotFoundError, KeyError, ValueError, RuntimeError)):
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return prefix + first_line


def notify_error(error: BaseException, action: str = "") -> str:
    """Show ``error`` as a napari error notification and return the text shown."""
    message = describe_error(error, action)
    if not isinstance(error, (UserError, ConfigError)):
        logger.error("%s", message, exc_info=error)
    show_error(message)
    return message

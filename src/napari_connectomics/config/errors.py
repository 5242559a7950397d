"""One error type for every bad config, phrased as one line a user can act on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..registry import closest

__all__ = ["ConfigError", "closest"]


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key, the value and what would be valid."""

    def __init__(self, key: str, value: Any = None, expected: str = "", *, message: str | None = None):
        self.key = key
        self.value = value
        self.expected = expected
        if message is None:
            message = f"{key}: {value!r} is not valid"
            if expected:
                message += f"; {expected}"
        super().__init__(message)


def format_choices(choices: Iterable[Any]) -> str:
    return ", ".join("null" if c is None else str(c) for c in choices)

"""One error type for every bad config, phrased as one line a user can act on."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

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


def closest(name: str, candidates: Iterable[str], cutoff: float = 0.7) -> str | None:
    """The candidate nearest to a misspelt name (case-insensitive), if any is reasonably close."""
    by_lower = {str(c).lower(): str(c) for c in candidates}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[matches[0]] if matches else None


def format_choices(choices: Iterable[Any]) -> str:
    return ", ".join("null" if c is None else str(c) for c in choices)

"""Our progress and results, not library noise: Lightning's advertisement and its own pytree
deprecation warning are dropped (the CLI unless --verbose, and the napari training worker)."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_libraries"]

_ADVERT = "\N{ELECTRIC LIGHT BULB} Tip"
_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_ADVERT)


def quiet_libraries() -> None:
    """Install the filters (idempotent); imports nothing heavy."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    for name in _LIGHTNING_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvert) for f in log.filters):
            log.addFilter(_DropAdvert())

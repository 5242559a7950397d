"""Our progress and results, not library noise: Lightning's advertisement and its own pytree
deprecation warning are dropped (the CLI unless --verbose, and the napari training worker)."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_libraries"]

_ADVERT = "\N{ELECTRIC LIGHT BULB} Tip"
_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropAdvert(logging.Filter):
    """Drops the advertisement, and messages under ``level``: Lightning logs through its own
    handler at INFO (set when it is imported), so the CLI's ``--quiet`` must be applied here."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level and not str(record.getMessage()).startswith(_ADVERT)


def quiet_libraries(level: int = logging.INFO) -> None:
    """Install the filters (idempotent: a second call sets the level); imports nothing heavy."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logging.getLogger("lightning").propagate = False  # it prints through its own handler: once is enough
    for name in _LIGHTNING_LOGGERS:
        log = logging.getLogger(name)
        installed = [f for f in log.filters if isinstance(f, _DropAdvert)]
        if installed:
            installed[0].level = level
        else:
            log.addFilter(_DropAdvert(level))

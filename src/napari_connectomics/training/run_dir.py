"""Where a run writes its files: ``<output_dir>/<name>/<timestamp>``. Torch-free, so the napari
Train panel can create the folder (and save the annotations into it) before training starts."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

__all__ = ["new_run_dir"]


def new_run_dir(cfg: Any, create: bool = False) -> Path:
    """``<output_dir>/<name>/<timestamp>``, with a suffix when two runs start in the same second."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.training.output_dir).expanduser().resolve() / cfg.training.name
    run_dir = base / stamp
    n = 1
    while run_dir.exists():
        run_dir = base / f"{stamp}-{n}"
        n += 1
    if create:
        run_dir.mkdir(parents=True)
    return run_dir

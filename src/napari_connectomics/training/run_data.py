"""Training data handed over as arrays, kept in the run folder so ``config.yaml`` repeats the run.

``train(cfg, data=TrainingData(...))`` with numpy/dask arrays (napari layers) would otherwise save a
config whose data paths name nothing. Arrays are written with the Train panel's writer
(:func:`~napari_connectomics.data.annotations.write_annotations`); a pair that came from files keeps
its file specs. ``data.train_image`` takes one volume, so the config names the first training and
the first validation pair; every pair is saved.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..data.annotations import annotations_path, write_annotations
from ..data.volumes import Volume
from .datamodule import TrainingData

__all__ = ["absolute_spec", "record_training_data"]

logger = logging.getLogger(__name__)


def absolute_spec(spec: str) -> str:
    """A volume spec (``file.h5:key``) relative to where the command runs, made absolute."""
    return spec if Path(spec.split(":")[0]).is_absolute() else str(Path.cwd() / spec)


def record_training_data(cfg: DictConfig, data: TrainingData, run_dir: Path) -> None:
    """Point ``cfg.data``'s paths at ``data``: its files, or its arrays written into ``run_dir``."""
    files: dict[int, dict[str, Any]] = {}  # file index -> name -> array to write
    specs: dict[int, str] = {}  # id(array) -> spec, so an array shared by pairs is written once

    def spec_of(item: Any, index: int, name: str) -> str:
        spec = _file_spec(item)
        if spec is not None:
            return spec
        if id(item) not in specs:
            files.setdefault(index, {})[name] = item
            specs[id(item)] = f"{annotations_path(run_dir, index)}:{name}"
        return specs[id(item)]

    train = [(spec_of(i, k, "image"), spec_of(l, k, "label")) for k, (i, l) in enumerate(data.train)]
    val = [(spec_of(i, k, "val_image"), spec_of(l, k, "val_label")) for k, (i, l) in enumerate(data.val)]
    for index, arrays in sorted(files.items()):
        write_annotations(annotations_path(run_dir, index), arrays, attrs={"label_mode": cfg.data.label_mode})
    d = cfg.data
    d.train_image, d.train_label = train[0]
    d.val_image, d.val_label = val[0] if val else (None, None)
    if files:
        logger.info("training data saved in %s for config.yaml", ", ".join(
            annotations_path(run_dir, k).name for k in sorted(files)))
    if len(train) > 1 or len(val) > 1:
        logger.warning("%d training and %d validation pairs: config.yaml names the first of each only "
                       "(data.train_image takes one volume); all are saved in the run folder", len(train), len(val))


def _file_spec(item: Any) -> str | None:
    if isinstance(item, (str, os.PathLike)):
        return absolute_spec(os.fspath(item))
    if isinstance(item, Volume):
        return item.file_spec
    return None

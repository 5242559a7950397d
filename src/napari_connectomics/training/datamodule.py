"""Training and validation data from config paths or from in-memory arrays (napari layers)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.augment import build_augmentation
from ..data.checks import check_finite, check_patch_fits, label_range
from ..data.dataset import PatchDataset, ValidationPatches, VolumePair, split_z
from ..data.sections import SectionContext
from ..data.splits import split_sparse
from ..data.volumes import open_volume
from ..registry import TARGETS

__all__ = ["EpochSampler", "TrainingData", "VolumeDataModule"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Volumes handed over directly (numpy/dask arrays, napari layer data, Volume objects or paths).

    ``train`` and ``val`` are (image, label) pairs; without ``val`` the config decides (a held-out
    z-range of each dense training volume, pieces of each annotated section of sparse ones).
    """

    train: Sequence[tuple[Any, Any]]
    val: Sequence[tuple[Any, Any]] = field(default_factory=list)

    @classmethod
    def coerce(cls, data: Any) -> "TrainingData":
        if isinstance(data, TrainingData):
            return data
        if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple):
            return cls(train=[data])
        return cls(train=list(data))


class EpochSampler(Sampler[int]):
    """Indices ``epoch * n .. epoch * n + n - 1``: the dataset draws different patches each epoch,
    reproducibly (Lightning calls ``set_epoch``), also inside DataLoader worker processes."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.length, (self.epoch + 1) * self.length))

    def __len__(self) -> int:
        return self.length


class _EpochIndexed(Dataset):
    """Decodes the sampler's global index into (epoch, index) for a PatchDataset."""

    def __init__(self, dataset: PatchDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(index, len(self.dataset))
        self.dataset.set_epoch(epoch)
        return self.dataset[i]


class VolumeDataModule(L.LightningDataModule):
    def __init__(self, cfg: DictConfig, data: TrainingData | Any | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.data = TrainingData.coerce(data) if data is not None else None
        self.train_set: PatchDataset | None = None
        self._memory: dict[str, Any] = {}
        self.val_set: ValidationPatches | None = None
        self.held_out = True  # False once setup finds no held-out data: validation runs on the training data
        self.validation = ""  # what validates, one line (set by setup)
        # training pair k -> (its validation pair's index, voxels held out of its labels or None)
        self._held_out_of: dict[int, tuple[int, np.ndarray | None]] = {}

    # --- which volumes ---------------------------------------------------------------------------
    def _pairs(self) -> tuple[list[VolumePair], list[VolumePair]]:
        d = self.cfg.data
        if self.data is not None:
            train = [(open_volume(i), open_volume(l)) for i, l in self.data.train]
            val = [(open_volume(i), open_volume(l)) for i, l in self.data.val]
        else:
            if not d.train_image or not d.train_label:
                raise ValueError("data.train_image and data.train_label must name volumes (e.g. "
                                 "data.train_image=stack.h5:image data.train_label=stack.h5:label)")
            train = [(open_volume(d.train_image), open_volume(d.train_label))]
            val = [(open_volume(d.val_image), open_volume(d.val_label))] if d.val_image else []
            if d.val_image and not d.val_label:
                raise ValueError("data.val_image is set but data.val_label is not; give both or neither")
        if not train:
            raise ValueError("no training volumes given")
        train = [(self._cached(i), self._cached(l)) for i, l in train]
        val = [(self._cached(i), self._cached(l)) for i, l in val]
        if val:
            self.validation = "separate validation volumes: " + ", ".join(l.source for _, l in val)
            logger.info("validation: %s", self.validation)
            self._note_held_out(train, val)
            return [VolumePair(i, l) for i, l in train], [VolumePair(i, l) for i, l in val]
        return self._split(train)

    def _note_held_out(self, train: list[tuple[Any, Any]], val: list[tuple[Any, Any]]) -> None:
        """Validation labels over a training image (the Train panel saves a sparse split so): their
        voxels are the ones held out of that pair, which :meth:`replace_labels` keeps held out."""
        for k, (image, label) in enumerate(train):
            for j, (val_image, val_label) in enumerate(val):
                if val_image.source == image.source and tuple(val_label.shape) == tuple(label.shape):
                    self._held_out_of[k] = (j, np.asarray(val_label.read()) != 0)
                    break

    def _cached(self, volume: Any) -> Any:
        """A volume that fits the memory budget is read once: random patches from RAM, not from
        compressed chunks. The same file opened twice (train and val of one stack) is read once."""
        limit = self.cfg.data.in_memory_mb * 2**20
        nbytes = int(np.prod(volume.shape)) * np.dtype(volume.dtype).itemsize
        if limit <= 0 or nbytes > limit or volume.in_memory:
            return volume
        key = volume.source
        if key not in self._memory:
            self._memory[key] = open_volume(volume.read())
            self._memory[key].source = volume.source
        return self._memory[key]

    def _split(self, train: list[tuple[Any, Any]]) -> tuple[list[VolumePair], list[VolumePair]]:
        """Hold out part of each training volume for validation (the last z-range of dense labels, see
        :mod:`..data.splits` for sparse ones); without any held-out part, validate on the training data
        and say so (:attr:`held_out` False: its scores are logged as ``train_eval/``)."""
        train_pairs, val_pairs, notes = [], [], []
        for k, (image, label) in enumerate(train):
            pair_train, pair_val, note = (self._split_sparse if self.cfg.data.label_mode == "sparse"
                                          else self._split_dense)(image, label)
            train_pairs.append(pair_train)
            if pair_val is not None:
                held = pair_val.label.read() != 0 if pair_val.label is not label else None
                self._held_out_of[k] = (len(val_pairs), held)
                val_pairs.append(pair_val)
            notes.append(f"{label.source}: {note}")
        self.held_out = bool(val_pairs)
        if not val_pairs:
            logger.warning("validation scores are computed on the training annotation, logged as train_eval/ "
                           "(%s)", "; ".join(notes))
            val_pairs = list(train_pairs)
        self.validation = "; ".join(notes)
        logger.info("validation: %s", self.validation)
        return train_pairs, val_pairs

    def _split_dense(self, image: Any, label: Any) -> tuple[VolumePair, VolumePair | None, str]:
        fraction = self.cfg.data.val_fraction
        n_z = label.shape[0] if label.ndim == 3 else 1
        if fraction <= 0 or n_z < 2:
            why = "data.val_fraction is 0" if fraction <= 0 else "a single z-section"
            return VolumePair(image, label), None, f"nothing held out ({why})"
        train_z, val_z = split_z(n_z, fraction)
        return (VolumePair(image, label, z_range=train_z), VolumePair(image, label, z_range=val_z),
                f"sections {val_z[0]}-{val_z[1] - 1} of {n_z} held out")

    def _split_sparse(self, image: Any, label: Any) -> tuple[VolumePair, VolumePair | None, str]:
        d = self.cfg.data
        nbytes = label.size * np.dtype(label.dtype).itemsize
        if not label.in_memory and nbytes > d.in_memory_mb * 2**20:  # no whole-volume split
            logger.warning("%s is larger than data.in_memory_mb: holding out the last z-range instead of pieces "
                           "of each annotated section (or give data.val_image/val_label)", label.source)
            return self._split_dense(image, label)
        split = split_sparse(label.read(), float(d.val_fraction), d.sparse_validation, int(self.cfg.system.seed))
        if not split.held_out:
            return VolumePair(image, label), None, split.description
        train_label, val_label = open_volume(split.train), open_volume(split.val)
        train_label.source, val_label.source = f"{label.source} (training part)", f"{label.source} (held out)"
        return VolumePair(image, train_label), VolumePair(image, val_label), split.description

    # --- Lightning hooks -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cfg, d = self.cfg, self.cfg.data
        train_pairs, val_pairs = self._pairs()
        self._check_volumes(train_pairs + val_pairs)
        common = dict(spatial_dims=cfg.model.spatial_dims, label_mode=d.label_mode, target=d.target,
                      normalize=d.normalize, in_channels=cfg.model.in_channels,
                      context=SectionContext.from_config(cfg))
        augment = build_augmentation(d.augmentation, cfg.model.spatial_dims, list(d.voxel_size))
        self.train_set = PatchDataset(train_pairs, list(d.patch_size), foreground_sampling=d.foreground_sampling,
                                      foreground_ratio=d.foreground_ratio, samples_per_epoch=d.samples_per_epoch,
                                      augment=augment, seed=cfg.system.seed, **common)
        if d.label_mode == "sparse" and not any(src.annotated_total for src in self.train_set.sources):
            raise ValueError("no annotated voxel in the training labels: in sparse mode 0 means not annotated; "
                             "paint background as 1 and objects as 2 (or set data.label_mode=dense)")
        self.val_set = ValidationPatches(val_pairs, list(d.patch_size), n_patches=cfg.training.val_patches,
                                         seed=cfg.system.seed, **common)

    def replace_labels(self, index: int, labels: Any) -> int:
        """Labels repainted while the run trains, for training pair ``index`` (``data.train`` order):
        used from the next step on, with the same weights and optimizer (the napari worker calls
        this between two steps; see :class:`~.callbacks.LabelUpdates`).

        The validation split of the run's start stays: voxels it held out of sparse labels go to
        validation with their new values, every other annotated voxel (new strokes included) trains;
        a dense pair's held-out z-range keeps validating its part of the new labels. Returns the
        annotated voxels the pair now trains on (sparse labels).
        """
        assert self.train_set is not None and self.val_set is not None, "replace_labels() before setup()"
        if not 0 <= index < len(self.train_set.sources):
            raise IndexError(f"training pair {index} does not exist (the run has {len(self.train_set.sources)})")
        new = np.asarray(labels)
        current = self.train_set.sources[index].label
        if new.shape != tuple(current.shape):
            raise ValueError(f"new labels for {current.source} have shape {new.shape}, not {tuple(current.shape)}; "
                             "repaint the same layer")
        if not self.held_out:  # validation scores the training pairs themselves
            self.val_set.replace_label(index, new)
            return self.train_set.replace_label(index, new)
        val_index, held = self._held_out_of.get(index, (None, None))
        if val_index is None:
            return self.train_set.replace_label(index, new)
        if held is None:  # a dense z-range split: both parts read the one label volume
            self.val_set.replace_label(val_index, new)
            return self.train_set.replace_label(index, new)
        self.val_set.replace_label(val_index, np.where(held, new, 0).astype(new.dtype, copy=False))
        return self.train_set.replace_label(index, np.where(held, 0, new).astype(new.dtype, copy=False))

    def _check_volumes(self, pairs: list[VolumePair]) -> None:
        """Fail before training on what would otherwise fail (or silently mislead) inside it."""
        cfg, d = self.cfg, self.cfg.data
        images = {id(p.image): p for p in pairs}.values()
        for pair in images:
            check_finite(pair.image)
            check_patch_fits(pair.image, list(d.patch_size), cfg.model.spatial_dims,
                             has_channels=pair.image.ndim == pair.label.ndim + 1)
        target = TARGETS.get(d.target)
        if target.classes is not None:  # fixed by the target, checked with the config
            return
        labels = {id(p.label): p.label for p in pairs}.values()
        high = max(label_range(label)[1] for label in labels)
        classes = target.count_classes(high, d.label_mode)
        if classes > cfg.model.out_channels:
            raise ValueError(f"the labels hold {classes} classes (values up to {high}, {d.label_mode} mode) but "
                             f"model.out_channels is {cfg.model.out_channels}; set model.out_channels={classes}")

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_size=self.cfg.data.batch_size, sampler=sampler, shuffle=False,
                          num_workers=workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return self._loader(_EpochIndexed(self.train_set), EpochSampler(len(self.train_set)))

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return self._loader(self.val_set)

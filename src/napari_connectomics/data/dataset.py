"""Training and validation patches cut from (image, label) volume pairs.

Patches are read lazily from :class:`~napari_connectomics.data.volumes.Volume` objects, so the
volumes may be far larger than RAM; only small per-volume facts are kept in memory (intensity
statistics and a capped random sample of foreground / annotated voxel coordinates, gathered once,
block by block). Both datasets pickle without file handles, so DataLoader workers reopen files.

Geometry: every volume is handled as a z-y-x stack (a 2D image is a one-section stack). A 3D
network gets (C, z, y, x) patches; a 2D network gets (C, y, x) patches from one random section.
Patches that reach beyond the sampled region (a volume or z-range smaller than the patch) are
padded: the image by reflection, the label with IGNORE_INDEX, so the loss never scores padding.
With a :class:`~.sections.SectionContext` (2.5D input, 2D networks only) each image channel comes
with its neighbouring sections as channels, read by the same reader as prediction's input.
"""

from __future__ import annotations

import copy

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .checks import check_not_rgb
from .conventions import IGNORE_INDEX
from .normalize import NORMALIZATION_MODES, IntensityStats, intensity_stats, read_normalized
from .sections import SectionContext
from .targets import LABEL_MODES, TARGETS, labels_to_classes
from .volumes import Volume, open_volume

__all__ = ["FOREGROUND_SAMPLING_MODES", "PatchDataset", "ValidationPatches", "VolumePair", "split_z"]

logger = logging.getLogger(__name__)

FOREGROUND_SAMPLING_MODES = ("none", "rejection", "balanced")
_REJECTION_TRIES = 10  # uniform draws before 'rejection' sampling keeps a patch without foreground
_MAX_INDEX_COORDS = 1_000_000  # voxel coordinates kept per volume and kind (12 MB as int32)
_INDEX_BLOCK_VOXELS = 4_000_000  # label voxels read at once while indexing
_CENTRE_JITTER = 0.25  # a foreground-centred patch moves off-centre by up to this share of its size
_SEED_MODULUS = 2**63  # numpy seed sequences take non-negative entropy only
_VAL_STREAM = 1  # separate random streams for the validation draw and the voxel indices
_INDEX_STREAM = 2

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # [lo, hi) along z, y, x
Start = tuple[int, int, int]


@dataclass
class VolumePair:
    """An image and its labels (same voxels); ``z_range`` [z0, z1) restricts sampling, e.g. to the
    training or validation part of one stack (see :func:`split_z`)."""

    image: Volume
    label: Volume | None
    z_range: tuple[int, int] | None = None


def split_z(n_z: int, val_fraction: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Train and validation z-ranges of one stack: the last ``val_fraction`` of z validates.

    Each part gets at least one section; ``val_fraction == 0`` gives an empty validation range
    ``(n_z, n_z)``. Raises ValueError when the stack cannot be split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    if n_z < 1:
        raise ValueError(f"cannot split a stack of {n_z} z-sections")
    if val_fraction == 0.0:
        return (0, n_z), (n_z, n_z)
    if n_z < 2:
        raise ValueError(
            f"cannot hold out {val_fraction:g} of a stack with {n_z} z-section for validation: it needs "
            "at least 2 sections; give a separate validation volume (data.val_image) or val_fraction=0"
        )
    n_val = min(n_z - 1, max(1, round(n_z * val_fraction)))
    return (0, n_z - n_val), (n_z - n_val, n_z)


# --------------------------------------------------------------------------------------------------
# one volume pair, ready for sampling


class _Source:
    """One image/label pair: geometry, intensity statistics, voxel indices and patch reading."""

    def __init__(
        self,
        pair: VolumePair,
        *,
        in_channels: int,
        label_mode: str,
        target: str,
        normalize: str,
        context: SectionContext = SectionContext(),
    ) -> None:
        if pair.label is None:
            raise ValueError(
                f"image {_name(pair.image)} has no label volume; "
                "training and validation patches need labels"
            )
        self.image = open_volume(pair.image)
        self.label = open_volume(pair.label)
        self.channels = _check_pair(self.image, self.label, in_channels)
        self.is_2d = self.label.ndim == 2
        shape = (1, *self.label.shape) if self.is_2d else tuple(self.label.shape)
        z0, z1 = _check_z_range(pair.z_range, shape[0], self.label.source)
        self.region: Box = ((z0, z1), (0, shape[1]), (0, shape[2]))
        self.label_mode, self.target, self.normalize = label_mode, target, normalize
        self.context, self.n_z = context, shape[0]
        # Measured once per volume, applied to every patch ('none' needs no statistics).
        self.stats: IntensityStats | None = (
            None if normalize == "none" else intensity_stats(self.image)
        )
        empty = np.zeros((0, 3), np.int32)
        self.foreground, self.annotated = empty, empty
        self.foreground_total = self.annotated_total = 0

    @property
    def voxels(self) -> int:
        return int(np.prod([hi - lo for lo, hi in self.region]))

    # -- indices -------------------------------------------------------------------------------

    def index_voxels(self, foreground: bool, annotated: bool, seed: np.random.SeedSequence) -> None:
        """Sample coordinates of foreground (class >= 1) and annotated (not IGNORE) voxels once.

        The label is read block by block and at most ``_MAX_INDEX_COORDS`` coordinates of each
        kind are kept (a uniform random subset), so huge lazy volumes are never loaded whole.
        """
        rng = np.random.default_rng(seed)
        fg, annot = _VoxelSample(_MAX_INDEX_COORDS, rng), _VoxelSample(_MAX_INDEX_COORDS, rng)
        for box in _blocks(self.region, _INDEX_BLOCK_VOXELS):
            classes = labels_to_classes(self._read_label(box), self.label_mode, self.target)
            offset = np.array([lo for lo, _ in box], np.int32)
            if foreground:
                fg.add(np.flatnonzero(classes >= 1), classes.shape, offset)
            if annotated:
                annot.add(np.flatnonzero(classes != IGNORE_INDEX), classes.shape, offset)
        self.foreground, self.foreground_total = fg.coords(), fg.total
        self.annotated, self.annotated_total = annot.coords(), annot.total

    # -- windows -------------------------------------------------------------------------------

    def uniform_start(self, rng: np.random.Generator, size: Start) -> Start:
        """A window start drawn uniformly among those inside the region (or covering it)."""
        ranges = [_start_range(lo, hi, n) for (lo, hi), n in zip(self.region, size)]
        return tuple(int(rng.integers(a, b + 1)) for a, b in ranges)  # type: ignore[return-value]

    def start_around(self, voxel: np.ndarray, offset: Sequence[int], size: Start) -> Start:
        """The window that puts ``voxel`` at ``offset`` inside it, moved into the region."""
        out = []
        for v, o, (lo, hi), n in zip(voxel, offset, self.region, size):
            a, b = _start_range(lo, hi, n)
            out.append(int(min(max(int(v) - int(o), a), b)))
        return tuple(out)  # type: ignore[return-value]

    def grid_starts(self, size: Start) -> list[Start]:
        """Window starts tiling the region (the last one along each axis flush with its end)."""
        axes = [_grid_axis(lo, hi, n) for (lo, hi), n in zip(self.region, size)]
        return [tuple(s) for s in product(*axes)]  # type: ignore[misc]

    # -- reading -------------------------------------------------------------------------------

    def read_image(self, start: Start, size: Start) -> np.ndarray:
        """Normalised float32 (C, z, y, x) patch (C times the context's sections); beyond the
        region the image is reflected."""
        inner, pads = self._clip(start, size)

        def read_z(z: slice) -> np.ndarray:
            box = ((z.start, z.stop), *inner[1:])
            return read_normalized(self.image, self._spatial_index(box), has_channels=self.channels,  # type: ignore[arg-type]
                                   flat=self.is_2d, mode=self.normalize, stats=self.stats)

        image = self.context.read(read_z, slice(*inner[0]), self.n_z)
        return _pad_reflect(image, pads)

    def read_classes(self, start: Start, size: Start) -> np.ndarray:
        """int64 (1, z, y, x) class map; beyond the region it is IGNORE_INDEX.

        Instance targets are computed with a one-voxel y/x margin, so contours at the patch
        faces are the same as in the whole volume.
        """
        inner, pads = self._clip(start, size)
        margin = TARGETS.get(self.target).margin
        read = (inner[0], *(_widen(axis, margin, lim) for axis, lim in zip(inner[1:], self.region[1:])))
        classes = labels_to_classes(self._read_label(read), self.label_mode, self.target)
        crop = tuple(slice(a - r, b - r) for (a, b), (r, _) in zip(inner, read))
        return np.pad(classes[crop][None], ((0, 0), *pads), constant_values=IGNORE_INDEX)

    def _read_label(self, box: Box) -> np.ndarray:
        label = self.label[self._spatial_index(box)]
        return label[None] if self.is_2d else label

    def _spatial_index(self, box: Box) -> tuple[slice, ...]:
        index = tuple(slice(lo, hi) for lo, hi in box)
        return index[1:] if self.is_2d else index

    def _clip(self, start: Start, size: Start) -> tuple[Box, list[tuple[int, int]]]:
        """The part of the window inside the region, and the padding that restores the window."""
        inner = tuple((max(s, lo), min(s + n, hi)) for s, n, (lo, hi) in zip(start, size, self.region))
        pads = [(a - s, s + n - b) for (a, b), s, n in zip(inner, start, size)]
        return inner, pads  # type: ignore[return-value]


class _VoxelSample:
    """A uniform random subset of at most ``cap`` voxel coordinates, gathered block by block:
    voxels are kept with probability ``keep``, halved (thinning what was kept) whenever the cap is
    exceeded, so memory stays bounded however much foreground a volume has."""

    def __init__(self, cap: int, rng: np.random.Generator) -> None:
        self.cap, self.rng = cap, rng
        self.keep = 1.0
        self.total = 0
        self._parts: list[np.ndarray] = []
        self._count = 0

    def add(self, flat: np.ndarray, shape: tuple[int, ...], offset: np.ndarray) -> None:
        self.total += int(flat.size)
        if self.keep < 1.0:
            flat = flat[self.rng.random(flat.size) < self.keep]
        if flat.size == 0:
            return
        coords = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int32) + offset
        self._parts.append(coords)
        self._count += len(coords)
        while self._count > self.cap:
            self.keep /= 2
            self._parts = [p[self.rng.random(len(p)) < 0.5] for p in self._parts]
            self._count = sum(len(p) for p in self._parts)

    def coords(self) -> np.ndarray:
        return np.concatenate(self._parts) if self._parts else np.zeros((0, 3), np.int32)


# --------------------------------------------------------------------------------------------------
# datasets


class _PatchSet(Dataset):
    """What training and validation patches share: checked arguments, sources and reading."""

    def __init__(
        self,
        pairs: Sequence[VolumePair],
        patch_size: Sequence[int],
        *,
        spatial_dims: int,
        label_mode: str,
        target: str,
        normalize: str,
        in_channels: int,
        index_foreground: bool,
        seed: int,
        context: SectionContext | None = None,
    ) -> None:
        _check_choice("label_mode", label_mode, LABEL_MODES)
        _check_choice("target", target, TARGETS)
        _check_choice("normalize", normalize, NORMALIZATION_MODES)
        self.spatial_dims = spatial_dims
        self.patch_size = _check_patch_size(patch_size, spatial_dims)
        context = context if context is not None else SectionContext()
        if context.sections and spatial_dims != 2:
            raise ValueError(f"context sections ({context.sections}) are extra input channels of a 2D "
                             "network; use spatial_dims=2, or no context for a 3D network")
        # Windows are always z-y-x; a 2D patch is a one-section window.
        self._size: Start = (1, *self.patch_size)[-3:]  # type: ignore[assignment]
        self.seed = int(seed) % _SEED_MODULUS
        if not pairs:
            raise ValueError("no volume pairs given; patches need at least one image with labels")
        self.sources = [
            _Source(p, in_channels=in_channels, label_mode=label_mode, target=target,
                    normalize=normalize, context=context)
            for p in pairs
        ]
        self.sparse = label_mode == "sparse"
        self._index_foreground = bool(index_foreground)
        if index_foreground or self.sparse:
            for k, src in enumerate(self.sources):
                src.index_voxels(index_foreground, self.sparse, seed=_seed_of(self.seed, k))
        self._log_sources(index_foreground)
        if index_foreground and not any(s.foreground_total for s in self.sources):
            logger.warning("the labels hold no foreground voxel; "
                           "foreground-centred patches fall back to uniform ones")
        if self.sparse and not any(s.annotated_total for s in self.sources):
            logger.warning("the sparse labels hold no annotated voxel (all 0): "
                           "the loss ignores every patch")

    def replace_label(self, k: int, label: Any) -> int:
        """Train on new labels for pair ``k`` from the next patch on (labels repainted during a run).

        The image, its intensity statistics and the pair's region stay; the voxel indices are taken
        anew. The source is swapped whole, so a patch being read meanwhile sees the old one or the new
        one, never a mix. Returns the pair's annotated voxels (sparse labels) or its voxel count.
        """
        old = self.sources[k]
        volume = open_volume(label)
        if tuple(volume.shape) != tuple(old.label.shape):
            raise ValueError(f"new labels for {old.label.source} have shape {tuple(volume.shape)}, "
                             f"not {tuple(old.label.shape)}; repaint the same layer")
        volume.source = old.label.source
        new = copy.copy(old)
        new.label = volume
        if self._index_foreground or self.sparse:
            new.index_voxels(self._index_foreground, self.sparse, seed=_seed_of(self.seed, k))
        self.sources[k] = new
        return int(new.annotated_total) if self.sparse else new.voxels

    def _log_sources(self, foreground_indexed: bool) -> None:
        for src in self.sources:
            (z0, z1), (_, y), (_, x) = src.region
            facts = [f"sections {z0}-{z1 - 1} of {y}x{x}"]
            if foreground_indexed:
                facts.append(f"{src.foreground_total} foreground voxels")
            if self.sparse:
                facts.append(f"{src.annotated_total} annotated voxels")
            logger.info("patches from %s: %s", src.label.source, ", ".join(facts))

    # -- windows -------------------------------------------------------------------------------

    def _pick(self, rng: np.random.Generator, weights: Sequence[float]) -> int:
        w = np.asarray(weights, np.float64)
        return int(rng.choice(len(w), p=w / w.sum()))

    def _foreground_window(self, rng: np.random.Generator) -> tuple[int, Start] | None:
        """A window centred (with jitter) on a random foreground voxel, or None without any."""
        totals = [s.foreground_total if len(s.foreground) else 0 for s in self.sources]
        if sum(totals) == 0:
            return None
        k = self._pick(rng, totals)
        src = self.sources[k]
        voxel = src.foreground[rng.integers(len(src.foreground))]
        offset = [n // 2 + int(rng.integers(-int(n * _CENTRE_JITTER), int(n * _CENTRE_JITTER) + 1))
                  for n in self._size]
        return k, src.start_around(voxel, offset, self._size)

    def _background_window(self, rng: np.random.Generator) -> tuple[int, Start]:
        """A uniform window; with sparse labels, one holding a random annotated voxel anywhere."""
        if self.sparse:
            totals = [s.annotated_total if len(s.annotated) else 0 for s in self.sources]
            if sum(totals) > 0:
                k = self._pick(rng, totals)
                src = self.sources[k]
                voxel = src.annotated[rng.integers(len(src.annotated))]
                offset = [int(rng.integers(n)) for n in self._size]
                return k, src.start_around(voxel, offset, self._size)
        k = self._pick(rng, [s.voxels for s in self.sources])
        return k, self.sources[k].uniform_start(rng, self._size)

    # -- items ---------------------------------------------------------------------------------

    def _read(self, k: int, start: Start, classes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """{'image': (C, *patch), 'label': (1, *patch)} numpy arrays of the window at ``start``."""
        src = self.sources[k]
        if classes is None:
            classes = src.read_classes(start, self._size)
        image = src.read_image(start, self._size)
        if self.spatial_dims == 2:
            image, classes = image[:, 0], classes[:, 0]
        return {"image": image, "label": classes}


class PatchDataset(_PatchSet):
    """Random training patches: length = samples_per_epoch; item i of epoch e is deterministic given
    (seed, e, i), so DataLoader workers and resumed runs sample reproducibly.

    Sampling (``foreground_sampling``): 'balanced' centres a ``foreground_ratio`` share of patches
    on foreground voxels, 'rejection' redraws uniform patches until one holds foreground (at most
    10 tries), 'none' is uniform. With sparse labels the uniform draws are placed around annotated
    voxels, so a few painted strokes are seen in nearly every patch. The epoch lives in shared
    memory, so persistent DataLoader workers see :meth:`set_epoch` too.
    """

    def __init__(
        self,
        pairs: Sequence[VolumePair],
        patch_size: Sequence[int],
        *,
        spatial_dims: int,
        label_mode: str,
        target: str,
        normalize: str = "percentile",
        foreground_sampling: str = "balanced",
        foreground_ratio: float = 0.5,
        samples_per_epoch: int = 200,
        augment: Callable[[dict], dict] | None = None,
        seed: int = 0,
        in_channels: int = 1,
        context: SectionContext | None = None,
    ) -> None:
        _check_choice("foreground_sampling", foreground_sampling, FOREGROUND_SAMPLING_MODES)
        if not 0.0 <= foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1]; got {foreground_ratio!r}")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be at least 1; got {samples_per_epoch!r}")
        super().__init__(
            pairs, patch_size, spatial_dims=spatial_dims, label_mode=label_mode, target=target,
            normalize=normalize, in_channels=in_channels,
            index_foreground=foreground_sampling == "balanced" and foreground_ratio > 0, seed=seed,
            context=context,
        )
        self.foreground_sampling = foreground_sampling
        self.foreground_ratio = float(foreground_ratio)
        self.samples_per_epoch = int(samples_per_epoch)
        self.augment = augment
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Draw the patches of ``epoch`` from now on (call it before each training epoch)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"patch index {i} out of range for {len(self)} patches per epoch")
        rng = np.random.default_rng([self.seed, self.epoch % _SEED_MODULUS, int(i)])
        k, start, classes = self._draw(rng)
        sample = self._read(k, start, classes)
        if self.augment is not None:
            if hasattr(self.augment, "set_random_state"):
                self.augment.set_random_state(seed=int(rng.integers(2**32)))
            sample = self.augment(sample)
        return _to_tensors(sample)

    def _draw(self, rng: np.random.Generator) -> tuple[int, Start, np.ndarray | None]:
        """The window of one item by the sampling mode; the class map too when it was read."""
        if self.foreground_sampling == "balanced" and rng.random() < self.foreground_ratio:
            window = self._foreground_window(rng)
            if window is not None:
                return (*window, None)
        if self.foreground_sampling != "rejection":
            return (*self._background_window(rng), None)
        for _ in range(_REJECTION_TRIES):
            k, start = self._background_window(rng)
            classes = self.sources[k].read_classes(start, self._size)
            if (classes >= 1).any():
                break
        return k, start, classes


class ValidationPatches(_PatchSet):
    """A fixed, deterministic set of patches for comparable validation: a grid tiling each pair's
    region (``n_patches=None``), or ``n_patches`` random windows drawn once from ``seed``, a
    ``foreground_ratio`` share of them centred on foreground. No augmentation."""

    def __init__(
        self,
        pairs: Sequence[VolumePair],
        patch_size: Sequence[int],
        *,
        spatial_dims: int,
        label_mode: str,
        target: str,
        normalize: str = "percentile",
        n_patches: int | None = None,
        foreground_ratio: float = 0.5,
        seed: int = 0,
        in_channels: int = 1,
        context: SectionContext | None = None,
    ) -> None:
        if n_patches is not None and n_patches < 1:
            raise ValueError(f"n_patches must be at least 1 or None (a grid); got {n_patches!r}")
        if not 0.0 <= foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1]; got {foreground_ratio!r}")
        super().__init__(
            pairs, patch_size, spatial_dims=spatial_dims, label_mode=label_mode, target=target,
            normalize=normalize, in_channels=in_channels,
            index_foreground=n_patches is not None and foreground_ratio > 0, seed=seed,
            context=context,
        )
        if n_patches is None:
            self._locations = [
                (k, s) for k, src in enumerate(self.sources) for s in src.grid_starts(self._size)
            ]
        else:
            self._locations = self._random_locations(n_patches, foreground_ratio)
        size = "x".join(map(str, self.patch_size))
        logger.info("%d validation patches of %s", len(self._locations), size)

    @property
    def locations(self) -> list[tuple[int, Start]]:
        """(pair index, window start z-y-x) of every patch; z is the section for 2D patches."""
        return list(self._locations)

    def _random_locations(self, n: int, foreground_ratio: float) -> list[tuple[int, Start]]:
        rng = np.random.default_rng([self.seed, _VAL_STREAM])
        n_fg = int(round(n * foreground_ratio))
        out = [w for w in (self._foreground_window(rng) for _ in range(n_fg)) if w is not None]
        out += [self._background_window(rng) for _ in range(n - len(out))]
        return out

    def __len__(self) -> int:
        return len(self._locations)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k, start = self._locations[i]
        return _to_tensors(self._read(k, start))


# --------------------------------------------------------------------------------------------------
# helpers


def _to_tensors(sample: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        "image": torch.from_numpy(np.ascontiguousarray(sample["image"], dtype=np.float32)),
        "label": torch.from_numpy(np.ascontiguousarray(sample["label"], dtype=np.int64)),
    }


def _name(volume: Any) -> str:
    return getattr(volume, "source", None) or f"<{type(volume).__name__}>"


def _check_pair(image: Volume, label: Volume, in_channels: int) -> bool:
    """Whether the image has a leading channel axis; ValueError when the shapes disagree."""
    if tuple(image.shape[:-1]) == tuple(label.shape):  # a trailing axis: a colour image?
        check_not_rgb(image.shape, image.source)
    has_channels = image.ndim == label.ndim + 1
    spatial = image.shape[1:] if has_channels else image.shape
    if label.ndim not in (2, 3) or tuple(spatial) != tuple(label.shape):
        raise ValueError(
            f"image shape {tuple(image.shape)} ({image.source}) does not match label shape "
            f"{tuple(label.shape)} ({label.source}): they must cover the same z-y-x (or y-x) voxels, "
            "the image optionally with a leading channel axis"
        )
    channels = image.shape[0] if has_channels else 1
    if channels != in_channels:
        raise ValueError(
            f"image {image.source} has {channels} channel(s) (shape {tuple(image.shape)}) but "
            f"model.in_channels is {in_channels}; set model.in_channels={channels}, or give "
            f"{in_channels} channel(s) on the image's first axis"
        )
    return has_channels


def _check_z_range(z_range: tuple[int, int] | None, n_z: int, source: str) -> tuple[int, int]:
    if z_range is None:
        return 0, n_z
    z0, z1 = (int(z) for z in z_range)
    if not 0 <= z0 < z1 <= n_z:
        raise ValueError(
            f"z_range {tuple(z_range)} of {source} must satisfy 0 <= z0 < z1 <= {n_z} (its z size)"
        )
    return z0, z1


def _check_patch_size(patch_size: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}")
    size = tuple(int(n) for n in patch_size)
    if len(size) != spatial_dims or min(size) < 1:
        axes = "z-y-x" if spatial_dims == 3 else "y-x"
        raise ValueError(
            f"patch_size must be {spatial_dims} positive sizes ({axes}); got {list(patch_size)}"
        )
    return size


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _seed_of(seed: int, k: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, _INDEX_STREAM, k])


def _start_range(lo: int, hi: int, size: int) -> tuple[int, int]:
    """Allowed window starts along one axis: inside [lo, hi), or covering it when it is shorter."""
    return (lo, hi - size) if hi - lo >= size else (hi - size, lo)


def _grid_axis(lo: int, hi: int, size: int) -> list[int]:
    """Starts tiling [lo, hi) with windows of ``size``; one centred window when it is shorter."""
    if hi - lo <= size:
        return [lo - (size - (hi - lo)) // 2]
    return [*range(lo, hi - size, size), hi - size]


def _widen(axis: tuple[int, int], margin: int, limit: tuple[int, int]) -> tuple[int, int]:
    return max(axis[0] - margin, limit[0]), min(axis[1] + margin, limit[1])


def _blocks(region: Box, budget: int) -> Iterator[Box]:
    """Boxes of at most about ``budget`` voxels that tile ``region``."""
    (z0, z1), (y0, y1), (x0, x1) = region
    bx = min(x1 - x0, budget)
    by = min(y1 - y0, max(1, budget // bx))
    bz = min(z1 - z0, max(1, budget // (by * bx)))
    for z, y, x in product(range(z0, z1, bz), range(y0, y1, by), range(x0, x1, bx)):
        yield (z, min(z + bz, z1)), (y, min(y + by, y1)), (x, min(x + bx, x1))


def _pad_reflect(image: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
    """Pad the spatial axes of a (C, z, y, x) patch by reflection (edge for one-voxel axes)."""
    for axis, pad in enumerate(pads, start=1):
        if pad != (0, 0):
            mode = "reflect" if image.shape[axis] > 1 else "edge"
            width = [(0, 0)] * image.ndim
            width[axis] = pad
            image = np.pad(image, width, mode=mode)
    return image

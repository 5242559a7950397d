"""Sections as channels (2.5D input): a section read together with its neighbours along z.

A 2D network with context ``k`` and step ``s`` sees section ``z`` as ``2k + 1`` channels: the
sections ``z - k*s, ..., z - s, z, z + s, ..., z + k*s`` in that order (z ascending, the section
itself in the middle). A neighbour beyond the volume's ends is the nearest end section (clamped:
the first or last section repeats), at the ends of the whole volume, never of a region or a
training z-range, so a section gets the same channels in training, in a region's prediction and in
the whole volume's. A multi-channel image gives, for each of its channels in turn, that channel's
2k + 1 sections.

:meth:`SectionContext.read` is the one reader: the training patches (:mod:`.dataset`) and the
prediction input (:mod:`napari_connectomics.inference.input`) both call it around their own
reading, and it reads only the sections it needs (runs of consecutive ones at once), so lazy
HDF5, Zarr and dask volumes stay lazy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config.context import context_step

__all__ = ["SectionContext"]


@dataclass(frozen=True)
class SectionContext:
    """``sections`` neighbours on each side, ``step`` sections apart (0 sections: the section alone)."""

    sections: int = 0
    step: int = 1

    def __post_init__(self) -> None:
        if int(self.sections) < 0:
            raise ValueError(f"context sections must be 0 or more, got {self.sections}; "
                             "set data.context_sections=0 for no context")
        if int(self.step) < 1:
            raise ValueError(f"the context step must be at least 1, got {self.step}")

    @classmethod
    def from_config(cls, cfg: Any) -> SectionContext:
        """The context a config trains (and its checkpoint predicts) with."""
        return cls(int(cfg.data.context_sections), context_step(cfg))

    @property
    def channels(self) -> int:
        """Channels per image channel: the section and its neighbours."""
        return 2 * int(self.sections) + 1

    def indices(self, z0: int, z1: int, n_z: int) -> np.ndarray:
        """(2k + 1, z1 - z0) source sections of sections ``z0..z1-1`` of a ``n_z``-section volume."""
        offsets = np.arange(-self.sections, self.sections + 1) * int(self.step)
        return np.clip(np.arange(z0, z1)[None, :] + offsets[:, None], 0, n_z - 1)

    def read(self, read_z: Callable[[slice], np.ndarray], z: slice, n_z: int) -> np.ndarray:
        """The sections ``z`` (start and stop set, inside ``0..n_z``) as (C * (2k + 1), nz, y, x),
        from ``read_z(slice)``, which reads consecutive sections as (C, dz, y, x)."""
        if not self.sections:
            return read_z(z)
        wanted = self.indices(int(z.start), int(z.stop), int(n_z))
        unique = np.unique(wanted)
        breaks = np.flatnonzero(np.diff(unique) > 1) + 1
        runs = np.split(unique, breaks)
        parts = [read_z(slice(int(run[0]), int(run[-1]) + 1)) for run in runs]
        data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        stacked = data[:, np.searchsorted(unique, wanted)]  # (C, 2k + 1, nz, y, x)
        return stacked.reshape(-1, *stacked.shape[2:])

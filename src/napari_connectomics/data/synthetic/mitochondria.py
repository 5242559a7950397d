"""Mitochondria placement: capsules inside cells, clear of membranes, some in touching pairs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .cells import Cells
from .grid import Grid
from .params import (
    MEMBRANE_HALF_NM,
    MITO_GAP_NM,
    MITO_MARGIN_NM,
    MITO_MEAN_VOLUME_NM3,
    MITO_RADIUS_NM,
    MITO_TARGET_FRACTION,
)
from .shapes import Capsule, frame, random_axis


def _random_mito(rng: np.random.Generator, axis: np.ndarray | None = None) -> Capsule:
    """A mitochondrion-sized capsule at the origin (moved into place later)."""
    r1 = rng.uniform(*MITO_RADIUS_NM)
    r2 = r1 * rng.uniform(0.8, 1.1)
    half = r1 * rng.choice([rng.uniform(0.2, 1.0), rng.uniform(1.0, 3.2)], p=[0.35, 0.65])
    return Capsule(
        center=np.zeros(3),
        axis=random_axis(rng, 0.75) if axis is None else axis,
        half_length=float(half),
        r1=float(r1),
        r2=float(r2),
        bend=float(rng.normal(0.0, 0.25) / max(half + r1, 1.0)),
        wobble=float(rng.uniform(0.0, 0.08)),
        phase=float(rng.uniform(0, 2 * np.pi)),
    )


def _fits_cell(cap: Capsule, grid: Grid, cells: Cells, cell: int) -> bool:
    """True if the capsule, grown by the membrane margin, stays inside ``cell`` (coarse grid)."""
    grown = replace(
        cap, r1=cap.r1 + MITO_MARGIN_NM, r2=cap.r2 + MITO_MARGIN_NM, wobble=0.0, phase=0.0
    )
    cstep = grid.vox * np.asarray(grid.steps)
    ext = np.abs(grown.axis) * grown.half_length + grown.reach - grown.half_length
    lo = np.maximum(np.floor((grown.center - ext) / cstep).astype(int), 0)
    hi = np.minimum(np.ceil((grown.center + ext) / cstep).astype(int) + 1, grid.cshape)
    if np.any(hi <= lo):
        return False
    axes = (np.arange(a, b) * s for a, b, s in zip(lo, hi, cstep, strict=True))
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3) - grown.center
    e1, e2 = frame(grown.axis)
    u = nodes @ grown.axis
    v = nodes @ e1 - grown.bend * u * u
    w = nodes @ e2
    cap_ = np.maximum(np.abs(u) - grown.half_length, 0) / (0.5 * (grown.r1 + grown.r2))
    inside = (cap_**2 + (v / grown.r1) ** 2 + (w / grown.r2) ** 2) < 1.0
    lab = cells.label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].reshape(-1)[inside]
    bd = cells.bdist[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].reshape(-1)[inside]
    return bool(np.all(lab == cell) and np.all(bd > MEMBRANE_HALF_NM))


class _MitoCanvas:
    """Instance volume plus the shapes drawn into it, with overlap and membrane checks."""

    def __init__(self, grid: Grid, bdist: np.ndarray) -> None:
        self.grid = grid
        self.bdist = bdist
        self.instances = np.zeros(grid.shape, dtype=np.uint32)
        # Normalised depth of the shape owning each voxel: lets touching pairs share a face.
        self.qbest = np.full(grid.shape, np.inf, dtype=np.float32)
        self.shapes: list[Capsule] = []
        self.voxels = 0
        # Clearance to other shapes: over a voxel in every axis, so they never become neighbours.
        self.gap = max(MITO_GAP_NM, 1.25 * float(grid.vox.max()))
        self.pad = 2.0 * self.gap  # bounding-box margin that covers the clearance test
        self.clip = MEMBRANE_HALF_NM + 1.5 * float(grid.vox[1:].max())  # never onto a membrane

    def try_add(self, cap: Capsule, partner: int = 0) -> int:
        """Draw ``cap`` if it hits the grid and keeps clear of all but ``partner``; its id or 0."""
        box = cap.bbox(self.grid, pad_nm=self.pad)
        if box is None:
            return 0
        _, q = cap.local(self.grid, box)
        rmin = min(cap.r1, cap.r2)
        near = q < 1.0 + self.gap / rmin
        inst = self.instances[box]
        others = inst[near]
        if np.any((others != 0) & (others != partner)):
            return 0
        mask = (q < 1.0) & (self.bdist[box] > self.clip)
        if partner:
            mask &= q < self.qbest[box]  # shared voxels go to the shape they are deeper in
        if not np.any(mask):
            return 0
        new_id = len(self.shapes) + 1
        self.voxels += int(np.count_nonzero(mask & (inst == 0)))
        inst[mask] = new_id
        self.qbest[box][mask] = q[mask]
        self.shapes.append(cap)
        return new_id

    def touching(self, a: int, b: int) -> bool:
        """True if instances ``a`` and ``b`` are 6-neighbours somewhere."""
        inst = self.instances
        for ax in range(3):
            if inst.shape[ax] < 2:
                continue
            s0 = [slice(None)] * 3
            s1 = [slice(None)] * 3
            s0[ax] = slice(None, -1)
            s1[ax] = slice(1, None)
            p, r = inst[tuple(s0)], inst[tuple(s1)]
            if np.any(((p == a) & (r == b)) | ((p == b) & (r == a))):
                return True
        return False

    def remove(self, label: int) -> None:
        """Undo the most recent shape (only the last one can be removed)."""
        assert label == len(self.shapes)
        cap = self.shapes.pop()
        box = cap.bbox(self.grid, pad_nm=self.pad)
        if box is None:
            return
        sub = self.instances[box]
        hit = sub == label
        self.voxels -= int(np.count_nonzero(hit))
        sub[hit] = 0
        self.qbest[box][hit] = np.inf


def place_mitochondria(
    rng: np.random.Generator, grid: Grid, cells: Cells, bdist: np.ndarray, n_target: int | None
) -> tuple[np.ndarray, list[Capsule]]:
    """Place mitochondria in cells, a few as touching pairs; return instance volume and shapes."""
    canvas = _MitoCanvas(grid, bdist)
    total = int(np.prod(grid.shape))
    cstep = grid.vox * np.asarray(grid.steps)
    order = np.argsort(cells.bdist.reshape(-1), kind="stable")
    room = cells.bdist.reshape(-1)[order]  # ascending: nodes with enough room form a tail

    def done() -> bool:
        if n_target is not None:
            return len(canvas.shapes) >= n_target
        return canvas.voxels >= MITO_TARGET_FRACTION * total

    def place(cap: Capsule) -> tuple[Capsule, int] | None:
        """Move ``cap`` to a random coarse node with room for its width; None if there is none."""
        start = int(np.searchsorted(room, min(cap.r1, cap.r2) + MITO_MARGIN_NM))
        if start >= room.size:
            return None
        node = np.unravel_index(order[rng.integers(start, room.size)], grid.cshape)
        center = np.asarray(node) * cstep + rng.uniform(-0.5, 0.5, 3) * cstep
        if grid.shape[0] == 1:  # a single section: cut the organelle somewhere through its middle
            center[0] = rng.normal(0.0, 0.25 * min(cap.r1, cap.r2))
        return replace(cap, center=center), int(cells.label[node])

    def add_pair() -> bool:
        placed = place(_random_mito(rng, axis=random_axis(rng, 1.0)))
        if placed is None:
            return False
        a, cell = placed
        if not _fits_cell(a, grid, cells, cell):
            return False
        e1, _ = frame(a.axis)
        b = _random_mito(rng, axis=a.axis)
        if rng.random() < 0.6:  # side by side
            b = replace(
                b,
                center=a.center + e1 * rng.choice([-1, 1]) * 0.9 * (a.r1 + b.r1),
                half_length=min(b.half_length, a.half_length + 60.0),
                bend=0.0,
            )
        else:  # end to end
            gap = a.half_length + b.half_length + 0.9 * 0.5 * (a.r1 + a.r2 + b.r1 + b.r2)
            b = replace(b, center=a.center + a.axis * gap, bend=0.0)
        a = replace(a, bend=0.0)
        if not _fits_cell(b, grid, cells, cell):
            return False
        ia = canvas.try_add(a)
        if not ia:
            return False
        ib = canvas.try_add(b, partner=ia)
        if ib and canvas.touching(ia, ib):
            return True
        if ib:
            canvas.remove(ib)
        canvas.remove(ia)
        return False

    # Pairs first, while there is room, so that a touching pair is (nearly) guaranteed.
    if n_target is None:
        expected = MITO_TARGET_FRACTION * float(np.prod(grid.extent)) / MITO_MEAN_VOLUME_NM3
        n_pairs = max(1, int(round(0.12 * expected))) if expected >= 3.0 else 0
    else:
        n_pairs = max(1, int(round(0.12 * n_target))) if n_target >= 2 else 0
    pairs = tries = 0
    while pairs < n_pairs and tries < 200 and not done():
        tries += 1
        if n_target is not None and len(canvas.shapes) + 2 > n_target:
            break
        pairs += add_pair()

    overshoot = 1.5 * MITO_TARGET_FRACTION * total
    tries = 0
    max_tries = 200 + int(25 * expected) if n_target is None else 200 + 20 * n_target
    while not done() and tries < max_tries:
        tries += 1
        placed = place(_random_mito(rng))
        if placed is None:
            continue
        cap, cell = placed
        # A shorter, turned organelle often fits where a long one did not.
        for shrink in (1.0, 0.5, 0.15):
            if shrink < 1.0:
                cap = replace(
                    cap, axis=random_axis(rng, 0.75), half_length=cap.half_length * shrink
                )
            if _fits_cell(cap, grid, cells, cell):
                label = canvas.try_add(cap)
                if label and n_target is None and label > 1 and canvas.voxels > overshoot:
                    canvas.remove(label)  # keeps small volumes from filling up with one organelle
                break

    # Relabel to consecutive ids in case a shape lost all its voxels to the membrane clip.
    ids = np.unique(canvas.instances)
    ids = ids[ids > 0]
    if ids.size and ids[-1] != ids.size:
        lut = np.zeros(int(ids[-1]) + 1, dtype=np.uint32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
        canvas.instances = lut[canvas.instances]
    return canvas.instances, [canvas.shapes[i - 1] for i in ids]

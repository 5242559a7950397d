"""A numpy array handed to the engine worker through shared memory instead of the pipe (no Qt, no torch).

Segmenting sends the image layer's whole array to the worker (normalisation may use statistics of
the whole volume). Pickling it through the pipe would hold napari's GIL while it copies (a stall
of the GUI thread proportional to the layer) and keep a second copy in the pickle; a shared
memory block costs one copy, made by numpy without the GIL, and the worker reads it in place.

napari creates the block (:func:`share`), the worker attaches read-only (:meth:`SharedArray.attach`)
and detaches when its request ends, and napari unlinks it when the job ends (:meth:`Shared.release`)
-- whatever the worker did, even if it was killed. Small arrays are not worth a block: they travel
in the request's pickle.
"""

from __future__ import annotations

import logging
import sys
import uuid
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

__all__ = ["SHARED_MIN_BYTES", "Shared", "SharedArray", "detach", "share"]

logger = logging.getLogger(__name__)

SHARED_MIN_BYTES = 4 * 2**20  # numpy arrays at least this large go through shared memory


@dataclass(frozen=True)
class SharedArray:
    """The name, shape and dtype of an array in a shared memory block (what the request carries)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def attach(self) -> tuple[np.ndarray, shared_memory.SharedMemory]:
        """A read-only view of the array and the block; ``detach(block)`` when done with the view."""
        block = _attach(self.name)
        array = np.ndarray(self.shape, dtype=np.dtype(self.dtype), buffer=block.buf)
        array.flags.writeable = False
        return array, block


def detach(block: shared_memory.SharedMemory) -> None:
    """Unmap the block in this process (the creator unlinks it); a view still alive keeps it mapped."""
    try:
        block.close()
    except BufferError:  # a view is still referenced (e.g. by a traceback): freed with it
        logger.debug("shared block %s still has views; left mapped", block.name)


class Shared:
    """napari's side of one shared array: what to send, and the block to unlink afterwards."""

    def __init__(self, array: np.ndarray) -> None:
        name = f"connectomics-{uuid.uuid4().hex[:16]}"
        self.block = shared_memory.SharedMemory(name=name, create=True, size=max(1, array.nbytes))
        view = np.ndarray(array.shape, dtype=array.dtype, buffer=self.block.buf)
        np.copyto(view, array)  # releases the GIL for plain dtypes
        del view
        self.ref = SharedArray(self.block.name, tuple(int(n) for n in array.shape), array.dtype.str)

    def release(self) -> None:
        """Unlink the block (the worker has detached, or is gone)."""
        detach(self.block)
        try:
            self.block.unlink()
        except FileNotFoundError:
            pass


def share(data: Any, min_bytes: int | None = None) -> Shared | None:
    """A :class:`Shared` copy of ``data`` when it is a large enough plain numpy array, else None."""
    limit = SHARED_MIN_BYTES if min_bytes is None else min_bytes
    if type(data) is not np.ndarray or data.dtype.hasobject or data.nbytes < limit:
        return None
    return Shared(data)


def _attach(name: str) -> shared_memory.SharedMemory:
    """Attach without handing the block to this process's resource tracker: before Python 3.13
    attaching registers it, and the tracker would unlink napari's block when the worker ends."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    block = shared_memory.SharedMemory(name=name)
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # the block is unlinked by napari anyway
        logger.debug("could not unregister the shared block %s", name, exc_info=True)
    return block

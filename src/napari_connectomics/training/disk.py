"""Disk full (ENOSPC, EDQUOT): one error naming the path, the space needed and where else to write.

Torch- and Lightning-free, so the CLI can recognise a full disk in any command without importing
the training engine.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["NO_SPACE", "DiskFullError", "free_bytes", "human_size", "no_space"]

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
TRAINING_OUTPUT = "training.output_dir (or checkpoint.dirpath)"


class DiskFullError(OSError):
    """No space left for ``path``. ``str()`` is one line: the path, the space ``needed`` when it is
    known (e.g. a checkpoint's size), the space free, and ``hint``, where else to write."""

    def __init__(self, path: str | os.PathLike, needed: int | None = None, what: str = "it",
                 hint: str = TRAINING_OUTPUT, free: int | None = None) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.path = Path(path)
        self.needed = needed
        self.what = what
        self.hint = hint
        self.free = free if free is not None else free_bytes(self.path)

    def __str__(self) -> str:
        head = f"no space left on {self.path} (disk full)"
        if self.needed is None or self.free is None:
            return f"{head}: free some space or choose another {self.hint}"
        short = self.needed - self.free
        ask = f"free {human_size(short)}" if short > 0 else "free some space"
        return (f"{head}: {self.what} needs about {human_size(self.needed)} and {human_size(self.free)} "
                f"are free; {ask} or choose another {self.hint}")

    def __reduce__(self) -> tuple[Any, ...]:  # OSError's would call __init__ with (errno, strerror, path)
        return (type(self), (self.path, self.needed, self.what, self.hint, self.free))


def no_space(err: BaseException | None) -> OSError | None:
    """The disk-full error in ``err``'s chain (causes and contexts: torch wraps ENOSPC in a
    RuntimeError), a :class:`DiskFullError` first; None when the disk is not the problem."""
    found: OSError | None = None
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFullError):
            return err
        if found is None and isinstance(err, OSError) and err.errno in NO_SPACE:
            found = err
        err = err.__cause__ or err.__context__
    return found


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the file system holding ``path`` (its nearest existing folder), or None."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def human_size(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MB"
    return f"{max(n, 1024) / 2**10:.0f} KB"

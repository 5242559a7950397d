"""Resuming an interrupted prediction into a Zarr output (``predict(..., resume=True)``,
``napari-connectomics predict --resume``).

A prediction written to Zarr (``pred.zarr``, ``pred.ome.zarr``) keeps a small manifest,
``.napari-connectomics-resume.json``, inside its hidden partial store
(``.pred.zarr.partial-<pid>``). It holds

* ``fingerprint``: what the output was made from: the input (spec, shape, dtype, region, size and
  modification time of its file, intensity statistics), the checkpoint (path, size, modification
  time; the hash of the weights for a model object) and every option that shapes the stored
  values (window, overlap, blending, padding, TTA, batch size, activation, output dtype, key, shape
  and chunks, the block plan);
* ``blocks``: how many blocks (or z-slabs) the plan has, and ``done``: the indices of those whose
  data is written.

A block's index is added only after its data has reached the store (after the write of its last
chunk returned, in the writer thread), and the manifest is replaced as a whole (written to a
temporary file, then renamed over the old one), so a process killed at any instant (``kill -9``,
the OOM killer, a batch system's time limit) leaves a manifest that lists only blocks whose data
is complete. Zarr writes each chunk to a temporary file renamed into place, so a chunk is never
torn either. A crash of the machine itself (power loss) is not covered: neither chunks nor the
manifest are fsync'ed.

``resume=True`` looks for a partial store of the same output (``.pred.zarr.partial-*`` with a
manifest), checks that its fingerprint equals the new run's (else a one-line error naming what
differs), takes it over (renamed to this process's partial name) and predicts only the blocks that
are not done; the result is then committed as usual. Independent blocks depend only on their own
input and halo, and z-slabs are resumed by replaying the windows that reach past the last finished
plane (see :func:`.windows.stitch_regions`), so a resumed output equals an uninterrupted one
bit for bit. HDF5 outputs cannot be resumed (a killed writer can leave the whole file unreadable).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "Partial", "ResumeLog", "changed", "digest", "file_stamp", "find_partials",
           "model_digest"]

logger = logging.getLogger(__name__)

MANIFEST = ".napari-connectomics-resume.json"
_FORMAT = 1


@dataclass(frozen=True)
class Partial:
    """A hidden partial store of an output, with the manifest found in it."""

    path: Path
    pid: int
    manifest: dict[str, Any]

    @property
    def done(self) -> set[int]:
        return {int(i) for i in self.manifest.get("done", [])}

    @property
    def blocks(self) -> int:
        return int(self.manifest.get("blocks", 0))

    @property
    def host(self) -> str | None:
        return self.manifest.get("host")

    def running(self) -> bool:
        """Whether the process that wrote it is still running (known on this host only). Call it
        before this process makes its own partial store: one named with this process's id then
        comes from an earlier process that had the same id (e.g. in a container)."""
        return self.host == socket.gethostname() and self.pid != os.getpid() and _alive(self.pid)

    def stale(self) -> bool:
        """Made on this host by a process that is gone (safe to remove or take over)."""
        return self.host == socket.gethostname() and not self.running()


def find_partials(path: Path) -> list[Partial]:
    """Partial stores of the output ``path`` (``.<name>.partial-<pid>``) that hold a readable
    manifest, the most recently updated first."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.partial-(\d+)$")
    found = []
    try:
        entries = list(path.parent.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        manifest = _read(entry / MANIFEST)
        if manifest is not None:
            found.append((_mtime(entry / MANIFEST), Partial(entry, int(match.group(1)), manifest)))
    return [partial for _, partial in sorted(found, key=lambda item: -item[0])]


def changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The fingerprint entries that differ (in ``new``'s order, then those only ``old`` has)."""
    keys = [*new, *(k for k in old if k not in new)]
    return [k for k in keys if _jsonable(old.get(k)) != _jsonable(new.get(k))]


class ResumeLog:
    """The manifest of one partial store: which blocks are written. :meth:`record` is safe to
    call from the writer thread; every call replaces the file atomically."""

    def __init__(self, store: Path, fingerprint: Mapping[str, Any], blocks: int,
                 done: Iterable[int] = ()) -> None:
        self.store = Path(store)
        self.fingerprint = _jsonable(dict(fingerprint))
        self.blocks = int(blocks)
        self.done: set[int] = {int(i) for i in done}
        self._lock = threading.Lock()
        self._save()

    @property
    def path(self) -> Path:
        return self.store / MANIFEST

    def moved(self, store: Path) -> None:
        """The partial store was renamed (taken over by this process): write the new owner."""
        with self._lock:
            self.store = Path(store)
            self._save()

    def record(self, index: int) -> None:
        """Block ``index`` is written (call only once its data is in the store)."""
        with self._lock:
            if int(index) in self.done:
                return
            self.done.add(int(index))
            self._save()

    def remove(self) -> None:
        """The output is complete: no manifest in the finished store."""
        with self._lock:
            self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        data = {"format": _FORMAT, "host": socket.gethostname(), "pid": os.getpid(),
                "blocks": self.blocks, "done": sorted(self.done), "fingerprint": self.fingerprint}
        temporary = self.store / f"{MANIFEST}.tmp-{os.getpid()}"
        try:
            temporary.write_text(json.dumps(data, indent=1))
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def file_stamp(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """{path, size, mtime_ns} of an existing file or folder (a Zarr store: its folder), or None."""
    if path is None:
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return {"path": str(Path(path).resolve()), "size": int(stat.st_size),
            "mtime_ns": int(stat.st_mtime_ns)}


def model_digest(model: Any) -> str:
    """sha256 of a model's weights (a model object has no file to stamp)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def digest(value: Any) -> str:
    """sha256 of a JSON-able value (long lists, e.g. the block plan, stored as a hash)."""
    return hashlib.sha256(json.dumps(_jsonable(value)).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    """``value`` as it comes back from JSON (tuples as lists), so that it compares equal."""
    return json.loads(json.dumps(value))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return None
    return data


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError as err:
        return err.errno != errno.ESRCH
    return True

"""napari's side of the training worker process (Qt-free): start it, run one training, end it.

The Train panel owns one :class:`TrainingWorker`, started when the panel opens so the worker has
imported torch by the time Train is pressed (see :mod:`napari_connectomics.widgets.train_worker`).
:meth:`TrainingWorker.run` is the ``work`` of a :class:`~.background.BackgroundJob`: it runs in a
relay thread of napari's process that only moves messages (the pipe releases the GIL while it
waits), sends stop / view / snapshot / labels as the GUI asks, hands the worker's events to
``report`` and returns the outcome. A worker that dies (crash, SIGKILL, out of memory) becomes one
:class:`WorkerDied` error; the next run starts a new worker. Closing ends the process; an atexit
hook ends any left.
"""

from __future__ import annotations

import atexit
import logging
import queue
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .train_worker import ERROR_MEMORY, ERROR_USER, RunSummary, WorkerAnnotations
from .errors import UserError

__all__ = ["RunSummary", "TrainingWorker", "WorkerAnnotations", "WorkerDied", "worker_error"]

logger = logging.getLogger(__name__)

WORKER_MODULE = "napari_connectomics.widgets.train_worker"
POLL_SECONDS = 0.05  # how often the relay thread looks at stop/view/snapshot/labels requests
CLOSE_GRACE_SECONDS = 5.0  # a terminated worker gets this long before it is killed
_LIVE: "weakref.WeakSet[TrainingWorker]" = weakref.WeakSet()


class WorkerDied(RuntimeError):
    """The worker process ended during a run (crashed, killed, out of memory)."""


def worker_error(kind: str, text: str) -> BaseException:
    """The exception the panel notifies for an ``error`` message of the worker."""
    if kind == ERROR_USER:
        return UserError(text)
    if kind == ERROR_MEMORY:
        return MemoryError(text)
    return RuntimeError(text)


def _death_text(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        how = f"was killed ({name})" + (" — perhaps it ran out of memory" if -returncode == signal.SIGKILL else "")
    else:
        how = f"ended unexpectedly (exit code {returncode})"
    return f"the training process {how}; press Train to start a new one"


class TrainingWorker:
    """One worker process and the pipe to it; one run at a time."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.pid: int | None = None
        self._closing = False
        _LIVE.add(self)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process if none is alive (it imports the engine in the background at once)."""
        if self.alive:
            return
        self._discard()
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(theirs.fileno())],
                                            pass_fds=(theirs.fileno(),), close_fds=True)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.pid = self.process.pid
        self._closing = False
        logger.info("training worker started (pid %s)", self.pid)

    def close(self) -> None:
        """End the process (a run in flight is abandoned); reaped in the background, never blocking."""
        process, self._closing = self.process, True
        self._discard()
        if process is not None and process.poll() is None:
            process.terminate()
            threading.Thread(target=_reap, args=(process,), name="connectomics-reap", daemon=True).start()

    def _discard(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn, self.process = None, None

    def run(self, request: dict[str, Any], report: Callable[[Any], None], stop_event: threading.Event,
            target: Any = None, snapshot: threading.Event | None = None,
            outbox: "queue.Queue[tuple[str, Any]] | None" = None) -> Any:
        """Run ``request`` (a ``start`` payload) in the worker; returns (PreparedRun, RunSummary).

        Runs in a relay thread: ``stop_event``, ``snapshot`` and ``target`` (a PreviewTarget the
        GUI keeps current) are forwarded as messages, as is whatever the GUI puts in ``outbox``.
        """
        self.start()
        process, conn = self.process, self.conn
        assert process is not None and conn is not None
        view = _view(target)
        try:
            conn.send(("start", {**request, "view": view}))
            stop_sent = False
            while True:
                if stop_event.is_set() and not stop_sent:
                    conn.send(("stop", None))
                    stop_sent = True
                if snapshot is not None and snapshot.is_set():
                    snapshot.clear()
                    conn.send(("snapshot", None))
                if target is not None and _view(target) != view:
                    view = _view(target)
                    conn.send(("view", view))
                while outbox is not None and not outbox.empty():
                    conn.send(outbox.get_nowait())
                if not conn.poll(POLL_SECONDS):
                    if process.poll() is not None:
                        raise EOFError
                    continue
                tag, payload = conn.recv()
                if tag == "event":
                    report(payload)
                elif tag == "done":
                    return payload
                elif tag == "error":
                    raise worker_error(*payload)
                elif tag == "ready":
                    self.pid = int(payload)
        except (EOFError, OSError, queue.Empty) as err:
            if self._closing:
                raise WorkerDied("training ended: the panel was closed") from None
            try:
                code = process.wait(CLOSE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                code = None
            if self.process is process:
                self._discard()
            raise WorkerDied(_death_text(code)) from err


def _view(target: Any) -> tuple[int, int | None, int | None]:
    if target is None:
        return (0, None, None)
    return (int(target.z), target.y, target.x)


def _reap(process: subprocess.Popen, grace: float = CLOSE_GRACE_SECONDS) -> None:
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@atexit.register
def _end_all() -> None:
    """napari is quitting: no worker outlives it."""
    for worker in list(_LIVE):
        process = worker.process
        worker.close()
        if process is not None:
            _reap(process, 2.0)

"""napari's side of the engine worker process (Qt-free): one worker per viewer, many requests.

The Model, Train and Segment panels of a viewer share one :class:`EngineWorker`
(:func:`engine_for`), started when the first of them opens so the worker has imported torch by the
time it is needed (see :mod:`napari_connectomics.widgets.train_worker` for the messages). Requests
carry an id; one reader thread per worker process reads every reply and hands it to the queue of
the request it answers, so a Segment and a training (or a parameter count) run at once.

:meth:`EngineWorker.call` is the ``work`` of a :class:`~.background.BackgroundJob`: it sends the
request, then waits in the job's thread for its replies (``report`` gets the events), sends stop /
view / snapshot / labels as the GUI asks, and returns the result or raises the worker's error as
the exception the panels notify (:func:`worker_error`). A worker that dies (crash, SIGKILL, out
of memory) fails its requests with :class:`WorkerDied`, announced once (the first request that
notifies), and the next request starts a new worker. The panels hold the worker while they live
(:meth:`EngineWorker.hold`); the last one closed (the viewer closed) ends the process, and an
atexit hook ends any left.

``NAPARI_CONNECTOMICS_TRAINING=thread`` (:func:`use_worker`) keeps the old path: the panels run the
engine in threads of napari's process and never start a worker.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from .errors import UserError
from .train_worker import ERROR_MEMORY, ERROR_USER, RunSummary, WorkerAnnotations

__all__ = ["EngineWorker", "RunSummary", "WorkerAnnotations", "WorkerDied", "engine_for", "segment_in_worker",
           "use_worker", "worker_error"]

logger = logging.getLogger(__name__)

WORKER_MODULE = "napari_connectomics.widgets.train_worker"
POLL_SECONDS = 0.05  # how often a waiting request looks at stop/view/snapshot/labels requests
CLOSE_GRACE_SECONDS = 5.0  # a terminated worker gets this long before it is killed
# Where the panels run the engine: "process" (the worker; the default) or "thread" (threads of
# napari's process, as before the worker existed).
TRAINING_MODE_ENV = "NAPARI_CONNECTOMICS_TRAINING"
# What to press after the worker died, by the request it was serving.
AGAIN = {"train": "press Train to start a new one", "segment": "press Segment to start a new one"}
_LIVE: "weakref.WeakSet[EngineWorker]" = weakref.WeakSet()


def use_worker() -> bool:
    """True unless ``NAPARI_CONNECTOMICS_TRAINING=thread`` asks for the in-process engine."""
    return os.environ.get(TRAINING_MODE_ENV, "process").strip().lower() != "thread"


class WorkerDied(RuntimeError):
    """The worker process ended while serving a request (crashed, killed, out of memory).

    ``announce`` is True for one request of a dead worker (the first that notifies the user);
    the others say it in their panel only, so one death is one notification. ``expected``: napari
    closed the worker (its panels closed), nothing went wrong.
    """

    def __init__(self, text: str, announce: bool = True, expected: bool = False) -> None:
        super().__init__(text)
        self.announce = announce
        self.expected = expected


def worker_error(kind: str, text: str) -> BaseException:
    """The exception the panel notifies for an ``error`` message of the worker."""
    if kind == ERROR_USER:
        return UserError(text)
    if kind == ERROR_MEMORY:
        return MemoryError(text)
    return RuntimeError(text)


def _death_text(returncode: int | None, kind: str = "train") -> str:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        how = f"was killed ({name})" + (" — perhaps it ran out of memory" if -returncode == signal.SIGKILL else "")
    else:
        how = f"ended unexpectedly (exit code {returncode})"
    what = "training" if kind == "train" else "engine"
    return f"the {what} process {how}; {AGAIN.get(kind, 'the next request starts a new one')}"


@dataclass
class _Pending:
    """A request sent and not yet answered: its replies arrive in ``replies``."""

    rid: int
    kind: str
    quiet: bool  # its panel never notifies (a count, a probe): it is not the one to announce a death
    replies: "queue.Queue[tuple[str, Any]]" = field(default_factory=queue.Queue)


class _Link:
    """One worker process, the pipe to it and its reader thread."""

    def __init__(self, owner: "EngineWorker") -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(theirs.fileno())],
                                            pass_fds=(theirs.fileno(),), close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.socket = ours  # kept to wake the reader (shutdown) when napari closes the worker
        self.conn = Connection(os.dup(ours.fileno()))
        self.pending: dict[int, _Pending] = {}
        self.broken = False
        self.closing = False
        self.send_lock = threading.Lock()
        self._owner = weakref.ref(owner)
        self.reader = threading.Thread(target=self._read, name="connectomics-worker-reader", daemon=True)
        self.reader.start()

    @property
    def alive(self) -> bool:
        return not self.broken and self.process.poll() is None

    def send(self, message: tuple[str, Any, Any]) -> None:
        """Pickle ``message`` (its errors raise here, with nothing sent), then write it; a pipe that
        fails to take it is broken: the reader then fails the requests in flight."""
        data = ForkingPickler.dumps(message)
        try:
            with self.send_lock:
                self.conn.send_bytes(data)
        except Exception:
            logger.debug("writing to the engine worker failed", exc_info=True)
            self.wake()

    def wake(self) -> None:
        """End the reader's wait (and the worker's): the pipe is shut in both directions."""
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read(self) -> None:
        """Hand every reply to the request it answers, until the pipe ends; then fail the rest."""
        try:
            while True:
                tag, rid, payload = self.conn.recv()
                if tag == "ready":
                    logger.debug("engine worker %s ready", payload)
                    continue
                pending = self.pending.get(rid)
                if pending is not None:
                    pending.replies.put((tag, payload))
        except (EOFError, OSError):
            pass
        except Exception:  # a reply that does not unpickle here: the worker is unusable
            logger.exception("reading the engine worker's replies failed")
        self._fail_pending()

    def _fail_pending(self) -> None:
        owner = self._owner()
        lock = owner._lock if owner is not None else threading.Lock()
        with lock:
            self.broken = True
            pending = list(self.pending.values())
        code: int | None = None
        if not self.closing:
            try:
                code = self.process.wait(CLOSE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:  # alive but its pipe broke: end it
                self.process.kill()
                code = self.process.wait()
        announced = False
        for request in pending:
            if self.closing:
                error = WorkerDied(f"{request.kind} ended: the panel was closed", announce=False, expected=True)
            else:
                announce = not announced and not request.quiet
                announced = announced or announce
                error = WorkerDied(_death_text(code, request.kind), announce=announce)
            request.replies.put(("died", error))
        self._close_pipe()

    def _close_pipe(self) -> None:
        for handle in (self.conn, self.socket):
            try:
                handle.close()
            except OSError:
                pass

    def close(self) -> None:
        """End the process: wake the reader, terminate, reap in the background (never blocking)."""
        self.closing = True
        self.wake()  # the reader's recv ends; so does the worker's
        if self.process.poll() is None:
            self.process.terminate()
            threading.Thread(target=_reap, args=(self.process,), name="connectomics-reap", daemon=True).start()


class EngineWorker:
    """napari's handle on one engine worker process (a new process after one died or was closed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._link: _Link | None = None
        self._ids = itertools.count(1)
        self._holders: set[int] = set()
        self.pid: int | None = None  # of the current (or last) process
        _LIVE.add(self)

    @property
    def alive(self) -> bool:
        link = self._link
        return link is not None and link.alive

    @property
    def process(self) -> subprocess.Popen | None:
        link = self._link
        return link.process if link is not None else None

    @property
    def in_flight(self) -> list[str]:
        """The kinds of the requests sent to the current process and not answered yet."""
        link = self._link
        return [pending.kind for pending in list(link.pending.values())] if link is not None else []

    def start(self) -> None:
        """Start the process if none is alive (it imports the engine in the background at once)."""
        with self._lock:
            self._ensure_link()

    def _ensure_link(self) -> _Link:
        link = self._link
        if link is None or not link.alive:
            if link is not None:  # its process has ended: its reader fails (and announces) what it had
                link.wake()
            link = self._link = _Link(self)
            self.pid = link.process.pid
            logger.info("engine worker started (pid %s)", self.pid)
        return link

    def close(self) -> None:
        """End the process; its requests in flight fail with a quiet :class:`WorkerDied`."""
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()

    def hold(self, holder: object) -> None:
        """``holder`` (a panel) uses the worker: start it now."""
        self._holders.add(id(holder))
        self.start()

    def release(self, holder_id: int) -> None:
        """A panel is gone; the last one gone (the viewer closed) ends the process."""
        self._holders.discard(holder_id)
        if not self._holders:
            self.close()

    # --- requests --------------------------------------------------------------------------------

    def _submit(self, kind: str, payload: Any, quiet: bool) -> tuple[_Link, _Pending]:
        with self._lock:
            link = self._ensure_link()
            pending = _Pending(next(self._ids), kind, quiet)
            link.pending[pending.rid] = pending
        try:
            link.send((kind, pending.rid, payload))
        except Exception as err:  # it does not pickle (a layer's data of an odd kind): nothing was sent
            link.pending.pop(pending.rid, None)
            raise UserError(f"cannot send the {kind} request to the engine process: "
                            f"{type(err).__name__}: {err}".splitlines()[0]) from None
        return link, pending

    def call(self, kind: str, payload: Any, report: Callable[[Any], None] | None = None,
             stop_event: threading.Event | None = None, *, quiet: bool = False, target: Any = None,
             snapshot: threading.Event | None = None,
             outbox: "queue.Queue[tuple[str, Any]] | None" = None) -> Any:
        """Run one request in the worker and wait for its result (call it from a job's thread).

        ``stop_event``, ``snapshot`` and ``target`` (a PreviewTarget the GUI keeps current) are
        forwarded as messages, as is whatever the GUI puts in ``outbox`` ((tag, payload) pairs).
        ``quiet``: the caller never notifies (counts, probes), so a death is announced elsewhere.
        """
        link, pending = self._submit(kind, payload, quiet)
        rid, view, stop_sent = pending.rid, _view(target), False

        def tell(tag: str, value: Any = None) -> None:
            try:
                link.send((tag, rid, value))
            except Exception:  # a message that does not pickle: logged, the request goes on
                logger.exception("could not send %r to the engine worker", tag)

        try:
            while True:
                if stop_event is not None and stop_event.is_set() and not stop_sent:
                    tell("stop")
                    stop_sent = True
                if snapshot is not None and snapshot.is_set():
                    snapshot.clear()
                    tell("snapshot")
                if target is not None and _view(target) != view:
                    view = _view(target)
                    tell("view", view)
                while outbox is not None and not outbox.empty():
                    tell(*outbox.get_nowait())
                try:
                    tag, value = pending.replies.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if tag == "event":
                    if report is not None:
                        report(value)
                elif tag == "done":
                    return value
                elif tag == "error":
                    raise worker_error(*value)
                elif tag == "died":
                    raise value
        finally:
            link.pending.pop(rid, None)

    def run(self, request: dict[str, Any], report: Callable[[Any], None], stop_event: threading.Event,
            target: Any = None, snapshot: threading.Event | None = None,
            outbox: "queue.Queue[tuple[str, Any]] | None" = None) -> Any:
        """Train ``request`` (a ``train`` payload) in the worker; returns (PreparedRun, RunSummary)."""
        return self.call("train", {**request, "view": _view(target)}, report, stop_event, target=target,
                         snapshot=snapshot, outbox=outbox)


def segment_in_worker(engine: EngineWorker, request: Any, report: Callable[[Any], None],
                      stop_event: threading.Event) -> Any:
    """Segment ``request`` (a SegmentRequest) in the worker: a large numpy image goes through shared
    memory (unlinked when this returns), temporary stores go to napari's temporary folder (napari
    deletes them), and the SegmentOutcome comes back through the pipe."""
    from .segment_request import temporary_folder
    from .shared_array import share

    shared = share(request.data)
    sent = dataclasses.replace(request, data=shared.ref if shared is not None else request.data,
                               temporary_store_folder=request.temporary_store_folder or temporary_folder())
    try:
        return engine.call("segment", sent, report, stop_event)
    finally:
        if shared is not None:
            shared.release()


# --------------------------------------------------------------------------------------------
# One worker per viewer
# --------------------------------------------------------------------------------------------

_ENGINES: "weakref.WeakKeyDictionary[Any, EngineWorker]" = weakref.WeakKeyDictionary()
_UNBOUND: dict[int, EngineWorker] = {}


def quick_request(engine: EngineWorker, in_worker: bool, kind: str, payload: Any) -> Any:
    """A short request (``count``, ``probe``, ``info``; see :func:`~.train_worker.run_quick`) in the
    viewer's worker, or in the calling thread when the panels run in-process. Call it from a job's
    thread: it waits for the answer."""
    if in_worker:
        return engine.call(kind, payload, quiet=True)
    from .train_worker import import_engine, run_quick

    import_engine()
    return run_quick(kind, payload)


def engine_for(viewer: Any | None) -> EngineWorker:
    """The engine worker of ``viewer`` (created on first use, not started); one per viewer."""
    if viewer is None:
        return _UNBOUND.setdefault(0, EngineWorker())
    try:
        engine = _ENGINES.get(viewer)
        if engine is None:
            engine = _ENGINES[viewer] = EngineWorker()
        return engine
    except TypeError:  # an object that can't be weakly referenced: key by identity
        return _UNBOUND.setdefault(id(viewer), EngineWorker())


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

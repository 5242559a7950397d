"""Long work (training, segmentation, requests to the engine worker) off the GUI thread, with
events relayed back to it.

The work runs in a plain Python thread (Lightning's loop must own its thread); it reports through a
callback that only puts events on a queue. A ``QTimer`` on the GUI thread drains the queue every
:data:`POLL_SECONDS` and delivers the events in batches, where the panels update progress bars and
plots. Stopping sets a ``threading.Event`` the work checks between steps. So the GUI thread never
runs the work, never blocks on it, and never touches torch.

The relay takes no thread of Qt's global thread pool (as a napari ``thread_worker`` would, for the
job's whole life): Qt uses that pool itself (e.g. converting the frames of the activity dock's
spinner while the GUI thread waits, holding the GIL), so a few long jobs filling it on a 2-core
machine froze the viewer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QTimer

__all__ = ["BackgroundJob", "JobFailed"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.05
_ACTIVE: "set[BackgroundJob]" = set()  # running jobs stay alive (with their timer) until delivered


@dataclass(frozen=True)
class _Finished:
    result: Any


@dataclass(frozen=True)
class JobFailed:
    """The work raised; ``error`` is the exception (its traceback is logged where it happened)."""

    error: BaseException


class BackgroundJob:
    """Run ``work(report, stop_event)`` in a thread; deliver reports and the outcome on the GUI thread.

    Args:
        work: the function to run; ``report(event)`` queues an event for ``on_events``.
        on_events: called on the GUI thread with a list of the events queued since the last call.
        on_done: called on the GUI thread with the work's return value.
        on_error: called on the GUI thread with the exception the work raised.
        name: the thread's name (shown in debuggers and logs).
    """

    def __init__(
        self,
        work: Callable[[Callable[[Any], None], threading.Event], Any],
        on_events: Callable[[list[Any]], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        name: str = "connectomics-job",
    ) -> None:
        self._work = work
        self._on_events = on_events
        self._on_done = on_done
        self._on_error = on_error
        self.name = name
        self.stop_event = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._relay: Any = None
        self._running = False

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the outcome has been delivered on the GUI thread."""
        return self._running

    def start(self) -> None:
        """Start the work thread and the GUI thread's timer that relays its events (call it on the
        GUI thread)."""
        if self._running:
            raise RuntimeError(f"{self.name} is already running")
        self._running = True
        self._thread = threading.Thread(target=self._run_work, name=self.name, daemon=True)
        self._relay = QTimer()
        self._relay.setInterval(int(POLL_SECONDS * 1000))
        self._relay.timeout.connect(self._drain)
        _ACTIVE.add(self)
        self._thread.start()
        self._relay.start()

    def stop(self) -> None:
        """Ask the work to stop after the step in flight (it decides what a step is)."""
        self.stop_event.set()

    def detach(self) -> None:
        """Deliver nothing more: the widget that listened is gone (its Qt objects are deleted)."""
        self._on_events = self._on_done = self._on_error = None

    def redirect(self, on_done: Callable[[Any], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        """Deliver no more events, and the outcome to these instead: the widget that listened is
        going, but the outcome still matters (e.g. the checkpoint of a training stopped with it)."""
        self._on_events = None
        self._on_done, self._on_error = on_done, on_error

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work thread has ended (for tests and shutdown); True if it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run_work(self) -> None:
        try:
            result = self._work(self._queue.put, self.stop_event)
        except BaseException as error:  # delivered to the GUI as a notification, never lost
            if getattr(error, "expected", False):  # e.g. the worker closed with its panels: no traceback
                logger.debug("%s ended: %s", self.name, error)
            else:
                logger.exception("%s failed", self.name)
            self._queue.put(JobFailed(error))
        else:
            self._queue.put(_Finished(result))

    def _drain(self) -> None:
        """On the GUI thread: deliver the events queued since the last tick, then the outcome."""
        batch: list[Any] = []
        try:
            while True:
                batch.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        for index, item in enumerate(batch):
            if isinstance(item, (_Finished, JobFailed)):
                if self._relay is not None:
                    self._relay.stop()
                _ACTIVE.discard(self)
                self._deliver_events(batch[:index])
                self._deliver_outcome(item)
                return
        self._deliver_events(batch)

    def _deliver_events(self, events: list[Any]) -> None:
        if self._on_events is not None and events:
            self._on_events(events)

    def _deliver_outcome(self, outcome: Any) -> None:
        self._running = False
        if isinstance(outcome, JobFailed):
            if self._on_error is not None:
                self._on_error(outcome.error)
        elif self._on_done is not None:
            self._on_done(outcome.result)

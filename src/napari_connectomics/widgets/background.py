"""Long work (training, segmentation) off the GUI thread, with events relayed back to it.

The work runs in a plain Python thread (Lightning's loop must own its thread); it reports through a
callback that only puts events on a queue. A napari ``thread_worker`` drains the queue and yields
the events in batches, which napari delivers on the GUI thread, where the panels update progress
bars and plots. Stopping sets a ``threading.Event`` the work checks between steps. So the GUI
thread never runs the work, never blocks on it, and never touches torch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import thread_worker

__all__ = ["BackgroundJob", "JobFailed"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.05


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
        if self._running:
            raise RuntimeError(f"{self.name} is already running")
        self._running = True
        self._thread = threading.Thread(target=self._run_work, name=self.name, daemon=True)
        self._relay = _relay(self._thread, self._queue)
        self._relay.yielded.connect(self._deliver_events)
        self._relay.returned.connect(self._deliver_outcome)
        self._relay.errored.connect(self._deliver_relay_error)
        self._relay.start()

    def stop(self) -> None:
        """Ask the work to stop after the step in flight (it decides what a step is)."""
        self.stop_event.set()

    def detach(self) -> None:
        """Deliver nothing more: the widget that listened is gone (its Qt objects are deleted)."""
        self._on_events = self._on_done = self._on_error = None

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
            logger.exception("%s failed", self.name)
            self._queue.put(JobFailed(error))
        else:
            self._queue.put(_Finished(result))

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

    def _deliver_relay_error(self, error: BaseException) -> None:
        self._running = False
        if self._on_error is not None:
            self._on_error(error)


@thread_worker(start_thread=False)
def _relay(thread: threading.Thread, events: queue.Queue):
    """Start the work thread, then yield its queued events in batches until its outcome arrives."""
    thread.start()
    while True:
        batch: list[Any] = []
        try:
            batch.append(events.get(timeout=POLL_SECONDS))
            while True:
                batch.append(events.get_nowait())
        except queue.Empty:
            pass
        for index, item in enumerate(batch):
            if isinstance(item, (_Finished, JobFailed)):
                if batch[:index]:
                    yield batch[:index]
                return item
        if batch:
            yield batch

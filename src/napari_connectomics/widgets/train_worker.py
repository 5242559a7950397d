"""The engine worker process: torch, Lightning and MONAI load here, never into napari.

The Model, Train and Segment panels of a viewer share one worker, started when the first of them
opens (``python -m napari_connectomics.widgets.train_worker <fd>``, see
:mod:`napari_connectomics.widgets.worker_client`); ``fd`` is its end of a socket pair the process
inherits (no network port). The worker imports the engine in the background at once, so the first
request does not wait for torch, then serves requests, each in its own thread: a Segment runs
while a training trains, a parameter count answers while either runs.

Messages are ``(tag, request id, payload)`` tuples of plain data.

GUI -> worker, a request (the id is the GUI's, unique per worker):
    ``train`` {choices | prepared, cfg, resume, first_step, preview_every, view, preview_image}
    -> (PreparedRun, :class:`RunSummary`); one at a time.
    ``count`` config -> int, the network's parameters.
    ``probe`` config -> :class:`~.step_probe.StepTime`, seconds per training step here (one probe at
    a time, so two never time each other).
    ``info`` checkpoint path -> :class:`~.segment_request.CheckpointInfo`.
    ``segment`` :class:`~.segment_request.SegmentRequest` (its image a
    :class:`~.shared_array.SharedArray` when large) -> :class:`~.segment_request.SegmentOutcome`.
GUI -> worker, about a running request:
    ``stop`` (training: after the step in flight, with a checkpoint; segment: cancel after the
    window batch in flight), ``view`` (z, y, x) the previewed place, ``snapshot`` (save the current
    weights), ``labels`` (pair index, labels repainted during the run); ``quit`` (id None).
worker -> GUI:
    ``ready`` (id None) pid; ``event`` of a request: a Progress / RunStarted / Notice / PreviewUpdate /
    WeightsSaved / :class:`WorkerAnnotations`; ``done`` its result; ``error`` (kind, one line).

It runs only the engine's own entry points (:func:`~.training_request.prepare_run`,
:func:`~.training_request.run_training`, :func:`~.segment_request.run_segmentation`,
:func:`~.segment_request.read_checkpoint_info`, :func:`~..models.build.count_parameters`,
:func:`~.step_probe.measure_step`); no code is sent to it. When its pipe closes (napari ended, or
closed the panels) it exits. Nothing here imports torch at import time: the napari side imports
this module for the message types.
"""

from __future__ import annotations

import copy
import dataclasses
import faulthandler
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.reduction import ForkingPickler
from typing import Any

from ..training.result import TrainResult

__all__ = ["RunSummary", "WorkerAnnotations", "error_message", "import_engine", "serve"]

logger = logging.getLogger(__name__)

WORKER_NICENESS = 10  # the worker yields the CPU to napari's GUI (Linux/macOS: the process's nice value)
ERROR_USER, ERROR_MEMORY, ERROR_OTHER = "user", "memory", "other"


@dataclass(frozen=True)
class WorkerAnnotations:
    """How many voxels are annotated in the labels the worker trains on now (all pairs), and its pid."""

    pid: int
    annotated: int
    updates: int = 0  # labels updates received during this run
    applied: int = 0  # of those, swapped into the training data (from the next step on)


@dataclass
class RunSummary(TrainResult):
    """A run's :class:`~napari_connectomics.training.result.TrainResult` as plain numbers, plus the
    worker's pid (the result module is torch-free, so napari unpickles it without the engine)."""

    pid: int = 0

    @classmethod
    def of(cls, result: TrainResult) -> "RunSummary":
        values = {f.name: getattr(result, f.name) for f in dataclasses.fields(TrainResult)}
        values["metrics"] = {k: float(v) for k, v in dict(result.metrics).items()}
        if values["best_score"] is not None:
            values["best_score"] = float(values["best_score"])
        return cls(**values, pid=os.getpid())


def error_message(error: BaseException) -> tuple[str, str]:
    """(kind, one line) of an error, for the GUI's notification (see widgets.notify.describe_error)."""
    from ..config import ConfigError
    from .errors import UserError

    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        kind = ERROR_MEMORY
    elif isinstance(error, (UserError, ConfigError)):
        kind = ERROR_USER
    else:
        kind = ERROR_OTHER
    if isinstance(error, (ValueError, RuntimeError, KeyError, FileNotFoundError)):
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return kind, first


# --------------------------------------------------------------------------------------------
# The process side
# --------------------------------------------------------------------------------------------


_IMPORT_LOCK = threading.Lock()


def import_engine() -> None:
    """Import torch, MONAI, Lightning and the engine, one thread at a time (instant once done).

    Two threads importing them at once can see a partly initialised module (MONAI's ImportError
    "cannot import name ... from partially initialized module"), and two threads loading a
    registry's built-ins at once an empty registry, so whatever runs the engine first calls this:
    the worker's warm-up, and each job of the in-process (thread) mode.
    """
    with _IMPORT_LOCK:
        import lightning  # noqa: F401
        import monai  # noqa: F401
        import torch  # noqa: F401

        from ..inference import predict  # noqa: F401
        from ..models import losses  # noqa: F401
        from ..registry import ARCHITECTURES, LOSSES, POSTPROCESSORS, TARGETS
        from ..training import trainer  # noqa: F401

        # Lightning's INFO lines ("GPU available", "Restoring states") are noise in napari's
        # terminal, and its own handler plus the root's printed each line twice.
        lightning_log = logging.getLogger("lightning")
        lightning_log.setLevel(logging.WARNING)
        lightning_log.propagate = not lightning_log.handlers
        # The built-ins load here: a registry loading in two threads at once shows the second an
        # empty registry ("Architecture 'x' not found. Available:").
        for registry in (ARCHITECTURES, LOSSES, TARGETS, POSTPROCESSORS):
            registry.names()


def run_quick(kind: str, payload: Any) -> Any:
    """What a short request computes: ``count`` (a config's parameters), ``probe`` (seconds per
    training step, :class:`~.step_probe.StepTime`), ``info`` (a checkpoint's facts). The worker serves
    them with this, and the panels' in-process (thread) mode calls it directly."""
    if kind == "count":
        from ..models.build import count_parameters

        return count_parameters(payload)
    if kind == "probe":
        from .step_probe import measure_step

        return measure_step(payload)
    if kind == "info":
        from .segment_request import read_checkpoint_info

        return read_checkpoint_info(payload)
    raise ValueError(f"unknown short request {kind!r}; one of {', '.join(QUIET_REQUESTS)}")


def _warm_up(done: threading.Event) -> None:
    """Import the engine now, so the first request (a count, Train, Segment) starts at once.
    Requests wait for ``done`` (see :func:`import_engine`)."""
    try:
        import_engine()
    except Exception:  # the request itself reports the import error
        logger.exception("importing the engine failed")
    finally:
        done.set()


def _plain_prepared(prepared: Any) -> Any:
    """The PreparedRun for napari: TrainingData as a dict, no image (both would cost napari)."""
    plain = copy.copy(prepared)
    if prepared.data is not None:
        plain.data = {"train": list(prepared.data.train), "val": list(prepared.data.val)}
    plain.preview_image = None
    return plain


def _engine_prepared(plain: Any, preview_image: Any) -> Any:
    prepared = copy.copy(plain)
    if isinstance(plain.data, dict):
        from ..training.datamodule import TrainingData

        prepared.data = TrainingData(train=plain.data["train"], val=plain.data["val"])
    prepared.preview_image = preview_image
    return prepared


def _free_gpu_memory() -> None:
    """A finished run hands its GPU memory back (the process lives on for the next run)."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


REQUESTS = ("train", "count", "probe", "info", "segment")
QUIET_REQUESTS = ("count", "probe", "info")  # their failures are shown in a panel's info line
HEAVY_REQUESTS = ("train", "segment")  # a step probe waits until none of these runs


@dataclass
class _Running:
    """A request being served: what the GUI's messages about it act on."""

    kind: str
    stop: threading.Event = field(default_factory=threading.Event)
    snapshot: threading.Event = field(default_factory=threading.Event)
    target: Any = None  # the PreviewTarget of a training
    label_mode: str = "sparse"
    counts: dict[int, int] = field(default_factory=dict)  # annotated voxels per pair (training)
    updates: int = 0
    label_updates: Any = None  # the training's LabelUpdates callback: repainted labels go there


class _Server:
    """One worker: the main thread reads messages; each request runs in its own thread."""

    def __init__(self, conn: Any, warmed: threading.Event | None = None) -> None:
        self.conn = conn
        self.warmed = warmed if warmed is not None else threading.Event()
        if warmed is None:
            self.warmed.set()
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.probe_lock = threading.Lock()
        # A step probe waits while a run trains or a segmentation predicts: timed beside them, a
        # step would measure the contention, not the step.
        self.heavy = 0  # HEAVY_REQUESTS begun and not ended
        self.heavy_ended = threading.Condition()
        self.running: dict[Any, _Running] = {}
        # Sections with objects but no background already warned about, per pair: kept from a
        # Train to its Continues, so one warning per section and run.
        self.objects_only: dict[int, set[int]] = {}
        self.pair_names: dict[int, str] = {}

    def send(self, tag: str, rid: Any, payload: Any = None) -> None:
        """Pickle outside the lock (a large result does not hold up the others' events), then write."""
        data = ForkingPickler.dumps((tag, rid, payload))
        with self.send_lock:
            self.conn.send_bytes(data)

    def serve(self) -> None:
        self.send("ready", None, os.getpid())
        while True:
            try:
                tag, rid, payload = self.conn.recv()
            except (EOFError, OSError):  # napari is gone: so are its requests
                break
            if tag == "quit":
                break
            if tag in REQUESTS:
                self.begin(tag, rid, payload)
                continue
            with self.lock:
                running = self.running.get(rid)
            if running is None:  # the request just ended: nothing to act on
                logger.debug("%r for request %r, which is not running", tag, rid)
            elif tag == "stop":
                running.stop.set()
            elif tag == "view" and running.target is not None:
                running.target.z, running.target.y, running.target.x = payload
            elif tag == "snapshot":
                running.snapshot.set()
            elif tag == "labels":
                self.new_labels(rid, running, *payload)
            else:
                logger.warning("unknown message %r ignored", tag)

    def begin(self, kind: str, rid: Any, payload: Any) -> None:
        running = _Running(kind)
        with self.lock:
            if kind == "train" and any(r.kind == "train" for r in self.running.values()):
                self.send("error", rid, (ERROR_USER, "a run is still training in the worker; stop it first"))
                return
            self.running[rid] = running
        if kind in HEAVY_REQUESTS:  # counted here, in message order: a probe asked after it waits
            with self.heavy_ended:
                self.heavy += 1
        if kind == "train":
            from .training_request import PreviewTarget

            running.target = PreviewTarget()
            running.target.z, running.target.y, running.target.x = payload.get("view") or (0, None, None)
        threading.Thread(target=self.run, args=(kind, rid, payload, running), name=f"connectomics-{kind}",
                         daemon=True).start()

    def run(self, kind: str, rid: Any, payload: Any, running: _Running) -> None:
        """Serve one request in this thread; its outcome (result or one-line error) goes back."""
        def report(event: Any) -> None:
            self.send("event", rid, event)

        self.warmed.wait()
        try:
            outcome = ("done", getattr(self, f"do_{kind}")(payload, running, report))
        except BaseException as error:  # the GUI shows one line; the traceback is logged here
            outcome = ("error", error_message(error))
            if outcome[1][0] == ERROR_USER or kind in QUIET_REQUESTS:
                logger.warning("%s: %s", kind, outcome[1][1])  # expected (a bad file, a bad choice)
            else:
                logger.exception("%s failed", kind)
        finally:
            with self.lock:
                self.running.pop(rid, None)
            if kind in HEAVY_REQUESTS:
                with self.heavy_ended:
                    self.heavy -= 1
                    self.heavy_ended.notify_all()
                _free_gpu_memory()
        try:
            self.send(outcome[0], rid, outcome[1])
        except (OSError, EOFError):  # napari is gone
            pass
        except Exception as error:  # a result that does not pickle: the request must still end
            logger.exception("sending the %s result failed", kind)
            try:
                self.send("error", rid, error_message(error))
            except Exception:
                pass

    # --- the requests ----------------------------------------------------------------------------

    def do_count(self, cfg: Any, running: _Running, report: Any) -> int:
        return run_quick("count", cfg)

    def do_probe(self, cfg: Any, running: _Running, report: Any) -> Any:
        with self.heavy_ended:
            self.heavy_ended.wait_for(lambda: self.heavy == 0)
        with self.probe_lock:
            return run_quick("probe", cfg)

    def do_info(self, path: Any, running: _Running, report: Any) -> Any:
        return run_quick("info", path)

    def do_segment(self, request: Any, running: _Running, report: Any) -> Any:
        from .segment_request import run_segmentation
        from .shared_array import SharedArray, detach

        shared = request.data if isinstance(request.data, SharedArray) else None
        block = None
        if shared is not None:
            data, block = shared.attach()
            request = dataclasses.replace(request, data=data)
            del data
        try:
            return run_segmentation(request, report, running.stop)
        finally:
            if block is not None:
                request = None  # the last view of the block: unmapped with it
                detach(block)

    def do_train(self, request: dict[str, Any], running: _Running, report: Any) -> Any:
        from ..training.callbacks import LabelUpdates
        from .training_request import Notice, prepare_run, run_training, summarize_labels

        def applied(_annotated: dict[int, int]) -> None:
            report(WorkerAnnotations(os.getpid(), sum(running.counts.values()), running.updates,
                                     running.label_updates.applied))

        # Labels repainted from now on (the run's set-up included) train from its first step on.
        running.label_updates = LabelUpdates(on_applied=applied)
        choices = request.get("choices")
        if request.get("prepared") is None:
            prepared = prepare_run(choices, request["cfg"])
            for text in prepared.warnings:
                report(Notice(text))
        else:
            prepared = _engine_prepared(request["prepared"], request.get("preview_image"))
        running.label_mode = str(prepared.cfg.data.label_mode)
        if choices is not None:
            summaries = {k: summarize_labels(p.label, running.label_mode)
                         for k, p in enumerate(choices.pairs) if not p.from_files}
            running.counts = {k: summary.annotated for k, summary in summaries.items()}
            self.objects_only = {k: set(summary.objects_only) for k, summary in summaries.items()}
            self.pair_names = {k: p.name for k, p in enumerate(choices.pairs)}
        report(WorkerAnnotations(os.getpid(), sum(running.counts.values()), running.updates))
        result = run_training(prepared, report, running.stop, resume=request.get("resume"),
                              first_step=int(request.get("first_step", 0)),
                              preview_every=float(request.get("preview_every", 0)),
                              preview_target=running.target, snapshot_request=running.snapshot,
                              label_updates=running.label_updates)
        return _plain_prepared(prepared), RunSummary.of(result)

    def new_labels(self, rid: Any, running: _Running, index: int, labels: Any) -> None:
        """Labels repainted during the run: counted, reported, and handed to the training, which
        trains on them from its next step (same weights and optimizer; the held-out pieces of the
        run's start stay held out)."""
        from .training_request import Notice, objects_only_warning, summarize_labels

        summary = summarize_labels(labels, running.label_mode)
        running.counts[int(index)] = summary.annotated
        running.updates += 1
        warned = self.objects_only.setdefault(int(index), set())
        new_sections = [z for z in summary.objects_only if z not in warned]
        if new_sections:
            warned.update(new_sections)
            name = self.pair_names.get(int(index), f"the labels of pair {int(index) + 1}")
            self.send("event", rid, Notice(objects_only_warning(name, new_sections)))
        if running.label_updates is not None:
            running.label_updates.submit(int(index), labels)
        applied = running.label_updates.applied if running.label_updates is not None else 0
        self.send("event", rid, WorkerAnnotations(os.getpid(), sum(running.counts.values()), running.updates,
                                                  applied))


def serve(conn: Any) -> None:
    """Serve ``conn`` (a multiprocessing Connection) until it closes; the process ends with it."""
    try:
        os.nice(WORKER_NICENESS)
    except (AttributeError, OSError):
        pass
    warmed = threading.Event()
    threading.Thread(target=_warm_up, args=(warmed,), name="connectomics-warm-up", daemon=True).start()
    _Server(conn, warmed).serve()


def main(argv: list[str] | None = None) -> None:
    """``python -m napari_connectomics.widgets.train_worker <fd>``: serve the inherited socket ``fd``."""
    from multiprocessing.connection import Connection

    args = sys.argv[1:] if argv is None else argv
    faulthandler.enable()  # a crash of torch's native code prints every thread's Python stack to stderr
    logging.basicConfig(level=logging.WARNING, format="[engine worker] %(levelname)s %(name)s: %(message)s")
    from ..training.quiet import quiet_libraries

    quiet_libraries()
    serve(Connection(int(args[0])))
    os._exit(0)  # a run still in flight (napari closed) ends with the process


if __name__ == "__main__":  # run as the package's module, so messages unpickle in napari by its name
    from napari_connectomics.widgets import train_worker as _module

    _module.main()

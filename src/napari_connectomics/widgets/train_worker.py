"""The training worker process: GUI training runs here, so torch never loads into napari.

napari's Train panel starts ``python -m napari_connectomics.widgets.train_worker <fd>`` when it opens
(see :mod:`napari_connectomics.widgets.worker_client`); ``fd`` is its end of a socket pair the
process inherits (no network port). The worker imports the engine in the background at once, so
the first Train does not wait for torch, then serves one run at a time:

GUI -> worker (tag, payload) tuples of plain data:
    ``start`` {choices | prepared, cfg, resume, first_step, preview_every, view, preview_image},
    ``stop`` (after the step in flight, with a checkpoint), ``view`` (z, y, x) the previewed place,
    ``snapshot`` (save the current weights), ``labels`` (pair index, labels repainted during the
    run), ``quit``.
worker -> GUI:
    ``ready`` pid; ``event`` a Progress / RunStarted / Notice / PreviewUpdate / WeightsSaved /
    :class:`WorkerAnnotations`; ``done`` (PreparedRun, :class:`RunSummary`); ``error`` (kind, line).

It runs only the engine's own entry points (:func:`~napari_connectomics.widgets.training_request.prepare_run`
and :func:`~napari_connectomics.widgets.training_request.run_training`); no code is sent to it.
When its pipe closes (napari ended, or closed the panel) it exits. Nothing here imports torch at
import time: the napari side imports this module for the message types.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from ..training.result import TrainResult

__all__ = ["RunSummary", "WorkerAnnotations", "error_message", "serve"]

logger = logging.getLogger(__name__)

WORKER_NICENESS = 10  # the worker yields the CPU to napari's GUI (Linux/macOS: the process's nice value)
ERROR_USER, ERROR_MEMORY, ERROR_OTHER = "user", "memory", "other"


@dataclass(frozen=True)
class WorkerAnnotations:
    """How many voxels are annotated in the labels the worker trains on now (all pairs), and its pid."""

    pid: int
    annotated: int
    updates: int = 0  # labels updates received during this run


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


def _warm_up() -> None:
    """Import the engine now, so a Train pressed later starts at once."""
    try:
        import lightning  # noqa: F401
        import torch  # noqa: F401

        from ..training import trainer  # noqa: F401
        from ..inference import predict  # noqa: F401
    except Exception:  # the run itself reports the import error
        logger.exception("importing the training engine failed")


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


class _Server:
    """One worker: the main thread reads messages; a run trains in its own thread."""

    def __init__(self, conn: Any) -> None:
        from .training_request import PreviewTarget

        self.conn = conn
        self.send_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.snapshot = threading.Event()
        self.target = PreviewTarget()
        self.run_thread: threading.Thread | None = None
        self.label_mode = "sparse"
        self.counts: dict[int, int] = {}
        self.updates = 0

    def send(self, tag: str, payload: Any = None) -> None:
        with self.send_lock:
            self.conn.send((tag, payload))

    def report(self, event: Any) -> None:
        self.send("event", event)

    def serve(self) -> None:
        self.send("ready", os.getpid())
        while True:
            try:
                tag, payload = self.conn.recv()
            except (EOFError, OSError):  # napari is gone: so is this run
                break
            if tag == "start":
                self.start(payload)
            elif tag == "stop":
                self.stop_event.set()
            elif tag == "view":
                self.target.z, self.target.y, self.target.x = payload
            elif tag == "snapshot":
                self.snapshot.set()
            elif tag == "labels":
                self.new_labels(*payload)
            elif tag == "quit":
                break
            else:
                logger.warning("unknown message %r ignored", tag)

    def start(self, request: dict[str, Any]) -> None:
        if self.run_thread is not None and self.run_thread.is_alive():
            self.send("error", (ERROR_USER, "a run is still training in the worker; stop it first"))
            return
        self.stop_event.clear()
        self.snapshot.clear()
        self.counts, self.updates = {}, 0
        self.target.z, self.target.y, self.target.x = request.get("view") or (0, None, None)
        self.run_thread = threading.Thread(target=self.run, args=(request,), name="connectomics-train", daemon=True)
        self.run_thread.start()

    def new_labels(self, index: int, labels: Any) -> None:
        """Labels repainted during the run: counted and reported (the engine's in-memory training
        volumes are not swapped; the next Train or Continue trains on them)."""
        from .training_request import summarize_labels

        self.counts[int(index)] = summarize_labels(labels, self.label_mode).annotated
        self.updates += 1
        self.report(WorkerAnnotations(os.getpid(), sum(self.counts.values()), self.updates))

    def run(self, request: dict[str, Any]) -> None:
        from .training_request import Notice, prepare_run, run_training, summarize_labels

        try:
            choices = request.get("choices")
            if request.get("prepared") is None:
                prepared = prepare_run(choices, request["cfg"])
                for text in prepared.warnings:
                    self.report(Notice(text))
            else:
                prepared = _engine_prepared(request["prepared"], request.get("preview_image"))
            self.label_mode = str(prepared.cfg.data.label_mode)
            if choices is not None:
                self.counts = {k: summarize_labels(p.label, self.label_mode).annotated
                               for k, p in enumerate(choices.pairs) if not p.from_files}
            self.report(WorkerAnnotations(os.getpid(), sum(self.counts.values()), self.updates))
            result = run_training(prepared, self.report, self.stop_event, resume=request.get("resume"),
                                  first_step=int(request.get("first_step", 0)),
                                  preview_every=float(request.get("preview_every", 0)),
                                  preview_target=self.target, snapshot_request=self.snapshot)
            outcome = ("done", (_plain_prepared(prepared), RunSummary.of(result)))
        except BaseException as error:  # the GUI shows one line; the traceback is logged here
            logger.exception("training failed")
            outcome = ("error", error_message(error))
        finally:
            _free_gpu_memory()
        try:
            self.send(*outcome)
        except (OSError, EOFError):
            pass


def serve(conn: Any) -> None:
    """Serve ``conn`` (a multiprocessing Connection) until it closes; the process ends with it."""
    try:
        os.nice(WORKER_NICENESS)
    except (AttributeError, OSError):
        pass
    threading.Thread(target=_warm_up, name="connectomics-warm-up", daemon=True).start()
    _Server(conn).serve()


def main(argv: list[str] | None = None) -> None:
    """``python -m napari_connectomics.widgets.train_worker <fd>``: serve the inherited socket ``fd``."""
    from multiprocessing.connection import Connection

    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="[training worker] %(levelname)s %(name)s: %(message)s")
    from ..training.quiet import quiet_libraries

    quiet_libraries()
    serve(Connection(int(args[0])))
    os._exit(0)  # a run still in flight (napari closed) ends with the process


if __name__ == "__main__":  # run as the package's module, so messages unpickle in napari by its name
    from napari_connectomics.widgets import train_worker as _module

    _module.main()

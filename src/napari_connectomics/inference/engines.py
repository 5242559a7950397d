"""The engines that turn windows into stored probabilities, sharing one window grid:

* whole volume: MONAI's ``sliding_window_inference`` itself, reporting each batch;
* blocks: each block blends every grid window touching it and is written when done;
* slabs: overlap-add over z-slabs, each window once, pieces written as soon as final;
* dask: the same blocks as dask tasks writing into one Zarr store.

In a single process, finished regions go to the output through a background writer thread
(:class:`_WriteBehind`) when the network runs on an accelerator or leaves a CPU core free, else
between batches (:func:`overlap_io`). :func:`run_engine` runs the one a plan chose.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import uuid
from collections.abc import Callable, Collection, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..progress import Progress, ProgressCallback, emit
from .input import VolumeInput
from .predictor import WindowPredictor, activate, autocast_dtype, model_on, resolve_device
from .stores import OutputWriter
from .windows import Block, WindowGrid, stitch_block, stitch_regions

__all__ = ["BlockJob", "compute_block", "overlap_io", "run_engine"]

logger = logging.getLogger(__name__)

_SIGMA_SCALE = 0.125  # MONAI's default Gaussian width (window size * 0.125)


class _Cancelled(Exception):
    """Raised between window batches when the stop event is set."""


def _stored(probabilities: torch.Tensor, dtype: np.dtype) -> np.ndarray | _FromDevice:
    """:func:`.stores.to_storage` in torch (multi-threaded, same rounding: to nearest even). On a
    GPU the conversion runs there (half the bytes cross the bus) and the copy to the host is only
    started: :func:`_arrived` waits for it, in the thread that writes."""
    if dtype == np.uint8:
        converted = probabilities.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    else:
        converted = probabilities.to(getattr(torch, dtype.name))
    if converted.device.type == "cuda":
        return _FromDevice(converted)
    return converted.numpy()


class _FromDevice:
    """A GPU tensor on its way to page-locked host memory: the copy is queued behind the work
    that made it, so the thread driving the GPU goes on; ``numpy()`` waits for the copy."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self.host.copy_(tensor, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()

    def numpy(self) -> np.ndarray:
        self.copied.synchronize()
        return self.host.numpy()


def _arrived(data: np.ndarray | _FromDevice) -> np.ndarray:
    return data.numpy() if isinstance(data, _FromDevice) else data


@dataclass(frozen=True)
class BlockJob:
    """What a process needs to compute blocks, besides the model and the input (picklable)."""

    grid: WindowGrid
    batch_size: int
    blending: str
    padding_mode: str
    activation: str
    tta: bool
    spatial_dims: int
    device: str  # an option ('auto', 'cpu', ...), resolved in the process that runs the block
    precision: str = "32"  # of the forward pass on a GPU ('16-mixed', ...), see predictor.autocast_dtype

    def predictor(self, model: torch.nn.Module, device: torch.device) -> WindowPredictor:
        """The window predictor for this job's model on ``device``."""
        return WindowPredictor(model, device, self.spatial_dims, self.activation, self.tta,
                               self.grid.window, autocast_dtype(self.precision, device))


@lru_cache(maxsize=8)
def _importance(window: tuple[int, ...], blending: str) -> torch.Tensor:
    from monai.data.utils import compute_importance_map

    return compute_importance_map(window, mode=blending, sigma_scale=_SIGMA_SCALE, device="cpu",
                                  dtype=torch.float32)


def compute_block(job: BlockJob, source: VolumeInput, predictor: WindowPredictor, block: Block,
                  check: Callable[[], None] | None = None) -> np.ndarray:
    """Final probabilities (C, *output region) of one block: every window touching it blended."""
    def predict_batch(windows: torch.Tensor) -> torch.Tensor:
        return predictor(windows.to(predictor.device)).cpu()

    with torch.inference_mode():
        mean = stitch_block(job.grid, block.core, source.read, predict_batch,
                            _importance(job.grid.window, job.blending), batch_size=job.batch_size,
                            padding_mode=job.padding_mode, check=check)
        if not predictor.returns_probabilities:
            mean = activate(mean, job.activation, dim=0)
        return mean[(slice(None), *block.crop(job.grid))].numpy()


def _predict_whole(job: BlockJob, source: VolumeInput, predictor: WindowPredictor,
                   progress: Sequence[ProgressCallback], check: Callable[[], None]) -> np.ndarray:
    """MONAI's sliding_window_inference on the whole (in-memory) volume, reporting each batch."""
    from monai.inferers import sliding_window_inference

    windows, done = job.grid.n_windows, 0
    total = math.ceil(windows / job.batch_size)

    def run(batch: torch.Tensor) -> torch.Tensor:
        nonlocal done
        check()
        output = predictor(batch)
        done += 1
        message = f"windows {min(done * job.batch_size, windows)}/{windows}"
        emit(progress, Progress(done, total, message, stage="predict"))
        return output

    with torch.inference_mode():
        inputs = torch.from_numpy(source.read(source.whole()))[None]
        output = sliding_window_inference(
            inputs, roi_size=job.grid.window, sw_batch_size=job.batch_size, predictor=run,
            overlap=job.grid.overlap, mode=job.blending, sigma_scale=_SIGMA_SCALE,
            padding_mode=job.padding_mode, sw_device=predictor.device, device="cpu")[0]
        if not predictor.returns_probabilities:
            output = activate(output, job.activation, dim=0)
        return output.numpy()


def _predict_blocks(job: BlockJob, source: VolumeInput, predictor: WindowPredictor,
                    blocks: Sequence[Block], write: Callable[[tuple[slice, ...], np.ndarray], None],
                    progress: Sequence[ProgressCallback], check: Callable[[], None],
                    skip: Collection[int] = (),
                    finished: Callable[[int], None] | None = None) -> None:
    """Blocks one after the other in this process, each written as soon as it is final; the
    blocks whose index is in ``skip`` are already written (resume), ``finished(index)`` is called
    once a block's data is written."""
    todo = [block for block in blocks if block.index not in skip]
    for done, block in enumerate(todo, start=len(blocks) - len(todo) + 1):
        write(block.output_region(job.grid), compute_block(job, source, predictor, block, check))
        if finished is not None:
            finished(block.index)
        emit(progress, Progress(done, len(blocks), f"block {done}/{len(blocks)}", stage="predict"))


def _predict_slabs(job: BlockJob, source: VolumeInput, predictor: WindowPredictor,
                   slabs: Sequence[Block], write: Callable[[tuple[slice, ...], np.ndarray], None],
                   progress: Sequence[ProgressCallback], check: Callable[[], None],
                   cuts: tuple[Sequence[int], Sequence[int]] = ((), ()),
                   prefetch: bool = True, first: int = 0,
                   finished: Callable[[int], None] | None = None) -> None:
    """Overlap-add over z-slabs in this process: each grid window once; each piece of the output
    (cut at ``cuts``, padded coordinates) written as soon as no later window touches it, even in
    the middle of a slab; with ``prefetch`` the next slab's input is read in the background (see
    :func:`.windows.stitch_regions`). ``first``: the slabs before it are written (resume);
    ``finished(number)`` is called once everything slab ``number`` finishes is written."""
    def predict_batch(windows: torch.Tensor) -> torch.Tensor:
        return predictor(windows.to(predictor.device)).cpu()

    grid = job.grid
    on_gpu = predictor.device.type == "cuda"  # sums on the GPU: windows never leave it
    with torch.inference_mode():
        pieces = stitch_regions(grid, [block.core[0] for block in slabs], source.read,
                                predictor if on_gpu else predict_batch,
                                _importance(grid.window, job.blending),
                                batch_size=job.batch_size, padding_mode=job.padding_mode,
                                check=check, cuts=cuts, prefetch=prefetch, first=first,
                                device=predictor.device if on_gpu else None)
        with closing(pieces):
            for piece in pieces:
                if piece.mean is None:
                    done = piece.slab + 1
                    if finished is not None and piece.slab >= first:
                        finished(piece.slab)
                    emit(progress, Progress(done, len(slabs), f"slab {done}/{len(slabs)}",
                                            stage="predict"))
                    continue
                assert piece.box is not None
                part = Block(-1, piece.box)
                region = part.output_region(grid)
                if all(r.stop > r.start for r in region):
                    mean = piece.mean[(slice(None), *part.crop(grid))]
                    if not predictor.returns_probabilities:
                        mean = activate(mean, job.activation, dim=0)
                    write(region, mean)


def _piece_cuts(grid: WindowGrid, chunks: Sequence[int]) -> tuple[list[int], list[int]]:
    """z and y chunk edges of the output (spatial ``chunks``) in padded coordinates, where the
    slab path cuts the pieces it writes (none on an axis padded up to the window)."""
    def edges(axis: int) -> list[int]:
        if grid.padded[axis] != grid.shape[axis]:
            return []
        return list(range(chunks[axis], grid.shape[axis], chunks[axis]))

    return edges(0), edges(1)


def overlap_io(device: torch.device) -> bool:
    """Whether reading and writing run in background threads, overlapping the network: when it
    runs on an accelerator (the CPU mostly waits for it) or leaves a CPU core free. Not when
    torch's threads already use every core: a background thread then preempts one of them while
    the others wait for it at the next barrier, so overlapped I/O costs more than the same I/O
    between two batches (2-core CPU, 64x512x512 Zarr -> Zarr: 3.55 s overlapped, 3.40 s not)."""
    if device.type != "cpu":
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return torch.get_num_threads() < cores


class _WriteNow:
    """The in-thread counterpart of :class:`_WriteBehind` (same interface)."""

    def __init__(self, write: Callable[[tuple[slice, ...], np.ndarray], None]) -> None:
        self.put = write

    def after(self, callback: Callable[[], None]) -> None:
        callback()

    def close(self) -> None:
        pass

    def cancel(self) -> None:
        pass


class _WriteBehind:
    """Hands finished regions to ``write`` in a background thread, so that compressing and storing
    them overlaps the next windows (the network and Zarr's codecs release the GIL). At most
    ``depth`` regions wait, so memory stays bounded by a few regions; ``put`` blocks while the
    queue is full. ``after(callback)`` runs ``callback`` in the same thread once every region put
    before it is written (e.g. to record a finished block). The first error of ``write`` is raised
    by the next ``put`` or by ``close``; ``cancel`` drops what waits and returns once nothing is
    being written any more."""

    def __init__(self, write: Callable[[tuple[slice, ...], np.ndarray], None],
                 depth: int = 2) -> None:
        self._write = write
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._dropping = False
        self._thread = threading.Thread(target=self._loop, name="napari-connectomics-write",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None or self._dropping:
                continue  # after an error or a cancel: keep draining so put() never blocks
            try:
                region, data = item
                if region is None:  # a callback queued by after()
                    data()
                else:
                    self._write(region, data)
            except BaseException as err:  # noqa: BLE001 - raised in the caller's thread
                self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, region: tuple[slice, ...], data: np.ndarray) -> None:
        self._raise()
        self._queue.put((region, data))

    def after(self, callback: Callable[[], None]) -> None:
        self._raise()
        self._queue.put((None, callback))

    def close(self) -> None:
        """Wait until every region is written; raise the first write error."""
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def cancel(self) -> None:
        """Drop the regions still waiting and wait for a write in progress to end."""
        self._dropping = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join()


# -- dask ---------------------------------------------------------------------------------------

_WORKER_MODELS: dict[tuple[str, int, str], Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_model(checkpoint: str, device: torch.device) -> Any:
    """The model of ``checkpoint`` on ``device``, loaded once per worker process and kept."""
    from ..models.checkpoint import load_model_from_checkpoint

    key = (checkpoint, os.stat(checkpoint).st_mtime_ns, str(device))
    with _WORKER_LOCK:
        if key not in _WORKER_MODELS:
            model, _ = load_model_from_checkpoint(checkpoint)
            _WORKER_MODELS[key] = model.eval().to(device)
            logger.info("worker %d loaded %s on %s", os.getpid(), checkpoint, device)
        return _WORKER_MODELS[key]


def _dask_block(checkpoint: str, job: BlockJob, source: VolumeInput, block: Block, sink: Any,
                stop: str) -> int:
    """One dask task: predict a block and write it into the shared Zarr store; -1 when the run
    was cancelled (checked between window batches and before writing)."""
    from distributed import Event

    event = Event(stop)

    def check() -> None:
        if event.is_set():
            raise _Cancelled()

    try:
        check()
        device = resolve_device(job.device)
        predictor = job.predictor(_worker_model(checkpoint, device), device)
        probabilities = compute_block(job, source, predictor, block, check)
        check()
    except _Cancelled:
        return -1
    sink.write(block.output_region(job.grid), probabilities)
    return block.index


def _predict_dask(checkpoint: Path, job: BlockJob, source: VolumeInput, blocks: Sequence[Block],
                  sink: Any, address: str | None, progress: Sequence[ProgressCallback],
                  stop_event: threading.Event | None, skip: Collection[int] = (),
                  finished: Callable[[int], None] | None = None) -> bool:
    """Blocks as dask tasks; True when cancelled. Every task has ended before this returns, so
    the caller may remove the output without a worker still writing into it. Blocks in ``skip``
    are already written (resume); ``finished(index)`` is called here once a task has written its
    block."""
    total, blocks = len(blocks), [block for block in blocks if block.index not in skip]
    if not blocks:  # resumed with every block written
        return False
    from distributed import Client, Event, LocalCluster, wait

    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    client = Client(address or cluster)
    stop_name = f"napari-connectomics-stop-{uuid.uuid4().hex}"
    stop = Event(stop_name, client=client)
    try:
        shared = client.scatter(source, broadcast=True)
        futures = [client.submit(_dask_block, str(checkpoint), job, shared, block, sink,
                                 stop_name, pure=False, key=f"block-{block.index}-{stop_name}")
                   for block in blocks]
        logger.info("%d blocks sent to the dask scheduler %s", len(futures),
                    client.scheduler.address)
        pending, done = set(futures), total - len(blocks)
        try:
            while pending:
                if stop_event is not None and stop_event.is_set():
                    stop.set()
                    wait(futures)
                    return True
                try:
                    ready, pending = wait(pending, timeout=0.25, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for future in ready:
                    index = future.result()  # a worker's exception is raised here
                    if finished is not None and index >= 0:
                        finished(index)
                    done += 1
                    message = f"block {done}/{total}"
                    emit(progress, Progress(done, total, message, stage="predict"))
        except BaseException:
            stop.set()
            wait(futures)
            raise
        return False
    finally:
        client.close()
        if cluster is not None:  # ours: its worker processes go with it
            cluster.close()


def run_engine(model: torch.nn.Module, device: torch.device, job: BlockJob, source: VolumeInput,
               blocks: Sequence[Block], slabs: bool, shape: tuple[int, ...], output_dtype: str,
               writer: OutputWriter | None, progress: Sequence[ProgressCallback],
               stop_event: threading.Event | None, *, scheduler: str = "local",
               checkpoint: Path | None = None,
               address: str | None = None) -> tuple[bool, np.ndarray | None]:
    """Run the engine a plan chose (``blocks`` [] for the whole volume; z-slabs when ``slabs``);
    (cancelled, the in-memory result of ``shape`` when there is no writer).

    With a writer that keeps a resume log (``writer.log``), the blocks it lists as done are
    skipped (z-slabs: from the first slab not done on) and every block is recorded there once
    its data is written (the whole volume counts as block 0)."""
    log = writer.log if writer is not None else None
    skip: frozenset[int] = frozenset(log.done) if log is not None else frozenset()
    record = log.record if log is not None else None
    if scheduler == "dask":
        assert writer is not None and checkpoint is not None
        cancelled = _predict_dask(checkpoint, job, source, blocks, writer.sink(), address,
                                  progress, stop_event, skip, record)
        return cancelled, None

    def check() -> None:
        if stop_event is not None and stop_event.is_set():
            raise _Cancelled()

    dtype = output_dtype
    memory = None if writer is not None else np.zeros(shape, dtype=dtype)
    overlap = overlap_io(device)
    behind: _WriteBehind | _WriteNow | None = None
    if writer is not None:
        def sink(region: tuple[slice, ...], data: np.ndarray | _FromDevice) -> None:
            writer.write(region, _arrived(data), stored=True)

        behind = _WriteBehind(sink) if overlap else _WriteNow(sink)

    def write(region: tuple[slice, ...], probabilities: np.ndarray | torch.Tensor) -> None:
        if probabilities.shape[0] != shape[0]:
            raise ValueError(f"the network returned {probabilities.shape[0]} channels but its "
                             f"config says model.out_channels={shape[0]}; pass the config "
                             "it was trained with")
        stored = _stored(torch.as_tensor(probabilities), np.dtype(dtype))
        if behind is not None:
            behind.put(region, stored)
        else:
            memory[(slice(None), *region)] = _arrived(stored)

    def finished(index: int) -> None:  # after the regions written so far
        if record is not None and behind is not None:
            behind.after(partial(record, index))

    try:
        with model_on(model, device) as on_device:
            predictor = job.predictor(on_device, device)
            if slabs:
                cuts = _piece_cuts(job.grid, writer.chunks[1:]) if writer is not None else ((), ())
                first = 0
                while first in skip:
                    first += 1
                if first < len(blocks):
                    _predict_slabs(job, source, predictor, blocks, write, progress, check, cuts,
                                   prefetch=overlap, first=first, finished=finished)
            elif blocks:
                _predict_blocks(job, source, predictor, blocks, write, progress, check, skip,
                                finished)
            elif 0 not in skip:
                write(source.whole(), _predict_whole(job, source, predictor, progress, check))
                finished(0)
        if behind is not None:
            behind, waiting = None, behind
            waiting.close()  # every region written (or a write error raised) before commit
    except _Cancelled:
        return True, None
    finally:
        if behind is not None:  # cancelled or failed: nothing may still write into the output
            behind.cancel()
    return False, memory

"""Sliding-window prediction: one volume in memory, volumes larger than memory, or a dask cluster.

This module is the entry point (:func:`predict`) and the planning (which engine, which blocks);
the pieces live beside it: :mod:`.options` (options and result), :mod:`.input` (the input volume),
:mod:`.predictor` (the network on windows, TTA), :mod:`.engines` (the engines, the writer thread,
dask) and :mod:`.windows` (the window grid and stitching).

:func:`predict` turns a checkpoint (or a model with its training config) and a volume into
probabilities (C, z, y, x): sigmoid for a one-channel network, else softmax over the channels.
Windows run on the GPU when there is one; blending and stitching stay on the CPU.

Three engines share one window grid (see :mod:`.windows`), so they agree within float rounding:

* whole volume (it fits in ``memory_limit_mb``, no ``block_size``): MONAI's
  ``sliding_window_inference`` itself, with a progress report and a cancel check per batch;
* blocks (a ``block_size``, or a volume too large for memory): each block reads its part of the
  input plus a halo, blends every grid window that touches it and writes its part of the output
  as soon as it is done, so memory follows the block size and not the volume;
* slabs (single process, when a slab of the plan's z-thickness spanning the whole y-x plane fits
  in memory): overlap-add over z-slabs, every grid window computed exactly once; each piece of
  the output (whole chunk rows of z and y, full x) is written as soon as no later window touches
  it, even in the middle of a slab, and the next slab's input is read while this one is predicted;
* dask (``scheduler='dask'``): the same blocks as dask tasks writing into one Zarr store.

In a single process, when the network runs on an accelerator or leaves a CPU core free, finished
regions go to the output through a background writer thread (a queue of at most two regions, so
memory stays bounded) and the next slab's input is read ahead, so that I/O overlaps the windows;
when torch's threads already use every core, the same I/O runs between batches instead (see
:func:`.engines.overlap_io`). A write error is raised in the caller's thread; on an error or a
cancel the writer is stopped before the partial output is removed. When the plan reads the whole input in
one piece anyway (whole volume, one slab), it is read once and its statistics are taken from
that copy (the same sample of the same blocks, so the same numbers).

Inputs are normalised with ``cfg.data.normalize`` and statistics of the whole input volume
(measured once, on a sample for large volumes), as in training. A 2D network trained with 2.5D
context (``data.context_sections``) gets each section's neighbours as channels, as in training
(:mod:`napari_connectomics.data.sections`). ``PredictOptions.triplanar`` predicts the xy, xz and
yz planes with a 2D network and averages them (:mod:`.triplanar`); ``PredictOptions.z_smoothing``
smooths the probabilities along z (:mod:`.z_smoothing`). Without test-time augmentation
the blended *logits* go through the activation (exactly MONAI's result); with it, each window is
predicted under flips (and in-plane rot90 for square windows) and the *probabilities* are
averaged, window by window, before blending.

Scale-out with dask
-------------------
``predict(..., output='pred.zarr', scheduler='dask')`` starts a ``LocalCluster`` of two
single-threaded worker processes on this machine; ``address='host:port'`` sends the blocks to a
running scheduler instead. Each worker loads the model from the checkpoint once and keeps it;
workers must see the checkpoint, the input and the output at the same paths (a shared file
system), and the output must be Zarr or precomputed (blocks go to their own chunks concurrently;
HDF5 cannot be written by several processes). On a SLURM cluster with dask-jobqueue::

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    cluster = SLURMCluster(cores=8, processes=1, memory="64GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"])
    cluster.scale(jobs=4)
    client = Client(cluster)
    print(client.scheduler_address)  # e.g. tcp://10.0.0.5:8786

then, in the same Python environment (keep the cluster running)::

    napari-connectomics predict --checkpoint best.ckpt --input raw.zarr/raw \\
        --output pred.zarr --scheduler dask --address tcp://10.0.0.5:8786

or ``predict(..., scheduler='dask', address=client.scheduler_address)``.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config.context import network_in_channels
from ..data.normalize import intensity_stats
from ..data.sections import SectionContext
from ..data.volume_io import remove
from ..data.volumes import Volume, parse_volume_path
from ..progress import Progress, ProgressCallback, emit
from . import engines
from .engines import BlockJob, compute_block, run_engine
from .input import VolumeInput, prepare_input, read_once, shape_text
from .options import PredictionResult, PredictOptions, default_window
from .predictor import WindowPredictor, activation_for, resolve_device, tta_transforms
from .resume import Partial, ResumeLog, changed, digest, file_stamp, find_partials, model_digest
from .triplanar import PLANES, check_triplanar, check_triplanar_run, offset_progress, to_volume_order
from .stores import (
    OutputSpaceError,
    OutputSpec,
    OutputWriter,
    check_free_space,
    check_output,
    choose_chunks,
    is_no_space,
    parse_output,
    planned_bytes,
    size_text,
    stored_dtype,
    to_storage,
)
from .windows import (
    Block,
    WindowGrid,
    auto_block_size,
    make_grid,
    plan_blocks,
    resolve_window,
    slab_bytes,
    whole_volume_bytes,
)
from .z_smoothing import slab_sections, smooth_along_z

__all__ = [
    "BlockJob",
    "PredictOptions",
    "PredictionResult",
    "VolumeInput",
    "WindowPredictor",
    "activation_for",
    "compute_block",
    "predict",
    "prepare_input",
    "resolve_device",
    "tta_transforms",
]

logger = logging.getLogger(__name__)

SCHEDULERS = ("local", "dask")
_MB = 2**20




# --------------------------------------------------------------------------------------------
# predict()
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything decided before any output is touched."""

    model: torch.nn.Module
    cfg: Any
    checkpoint: Path | None
    options: PredictOptions
    source: VolumeInput
    job: BlockJob
    blocks: list[Block]  # [] for MONAI's whole-volume inference; z-slabs when ``slabs``
    device: torch.device
    scheduler: str
    slabs: bool = False  # blocks are z-slabs of the whole y-x plane, run by overlap-add
    needed: int = 0  # bytes of output still to write (before compression)
    views: list[_Plan] = dataclasses.field(default_factory=list)  # tri-planar: the xz and yz planes

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.cfg.model.out_channels), *self.source.shape)

    @property
    def units(self) -> int:
        """Progress units: blocks, or window batches of the whole-volume path (of every plane)."""
        own = len(self.blocks) or math.ceil(self.job.grid.n_windows / self.options.batch_size)
        return own + sum(view.units for view in self.views)


def predict(
    checkpoint_or_model: str | os.PathLike | torch.nn.Module,
    volume: Any,
    options: PredictOptions | None = None,
    progress: Sequence[ProgressCallback] = (),
    stop_event: threading.Event | None = None,
    *,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    cfg: Any = None,
    scheduler: str | None = None,
    address: str | None = None,
    resume: bool = False,
) -> PredictionResult:
    """Predict probabilities (C, z, y, x) for ``volume`` (see the module doc for the engines).

    ``checkpoint_or_model``: a checkpoint path (model and config from it), or a model with its
    training config as ``cfg``. ``volume``: a path spec (``raw.h5:raw``), an array (numpy, dask,
    napari layer data) or a Volume. ``output``: ``pred.zarr[:key]``, ``pred.h5[:key]`` or
    ``pred.ome.zarr`` (OME-Zarr with a pyramid and the input's voxel size) or ``pred.precomputed``
    (Neuroglancer precomputed volumes; float16 is stored as float32), written under a
    temporary name and renamed when complete; an existing one is refused unless
    ``overwrite``. ``stop_event`` cancels between window batches: the partial output is removed
    and the result says ``cancelled=True``. ``scheduler='dask'`` (with ``address`` or a local
    cluster) runs the blocks as dask tasks. Every input error is a one-line ValueError raised
    before any output is touched.

    ``resume=True`` (Zarr outputs) continues the partial output an interrupted run left (killed,
    out of time) when it was made from the same input, checkpoint and options: the blocks it
    already holds are kept, the others predicted (see :mod:`.resume`). Without one to continue
    it starts from scratch; without ``resume`` a stale partial output of the same path is removed
    (with a warning). An output larger (before compression) than the free space is refused before
    any work; a disk that fills up during the run raises :class:`.stores.OutputSpaceError` (one
    line; the partial output is removed, as after any error).
    """
    started = time.perf_counter()
    spec = parse_output(output) if output is not None else None
    if spec is not None:
        check_output(spec, overwrite)
    _check_resume(resume, spec)
    plan = _make_plan(checkpoint_or_model, volume, options, cfg, spec,
                      _check_scheduler(scheduler, address, spec, checkpoint_or_model), resume)
    writer = _open_writer(plan, spec, overwrite, resume) if spec is not None else None
    result = PredictionResult(None, None, plan.shape[0], plan.job.activation, 0.0,
                              window=plan.job.grid.window, blocks=len(plan.blocks) or 1,
                              device="dask" if plan.scheduler == "dask" else str(plan.device))
    last = _LastProgress()
    try:
        cancelled, in_memory = _run(plan, writer, address, [*progress, last], stop_event)
    except BaseException as err:
        if writer is None:
            raise
        full = _stop_writing(writer, err)
        if full is None:
            raise
        raise full from err
    result.seconds = time.perf_counter() - started
    if cancelled:
        if writer is not None:
            writer.abort()
        logger.info("prediction cancelled after %.1f s; no output was kept", result.seconds)
        emit(progress, Progress(last.done, plan.units, "stopped", stage="stopped"))
        result.cancelled = True
        return result
    if writer is not None:
        try:
            result.output_path = writer.commit()
        except OSError as err:
            if not is_no_space(err):
                raise
            raise _no_space(writer) from err
        result.probabilities = writer.open_result()
    else:
        result.probabilities = in_memory
    result.seconds = time.perf_counter() - started
    emit(progress, Progress(plan.units, plan.units, "done", stage="done"))
    logger.info("prediction finished in %.1f s", result.seconds)
    return result


def _make_plan(checkpoint_or_model: Any, volume: Any, options: PredictOptions | None, cfg: Any,
               spec: OutputSpec | None, scheduler: str, resume: bool = False) -> _Plan:
    """Load, check and decide; cheap checks first, the intensity statistics last."""
    model, cfg, checkpoint = _load(checkpoint_or_model, cfg)
    options = options if options is not None else PredictOptions.from_config(cfg)
    if stored_dtype(spec, options.output_dtype) != options.output_dtype:  # precomputed: no float16
        logger.info("%s is not a precomputed data type: the probabilities are stored as %s",
                    options.output_dtype, stored_dtype(spec, options.output_dtype))
        options = dataclasses.replace(options, output_dtype=stored_dtype(spec, options.output_dtype))
    source = prepare_input(volume, int(cfg.model.in_channels), options.roi,
                           SectionContext.from_config(cfg))
    if spec is not None:
        _refuse_input_as_output(source.volume, spec)
    spatial_dims = int(cfg.model.spatial_dims)
    if options.triplanar:
        check_triplanar(spatial_dims, source, _voxel_size(source, cfg), options.window or default_window(cfg))
        check_triplanar_run(scheduler, resume, source.shape, int(cfg.model.out_channels),
                            options.memory_limit_mb)
    if options.z_smoothing > 0:
        _check_z_smoothing(options, resume, spec, (int(cfg.model.out_channels), *source.shape))
    window = _window(model, cfg, options, source.shape)
    device = resolve_device(options.device) if scheduler == "local" else torch.device("cpu")
    grid = make_grid(source.shape, window, options.overlap)
    activation = getattr(model, "output_activation", None) or activation_for(cfg)  # BioImage.IO: its own
    job = BlockJob(grid, options.batch_size, options.blending, options.padding_mode,
                   activation, options.tta, spatial_dims, options.device, options.precision)
    blocks, slabs = _plan_blocks(grid, options, network_in_channels(cfg),
                                 int(cfg.model.out_channels), scheduler,
                                 prefetch=scheduler == "local" and engines.overlap_io(device),
                                 stream=scheduler == "local" and device.type == "cuda"
                                 and spec is not None)
    if scheduler == "local" and (options.triplanar or not blocks or len(blocks) == 1):
        source = read_once(source, options.memory_limit_mb * _MB)  # tri-planar: read once, not thrice
    if cfg.data.normalize != "none":
        source = dataclasses.replace(source, normalize=cfg.data.normalize,
                                     stats=intensity_stats(source.volume))
    plan = _Plan(model, cfg, checkpoint, options, source, job, blocks, device, scheduler, slabs)
    if options.triplanar:
        plan.views = [_plane_plan(plan, axes) for name, axes in PLANES.items() if name != "xy"]
    logger.info("predicting %s with window %s, overlap %.2f%s: %s on %s", shape_text(source.shape),
                shape_text(window), options.overlap,
                ", TTA" * options.tta + ", tri-planar (xy, xz, yz averaged)" * options.triplanar
                + (f", smoothed along z (sigma {options.z_smoothing:g} sections)" if options.z_smoothing else ""),
                (f"{len(blocks)} z-slabs" if slabs else f"{len(blocks)} blocks") if blocks
                else "whole volume",
                "dask" if scheduler == "dask" else device)
    in_memory = math.prod(plan.shape) * np.dtype(options.output_dtype).itemsize
    if spec is None and in_memory > options.memory_limit_mb * _MB:
        logger.warning("the %s result %s is held in memory; pass output='pred.zarr' to write "
                       "it block by block", options.output_dtype, shape_text(plan.shape))
    return plan


def _window(model: torch.nn.Module, cfg: Any, options: PredictOptions,
            shape: Sequence[int]) -> tuple[int, int, int]:
    """The sliding window for an input region of spatial ``shape``."""
    return resolve_window(options.window, default_window(cfg), shape,
                          spatial_dims=int(cfg.model.spatial_dims),
                          size_multiple=int(getattr(model, "size_multiple", 1) or 1),
                          fixed=getattr(model, "fixed_input_size", None))


def _plane_plan(plan: _Plan, axes: tuple[int, int, int]) -> _Plan:
    """The plan of another plane (tri-planar): the same input transposed, its own window grid and
    blocks, predicted in memory (see :func:`_run_planes`)."""
    source = plan.source.transposed(axes)
    grid = make_grid(source.shape, _window(plan.model, plan.cfg, plan.options, source.shape),
                     plan.options.overlap)
    blocks, slabs = _plan_blocks(grid, plan.options, network_in_channels(plan.cfg),
                                 int(plan.cfg.model.out_channels), plan.scheduler)
    return dataclasses.replace(plan, source=source, job=dataclasses.replace(plan.job, grid=grid),
                               blocks=blocks, slabs=slabs, views=[])


def _voxel_size(source: VolumeInput, cfg: Any) -> list[float]:
    """z, y, x voxel size of the input: its file's (OME-Zarr), else the training config's."""
    scale = source.volume.scale
    if scale is not None and len(scale) >= 3 and not source.flat:
        return [float(v) for v in scale[-3:]]
    return [float(v) for v in cfg.data.voxel_size]


def _check_resume(resume: bool, spec: OutputSpec | None) -> None:
    if not resume:
        return
    if spec is None:
        raise ValueError("resume=True continues an output on disk: pass output='pred.zarr'")
    if spec.kind == "precomputed":
        raise ValueError(f"--resume needs a Zarr output: {spec.path} is a precomputed folder, "
                         "which cannot be resumed yet; write to e.g. pred.zarr (or drop --resume)")
    if spec.kind != "zarr":
        raise ValueError(f"--resume needs a Zarr output: {spec.path} is HDF5, which a killed run "
                         "can leave unreadable; write to e.g. pred.zarr (or drop --resume)")


def _open_writer(plan: _Plan, spec: OutputSpec, overwrite: bool,
                 resume: bool = False) -> OutputWriter:
    """The output, in a temporary sibling; chunks align with the blocks (dask writes them).

    Zarr outputs keep a resume log of the blocks written; with ``resume`` the matching partial
    store of an interrupted run is taken over (a one-line error when it was made differently).
    The output's size before compression (of the blocks still to write) must fit in the free
    space of its file system."""
    block = [hi - lo for lo, hi in plan.blocks[0].core] if plan.blocks else None
    chunks = choose_chunks(plan.shape[0], plan.source.shape, block)
    units = len(plan.blocks) or 1
    fingerprint = _fingerprint(plan, spec, chunks) if spec.kind == "zarr" else None
    found = _resumable(spec, fingerprint, units) if resume else None
    if not resume and spec.kind == "zarr":
        _remove_stale(spec)
    done = found.done & set(range(units)) if found is not None else set()
    total = planned_bytes(plan.shape, plan.options.output_dtype)
    if spec.ome:  # and its pyramid: levels of 1/4, 1/16, ... of level 0 at most
        total = total * 4 // 3
    needed = math.ceil(total * (units - len(done)) / units)
    check_free_space(spec, needed, f"the {units - len(done)} blocks left" if done else "the output")
    plan.needed = needed
    writer = _make_writer(plan, spec, overwrite, chunks, found.path if found else None)
    if fingerprint is not None:
        try:
            writer.log = ResumeLog(writer.temporary, fingerprint, units, done)
        except BaseException as err:
            if found is not None:
                writer.keep()  # still resumable: never lose the blocks of an earlier run here
            else:
                writer.abort()
            if is_no_space(err):
                raise _no_space(writer, kept=found is not None) from err
            raise
    return writer


def _resumable(spec: OutputSpec, fingerprint: dict[str, Any] | None,
               units: int) -> Partial | None:
    """The partial output of an interrupted run to continue, checked against this run."""
    assert fingerprint is not None
    partials = find_partials(spec.path)  # none is this process's own yet
    for partial in partials:
        if partial.running():
            raise ValueError(f"{partial.path} is being written by a running prediction (process "
                             f"{partial.pid}); wait for it to end or stop it, then --resume")
    matching = [p for p in partials if not changed(p.manifest.get("fingerprint", {}), fingerprint)
                and p.blocks == units]
    if matching:
        best = max(matching, key=lambda p: len(p.done))
        if best.host != socket.gethostname():
            logger.warning("resuming %s, which %s on host %s wrote: make sure that run has ended",
                           best.path, f"process {best.pid}", best.host)
        logger.info("resuming %s: %d of %d blocks done", best.path.name,
                    len(best.done & set(range(units))), units)
        return best
    if partials:
        newest = partials[0]
        differ = changed(newest.manifest.get("fingerprint", {}), fingerprint) or ["block count"]
        raise ValueError(f"cannot resume {spec.path}: its unfinished output {newest.path.name} was "
                         f"made with a different {', '.join(differ)}; drop --resume to start over "
                         "(the unfinished output is then removed)")
    logger.info("nothing to resume for %s (no unfinished output of an earlier run): starting "
                "from scratch", spec.path)
    return None


def _remove_stale(spec: OutputSpec) -> None:
    """Without resume: remove the partial outputs of earlier runs (on this host, whose process
    is gone) of the same path, saying that --resume would have continued them."""
    for partial in find_partials(spec.path):
        if not partial.stale():
            continue
        logger.warning("removing %s, the unfinished output of an earlier run (%d of %d blocks "
                       "done); pass --resume (resume=True) to continue such a run instead",
                       partial.path.name, len(partial.done), partial.blocks)
        remove(partial.path)


def _fingerprint(plan: _Plan, spec: OutputSpec, chunks: Sequence[int]) -> dict[str, Any]:
    """What the stored values depend on (see :mod:`.resume`): a resumed run must match all."""
    source, options, job = plan.source, plan.options, plan.job
    path, key = parse_volume_path(source.volume.source)
    stamp = file_stamp(path) if path.exists() else None  # the file, whatever the path's spelling
    stats = dataclasses.asdict(source.stats) if source.stats is not None else None
    if plan.checkpoint is not None:
        model: Any = file_stamp(plan.checkpoint) or str(plan.checkpoint)
    else:
        model = {"weights sha256": model_digest(plan.model)}
    return {
        "input": {**stamp, "key": key} if stamp is not None else source.volume.source,
        "input shape": list(source.volume.shape), "input dtype": str(source.volume.dtype),
        "region": [list(source.offset), list(source.shape)],
        "normalization": [source.normalize, stats],
        "checkpoint": model,
        "window": list(job.grid.window), "overlap": options.overlap,
        "blending": options.blending, "padding mode": options.padding_mode, "tta": options.tta,
        "batch size": options.batch_size, "activation": job.activation,
        "precision": options.precision,
        "output dtype": options.output_dtype, "output array": spec.key,
        "output shape": list(plan.shape), "chunks": list(chunks),
        "blocks": [len(plan.blocks), plan.slabs, digest([b.core for b in plan.blocks])],
        **({"triplanar": True} if options.triplanar else {}),
        **({"z smoothing": options.z_smoothing} if options.z_smoothing else {}),
    }


def _stop_writing(writer: OutputWriter, err: BaseException) -> OutputSpaceError | None:
    """After a failed run: remove the partial output; the one-line error to raise instead of
    ``err`` when the disk is full (None: re-raise ``err``)."""
    writer.abort()
    return _no_space(writer) if is_no_space(err) else None


def _no_space(writer: OutputWriter, kept: bool = False) -> OutputSpaceError:
    size = (f"; the output needs up to {size_text(writer.needed)} before compression"
            if writer.needed else "")
    what = (f"{writer.temporary.name} is kept for --resume" if kept
            else "the unfinished output was removed")
    return OutputSpaceError(f"{writer.spec.path}: {os.strerror(errno.ENOSPC)} (disk full){size}; "
                            f"free some space or write elsewhere ({what})", writer.spec.path)


def _make_writer(plan: _Plan, spec: OutputSpec, overwrite: bool, chunks: Sequence[int],
                 adopt: Path | None) -> OutputWriter:
    options, job = plan.options, plan.job
    attrs: dict[str, Any] = {
        "activation": job.activation, "channels": plan.shape[0],
        "target": str(plan.cfg.data.target), "window": list(job.grid.window),
        "overlap": options.overlap, "blending": options.blending, "tta": options.tta,
    }
    if plan.checkpoint is not None:
        attrs["checkpoint"] = str(plan.checkpoint)
    voxel_size, origin = _voxel_grid(plan.source)
    writer = OutputWriter(spec, plan.shape, options.output_dtype, chunks, overwrite, attrs,
                          voxel_size=voxel_size, origin=origin, adopt=adopt)
    writer.needed = plan.needed
    return writer


def _voxel_grid(source: VolumeInput) -> tuple[list[float] | None, list[float] | None]:
    """The input's voxel size and the origin of the predicted region (z, y, x), when the input
    says (an OME-Zarr level); carried into an OME-Zarr output's coordinateTransformations."""
    scale, translate = source.volume.scale, source.volume.translate
    if scale is None:
        return None, None
    spatial = 2 if source.flat else 3
    voxel = [1.0] * (3 - spatial) + [float(v) for v in scale[-spatial:]]
    shift = [0.0] * (3 - spatial) + [float(v) for v in (translate or (0.0,) * spatial)[-spatial:]]
    return voxel, [t + o * v for t, o, v in zip(shift, source.offset, voxel)]


class _LastProgress:
    """Remembers how far the run got, for the final 'stopped' report."""

    def __init__(self) -> None:
        self.done = 0

    def __call__(self, progress: Progress) -> None:
        self.done = progress.done

def _run(plan: _Plan, writer: OutputWriter | None, address: str | None,
         progress: Sequence[ProgressCallback],
         stop_event: threading.Event | None) -> tuple[bool, np.ndarray | None]:
    """Run the planned engine; (cancelled, the in-memory result when there is no writer)."""
    if plan.views:
        return _run_planes(plan, writer, progress, stop_event)
    sigma = plan.options.z_smoothing
    smooth_in_memory = sigma > 0 and writer is None  # then float32 first, stored dtype once at the end
    cancelled, result = run_engine(plan.model, plan.device, plan.job, plan.source, plan.blocks, plan.slabs,
                                   plan.shape, "float32" if smooth_in_memory else plan.options.output_dtype,
                                   writer, progress, stop_event,
                                   scheduler=plan.scheduler, checkpoint=plan.checkpoint, address=address)
    if cancelled or sigma <= 0:
        return cancelled, result
    if writer is not None:  # filtered in place, slab by slab, before the output is committed
        def report(done: int, slabs: int) -> None:
            emit(progress, Progress(plan.units, plan.units, f"smoothing along z: slab {done}/{slabs}",
                                    stage="predict"))

        stopped = writer.smooth_along_z(sigma, plan.options.memory_limit_mb, report=report,
                                        stop_event=stop_event)
        return stopped, None
    assert result is not None
    return False, to_storage(smooth_along_z(result, sigma), plan.options.output_dtype)


def _check_z_smoothing(options: PredictOptions, resume: bool, spec: OutputSpec | None,
                       shape: tuple[int, ...]) -> None:
    """One-line refusals of smoothing along z (see :mod:`.z_smoothing`), before any work."""
    if resume:
        raise ValueError("smoothing along z filters the finished output in place, so a partial "
                         "one cannot be resumed: drop --resume (resume=True) or --z-smoothing 0")
    if spec is not None:
        slab_sections(shape, options.z_smoothing, options.memory_limit_mb)


def _run_planes(plan: _Plan, writer: OutputWriter | None, progress: Sequence[ProgressCallback],
                stop_event: threading.Event | None) -> tuple[bool, np.ndarray | None]:
    """Tri-planar (see :mod:`.triplanar`): each plane predicted in memory as float32, put back in
    the volume's axis order and summed, the mean smoothed along z when asked; stored in the output
    dtype."""
    summed: np.ndarray | None = None
    before, planes = 0, [plan, *plan.views]
    for name, view in zip(PLANES, planes):
        own = view.units - sum(v.units for v in view.views)
        report = offset_progress(progress, name, before, plan.units)
        cancelled, part = run_engine(view.model, view.device, view.job, view.source, view.blocks,
                                     view.slabs, view.shape, "float32", None, [report], stop_event)
        if cancelled:
            return True, None
        assert part is not None
        part = to_volume_order(part, view.source.axes)
        if summed is None:
            summed = np.ascontiguousarray(part)
        else:
            summed += part
        before += own
    assert summed is not None
    summed /= np.float32(len(planes))
    summed = smooth_along_z(summed, plan.options.z_smoothing)
    if writer is not None:
        writer.write(plan.source.whole(), summed)
        return False, None
    return False, to_storage(summed, plan.options.output_dtype)


def _plan_blocks(grid: WindowGrid, options: PredictOptions, in_channels: int, out_channels: int,
                 scheduler: str, prefetch: bool = True,
                 stream: bool = False) -> tuple[list[Block], bool]:
    """(blocks, are z-slabs): [] for MONAI's whole-volume inference (when it fits in memory).

    With ``stream`` (a GPU writing to a store) a volume that fits still runs as z-slabs: the GPU
    keeps the sums, the next slab is read and finished pieces are written while it computes, so
    reading and writing hide behind the network instead of coming before and after it.

    In a single process, blocks become z-slabs of the same z-size spanning the whole y-x plane
    (overlap-add, each window computed once) when their y and x already cover the volume, or when
    such a slab's working memory stays within half of ``memory_limit_mb`` (the rest is headroom
    for the model, the reader and the writer); otherwise blocks stay independent (and always
    with dask, whose tasks must not depend on each other)."""
    limit = options.memory_limit_mb * _MB
    block_size = options.block_size
    if block_size is None:
        fits = whole_volume_bytes(grid, in_channels, out_channels) <= limit
        if scheduler == "local" and fits and stream:
            slabs = plan_blocks(grid, (_stream_thickness(grid), *grid.padded[1:]))
            return slabs, len(slabs) > 0
        if scheduler == "local" and fits:
            return [], False
        block_size = auto_block_size(grid, in_channels, out_channels, options.batch_size, limit)
        logger.info("volume %s is predicted in blocks of %s", shape_text(grid.shape),
                    shape_text(block_size))
    blocks = plan_blocks(grid, block_size)
    if scheduler != "local":
        return blocks, False
    covers = all(blocks[0].core[a][1] - blocks[0].core[a][0] >= grid.padded[a] for a in (1, 2))
    thickness = blocks[0].core[0][1] - blocks[0].core[0][0]
    if covers or slab_bytes(grid, thickness, in_channels, out_channels, options.batch_size,
                            prefetch=prefetch) <= limit // 2:
        slabs = plan_blocks(grid, (thickness, *grid.padded[1:]))
        if not covers:
            logger.info("blocks of %s run as %d z-slabs of %d planes (each window once)",
                        shape_text(block_size), len(slabs), thickness)
        return slabs, len(slabs) > 0
    return blocks, False


def _stream_thickness(grid: WindowGrid, slabs: int = 4) -> int:
    """z-planes per slab when streaming: about a quarter of the volume (the first slab's read and
    the last piece's write are what is not hidden), in whole scan steps."""
    step = grid.starts[0][1] - grid.starts[0][0] if len(grid.starts[0]) > 1 else grid.window[0]
    return max(1, math.ceil(grid.padded[0] / slabs / step)) * step


def _load(checkpoint_or_model: Any, cfg: Any) -> tuple[torch.nn.Module, Any, Path | None]:
    """(model, training config, checkpoint path or None)."""
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from ..models.checkpoint import load_model_from_checkpoint

        path = Path(checkpoint_or_model)
        model, checkpoint_cfg = load_model_from_checkpoint(path)
        if cfg is not None:
            logger.warning("cfg= is ignored: %s carries the config its model was trained with",
                           path)
        return model, checkpoint_cfg, path
    if not isinstance(checkpoint_or_model, torch.nn.Module):
        raise ValueError("predict takes a checkpoint path or a torch model, "
                         f"not {type(checkpoint_or_model).__name__}")
    if cfg is None:
        raise ValueError("a model object needs its training config: pass cfg= "
                         "(or give the checkpoint path instead)")
    from ..config import as_config

    return checkpoint_or_model, as_config(cfg), None


def _check_scheduler(scheduler: str | None, address: str | None, spec: OutputSpec | None,
                     checkpoint_or_model: Any) -> str:
    scheduler = scheduler or "local"
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
    if scheduler == "local":
        if address is not None:
            raise ValueError("address= is for scheduler='dask'; "
                             "pass scheduler='dask' (--scheduler dask) with it")
        return scheduler
    if spec is None or spec.kind not in ("zarr", "precomputed"):
        where = ("no output was given" if spec is None
                 else f"{spec.path} is HDF5, which several processes cannot write")
        raise ValueError(f"scheduler='dask' writes blocks into a shared Zarr store (or precomputed "
                         f"folder) but {where}; "
                         "pass output='pred.zarr' (--output pred.zarr)")
    if not isinstance(checkpoint_or_model, (str, os.PathLike)):
        raise ValueError("scheduler='dask' loads the model on each worker from a checkpoint: "
                         "pass the checkpoint path, not a model object")
    return scheduler


def _refuse_input_as_output(volume: Volume, spec: OutputSpec) -> None:
    """Overwriting the file being read would destroy the input."""
    source, _ = parse_volume_path(volume.source)
    if source.exists() and spec.path.exists() and spec.path.resolve() in (
            source.resolve(), *source.resolve().parents):  # also a volume inside it (precomputed)
        raise ValueError(f"the output {spec.path} is the input file; "
                         "write the prediction to another file")

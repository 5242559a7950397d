"""`train()`: the one entry point of training, shared by the CLI and the napari widget."""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from ..config import ConfigError, as_config, save_config
from ..progress import Progress, ProgressCallback, emit
from .callbacks import ProgressRelay, TimedLastCheckpoint
from .snapshot_average import SnapshotAverage, snapshots_averaged
from .checkpoint import AtomicCheckpointIO, load_checkpoint, model_state_dict
from .datamodule import TrainingData, VolumeDataModule
from .disk import DiskFullError, no_space
from .module import LOGGED_METRICS, SegmentationModule, monitored_metric
from .precision import AUTO, resolve_precision
from .run_data import absolute_spec, record_training_data
from .result import TrainResult
from .run_dir import new_run_dir

__all__ = ["TrainResult", "build_trainer", "resolve_devices", "train"]

logger = logging.getLogger(__name__)

PATH_KEYS = ("train_image", "train_label", "val_image", "val_label")
RUN_DIR_ENV = "NAPARI_CONNECTOMICS_RUN_DIR"


def train(
    cfg: Any,
    data: TrainingData | Any | None = None,
    callbacks: Sequence[ProgressCallback | L.Callback] = (),
    stop_event: threading.Event | None = None,
    resume: str | os.PathLike | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    enable_progress_bar: bool = False,
) -> TrainResult:
    """Train the configured network and return where its checkpoints are.

    Args:
        cfg: a config from :func:`load_config` (or a partial mapping merged onto the defaults).
        data: in-memory volumes (:class:`TrainingData`, or (image, label) pairs) instead of the
            config's paths, e.g. napari layers.
        callbacks: progress callbacks (called with :class:`Progress`), and/or Lightning callbacks.
        stop_event: set it to stop after the step in flight; a loadable ``last.ckpt`` is written.
        resume: a checkpoint of this project to continue (optimizer, scheduler and step count).
        run_dir: the run folder; default ``<training.output_dir>/<training.name>/<timestamp>``.
    """
    cfg = copy.deepcopy(as_config(cfg))  # the run's own: its data paths may point into the run folder
    _check_monitor(cfg)
    _absolute_paths(cfg)
    if resume is not None:
        load_checkpoint(resume)  # refuse unsafe or foreign files before Lightning opens them
    if cfg.system.torch_threads:
        torch.set_num_threads(cfg.system.torch_threads)
    L.seed_everything(cfg.system.seed, workers=True, verbose=False)
    datamodule = VolumeDataModule(cfg, data)
    datamodule.setup("fit")  # open the volumes first: a wrong path fails before any file is written

    child = os.environ.get(RUN_DIR_ENV) and int(os.environ.get("LOCAL_RANK", "0")) > 0
    if child:  # a DDP process that Lightning launched: rank 0 made the run folder and saved the config
        run_dir = Path(os.environ[RUN_DIR_ENV])
    else:
        run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
    with _naming_a_full_disk(run_dir):
        return _train(cfg, datamodule, run_dir, callbacks, stop_event, resume, bool(child), enable_progress_bar)


def _train(cfg: DictConfig, datamodule: VolumeDataModule, run_dir: Path, callbacks: Sequence[Any],
           stop_event: threading.Event | None, resume: str | os.PathLike | None, child: bool,
           enable_progress_bar: bool) -> TrainResult:
    if not child:
        run_dir.mkdir(parents=True, exist_ok=True)
        if datamodule.data is not None:
            record_training_data(cfg, datamodule.data, run_dir)
        save_config(cfg, run_dir / "config.yaml")
        os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the DDP processes Lightning starts
    checkpoint_dir = Path(cfg.checkpoint.dirpath).expanduser().resolve() if cfg.checkpoint.dirpath else run_dir / "checkpoints"

    module = SegmentationModule(cfg, held_out=datamodule.held_out)
    monitor = monitored_metric(cfg.checkpoint.monitor, datamodule.held_out)
    if monitor != cfg.checkpoint.monitor:
        logger.info("checkpoint.monitor %s follows %s: nothing is held out for validation",
                    cfg.checkpoint.monitor, monitor)
    if cfg.model.pretrained and resume is None:
        init_from_pretrained(module.model, cfg.model.pretrained)

    progress_callbacks = [c for c in callbacks if not isinstance(c, L.Callback)]
    relay = ProgressRelay(progress_callbacks, stop_event)
    # No "-v1" suffixes: last.ckpt is one file that the epoch and the timed checkpointers both replace.
    checkpointer = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="epoch{epoch}-step{step}", auto_insert_metric_name=False,
        monitor=monitor, mode=cfg.checkpoint.mode, save_top_k=cfg.checkpoint.save_top_k,
        save_last=cfg.checkpoint.save_last, every_n_epochs=cfg.checkpoint.every_n_epochs,
        enable_version_counter=False)
    minutes = cfg.checkpoint.every_n_minutes
    timed = [TimedLastCheckpoint(checkpoint_dir, minutes)] if minutes is not None else []
    extra = [c for c in callbacks if isinstance(c, L.Callback)]
    averaged = snapshots_averaged(cfg.training.snapshot_average)
    averaging = [SnapshotAverage(averaged)] if averaged else []
    trainer = build_trainer(cfg, run_dir, [relay, *averaging, checkpointer, *timed, *extra], enable_progress_bar)

    logger.info("Run folder %s", run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume is not None else None)

    stopped = relay.stopped
    last = checkpoint_dir / "last.ckpt"
    # ModelCheckpoint writes last.ckpt at validation/epoch ends (and every_n_minutes) only; a run that
    # ends mid-epoch (max_steps, Stop) must still leave its final state behind.
    if stopped or cfg.checkpoint.save_last or timed or not last.exists():
        trainer.save_checkpoint(last, weights_only=False)
    best = Path(checkpointer.best_model_path) if checkpointer.best_model_path else None
    score = checkpointer.best_model_score
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result = TrainResult(run_dir=run_dir, checkpoint_dir=checkpoint_dir, best_checkpoint=best, last_checkpoint=last,
                         best_score=float(score) if score is not None else None, monitor=monitor,
                         global_step=trainer.global_step, stopped=stopped, metrics=metrics,
                         global_rank=trainer.global_rank, validation=datamodule.validation,
                         held_out=datamodule.held_out,
                         min_score=cfg.checkpoint.min_score if cfg.checkpoint.mode == "max" else None,
                         offer=cfg.checkpoint.offer,
                         averaged=averaged)
    emit(progress_callbacks, Progress(trainer.global_step, trainer.global_step, "stopped" if stopped else "done",
                                      metrics, stage="stopped" if stopped else "done"))
    return result


@contextmanager
def _naming_a_full_disk(run_dir: Path) -> Iterator[None]:
    """A full disk anywhere in the run (checkpoint, config, logs) is one DiskFullError naming the path."""
    try:
        yield
    except Exception as err:
        full = no_space(err)
        if full is None or isinstance(err, DiskFullError):
            raise
        if isinstance(full, DiskFullError):  # a later failure (e.g. the loggers' last write) hid it
            raise full from None
        raise DiskFullError(full.filename or run_dir) from err


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback], enable_progress_bar: bool) -> L.Trainer:
    """A Lightning Trainer from the config (devices, precision, limits, logging)."""
    accelerator, devices = resolve_devices(cfg)
    precision = resolve_precision(cfg.training.precision, accelerator)
    if cfg.training.precision == AUTO:
        logger.info("training.precision=auto: %s on %s", precision, accelerator.upper())
    strategy = cfg.system.strategy
    if strategy == "auto" and isinstance(devices, int) and devices > 1:
        strategy = "ddp"
    # The run folder already holds config.yaml; CSVLogger only adds metrics.csv beside it.
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    if importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
    t = cfg.training
    step_validation = t.val_check_interval is not None
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=cfg.system.num_nodes,
        strategy=strategy,
        precision=precision,
        max_epochs=None if t.max_steps else t.max_epochs,
        max_steps=t.max_steps or -1,
        max_time=t.max_time,
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        val_check_interval=t.val_check_interval if step_validation else None,
        check_val_every_n_epoch=None if step_validation else 1,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=cfg.system.deterministic,
        # Patches have one fixed size: let cuDNN pick its fastest kernels once (2x for MedNeXt under AMP).
        benchmark=not cfg.system.deterministic,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )


def resolve_devices(cfg: DictConfig) -> tuple[str, int | str]:
    """Accelerator and device count; asking for more GPUs than the machine has falls back with a warning."""
    accelerator = cfg.system.accelerator
    wanted = cfg.system.devices or cfg.system.num_gpus
    available = torch.cuda.device_count()
    if accelerator == "cpu":
        return "cpu", cfg.system.devices or 1
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and cfg.system.num_gpus > 0):
        if available == 0:
            logger.warning("system.num_gpus=%d but this machine has no GPU: training on the CPU", max(wanted, 1))
            return "cpu", 1
        if wanted > available:
            logger.warning("system.num_gpus=%d but this machine has %d: using %d", wanted, available, available)
        return "gpu", max(1, min(wanted, available))
    if accelerator == "auto":
        return "cpu", cfg.system.devices or 1
    return accelerator, cfg.system.devices or 1


def init_from_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Fine-tune start: load the weights whose names and shapes fit and name the rest, so a new
    input or class count (first/last layer) retrains only those layers; a MedNeXt with a larger
    kernel gets UpKern. Refuses (one line) a checkpoint that would leave most weights untrained."""
    from ..models.architectures.wrappers import MedNeXtModel

    state = model_state_dict(load_checkpoint(path))
    target = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    resizable = [k for k, v in state.items() if k in target and k not in fitting
                 and v.ndim == target[k].ndim > 2 and v.shape[:2] == target[k].shape[:2]]
    if resizable and isinstance(model, MedNeXtModel):
        from ..models.architectures.mednext import upkern_load_weights

        upkern_load_weights(model.network, {k.removeprefix("network."): v for k, v in state.items()})
        logger.info("Initialised from %s with UpKern (%d kernels resized)", path, len(resizable))
        return
    share = sum(v.numel() for v in fitting.values()) / max(1, sum(v.numel() for v in target.values()))
    if share < 0.5:
        raise ConfigError("model.pretrained", str(path),
                          f"its weights do not fit this architecture ({share:.0%} of the values fit); "
                          "use a checkpoint of the same network")
    model.load_state_dict(fitting, strict=False)
    reshaped = [f"{k} {tuple(state[k].shape)} -> {tuple(v.shape)}" for k, v in target.items()
                if k in state and k not in fitting]
    absent = [k for k in target if k not in state]
    reasons = ((reshaped, "shape differs (checkpoint -> this network)"), (absent, "not in the checkpoint"))
    skipped = "".join(f"; {len(names)} skipped, {why}: {', '.join(names[:8])}"
                      + (f" and {len(names) - 8} more" if len(names) > 8 else "")  # readable for a whole network
                      for names, why in reasons if names)
    logger.info("Initialised from %s: %d of %d weights loaded%s", path, len(fitting), len(target), skipped)


def _check_monitor(cfg: DictConfig) -> None:
    if cfg.checkpoint.monitor not in LOGGED_METRICS:
        raise ConfigError("checkpoint.monitor", cfg.checkpoint.monitor,
                          f"it is not logged; choose one of {', '.join(LOGGED_METRICS)}")


def _absolute_paths(cfg: DictConfig) -> None:
    """Relative data paths mean relative to where the command runs; the saved config keeps them absolute."""
    for key in PATH_KEYS:
        if cfg.data[key]:
            cfg.data[key] = absolute_spec(cfg.data[key])
    if cfg.model.pretrained and not Path(cfg.model.pretrained).is_absolute():
        cfg.model.pretrained = str(Path.cwd() / cfg.model.pretrained)



"""The one typed config tree: every knob of the project is a field here, with a default and a help line.

The field metadata (``help``, ``choices``, ``minimum``) is read by the validator, by the CLI's
``info`` command and by the napari widgets that generate their options from these classes, so a
choice is declared once. YAML files and ``key=value`` overrides are merged onto these defaults by
:func:`napari_connectomics.config.load_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..registry import POSTPROCESSORS, TARGETS

__all__ = [
    "AugmentationConfig",
    "CheckpointConfig",
    "ConnectomicsConfig",
    "DataConfig",
    "InferenceConfig",
    "ModelConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "SystemConfig",
    "TrainingConfig",
    "knob",
]


def knob(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A dataclass field carrying its documentation and its valid values.

    Mutable defaults (lists) are wrapped in a factory so each config gets its own copy.
    """
    metadata = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return field(default=default, metadata=metadata)


PRECISIONS = ("auto", "32", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "16", "bf16")


@dataclass
class SystemConfig:
    """Where and how the work runs."""

    num_gpus: int = knob(0, "GPUs to use; more than the machine has falls back to what it has", minimum=0)
    num_cpus: int = knob(2, "CPU worker processes for data loading", minimum=0)
    devices: Optional[int] = knob(None, "devices (processes) per machine; unset: num_gpus GPUs, or one CPU process",
                                  minimum=1)
    num_nodes: int = knob(1, "machines for multi-node DDP", minimum=1)
    accelerator: str = knob("auto", "Lightning accelerator", choices=("auto", "cpu", "gpu", "cuda", "mps"))
    strategy: str = knob("auto", "Lightning strategy; 'auto' picks ddp when several devices are used",
                         choices=("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp"))
    seed: int = knob(42, "random seed for weights, sampling and augmentation")
    deterministic: bool = knob(False, "ask torch for deterministic kernels (slower)")
    torch_threads: Optional[int] = knob(None, "cap torch's CPU threads (the GUI keeps a core free)", minimum=1)


@dataclass
class ModelConfig:
    """The network: architecture name plus its options (the plan's field names)."""

    architecture: str = knob("monai_basic_unet3d", "registered architecture, see `napari-connectomics list-architectures`")
    spatial_dims: int = knob(3, "2 for a slice-wise network, 3 for a volumetric one", choices=(2, 3))
    input_size: Optional[list[int]] = knob(None, "fixed network input size (UNETR); defaults to data.patch_size")
    in_channels: int = knob(1, "image channels", minimum=1)
    out_channels: int = knob(2, "output channels (classes, or 1 for a sigmoid binary output)", minimum=1)
    pretrained: Optional[str] = knob(None, "checkpoint to initialise from (fine-tune; UpKern for a larger MedNeXt kernel)")

    # General options shared by several architectures.
    filters: list[int] = knob([32, 64, 128, 256, 512], "feature channels per level (MONAI U-Nets)")
    kernel_size: int = knob(3, "convolution kernel size (MedNeXt: 3, 5 or 7)", minimum=1)
    dropout: float = knob(0.0, "dropout probability", minimum=0.0, maximum=1.0)
    norm: str = knob("batch", "normalisation layer (MONAI networks)", choices=("batch", "instance", "group", "layer"))
    activation: str = knob("relu", "activation (MONAI networks)", choices=("relu", "leakyrelu", "prelu", "elu", "gelu"))
    num_res_units: int = knob(2, "residual units per level (monai_unet)", minimum=0)
    feature_size: Optional[int] = knob(None, "transformer feature size (UNETR 16, SwinUNETR 24 when unset)", minimum=1)
    hidden_size: int = knob(768, "transformer hidden size (UNETR)", minimum=1)
    mlp_dim: int = knob(3072, "transformer MLP size (UNETR)", minimum=1)
    num_heads: int = knob(12, "attention heads (UNETR)", minimum=1)
    pos_embed: str = knob("conv", "patch embedding (UNETR)", choices=("conv", "perceptron"))
    attn_drop_rate: float = knob(0.0, "attention dropout (SwinUNETR)", minimum=0.0, maximum=1.0)
    dropout_path_rate: float = knob(0.0, "stochastic depth (SwinUNETR)", minimum=0.0, maximum=1.0)
    use_checkpoint: bool = knob(False, "gradient checkpointing (SwinUNETR) to trade compute for memory")
    init_filters: int = knob(16, "first-level channels (SegResNet)", minimum=1)

    # Deep supervision (MedNeXt).
    deep_supervision: bool = knob(False, "extra outputs at 1/2..1/16 resolution, each with its own loss")
    deep_supervision_weights: Optional[list[float]] = knob(
        None, "loss weight per scale, full resolution first; default halving per scale (1, 1/2, 1/4, ...), "
        "normalised")

    # MedNeXt (the plan's names).
    mednext_size: str = knob("S", "MedNeXt preset size", choices=("S", "B", "M", "L"))
    mednext_base_channels: int = knob(32, "MedNeXt base channels C (mednext_custom)", minimum=1)
    mednext_exp_r: Any = knob(4, "MedNeXt expansion ratio: an int or 9 ints (mednext_custom)")
    mednext_do_res: bool = knob(True, "residual connections inside MedNeXt blocks (mednext_custom)")
    mednext_do_res_up_down: bool = knob(True, "residual connections in MedNeXt up/down blocks (mednext_custom)")
    mednext_block_counts: list[int] = knob([2] * 9, "MedNeXt blocks per stage, 9 ints (mednext_custom)")
    mednext_checkpoint: Optional[str] = knob(
        None, "gradient checkpointing: 'outside_block' (M/L presets use it), or unset for the preset's choice",
        choices=(None, "outside_block", "none"))
    mednext_norm: str = knob("group", "MedNeXt normalisation", choices=("group", "layer"))
    mednext_dim: Optional[str] = knob(None, "alias of spatial_dims kept for the plan's configs ('2d' or '3d')",
                                      choices=(None, "2d", "3d"))
    mednext_grn: bool = knob(False, "global response normalisation in MedNeXt blocks (off in the presets)")
    mednext_impl: str = knob("ours", "'ours', or 'official' to use nnunet_mednext when importable",
                             choices=("ours", "official"))

    # Loss (kept in the model section, as in the plan).
    loss_functions: list[str] = knob(["DiceLoss"], "losses summed for training (registered loss names)")
    loss_weights: list[float] = knob([1.0], "weight of each loss in loss_functions")


@dataclass
class AugmentationConfig:
    """Training augmentation; each transform has its own probability (0 switches it off)."""

    enabled: bool = knob(True, "apply augmentation while training")
    flip: float = knob(0.5, "probability of a random flip per axis", minimum=0.0, maximum=1.0)
    rotate90: float = knob(0.5, "probability of an in-plane 90-degree rotation", minimum=0.0, maximum=1.0)
    affine: float = knob(0.0, "probability of a random affine (rotation, scale)", minimum=0.0, maximum=1.0)
    elastic: float = knob(0.0, "probability of an elastic deformation", minimum=0.0, maximum=1.0)
    intensity: float = knob(0.5, "probability of brightness/contrast/gamma jitter", minimum=0.0, maximum=1.0)
    noise: float = knob(0.1, "probability of Gaussian noise", minimum=0.0, maximum=1.0)
    missing_section: float = knob(0.0, "probability of a blanked z-section (EM)", minimum=0.0, maximum=1.0)
    misalignment: float = knob(0.0, "probability of a shifted z-section block (EM)", minimum=0.0, maximum=1.0)
    motion_blur: float = knob(0.0, "probability of in-plane motion blur on a section (EM)", minimum=0.0, maximum=1.0)


@dataclass
class DataConfig:
    """Where the volumes are and how training patches are drawn from them."""

    train_image: Optional[str] = knob(None, "training image: file.h5:key, file.zarr/array, file.tif, file.npy")
    train_label: Optional[str] = knob(None, "training labels, same shape as the image")
    val_image: Optional[str] = knob(None, "validation image (else a z-range of the training volume)")
    val_label: Optional[str] = knob(None, "validation labels")
    val_fraction: float = knob(0.2, "share held out for validation when no val_image is given: the last z-range "
                               "(dense labels), or see sparse_validation",
                               minimum=0.0, maximum=0.9)
    sparse_validation: str = knob(
        "pieces", "what sparse labels hold out (without data.val_image): 'pieces', val_fraction of each annotated "
        "section in tiles; 'sections', the last annotated sections; 'none', scores on the training annotation",
        choices=("pieces", "sections", "none"))
    patch_size: Optional[list[int]] = knob(None, "training patch, z-y-x (y-x for 2D); default 32x128x128 or 256x256")
    voxel_size: list[float] = knob([1.0, 1.0, 1.0], "physical voxel size z-y-x (anisotropic EM is common)")
    context_sections: int = knob(
        0, "2.5D input of a 2D network: this many neighbouring sections on each side of a section are extra "
        "input channels (z ascending, the section in the middle; clamped at the volume's ends); 0: the section "
        "alone", minimum=0)
    context_step: Optional[int] = knob(
        None, "sections between context neighbours; unset: from voxel_size, 1 when z is at least twice the "
        "in-plane size (anisotropic), more when it is finer (isotropic: 2)", minimum=1)
    batch_size: int = knob(2, "patches per step", minimum=1)
    num_workers: int = knob(0, "data-loader worker processes", minimum=0)
    in_memory_mb: int = knob(4096, "volumes up to this size are read into memory once (5x faster patches "
                             "from compressed HDF5); larger ones stay lazy", minimum=0)
    samples_per_epoch: int = knob(200, "random patches drawn per training epoch", minimum=1)
    label_mode: str = knob("dense", "dense: 0 is background; sparse: 0 is unannotated, 1 background, 2.. classes",
                           choices=("dense", "sparse"))
    target: str = knob("binary", "what the network learns from the labels (a registered target)",
                       choices=TARGETS)
    foreground_sampling: str = knob("balanced", "how patches are chosen so sparse objects are seen",
                                    choices=("none", "rejection", "balanced"))
    foreground_ratio: float = knob(0.5, "share of patches centred on foreground", minimum=0.0, maximum=1.0)
    normalize: str = knob("percentile", "intensity normalisation", choices=("none", "minmax", "percentile", "zscore"))
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class OptimizerConfig:
    name: str = knob("AdamW", "optimizer", choices=("AdamW", "Adam", "SGD"))
    lr: float = knob(1e-3, "learning rate", minimum=0.0)
    weight_decay: float = knob(1e-4, "weight decay", minimum=0.0)
    momentum: float = knob(0.99, "momentum (SGD)", minimum=0.0, maximum=1.0)
    betas: list[float] = knob([0.9, 0.999], "Adam betas")
    eps: float = knob(1e-8, "Adam epsilon (1e-4 under fp16, as MedNeXt does)", minimum=0.0)


@dataclass
class SchedulerConfig:
    name: str = knob("none", "learning-rate schedule", choices=("none", "cosine", "poly", "step", "plateau"))
    warmup_steps: int = knob(0, "linear warm-up steps", minimum=0)
    poly_power: float = knob(0.9, "exponent of the poly decay", minimum=0.0)
    step_size: int = knob(1000, "steps between decays (step)", minimum=1)
    gamma: float = knob(0.1, "decay factor (step, plateau)", minimum=0.0, maximum=1.0)
    patience: int = knob(5, "validations without improvement before a decay (plateau)", minimum=0)
    min_lr: float = knob(0.0, "lower bound of the learning rate", minimum=0.0)


@dataclass
class TrainingConfig:
    name: str = knob("connectomics", "run name: runs/<name>/<timestamp>/")
    output_dir: str = knob("runs", "folder holding the runs")
    max_epochs: int = knob(100, "epochs to train", minimum=1)
    max_steps: Optional[int] = knob(None, "optimizer steps to train; takes precedence over max_epochs", minimum=1)
    max_time: Optional[str] = knob(None, "wall-clock limit DD:HH:MM:SS (e.g. 00:00:20:00); training stops there")
    precision: str = knob("32", "Lightning precision; auto: bf16-mixed where the device computes bfloat16 "
                          "natively (a CPU with AVX512-BF16 or AMX, a recent GPU), else 16-mixed on a GPU and 32 on "
                          "a CPU", choices=PRECISIONS)
    gradient_clip_val: float = knob(0.0, "gradient norm clip (0: off)", minimum=0.0)
    accumulate_grad_batches: int = knob(1, "batches per optimizer step", minimum=1)
    val_check_interval: Optional[int] = knob(None, "validate every N training steps (default: each epoch)", minimum=1)
    val_patches: Optional[int] = knob(8, "validation patches per run; null tiles the whole validation region", minimum=1)
    snapshot_average: int = knob(0, "validate and checkpoint the mean of the weights at the last N validations "
                                 "(0 or 1: off): steadier on few annotations with a constant rate", minimum=0)
    log_every_n_steps: int = knob(10, "logging interval", minimum=1)
    max_nonfinite_steps: int = knob(3, "non-finite losses in a row before the run stops", minimum=1)


@dataclass
class CheckpointConfig:
    monitor: str = knob("val/loss", "metric deciding the best checkpoint")
    mode: str = knob("min", "whether the monitored metric should go down or up", choices=("min", "max"))
    min_score: Optional[float] = knob(
        None, "with mode max: a run whose best monitored score stays below this offers its last checkpoint "
        "instead of its best (e.g. a held-out IoU that only noise reached while the model was undecided)")
    offer: str = knob("best", "the checkpoint a run offers to Segment, fine-tuning and its result: the best by "
                      "monitor, or the last (with training.snapshot_average, the latest mean)", choices=("best", "last"))
    save_top_k: int = knob(1, "best checkpoints kept (-1: all)", minimum=-1)
    save_last: bool = knob(True, "also keep last.ckpt")
    dirpath: Optional[str] = knob(None, "checkpoint folder (default: <run>/checkpoints)")
    every_n_epochs: int = knob(1, "checkpoint interval in epochs", minimum=1)
    every_n_minutes: Optional[float] = knob(
        5.0, "also save last.ckpt every N minutes of training, however long an epoch is, so a killed run "
        "resumes (train --resume) from at most N minutes back (null: off)", minimum=0.01)


@dataclass
class InferenceConfig:
    window_size: Optional[list[int]] = knob(None, "sliding window, z-y-x (default: the training patch)")
    overlap: float = knob(0.25, "fraction of a window shared with its neighbour", minimum=0.0, maximum=0.95)
    batch_size: int = knob(4, "windows per forward pass", minimum=1)
    blending: str = knob("gaussian", "how overlapping windows are blended", choices=("gaussian", "constant"))
    padding_mode: str = knob("constant", "padding at the volume border", choices=("constant", "reflect", "replicate"))
    tta: bool = knob(False, "test-time augmentation with flips (and in-plane rot90)")
    triplanar: bool = knob(False, "2D networks on isotropic volumes: predict the xy, xz and yz planes and "
                           "average the three probability volumes")
    z_smoothing: float = knob(0.0, "smooth the probabilities along z with a Gaussian of this sigma, in sections, "
                              "before thresholding (0: off); for 2D networks on isotropic stacks (FIB-SEM), whose "
                              "sections are predicted one by one", minimum=0.0, maximum=16.0)
    device: str = knob("auto", "device for the windows", choices=("auto", "cpu", "cuda", "gpu", "mps"))
    precision: str = knob("32", "arithmetic of the forward pass on a CUDA GPU (16-mixed, bf16-mixed: autocast; "
                           "a CPU always computes in float32)", choices=("32", "16-mixed", "bf16-mixed"))
    threshold: float = knob(0.5, "foreground probability threshold", minimum=0.0, maximum=1.0)
    instances: str = knob("none", "post-processing (a registered post-processor)", choices=POSTPROCESSORS)
    min_size: int = knob(0, "objects smaller than this (voxels) are removed", minimum=0)
    output_dtype: str = knob("float16", "stored probabilities", choices=("float16", "uint8", "float32"))
    block_size: Optional[list[int]] = knob(None, "block size for volumes larger than memory, z-y-x")
    memory_limit_mb: int = knob(4096, "memory for one prediction: larger volumes (and each automatic block) "
                                "are planned to fit it", minimum=1)


@dataclass
class ConnectomicsConfig:
    """The whole run: the sections of the plan, each a typed dataclass."""

    system: SystemConfig = field(default_factory=SystemConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

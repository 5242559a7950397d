"""Convert a PyTorch Connectomics v1 (YACS) config into a napari-connectomics config.

PyTorch Connectomics (PyTC) v1 configs are YACS files with upper-case sections (``SYSTEM``,
``MODEL``, ``DATASET``, ``AUGMENTOR``, ``SOLVER``, ``MONITOR``, ``INFERENCE``). Each leaf key is
looked up in :data:`LEGACY_KEYS`, the one table of the conversion: a key maps to ``Map(our keys,
converter)`` or to a one-line reason why it has no counterpart here. The conversion and its report
both read that table, so what is converted and what is said about it cannot drift apart.

A legacy file may name a base config with ``_BASE_:`` (a path relative to the file; a list of
paths is merged in order); the base is merged first and the file overrides it, like PyTC's
``--config-base``. The converted values are validated with :func:`load_config`; a value that does
not fit this project (a patch size the network cannot take, say) moves its legacy key to the
unmapped list with the validator's reason, so the written file always loads.

This module only reads PyTC's key names and default values (as documented in its
``connectomics/config/defaults.py``); nothing of PyTC is imported or copied.
"""

from __future__ import annotations

import ast
import os
import posixpath
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import OmegaConf

from ..registry import ARCHITECTURES, closest
from .errors import ConfigError

__all__ = [
    "LEGACY_KEYS",
    "Conversion",
    "Map",
    "convert_legacy_config",
    "read_legacy_config",
    "write_new_file",
]

BASE_KEY = "_BASE_"
PYTC_SECTIONS = ("SYSTEM", "MODEL", "DATASET", "AUGMENTOR", "SOLVER", "MONITOR", "INFERENCE")
REQUIRED_SECTIONS = ("MODEL", "DATASET", "SOLVER")  # a PyTC config names at least one of them


class Unmapped(Exception):
    """Raised by a converter: this value has no counterpart here (the message is the reason)."""


class Map(NamedTuple):
    """A legacy key that converts: ``ours`` is our dotted key (or keys, when ``convert`` returns a
    tuple); ``convert(value, ctx)`` returns our value(s). ``convert=None``: the key is read by the
    converters of ``ours`` (e.g. DATASET.INPUT_PATH is joined into the image paths)."""

    ours: str | tuple[str, ...]
    convert: Callable[[Any, "_Context"], Any] | None

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.ours,) if isinstance(self.ours, str) else tuple(self.ours)


Rule = Map | str  # a str is the reason the key is not converted


# PyTC's defaults for the keys whose meaning other keys depend on (defaults.py of v1).
PYTC_DEFAULTS: dict[str, Any] = {
    "MODEL.ARCHITECTURE": "unet_3d",
    "MODEL.INPUT_SIZE": [8, 256, 256],
    "MODEL.TARGET_OPT": ["0"],
    "MODEL.LOSS_OPTION": [["WeightedBCE"]],
    "MODEL.LOSS_WEIGHT": [[1.0]],
    "DATASET.INPUT_PATH": "path/to/input",
    "DATASET.IS_ABSOLUTE_PATH": False,
    "AUGMENTOR.ROTATE.ROT90": True,
    "AUGMENTOR.ROTATE.P": 1.0,
    "AUGMENTOR.RESCALE.P": 0.5,
    "AUGMENTOR.FLIP.P": 1.0,
    "AUGMENTOR.ELASTIC.P": 0.75,
    "AUGMENTOR.GRAYSCALE.P": 0.75,
    "AUGMENTOR.MISSINGSECTION.P": 0.5,
    "AUGMENTOR.MISALIGNMENT.P": 0.5,
    "AUGMENTOR.MOTIONBLUR.P": 0.5,
    "SOLVER.LR_SCHEDULER_NAME": "MultiStepLR",
    "SOLVER.ITERATION_STEP": 1,
    "SOLVER.STEPS": (30000, 35000),
    "SOLVER.WARMUP_ITERS": 1000,
    "SOLVER.CLIP_GRADIENTS.ENABLED": False,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "value",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0,
    "INFERENCE.AUG_MODE": "mean",
    "INFERENCE.AUG_NUM": None,
    "INFERENCE.INPUT_SIZE": None,
}


# --- the context converters read ------------------------------------------------------------------

class _Context:
    """The merged legacy values (flat, dotted) plus what our config holds for a key."""

    def __init__(self, flat: Mapping[str, Any]) -> None:
        self.flat = flat
        self.notes: list[str] = []

    def get(self, key: str) -> Any:
        """The legacy value of ``key``, or PyTC's default when the file does not set it."""
        return self.flat[key] if key in self.flat else PYTC_DEFAULTS.get(key)

    def has(self, key: str) -> bool:
        return key in self.flat

    def note(self, text: str) -> None:
        self.notes.append(text)

    def ours(self, key: str) -> Any:
        """What the converted config will hold at our ``key``: the conversion of the legacy key that
        maps to it (notes discarded), else our default."""
        for legacy, rule in LEGACY_KEYS.items():
            if isinstance(rule, Map) and rule.convert is not None and key in rule.keys and legacy in self.flat:
                try:
                    value = rule.convert(self.flat[legacy], _Context(self.flat))
                except (Unmapped, TypeError, ValueError, KeyError, IndexError):
                    break
                return value[rule.keys.index(key)] if len(rule.keys) > 1 else value
        return _our_default(key)


def _our_default(key: str) -> Any:
    from .io import default_config

    value = OmegaConf.select(default_config(), key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


# --- value converters -----------------------------------------------------------------------------

def _int(value: Any, ctx: _Context) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(value)
    return int(value)


def _float(value: Any, ctx: _Context) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _bool(value: Any, ctx: _Context) -> bool:
    if not isinstance(value, (bool, int)):
        raise ValueError(value)
    return bool(value)


def _ints(value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(value)
    return [_int(v, None) for v in value]  # type: ignore[arg-type]


# MODEL.ARCHITECTURE -> (our architecture, spatial dims, note)
PYTC_ARCHITECTURES: dict[str, tuple[str, int, str]] = {
    "unet_3d": ("monai_unet", 3, "PyTC's 3D U-Net (residual blocks, in-plane-only downsampling at the first "
                "levels) -> monai_unet, MONAI's U-Net with residual units that downsamples every axis: the "
                "closest network here"),
    "unet_residual_3d": ("monai_unet", 3, "PyTC's residual 3D U-Net -> monai_unet (MONAI U-Net with residual "
                         "units, downsampling every axis): the closest network here"),
    "unet_plus_3d": ("monai_unet", 3, "PyTC's U-Net+ 3D -> monai_unet (MONAI U-Net with residual units): the "
                     "closest network here"),
    "fpn_3d": ("monai_unet", 3, "no FPN here; monai_unet (MONAI U-Net with residual units) is the closest "
               "encoder-decoder"),
    "unet_2d": ("monai_unet", 2, "PyTC's 2D U-Net -> monai_unet in 2D (residual units): the closest network here"),
    "unet_plus_2d": ("monai_unet", 2, "PyTC's U-Net+ 2D -> monai_unet in 2D: the closest network here"),
    "deeplabv3a": ("monai_unet", 2, "no DeepLabV3 here; monai_unet in 2D is the closest 2D network"),
    "deeplabv3b": ("monai_unet", 2, "no DeepLabV3 here; monai_unet in 2D is the closest 2D network"),
    "deeplabv3c": ("monai_unet", 2, "no DeepLabV3 here; monai_unet in 2D is the closest 2D network"),
    "unetr": ("monai_unetr", 3, ""),
    "swinunetr": ("monai_swin_unetr", 3, ""),
}


def _architecture(value: Any, ctx: _Context) -> tuple[str, int]:
    if value in ("super", "unet_super"):
        raise Unmapped("super-resolution networks have no counterpart (segmentation only)")
    if value not in PYTC_ARCHITECTURES:
        raise Unmapped(f"unknown PyTC architecture; known: {', '.join(PYTC_ARCHITECTURES)}")
    ours, dims, note = PYTC_ARCHITECTURES[value]
    if note:
        ctx.note(note)
    return ours, dims


def _arch_reads(ctx: _Context, name: str) -> None:
    arch = ctx.ours("model.architecture")
    if arch in ARCHITECTURES and name not in ARCHITECTURES.get(arch).fields:
        raise Unmapped(f"{arch} has no model.{name} option")


def _filters(value: Any, ctx: _Context) -> list[int]:
    _arch_reads(ctx, "filters")
    return _ints(value)


def _size_multiple(ctx: _Context) -> tuple[str, int]:
    """Our architecture and the multiple every patch size must be of."""
    from .io import default_config

    arch = ctx.ours("model.architecture")
    model = default_config().model
    model.filters = ctx.ours("model.filters")
    model.spatial_dims = ctx.ours("model.spatial_dims")
    return arch, (ARCHITECTURES.get(arch).size_multiple_for(model) if arch in ARCHITECTURES else 1)


def _fit_size(value: Any, ctx: _Context) -> list[int]:
    """A PyTC z-y-x size as ours: y-x for a 2D network, rounded to the network's size multiple."""
    size = _ints(value)
    if ctx.ours("model.spatial_dims") == 2 and len(size) == 3:
        size = size[1:]
    arch, multiple = _size_multiple(ctx)
    fitted = [max(multiple, round(s / multiple) * multiple) for s in size]
    if fitted != size:
        ctx.note(f"{size} rounded to {fitted}: {arch} needs sizes that are multiples of {multiple}")
    return fitted


def _window_size(value: Any, ctx: _Context) -> list[int] | None:
    return None if value is None else _fit_size(value, ctx)


def _stride_overlap(value: Any, ctx: _Context) -> float:
    window = ctx.get("INFERENCE.INPUT_SIZE") or ctx.get("MODEL.INPUT_SIZE")
    stride, window = _ints(value), _ints(window)
    if len(stride) != len(window):
        raise ValueError(value)
    pairs = list(zip(stride, window))[-2:] if ctx.ours("model.spatial_dims") == 2 else list(zip(stride, window))
    overlaps = [min(0.95, max(0.0, 1.0 - s / w)) for s, w in pairs if w > 1] or [0.0]  # a 1-voxel axis: 2D data
    overlap = round(min(overlaps), 2)
    if len({round(o, 2) for o in overlaps}) > 1:
        ctx.note(f"stride {stride} of window {window} overlaps {[round(o, 3) for o in overlaps]} per axis; "
                 f"one fraction here, the smallest ({overlap})")
    return overlap


PYTC_TARGETS = {"0": "binary mask", "1": "synaptic polarity", "2": "affinity", "3": "small-object mask",
                "4": "instance contour", "5": "quantized distance transform", "6": "distance transform",
                "9": "semantic classes"}


def _target(value: Any, ctx: _Context) -> str:
    options = [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    kinds = [o.split("-")[0] for o in options]
    dropped = [f"'{o}' ({PYTC_TARGETS.get(k, 'target option')})" for o, k in zip(options, kinds)
               if k not in ("0", "4", "9")]
    if "9" in kinds:
        ours = "semantic"
    elif "4" in kinds:
        ours = "instance"
        ctx.note("mask + contour ('0' + '4-...': PyTC's BC) -> the instance target: background, interior and "
                 "contour classes, decoded by a watershed")
    elif "0" in kinds:
        ours = "binary"
    else:
        raise Unmapped(f"targets {options} ({', '.join(PYTC_TARGETS.get(k, '?') for k in kinds)}) have no "
                       "counterpart; targets here: binary, instance, semantic")
    if dropped:
        ctx.note(f"dropped {', '.join(dropped)}: no such target here")
    return ours


def _out_planes(value: Any, ctx: _Context) -> int:
    planes = _int(value, ctx)
    target = ctx.ours("data.target")
    if target == "instance":
        if planes != 3:
            ctx.note(f"{planes} PyTC output channels (one sigmoid per target) -> 3 classes of the instance target")
        return 3
    if target == "binary" and planes not in (1, 2):
        ctx.note(f"{planes} channels -> 1 (a sigmoid foreground) for the binary target")
        return 1
    return planes


PYTC_LOSSES = {
    "WeightedBCE": "BCEWithLogitsLoss", "WeightedBCEWithLogitsLoss": "BCEWithLogitsLoss",
    "BCELoss": "BCEWithLogitsLoss", "BCEWithLogitsLoss": "BCEWithLogitsLoss",
    "DiceLoss": "DiceLoss", "JaccardLoss": "DiceLoss",
    "WeightedCE": "CrossEntropyLoss", "CrossEntropyLoss": "CrossEntropyLoss",
    "WeightedBCEFocalLoss": "FocalLoss", "FocalLoss": "FocalLoss",
}


def _losses(value: Any, ctx: _Context) -> tuple[list[str], list[float]]:
    """LOSS_OPTION and LOSS_WEIGHT (one list per target) -> one list of our losses with summed weights."""
    options, weights = ctx.get("MODEL.LOSS_OPTION"), ctx.get("MODEL.LOSS_WEIGHT")
    if options and not isinstance(options[0], (list, tuple)):  # an old flat form
        options, weights = [options], [weights]
    merged: dict[str, float] = {}
    dropped: list[str] = []
    for names, ws in zip(options, weights):
        if len(names) != len(ws):
            raise ValueError("MODEL.LOSS_WEIGHT does not match MODEL.LOSS_OPTION")
        for name, weight in zip(names, ws):
            if name in PYTC_LOSSES:
                ours = PYTC_LOSSES[name]
                merged[ours] = merged.get(ours, 0.0) + float(weight)
                if name == "JaccardLoss":
                    ctx.note("JaccardLoss -> DiceLoss (same optimum)")
            else:
                dropped.append(name)
    if not merged:
        ours = ", ".join(sorted(set(PYTC_LOSSES.values())))
        raise Unmapped(f"losses {dropped} have no counterpart; losses here: {ours}")
    if dropped:
        ctx.note(f"dropped {', '.join(sorted(set(dropped)))}: no such loss here (regression targets are not supported)")
    if len(options) > 1:
        ctx.note("one loss list per PyTC target merged into one list, weights of the same loss summed")
    return list(merged), list(merged.values())


def _norm(value: Any, ctx: _Context) -> str:
    _arch_reads(ctx, "norm")
    ours = {"bn": "batch", "sync_bn": "batch", "in": "instance", "gn": "group"}.get(value)
    if ours is None:
        raise Unmapped("every network here is normalised: choose batch, instance or group (model.norm)")
    if value == "sync_bn":
        ctx.note("sync_bn -> batch (not synchronised across GPUs)")
    return ours


def _activation(value: Any, ctx: _Context) -> str:
    _arch_reads(ctx, "activation")
    ours = {"relu": "relu", "elu": "elu", "leaky": "leakyrelu", "leaky_relu": "leakyrelu", "gelu": "gelu",
            "prelu": "prelu"}.get(value)
    if ours is None:
        raise Unmapped("activations here: relu, leakyrelu, prelu, elu, gelu (model.activation)")
    return ours


def _precision(value: Any, ctx: _Context) -> str:
    return "16-mixed" if _bool(value, ctx) else "32"


def _volume_path(kind: str) -> Callable[[Any, _Context], str | None]:
    """DATASET.<kind>_NAME joined to DATASET.INPUT_PATH, as PyTC does (unless IS_ABSOLUTE_PATH)."""

    def convert(value: Any, ctx: _Context) -> str | None:
        if value is None:
            return None
        names = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split("@")
        if not names:
            return None
        if any(n.endswith(".json") for n in names):
            raise Unmapped("tiled volumes described by JSON are not read here: write the tiles as one "
                           "HDF5/Zarr volume")
        if len(names) > 1:
            ctx.note(f"PyTC reads {len(names)} volumes; the config takes one here (the first): "
                     "concatenate them or train on each")
        root = ctx.get("DATASET.INPUT_PATH")
        if ctx.get("DATASET.IS_ABSOLUTE_PATH") or not root or os.path.isabs(names[0]):
            return names[0]
        return posixpath.join(str(root), names[0])

    convert.__name__ = f"_{kind.lower()}_path"
    return convert


def _output_path(value: Any, ctx: _Context) -> tuple[str, str]:
    path = str(value).rstrip("/\\")
    parent, name = posixpath.split(path.replace("\\", "/"))
    if not name:
        raise ValueError(value)
    return parent or ".", name


def _isotropic(value: Any, ctx: _Context) -> list[float]:
    if not _bool(value, ctx):
        raise Unmapped("anisotropic data: set data.voxel_size to the voxel size (z, y, x), e.g. [30, 8, 8]")
    return [1.0, 1.0, 1.0]


def _normalize(value: Any, ctx: _Context) -> str:
    return "minmax" if _bool(value, ctx) else "none"


def _reject_sampling(value: Any, ctx: _Context) -> str:
    return "rejection" if _float(value, ctx) > 0 else "none"


def _optimizer(value: Any, ctx: _Context) -> str:
    if value not in ("SGD", "Adam", "AdamW"):
        raise Unmapped("optimizers here: SGD, Adam, AdamW")
    return str(value)


PYTC_SCHEDULERS = {"MultiStepLR": "step", "WarmupMultiStepLR": "step", "WarmupCosineLR": "cosine",
                   "CosineAnnealingLR": "cosine", "ReduceLROnPlateau": "plateau"}


def _scheduler(value: Any, ctx: _Context) -> tuple[str, int]:
    """The schedule and its warm-up: PyTC's Warmup* schedules warm up for WARMUP_ITERS (default 1000)."""
    if value not in PYTC_SCHEDULERS:
        raise Unmapped("schedules here: none, cosine, poly, step, plateau; known PyTC ones: "
                       + ", ".join(PYTC_SCHEDULERS))
    return PYTC_SCHEDULERS[value], _warmup(ctx)


def _warmup(ctx: _Context) -> int:
    return _int(ctx.get("SOLVER.WARMUP_ITERS"), ctx) if str(ctx.get("SOLVER.LR_SCHEDULER_NAME")).startswith("Warmup") \
        else 0


def _warmup_steps(value: Any, ctx: _Context) -> int:
    if not str(ctx.get("SOLVER.LR_SCHEDULER_NAME")).startswith("Warmup"):
        raise Unmapped("no effect: SOLVER.LR_SCHEDULER_NAME has no warm-up")
    return _warmup(ctx)


def _step_size(value: Any, ctx: _Context) -> int:
    if PYTC_SCHEDULERS.get(ctx.get("SOLVER.LR_SCHEDULER_NAME")) != "step":
        raise Unmapped("no effect: only MultiStepLR schedules read it")
    milestones = _ints(value)
    warmup = _warmup(ctx)
    size = max(1, milestones[0] - warmup)
    if any(m != warmup + size * (i + 1) for i, m in enumerate(milestones)):
        ctx.note(f"milestones {tuple(milestones)} -> a decay every {size} steps after warm-up: the first "
                 "decay matches, later ones do not")
    return size


def _max_steps(value: Any, ctx: _Context) -> int:
    """PyTC counts iterations (batches); ours counts optimizer steps (ITERATION_STEP batches each)."""
    per_step = max(1, _int(ctx.get("SOLVER.ITERATION_STEP"), ctx))
    if per_step > 1:
        ctx.note(f"{value} iterations of {per_step} batches per optimizer step -> optimizer steps")
    return max(1, -(-_int(value, ctx) // per_step))


def _gradient_clip(value: Any, ctx: _Context) -> float:
    if not _bool(ctx.get("SOLVER.CLIP_GRADIENTS.ENABLED"), ctx):
        return 0.0
    if ctx.get("SOLVER.CLIP_GRADIENTS.CLIP_TYPE") != "norm":
        raise Unmapped("clipping gradient values: only the gradient norm is clipped here "
                       "(training.gradient_clip_val)")
    return _float(ctx.get("SOLVER.CLIP_GRADIENTS.CLIP_VALUE"), ctx)


def _log_every(value: Any, ctx: _Context) -> int:
    return _int(_ints(value)[0], ctx)


def _augment(section: str, scale: float = 1.0) -> Callable[[Any, _Context], float]:
    """AUGMENTOR.<section> (ENABLED and P, or the older ``<section>: bool``) -> our probability."""

    def convert(value: Any, ctx: _Context) -> float:
        node = ctx.get(f"AUGMENTOR.{section}")
        enabled = ctx.get(f"AUGMENTOR.{section}.ENABLED")
        if isinstance(node, bool):
            enabled = node
        if section == "ROTATE" and not ctx.get("AUGMENTOR.ROTATE.ROT90"):
            raise Unmapped("arbitrary-angle rotations (ROT90: False): use data.augmentation.affine")
        if enabled is False:
            return 0.0
        probability = _float(ctx.get(f"AUGMENTOR.{section}.P"), ctx)
        if scale != 1.0:
            ctx.note(f"PyTC flips each axis with probability 1/2 when its flip (P={probability}) applies: "
                     f"{min(1.0, probability * scale)} per axis here")
        return min(1.0, probability * scale)

    convert.__name__ = f"_augment_{section.lower()}"
    return convert


def _augmentor(section: str, field: str, scale: float = 1.0, also: tuple[str, ...] = ()) -> dict[str, Map]:
    """The rows of one PyTC augmentor (``<section>: bool``, ``.ENABLED``, ``.P`` and ``also``), all
    read by one converter into ``data.augmentation.<field>``."""
    row = Map(f"data.augmentation.{field}", _augment(section, scale))
    return {f"AUGMENTOR.{section}{suffix}": row for suffix in ("", ".ENABLED", ".P", *also)}


def _tta(value: Any, ctx: _Context) -> bool:
    if ctx.get("INFERENCE.AUG_MODE") != "mean":
        raise Unmapped("test-time augmentation here averages (mean); min/max are not available")
    number = ctx.get("INFERENCE.AUG_NUM")
    return number is not None and _int(number, ctx) > 1


def _blending(value: Any, ctx: _Context) -> str:
    if value == "bump":
        ctx.note("bump -> gaussian (both weigh window centres more)")
    elif value != "gaussian":
        raise Unmapped("blending here: gaussian or constant")
    return "gaussian"


def _strategy(value: Any, ctx: _Context) -> str:
    return "ddp" if _bool(value, ctx) else "auto"


# --- reasons shared by several keys ---------------------------------------------------------------

_CHUNKS = "tiled chunk loading: volumes larger than data.in_memory_mb are read lazily instead"
_PRETRAINED = "PyTC checkpoints hold another network: weights cannot be carried over (model.pretrained takes ours)"
_PREDICT_IO = "inference inputs and outputs are given to `napari-connectomics predict --input/--output`"
_NOT_READ = "not read by the networks here"
_MASK = "masks of valid voxels: use sparse labels (data.label_mode=sparse, 0 = not annotated)"

# --- the table --------------------------------------------------------------------------------

#: PyTC v1 key -> Map(our key(s), converter) or the reason it is not converted. A key ending in
#: ``.*`` gives the reason for every key under it that has no entry of its own.
LEGACY_KEYS: dict[str, Rule] = {
    # SYSTEM
    "SYSTEM.NUM_GPUS": Map("system.num_gpus", _int),
    "SYSTEM.NUM_CPUS": Map("data.num_workers", _int),
    "SYSTEM.DISTRIBUTED": Map("system.strategy", _strategy),
    "SYSTEM.PARALLEL": "Lightning has no DataParallel; system.strategy=auto uses DDP on several GPUs",
    "SYSTEM.DEBUG": "no debug mode in the config: pass --debug to the command",
    # MODEL
    "MODEL.ARCHITECTURE": Map(("model.architecture", "model.spatial_dims"), _architecture),
    "MODEL.BLOCK_TYPE": "PyTC's block variants (residual, SE, pre-activation) have no counterpart; "
                        "monai_unet uses residual units (model.num_res_units)",
    "MODEL.BACKBONE": "FPN backbones have no counterpart",
    "MODEL.DEPLOY_MODE": "RepVGG deploy mode has no counterpart",
    "MODEL.FILTERS": Map("model.filters", _filters),
    "MODEL.BLOCKS": "blocks per stage (FPN/EfficientNet) have no counterpart",
    "MODEL.KERNEL_SIZES": "per-stage kernel sizes (EfficientNet) have no counterpart; one size: model.kernel_size",
    "MODEL.ATTENTION": "attention blocks have no counterpart",
    "MODEL.ISOTROPY": "per-level anisotropic convolutions have no counterpart; the networks here use the same "
                      "kernels at every level",
    "MODEL.TARGET_OPT": Map("data.target", _target),
    "MODEL.LABEL_EROSION": "label erosion has no counterpart",
    "MODEL.LABEL_DILATION": "label dilation has no counterpart",
    "MODEL.WEIGHT_OPT": "per-voxel loss weights have no counterpart; data.foreground_sampling balances patches",
    "MODEL.LOSS_OPTION": Map(("model.loss_functions", "model.loss_weights"), _losses),
    "MODEL.LOSS_WEIGHT": Map(("model.loss_functions", "model.loss_weights"), _losses),
    "MODEL.LOSS_KWARGS_KEY": "loss arguments have no counterpart",
    "MODEL.LOSS_KWARGS_VAL": "loss arguments have no counterpart",
    "MODEL.OUTPUT_ACT": "the losses here take logits and apply what the target needs",
    "MODEL.IN_PLANES": Map("model.in_channels", _int),
    "MODEL.OUT_PLANES": Map("model.out_channels", _out_planes),
    "MODEL.PAD_MODE": "convolution padding mode: the networks here zero-pad",
    "MODEL.NORM_MODE": Map("model.norm", _norm),
    "MODEL.ACT_MODE": Map("model.activation", _activation),
    "MODEL.POOLING_LAYER": "the networks here downsample with strided convolutions",
    "MODEL.POOING_LAYER": "the networks here downsample with strided convolutions",
    "MODEL.MIXED_PRECESION": Map("training.precision", _precision),
    "MODEL.EMBEDDING": _NOT_READ,
    "MODEL.HEAD_DEPTH": _NOT_READ,
    "MODEL.INPUT_SIZE": Map("data.patch_size", _fit_size),
    "MODEL.OUTPUT_SIZE": "the networks here predict the whole input patch",
    "MODEL.REGU_OPT": "regularisation losses have no counterpart",
    "MODEL.REGU_TARGET": "regularisation losses have no counterpart",
    "MODEL.REGU_WEIGHT": "regularisation losses have no counterpart",
    "MODEL.FINETUNE": "run names: training.name",
    "MODEL.EXACT": _PRETRAINED,
    "MODEL.SIZE_MATCH": _PRETRAINED,
    "MODEL.PRE_MODEL": _PRETRAINED,
    "MODEL.PRE_MODEL_LAYER": _PRETRAINED,
    "MODEL.PRE_MODEL_ITER": _PRETRAINED,
    "MODEL.PRE_MODEL_LAYER_SELECT": _PRETRAINED,
    "MODEL.AUX_OUT": "auxiliary outputs (DeepLabV3) have no counterpart",
    # DATASET
    "DATASET.DATA_SCALE": "volumes are not resampled on loading: rescale them beforehand",
    "DATASET.SCALE_FACTOR": "super-resolution has no counterpart",
    "DATASET.IMAGE_NAME": Map("data.train_image", _volume_path("IMAGE")),
    "DATASET.LABEL_NAME": Map("data.train_label", _volume_path("LABEL")),
    "DATASET.VALID_MASK_NAME": _MASK,
    "DATASET.VAL_IMAGE_NAME": Map("data.val_image", _volume_path("VAL_IMAGE")),
    "DATASET.VAL_LABEL_NAME": Map("data.val_label", _volume_path("VAL_LABEL")),
    "DATASET.VAL_VALID_MASK_NAME": _MASK,
    "DATASET.VAL_PAD_SIZE": "volumes are not padded before sampling",
    "DATASET.INPUT_PATH": Map(("data.train_image", "data.train_label", "data.val_image", "data.val_label"), None),
    "DATASET.IS_ABSOLUTE_PATH": Map(("data.train_image", "data.train_label", "data.val_image", "data.val_label"),
                                    None),
    "DATASET.OUTPUT_PATH": Map(("training.output_dir", "training.name"), _output_path),
    "DATASET.LABEL_VAST": "VAST colour labels: convert them to integer labels",
    "DATASET.IS_ISOTROPIC": Map("data.voxel_size", _isotropic),
    "DATASET.ISOTROPIC": Map("data.voxel_size", _isotropic),
    "DATASET.DO_2D": "follows MODEL.ARCHITECTURE: a 2D network trains on 2D patches",
    "DATASET.LOAD_2D": "2D images are read as they are",
    "DATASET.DROP_CHANNEL": "image channels: model.in_channels",
    "DATASET.PAD_SIZE": "volumes are not padded before sampling: patches are drawn inside the volume",
    "DATASET.PAD_MODE": "volumes are not padded before sampling: patches are drawn inside the volume",
    "DATASET.NORMALIZE_RANGE": Map("data.normalize", _normalize),
    "DATASET.MEAN": "intensities are normalised by data.normalize, no fixed mean",
    "DATASET.STD": "intensities are normalised by data.normalize, no fixed standard deviation",
    "DATASET.LABEL_BINARY": "labels above 0 are foreground for data.target=binary (from MODEL.TARGET_OPT)",
    "DATASET.LABEL_MAG": "label magnification has no counterpart",
    "DATASET.LABEL_EROSION": "label erosion has no counterpart",
    "DATASET.DO_CHUNK_TITLE": _CHUNKS,
    "DATASET.DATA_CHUNK_NUM": _CHUNKS,
    "DATASET.DATA_CHUNK_IND": _CHUNKS,
    "DATASET.DATA_CHUNK_NUM_IND": _CHUNKS,
    "DATASET.CHUNK_IND_SPLIT": _CHUNKS,
    "DATASET.DATA_CHUNK_STRIDE": _CHUNKS,
    "DATASET.DATA_CHUNK_ITER": _CHUNKS,
    "DATASET.PRE_LOAD_DATA": _CHUNKS,
    "DATASET.VALID_RATIO": "partly annotated data: use sparse labels (data.label_mode=sparse)",
    "DATASET.REJECT_SAMPLING.SIZE_THRES": Map("data.foreground_sampling", _reject_sampling),
    "DATASET.REJECT_SAMPLING.*": "rejection is tuned by data.foreground_ratio here, not by a threshold",
    "DATASET.DISTRIBUTED": "data is split across GPUs by Lightning",
    # AUGMENTOR
    "AUGMENTOR.SMOOTH": "labels are not smoothed after augmentation",
    "AUGMENTOR.ADDITIONAL_TARGETS_NAME": "image and label are augmented together",
    "AUGMENTOR.ADDITIONAL_TARGETS_TYPE": "image and label are augmented together",
    **_augmentor("ROTATE", "rotate90", also=(".ROT90",)),
    **_augmentor("RESCALE", "affine"),
    **_augmentor("FLIP", "flip", 0.5),
    "AUGMENTOR.FLIP.DO_ZTRANS": "z-x transposes have no counterpart (flips and in-plane rotations only)",
    **_augmentor("ELASTIC", "elastic"),
    "AUGMENTOR.ELASTIC.*": "the strength of the elastic deformation is fixed here",
    **_augmentor("GRAYSCALE", "intensity"),
    "AUGMENTOR.MISSINGPARTS": "missing-parts (blanked patches) augmentation has no counterpart",
    "AUGMENTOR.MISSINGPARTS.*": "missing-parts (blanked patches) augmentation has no counterpart",
    **_augmentor("MISSINGSECTION", "missing_section"),
    "AUGMENTOR.MISSINGSECTION.*": "the number of blanked sections is fixed here",
    **_augmentor("MISALIGNMENT", "misalignment"),
    "AUGMENTOR.MISALIGNMENT.*": "the displacement of the misalignment is fixed here",
    **_augmentor("MOTIONBLUR", "motion_blur"),
    "AUGMENTOR.MOTIONBLUR.*": "the sections and kernel of the motion blur are fixed here",
    "AUGMENTOR.CUTBLUR": "CutBlur augmentation has no counterpart",
    "AUGMENTOR.CUTBLUR.*": "CutBlur augmentation has no counterpart",
    "AUGMENTOR.CUTNOISE": "CutNoise augmentation has no counterpart",
    "AUGMENTOR.CUTNOISE.*": "CutNoise augmentation has no counterpart",
    "AUGMENTOR.COPYPASTE": "copy-paste augmentation has no counterpart",
    "AUGMENTOR.COPYPASTE.*": "copy-paste augmentation has no counterpart",
    # SOLVER
    "SOLVER.NAME": Map("optimizer.name", _optimizer),
    "SOLVER.LR_SCHEDULER_NAME": Map(("scheduler.name", "scheduler.warmup_steps"), _scheduler),
    "SOLVER.ITERATION_STEP": Map("training.accumulate_grad_batches", _int),
    "SOLVER.ITERATION_SAVE": "checkpoints: the best and last.ckpt at each validation, and last.ckpt every "
                             "checkpoint.every_n_minutes",
    "SOLVER.ITERATION_TOTAL": Map("training.max_steps", _max_steps),
    "SOLVER.ITERATION_VAL": Map("training.val_check_interval", _int),
    "SOLVER.ITERATION_RESTART": "restarting the iteration count: train --resume continues a run, "
                                "model.pretrained starts a new one",
    "SOLVER.BASE_LR": Map("optimizer.lr", _float),
    "SOLVER.BIAS_LR_FACTOR": "one learning rate for all parameters",
    "SOLVER.WEIGHT_DECAY_BIAS": "one weight decay for all parameters",
    "SOLVER.WEIGHT_DECAY_NORM": "one weight decay for all parameters",
    "SOLVER.MOMENTUM": Map("optimizer.momentum", _float),
    "SOLVER.BETAS": Map("optimizer.betas", lambda v, ctx: [_float(b, ctx) for b in v]),
    "SOLVER.WEIGHT_DECAY": Map("optimizer.weight_decay", _float),
    "SOLVER.GAMMA": Map("scheduler.gamma", _float),
    "SOLVER.STEPS": Map("scheduler.step_size", _step_size),
    "SOLVER.WARMUP_FACTOR": "warm-up starts from a small fraction fixed here",
    "SOLVER.WARMUP_ITERS": Map("scheduler.warmup_steps", _warmup_steps),
    "SOLVER.WARMUP_METHOD": "warm-up is linear here",
    "SOLVER.SAMPLES_PER_BATCH": Map("data.batch_size", _int),
    "SOLVER.CLIP_GRADIENTS.ENABLED": Map("training.gradient_clip_val", _gradient_clip),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": Map("training.gradient_clip_val", _gradient_clip),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": Map("training.gradient_clip_val", _gradient_clip),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": "the gradient's 2-norm is clipped here",
    "SOLVER.SWA.*": "stochastic weight averaging has no counterpart",
    # MONITOR
    "MONITOR.ITERATION_NUM": Map("training.log_every_n_steps", _log_every),
    "MONITOR.LOG_OPT": "logging: training.log_every_n_steps; metrics go to the run's logs",
    "MONITOR.VIS_OPT": "no image visualisation during training: open the run in the napari plugin",
    # INFERENCE
    "INFERENCE.INPUT_SIZE": Map("inference.window_size", _window_size),
    "INFERENCE.OUTPUT_SIZE": "the networks here predict the whole window",
    "INFERENCE.INPUT_PATH": _PREDICT_IO,
    "INFERENCE.IMAGE_NAME": _PREDICT_IO,
    "INFERENCE.OUTPUT_PATH": _PREDICT_IO,
    "INFERENCE.OUTPUT_NAME": _PREDICT_IO,
    "INFERENCE.IS_ABSOLUTE_PATH": _PREDICT_IO,
    "INFERENCE.DO_CHUNK_TITLE": "large volumes are predicted block by block (inference.block_size)",
    "INFERENCE.DO_SINGLY": "one volume per predict command",
    "INFERENCE.DO_SINGLY_START_INDEX": "one volume per predict command",
    "INFERENCE.PAD_SIZE": "windows are padded at the volume border (inference.padding_mode)",
    "INFERENCE.UNPAD": "the prediction has the shape of the input",
    "INFERENCE.OUTPUT_ACT": "probabilities follow from the target",
    "INFERENCE.STRIDE": Map("inference.overlap", _stride_overlap),
    "INFERENCE.BLENDING": Map("inference.blending", _blending),
    "INFERENCE.AUG_MODE": Map("inference.tta", _tta),
    "INFERENCE.AUG_NUM": Map("inference.tta", _tta),
    "INFERENCE.DATA_SCALE": "volumes are not resampled: rescale them beforehand",
    "INFERENCE.OUTPUT_SCALE": "predictions are not resampled",
    "INFERENCE.DO_EVAL": "prediction always runs the network in evaluation mode",
    "INFERENCE.DO_3D": "follows MODEL.ARCHITECTURE",
    "INFERENCE.MODEL_OUTPUT_ID": "all output channels are written",
    "INFERENCE.TEST_NUM": "split a volume among workers with predict --roi or --scheduler dask",
    "INFERENCE.TEST_ID": "split a volume among workers with predict --roi or --scheduler dask",
    "INFERENCE.SAMPLES_PER_BATCH": Map("inference.batch_size", _int),
}


def rule_for(key: str) -> Rule | None:
    """The rule of a flat legacy key: its own entry, else the reason of the nearest ``PREFIX.*``."""
    if key in LEGACY_KEYS:
        return LEGACY_KEYS[key]
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        rule = LEGACY_KEYS.get(".".join(parts[:end]) + ".*")
        if rule is not None:
            return rule
    return None


# --- reading ----------------------------------------------------------------------------------

def read_legacy_config(path: str | os.PathLike, base: str | os.PathLike | None = None,
                       *, files: list[Path] | None = None) -> dict[str, Any]:
    """The legacy file merged onto its ``_BASE_`` chain (and onto ``base``, PyTC's ``--config-base``),
    as a nested dict; ``files`` receives every file read, bases first. Raises :class:`ConfigError`
    (one line) for a missing file, bad YAML, a ``_BASE_`` cycle or a file that is not a PyTC config."""
    path = Path(path)
    files = [] if files is None else files
    merged: dict[str, Any] = {}
    if base is not None:
        merged = _read_chain(Path(base), (), files)
    merged = _merge(merged, _read_chain(path, (), files))
    if not any(section in merged for section in REQUIRED_SECTIONS):
        ours = {"system", "model", "data", "training", "optimizer", "inference"} & set(merged)
        if ours:
            raise ConfigError(str(path), message=f"{str(path)!r} looks like a napari-connectomics config already "
                              "(lower-case sections): use it with `train --config`")
        raise ConfigError(str(path), message=f"{str(path)!r} is not a PyTorch Connectomics config: it has none "
                          f"of the sections {', '.join(REQUIRED_SECTIONS)}")
    return merged


def _read_chain(path: Path, seen: tuple[Path, ...], files: list[Path]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(p.name for p in (*seen, resolved))
        raise ConfigError(str(path), message=f"_BASE_ cycle: {chain}")
    data = _read_yaml(path, including=seen[-1] if seen else None)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        files.append(path)
        return data
    merged: dict[str, Any] = {}
    for name in bases if isinstance(bases, list) else [bases]:
        if not isinstance(name, str) or not name:
            raise ConfigError(str(path), message=f"{str(path)!r}: _BASE_ must be a path, not {name!r}")
        merged = _merge(merged, _read_chain(path.parent / name, (*seen, resolved), files))
    files.append(path)
    return _merge(merged, data)


def _read_yaml(path: Path, including: Path | None) -> dict[str, Any]:
    where = f" (the _BASE_ of {str(including)!r})" if including is not None else ""
    if not path.is_file():
        what = "is a folder, not a config file" if path.is_dir() else "does not exist"
        raise ConfigError(str(path), message=f"config file {str(path)!r}{where} {what}")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError(str(path), message=f"config file {str(path)!r}{where} is not a text file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(str(path), message=f"config file {str(path)!r}{where} is not valid YAML{line}: "
                          f"{problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), message=f"{str(path)!r}{where} is not a PyTorch Connectomics config: it "
                          f"holds a {type(data).__name__}, not sections of keys")
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys, values decoded as YACS does (a string that is a Python literal becomes it:
    ``"(30000, 35000)"`` a tuple, ``"1e-03"`` a float)."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = _decode(value)
    return flat


def _decode(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


# --- converting -------------------------------------------------------------------------------

@dataclass
class Conversion:
    """The outcome: our values and, for every legacy key, where it went or why it did not."""

    source: Path
    files: list[Path] = field(default_factory=list)             # every file read, bases first
    values: dict[str, Any] = field(default_factory=dict)       # our dotted key -> value
    origin: dict[str, list[str]] = field(default_factory=dict)  # our dotted key -> legacy keys
    mapped: dict[str, tuple[str, ...]] = field(default_factory=dict)  # legacy key -> our keys
    notes: dict[str, list[str]] = field(default_factory=dict)   # legacy key -> approximations
    unmapped: dict[str, str] = field(default_factory=dict)      # legacy key -> reason
    legacy: dict[str, Any] = field(default_factory=dict)        # legacy key -> (decoded) value

    def nested(self) -> dict[str, Any]:
        """Our values as sections of keys, in the schema's order."""
        out: dict[str, Any] = {}
        for key, value in sorted(self.values.items(), key=lambda item: _schema_position(item[0])):
            node = out
            *parents, name = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[name] = value
        return out

    def report_lines(self) -> list[str]:
        """``KEY = value: reason`` per unmapped key, then ``KEY: note`` per approximation."""
        lines = [f"not converted ({len(self.unmapped)} of {len(self.legacy)} keys):"] if self.unmapped else []
        lines += [f"  {key} = {_short(self.legacy[key])}: {reason}" for key, reason in self.unmapped.items()]
        by_note: dict[str, list[str]] = {}  # a note several keys share (FLIP.ENABLED, FLIP.P) once
        for key, notes in self.notes.items():
            for note in notes:
                by_note.setdefault(note, []).append(key)
        if by_note:
            lines.append("approximated (check these):")
            lines += [f"  {', '.join(keys)}: {note}" for note, keys in by_note.items()]
        return lines

    def to_yaml(self) -> str:
        """Our YAML: the report as comments on top, then each value with its legacy key(s)."""
        bases = [str(f) for f in self.files if f != self.source]
        header = [f"# Converted from the PyTorch Connectomics v1 config {str(self.source)!r}"
                  + (f" merged onto {', '.join(repr(b) for b in bases)}" if bases else "")
                  + " by `napari-connectomics convert-config`.",
                  f"# {len(self.mapped)} of {len(self.legacy)} keys converted; every other key is listed "
                  "with the reason."]
        body = [f"# {line}" for line in self.report_lines()]
        return "\n".join([*header, *body, ""] + _emit(self.nested(), self.origin, "")) + "\n"


def _schema_position(key: str) -> tuple[int, ...]:
    import dataclasses

    from .schema import ConnectomicsConfig
    from .validation import field_types

    position, schema = [], ConnectomicsConfig
    for part in key.split("."):
        names = [f.name for f in dataclasses.fields(schema)]
        position.append(names.index(part) if part in names else len(names))
        schema = field_types(schema).get(part)
        if not dataclasses.is_dataclass(schema):
            break
    return tuple(position)


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _emit(node: Mapping[str, Any], origin: Mapping[str, list[str]], prefix: str, indent: str = "") -> list[str]:
    lines = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            lines.append(f"{indent}{key}:")
            lines += _emit(value, origin, f"{dotted}.", indent + "  ")
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
            text = text.removesuffix("...").strip()
            lines.append(f"{indent}{key}: {text}  # {', '.join(origin.get(dotted, []))}")
    return lines


def convert_legacy_config(path: str | os.PathLike, base: str | os.PathLike | None = None) -> Conversion:
    """Read and convert a PyTC v1 config; the result's values load with :func:`load_config`."""
    files: list[Path] = []
    flat = _flatten(read_legacy_config(path, base, files=files))
    result = Conversion(source=Path(path), files=files, legacy=flat)
    for key, value in flat.items():
        rule = rule_for(key)
        if rule is None:
            section = key.split(".")[0]
            what = "key" if section in PYTC_SECTIONS else "section"
            hint = closest(key, [k for k in LEGACY_KEYS if not k.endswith(".*")], cutoff=0.8)
            result.unmapped[key] = f"not a PyTorch Connectomics v1 {what}" + (f" (did you mean {hint}?)" if hint else "")
            continue
        if isinstance(rule, str):
            result.unmapped[key] = rule
            continue
        if rule.convert is None:
            result.mapped[key] = rule.keys
            for ours in rule.keys:
                result.origin.setdefault(ours, []).append(key)
            continue
        ctx = _Context(flat)
        try:
            converted = rule.convert(value, ctx)
        except Unmapped as err:
            result.unmapped[key] = str(err)
            continue
        except (TypeError, ValueError, KeyError, IndexError):
            result.unmapped[key] = f"value {_short(value)} not understood"
            continue
        outputs = converted if len(rule.keys) > 1 else (converted,)
        for ours, out in zip(rule.keys, outputs):
            result.values[ours] = out
            result.origin.setdefault(ours, []).append(key)
        result.mapped[key] = rule.keys
        if ctx.notes:
            result.notes[key] = ctx.notes
    _drop_values_that_do_not_load(result)
    for key, ours in list(result.mapped.items()):  # keys folded into others (INPUT_PATH) need one of them
        kept = tuple(k for k in ours if k in result.values)
        if kept:
            result.mapped[key] = kept
        else:
            del result.mapped[key]
            result.unmapped[key] = f"nothing to apply it to: none of {', '.join(ours)} is converted"
    result.origin = {k: v for k, v in result.origin.items() if k in result.values}
    return result


def _drop_values_that_do_not_load(result: Conversion) -> None:
    """Validate; a value the validator refuses moves its legacy key(s) to the unmapped list."""
    from .io import load_config

    for _ in range(len(result.values) + 1):
        try:
            load_config(overrides=result.nested())
            return
        except ConfigError as err:
            ours = str(err.key).split("[")[0]
            legacy = [k for k in result.origin.get(ours, []) if _converts(k)]
            if ours not in result.values or not legacy:
                raise
            for key in legacy:
                result.unmapped[key] = f"converted to {ours}={_short(result.values[ours])}, which does not fit: {err}"
                for produced in result.mapped.pop(key, ()):
                    result.values.pop(produced, None)
                result.notes.pop(key, None)
    raise AssertionError("the converted config does not validate")  # pragma: no cover


def _converts(key: str) -> bool:
    rule = LEGACY_KEYS.get(key)
    return isinstance(rule, Map) and rule.convert is not None


# --- writing ----------------------------------------------------------------------------------

def write_new_file(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` atomically (a temporary file renamed into place). Without ``overwrite`` an
    existing ``path`` raises FileExistsError, checked atomically (a hard link cannot replace)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except (AttributeError, NotImplementedError, PermissionError):  # no hard links here
                if path.exists():
                    raise FileExistsError(str(path)) from None
                os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path

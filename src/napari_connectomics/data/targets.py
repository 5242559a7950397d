"""Label volumes -> class-index maps that the losses train on (DESIGN.md, "Conventions for data").

Two label conventions:

* ``dense``: 0 is background, every voxel is annotated;
* ``sparse`` (what a user paints in napari): 0 is "not annotated" and becomes
  :data:`~napari_connectomics.data.conventions.IGNORE_INDEX`, 1 is background, 2..N+1 are the N
  classes (or, for instance targets, the object ids).

Three targets:

* ``binary``: 0 background, 1 foreground (any class);
* ``semantic``: one index per class, background 0;
* ``instance``: each object has its own id; the network learns 0 background, 1 object interior,
  2 object contour, and a watershed turns the prediction back into objects. Contours are computed
  in-plane (y, x of each z-section) because serial-section EM is anisotropic, and are marked on both
  sides where two objects touch, so the watershed has a valley between them.

Contours need the neighbours of a voxel: at the outer faces of an array nothing outside is known,
so no contour is drawn there. To get correct contours at a patch's faces, read the patch with a
one-voxel margin in y and x, convert, then crop the margin off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config.errors import ConfigError
from ..config.schema import DataConfig
from ..registry import TARGETS
from .conventions import IGNORE_INDEX

__all__ = [
    "INSTANCE_BACKGROUND",
    "INSTANCE_CONTOUR",
    "INSTANCE_INTERIOR",
    "LABEL_MODES",
    "TARGETS",
    "TargetSpec",
    "instance_contours",
    "labels_to_classes",
    "num_classes",
    "register_target",
]

LABEL_MODES: tuple[str, ...] = DataConfig.__dataclass_fields__["label_mode"].metadata["choices"]

# The classes of the instance target, for decoders (watershed) and plots.
INSTANCE_BACKGROUND, INSTANCE_INTERIOR, INSTANCE_CONTOUR = 0, 1, 2
_INSTANCE_CLASSES = 3
_IN_PLANE_DIMS = 2


def labels_to_classes(
    labels: np.ndarray, label_mode: str, target: str, *, spatial_dims: int = 3
) -> np.ndarray:
    """The int64 class-index map (same shape) that ``target`` trains on; unannotated voxels of
    sparse labels are IGNORE_INDEX.

    ``spatial_dims`` is how many trailing axes are spatial (3: z-y-x, 2: y-x); leading axes (batch,
    channel) are carried along. Instance contours use the last two (in-plane) axes.
    """
    _check_choice("label_mode", label_mode, LABEL_MODES)
    spec = TARGETS.get(target)
    labels = _as_label_array(labels)
    if spatial_dims not in (2, 3) or labels.ndim < spatial_dims:
        raise ValueError(f"spatial_dims must be 2 or 3 and at most the labels' {labels.ndim} axes, "
                         f"got {spatial_dims}")
    sparse = label_mode == "sparse"
    # Sparse labels count from 1 (background); shift them to the dense convention first.
    dense = np.where(labels >= 1, labels.astype(np.int64) - 1, 0) if sparse else labels
    classes = spec.to_classes(dense)
    if sparse:
        classes[labels == 0] = IGNORE_INDEX
    return classes


def _instance_classes(objects: np.ndarray) -> np.ndarray:
    """0 background, 1 interior, 2 contour, from an instance map where 0 is "no object"."""
    classes = np.where(objects != 0, INSTANCE_INTERIOR, INSTANCE_BACKGROUND).astype(np.int64)
    classes[instance_contours(objects, spatial_dims=_IN_PLANE_DIMS)] = INSTANCE_CONTOUR
    return classes


def instance_contours(instances: np.ndarray, spatial_dims: int = 2) -> np.ndarray:
    """Boolean mask of object voxels that touch (face-connected, along the last ``spatial_dims``
    axes) a voxel of a different id or background (0): a one-voxel-wide inner contour per object,
    on both sides where objects touch. Array faces count as no contour (see the module notes).

    Equivalent to ``skimage.segmentation.find_boundaries(mode='inner')`` per plane, done with
    shifted comparisons over the whole array at once.
    """
    instances = np.asarray(instances)
    if not 1 <= spatial_dims <= instances.ndim:
        raise ValueError(f"spatial_dims must be between 1 and the array's {instances.ndim} axes, "
                         f"got {spatial_dims}")
    touches_other = np.zeros(instances.shape, dtype=bool)
    for axis in range(instances.ndim - spatial_dims, instances.ndim):
        lower = _axis_slice(instances.ndim, axis, slice(None, -1))
        upper = _axis_slice(instances.ndim, axis, slice(1, None))
        differs = instances[lower] != instances[upper]
        touches_other[lower] |= differs
        touches_other[upper] |= differs
    return touches_other & (instances != 0)


def num_classes(target: str, labels: np.ndarray | None = None, label_mode: str = "dense") -> int:
    """Output channels a network needs for ``target`` (IGNORE_INDEX is never a class)."""
    _check_choice("label_mode", label_mode, LABEL_MODES)
    spec = TARGETS.get(target)
    if spec.classes is not None:
        return spec.classes
    if labels is None:
        raise ValueError(f"num_classes({target!r}) needs the labels to count the classes; pass labels=")
    labels = _as_label_array(labels)
    largest = int(labels.max()) if labels.size else 0
    if label_mode == "sparse" and largest == 0:
        raise ValueError("the sparse labels hold no annotated voxel (all 0); "
                         "paint background (1) and classes (2..)")
    return spec.count_classes(largest, label_mode)


# --------------------------------------------------------------------------------------------------
# The target registry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetSpec:
    """What a target is: how dense labels become class indices, and how many classes it needs.

    to_classes: dense labels (0 background) -> int64 class indices (sparse labels are shifted to the
        dense convention before, and their unannotated voxels ignored after).
    classes: fixed number of output classes, or None when counted from the labels.
    one_channel_ok: a single sigmoid channel may stand for classes 0/1 (binary targets).
    margin: in-plane voxels to read around a patch so that to_classes is right at its faces.
    channel_layout: how post-processing reads the predicted channels (binary, instance, semantic).
    """

    name: str
    to_classes: Callable[[np.ndarray], np.ndarray]
    classes: int | None
    channel_layout: str
    description: str = ""
    one_channel_ok: bool = False
    margin: int = 0

    def count_classes(self, largest_label: int, label_mode: str) -> int:
        """Output classes for labels whose largest value is ``largest_label``."""
        if self.classes is not None:
            return self.classes
        return largest_label if label_mode == "sparse" else largest_label + 1  # sparse: classes are label - 1

    def check(self, cfg: Any) -> None:
        """``model.out_channels`` must fit this target."""
        out = cfg.model.out_channels
        if self.classes is None:
            return
        valid = (1, self.classes) if self.one_channel_ok else (self.classes,)
        if out not in valid:
            what = f"{self.name} target ({self.description})" if self.description else f"{self.name} target"
            options = " or ".join(str(v) for v in valid)
            raise ConfigError("model.out_channels", out,
                              f"the {what} needs {options} output channels: set model.out_channels={valid[-1]}")


def register_target(name: str, **spec: Any) -> Callable[[Callable[[np.ndarray], np.ndarray]], Any]:
    """Decorator: register ``to_classes(dense_labels) -> classes`` as target ``name``; keyword
    arguments are the other fields of :class:`TargetSpec`."""

    def decorator(to_classes: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        TARGETS.register(name)(TargetSpec(name=name, to_classes=to_classes, **spec))
        return to_classes

    return decorator


@register_target("binary", classes=2, one_channel_ok=True, channel_layout="binary",
                 description="background / foreground")
def _binary_classes(labels: np.ndarray) -> np.ndarray:
    return (labels >= 1).astype(np.int64)


@register_target("semantic", classes=None, channel_layout="semantic", description="one class per label value")
def _semantic_classes(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.int64)


@register_target("instance", classes=_INSTANCE_CLASSES, channel_layout="instance", margin=1,
                 description="background, interior and contour, for a watershed")
def _instance_target(labels: np.ndarray) -> np.ndarray:
    return _instance_classes(labels)


def _as_label_array(labels: np.ndarray) -> np.ndarray:
    """Labels as a non-negative integer array (bool and whole-number floats are accepted)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(f"labels must hold whole numbers, found fractional or non-finite "
                             f"{labels.dtype} values; save the label volume as an integer type")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}; "
                         "convert them with .astype(np.uint32)")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative, found minimum {labels.min()}; "
                         "0 is background (dense) or unannotated (sparse)")
    return labels


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _axis_slice(ndim: int, axis: int, along: slice) -> tuple[slice, ...]:
    return tuple(along if a == axis else slice(None) for a in range(ndim))

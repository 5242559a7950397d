"""Training augmentation: MONAI dictionary transforms plus EM-specific artefacts.

Everything acts on a dict ``{'image': float32 (C, *spatial), 'label': int64 (1, *spatial)}``.
Geometry is applied to image and label together, labels with nearest interpolation so class ids
never mix. Voxels that an affine or elastic warp pulls in from outside the patch become
``IGNORE_INDEX`` in the label (not background): the network never saw them, so the loss must not
score them. The composed transform is a MONAI :class:`~monai.transforms.Compose`, so
``set_random_state(seed)`` makes it reproducible (the patch dataset seeds it per item).

EM transforms (missing section, misalignment, motion blur) imitate serial-section artefacts and
only make sense for 3D patches; they are skipped for 2D networks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import (
    CastToTyped,
    Compose,
    Lambdad,
    MapTransform,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandomizableTransform,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ToNumpyd,
)
from monai.utils import convert_to_numpy
from scipy import ndimage as ndi

from ..config.schema import AugmentationConfig
from .conventions import IGNORE_INDEX

__all__ = [
    "IMAGE_KEY",
    "LABEL_KEY",
    "InPlaned",
    "RandMisalignmentd",
    "RandMissingSectiond",
    "RandInPlaneRotate90d",
    "RandMotionBlurd",
    "build_augmentation",
    "line_kernel",
]

logger = logging.getLogger(__name__)

IMAGE_KEY = "image"
LABEL_KEY = "label"
_KEYS = (IMAGE_KEY, LABEL_KEY)

# Geometry. Rotations are in-plane (y, x) only: EM sections have no preferred in-plane orientation,
# but z is usually sampled much more coarsely than y and x.
_AFFINE_ROTATE = np.pi  # radians, any in-plane angle
_AFFINE_SCALE = 0.1  # +-10 % in-plane zoom
_ELASTIC_SPACING = 24  # px between control points of the in-plane deformation
_ELASTIC_MAGNITUDE = (1.0, 3.0)  # px, std of the control-point offsets
_ELASTIC_SIGMA = (6.0, 8.0)  # voxels, smoothing of the 3D displacement field
_ELASTIC_MAGNITUDE_3D = (250.0, 500.0)  # std of the displacement about 1-2 voxels with that sigma
_ISOTROPY_LIMIT = 2.0  # z/xy voxel-size ratio below which a 3D elastic warp may also move along z

# Intensity, for images normalised to roughly unit range.
_SCALE_FACTOR = 0.1  # brightness: x (1 +- 0.1)
_SHIFT_OFFSET = 0.1
_GAMMA = (0.7, 1.5)
_NOISE_STD = 0.1  # upper bound; each application draws its std from [0, 0.1]

# EM artefacts.
_MAX_MISALIGNMENT = 5  # px
_MOTION_BLUR_LENGTH = (3, 9)  # px, range of the blur line's length


# --------------------------------------------------------------------------------------------------
# building


def build_augmentation(
    aug_cfg: AugmentationConfig | Mapping[str, Any] | None,
    spatial_dims: int,
    voxel_size: Sequence[float] | None = None,
) -> Compose:
    """Compose the training augmentation described by ``aug_cfg`` for 2D or 3D patches.

    Each transform runs with its own probability from the config (0 leaves it out);
    ``enabled: false`` gives a transform that only returns numpy float32 / int64 arrays.
    ``voxel_size`` (z, y, x) decides whether an elastic warp of a 3D patch may move voxels along z:
    only for near-isotropic data; otherwise (or when unknown) sections are warped in-plane alike.
    """
    cfg = _as_aug_config(aug_cfg)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}")
    transforms: list[Callable] = []
    if cfg.enabled:
        transforms += _geometric(cfg, spatial_dims, voxel_size)
        transforms += _em_artefacts_and_intensity(cfg, spatial_dims)
    transforms += [
        ToNumpyd(keys=_KEYS, allow_missing_keys=True),
        CastToTyped(keys=_KEYS, dtype=(np.float32, np.int64), allow_missing_keys=True),
    ]
    names = [_describe(t) for t in transforms[:-2] if not isinstance(t, Lambdad)]
    logger.info("Augmentation (%dD): %s", spatial_dims, ", ".join(names) if names else "none")
    return Compose(transforms)


def _describe(transform: Callable) -> str:
    """A transform's name for the log, with the wrapped transform for InPlaned."""
    if isinstance(transform, InPlaned):
        return f"InPlaned({type(transform.transform).__name__})"
    return type(transform).__name__


def _as_aug_config(aug_cfg: AugmentationConfig | Mapping[str, Any] | None) -> AugmentationConfig:
    """Accept the dataclass, a plain mapping (e.g. from YAML) or None for the defaults."""
    if aug_cfg is None:
        return AugmentationConfig()
    if isinstance(aug_cfg, Mapping):
        return AugmentationConfig(**aug_cfg)
    return aug_cfg


def _geometric(
    cfg: AugmentationConfig, spatial_dims: int, voxel_size: Sequence[float] | None
) -> list:
    """Flips, in-plane rot90, affine and elastic warps, applied to image and label together."""
    plane = (0, 1) if spatial_dims == 2 else (1, 2)  # (y, x) among the spatial axes
    out: list = []
    if cfg.flip > 0:
        out += [
            RandFlipd(keys=_KEYS, prob=cfg.flip, spatial_axis=axis, allow_missing_keys=True)
            for axis in range(spatial_dims)
        ]
    if cfg.rotate90 > 0:
        out.append(RandInPlaneRotate90d(keys=_KEYS, prob=cfg.rotate90, spatial_axes=plane))
    warps: list = []
    if cfg.affine > 0:
        warps.append(_in_plane(_affine_2d(cfg.affine), spatial_dims))
    if cfg.elastic > 0:
        if spatial_dims == 3 and _is_isotropic(voxel_size):
            warps.append(_elastic_3d(cfg.elastic))
        else:
            warps.append(_in_plane(_elastic_2d(cfg.elastic), spatial_dims))
    if warps:
        # Labels are lifted by one so that the warps' zero padding comes back as IGNORE_INDEX.
        out.append(Lambdad(keys=LABEL_KEY, func=_lift_label, allow_missing_keys=True))
        out += warps
        out.append(Lambdad(keys=LABEL_KEY, func=_drop_label, allow_missing_keys=True))
    return out


def _em_artefacts_and_intensity(cfg: AugmentationConfig, spatial_dims: int) -> list:
    """Section artefacts (3D only) interleaved with intensity jitter in the order imaging makes them."""
    em = spatial_dims == 3
    if not em and max(cfg.missing_section, cfg.misalignment, cfg.motion_blur) > 0:
        logger.debug("EM section augmentations skipped: they need 3D patches")
    out: list = []
    if em and cfg.misalignment > 0:
        out.append(RandMisalignmentd(keys=_KEYS, label_keys=LABEL_KEY, prob=cfg.misalignment))
    if cfg.intensity > 0:
        out += [
            RandScaleIntensityd(keys=IMAGE_KEY, factors=_SCALE_FACTOR, prob=cfg.intensity),
            RandShiftIntensityd(keys=IMAGE_KEY, offsets=_SHIFT_OFFSET, prob=cfg.intensity),
            RandAdjustContrastd(keys=IMAGE_KEY, gamma=_GAMMA, prob=cfg.intensity),
        ]
    if em and cfg.motion_blur > 0:
        out.append(RandMotionBlurd(keys=IMAGE_KEY, prob=cfg.motion_blur))
    if em and cfg.missing_section > 0:
        out.append(RandMissingSectiond(keys=IMAGE_KEY, prob=cfg.missing_section))
    if cfg.noise > 0:
        out.append(RandGaussianNoised(keys=IMAGE_KEY, prob=cfg.noise, std=_NOISE_STD))
    return out


def _is_isotropic(voxel_size: Sequence[float] | None) -> bool:
    """True when z is sampled about as finely as y and x (FIB-SEM), so 3D warps are safe."""
    if voxel_size is None or len(voxel_size) != 3:
        return False
    z, y, x = (float(v) for v in voxel_size)
    return z / min(y, x) < _ISOTROPY_LIMIT


def _affine_2d(prob: float) -> RandAffined:
    return RandAffined(
        keys=_KEYS,
        prob=prob,
        rotate_range=_AFFINE_ROTATE,
        scale_range=(_AFFINE_SCALE, _AFFINE_SCALE),
        mode=("bilinear", "nearest"),
        padding_mode=("reflection", "zeros"),
        allow_missing_keys=True,
    )


def _elastic_2d(prob: float) -> Rand2DElasticd:
    return Rand2DElasticd(
        keys=_KEYS,
        prob=prob,
        spacing=(_ELASTIC_SPACING, _ELASTIC_SPACING),
        magnitude_range=_ELASTIC_MAGNITUDE,
        mode=("bilinear", "nearest"),
        padding_mode=("reflection", "zeros"),
        allow_missing_keys=True,
    )


def _elastic_3d(prob: float) -> Rand3DElasticd:
    return Rand3DElasticd(
        keys=_KEYS,
        prob=prob,
        sigma_range=_ELASTIC_SIGMA,
        magnitude_range=_ELASTIC_MAGNITUDE_3D,
        mode=("bilinear", "nearest"),
        padding_mode=("reflection", "zeros"),
        allow_missing_keys=True,
    )


def _in_plane(transform: MapTransform, spatial_dims: int) -> MapTransform:
    return transform if spatial_dims == 2 else InPlaned(transform, keys=_KEYS)


def _lift_label(label: Any) -> Any:
    """Class ids + 1: IGNORE_INDEX (-1) becomes 0, the value warps pad with."""
    return label - IGNORE_INDEX


def _drop_label(label: Any) -> Any:
    """Undo :func:`_lift_label`; padded voxels (0) become IGNORE_INDEX."""
    return label + IGNORE_INDEX


# --------------------------------------------------------------------------------------------------
# wrappers around MONAI transforms


class RandInPlaneRotate90d(RandRotate90d):
    """RandRotate90d that leaves non-square in-plane patches alone, since a 90-degree turn would
    change their shape (a 180-degree turn is already covered by the two flips)."""

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict:
        d = dict(data)
        key = next(iter(self.key_iterator(d)), None)
        if key is not None:
            spatial = d[key].shape[1:]
            if spatial[self.spatial_axes[0]] != spatial[self.spatial_axes[1]]:
                self.randomize()  # keep the random stream independent of the patch shape
                return d
        return super().__call__(d, lazy=lazy)


class InPlaned(Randomizable, MapTransform):
    """Apply a 2D dictionary transform to every z-section of 3D patches with one random draw.

    The z axis is folded into the channel axis, so all sections get the same in-plane warp and
    are never interpolated across z (serial-section EM is much coarser in z than in y and x).
    """

    def __init__(self, transform: MapTransform, keys: KeysCollection = _KEYS) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.transform = transform

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> InPlaned:
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed=seed, state=state)
        return self

    def randomize(self, data: Any = None) -> None:
        """The wrapped transform draws its own parameters."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        shapes = {}
        for key in self.key_iterator(d):
            shapes[key] = tuple(d[key].shape)
            c, z, *yx = shapes[key]
            d[key] = d[key].reshape(c * z, *yx)
        d = dict(self.transform(d))
        for key, shape in shapes.items():
            d[key] = d[key].reshape(shape)
        return d


# --------------------------------------------------------------------------------------------------
# EM section artefacts


class _SectionTransform(RandomizableTransform, MapTransform):
    """Base of the EM transforms: pick one z-section (or a z onwards) of a (C, Z, Y, X) patch."""

    def __init__(self, keys: KeysCollection, prob: float) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys=True)

    def _n_sections(self, d: Mapping[Hashable, Any]) -> int | None:
        """Number of z-sections, or None when the data is not a 3D patch."""
        key = next(iter(self.key_iterator(d)), None)
        if key is None or len(d[key].shape) != 4:
            return None
        return int(d[key].shape[1])


def _writable(array: Any) -> np.ndarray:
    """A numpy copy, so the caller's array (or a MONAI tensor) is never modified in place."""
    return np.array(convert_to_numpy(array), copy=True)


class RandMissingSectiond(_SectionTransform):
    """Blank one random z-section, as when a section is lost or unusable in serial-section EM.

    ``fill='mean'`` uses the patch mean (per channel), which stays in range for any normalisation;
    ``fill='zero'`` uses 0.
    """

    def __init__(self, keys: KeysCollection = IMAGE_KEY, prob: float = 0.1, fill: str = "mean") -> None:
        super().__init__(keys, prob)
        if fill not in ("mean", "zero"):
            raise ValueError(f"fill must be 'mean' or 'zero'; got {fill!r}")
        self.fill = fill
        self._z = 0

    def randomize(self, n_sections: int) -> None:
        super().randomize(None)
        self._z = int(self.R.randint(n_sections))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        n = self._n_sections(d)
        if n is None:
            return d
        self.randomize(n)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = _writable(d[key])
            fill = img.mean(axis=(1, 2, 3)) if self.fill == "mean" else np.zeros(img.shape[0])
            img[:, self._z] = fill.astype(img.dtype)[:, None, None]
            d[key] = img
        return d


class RandMisalignmentd(_SectionTransform):
    """Shift all sections from a random z onwards by a few pixels in y/x (an alignment error).

    The label moves with the image, because the objects really sit there in the shifted image;
    label voxels that the shift vacates are IGNORE_INDEX, image voxels repeat the edge.
    """

    def __init__(
        self,
        keys: KeysCollection = _KEYS,
        label_keys: KeysCollection = LABEL_KEY,
        prob: float = 0.1,
        max_shift: int = _MAX_MISALIGNMENT,
    ) -> None:
        super().__init__(keys, prob)
        if max_shift < 1:
            raise ValueError(f"max_shift must be >= 1 pixel; got {max_shift!r}")
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        self.max_shift = int(max_shift)
        self._z = 1
        self._shift = (0, 0)

    def randomize(self, n_sections: int) -> None:
        super().randomize(None)
        m = self.max_shift
        self._z = int(self.R.randint(1, n_sections)) if n_sections > 1 else 1
        dy, dx = (int(s) for s in self.R.randint(-m, m + 1, size=2))
        if dy == 0 and dx == 0:
            dx = int(self.R.choice([-1, 1]) * self.R.randint(1, m + 1))
        self._shift = (dy, dx)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        n = self._n_sections(d)
        if n is None:
            return d
        self.randomize(n)
        if not self._do_transform or n < 2:
            return d
        shift = (0, 0, *self._shift)
        for key in self.key_iterator(d):
            arr = _writable(d[key])
            if key in self.label_keys:
                moved = ndi.shift(arr[:, self._z :], shift, order=0, mode="constant", cval=IGNORE_INDEX)
            else:
                moved = ndi.shift(arr[:, self._z :], shift, order=0, mode="nearest")
            arr[:, self._z :] = moved
            d[key] = arr
        return d


class RandMotionBlurd(_SectionTransform):
    """Blur one random z-section with a line kernel at a random in-plane angle (stage drift)."""

    def __init__(
        self,
        keys: KeysCollection = IMAGE_KEY,
        prob: float = 0.1,
        length_range: tuple[int, int] = _MOTION_BLUR_LENGTH,
    ) -> None:
        super().__init__(keys, prob)
        if not 2 <= length_range[0] <= length_range[1]:
            raise ValueError(f"length_range must be (lo, hi) with 2 <= lo <= hi; got {length_range!r}")
        self.length_range = (int(length_range[0]), int(length_range[1]))
        self._z = 0
        self._kernel = np.ones((1, 1), np.float32)

    def randomize(self, n_sections: int) -> None:
        super().randomize(None)
        self._z = int(self.R.randint(n_sections))
        length = int(self.R.randint(self.length_range[0], self.length_range[1] + 1))
        angle = float(self.R.uniform(0.0, np.pi))
        self._kernel = line_kernel(length, angle)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        n = self._n_sections(d)
        if n is None:
            return d
        self.randomize(n)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = _writable(d[key])
            for c in range(img.shape[0]):
                img[c, self._z] = ndi.convolve(img[c, self._z], self._kernel, mode="reflect")
            d[key] = img
        return d


def line_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised (L, L) kernel holding a 1-pixel line of ``length`` through the centre."""
    size = length if length % 2 else length + 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length)
    rows = np.rint(c - t * np.sin(angle)).astype(int)
    cols = np.rint(c + t * np.cos(angle)).astype(int)
    kernel[rows, cols] = 1.0
    return kernel / kernel.sum()

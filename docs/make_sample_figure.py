"""Draw docs/images/synthetic_sample.png: the synthetic EM sample next to real EM.

Panels, left to right, for the middle section of the default synthetic volume: the raw image, the image
with the mitochondria instances coloured and outlined, and, when the shared Lucchi data sit beside the
checkout, a real Lucchi crop of the same physical field of view resampled to the same pixel size (the
Lucchi volume is 5 nm isotropic), so that the comparison is at equal magnification.

    python docs/make_sample_figure.py [--output docs/images/synthetic_sample.png] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.segmentation import find_boundaries
from skimage.transform import resize

from napari_connectomics.data.synthetic import make_synthetic_em

REPO = Path(__file__).resolve().parents[1]
LUCCHI = REPO.parent / "shared/data/lucchi/lucchi_train.h5"
LUCCHI_NM = 5.0
GAP = 6  # white pixels between panels

# Crop of the Lucchi training stack (section, top-left y, x at 5 nm) with cells, vesicles and
# mitochondria, chosen by eye; only shown, never used for anything else.
LUCCHI_CROP = (80, 240, 360)


def _palette(n: int) -> np.ndarray:
    """Distinct saturated colours (golden-angle hues), so touching instances differ."""
    hue = (np.arange(n) * 0.618034) % 1.0
    k = (hue[:, None] * 6.0 + np.array([5.0, 3.0, 1.0])) % 6.0
    rgb = 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)  # HSV with S=V=1
    return (rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray, instances: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """Grey image with instances tinted and their outlines drawn in full colour."""
    rgb = np.repeat(image[..., None], 3, axis=-1).astype(np.float32)
    colours = _palette(int(instances.max()) + 1).astype(np.float32)
    inside = instances > 0
    rgb[inside] = (1 - alpha) * rgb[inside] + alpha * colours[instances[inside]]
    edge = find_boundaries(instances, mode="inner") & inside
    rgb[edge] = colours[instances[edge]]
    return np.rint(rgb).astype(np.uint8)


def lucchi_crop(shape: tuple[int, int], pixel_nm: float) -> np.ndarray | None:
    """A real Lucchi crop covering the same field of view as ``shape`` at ``pixel_nm``, or None."""
    if not LUCCHI.is_file():
        return None
    import h5py  # optional: only needed when the real data are present

    z, y, x = LUCCHI_CROP
    h, w = (int(round(n * pixel_nm / LUCCHI_NM)) for n in shape)
    with h5py.File(LUCCHI, "r") as f:
        data = f["image"]
        y = min(y, data.shape[1] - h)
        x = min(x, data.shape[2] - w)
        crop = data[z, y : y + h, x : x + w].astype(np.float32)
    return np.clip(resize(crop, shape, anti_aliasing=True, preserve_range=True), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs/images/synthetic_sample.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sample = make_synthetic_em(seed=args.seed)
    z = sample.image.shape[0] // 2
    image, instances = sample.image[z], sample.instances[z]
    grey = np.repeat(image[..., None], 3, axis=-1)
    panels = [grey, overlay(image, instances)]
    real = lucchi_crop(image.shape, float(sample.voxel_size[-1]))
    if real is not None:
        panels.append(np.repeat(real[..., None], 3, axis=-1))

    spacer = np.full((image.shape[0], GAP, 3), 255, dtype=np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [spacer, panel]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.output, np.concatenate(row, axis=1), optimize=True)


if __name__ == "__main__":
    main()

"""Foreground IoU on the Lucchi training stack's held-out slices for a trained checkpoint.

Predicts the held-out z-range (the last `data.val_fraction` of z, as training held it out) with
sliding windows, with and without test-time augmentation, then scores thresholded masks and a few
post-processings against the expert labels.

    python benchmarks/lucchi_eval.py --checkpoint runs/lucchi_cpu/<stamp>/checkpoints/<best>.ckpt

``--planes xy,triplanar`` compares single-plane with tri-planar prediction (xy, xz and yz averaged);
``--margin N`` predicts N more slices before the held-out ones (training slices, as input only: a
33-slice slab is too thin for xz and yz windows) and scores the held-out slices alone; ``--no-tta``
skips the TTA passes; ``--z-smooth 1 2`` also predicts with the probabilities smoothed
along z (``PredictOptions.z_smoothing``, sigma in sections).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from napari_connectomics.data.volumes import open_volume
from napari_connectomics.inference.metrics import semantic_metrics
from napari_connectomics.inference.postprocess import fill_holes, postprocess
from napari_connectomics.inference.predict import PredictOptions, predict
from napari_connectomics.models.checkpoint import config_from_checkpoint, load_checkpoint


def foreground_iou(mask: np.ndarray, truth: np.ndarray) -> float:
    return float(semantic_metrics((mask > 0).astype(np.uint8), (truth > 0).astype(np.uint8), num_classes=2)["iou"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", default="../shared/data/lucchi/lucchi_train.h5:image")
    parser.add_argument("--label", default="../shared/data/lucchi/lucchi_train.h5:label")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--planes", default="xy", help="comma-separated: xy, triplanar")
    parser.add_argument("--margin", type=int, default=0, help="slices predicted before the held-out ones")
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--z-smooth", type=float, nargs="*", default=[], metavar="SIGMA",
                        help="also predict with the probabilities smoothed along z (PredictOptions.z_smoothing)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    cfg = config_from_checkpoint(load_checkpoint(args.checkpoint))
    image, label = open_volume(args.image), open_volume(args.label)
    n_z = image.shape[0]
    z0 = n_z - int(round(n_z * cfg.data.val_fraction))
    start_z = max(0, z0 - args.margin)
    roi = (slice(start_z, n_z), slice(None), slice(None))
    truth = label[z0:n_z]
    print(f"checkpoint {args.checkpoint}\nheld-out slices {z0}-{n_z - 1} of {image.shape} (predicted from "
          f"slice {start_z}), overlap {args.overlap}\n")
    print("| prediction | post-processing | foreground IoU | seconds |")
    print("| --- | --- | ---: | ---: |")
    runs = [(planes, tta, sigma) for planes in args.planes.split(",")
            for tta in ((False,) if args.no_tta else (False, True)) for sigma in (0.0, *args.z_smooth)]
    for planes, tta, sigma in runs:
        start = time.perf_counter()
        result = predict(args.checkpoint, args.image, PredictOptions(
            overlap=args.overlap, tta=tta, roi=roi, output_dtype="float32", triplanar=planes == "triplanar",
            z_smoothing=sigma))
        seconds = time.perf_counter() - start
        probabilities = np.asarray(result.probabilities, dtype=np.float32)[:, z0 - start_z:]
        name = (("tri-planar" if planes == "triplanar" else "sliding window") + (" + TTA (8 passes)" if tta else "")
                + (f", smoothed along z (sigma {sigma:g} sections)" if sigma else ""))
        variants = {
            "threshold 0.5": postprocess(probabilities, "none", threshold=0.5),
            "threshold 0.5, objects >= 200 voxels": postprocess(probabilities, "cc", threshold=0.5, min_size=200),
        }
        variants["threshold 0.5, objects >= 200, holes filled in-plane"] = fill_holes(
            variants["threshold 0.5, objects >= 200 voxels"], in_plane=True)
        for post, mask in variants.items():
            print(f"| {name} | {post} | {foreground_iou(mask, truth):.4f} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`napari-connectomics` command line: the same engine as the napari plugin, headless.

Errors are one line on stderr with exit status 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .registry import POSTPROCESSORS

__all__ = ["main", "build_parser"]

logger = logging.getLogger("napari_connectomics")


class CLIError(Exception):
    """A user error the CLI reports as one line (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-connectomics",
        description="Deep-learning segmentation of EM volumes (MONAI, MedNeXt, Lightning).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_verbosity(parser, False)
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity(common, argparse.SUPPRESS)  # after the command too, without resetting the global flags
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list-architectures", parents=[common], help="the registered architectures")
    p.add_argument("--json", action="store_true", help="one JSON list on stdout")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (for the README)")
    p.set_defaults(func=cmd_list_architectures)

    p = sub.add_parser("info", parents=[common], help="parameters, deep-supervision scales and size rules of one architecture")
    p.add_argument("architecture", help="a name from list-architectures")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides; keys without a section are model keys (mednext_size=B)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", parents=[common], help="train a network from a config (YAML + key=value overrides)")
    p.add_argument("--config", help="YAML config; unset keys keep their defaults")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. training.max_steps=200")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint (optimizer, schedule, step)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", parents=[common], help="segment a volume with a checkpoint (sliding window, block-wise, any size)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint of napari-connectomics train, or a BioImage.IO model (model.zip, rdf.yaml)")
    p.add_argument("--input", required=True, metavar="PATH[:key]", help="volume: file.h5:key, file.zarr/array, .tif, .npy, image.ome.zarr (level 0) or image.ome.zarr/LEVEL, "
                        "a Neuroglancer precomputed folder (or precomputed://PATH, file:///PATH; scale 0) or vol/SCALE")
    p.add_argument("--output", required=True, metavar="PATH[:key]",
                   help="pred.zarr or pred.h5 (array 'probabilities'; 'labels' beside it with --threshold/--instances), "
                        "or pred.ome.zarr (OME-Zarr with a pyramid; labels under pred.ome.zarr/labels/labels), "
                        "or pred.precomputed (Neuroglancer precomputed volumes 'probabilities', float32 or uint8, "
                        "and 'labels', a uint32 segmentation)")
    p.add_argument("--window", type=_ints, metavar="Z,Y,X", help="sliding window (default: the training patch)")
    p.add_argument("--overlap", type=float, help="fraction of a window shared with its neighbour")
    p.add_argument("--batch", type=int, help="windows per forward pass")
    p.add_argument("--tta", action="store_true", default=None, help="test-time augmentation (flips, rot90)")
    p.add_argument("--triplanar", action="store_true", default=None,
                   help="2D networks on isotropic volumes: average the predictions of the xy, xz and yz planes")
    p.add_argument("--z-smoothing", type=float, metavar="SIGMA",
                   help="smooth the probabilities along z (Gaussian sigma in sections; 0: off): "
                        "2D networks on isotropic stacks")
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--precision", choices=_choices("inference", "precision"),
                   help="the forward pass's arithmetic on a GPU (16-mixed, bf16-mixed: autocast)")
    p.add_argument("--block", type=_ints, metavar="Z,Y,X", help="block size for volumes larger than memory")
    p.add_argument("--memory-limit", type=int, metavar="MB", dest="memory_limit_mb",
                   help="memory for one prediction; larger volumes are predicted in blocks that fit it")
    p.add_argument("--roi", type=_roi, metavar="z0:z1,y0:y1,x0:x1", help="predict only this region")
    p.add_argument("--output-dtype", choices=_choices("inference", "output_dtype"), help="stored probabilities")
    p.add_argument("--threshold", type=float, help="also write binary labels at this probability (block by block)")
    p.add_argument("--instances", choices=POSTPROCESSORS.names(), metavar="METHOD",
                   help="also write labels post-processed by METHOD: " + "; ".join(
                       f"{name}: {spec.description}" for name, spec in POSTPROCESSORS.items()))
    p.add_argument("--min-size", type=int, default=0, help="objects smaller than this (voxels) are removed")
    p.add_argument("--scheduler", choices=("local", "dask"), default="local",
                   help="dask: blocks as tasks on a dask cluster (local 2-worker cluster without --address)")
    p.add_argument("--address", metavar="HOST:PORT", help="dask scheduler address (e.g. from dask-jobqueue)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished Zarr output of an interrupted run with the same input, checkpoint "
                        "and options (skips the blocks it holds); starts from scratch when there is none")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", parents=[common], help="score a prediction against labels (semantic and instance metrics)")
    p.add_argument("--prediction", required=True, metavar="PATH[:key]",
                   help="labels or probabilities; a prediction file's 'labels' array when no key is given")
    p.add_argument("--label", required=True, metavar="PATH[:key]", help="ground truth")
    p.add_argument("--threshold", type=float, default=0.5, help="for probability predictions")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--instance", dest="instance", action="store_true", default=None,
                      help="also score instances (default: when the labels hold several object ids)")
    mode.add_argument("--semantic", dest="instance", action="store_false", help="semantic metrics only")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", parents=[common], help="the embedded default end to end: train, predict, evaluate on the synthetic sample")
    p.add_argument("--data", metavar="PATH[:key]", help="a labelled volume (its :label beside it) instead of the sample")
    p.add_argument("--output", help="folder for the run, prediction.zarr, overlay.png, scores (default outputs/demo)")
    p.add_argument("--steps", type=int, help="training steps (default: the demo's, about 40 s on two CPU cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--architectures", action="store_true",
                   help="instead: run every registered network once on the sample (a quick install check)")
    p.add_argument("--shape", default="32,128,128", help="sample shape z,y,x for --architectures")
    p.add_argument("--gui", action="store_true",
                   help="then open napari with the volume, the prediction and the Connectomics dock widget")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("convert-config", parents=[common],
                       help="turn a PyTorch Connectomics v1 (YACS) config into ours, listing what does not convert")
    p.add_argument("legacy", metavar="LEGACY.yaml", help="a PyTC v1 config; its _BASE_ (relative to it) is merged first")
    p.add_argument("-o", "--output", required=True, metavar="NEW.yaml",
                   help="the converted config (train --config NEW.yaml)")
    p.add_argument("--base", metavar="BASE.yaml", help="PyTC's --config-base: merged before LEGACY.yaml")
    p.add_argument("--force", action="store_true", help="replace an existing NEW.yaml")
    p.set_defaults(func=cmd_convert_config)

    p = sub.add_parser("export-bioimageio", parents=[common],
                       help="package a checkpoint as a BioImage.IO model (bioimage.io zoo, ilastik, deepImageJ, Fiji)")
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint of napari-connectomics train")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.zip", help="the package to write")
    p.add_argument("--name", help="model name (default: from the architecture and target)")
    p.add_argument("--author", action="append", dest="authors", metavar="NAME",
                   help="an author (repeat for several; default: napari-connectomics team)")
    p.add_argument("--license", default="MIT", help="SPDX license of the weights (default MIT)")
    p.add_argument("--sample", metavar="PATH[:key]",
                   help="volume whose centre becomes the test input (default: synthetic EM)")
    p.add_argument("--no-torchscript", dest="torchscript", action="store_false",
                   help="state-dict weights only (for networks that cannot be traced)")
    p.add_argument("--no-test", dest="test", action="store_false",
                   help="skip bioimageio.core's test of the written package")
    p.add_argument("--force", action="store_true", help="replace an existing MODEL.zip")
    p.set_defaults(func=cmd_export_bioimageio)
    return parser


def _choices(section: str, name: str) -> tuple:
    """A config field's declared choices (the schema states them once)."""
    from .config.schema import ConnectomicsConfig

    schema = ConnectomicsConfig.__dataclass_fields__[section].default_factory
    return tuple(c for c in schema.__dataclass_fields__[name].metadata["choices"] if c is not None)


def _add_verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks and debug logs")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true", default=default, help="only warnings and errors")
    level.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="also the libraries' own messages (Lightning, MONAI)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not (args.verbose or args.debug):
        from .training.quiet import quiet_libraries

        quiet_libraries(level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("napari-connectomics: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, KeyError, OSError, _training_error()) as err:
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"napari-connectomics {args.command}: error: {_no_space(err, args.command) or message}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug, not a user error: still one line unless --debug
        if args.debug:
            raise
        if full := _no_space(err, args.command):  # e.g. torch's RuntimeError over an ENOSPC OSError
            print(f"napari-connectomics {args.command}: error: {full}", file=sys.stderr)
            return 2
        print(f"napari-connectomics {args.command}: internal error: {type(err).__name__}: {err}; "
              "rerun with --debug for the traceback", file=sys.stderr)
        return 1


def _no_space(err: BaseException, command: str) -> str | None:
    """A full disk (ENOSPC, EDQUOT) anywhere in the error's chain, as one line naming the path."""
    from .training.disk import TRAINING_OUTPUT, DiskFullError, no_space  # torch-free

    full = no_space(err)
    if full is None or isinstance(full, DiskFullError):  # train() names the checkpoint and its size
        return None if full is None else str(full)
    where_else = {"train": TRAINING_OUTPUT, "predict": "--output", "demo": "--output"}.get(command, "output folder")
    return str(DiskFullError(full.filename or "the output disk", hint=where_else))


def _training_error() -> type[Exception]:
    """NonFiniteLossError when training is importable (it is a user-facing failure, not a bug)."""
    if "napari_connectomics.training.module" in sys.modules:
        return sys.modules["napari_connectomics.training.module"].NonFiniteLossError
    return CLIError


# --- list-architectures / info -----------------------------------------------------------------

def architecture_summary(name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The spec's facts of one architecture as configured, plus its parameter count (built on the
    meta device, so no memory is used)."""
    from .config import load_config
    from .models.architectures.registry import get_architecture_spec

    spec = get_architecture_spec(name)
    cfg = load_config(overrides=[f"model.architecture={name}", *_qualify(overrides)])
    summary = spec.facts(cfg).as_dict()
    if summary["available"]:
        from .models.build import model_info

        summary["parameters"] = model_info(cfg)["parameters"]
    return summary


def _qualify(overrides: Sequence[str]) -> list[str]:
    """`mednext_size=B` means `model.mednext_size=B`: model keys are what `info` is about."""
    return [o if "." in o.split("=", 1)[0] else f"model.{o}" for o in overrides]


def cmd_list_architectures(args: argparse.Namespace) -> int:
    from .models.architectures.registry import list_architectures

    rows = [architecture_summary(name) for name in list_architectures()]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(markdown_table(rows))
    else:
        for row in rows:
            params = f"{row['parameters']:>12,}" if "parameters" in row else f"{'unavailable':>12}"
            ds = f"DS x{row['deep_supervision_scales']}" if row["deep_supervision_supported"] else "     "
            print(f"{row['name']:<20} {params}  x{row['size_multiple']:<3} {ds}  {row['description']}")
    return 0


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| architecture | parameters (3D, 1 -> 2 channels) | 2D / 3D | size multiple | deep supervision | description |",
        "| --- | ---: | --- | ---: | --- | --- |",
    ]
    for row in rows:
        dims = " / ".join(f"{d}D" for d in row["supported_spatial_dims"])
        multiple = f"{row['size_multiple']}" + (" (fixed input)" if row["fixed_input_size"] else "")
        ds = f"yes ({row['deep_supervision_scales']} scales)" if row["deep_supervision_supported"] else "no"
        params = f"{row['parameters']:,}" if "parameters" in row else "unavailable"
        lines.append(f"| `{row['name']}` | {params} | {dims} | {multiple} | {ds} | {row['description']} |")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    summary = architecture_summary(args.architecture, args.overrides)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, int) and not isinstance(value, bool) and key == "parameters":
            value = f"{value:,}"
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import train
    from .training.module import monitored_metric

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume, enable_progress_bar=not args.quiet)
    if result.global_rank != 0:  # DDP: one summary, from rank 0
        return 0
    summary = {
        "run": str(result.run_dir),
        "status": "stopped" if result.stopped else "finished",
        "steps": result.global_step,
        "best checkpoint": str(result.best_checkpoint) if result.best_checkpoint else "-",
        f"best {result.monitor}": f"{result.best_score:.4f}" if result.best_score is not None else "-",
        "last checkpoint": str(result.last_checkpoint),
    }
    summary["validation"] = result.validation or "-"
    for name in ("val/dice", "val/iou", "val/loss"):
        key = monitored_metric(name, result.held_out)  # train_eval/...: scored on the training data
        if key in result.metrics:
            summary[f"last {key}"] = f"{result.metrics[key]:.4f}"
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 32,128,128)") from None


def _roi(text: str) -> tuple[slice, ...]:
    parts = text.split(",")
    try:
        bounds = [tuple(int(v) if v else None for v in part.split(":")) for part in parts]
        if len(bounds) != 3 or any(len(b) != 2 for b in bounds):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not z0:z1,y0:y1,x0:x1 (e.g. 0:64,:,100:612)") from None
    return tuple(slice(a, b) for a, b in bounds)


class _ProgressBar:
    """A tqdm bar on stderr fed by Progress events; created on the first event, so an error
    raised before any work is the only line printed."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.bar: Any = None

    def __call__(self, progress: Any) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(unit=self.unit, file=sys.stderr, dynamic_ncols=True)
        if progress.total is not None and self.bar.total != progress.total:
            self.bar.total = progress.total
        self.bar.n = progress.done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference.predict import PredictOptions, predict, prepare_input
    from .inference.stores import OutputSpaceError, parse_output
    from .models.checkpoint import checkpoint_config

    cfg = checkpoint_config(args.checkpoint)  # a checkpoint, or a BioImage.IO model (model.zip, rdf.yaml)
    options = PredictOptions.from_config(
        cfg, window=args.window, overlap=args.overlap, batch_size=args.batch, tta=args.tta, triplanar=args.triplanar,
        z_smoothing=args.z_smoothing, device=args.device,
        precision=args.precision, block_size=args.block, roi=args.roi, output_dtype=args.output_dtype, memory_limit_mb=args.memory_limit_mb)
    source = prepare_input(args.input, int(cfg.model.in_channels), args.roi)  # input errors before the model is built
    method = args.instances or ("none" if args.threshold is not None else None)
    if method is not None and not POSTPROCESSORS.get(method).blockwise:
        _check_whole_volume_fits(method, source.shape, int(cfg.model.out_channels), options.memory_limit_mb)
    bar = _ProgressBar("batch")
    full = None
    try:
        result = predict(args.checkpoint, args.input, options, progress=[] if args.quiet else [bar], output=args.output,
                         overwrite=args.overwrite, scheduler=args.scheduler, address=args.address,
                         resume=args.resume)
    except OutputSpaceError as err:  # predict's own line (the size, what was kept), not the general one
        full = str(err)
    finally:
        bar.close()
    if full is not None:  # raised outside the handler: no ENOSPC left in the error's chain
        raise CLIError(full)
    summary: dict[str, Any] = {
        "output": f"{result.output_path}:{parse_output(args.output).key}", "shape": tuple(result.probabilities.shape),
        "window": result.window, "blocks": result.blocks, "device": result.device, "seconds": f"{result.seconds:.1f}"}
    if method is not None:
        threshold = args.threshold if args.threshold is not None else cfg.inference.threshold
        key = parse_output(args.output).key
        summary["labels"] = _write_labels(result, key, cfg, method, threshold, args.min_size)
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    return 0


LABEL_BLOCK = (32, 512, 512)  # block-wise labels: a multiple of their chunks (32, 128, 128); ~0.3 GB a block


def _check_whole_volume_fits(method: str, shape: Sequence[int], channels: int, memory_limit_mb: int) -> None:
    """A post-processor without a block-wise form runs on the whole volume in memory: refuse (before
    predicting) when it does not fit. The watershed's working memory is the estimate for all of them."""
    from .inference.postprocess import watershed_bytes
    from .inference.postprocessors import blockwise_postprocessors

    need = watershed_bytes(shape, channels)
    if need > memory_limit_mb * 2**20:
        size = "x".join(str(int(n)) for n in shape)
        blockwise = " or ".join(f"--instances {n}" for n in blockwise_postprocessors() if n != "none")
        raise CLIError(f"--instances {method} runs on the whole volume in memory: {size} voxels need about "
                       f"{need / 2**30:.1f} GiB, more than the {memory_limit_mb / 1024:g} GiB limit; use "
                       f"{blockwise} (block by block, any size) or a smaller --roi")


def _write_labels(result: Any, key: str, cfg: Any, method: str, threshold: float, min_size: int) -> str:
    """Labels beside the probabilities on disk: ``none`` and ``cc`` block by block (read from the store, written
    into it under a temporary name renamed when complete), the watershed on the whole volume (checked to fit)."""
    import numpy as np

    from .inference.postprocess import postprocess, postprocess_blockwise
    from .inference.stores import LabelsWriter, labels_dtype, parse_output, value_scale

    from .registry import TARGETS

    layout = TARGETS.get(cfg.data.target).channel_layout
    stored = result.probabilities
    shape = tuple(int(n) for n in stored.shape[1:])
    scale = value_scale(stored.dtype)
    if hasattr(stored, "file"):  # an open HDF5 dataset: the writer opens the file for appending
        stored.file.close()
    with LabelsWriter(result.output_path, "labels", overwrite=True) as writer:
        probabilities = writer.read(key)
        if not POSTPROCESSORS.get(method).blockwise:
            whole = np.asarray(probabilities[...], dtype=np.float32)
            if scale != 1.0:
                whole /= np.float32(scale)
            labels = postprocess(whole, method, threshold=threshold, min_size=min_size, channel_layout=layout)
            dtype = labels_dtype(labels)
            array = writer.create(shape, dtype)
            array[...] = labels
            dtype = np.dtype(array.dtype)  # as stored (precomputed labels are uint32)
            top = int(labels.max(initial=0))
        else:
            size = tuple(min(b, n) for b, n in zip(LABEL_BLOCK, shape))
            logger.info("%s labels block by block (blocks of %s)", method, "x".join(map(str, size)))
            made: list[Any] = []

            def create(dtype: Any) -> Any:
                array = writer.create(shape, dtype)
                made.append(np.dtype(array.dtype))  # as stored (precomputed labels are uint32)
                return array

            top = postprocess_blockwise(
                probabilities, method, create, scratch=lambda: writer.create(shape, np.uint32, final=False),
                block_size=size, threshold=threshold, min_size=min_size, channel_layout=layout, value_scale=scale)
            dtype = made[0]
        writer.commit()
    where = "labels/labels" if parse_output(str(result.output_path)).ome else "labels"
    return f"{result.output_path}:{where} ({dtype}, {top} max id)"


def _prediction_source(spec: str) -> Any:
    """A prediction path without a key means its `labels` array when it has one."""
    from .data.volumes import list_arrays, open_volume, parse_volume_path

    path, key = parse_volume_path(spec)
    if (key is None and path.exists() and path.suffix in (".h5", ".hdf5", ".zarr", ".precomputed")
            and {"labels", "labels/labels/0"} & set(list_arrays(path))):  # OME-Zarr: labels/labels
        key = "labels"
    return open_volume(path if key is None else f"{path}:{key}")


def _as_prediction(array: Any, label_ndim: int) -> Any:
    """Probabilities with a channel axis (C, ...) -> foreground probability, or class map for C > 2."""
    import numpy as np

    if array.ndim != label_ndim + 1:
        return array
    if array.shape[0] == 1:
        return array[0].astype(np.float32)
    if array.shape[0] == 2:
        return array[1].astype(np.float32)
    return np.argmax(array, axis=0).astype(np.uint32)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.volumes import open_volume
    from .inference.metrics import evaluate

    prediction = _prediction_source(args.prediction)
    label = open_volume(args.label)
    spatial = prediction.shape[1:] if prediction.ndim == label.ndim + 1 else prediction.shape
    if spatial != label.shape:
        raise CLIError(f"prediction {prediction.source} has shape {prediction.shape} but labels {label.source} "
                       f"have {label.shape}; evaluate the same region")
    scores = evaluate(_as_prediction(prediction.read(), label.ndim), label.read(), instance=args.instance,
                      threshold=args.threshold)
    if args.json:
        print(json.dumps(scores))
        return 0
    width = max(len(k) for k in scores)
    for key, value in scores.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_architecture_sweep, run_demo

    if args.architectures:
        run_architecture_sweep(shape=tuple(int(s) for s in args.shape.split(",")), seed=args.seed)
        return 0
    given = {k: v for k, v in (("output_dir", args.output), ("steps", args.steps)) if v is not None}
    result = run_demo(data=args.data, seed=args.seed, **given)
    print(f"foreground IoU {result.scores['iou']:.3f}  Dice {result.scores['dice']:.3f}")
    print(f"outputs: {result.output_dir} (prediction.zarr, overlay.png, scores.json, runs/)")
    if args.gui:
        _show_demo(result, args)
    return 0


def _show_demo(result: Any, args: argparse.Namespace) -> None:
    try:
        import napari
    except ImportError:
        raise CLIError("demo --gui needs napari and a Qt binding: pip install 'napari-connectomics[all]'") from None
    from .demo_gui import open_demo_viewer

    open_demo_viewer(result, data=args.data, seed=args.seed)
    napari.run()


def cmd_convert_config(args: argparse.Namespace) -> int:
    from .config.legacy import convert_legacy_config, write_new_file

    conversion = convert_legacy_config(args.legacy, args.base)
    try:
        write_new_file(args.output, conversion.to_yaml(), overwrite=args.force)
    except FileExistsError:
        raise CLIError(f"{args.output} already exists; pass --force to replace it") from None
    for line in conversion.report_lines():
        print(line, file=sys.stderr)
    print(f"wrote {args.output}: {len(conversion.mapped)} of {len(conversion.legacy)} keys converted, "
          f"{len(conversion.unmapped)} not (listed on stderr and at the top of the file); "
          f"train with: napari-connectomics train --config {args.output}")
    return 0


def cmd_export_bioimageio(args: argparse.Namespace) -> int:
    from .inference.bioimageio_export import export_bioimageio

    result = export_bioimageio(args.checkpoint, args.output, force=args.force, name=args.name,
                               license=args.license, authors=args.authors or (), sample=args.sample,
                               torchscript=args.torchscript, test=args.test)
    summary = {
        "output": str(result.path), "weights": ", ".join(result.weights),
        "axes": ", ".join(result.axes), "tile": result.tile,
        "test input": "x".join(map(str, result.test_shape)),
        "preprocessing": "; ".join(result.preprocessing) or "none",
        "postprocessing": ", ".join(result.postprocessing),
        "bioimageio test": result.test_status,
    }
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

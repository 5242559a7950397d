"""Export one of our checkpoints as a BioImage.IO model package (``export-bioimageio``).

What the package holds and why is described in :mod:`napari_connectomics.models.bioimageio`, which
also reads packages back for ``predict``. Writing lives here, in the inference layer, because the
package's test output is computed by our predictor.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.bioimageio import (
    ARCHITECTURE_CALLABLE,
    ARCHITECTURE_FILE,
    ARCHITECTURE_SOURCE,
    CONFIG_FILE,
    INPUT_ID,
    MARKER,
    OUTPUT_ID,
    PERCENTILES,
    TRACE_TOLERANCE,
    BioimageioError,
    core_library,
    is_bioimageio_source,
    one_line,
    spec_library,
)

__all__ = ["ExportResult", "export_bioimageio"]

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What :func:`export_bioimageio` wrote."""
    path: Path
    weights: list[str]
    axes: list[str]
    test_shape: tuple[int, ...]
    tile: str  # e.g. "16 + n*16 per axis" or "fixed 96x96x96"
    preprocessing: list[str]
    postprocessing: list[str]
    test_status: str  # bioimageio.core's status ("passed"), or "skipped"
    trace_difference: float | None = None  # max |TorchScript - network| / max |logit|


def export_bioimageio(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    force: bool = False,
    name: str | None = None,
    license: str = "MIT",
    authors: Sequence[str] = (),
    sample: str | os.PathLike | None = None,
    torchscript: bool = True,
    test: bool = True,
) -> ExportResult:
    """Write ``checkpoint`` as a BioImage.IO model package ``output`` (a ``.zip``).

    Every problem is a one-line :class:`BioimageioError` (or the checkpoint's own
    ``CheckpointError`` / ``ConfigError``) raised before ``output`` is touched: an existing output
    without ``force``, a file that is not one of our checkpoints, an architecture that cannot be
    traced (``torchscript=False`` exports the state dict only), a package bioimageio.core rejects.
    """
    from ..config.io import config_to_yaml
    from ..models.checkpoint import load_model_from_checkpoint

    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise BioimageioError(f"{output}: a BioImage.IO package is a .zip file; name it e.g. model.zip")
    if output.exists() and not force:
        raise BioimageioError(f"{output} already exists; pass --force to replace it")
    if output.is_dir():
        raise BioimageioError(f"{output} is a folder; give a file name such as model.zip")
    if is_bioimageio_source(checkpoint):
        raise BioimageioError(f"{checkpoint} is a BioImage.IO model already; export a checkpoint of "
                              "napari-connectomics train")
    spec = spec_library()
    from bioimageio.spec.model import v0_5

    model, cfg = load_model_from_checkpoint(checkpoint)
    if int(cfg.data.context_sections):
        raise BioimageioError(f"{checkpoint} was trained with 2.5D context (data.context_sections="
                              f"{cfg.data.context_sections}), which a BioImage.IO package cannot describe; "
                              "export a network trained with data.context_sections=0")
    model.eval()
    dims = int(cfg.model.spatial_dims)
    spatial = ["z", "y", "x"][3 - dims:]
    window = _export_window(model, cfg)
    raw = _test_input(cfg, window, sample)  # (1, C, [z,] y, x) float32 intensities
    expected = _our_output(model, cfg, raw)  # (1, C_out, [z,] y, x) probabilities
    mode = str(cfg.data.normalize)
    activation = "sigmoid" if int(cfg.model.out_channels) == 1 else "softmax"

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bioimageio-export-") as folder:
        tmp = Path(folder)
        files = _write_files(tmp, model, cfg, raw, expected, config_to_yaml(cfg), torchscript)
        trace_difference = None
        if torchscript:
            trace_difference = _write_torchscript(tmp / "weights_torchscript.pt", model, raw, cfg,
                                                  _size_rule(model, cfg))
        tile, input_axes, output_axes = _axes(model, cfg, spatial)
        descr_kwargs = _description_kwargs(cfg, model, name, license, authors, window)
        try:
            descr = v0_5.ModelDescr(
                **descr_kwargs,
                documentation=spec.common.FileDescr(source=files["readme"]),
                covers=[spec.common.FileDescr(source=files["cover"])],
                attachments=[spec.common.FileDescr(source=files["config"])],
                inputs=[v0_5.InputTensorDescr(
                    id=v0_5.TensorId(INPUT_ID),
                    description="EM intensities (any dtype is cast to float32)",
                    axes=input_axes, test_tensor=spec.common.FileDescr(source=files["input"]),
                    sample_tensor=spec.common.FileDescr(source=files["input_sample"]),
                    data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=_preprocessing(mode, ["channel", *spatial]))],
                outputs=[v0_5.OutputTensorDescr(
                    id=v0_5.TensorId(OUTPUT_ID),
                    description=f"{activation} probabilities per channel",
                    axes=output_axes, test_tensor=spec.common.FileDescr(source=files["output"]),
                    sample_tensor=spec.common.FileDescr(source=files["output_sample"]),
                    data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                    postprocessing=_postprocessing(activation))],
                weights=_weights_descr(v0_5, spec, files, cfg, tmp if torchscript else None),
            )
        except Exception as err:  # pydantic ValidationError: a bug or a value the spec refuses
            logger.debug("invalid description", exc_info=True)
            raise BioimageioError(f"the BioImage.IO description is invalid: {one_line(err)}") from None
        fd, staging = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp.zip")
        os.close(fd)
        staging_path = Path(staging)
        try:
            try:
                spec.save_bioimageio_package(descr, output_path=staging_path)
            except ValueError as err:
                raise BioimageioError(f"bioimageio.spec rejects the package: {one_line(err)}") from None
            status = _test_package(staging_path) if test else "skipped"
            os.replace(staging_path, output)
        finally:
            staging_path.unlink(missing_ok=True)
    logger.info("wrote BioImage.IO model %s", output)
    weights = ["pytorch_state_dict"] + (["torchscript"] if torchscript else [])
    return ExportResult(
        path=output, weights=weights, axes=["batch", "channel", *spatial], test_shape=raw.shape,
        tile=tile, preprocessing=_describe_ops(mode), postprocessing=[activation],
        test_status=status, trace_difference=trace_difference)


def _size_rule(model: Any, cfg: Any) -> tuple[list[int] | None, int, list[int]]:
    """(fixed input size or None, size multiple, smallest input per spatial axis)."""
    from ..models.architectures.registry import get_architecture_spec

    dims = int(cfg.model.spatial_dims)
    fixed = getattr(model, "fixed_input_size", None)
    multiple = int(getattr(model, "size_multiple", 1) or 1)
    if fixed is not None:
        return [int(s) for s in fixed], multiple, [int(s) for s in fixed]
    minimum = [multiple] * dims
    arch = get_architecture_spec(cfg.model.architecture)
    if arch.min_voxels_at_bottom > 1:  # e.g. MedNeXt's GroupNorm needs two voxels at the bottom
        while math.prod(s // max(arch.bottom_factor, 1) for s in minimum) < arch.min_voxels_at_bottom:
            minimum[-1] += multiple
    return None, multiple, minimum


def _export_window(model: Any, cfg: Any) -> list[int]:
    """The window predict uses by default (spatial sizes), made valid for the network."""
    from .options import default_window

    fixed, multiple, minimum = _size_rule(model, cfg)
    if fixed is not None:
        return fixed
    window = [int(s) for s in default_window(cfg)][-int(cfg.model.spatial_dims):]
    return [max(m, -(-w // multiple) * multiple) for w, m in zip(window, minimum)]


def _test_input(cfg: Any, window: Sequence[int], sample: str | os.PathLike | None) -> np.ndarray:
    """(1, C, [z,] y, x) float32: the centre of ``sample`` (a volume path), else synthetic EM."""
    channels, dims = int(cfg.model.in_channels), int(cfg.model.spatial_dims)
    if sample is not None:
        from .input import prepare_input

        source = prepare_input(str(sample), channels)
        shape = source.shape  # z, y, x
        size = ([1] if dims == 2 else []) + list(window)
        if any(s > n for s, n in zip(size, shape)):
            raise BioimageioError(f"--sample {sample} ({'x'.join(map(str, shape))}) is smaller than the "
                                  f"test tile {'x'.join(map(str, size))}; give a larger volume")
        region = tuple(slice((n - s) // 2, (n - s) // 2 + s) for s, n in zip(size, shape))
        data = source.read(region)  # (C, z, y, x) float32, not normalised
        data = data[:, 0] if dims == 2 else data
    else:
        from ..data.synthetic import make_synthetic_em

        shape = [max(16, s) for s in window]
        image = make_synthetic_em(shape=shape, seed=0).image.astype(np.float32)
        image = image[tuple(slice(0, s) for s in window)]
        data = np.stack([image + 4.0 * c for c in range(channels)])
    return np.ascontiguousarray(data[None], dtype=np.float32)


def _our_output(model: Any, cfg: Any, raw: np.ndarray) -> np.ndarray:
    """What predict computes for one tile: the whole tile's statistics, the network, the activation."""
    from ..data.normalize import intensity_stats, normalize_intensity
    from .predictor import activate, activation_for
    from ..models.architectures.base import main_output

    mode = str(cfg.data.normalize)
    image = raw[0]
    if mode != "none":
        image = normalize_intensity(image, mode, intensity_stats(image, max_voxels=image.size))
    with torch.inference_mode():
        logits = main_output(model(torch.from_numpy(np.ascontiguousarray(image[None])))).float()
        return activate(logits, activation_for(cfg)).numpy().astype(np.float32)


def _write_files(tmp: Path, model: Any, cfg: Any, raw: np.ndarray, expected: np.ndarray,
                 config_yaml: str, torchscript: bool) -> dict[str, Path]:
    import tifffile

    files = {
        "input": tmp / "test_input.npy", "output": tmp / "test_output.npy",
        "weights": tmp / "weights.pt", "architecture": tmp / ARCHITECTURE_FILE,
        "config": tmp / CONFIG_FILE, "readme": tmp / "README.md", "cover": tmp / "cover.png",
        "environment": tmp / "environment.yaml",
        "input_sample": tmp / "sample_input.tif", "output_sample": tmp / "sample_output.tif",
    }
    np.save(files["input"], raw)
    np.save(files["output"], expected)
    tifffile.imwrite(files["input_sample"], raw[0, 0] if raw.shape[1] == 1 else raw[0])
    tifffile.imwrite(files["output_sample"], expected[0, 0] if expected.shape[1] == 1 else expected[0])
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, files["weights"])
    files["architecture"].write_text(ARCHITECTURE_SOURCE, encoding="utf-8")
    files["config"].write_text(config_yaml, encoding="utf-8")
    files["readme"].write_text(_readme(cfg, raw.shape, torchscript), encoding="utf-8")
    files["environment"].write_text(_environment(), encoding="utf-8")
    _write_cover(files["cover"], raw, expected)
    return files


def _write_torchscript(path: Path, model: Any, raw: np.ndarray, cfg: Any,
                       rule: tuple[list[int] | None, int, list[int]]) -> float:
    """torch.jit.trace the network on the test tile; check it at that size and at a second
    valid one (traced code can bake sizes in). Returns the larger relative difference."""
    from ..models.architectures.base import main_output

    example = torch.from_numpy(raw)
    fixed, multiple, minimum = rule
    checks = [example]
    if fixed is None:
        other = [max(m, s - multiple) if s > m else s + multiple
                 for s, m in zip(raw.shape[2:], minimum)]
        checks.append(torch.from_numpy(np.random.default_rng(1).normal(
            size=(2, raw.shape[1], *other)).astype(np.float32)))
    arch = cfg.model.architecture
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False, strict=False)
    except Exception as err:
        raise BioimageioError(f"architecture {arch} cannot be traced to TorchScript "
                              f"({type(err).__name__}: {one_line(err)}); pass --no-torchscript "
                              "to export the state dict only") from None
    worst = 0.0
    with torch.no_grad():
        for x in checks:
            want = main_output(model(x)).float()
            try:
                got = main_output(traced(x)).float()
            except Exception as err:
                raise BioimageioError(
                    f"architecture {arch} traced to TorchScript fails on a "
                    f"{'x'.join(map(str, x.shape[2:]))} input ({one_line(err)}); pass "
                    "--no-torchscript to export the state dict only") from None
            scale = max(1.0, float(want.abs().max()))
            worst = max(worst, float((got - want).abs().max()) / scale)
            if got.shape != want.shape or worst > TRACE_TOLERANCE:
                raise BioimageioError(
                    f"architecture {arch} traced to TorchScript does not reproduce the network on a "
                    f"{'x'.join(map(str, x.shape[2:]))} input (relative difference {worst:.2g}); pass "
                    "--no-torchscript to export the state dict only")
    traced.save(str(path))
    return worst


def _axes(model: Any, cfg: Any, spatial: Sequence[str]) -> tuple[str, list[Any], list[Any]]:
    from bioimageio.spec.model import v0_5

    fixed, multiple, minimum = _size_rule(model, cfg)
    names_in = [f"channel{i}" for i in range(int(cfg.model.in_channels))]
    voxel = dict(zip("zyx", [float(v) for v in cfg.data.voxel_size]))
    inputs: list[Any] = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=names_in)]
    outputs: list[Any] = [v0_5.BatchAxis(),
                          v0_5.ChannelAxis(channel_names=_channel_names(cfg))]
    for i, axis in enumerate(spatial):
        size: Any = fixed[i] if fixed is not None else v0_5.ParameterizedSize(
            min=minimum[i], step=multiple)
        inputs.append(v0_5.SpaceInputAxis(id=v0_5.AxisId(axis), size=size, scale=voxel[axis]))
        outputs.append(v0_5.SpaceOutputAxis(
            id=v0_5.AxisId(axis), scale=voxel[axis],
            size=v0_5.SizeReference(tensor_id=v0_5.TensorId(INPUT_ID), axis_id=v0_5.AxisId(axis))))
    if fixed is not None:
        tile = f"fixed {'x'.join(map(str, fixed))}"
    else:
        tile = f"{'x'.join(map(str, minimum))} + n*{multiple} per axis"
    return tile, inputs, outputs


def _channel_names(cfg: Any) -> list[str]:
    out, target = int(cfg.model.out_channels), str(cfg.data.target)
    if target == "binary":
        return ["foreground"] if out == 1 else ["background", "foreground"]
    if target == "instance" and out == 3:
        return ["background", "interior", "contour"]
    return ["background"] + [f"class{i}" for i in range(1, out)]


def _preprocessing(mode: str, axes: Sequence[str]) -> list[Any]:
    """The bioimageio operations that compute ``data.normalize`` (one set of statistics over
    the channels and the whole tile, as data/normalize.py takes them over the whole volume)."""
    from bioimageio.spec.model import v0_5

    ids = [v0_5.AxisId(a) for a in axes]
    if mode == "none":
        return []
    if mode == "zscore":
        return [v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=ids))]
    low, high = PERCENTILES[mode]
    return [v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
                axes=ids, min_percentile=low, max_percentile=high)),
            v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=1.0))]


def _describe_ops(mode: str) -> list[str]:
    if mode == "none":
        return []
    if mode == "zscore":
        return ["zero_mean_unit_variance (per sample, channel+spatial axes)"]
    low, high = PERCENTILES[mode]
    return [f"scale_range {low:g}-{high:g} percentile (per sample, channel+spatial axes)", "clip [0, 1]"]


def _postprocessing(activation: str) -> list[Any]:
    from bioimageio.spec.model import v0_5

    if activation == "sigmoid":
        return [v0_5.SigmoidDescr()]
    return [v0_5.SoftmaxDescr(kwargs=v0_5.SoftmaxKwargs(axis=v0_5.AxisId("channel")))]


def _weights_descr(v0_5: Any, spec: Any, files: dict[str, Path], cfg: Any,
                   torchscript_dir: Path | None) -> Any:

    version = torch.__version__.split("+")[0]
    kwargs = {"config": _architecture_kwargs(cfg)}
    state = v0_5.PytorchStateDictWeightsDescr(
        source=files["weights"], pytorch_version=version,
        architecture=v0_5.ArchitectureFromFileDescr(
            source=files["architecture"], callable=ARCHITECTURE_CALLABLE, kwargs=kwargs),
        dependencies=spec.common.FileDescr(source=files["environment"]))
    scripted = None
    if torchscript_dir is not None:
        scripted = v0_5.TorchscriptWeightsDescr(
            source=torchscript_dir / "weights_torchscript.pt", pytorch_version=version,
            parent="pytorch_state_dict")
    return v0_5.WeightsDescr(pytorch_state_dict=state, torchscript=scripted)


def _architecture_kwargs(cfg: Any) -> dict[str, Any]:
    """What build_network needs: the model section (without a pretrained path), the patch size
    (the input size of fixed-size networks) and the target (checked against out_channels)."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["pretrained"] = None
    return {"model": model, "data": {"patch_size": list(cfg.data.patch_size),
                                     "target": str(cfg.data.target)}}


def _environment() -> str:
    from .. import __version__

    version = torch.__version__.split("+")[0]
    return (
        "# The environment of the pytorch_state_dict weights (the TorchScript weights need PyTorch only).\n"
        "name: napari-connectomics\n"
        "channels:\n  - conda-forge\n  - nodefaults\n"
        "dependencies:\n"
        "  - python>=3.11\n"
        f"  - pytorch>={version}\n"
        "  - pip\n"
        "  - pip:\n"
        f"      - napari-connectomics>={__version__}\n"
    )


_CITATIONS = {
    "monai": ("Cardoso et al. (2022): MONAI: An open-source framework for deep learning in "
              "healthcare. arXiv:2211.02701", "10.48550/arXiv.2211.02701"),
    "unet": ("Ronneberger, Fischer, Brox (2015): U-Net: Convolutional Networks for Biomedical "
             "Image Segmentation. MICCAI 2015", "10.1007/978-3-319-24574-4_28"),
    "mednext": ("Roy et al. (2023): MedNeXt: Transformer-driven Scaling of ConvNets for Medical "
                "Image Segmentation. MICCAI 2023", "10.1007/978-3-031-43901-8_39"),
}


def _citations(architecture: str) -> list[tuple[str, str]]:
    keys = ["mednext"] if architecture.startswith("mednext") else ["monai", "unet"]
    return [_CITATIONS[k] for k in keys]


def _description_kwargs(cfg: Any, model: Any, name: str | None, license: str,
                        authors: Sequence[str], window: Sequence[int]) -> dict[str, Any]:
    from bioimageio.spec.model import v0_5

    from .. import __version__

    arch, dims = str(cfg.model.architecture), int(cfg.model.spatial_dims)
    target = str(cfg.data.target)
    title = name or f"napari-connectomics {arch} {dims}D {target} segmentation"
    parameters = int(sum(p.numel() for p in model.parameters()))
    return dict(
        name=title[:128],
        description=(f"{dims}D {target} segmentation of electron-microscopy images with a "
                     f"{arch} network trained by napari-connectomics {__version__}."),
        authors=[v0_5.Author(name=a) for a in (authors or ["napari-connectomics team"])],
        cite=[v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in _citations(arch)],
        license=license,
        tags=["napari-connectomics", "electron-microscopy", "segmentation", f"{dims}d", "pytorch",
              arch.replace("_", "-"), target],
        version="0.1.0",
        config=v0_5.Config(
            bioimageio=v0_5.BioimageioConfig(
                architecture_type=arch[:32], modality="electron microscopy", task="segmentation",
                model_parameter_count=parameters,
                architecture_description=f"{arch} from the napari-connectomics registry"),
            **{MARKER: {"version": __version__, "config": CONFIG_FILE,
                        "window": [int(w) for w in window],
                        "normalize": str(cfg.data.normalize)}}),
    )


def _readme(cfg: Any, test_shape: Sequence[int], torchscript: bool) -> str:
    from .. import __version__

    arch, dims = cfg.model.architecture, int(cfg.model.spatial_dims)
    mode = str(cfg.data.normalize)
    ops = "; ".join(_describe_ops(mode)) or "none (float32 cast only)"
    activation = "sigmoid" if int(cfg.model.out_channels) == 1 else "softmax over the channels"
    return f"""# napari-connectomics {arch} ({dims}D, {cfg.data.target})

A {dims}D {cfg.data.target} segmentation network for electron-microscopy images, trained with
napari-connectomics {__version__} and exported as a BioImage.IO model (spec 0.5).

* Input `{INPUT_ID}`: batch, {cfg.model.in_channels} channel(s), {"z, " if dims == 3 else ""}y, x; float32.
* Preprocessing: {ops}. napari-connectomics takes the statistics of the whole volume
  (`data.normalize: {mode}`); here they are those of the tile or image given.
* Output `{OUTPUT_ID}`: {cfg.model.out_channels} channel(s), {activation}.
* Weights: PyTorch state dict (architecture: `{ARCHITECTURE_FILE}`, which needs
  `pip install napari-connectomics`){" and TorchScript (PyTorch only)" if torchscript else ""}.
* `{CONFIG_FILE}`: the full training configuration.

## Use

    napari-connectomics predict --checkpoint model.zip --input raw.h5:raw --output pred.zarr

predicts any volume block by block with overlapping, blended windows. ilastik, deepImageJ, Fiji
and `bioimageio.core` read the package too.

## Validation

`bioimageio test model.zip` reproduces the test output (`test_output.npy`, {"x".join(map(str, test_shape))}
input) from the test input. Score the model on your own labelled data with
`napari-connectomics evaluate --prediction pred.zarr --label labels.h5:labels`.

## Limitations

Trained on the data named in `{CONFIG_FILE}`; other microscopes, resolutions or stainings may need
fine-tuning. Check the predictions before quantitative use.
"""


def _write_cover(path: Path, raw: np.ndarray, expected: np.ndarray) -> None:
    """A 2:1 PNG: the test input's middle section, and the foreground probability over it."""
    import imageio.v3 as iio
    from skimage.transform import resize

    image = raw[0, 0]
    prob = expected[0, -1]
    if image.ndim == 3:
        image, prob = image[image.shape[0] // 2], prob[prob.shape[0] // 2]
    low, high = np.percentile(image, (1, 99))
    gray = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    gray = resize(gray, (256, 256), order=1, anti_aliasing=True)
    prob = np.clip(resize(prob, (256, 256), order=1), 0, 1)
    left = np.repeat(gray[..., None], 3, axis=-1)
    tint = np.array([1.0, 0.2, 0.8])
    right = left * (1 - 0.6 * prob[..., None]) + 0.6 * prob[..., None] * tint
    cover = (np.concatenate([left, right], axis=1) * 255).round().astype(np.uint8)
    iio.imwrite(path, cover, extension=".png")


def _test_package(path: Path) -> str:
    """bioimageio.core's test of the written package; a one-line error unless it passes."""
    core = core_library()
    summary = core.test_model(str(path), devices=["cpu"])
    if summary.status != "passed":
        failed = [d for d in summary.details if d.status == "failed"]
        detail = failed[0] if failed else None
        message = (f"{detail.name}: {one_line(detail.errors[0].msg)}"
                   if detail is not None and detail.errors else (detail.name if detail else summary.status))
        raise BioimageioError(f"bioimageio.core's test of the package failed: {message}")
    return str(summary.status)

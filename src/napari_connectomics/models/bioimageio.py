"""BioImage.IO model packages: what a package is, and predicting with one.

The BioImage.IO model zoo format (bioimage.io; read by ilastik, deepImageJ, Fiji, careamics and
``bioimageio.core``) is a zip holding a description (``rdf.yaml``, spec 0.5) and the files it
names. Writing one needs our predictor (its test output), so it lives a layer up, in
:mod:`napari_connectomics.inference.bioimageio_export`; what it writes for one of our checkpoints:

* weights: the PyTorch state dict, with the architecture as a small source file
  (``napari_connectomics_network.py``) that rebuilds our network from its model config through
  napari-connectomics (the reader needs it installed), plus TorchScript (``torch.jit.trace``,
  checked to reproduce the network at two input sizes), which needs only PyTorch;
* axes batch, channel, (z,) y, x; tiles of ``min + n * step`` voxels per spatial axis from the
  architecture's size multiple (a fixed size for networks built for one input);
* preprocessing that reproduces ``data.normalize`` with per-sample statistics over the channel
  and spatial axes (our statistics are measured on the whole volume): ``zscore`` is
  zero_mean_unit_variance, ``percentile`` is scale_range 1-99 then clip [0, 1], ``minmax`` is
  scale_range 0-100 then clip [0, 1]; postprocessing sigmoid (one channel) or softmax over the
  channels, as ``predict`` does;
* a test input (synthetic EM, or a crop of ``sample``) and the output our model computes for it,
  a cover image, a README, the training config (``config.yaml``), license, authors, citations.

The package is tested with ``bioimageio.core.test_model`` before it is moved into place (under a
temporary name until then, so nothing half-written is ever left at ``output``).

:func:`load_bioimageio_model` is the other direction, used by ``predict`` (through
:func:`..checkpoint.load_model_from_checkpoint`) for a ``.zip`` package, an ``rdf.yaml`` /
``bioimageio.yaml`` or a folder holding one: a package we exported is rebuilt exactly from its
config and state dict; another zoo model with ``pytorch_state_dict`` or ``torchscript`` weights,
one input and one output with batch / channel / z / y / x axes is wrapped, its tile sizes become
the window, its preprocessing our normalisation (what cannot be reproduced is refused, naming
it) and its postprocessing the activation.

Nothing here downloads: only the package's own files are read (URLs in a foreign description are
not checked). ``bioimageio.spec`` / ``bioimageio.core`` are imported only when a package is
written or read (``pip install 'napari-connectomics[bioimageio]'``).
"""

from __future__ import annotations

import io
import logging
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .bioimageio_files import is_description_name

__all__ = [
    "ARCHITECTURE_FILE",
    "BioimageioError",
    "core_library",
    "one_line",
    "spec_library",
    "bioimageio_config",
    "is_bioimageio_source",
    "load_bioimageio_model",
]

logger = logging.getLogger(__name__)

ARCHITECTURE_FILE = "napari_connectomics_network.py"
ARCHITECTURE_CALLABLE = "build_network"
CONFIG_FILE = "config.yaml"
MARKER = "napari_connectomics"  # config.napari_connectomics of the packages we write
INPUT_ID, OUTPUT_ID = "raw", "probabilities"
PERCENTILES = {"percentile": (1.0, 99.0), "minmax": (0.0, 100.0)}  # data/normalize.py's modes
TRACE_TOLERANCE = 1e-4  # TorchScript vs the network, relative to the largest logit
INSTALL_HINT = "pip install 'napari-connectomics[bioimageio]'"

# The architecture source written into each package (weights.pytorch_state_dict.architecture).
ARCHITECTURE_SOURCE = '''\
"""The network of a napari-connectomics model package, for its pytorch_state_dict weights.

bioimage.io tools call build_network(**kwargs) with the kwargs of rdf.yaml (the model section of
the training config, the patch size and the target), then load the state dict. Needs
napari-connectomics installed (pip install napari-connectomics), which brings PyTorch and MONAI
(and the MedNeXt code for MedNeXt networks). The TorchScript weights need PyTorch only.
"""


def build_network(config):
    """The untrained network described by ``config``; in eval mode it returns logits
    (N, C, [z,] y, x), which the package's postprocessing turns into probabilities."""
    from napari_connectomics.models import build_model

    return build_model(config)
'''


class BioimageioError(ValueError):
    """A package cannot be written or used; the message is one line naming what."""


# --------------------------------------------------------------------------------------------
# Which files are packages
# --------------------------------------------------------------------------------------------


def is_bioimageio_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a BioImage.IO model: a zip holding ``rdf.yaml`` / ``bioimageio.yaml``
    (``*.bioimageio.yaml``) at its top, such a YAML file, or a folder holding one. Cheap: no
    bioimageio import; a torch checkpoint (also a zip inside) is never one."""
    path = Path(path)
    if is_description_name(path.name):
        return True
    if path.is_dir():
        return any(is_description_name(p.name) for p in path.iterdir() if p.is_file())
    if path.suffix.lower() != ".zip" or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(is_description_name(n) for n in archive.namelist() if "/" not in n)
    except (zipfile.BadZipFile, OSError):
        return False


def _description_path(path: Path) -> Path:
    """The file bioimageio reads: the zip or YAML itself, or the YAML inside a folder."""
    if path.is_dir():
        for candidate in sorted(path.iterdir()):
            if candidate.is_file() and is_description_name(candidate.name):
                return candidate
    return path


# --------------------------------------------------------------------------------------------
# bioimageio imports (lazy), quiet and offline
# --------------------------------------------------------------------------------------------


def spec_library() -> Any:
    """``bioimageio.spec``, with its loguru messages off (unless debugging): one-line errors."""
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise BioimageioError(f"BioImage.IO models need bioimageio.core: {INSTALL_HINT}") from None
    from loguru import logger as loguru

    if logging.getLogger("napari_connectomics").isEnabledFor(logging.DEBUG):
        loguru.enable("bioimageio")
    else:
        loguru.disable("bioimageio")
    return spec


def core_library() -> Any:
    spec_library()
    try:
        import bioimageio.core as core
    except ImportError:
        raise BioimageioError(f"BioImage.IO models need bioimageio.core: {INSTALL_HINT}") from None
    return core


def one_line(err: BaseException | str) -> str:
    """The first informative line of a (pydantic / bioimageio) error message."""
    errors = getattr(err, "errors", None)
    if callable(errors):  # pydantic: the first error's location and message
        try:
            first = errors()[0]
            return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        except Exception:
            pass
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.lower().startswith(("traceback", "for further"))]
    text = " ".join(useful[:2]) if useful else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------------------------
# Import: a zoo model as predict's model and config
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What predict needs from a description."""
    spatial: list[str]  # z, y, x or y, x
    in_channels: int
    out_channels: int
    normalize: str
    activation: str  # sigmoid, softmax or identity
    sizes: list[Any]  # per spatial axis: int (fixed) or (min, step)
    input_order: list[str]  # the model's input axes: batch, channel, z, y, x in its order
    output_order: list[str]
    fixed_ops: list[tuple[str, Any, Any]] = field(default_factory=list)  # after our normalisation
    ours: dict[str, Any] | None = None  # config.napari_connectomics of our packages


def load_bioimageio_model(source: str | os.PathLike) -> tuple[Any, Any]:
    """(model, config) for predict from a BioImage.IO package (see the module doc)."""
    path = Path(source)
    descr = _load_description(path)
    plan = _plan(descr, path)
    if plan.ours is not None:
        from .build import build_model
        from .checkpoint import CheckpointError

        cfg = _our_config(descr, plan, path)
        model = build_model(cfg)
        state = torch.load(io.BytesIO(_read(descr.weights.pytorch_state_dict)), map_location="cpu",
                           weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            example = (missing or unexpected)[0]
            raise CheckpointError(f"{path}: its weights do not match its config.yaml ({len(missing)} "
                                  f"missing, {len(unexpected)} unexpected, e.g. {example})")
    else:
        cfg = _foreign_config(plan)
        model = _ZooNetwork(_load_network(descr, path), plan)
    model.output_activation = plan.activation
    return model, cfg


def bioimageio_config(source: str | os.PathLike) -> Any:
    """The config predict uses for a package (no network is built)."""
    path = Path(source)
    descr = _load_description(path)
    plan = _plan(descr, path)
    return _our_config(descr, plan, path) if plan.ours is not None else _foreign_config(plan)


def _load_description(path: Path) -> Any:
    spec = spec_library()
    if not path.exists():
        raise BioimageioError(f"{path} does not exist")
    try:
        descr = spec.load_description(str(_description_path(path)), format_version="latest",
                                      perform_io_checks=False)
    except Exception as err:
        raise BioimageioError(f"{path} cannot be read as a BioImage.IO model: {one_line(err)}") from None
    from bioimageio.spec.model import v0_5

    if not isinstance(descr, v0_5.ModelDescr):
        kind = getattr(descr, "type", None)
        what = f"a {kind} description" if kind and kind != "model" else "an invalid model description"
        reason = ""
        summary = getattr(descr, "validation_summary", None)
        errors = [e for d in summary.details for e in d.errors] if summary is not None else []
        if errors:
            where = ".".join(str(p) for p in errors[0].loc)
            reason = f": {where}: {one_line(errors[0].msg)}"
        raise BioimageioError(f"{path} is not a valid BioImage.IO model ({what}){reason}")
    return descr


def _read(file_descr: Any) -> bytes:
    from bioimageio.spec.utils import get_reader

    return get_reader(file_descr.source, sha256=getattr(file_descr, "sha256", None)).read()


def _plan(descr: Any, path: Path) -> _Plan:
    """Axes, sizes, normalisation and activation of a description, or a one-line refusal."""
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise BioimageioError(f"{path}: {len(descr.inputs)} inputs and {len(descr.outputs)} outputs are not "
                              "supported: napari-connectomics runs models with one input and one output")
    tensor_in, tensor_out = descr.inputs[0], descr.outputs[0]
    input_order, in_channels, spatial, sizes = _input_axes(tensor_in, path)
    output_order, out_channels = _output_axes(tensor_out, tensor_in, spatial, path)
    normalize, fixed_ops = _input_processing(tensor_in, input_order, in_channels, path)
    activation = _output_processing(tensor_out, path)
    ours = getattr(descr.config, MARKER, None)
    if not isinstance(ours, dict) or descr.weights.pytorch_state_dict is None or \
            not any(_file_name(a) == CONFIG_FILE for a in descr.attachments):
        ours = None  # not written by us (or changed since): run it as any zoo model
    return _Plan(spatial, in_channels, out_channels, normalize, activation, sizes, input_order,
                 output_order, fixed_ops, ours)


def _file_name(file_descr: Any) -> str:
    source = file_descr.source
    return str(getattr(source, "path", source)).replace("\\", "/").rsplit("/", 1)[-1]


def _axis_kind(axis: Any) -> str:
    """batch, channel or a spatial id (z, y, x); anything else is unsupported."""
    kind = axis.type
    if kind in ("batch", "channel"):
        return kind
    if kind == "space" and str(axis.id) in ("z", "y", "x"):
        return str(axis.id)
    return f"{kind} axis '{axis.id}'"


def _axis_order(tensor: Any, role: str, path: Path) -> tuple[list[str], int]:
    """The kinds of ``tensor``'s axes in its order and its channel count; an axis kind we cannot
    run, or a channel axis of variable size, is refused in one line."""
    order, channels = [], 1
    for axis in tensor.axes:
        kind = _axis_kind(axis)
        if kind not in ("batch", "channel", "z", "y", "x"):
            raise BioimageioError(f"{path}: {role} {kind} is not supported: napari-connectomics runs models "
                                  "with batch, channel and z, y, x (or y, x) axes")
        order.append(kind)
        if kind == "channel":
            if not isinstance(axis.size, int):
                raise BioimageioError(f"{path}: an {role} channel axis of variable size is not supported")
            channels = int(axis.size)
    return order, channels


def _input_axes(tensor: Any, path: Path) -> tuple[list[str], int, list[str], list[Any]]:
    from bioimageio.spec.model import v0_5

    order, channels = _axis_order(tensor, "input", path)
    sizes = {}
    for axis, kind in zip(tensor.axes, order):
        if kind not in ("batch", "channel"):
            if isinstance(axis.size, int):
                sizes[kind] = int(axis.size)
            elif isinstance(axis.size, v0_5.ParameterizedSize):
                sizes[kind] = (int(axis.size.min), int(axis.size.step))
            else:
                raise BioimageioError(f"{path}: input axis '{kind}' takes its size from another axis "
                                      f"({type(axis.size).__name__}), which is not supported")
    spatial = [a for a in ("z", "y", "x") if a in sizes]
    if spatial not in (["y", "x"], ["z", "y", "x"]):
        raise BioimageioError(f"{path}: input spatial axes {','.join(spatial) or 'none'} are not supported: "
                              "napari-connectomics runs y, x (2D) or z, y, x (3D) models")
    return order, channels, spatial, [sizes[a] for a in spatial]


def _output_axes(tensor: Any, tensor_in: Any, spatial: list[str], path: Path) -> tuple[list[str], int]:
    from bioimageio.spec.model import v0_5

    order, channels = _axis_order(tensor, "output", path)
    for axis, kind in zip(tensor.axes, order):
        if kind not in ("batch", "channel"):
            size = axis.size
            same = (isinstance(size, v0_5.SizeReference) and str(size.axis_id) == kind
                    and str(size.tensor_id) == str(tensor_in.id) and size.offset == 0)
            ref = next(a for a in tensor_in.axes if str(a.id) == kind) if same else None
            if not same or float(axis.scale) != float(ref.scale):
                raise BioimageioError(f"{path}: output axis '{kind}' is not the size of the input's: "
                                      "napari-connectomics runs models whose output has the input's shape")
    if sorted(a for a in order if a in "zyx") != sorted(spatial):
        raise BioimageioError(f"{path}: the output's spatial axes differ from the input's, "
                              "which is not supported")
    return order, channels


def _kinds(tensor: Any, axes: Any) -> list[str] | None:
    """The kinds (batch, channel, z, y, x) of the axes a statistic is taken over, by their ids."""
    return None if axes is None else [_axis_kind_of(tensor, a) for a in axes]


def _covers(axes: list[str] | None, order: list[str], channels: int) -> bool:
    """Whether statistics over ``axes`` are one set per sample over all channels and voxels, as
    ours (a batch axis in them, bioimageio's dataset statistics, is the same for one volume)."""
    if axes is None:  # dataset statistics over everything
        return True
    chosen = set(axes)
    needed = {a for a in order if a not in ("batch", "channel")}
    if channels > 1 or "channel" in chosen:
        needed.add("channel")
    return needed <= chosen | {"batch"} and chosen <= set(order)


def _input_processing(tensor: Any, order: list[str], channels: int,
                      path: Path) -> tuple[str, list[tuple[str, Any, Any]]]:
    """(our normalisation, fixed operations after it) that reproduce the preprocessing."""
    ops = [op for op in tensor.preprocessing if op.id != "ensure_dtype"]
    mode = "none"
    if ops and ops[0].id == "zero_mean_unit_variance":
        if not _covers(_kinds(tensor, ops[0].kwargs.axes), order, channels):
            raise _unsupported(path, ops[0], "statistics per channel or per section; ours are one set "
                               "over all channels and voxels")
        mode, ops = "zscore", ops[1:]
    elif ops and ops[0].id == "scale_range":
        kwargs = ops[0].kwargs
        if kwargs.reference_tensor not in (None, tensor.id) or \
                not _covers(_kinds(tensor, kwargs.axes), order, channels):
            raise _unsupported(path, ops[0], "statistics per channel, per section or of another tensor")
        low, high = float(kwargs.min_percentile), float(kwargs.max_percentile)
        clipped = len(ops) > 1 and ops[1].id == "clip" and ops[1].kwargs.min == 0 and ops[1].kwargs.max == 1 \
            and ops[1].kwargs.min_percentile is None and ops[1].kwargs.max_percentile is None
        if (low, high) == PERCENTILES["minmax"]:  # the range is [0, 1] already: a clip changes nothing
            mode, ops = "minmax", ops[2 if clipped else 1:]
        elif (low, high) == PERCENTILES["percentile"] and clipped:
            mode, ops = "percentile", ops[2:]
        else:
            raise _unsupported(path, ops[0], "napari-connectomics normalises with the 1-99 percentiles "
                               "clipped to [0, 1], min-max, z-score or not at all")
    fixed: list[tuple[str, Any, Any]] = []
    for op in ops:
        kwargs = op.kwargs
        if op.id == "scale_linear":
            fixed.append(("affine", _per_channel(kwargs, "gain", channels),
                          _per_channel(kwargs, "offset", channels)))
        elif op.id == "fixed_zero_mean_unit_variance":
            mean, std = _per_channel(kwargs, "mean", channels), _per_channel(kwargs, "std", channels)
            fixed.append(("affine", [1.0 / s for s in std], [-m / s for m, s in zip(mean, std)]))
        elif op.id == "clip" and kwargs.min_percentile is None and kwargs.max_percentile is None:
            fixed.append(("clip", kwargs.min, kwargs.max))
        else:
            raise _unsupported(path, op, "napari-connectomics reproduces zero_mean_unit_variance, "
                               "scale_range (0-100, or 1-99 then clip [0, 1]) first, then scale_linear, "
                               "fixed_zero_mean_unit_variance or a fixed clip")
    return mode, fixed


def _per_channel(kwargs: Any, name: str, channels: int) -> list[float]:
    value = getattr(kwargs, name)
    if isinstance(value, (int, float)):
        return [float(value)] * channels
    values = [float(v) for v in value]
    if len(values) != channels:
        raise BioimageioError(f"preprocessing {name} has {len(values)} values for {channels} channels")
    return values


def _unsupported(path: Path, op: Any, why: str) -> BioimageioError:
    kwargs = {k: v for k, v in op.kwargs.model_dump(mode="json").items() if v is not None} \
        if hasattr(op, "kwargs") and hasattr(op.kwargs, "model_dump") else {}
    shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return BioimageioError(f"{path}: preprocessing {op.id}({shown}) cannot be reproduced: {why}")


def _output_processing(tensor: Any, path: Path) -> str:
    ops = [op for op in tensor.postprocessing if op.id != "ensure_dtype"]
    if not ops:
        return "identity"
    if len(ops) == 1 and ops[0].id == "sigmoid":
        return "sigmoid"
    if len(ops) == 1 and ops[0].id == "softmax" and _axis_kind_of(tensor, ops[0].kwargs.axis) == "channel":
        return "softmax"
    names = ", ".join(op.id for op in ops)
    raise BioimageioError(f"{path}: postprocessing {names} is not supported: napari-connectomics applies "
                          "sigmoid, softmax over the channels or nothing (use --threshold / --instances "
                          "for labels)")


def _axis_kind_of(tensor: Any, axis_id: Any) -> str:
    for axis in tensor.axes:
        if str(axis.id) == str(axis_id):
            return _axis_kind(axis)
    return str(axis_id)


def _our_config(descr: Any, plan: _Plan, path: Path) -> Any:
    """The training config attached to one of our packages, with the description's
    normalisation (the same unless someone edited rdf.yaml)."""
    import yaml

    from ..config import load_config

    attachment = next(a for a in descr.attachments if _file_name(a) == CONFIG_FILE)
    try:
        stored = yaml.safe_load(_read(attachment).decode("utf-8"))
    except Exception as err:
        raise BioimageioError(f"{path}: its {CONFIG_FILE} cannot be read: {one_line(err)}") from None
    cfg = load_config(overrides=stored)
    if cfg.data.normalize != plan.normalize:
        logger.warning("%s: normalising with %s as its description says (its config.yaml says %s)",
                       path, plan.normalize, cfg.data.normalize)
        cfg.data.normalize = plan.normalize
    return cfg


def _foreign_config(plan: _Plan) -> Any:
    """A config for a foreign model: its channels, dimensions, normalisation and window."""
    from ..config import default_patch_size, load_config

    dims = len(plan.spatial)
    target = "binary" if plan.out_channels <= 2 else "semantic"
    cfg = load_config(overrides={
        "model": {"spatial_dims": dims, "in_channels": plan.in_channels, "out_channels": plan.out_channels},
        "data": {"normalize": plan.normalize, "target": target}})
    window = [_valid_size(size, want) for size, want in zip(plan.sizes, default_patch_size(dims))]
    # set after validation: the sizes are the zoo model's, not the placeholder architecture's
    cfg.data.patch_size = window
    cfg.inference.window_size = window
    return cfg


def _valid_size(size: Any, want: int) -> int:
    """The smallest size the axis takes that is at least ``want`` (a fixed size as is)."""
    if isinstance(size, int):
        return size
    low, step = size
    return low + max(0, -(-(want - low) // step)) * step


def _load_network(descr: Any, path: Path) -> Any:
    """The zoo model's torch module: its state dict with its architecture, else its TorchScript."""
    weights = descr.weights
    problems = []
    if weights.pytorch_state_dict is not None:
        try:
            from bioimageio.core.backends.pytorch_backend import load_torch_model

            core_library()
            return load_torch_model(weights.pytorch_state_dict, load_state=True, devices=["cpu"])
        except BioimageioError:
            raise
        except Exception as err:
            problems.append(f"pytorch_state_dict: {type(err).__name__}: {one_line(err)}")
    if weights.torchscript is not None:
        try:
            return torch.jit.load(io.BytesIO(_read(weights.torchscript)), map_location="cpu")
        except Exception as err:
            problems.append(f"torchscript: {one_line(err)}")
    if problems:
        raise BioimageioError(f"{path}: the network cannot be loaded ({'; '.join(problems)})")
    present = ", ".join(name for name, entry in weights if entry is not None)
    raise BioimageioError(f"{path}: weights {present} are not supported: napari-connectomics runs "
                          "pytorch_state_dict or torchscript weights")


class _ZooNetwork(torch.nn.Module):
    """A foreign zoo model behind our network interface: (N, C, [z,] y, x) in, the same out.

    Applies the preprocessing that follows our normalisation, moves the axes into the model's
    order, pads each spatial axis up to a size the model takes (cropped off again), and returns
    its raw output (predict applies ``output_activation``, the description's postprocessing).
    """

    def __init__(self, network: Any, plan: _Plan) -> None:
        super().__init__()
        self.network = network.eval()
        self.plan = plan
        self.spatial_dims = len(plan.spatial)
        self.architecture = "bioimageio"
        fixed = [s for s in plan.sizes if isinstance(s, int)]
        steps = [s for s in plan.sizes if not isinstance(s, int)]
        self.fixed_input_size = list(plan.sizes) if len(fixed) == len(plan.sizes) else None
        self.size_multiple = (math.lcm(*(step for _, step in steps))
                              if steps and not fixed and all(low % step == 0 for low, step in steps) else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        for kind, a, b in plan.fixed_ops:
            if kind == "affine":
                shape = (1, -1) + (1,) * (x.ndim - 2)
                x = x * x.new_tensor(a).view(shape) + x.new_tensor(b).view(shape)
            else:
                x = torch.clamp(x, a, b)
        spatial = tuple(x.shape[2:])
        target = [_valid_size(size, n) if not isinstance(size, int) else size
                  for size, n in zip(plan.sizes, spatial)]
        if any(t < n for t, n in zip(target, spatial)):
            sizes = ",".join(map(str, target))
            raise ValueError(f"this model takes {'x'.join(map(str, target))} inputs, not "
                             f"{'x'.join(map(str, spatial))}; predict with --window {sizes}")
        if list(spatial) != target:
            pad = [p for t, n in zip(reversed(target), reversed(spatial)) for p in (0, t - n)]
            x = torch.nn.functional.pad(x, pad, mode="replicate")
        y = self._run(x)
        return y[(slice(None), slice(None), *(slice(0, n) for n in spatial))]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The network on (N, C, *spatial) in its own axis order; back to (N, C, *spatial)."""
        plan = self.plan
        labels = ["batch", "channel", *plan.spatial]
        if "channel" not in plan.input_order:  # a one-channel model without a channel axis
            x, labels = x[:, 0], [a for a in labels if a != "channel"]
        if "batch" in plan.input_order:
            y = _first(self.network(x.permute(*[labels.index(a) for a in plan.input_order])))
            out = list(plan.output_order)
        else:  # one item at a time
            inner = labels[1:]
            y = torch.stack([_first(self.network(item.permute(*[inner.index(a) for a in plan.input_order])))
                             for item in x])
            out = ["batch", *plan.output_order]
        if "channel" not in out:
            y, out = y.unsqueeze(-1), [*out, "channel"]
        return y.permute(*[out.index(a) for a in ["batch", "channel", *plan.spatial]])


def _first(output: Any) -> Any:
    return output[0] if isinstance(output, (list, tuple)) else output

"""The panels' starting config, chosen for the device napari runs on (no Qt, no torch).

A new user presses Train with the defaults; they must show a result within a minute. On a CPU a
3D U-Net step takes ~20 s, so there the panels start from a small 2D residual U-Net on slices;
with an NVIDIA GPU from MedNeXt-S (kernel 3, deep supervision) in 3D. The two presets are stated
once, as YAML files beside the package's configs (:data:`CPU_PRESET`, :data:`GPU_PRESET`), loaded
with the CLI's :func:`~napari_connectomics.config.load_config`; the CLI's own defaults (the
schema) stay as they are.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import load_config
from ..config.validation import default_patch_size

__all__ = ["CPU_PRESET", "GPU_PRESET", "default_config", "fit_patch", "gpu_available"]

logger = logging.getLogger(__name__)

PRESETS = Path(__file__).resolve().parents[1] / "configs"
CPU_PRESET = PRESETS / "interactive_cpu.yaml"
GPU_PRESET = PRESETS / "interactive_gpu.yaml"
NVIDIA_DEVICE = Path("/dev/nvidia0")


@functools.lru_cache(maxsize=1)
def gpu_available() -> bool:
    """Whether training here will likely get a CUDA GPU, decided without importing torch.

    Importing torch costs seconds, and this runs on the GUI thread when a panel opens, so it is a
    cheap guess: torch already imported -> ``torch.cuda.is_available()``; else an installed torch
    built without CUDA (its ``version.py`` says ``cuda = None``) -> no; else an NVIDIA device node
    (``/dev/nvidia0``) or ``nvidia-smi`` on the PATH -> yes. A wrong guess only picks the other
    preset; the Train panel's device 'auto' still asks torch when the run starts.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    if _torch_build_has_cuda() is False:
        return False
    return NVIDIA_DEVICE.exists() or shutil.which("nvidia-smi") is not None


def _torch_build_has_cuda() -> bool | None:
    """From torch's ``version.py`` text: False for a CPU-only build, None when unknown."""
    try:
        spec = importlib.util.find_spec("torch")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None:
        return False  # no torch: nothing will train on a GPU
    for folder in spec.submodule_search_locations or ():
        try:
            text = (Path(folder) / "version.py").read_text()
        except OSError:
            continue
        match = re.search(r"^cuda\b[^=\n]*=\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip() != "None"
    return None


def default_config(gpu: bool | None = None) -> Any:
    """The preset for this device (``gpu`` None: :func:`gpu_available`), as a validated config."""
    use_gpu = gpu_available() if gpu is None else gpu
    preset = GPU_PRESET if use_gpu else CPU_PRESET
    logger.debug("starting config: %s", preset.name)
    return copy.deepcopy(_loaded(preset))


@functools.lru_cache(maxsize=2)
def _loaded(preset: Path) -> Any:
    """A preset read and validated once per process (a panel opening must not spend 0.1 s on it);
    callers get a deep copy to change."""
    return load_config(preset)


def fit_patch(cfg: Any, image_shape: Sequence[int], in_channels: int = 1) -> list[int] | None:
    """The config's training patch shrunk to an image (z, y, x or y, x; a leading channel axis
    when ``in_channels`` > 1): each axis at most the image's, rounded down to the architecture's
    size multiple (at least one multiple, which the trainer pads). None when the image has fewer
    spatial axes than the network needs, or the architecture takes one fixed input size."""
    from ..models.architectures.registry import get_architecture_spec

    dims = int(cfg.model.spatial_dims)
    try:
        spec = get_architecture_spec(cfg.model.architecture)
        multiple = max(1, spec.size_multiple_for(cfg.model))
    except Exception:  # an unknown or half-edited architecture: leave the patch alone
        return None
    if spec.fixed_input_size:
        return None
    spatial = tuple(int(n) for n in image_shape)[1 if in_channels > 1 else 0:]
    if len(spatial) < dims:
        return None
    patch = cfg.data.patch_size
    base = [int(n) for n in patch] if patch is not None and len(patch) == dims else default_patch_size(dims)
    return [max(multiple, min(size, axis // multiple * multiple)) for size, axis in zip(base, spatial[-dims:])]

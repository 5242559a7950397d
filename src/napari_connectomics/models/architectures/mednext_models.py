"""MedNeXt behind the registry: `mednext` (S/B/M/L presets) and `mednext_custom` (every parameter).

The network is our own weight-compatible implementation (``mednext/``); with
``model.mednext_impl: official`` the original ``nnunet_mednext`` package is used when importable.
"""

from __future__ import annotations

from typing import Any

from ...config.errors import ConfigError, format_choices
from .mednext.presets import MEDNEXT_KERNEL_SIZES, NUM_LEVELS, NUM_STAGES, SIZE_MULTIPLE
from .registry import register_architecture

__all__: list[str] = []


def _check_kernel(model: Any) -> None:
    if model.kernel_size not in MEDNEXT_KERNEL_SIZES:
        raise ConfigError("model.kernel_size", model.kernel_size,
                          f"MedNeXt kernels: choose one of {format_choices(MEDNEXT_KERNEL_SIZES)}")


def _check_stages(model: Any) -> None:
    """mednext_custom's per-stage options: an int or one value per stage."""
    from omegaconf import OmegaConf

    exp_r = model.mednext_exp_r
    exp_list = list(exp_r) if OmegaConf.is_list(exp_r) else [exp_r]
    if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in exp_list) or (
        OmegaConf.is_list(exp_r) and len(exp_list) != NUM_STAGES
    ):
        plain = OmegaConf.to_container(exp_r) if OmegaConf.is_config(exp_r) else exp_r
        raise ConfigError("model.mednext_exp_r", plain,
                          f"give a positive int or a list of {NUM_STAGES} positive ints")
    counts = list(model.mednext_block_counts)
    if len(counts) != NUM_STAGES or any(c < 1 for c in counts):
        raise ConfigError("model.mednext_block_counts", counts, f"give {NUM_STAGES} positive ints (one per stage)")


MEDNEXT_SPEC = dict(
    size_multiple=SIZE_MULTIPLE,
    min_voxels_at_bottom=2,  # GroupNorm at the bottleneck needs more than one voxel
    bottom_factor=SIZE_MULTIPLE,
    deep_supervision=True,
    output_scales=NUM_LEVELS + 1,  # full resolution and one head per level
    checks=(_check_kernel,),
)
_COMMON_FIELDS = ("kernel_size", "deep_supervision", "deep_supervision_weights", "mednext_norm", "mednext_grn",
                  "mednext_checkpoint")


def _dim(cfg: Any) -> str:
    return f"{cfg.model.spatial_dims}d"


def _official():
    try:
        import nnunet_mednext  # noqa: F401
    except ImportError:
        raise ConfigError("model.mednext_impl", "official",
                          "the package nnunet_mednext is not installed; use model.mednext_impl=ours") from None
    return nnunet_mednext


def _wrap(network):
    """The network behind the ConnectomicsModel interface; the spec stamps its facts on."""
    from .wrappers import MedNeXtModel

    return MedNeXtModel(network)


def _checkpoint_style(cfg: Any, preset_default: str | None) -> str | None:
    """`model.mednext_checkpoint`: unset keeps the preset's choice, 'none' switches it off."""
    style = cfg.model.mednext_checkpoint
    if style is None:
        return preset_default
    return None if style == "none" else style


@register_architecture("mednext", description="MedNeXt v1 presets S/B/M/L, kernels 3/5/7, deep supervision",
                       fields=("mednext_size", *_COMMON_FIELDS),
                       none_labels={"mednext_checkpoint": "preset's choice (M/L on)"}, **MEDNEXT_SPEC)
def build_mednext(cfg: Any):
    m = cfg.model
    if m.mednext_impl == "official":
        network = _official().create_mednext_v1(
            num_input_channels=m.in_channels, num_classes=m.out_channels, model_id=m.mednext_size,
            kernel_size=m.kernel_size, deep_supervision=m.deep_supervision)
        return _wrap(network)

    from .mednext import create_mednext_v1
    from .mednext.presets import MEDNEXT_PRESETS

    network = create_mednext_v1(
        num_input_channels=m.in_channels,
        num_classes=m.out_channels,
        model_id=m.mednext_size,
        kernel_size=m.kernel_size,
        deep_supervision=m.deep_supervision,
        dim=_dim(cfg),
        norm_type=m.mednext_norm,
        grn=m.mednext_grn,
        checkpoint_style=_checkpoint_style(cfg, MEDNEXT_PRESETS[m.mednext_size]["checkpoint_style"]),
    )
    return _wrap(network)


@register_architecture("mednext_custom", description="MedNeXt v1 with every parameter from the config",
                       fields=("mednext_base_channels", "mednext_exp_r", "mednext_block_counts", *_COMMON_FIELDS[:3],
                               "mednext_do_res", "mednext_do_res_up_down", *_COMMON_FIELDS[3:]),
                       none_labels={"mednext_checkpoint": "off (default)"},
                       **{**MEDNEXT_SPEC, "checks": (_check_kernel, _check_stages)})
def build_mednext_custom(cfg: Any):
    from omegaconf import OmegaConf

    m = cfg.model
    exp_r = m.mednext_exp_r
    params = dict(
        in_channels=m.in_channels,
        n_channels=m.mednext_base_channels,
        n_classes=m.out_channels,
        exp_r=list(exp_r) if OmegaConf.is_list(exp_r) else int(exp_r),
        kernel_size=m.kernel_size,
        deep_supervision=m.deep_supervision,
        do_res=m.mednext_do_res,
        do_res_up_down=m.mednext_do_res_up_down,
        block_counts=list(m.mednext_block_counts),
        checkpoint_style=_checkpoint_style(cfg, None),
        norm_type=m.mednext_norm,
        dim=_dim(cfg),
        grn=m.mednext_grn,
    )
    if m.mednext_impl == "official":
        from nnunet_mednext.mednextv1 import MedNeXt  # type: ignore[import-not-found]

        _official()
        return _wrap(MedNeXt(**params))

    from .mednext import MedNeXt

    return _wrap(MedNeXt(**params))

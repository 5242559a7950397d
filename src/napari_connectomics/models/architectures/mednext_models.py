"""MedNeXt behind the registry: `mednext` (S/B/M/L presets) and `mednext_custom` (every parameter).

The network is our own weight-compatible implementation (``mednext/``); with
``model.mednext_impl: official`` the original ``nnunet_mednext`` package is used when importable.
"""

from __future__ import annotations

from typing import Any

from ...config.errors import ConfigError
from .registry import register_architecture

__all__: list[str] = []

MEDNEXT_SPEC = dict(
    size_multiple=16,  # four stride-2 levels
    min_voxels_at_bottom=2,  # GroupNorm at the bottleneck needs more than one voxel
    bottom_factor=16,
    deep_supervision=True,
    output_scales=5,
)


def _dim(cfg: Any) -> str:
    return f"{cfg.model.spatial_dims}d"


def _official():
    try:
        import nnunet_mednext  # noqa: F401
    except ImportError:
        raise ConfigError("model.mednext_impl", "official",
                          "the package nnunet_mednext is not installed; use model.mednext_impl=ours") from None
    return nnunet_mednext


def _wrap(network, cfg: Any, name: str):
    from .wrappers import MedNeXtModel

    return MedNeXtModel(
        network,
        deep_supervision=cfg.model.deep_supervision,
        architecture=name,
        spatial_dims=cfg.model.spatial_dims,
        size_multiple=16,
    )


def _checkpoint_style(cfg: Any, preset_default: str | None) -> str | None:
    """`model.mednext_checkpoint`: unset keeps the preset's choice, 'none' switches it off."""
    style = cfg.model.mednext_checkpoint
    if style is None:
        return preset_default
    return None if style == "none" else style


@register_architecture("mednext", description="MedNeXt v1 presets S/B/M/L, kernels 3/5/7, deep supervision",
                       **MEDNEXT_SPEC)
def build_mednext(cfg: Any):
    m = cfg.model
    if m.mednext_impl == "official":
        network = _official().create_mednext_v1(
            num_input_channels=m.in_channels, num_classes=m.out_channels, model_id=m.mednext_size,
            kernel_size=m.kernel_size, deep_supervision=m.deep_supervision)
        return _wrap(network, cfg, "mednext")

    from .mednext import MEDNEXT_PRESETS, create_mednext_v1

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
    return _wrap(network, cfg, "mednext")


@register_architecture("mednext_custom", description="MedNeXt v1 with every parameter from the config",
                       **MEDNEXT_SPEC)
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
        return _wrap(MedNeXt(**params), cfg, "mednext_custom")

    from .mednext import MedNeXt

    return _wrap(MedNeXt(**params), cfg, "mednext_custom")

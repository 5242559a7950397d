"""MONAI networks behind the registry's interface (current MONAI API, 2D or 3D from the config).

Each builder imports torch and MONAI when called, so importing this module (to register the names)
stays cheap.
"""

from __future__ import annotations

from typing import Any

from ...config.errors import ConfigError
from .registry import power_of_two_multiple, register_architecture

__all__: list[str] = []

MONAI_NORMS = ("batch", "instance", "group")
TRANSFORMER_NORMS = ("batch", "instance")
UNETR_FEATURE_SIZE = 16  # model.feature_size when unset
SWIN_FEATURE_SIZE = 24
SWIN_FEATURE_MULTIPLE = 12  # SwinUNETR refuses feature sizes not divisible by 12


def _check_unetr(model: Any) -> None:
    if model.hidden_size % model.num_heads:
        raise ConfigError("model.num_heads", model.num_heads,
                          f"model.hidden_size ({model.hidden_size}) must be divisible by it")


def _check_swin(model: Any) -> None:
    feature_size = model.feature_size or SWIN_FEATURE_SIZE
    if feature_size % SWIN_FEATURE_MULTIPLE:
        raise ConfigError("model.feature_size", model.feature_size,
                          f"SwinUNETR needs a multiple of {SWIN_FEATURE_MULTIPLE}, e.g. 24 or 48")


def _norm(cfg: Any, channels: list[int]) -> tuple | str:
    """MONAI's norm argument from `model.norm`; group norm gets a group count dividing every level."""
    import math

    norm = cfg.model.norm
    if norm == "group":
        groups = math.gcd(8, *channels)
        return ("group", {"num_groups": groups})
    if norm == "instance":
        return ("instance", {"affine": True})
    return norm


def _wrap(model):
    """The MONAI network behind the ConnectomicsModel interface; the spec stamps its facts on."""
    from .wrappers import MONAIModelWrapper

    return MONAIModelWrapper(model)


def _basic_unet_features(filters: list[int]) -> tuple[int, ...]:
    """BasicUNet takes six sizes: five encoder levels and the last decoder level (the first size).

    The plan doubled the sixth from the fifth, which puts the widest layer at full resolution;
    the last decoder level mirrors the first encoder level instead, as MONAI's default does.
    """
    features = list(filters[:5])
    while len(features) < 5:
        features.append(features[-1] * 2)
    return tuple(features + [features[0]])


@register_architecture(
    "monai_basic_unet3d",
    description="MONAI BasicUNet: a plain 4-level U-Net (2D or 3D)",
    size_multiple=16,
    norms=MONAI_NORMS,
    fields=("filters", "norm", "activation", "dropout"),
)
def build_basic_unet(cfg: Any):
    from monai.networks.nets import BasicUNet

    features = _basic_unet_features(list(cfg.model.filters))
    model = BasicUNet(
        spatial_dims=cfg.model.spatial_dims,
        in_channels=cfg.model.in_channels,
        out_channels=cfg.model.out_channels,
        features=features,
        act=cfg.model.activation,
        norm=_norm(cfg, list(features)),
        dropout=cfg.model.dropout,
    )
    return _wrap(model)


def _unet_multiple(model_cfg: Any) -> int:
    return power_of_two_multiple(len(model_cfg.filters) - 1)


@register_architecture(
    "monai_unet",
    description="MONAI UNet with residual units; depth from model.filters",
    size_multiple=_unet_multiple,
    norms=MONAI_NORMS,
    fields=("filters", "kernel_size", "num_res_units", "norm", "activation", "dropout"),
)
def build_monai_unet(cfg: Any):
    from monai.networks.nets import UNet

    channels = list(cfg.model.filters)
    model = UNet(
        spatial_dims=cfg.model.spatial_dims,
        in_channels=cfg.model.in_channels,
        out_channels=cfg.model.out_channels,
        channels=channels,
        strides=[2] * (len(channels) - 1),
        kernel_size=cfg.model.kernel_size,
        up_kernel_size=cfg.model.kernel_size,
        num_res_units=cfg.model.num_res_units,
        act=cfg.model.activation,
        norm=_norm(cfg, channels),
        dropout=cfg.model.dropout,
    )
    return _wrap(model)


@register_architecture(
    "monai_unetr",
    description="MONAI UNETR: ViT encoder on 16-voxel patches, fixed input size",
    size_multiple=16,
    fixed_input_size=True,
    norms=TRANSFORMER_NORMS,
    fields=("input_size", "feature_size", "hidden_size", "mlp_dim", "num_heads", "pos_embed", "norm", "dropout"),
    unset_defaults={"feature_size": UNETR_FEATURE_SIZE},
    checks=(_check_unetr,),
    requires=("einops",),
)
def build_unetr(cfg: Any):
    from monai.networks.nets import UNETR

    from ...config import effective_input_size

    size = effective_input_size(cfg)
    model = UNETR(
        in_channels=cfg.model.in_channels,
        out_channels=cfg.model.out_channels,
        img_size=tuple(size),
        feature_size=cfg.model.feature_size or UNETR_FEATURE_SIZE,
        hidden_size=cfg.model.hidden_size,
        mlp_dim=cfg.model.mlp_dim,
        num_heads=cfg.model.num_heads,
        proj_type=cfg.model.pos_embed,
        norm_name=cfg.model.norm,
        dropout_rate=cfg.model.dropout,
        spatial_dims=cfg.model.spatial_dims,
    )
    return _wrap(model)


@register_architecture(
    "monai_swin_unetr",
    description="MONAI SwinUNETR: shifted-window transformer encoder, sizes multiple of 32",
    size_multiple=32,
    norms=TRANSFORMER_NORMS,
    fields=("feature_size", "norm", "dropout", "attn_drop_rate", "dropout_path_rate", "use_checkpoint"),
    unset_defaults={"feature_size": SWIN_FEATURE_SIZE},
    checks=(_check_swin,),
    requires=("einops",),
)
def build_swin_unetr(cfg: Any):
    # MONAI >= 1.5 removed `img_size`: the network adapts to any multiple of 32.
    from monai.networks.nets import SwinUNETR

    feature_size = cfg.model.feature_size or SWIN_FEATURE_SIZE
    model = SwinUNETR(
        in_channels=cfg.model.in_channels,
        out_channels=cfg.model.out_channels,
        feature_size=feature_size,
        norm_name=cfg.model.norm,
        drop_rate=cfg.model.dropout,
        attn_drop_rate=cfg.model.attn_drop_rate,
        dropout_path_rate=cfg.model.dropout_path_rate,
        use_checkpoint=cfg.model.use_checkpoint,
        spatial_dims=cfg.model.spatial_dims,
    )
    return _wrap(model)


@register_architecture(
    "monai_segresnet",
    description="MONAI SegResNet: residual encoder-decoder (3 downsamplings)",
    size_multiple=8,
    norms=MONAI_NORMS,
    fields=("init_filters", "norm", "activation", "dropout"),
)
def build_segresnet(cfg: Any):
    from monai.networks.nets import SegResNet

    init_filters = cfg.model.init_filters
    model = SegResNet(
        spatial_dims=cfg.model.spatial_dims,
        init_filters=init_filters,
        in_channels=cfg.model.in_channels,
        out_channels=cfg.model.out_channels,
        dropout_prob=cfg.model.dropout or None,
        act=cfg.model.activation,
        norm=_norm(cfg, [init_filters]),
    )
    return _wrap(model)

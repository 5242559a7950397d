"""Architecture registry and the built-in networks (MONAI, MedNeXt)."""

from .registry import (
    ArchitectureSpec,
    get_architecture_builder,
    get_architecture_spec,
    is_architecture_available,
    list_architectures,
    register_architecture,
)

__all__ = [
    "ArchitectureSpec",
    "ConnectomicsModel",
    "get_architecture_builder",
    "get_architecture_spec",
    "is_architecture_available",
    "list_architectures",
    "register_architecture",
]


def __getattr__(name: str):
    # ConnectomicsModel needs torch: import it only when asked for.
    if name == "ConnectomicsModel":
        from .base import ConnectomicsModel

        return ConnectomicsModel
    raise AttributeError(name)

"""Networks: the architecture registry, the built-in architectures and build_model."""

from .build import build_model

__all__ = ["build_model"]

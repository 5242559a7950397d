"""The post-processor registry, without scipy or scikit-image: names for ``inference.instances``,
``predict --instances`` and the Segment panel's picker.

An entry is a :class:`PostprocessorSpec`: a function ``(maps, *, threshold, min_size) -> label or
class volume`` (``maps`` is :class:`~napari_connectomics.inference.postprocess.PredictionMaps`),
and whether it can run block by block on volumes larger than memory (merging objects across block
faces) or needs the whole volume in memory. The built-ins call into :mod:`.postprocess`, imported
when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import POSTPROCESSORS

__all__ = ["PostprocessorSpec", "blockwise_postprocessors", "get_postprocessor_spec", "register_postprocessor"]

Postprocess = Callable[..., Any]


@dataclass(frozen=True)
class PostprocessorSpec:
    """A post-processor and what the engine must know to schedule it.

    blockwise: runs block by block with objects merged across faces (any volume size): only the
        built-ins, which the block-wise labeller implements; otherwise the whole probability volume
        is held in memory.
    labels_objects: the result holds object ids (instances) rather than a mask or class map.
    """

    name: str
    function: Postprocess
    description: str = ""
    label: str = ""  # short name for pickers; the name when empty
    blockwise: bool = False
    labels_objects: bool = True

    def __call__(self, maps: Any, *, threshold: float, min_size: int) -> Any:
        return self.function(maps, threshold=threshold, min_size=min_size)


def register_postprocessor(name: str, **spec: Any) -> Callable[[Postprocess], Postprocess]:
    """Decorator: register ``function(maps, *, threshold, min_size)`` under ``name``; keyword
    arguments are the other fields of :class:`PostprocessorSpec`. A name cannot be taken twice."""

    def decorator(function: Postprocess) -> Postprocess:
        description = spec.pop("description", None)
        if description is None:
            lines = (function.__doc__ or "").strip().splitlines()
            description = lines[0] if lines else ""
        POSTPROCESSORS.register(name)(PostprocessorSpec(name=name, function=function, description=description,
                                                        **spec))
        return function

    return decorator


def get_postprocessor_spec(name: str) -> PostprocessorSpec:
    """The spec registered under ``name``; the error lists the available names."""
    return POSTPROCESSORS.get(name)


def blockwise_postprocessors() -> list[str]:
    """Names that run block by block on volumes of any size."""
    return [name for name, spec in POSTPROCESSORS.items() if spec.blockwise]


@register_postprocessor("none", description="the foreground mask (or the class map of semantic outputs)",
                        label="none (threshold mask)", blockwise=True, labels_objects=False)
def _no_instances(maps: Any, *, threshold: float, min_size: int) -> Any:
    from .postprocess import foreground_mask

    return foreground_mask(maps, threshold)


@register_postprocessor("cc", description="connected components (block by block, any size)",
                        label="connected components", blockwise=True)
def _cc_instances(maps: Any, *, threshold: float, min_size: int) -> Any:
    from .postprocess import connected_components, foreground_mask

    return connected_components(foreground_mask(maps, threshold), min_size=min_size)


@register_postprocessor("watershed", description="seeded watershed for touching objects (whole volume in memory)")
def _watershed_instances(maps: Any, *, threshold: float, min_size: int) -> Any:
    from .postprocess import watershed_instances

    return watershed_instances(maps.foreground, contour=maps.contour, threshold=threshold, min_size=min_size)

"""The file names of a BioImage.IO model description, torch-free.

:mod:`.bioimageio` reads and writes packages (and imports torch); the Segment panel only
needs to tell a model's description from other YAML files on napari's GUI thread. Both ask here.
"""

from __future__ import annotations

__all__ = ["DESCRIPTION_NAMES", "is_description_name"]

DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
DESCRIPTION_SUFFIX = ".bioimageio.yaml"  # e.g. "unet.bioimageio.yaml", allowed by spec 0.5


def is_description_name(name: str) -> bool:
    """Whether a file called ``name`` is a model description (``rdf.yaml``, ``*.bioimageio.yaml``)."""
    name = name.lower()
    return name in DESCRIPTION_NAMES or name.endswith(DESCRIPTION_SUFFIX)

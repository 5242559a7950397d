"""napari-connectomics: deep-learning segmentation of EM volumes, in napari and on the command line.

Importing this package is cheap on purpose: napari imports it at start-up, so torch, MONAI and
Lightning are imported only by the submodules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Label conventions shared by data, losses and metrics (see DESIGN.md, "Conventions for data").

Training labels become a class-index map: 0..C-1 for the classes the network predicts and
IGNORE_INDEX where nothing was annotated (sparse mode's 0, padding). Every loss and metric skips
IGNORE_INDEX voxels.
"""

IGNORE_INDEX = -1

__all__ = ["IGNORE_INDEX"]

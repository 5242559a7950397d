"""`python -m napari_connectomics` is the `napari-connectomics` command."""

import sys

from .cli import main

sys.exit(main())

"""Synthetic electron-microscopy volumes with mitochondria ground truth.

This is the project's embedded default: the demo, the napari sample data and every self-contained
test train and predict on it, because real EM data is not always available. It therefore has to
behave like EM, not like a toy: a network must learn shape and texture to find the mitochondria,
since membranes, vesicles, dark neurites and other organelles are as dark as they are (a global
threshold fails).

The scene is built in physical units (nm) and rasterised on the requested grid, so ``voxel_size``
changes the apparent scale, as a different microscope setting would. The default, 30 x 8 x 8 nm
(z, y, x), imitates anisotropic serial-section EM of neuropil at a pixel size where a 256 x 256
section (2 um across) holds several cells and mitochondria; ``voxel_size=(5, 5, 5)`` gives
Lucchi-like isotropic FIB-SEM sampling.

What is drawn, all in 3D so that objects continue across sections:

* cells: a warped power (weighted Voronoi) diagram of big and small cells with rounded corners,
  stretched along z like neurites crossing the section plane; their boundaries are dark membrane
  sheets 24 nm (3 px) thick, wider and fainter where they lie oblique to the section;
* mitochondria: bent capsules with elliptical cross-section, mostly lying in the section plane,
  inside cells and clear of membranes; matrix darker than cytoplasm, a darker double-membrane rim
  and cristae-like stripes across the long axis; some are placed in touching pairs (side by side or
  end to end) so instance separation has something to split;
* distractors, none of them labelled: clusters of synaptic vesicles (small dark-rimmed spheres),
  larger vesicles and ER / endosome outlines (dark-rimmed shells), dense blobs (lysosomes, dense
  bodies), postsynaptic densities (thick dark membrane patches) and whole dark neurites;
* imaging: per-cell brightness, low-frequency and fine cytoplasm texture, a Gaussian PSF, correlated
  and shot-like noise, per-section brightness drift and a soft limit into uint8 (no clipped blocks).

Modules, in the order the scene is built: ``generate`` (the entry point and argument checks),
``grid`` (voxel and coarse grids, smooth noise), ``cells`` (cell layout and membranes), ``shapes``
(the capsule organelles are made of), ``mitochondria`` (their placement, the ground truth),
``distractors`` (unlabelled look-alikes) and ``rendering`` (texture, contrast, blur, noise);
``params`` holds every size and grey level.
"""

from __future__ import annotations

from .generate import SyntheticEM, make_synthetic_em

__all__ = ["SyntheticEM", "make_synthetic_em"]

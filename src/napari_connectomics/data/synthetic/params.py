"""Every number of the synthetic scene (sizes in nm, grey levels), in one place to tune."""

from __future__ import annotations

DEFAULT_VOXEL_SIZE = (30.0, 8.0, 8.0)  # nm, z-y-x: anisotropic like serial-section EM
MIN_SIZE = 16

# Geometry, in nm.
COARSE_STEP_NM = 40.0  # grid for the smooth fields (cells, warps, shading), interpolated to voxels
PAD_NM = 400.0  # cell seeds also fill a margin around the volume, so borders look like the inside
Z_STRETCH = 0.5  # z distances count half: cells run along z like neurites crossing the section
BIG_CELL_SPACING_NM = 950.0  # dendrite-like cells that host most mitochondria
SMALL_CELL_SPACING_NM = 340.0  # axon / bouton-like profiles
LAYOUT_TRIES = 25
BUNDLE_FRACTION = 0.4  # big cells replaced by bundles of small profiles
WARP_NM = 170.0  # amplitude of the smooth displacement that bends the straight Voronoi faces
WARP_CORR_NM = 380.0
WARP_FINE_NM = 25.0  # and a gentle wiggle on top
WARP_FINE_CORR_NM = 90.0
CORNER_RADIUS_NM = 50.0  # rounding of cell corners
MEMBRANE_HALF_NM = 12.0  # membrane mask half-width: 24 nm, i.e. 3 px at 8 nm
MITO_MARGIN_NM = 40.0  # clearance between mitochondria and membranes (~ coarse grid half-diagonal)
MITO_GAP_NM = 24.0  # clearance between mitochondria that are not a touching pair
MITO_RADIUS_NM = (65.0, 180.0)
MITO_TARGET_FRACTION = 0.06  # default foreground fraction (Lucchi: ~5 %)
MITO_MEAN_VOLUME_NM3 = 2.6e7  # of one mitochondrion, for the expected count
RIM_NM = 18.0  # double membrane
CRISTAE_PERIOD_NM = (34.0, 52.0)
PSF_NM = 9.0  # in-plane Gaussian PSF sigma

# Grey levels before noise (uint8 scale).
CYTO_BIG = 172.0
CYTO_SMALL = 190.0
CYTO_DARK = (118.0, 140.0)
MITO_MATRIX = (110.0, 132.0)
MEMBRANE_CONTRAST = 0.64
MEMBRANE_LOOK = 1.5  # width of the dark profile relative to the labelled membrane band
NOISE_STD = 11.0

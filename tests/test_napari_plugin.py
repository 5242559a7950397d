"""The plugin through napari itself: manifest, sample data in a real viewer, cheap start-up."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

napari = pytest.importorskip("napari")


def test_manifest_validates_with_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-connectomics")
    manifest.validate_imports()
    keys = [s.key for s in manifest.contributions.sample_data]
    assert "synthetic_em" in keys


def test_sample_data_opens_in_a_real_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-connectomics", "synthetic_em")
    image, labels = viewer.layers["synthetic EM"], viewer.layers["mitochondria (ground truth)"]
    assert isinstance(image, napari.layers.Image) and isinstance(labels, napari.layers.Labels)
    assert image.data.shape == labels.data.shape == (32, 256, 256)
    assert image.data.dtype == np.uint8 and labels.data.dtype == np.uint32
    assert labels.data.max() > 0
    assert tuple(image.scale) == tuple(labels.scale)
    assert image.scale[0] > image.scale[1]  # thin-section EM: z steps are larger


def test_napari_startup_and_sample_do_not_import_torch():
    """Opening napari with the plugin (and its sample) must not pay for torch, MONAI or Lightning."""
    code = (
        "import sys, napari\n"
        "viewer = napari.Viewer(show=False)\n"
        "viewer.open_sample('napari-connectomics', 'synthetic_em')\n"
        "heavy = [m for m in ('torch', 'monai', 'lightning') if m in sys.modules]\n"
        "viewer.close()\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]

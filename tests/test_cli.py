"""The real `napari-connectomics` command in a subprocess: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "napari_connectomics", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("napari-connectomics")
    assert exe.exists()
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "napari-connectomics" in result.stdout


def test_list_architectures_json():
    result = run_cli("list-architectures", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"mednext", "mednext_custom", "monai_unet", "monai_unetr", "monai_swin_unetr",
            "monai_segresnet", "monai_basic_unet3d"} <= set(rows)
    assert rows["mednext"]["deep_supervision_supported"] and rows["mednext"]["size_multiple"] == 16
    assert rows["monai_swin_unetr"]["size_multiple"] == 32
    assert rows["monai_unetr"]["fixed_input_size"] == [32, 128, 128]


def test_list_architectures_plain():
    result = run_cli("list-architectures")
    assert result.returncode == 0, result.stderr
    assert "mednext" in result.stdout and "monai_segresnet" in result.stdout


def test_info_reports_parameters_scales_and_multiple():
    result = run_cli("info", "mednext", "mednext_size=B", "kernel_size=5", "deep_supervision=true", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["parameters"] == 10_957_867  # MEDNEXT.md: B, k=5, with deep supervision
    assert info["output_scales"] == 5
    assert info["output_resolutions"] == ["1", "1/2", "1/4", "1/8", "1/16"]
    assert info["size_multiple"] == 16


def test_info_in_2d():
    result = run_cli("info", "monai_unet", "spatial_dims=2", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["spatial_dims"] == 2 and info["patch_size"] == [256, 256]


@pytest.mark.parametrize("args, expected", [
    (("info", "mednext", "kernel_size=4"), "model.kernel_size: 4 is not valid; MedNeXt kernels: choose one of 3, 5, 7"),
    (("info", "mednxt"), "Did you mean 'mednext'"),
    (("info", "mednext", "mednext_sise=S"), "did you mean 'model.mednext_size'"),
    (("info", "mednext", "data.patch_size=[20,64,64]"), "multiple of 16"),
])
def test_errors_are_one_line_with_exit_2(args, expected):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_readme_architecture_table_matches_the_registry():
    result = run_cli("list-architectures", "--markdown")
    assert result.returncode == 0, result.stderr
    readme = (REPO / "README.md").read_text()
    assert result.stdout.strip() in readme, "regenerate the README table with list-architectures --markdown"


def test_demo_runs_every_architecture_on_the_synthetic_sample():
    listing = json.loads(run_cli("list-architectures", "--json").stdout)
    expected = sum(len(row["supported_spatial_dims"]) for row in listing if row["available"])
    result = run_cli("demo", "--architectures", "--shape", "32,64,64")
    assert result.returncode == 0, result.stderr
    assert f"Architecture sweep done: {expected} networks ran" in result.stderr
    for row in listing:
        assert f"{row['name']:<20} 3D" in result.stderr


def test_training_output_shows_no_library_noise(tmp_path):
    """Our progress and results, not Lightning's advertisement or its own deprecation warning;
    --verbose brings the libraries' messages back; the verbosity flags work after the command too."""
    quiet = run_cli("demo", "--steps", "2", "--output", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr
    for noise in ("litlogger", "LeafSpec", "DeprecationWarning"):
        assert noise not in quiet.stderr + quiet.stdout
    assert "foreground IoU" in quiet.stdout
    verbose = run_cli("demo", "--steps", "2", "--output", str(tmp_path / "verbose"), "--verbose")
    assert verbose.returncode == 0 and "litlogger" in verbose.stderr
    assert run_cli("info", "mednext", "-q").returncode == 0
    silent = run_cli("demo", "--steps", "2", "--output", str(tmp_path / "silent"), "-q")
    assert silent.returncode == 0, silent.stderr
    assert "GPU available" in quiet.stderr and "GPU available" not in silent.stderr  # Lightning's INFO lines

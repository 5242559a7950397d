"""The fresh-machine set-up: the system packages are stated once (tools/system-packages.sh), and
without a display the napari tests are skipped with the command that fixes it, never a core dump."""

from __future__ import annotations

import subprocess
from pathlib import Path

import conftest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "system-packages.sh"


def test_without_xvfb_the_gui_tests_are_skipped_with_the_fix(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    problem = conftest._display_problem()
    assert problem is not None and f"sudo bash {SCRIPT}" in problem


def test_with_a_display_nothing_is_skipped(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":99")
    assert conftest._display_problem() is None


def test_the_script_finds_what_it_installed_here():
    """CI ran the script (make test) before the tests: --check must now pass."""
    assert subprocess.run(["bash", str(SCRIPT), "--check"]).returncode == 0


def test_ci_and_make_test_use_the_one_script():
    root = SCRIPT.parents[1]
    assert "make test" in (root / ".ci" / "run").read_text()
    assert "tools/system-packages.sh" in (root / "Makefile").read_text()
    assert "apt-get install" not in (root / ".ci" / "run").read_text()

"""DESIGN.md's layer rules, read from the source: arrows point down, Qt and napari only in widgets.

Every import statement counts, including the lazy ones inside functions. The registries' providers
(module names as strings in ``registry.py``, imported on first lookup like entry points) are the one
way a lower layer reaches the entries that higher layers register.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_connectomics"

# Each layer and the package parts it may import (besides itself).
ALLOWED = {
    "registry": set(),
    "progress": set(),
    "config": {"registry"},
    "data": {"config", "registry", "progress"},
    "models": {"config", "registry", "data", "progress"},
    "training": {"config", "registry", "data", "models", "progress", "inference"},
    "inference": {"config", "registry", "data", "models", "progress"},
}
# The package root holds only the version (it imports nothing), so every layer may read it: outputs
# and model packages record which version wrote them.
EVERYWHERE = {"__version__"}
GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt")


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["napari_connectomics", *path.relative_to(PACKAGE).parent.parts]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
                names += [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            else:
                names.append(node.module or "")
    return names


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if _layer(p) in ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    layer = _layer(path)
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "napari_connectomics" and len(parts) > 1:
            target = parts[1]
            assert target == layer or target in ALLOWED[layer] | EVERYWHERE, f"{layer} imports {name}"
        assert parts[0] not in GUI_MODULES, f"{path.name} ({layer}) imports {name}: Qt/napari belong in widgets/"


def test_config_imports_nothing_above_it():
    for path in (PACKAGE / "config").glob("*.py"):
        above = [n for n in _imports(path) if n.startswith("napari_connectomics.")
                 and n.split(".")[1] not in ("config", "registry", *EVERYWHERE)]
        assert not above, f"{path.name} imports {above}"


def test_the_package_root_imports_nothing():
    """What makes its version safe to read from every layer."""
    assert _imports(PACKAGE / "__init__.py") == []

"""Imports point down only: cli -> experiments -> the decoupled library; the library never imports experiments."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import decoupled

from .conftest import SRC

PACKAGE = Path(decoupled.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Modules named by a file's imports, relative ones resolved against its package."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module or "")
    return names


def test_the_library_never_imports_experiments_or_the_cli():
    for path in PACKAGE.rglob("*.py"):
        if "experiments" in path.parts or path.name == "cli.py":
            continue
        bad = {n for n in _imports(path) if n.startswith(("decoupled.experiments", "decoupled.cli"))}
        assert not bad, f"{path} imports {bad}"


def test_experiments_never_import_the_cli():
    for path in (PACKAGE / "experiments").rglob("*.py"):
        assert not {n for n in _imports(path) if n.startswith("decoupled.cli")}, path


def test_importing_the_library_loads_no_experiment_code():
    code = "import sys, decoupled; print(sorted(m for m in sys.modules if m.startswith('decoupled.experiments')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(SRC)}, timeout=120)  # fmt: skip
    assert result.stdout.strip() == "[]", result.stderr

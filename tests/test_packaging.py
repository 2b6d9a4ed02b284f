"""What CI checks about the package itself: the sdist and the wheel carry the package data (the C source of the
native kernel, the presets, the py.typed marker), and .ci/run runs the README's test command and the checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = [
    "decoupled/py.typed",
    "decoupled/kernels/csrc/sgd.c",
    "decoupled/experiments/presets/default.toml",
    "decoupled/experiments/presets/smoke.toml",
    "decoupled/experiments/presets/paper.toml",
]


def test_ci_runs_the_readme_test_command_verbatim_and_the_maintainer_checks():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .venv && [^\n]+pytest -q)\n```", readme)
    assert len(commands) == 1, commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[0] in ci.splitlines()
    for check in (".venv/bin/ruff check src", ".venv/bin/ruff format --check src", ".venv/bin/mypy",
                  "bash .ci/package.sh .venv/bin/python"):  # fmt: skip
        assert check in ci.splitlines(), check
    package = (ROOT / ".ci" / "package.sh").read_text()
    assert "-m build" in package and "torch==2.13.0" in package and "[sweep]" in package
    assert "decoupled\" sweep --preset smoke" in package and "optimizer.step()" in package


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C toolchain for build")
def test_the_sdist_and_the_wheel_ship_the_package_data(tmp_path):
    pytest.importorskip("build")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # --no-isolation: the venv's setuptools, so that the test needs no index (CI also builds it isolated).
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check", "--outdir", str(tmp_path / "dist"),
                             str(source)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("decoupled-*.whl")
    (sdist,) = (tmp_path / "dist").glob("decoupled-*.tar.gz")
    wheel_names = set(zipfile.ZipFile(wheel).namelist())
    sdist_names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert [name for name in PACKAGE_DATA if name not in wheel_names] == []
    assert [name for name in PACKAGE_DATA if f"src/{name}" not in sdist_names] == []
    entry_points = next(name for name in wheel_names if name.endswith("entry_points.txt"))
    assert "decoupled = decoupled.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

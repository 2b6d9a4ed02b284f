"""What a run record says about where it came from: code version, library versions, hardware."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["code_version", "describe", "hardware", "library_versions"]

_LIBRARIES = ("decoupled", "torch", "numpy", "mnist1d", "scikit-learn", "matplotlib")


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """``git:<describe>`` when this package runs from its own source checkout (``<repo>/src/decoupled``), else
    the installed package version. An installed copy never asks git: a virtual environment inside some other
    repository would otherwise report that repository's version."""
    from decoupled import __version__

    package = Path(__file__).resolve().parents[1]  # .../decoupled
    repository = package.parents[1]  # <repo> in the src layout
    if package.parent.name == "src" and (repository / "pyproject.toml").is_file() and (repository / ".git").exists():
        try:
            result = subprocess.run(
                ["git", "describe", "--always", "--dirty", "--tags"],
                cwd=repository, capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            if result.returncode == 0 and result.stdout.strip():
                return f"git:{result.stdout.strip()} (decoupled {__version__})"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"decoupled {__version__}"


@functools.lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["torch"] = torch.__version__
    return versions


def hardware(device: str) -> dict[str, object]:
    """The machine and the device a run used (CPU model and core count; GPU name on CUDA)."""
    info: dict[str, object] = {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


@functools.lru_cache(maxsize=None)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or sys.platform


def describe(device: str) -> dict[str, object]:
    """The provenance of a run on ``device`` in this process, as stored with its record."""
    return {"code_version": code_version(), "library_versions": library_versions(), "hardware": hardware(device)}

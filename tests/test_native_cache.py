"""The native SGD kernel's build cache: a cache folder that cannot be written falls back (another folder, or
another kernel path), never an OSError from a step; and the cache is keyed by the CPU the kernel is built for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import decoupled
from decoupled.kernels import native

_STEP = """
import torch, decoupled
from decoupled.kernels import native
param = torch.nn.Parameter(torch.ones(64)); param.grad = torch.ones(64)
decoupled.SGDW([param], lr=0.5, momentum=0.0, weight_decay=0.0).step()
assert torch.equal(param.detach(), torch.full((64,), 0.5)), param
print("native", native.available())
"""


def _run(env: dict[str, str], drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in drop and k != "DECOUPLED_CACHE_DIR"}
    environment["PYTHONPATH"] = str(Path(decoupled.__file__).parents[1])
    return subprocess.run(
        [sys.executable, "-c", _STEP], env={**environment, **env}, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("env", "drop"),
    [
        ({"DECOUPLED_CACHE_DIR": "/proc/decoupled-cannot-exist"}, ()),  # unwritable even for root
        ({"HOME": "/proc/decoupled-cannot-exist"}, ("XDG_CACHE_HOME",)),  # HOME that cannot hold ~/.cache
        ({}, ("HOME", "XDG_CACHE_HOME")),  # no HOME at all
    ],
    ids=["unwritable-DECOUPLED_CACHE_DIR", "unwritable-HOME", "no-HOME"],
)
def test_an_unwritable_cache_folder_falls_back(env: dict[str, str], drop: tuple[str, ...]) -> None:
    result = _run(env, drop)
    assert result.returncode == 0, result.stderr[-3000:]
    if native.available():  # the compiler works here: the per-user temporary folder takes the library
        assert "native True" in result.stdout


def test_no_writable_folder_at_all_means_another_kernel_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nowhere to build: the native kernel is unavailable (with the reason) and SGDW steps run elsewhere."""
    monkeypatch.setattr(native, "_cache_dirs", lambda: [Path("/proc/decoupled-cannot-exist")])
    native._load.cache_clear()
    try:
        assert not native.available()
        assert "/proc/decoupled-cannot-exist" in native.unavailable_reason()
        param = torch.nn.Parameter(torch.ones(8))
        param.grad = torch.ones(8)
        decoupled.SGDW([param], lr=0.5, momentum=0.9, weight_decay=0.0).step()
        assert torch.equal(param.detach(), torch.full((8,), 0.5))
    finally:
        monkeypatch.undo()
        native._load.cache_clear()


def test_the_cache_key_names_the_cpu_not_the_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two machines sharing a home folder must not share a library built with -march=native for one of them."""
    if not native.available():
        pytest.skip(native.unavailable_reason())
    monkeypatch.setattr(native, "_cache_dirs", lambda: [tmp_path])
    names = []
    for cpu in ("vendor_id: A\nflags: avx2", "vendor_id: A\nflags: avx512f"):
        monkeypatch.setattr(native, "_cpu_signature", lambda cpu=cpu: cpu)
        native._load.cache_clear()
        try:
            assert native.available()
        finally:
            native._load.cache_clear()
        names.append(sorted(p.name for p in tmp_path.iterdir()))
    assert len(names[1]) > len(names[0]), names  # the second CPU got a library of its own
    monkeypatch.setattr(native.platform, "node", lambda: "another-host")
    assert "another-host" not in native._cpu_signature()

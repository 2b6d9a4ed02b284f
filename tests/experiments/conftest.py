"""Shared helpers of the sweep tests: tiny configs, a tiny CIFAR-10 folder, running the CLI, refusals that leave
every file as it was, stores of made-up runs."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import decoupled
from decoupled.experiments.config import load_sweep_config

SRC = Path(decoupled.__file__).resolve().parents[1]


def tiny_overrides(**extra) -> dict:
    """A sweep of seconds: 600 MNIST-1D examples, 1 epoch, width-8 net, one cell per optimizer unless changed."""
    tree = {
        "seeds": 1,
        "data": {"train_size": 300, "val_size": 150, "test_size": 150},
        "model": {"width": 8},
        "train": {"epochs": 1, "batch_size": 64},
        "grid": {
            "adam": {"lr": [0.01], "weight_decay": [1e-4]},
            "adamw": {"lr": [0.01], "weight_decay": [1e-3]},
            "sgd": {"lr": [0.1], "weight_decay": [1e-4]},
            "sgdw": {"lr": [0.1], "weight_decay": [1e-5]},
        },
    }
    for key, value in extra.items():
        tree[key] = value
    return tree


@pytest.fixture
def tiny_config():
    return load_sweep_config("smoke", overrides=tiny_overrides())


def write_tiny_cifar(folder: Path, per_batch: int = 6, test: int = 8, seed: int = 0) -> Path:
    """A CIFAR-10 folder in torchvision's format with ``per_batch`` images in each of the 5 training batches."""
    rng = np.random.default_rng(seed)
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)

    def batch(count: int, offset: int) -> dict:
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        return {b"batch_label": b"tiny", b"labels": [(offset + i) % 10 for i in range(count)], b"data": data,
                b"filenames": [f"{offset + i}.png".encode() for i in range(count)]}  # fmt: skip

    for index in range(1, 6):
        with open(root / f"data_batch_{index}", "wb") as handle:
            pickle.dump(batch(per_batch, index * 100), handle)
    with open(root / "test_batch", "wb") as handle:
        pickle.dump(batch(test, 0), handle)
    with open(root / "batches.meta", "wb") as handle:
        names = [n.encode() for n in ("airplane automobile bird cat deer dog frog horse ship truck".split())]
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, handle)
    return folder


def _cli_env(extra: dict[str, str] | None) -> dict[str, str]:
    """This process's environment with this checkout's src first on PYTHONPATH, and ``extra`` on top."""
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(extra or {})}


def cli(
    *args: str, cwd: Path | None = None, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m decoupled.cli ARGS`` in a fresh process (as a user would), capturing its output.
    ``env``: variables to set on top of this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "decoupled.cli", *args], cwd=cwd, env=_cli_env(env), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def popen_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "decoupled.cli", *args], cwd=cwd, env=_cli_env(env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def kill_after_runs(process: subprocess.Popen, store_file: Path, runs: int = 2, timeout: float = 120) -> None:
    """SIGKILL a running sweep ``process`` as soon as its store holds ``runs`` runs (waiting up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if store_file.exists():  # never connect before: sqlite3 would create an empty file
            try:
                if sqlite3.connect(store_file, timeout=5).execute("SELECT COUNT(*) FROM runs").fetchone()[0] >= runs:
                    break
            except sqlite3.OperationalError:  # tables not created yet
                pass
        time.sleep(0.1)
    assert process.poll() is None, "the sweep finished before it could be killed; make it longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.communicate()


def refused(capsys, argv: list[str], expected: str) -> str:
    """Run main(argv) in this process; it must exit 2 with exactly one stderr line containing ``expected``."""
    from decoupled.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and expected in lines[0], lines
    assert "Traceback" not in captured.err
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (none if it does not exist) -> its SHA-256."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def refused_unchanged(capsys, argv: list[str], expected: str, folder: Path) -> str:
    """:func:`refused`, and every file under ``folder`` as it was (a refused command changes nothing)."""
    before = digest(folder)
    line = refused(capsys, argv, expected)
    assert digest(folder) == before, line
    return line


PROVENANCE = {"code_version": "test", "library_versions": {}, "hardware": {"cpu": "test CPU"}}


def add_runs(folder: Path, config, error_of=lambda task, index: 0.1 + 0.01 * (index % 7) + 0.003 * task.seed,
             keep=lambda index: True, diverged: bool = False) -> int:  # fmt: skip
    """Record ``config`` and its runs in ``folder``'s store with made-up errors, as a sweep would (``keep``: which
    of the planned runs, by index); return how many."""
    from decoupled.experiments.store import Store
    from decoupled.experiments.sweep import plan_tasks
    from decoupled.experiments.train import RunRecord

    count = 0
    with Store.open(folder) as store:
        store.add_sweep(config, "test")
        for index, task in enumerate(plan_tasks(config)):
            if not keep(index):
                continue
            error = None if diverged else error_of(task, index)
            curve = [] if diverged else [error] * config.train.epochs
            store.add_run(RunRecord(task.config, task.seed, [1.0] * len(curve), curve, curve, error, error,
                                    diverged, 1.0, "cpu", provenance=PROVENANCE))  # fmt: skip
            count += 1
    return count


def tensor_data(n: int = 60):
    """A Data of ``n`` random 4-feature examples in three equal splits (a user task's)."""
    import torch

    from decoupled.experiments import Data

    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    third = n // 3
    return Data(train=(x[:third], y[:third]), val=(x[third : 2 * third], y[third : 2 * third]),
                test=(x[2 * third :], y[2 * third :]))  # fmt: skip

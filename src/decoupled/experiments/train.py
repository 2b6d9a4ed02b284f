"""One training run: a cell of the grid (optimizer, learning rate, weight decay) with one seed, of any task
(:mod:`.tasks`; the built-in ones too): :func:`run_task`.

The optimizers are the library's own: "adam" and "adamw" are :class:`decoupled.AdamW` with ``decay="l2"`` and
``decay="decoupled"``, "sgd" and "sgdw" are :class:`decoupled.SGDW` likewise, so each pair runs one
implementation and differs only in where lambda enters (line 6 vs line 12 of Algorithm 2, Algorithm 1). The
schedule eta_t is the cosine of the paper (one period over the whole run, stepped every batch, from
:class:`decoupled.CosineWarmRestarts`), or a constant eta_t = 1.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from .data import Splits
from .tasks import AnyTask, Data, Diverged, Run, Task, builtin_task, fit, make_optimizer

__all__ = ["RunRecord", "RunTask", "make_optimizer", "run_task", "seed_everything", "train_run"]


@dataclass(frozen=True)
class RunTask:
    """What a worker runs: a run config and a seed. ``key`` identifies the record in the store."""

    config: RunConfig
    seed: int

    @property
    def key(self) -> tuple[str, int]:
        return self.config.key(), self.seed

    def describe(self) -> str:
        return (
            f"{self.config.optimizer} lr={format_power_of_two(self.config.lr)} "
            f"wd={format_power_of_two(self.config.weight_decay)} seed={self.seed}"
        )


@dataclass
class RunRecord:
    """The outcome of one run. Errors are fractions in [0, 1]; per-epoch lists have one entry per finished epoch.

    A run whose training loss becomes NaN or inf stops there with ``diverged=True``; its final errors are None
    (no model to measure), and analysis counts it as 100% error.
    """

    config: RunConfig
    seed: int
    train_loss: list[float] = field(default_factory=list)  # mean cross-entropy (nats) over each epoch's batches
    val_error: list[float] = field(default_factory=list)  # after each epoch
    test_error: list[float] = field(default_factory=list)
    final_val_error: float | None = None
    final_test_error: float | None = None
    diverged: bool = False
    wall_time_s: float = 0.0  # seconds of training + evaluation, without data loading
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)  # parameters, steps: for the record
    # Where it ran (filled by the process that ran it): code_version, library_versions, hardware.
    provenance: dict[str, Any] = field(default_factory=dict)


def format_power_of_two(value: float) -> str:
    """``2^-7`` for exact powers of two, else ``%g`` (``0`` stays ``0``)."""
    if value > 0:
        exponent = math.log2(value)
        if abs(exponent - round(exponent)) < 1e-9:
            return f"2^{int(round(exponent))}"
    return f"{value:g}"


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (CPU and CUDA) for a run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_task(task: AnyTask, data: Data | None, config: RunConfig, seed: int, device: torch.device) -> RunRecord:
    """Run ``task`` for one cell and seed: the one path every run takes, built-in or yours.

    Seeds every generator with ``seed``, hands the task a :class:`~.tasks.Run` (the toolkit's loop for a
    :class:`~.tasks.Task`, your ``train(run)`` for a :class:`~.tasks.LoopTask`) and turns what it reported
    into a record. :class:`~.tasks.Diverged` (a non-finite loss, parameter or reported number) gives a record
    with ``diverged=True`` and the reason in ``extra["diverged"]``; any other exception propagates (the worker
    reports the run as failed), as does a run that never built its optimizer or reported another number of
    epochs than ``config.train.epochs``.
    """
    seed_everything(seed)
    started = time.perf_counter()
    run = Run(config, seed, device, data)
    record = RunRecord(config, seed, device=str(device))
    try:
        if isinstance(task, Task):
            fit(task, run)
        else:
            task.train(run)
    except Diverged as reason:
        record.diverged = True
        run.extra["diverged"] = str(reason) or "diverged"
    if run.optimizers_built == 0:
        raise RuntimeError("the task never called run.optimizer(...): the cell's optimizer was not used")
    if not record.diverged and not run.train_loss:
        raise RuntimeError("the task reported no epoch (call run.report(train_loss, val_error, test_error) per epoch)")
    if not record.diverged and len(run.train_loss) != run.epochs:
        raise RuntimeError(
            f"the task reported {len(run.train_loss)} epochs of a {run.epochs}-epoch run (call run.report once per "
            "epoch, for every epoch)"
        )
    record.train_loss, record.val_error, record.test_error = run.train_loss, run.val_error, run.test_error
    record.extra = run.extra
    if not record.diverged:
        record.final_val_error = record.val_error[-1]
        record.final_test_error = record.test_error[-1]
    record.wall_time_s = time.perf_counter() - started
    return record


def train_run(config: RunConfig, seed: int, splits: Splits, device: torch.device) -> RunRecord:
    """Train one built-in model (``config.model``) on ``splits`` and measure it after every epoch.

    Seed ``seed`` fixes the initialization, the batch order and any augmentation, and is the same for every
    cell: cells differ only in their hyperparameters, which makes their comparison less noisy. On a CPU with
    one thread the result is the same bit for bit whichever process runs it.
    """
    task = builtin_task(config.model, splits, augment=config.data.augment)
    return run_task(task, task.data, config, seed, device)  # type: ignore[arg-type]

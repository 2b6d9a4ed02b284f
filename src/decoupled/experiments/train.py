"""One training run: a cell of the grid (optimizer, learning rate, weight decay) with one seed.

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
from torch import Tensor, nn

import decoupled

from .augment import random_crop_flip
from .config import OPTIMIZERS, RunConfig
from .data import Splits
from .models import build_model, count_parameters

__all__ = [
    "RunRecord", "RunTask", "make_optimizer", "make_scheduler", "seed_everything", "train_run", "warm_restart_periods"
]  # fmt: skip


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


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``model``'s parameters (see the module docstring for the mapping)."""
    spec = OPTIMIZERS[config.optimizer]
    train = config.train
    if train.decay_scope == "all":
        params: Any = [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    else:
        params = decoupled.param_groups(model, config.weight_decay)
    if spec.family == "adam":
        return decoupled.AdamW(
            params, lr=config.lr, betas=(train.beta1, train.beta2), eps=train.eps,
            weight_decay=config.weight_decay, decay=spec.decay,
        )  # fmt: skip
    return decoupled.SGDW(
        params, lr=config.lr, momentum=train.momentum, weight_decay=config.weight_decay, decay=spec.decay
    )


STEP_DROPS = (0.3, 0.6, 0.8)  # fractions of the run where the step schedule multiplies eta_t by 0.1


def warm_restart_periods(epochs: int) -> tuple[float, list[float]]:
    """The warm-restart schedule of a run of ``epochs``: (first period T_0, epochs at which each period ends).

    Periods double (T_mult = 2) and fill the run exactly: k = floor(log2(epochs + 1)) periods of T_0 * 2^i with
    T_0 = epochs / (2^k - 1); 15 epochs give periods 1, 2, 4, 8 ending at epochs 1, 3, 7, 15.

    >>> warm_restart_periods(15)
    (1.0, [1.0, 3.0, 7.0, 15.0])
    """
    count = max(1, int(math.floor(math.log2(epochs + 1) + 1e-9)))
    first = epochs / (2**count - 1)
    ends, total = [], 0.0
    for i in range(count):
        total += first * 2**i
        ends.append(round(total, 9))
    return first, ends


def make_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """The eta_t schedule of ``config.train.schedule``, stepped once per batch (None for a constant eta_t)."""
    train = config.train
    if train.schedule == "cosine":
        # One cosine period over the whole run: eta_t = 0.5 (1 + cos(pi t / T)), t and T in epochs, per batch.
        return decoupled.CosineWarmRestarts(optimizer, first_period=train.epochs, steps_per_epoch=steps_per_epoch)
    if train.schedule == "warm_restarts":
        # AdamWR / SGDWR: the grid's weight decay is lambda_norm, turned into lambda = lambda_norm sqrt(b / (B T_i))
        # at the start of every period (b / B = 1 / steps_per_epoch, as the authors' code).
        first, _ = warm_restart_periods(train.epochs)
        return decoupled.CosineWarmRestarts(
            optimizer, first_period=first, steps_per_epoch=steps_per_epoch, period_mult=2.0,
            weight_decay_norm=config.weight_decay,
        )  # fmt: skip
    if train.schedule == "step":
        total = train.epochs * steps_per_epoch
        drops = [math.ceil(fraction * total) for fraction in STEP_DROPS]
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 ** sum(step >= d for d in drops))
    return None


def _error(model: nn.Module, splits: Splits, x: Tensor, y: Tensor, batch_size: int) -> float:
    """Fraction of misclassified examples, in eval mode (BatchNorm uses its running statistics)."""
    model.eval()
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(splits.to_input(x[start : start + batch_size]))
            wrong += int((logits.argmax(dim=1) != y[start : start + batch_size]).sum())
    return wrong / len(x)


def train_run(config: RunConfig, seed: int, splits: Splits, device: torch.device) -> RunRecord:
    """Train one model and measure it after every epoch.

    Seed ``seed`` fixes the initialization, the batch order and any augmentation, and is the same for every
    cell: cells differ only in their hyperparameters, which makes their comparison less noisy. On a CPU with
    one thread the result is the same bit for bit whichever process runs it.
    """
    seed_everything(seed)
    started = time.perf_counter()
    model = build_model(config.model, splits.input_shape, splits.num_classes).to(device)
    optimizer = make_optimizer(config, model)
    train = config.train
    steps_per_epoch = math.ceil(len(splits.x_train) / train.batch_size)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    order = torch.Generator().manual_seed(seed)  # batch order and augmentation, on the CPU for reproducibility
    record = RunRecord(config, seed, device=str(device))
    record.extra = {"parameters": count_parameters(model), "steps_per_epoch": steps_per_epoch}
    for epoch in range(train.epochs):
        model.train()
        permutation = torch.randperm(len(splits.x_train), generator=order).to(splits.x_train.device)
        total_loss = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            index = permutation[step * train.batch_size : (step + 1) * train.batch_size]
            inputs = splits.x_train[index]
            if config.data.augment:
                inputs = random_crop_flip(inputs, order)
            loss = nn.functional.cross_entropy(model(splits.to_input(inputs)), splits.y_train[index])
            if not torch.isfinite(loss):
                record.diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.detach()
        if record.diverged:
            break
        mean_loss = float(total_loss) / steps_per_epoch
        if not math.isfinite(mean_loss) or not all(torch.isfinite(p).all() for p in model.parameters()):
            record.diverged = True
            break
        record.train_loss.append(mean_loss)
        if train.curves or epoch == train.epochs - 1:  # without curves: one evaluation, after the last epoch
            record.val_error.append(_error(model, splits, splits.x_val, splits.y_val, train.eval_batch_size))
            record.test_error.append(_error(model, splits, splits.x_test, splits.y_test, train.eval_batch_size))
    if not record.diverged:
        record.final_val_error = record.val_error[-1]
        record.final_test_error = record.test_error[-1]
    record.wall_time_s = time.perf_counter() - started
    return record

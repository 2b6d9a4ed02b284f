"""One training run: a cell of the grid (optimizer, learning rate, weight decay) with one seed.

The optimizers are the library's own: "adam" and "adamw" are :class:`decoupled.AdamW` with ``decay="l2"`` and
``decay="decoupled"``, "sgd" and "sgdw" are :class:`decoupled.SGDW` likewise, so each pair runs one
implementation and differs only in where lambda enters (line 6 vs line 12 of Algorithm 2, Algorithm 1);
"adamw-cautious"/"sgdw-cautious" add ``cautious=True`` and "adamc" is ``decay="corrected"``. The
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

__all__ = ["RunRecord", "RunTask", "make_optimizer", "seed_everything", "train_run"]


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
            weight_decay=config.weight_decay, decay=spec.decay, cautious=spec.cautious,
        )  # fmt: skip
    return decoupled.SGDW(
        params, lr=config.lr, momentum=train.momentum, weight_decay=config.weight_decay, decay=spec.decay,
        cautious=spec.cautious,
    )  # fmt: skip


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
    scheduler = None
    if train.schedule == "cosine":
        # One cosine period over the whole run: eta_t = 0.5 (1 + cos(pi t / T)), t and T in epochs, per batch.
        scheduler = decoupled.CosineWarmRestarts(optimizer, first_period=train.epochs, steps_per_epoch=steps_per_epoch)
    order = torch.Generator().manual_seed(seed)  # batch order and augmentation, on the CPU for reproducibility
    record = RunRecord(config, seed, device=str(device))
    record.extra = {"parameters": count_parameters(model), "steps_per_epoch": steps_per_epoch}
    for _ in range(train.epochs):
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
        record.val_error.append(_error(model, splits, splits.x_val, splits.y_val, train.eval_batch_size))
        record.test_error.append(_error(model, splits, splits.x_test, splits.y_test, train.eval_batch_size))
    if not record.diverged:
        record.final_val_error = record.val_error[-1]
        record.final_test_error = record.test_error[-1]
    record.wall_time_s = time.perf_counter() - started
    return record

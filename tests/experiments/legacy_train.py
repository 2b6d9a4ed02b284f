"""Today's training loop, frozen: a verbatim copy of ``train_run`` (and ``make_optimizer``, ``_error``) from
src/decoupled/experiments/train.py as it was before the task API (issue 13) routed the built-in tasks through
the same path as a user's task. tests/experiments/test_tasks.py checks that the new path gives these numbers
bit for bit on the CPU; being a copy, it checks that on whatever machine the tests run.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import decoupled
from decoupled.experiments.augment import random_crop_flip
from decoupled.experiments.config import OPTIMIZERS, RunConfig
from decoupled.experiments.data import Splits
from decoupled.experiments.models import build_model, count_parameters


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
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


def _error(model: nn.Module, splits: Splits, x: Tensor, y: Tensor, batch_size: int) -> float:
    model.eval()
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(splits.to_input(x[start : start + batch_size]))
            wrong += int((logits.argmax(dim=1) != y[start : start + batch_size]).sum())
    return wrong / len(x)


def legacy_train_run(config: RunConfig, seed: int, splits: Splits, device: torch.device) -> dict[str, Any]:
    """The outcome of one run as today's code computed it: curves, final errors, diverged, extra."""
    seed_everything(seed)
    model = build_model(config.model, splits.input_shape, splits.num_classes).to(device)
    optimizer = make_optimizer(config, model)
    train = config.train
    steps_per_epoch = math.ceil(len(splits.x_train) / train.batch_size)
    scheduler = None
    if train.schedule == "cosine":
        scheduler = decoupled.CosineWarmRestarts(optimizer, first_period=train.epochs, steps_per_epoch=steps_per_epoch)
    order = torch.Generator().manual_seed(seed)
    record: dict[str, Any] = {"train_loss": [], "val_error": [], "test_error": [], "diverged": False}
    record["extra"] = {"parameters": count_parameters(model), "steps_per_epoch": steps_per_epoch}
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
                record["diverged"] = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.detach()
        if record["diverged"]:
            break
        mean_loss = float(total_loss) / steps_per_epoch
        if not math.isfinite(mean_loss) or not all(torch.isfinite(p).all() for p in model.parameters()):
            record["diverged"] = True
            break
        record["train_loss"].append(mean_loss)
        record["val_error"].append(_error(model, splits, splits.x_val, splits.y_val, train.eval_batch_size))
        record["test_error"].append(_error(model, splits, splits.x_test, splits.y_test, train.eval_batch_size))
    record["final_val_error"] = None if record["diverged"] else record["val_error"][-1]
    record["final_test_error"] = None if record["diverged"] else record["test_error"][-1]
    return record

"""Warm restarts (SGDR) and normalized weight decay: pure functions, and a torch LR scheduler over them.

The schedule of Loshchilov & Hutter (ICLR 2019, eq. 14-15; SGDR, ICLR 2017):

    eta_t = eta_min + 0.5 (eta_max - eta_min) (1 + cos(pi T_cur / T_i))

T_cur counts epochs since the last restart and advances every batch (fractionally); when T_cur reaches T_i
the run restarts: T_cur = 0, T_{i+1} = T_mult T_i. Optimizer state is kept across restarts.

Normalized weight decay (appendix B.1): lambda = lambda_norm sqrt(b / (B T)), with b the batch size, B the
training set size and T the epochs of the run, or, with warm restarts, of the current period T_i.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from typing import Any, NamedTuple

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ._validation import check_nonnegative, check_positive, check_positive_int

__all__ = [
    "CosineWarmRestarts",
    "RestartPosition",
    "normalized_weight_decay",
    "restart_position",
    "warm_restart_multiplier",
]


def normalized_weight_decay(lambda_norm: float, batch_size: int, dataset_size: int, epochs: float) -> float:
    """lambda = lambda_norm * sqrt(b / (B * T)) (appendix B.1 of the paper).

    >>> round(normalized_weight_decay(0.025, batch_size=128, dataset_size=50_000, epochs=100), 7)  # CIFAR-10
    0.0001265
    """
    check_nonnegative("lambda_norm", lambda_norm)
    for name, value in (("batch_size", batch_size), ("dataset_size", dataset_size), ("epochs", epochs)):
        check_positive(name, value)
    return lambda_norm * math.sqrt(batch_size / (dataset_size * epochs))


class RestartPosition(NamedTuple):
    """Where a run stands in the warm-restart schedule: ``restart`` i (0 for the first period), the epochs
    ``t_cur`` since that restart, and the period's length ``t_i`` in epochs."""

    restart: int
    t_cur: float
    t_i: float


def restart_position(step: int, steps_per_epoch: int, first_period: float, period_mult: float = 1.0) -> RestartPosition:
    """The restart period that batch ``step`` (>= 0, counted from the start of the run) falls in.

    T_cur advances 1 / ``steps_per_epoch`` epochs per batch and is reset to 0 at the first batch where it would
    reach T_i (the paper's "at T_cur = T_i: T_cur = 0"), so period i lasts ceil(T_i * steps_per_epoch) batches
    and every period starts at eta_max, also when T_i is not a whole number of batches.

    >>> restart_position(50, steps_per_epoch=2, first_period=10, period_mult=2)  # periods of 20, 40, 80 batches
    RestartPosition(restart=1, t_cur=15.0, t_i=20.0)
    """
    if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch)
    period = check_positive("first_period", first_period)
    if check_positive("period_mult", period_mult) < 1:
        raise ValueError(f"period_mult must be >= 1, got {period_mult!r}")
    step = int(step)
    batches = _batches(period, steps_per_epoch)
    if period_mult == 1:
        restart, into = divmod(step, batches)
        return RestartPosition(restart, into / steps_per_epoch, period)
    restart, start = 0, 0
    while step >= start + batches:
        restart, start, period = restart + 1, start + batches, period * period_mult
        batches = _batches(period, steps_per_epoch)
    return RestartPosition(restart, (step - start) / steps_per_epoch, period)


def _batches(period: float, steps_per_epoch: int) -> int:
    # A period of 0.3 epochs at 10 batches per epoch is 3 batches, though 0.3 * 10 = 3.0000000000000004.
    return max(1, math.ceil(period * steps_per_epoch - 1e-9))


def warm_restart_multiplier(t_cur: float, t_i: float, eta_min: float = 0.0, eta_max: float = 1.0) -> float:
    """eta_t = eta_min + 0.5 (eta_max - eta_min)(1 + cos(pi T_cur / T_i)) (eq. 14 of the paper).

    >>> warm_restart_multiplier(0.0, 10.0), warm_restart_multiplier(5.0, 10.0)
    (1.0, 0.5)
    """
    return eta_min + 0.5 * (eta_max - eta_min) * (1 + math.cos(math.pi * t_cur / t_i))


class CosineWarmRestarts(LRScheduler):
    r"""Cosine annealing with warm restarts (SGDR) for any optimizer, stepped once per batch.

    Sets ``lr = base_lr * eta_t`` in every group, with eta_t from :func:`warm_restart_multiplier` and
    T_cur advancing 1 / ``steps_per_epoch`` epochs per batch (see :func:`restart_position`): eta_min and eta_max are
    multipliers of each group's own initial lr (the paper uses 0 and 1). With ``weight_decay_norm``
    (lambda_norm, one value or one per group), each group's ``weight_decay`` is set to the normalized decay of
    the current period, lambda_norm * sqrt(1 / (steps_per_epoch * T_i)) (appendix B.1 with b / B =
    1 / steps_per_epoch, as in the authors' code), and recomputed at every restart: with
    :class:`decoupled.AdamW` this is AdamWR, with :class:`decoupled.SGDW` SGDWR.

    The lr and weight decay are closed-form functions of the step count, so a scheduler restored with
    ``load_state_dict`` continues exactly where the saved one stopped.

    Args:
        optimizer: the optimizer whose groups it drives.
        first_period: T_0, the first period in epochs (may be fractional).
        steps_per_epoch: batches per epoch; ``step()`` is called once per batch.
        period_mult: T_mult >= 1, the factor by which each period is longer than the last.
        eta_min, eta_max: the multiplier's range, 0 <= eta_min <= eta_max.
        weight_decay_norm: lambda_norm (a number, or a sequence with one per group), or None to leave
            weight decay alone. One number leaves the groups built with weight_decay=0 (the no-decay group of
            :func:`decoupled.param_groups`: biases, norms) at 0 when another group decays.

    Example:
        >>> import torch, decoupled
        >>> opt = decoupled.AdamW(torch.nn.Linear(4, 2).parameters(), lr=1e-3)
        >>> sched = decoupled.CosineWarmRestarts(opt, first_period=10, steps_per_epoch=390, period_mult=2,
        ...                                      weight_decay_norm=0.025)
        >>> round(opt.param_groups[0]["weight_decay"], 7)  # 0.025 * sqrt(1 / (390 * 10))
        0.0004003

    Reference: I. Loshchilov and F. Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017;
    "Decoupled Weight Decay Regularization", ICLR 2019 (AdamWR, normalized weight decay).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        first_period: float,
        steps_per_epoch: int = 1,
        period_mult: float = 1.0,
        eta_min: float = 0.0,
        eta_max: float = 1.0,
        weight_decay_norm: float | Sequence[float] | None = None,
        last_epoch: int = -1,
    ) -> None:
        check_positive("first_period", first_period)
        steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch)
        if check_nonnegative("period_mult", period_mult) < 1:
            raise ValueError(f"period_mult must be >= 1, got {period_mult!r}")
        check_nonnegative("eta_min", eta_min)
        if check_nonnegative("eta_max", eta_max) < eta_min:
            raise ValueError(f"eta_max must be >= eta_min, got eta_max={eta_max!r} < eta_min={eta_min!r}")
        self.first_period = float(first_period)
        self.steps_per_epoch = steps_per_epoch
        self.period_mult = float(period_mult)
        self.eta_min = float(eta_min)
        self.eta_max = float(eta_max)
        self.weight_decay_norms = self._per_group(optimizer, weight_decay_norm)
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _per_group(optimizer: Optimizer, value: float | Sequence[float] | None) -> list[float] | None:
        """One lambda_norm per group. One number goes to every group, except that groups built with
        weight_decay=0 (the no-decay group of :func:`decoupled.param_groups`: biases, norms) stay at 0 while
        another group decays; a sequence gives each group its own value."""
        if value is None:
            return None
        groups = optimizer.param_groups
        if isinstance(value, Real) or not isinstance(value, Iterable) or isinstance(value, (str, bytes)):
            number = check_nonnegative("weight_decay_norm", value)
            undecayed = [group.get("weight_decay", 0) == 0 for group in groups]
            if all(undecayed):  # nothing decays yet: the scheduler's decay is the only one
                undecayed = [False] * len(groups)
            return [0.0 if skip else number for skip in undecayed]
        values = list(value)
        if len(values) != len(groups):
            raise ValueError(f"weight_decay_norm has {len(values)} values for {len(groups)} param groups")
        return [check_nonnegative(f"weight_decay_norm[{i}]", v) for i, v in enumerate(values)]

    def position(self) -> RestartPosition:
        """The restart period, T_cur and T_i (in epochs) of the current step."""
        return restart_position(max(self.last_epoch, 0), self.steps_per_epoch, self.first_period, self.period_mult)

    def get_lr(self) -> list[float]:
        position = self.position()
        eta = warm_restart_multiplier(position.t_cur, position.t_i, self.eta_min, self.eta_max)
        return [base_lr * eta for base_lr in self.base_lrs]

    def step(self, epoch: Any = None) -> None:  # noqa: D102 (LRScheduler.step)
        super().step(epoch)
        if self.weight_decay_norms is not None:
            t_i = self.position().t_i
            for group, lambda_norm in zip(self.optimizer.param_groups, self.weight_decay_norms):
                group["weight_decay"] = normalized_weight_decay(lambda_norm, 1, self.steps_per_epoch, t_i)

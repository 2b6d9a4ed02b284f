"""The weight-decay axis of the heatmaps: lambda (the paper's units) or the averaging timescale tau in epochs.

With decoupled decay AdamW's weights are an exponential moving average over about 1 / (per-step decay) steps
(Wang & Aitchison 2024, arXiv:2405.13698), so lambda = 2^k reads as tau = 1 / (lambda M) epochs, M = steps per
epoch (:func:`decoupled.decay_timescale`). That is the timescale at eta_t = 1; the cosine schedule lengthens it
as eta_t falls. An L2 factor has no such timescale: L2 panels keep lambda.
"""

from __future__ import annotations

import math

import decoupled

__all__ = ["WEIGHT_DECAY_UNITS", "steps_per_epoch", "weight_decay_axis"]

WEIGHT_DECAY_UNITS = ("lambda", "tau")


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """Optimizer steps per epoch of a sweep's runs (the last batch may be short, as in training); 0 when the
    training set's size is not known (a task that loads its own data)."""
    return math.ceil(train_size / batch_size) if train_size > 0 and batch_size > 0 else 0


def weight_decay_axis(
    values: tuple[float, ...], *, decay: str, unit: str, steps: int, lambda_ticks: list[str]
) -> tuple[list[str], str | None]:
    """Tick labels and axis label for the weight decays ``values`` of a panel whose convention is ``decay``.

    ``unit="lambda"`` (or an L2 panel) returns ``lambda_ticks`` and None (keep the panel's own label);
    ``unit="tau"`` returns the timescale of each value in epochs (3 significant digits, "inf" for 0), or lambda
    with a label saying why when the steps per epoch are not known (``steps`` 0).
    """
    if unit not in WEIGHT_DECAY_UNITS:
        raise ValueError(f"the weight-decay axis is one of {WEIGHT_DECAY_UNITS}, got {unit!r}")
    if unit == "lambda" or decay == "l2":
        return lambda_ticks, None
    if steps <= 0:
        return lambda_ticks, r"weight decay $\lambda$ (no timescale: steps per epoch unknown)"
    ticks = []
    for value in values:
        tau = decoupled.decay_timescale(value, steps_per_epoch=steps)
        ticks.append("inf" if math.isinf(tau) else f"{tau:.3g}")
    return ticks, rf"timescale $\tau = 1/(\lambda M)$, epochs ($M$ = {steps} steps)"

"""Single-tensor kernels: one parameter at a time, the plainest fast code for the update rules.

All kernels in this package share one signature per family and see weight decay only as
``decay_factor`` (theta <- (1 - decay_factor) theta_{t-1}) and ``l2`` (g <- g + l2 theta_{t-1});
see :mod:`decoupled.conventions`. Gradients are never modified in place.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adam", "sgd"]


def adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    decay_factor: float,
    l2: float,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """Algorithm 2 (Adam/AdamW), one tensor at a time. Increments each ``steps`` entry by one."""
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        if l2 != 0:
            grad = grad.add(param, alpha=l2)
        steps[i] += 1
        step = steps[i].item()
        if decay_factor != 0:
            param.mul_(1 - decay_factor)
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        second_moment = exp_avg_sq
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            second_moment = max_exp_avg_sqs[i]
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    maximize: bool,
    decay_factor: float,
    l2: float,
) -> None:
    """Algorithm 1 (SGD/SGDW, the scheduled step inside the buffer), one tensor at a time.

    m = momentum * m + lr * g;  theta = (1 - decay_factor) * theta - (nesterov ? momentum * m + lr * g : m).
    ``momentum_buffers`` is unused when ``momentum`` is 0 (there is no buffer then).
    """
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        if l2 != 0:
            grad = grad.add(param, alpha=l2)
        if decay_factor != 0:
            param.mul_(1 - decay_factor)
        if momentum == 0:
            param.add_(grad, alpha=-lr)
            continue
        buf = momentum_buffers[i]
        buf.mul_(momentum).add_(grad, alpha=lr)
        if nesterov:
            param.sub_(buf, alpha=momentum).add_(grad, alpha=-lr)
        else:
            param.sub_(buf)

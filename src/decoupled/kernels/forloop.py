"""Single-tensor kernels: one parameter at a time, the plainest fast code for the update rules.

All kernels in this package share one signature per family and see weight decay only as
``decay_factor`` (theta <- (1 - decay_factor) theta_{t-1}) and ``l2`` (g <- g + l2 theta_{t-1});
see :mod:`decoupled.conventions`. With ``cautious`` the decay is applied only where the update direction u_t
and theta_{t-1} do not have opposite signs (Chen et al. 2025): theta_t = theta_{t-1} - step_t - decay_factor *
1[u_t theta_{t-1} >= 0] theta_{t-1}. Gradients are never modified in place.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adam", "cautious_keep", "sgd"]


def cautious_keep(direction: Tensor, param: Tensor, decay_factor: float | Tensor) -> Tensor:
    """The per-element factor theta is multiplied by: 1 - decay_factor where ``direction`` (u_t) and ``param``
    do not have opposite signs, 1 where they do (float32 for bfloat16/float16 parameters, so that 1 - factor
    is not rounded to their 8 or 11 bits; the multiply rounds once, as the fused kernels do).

    The signs are compared (sign(u) sign(theta) >= 0) rather than the product u * theta, which can underflow
    to -0.0 or 0.0 where the signs differ. ``decay_factor`` may be a 0-dim tensor (capturable steps).
    """
    dtype = torch.float32 if param.dtype in (torch.bfloat16, torch.float16) else param.dtype
    same_side = torch.sign(direction).mul_(torch.sign(param)) >= 0
    keep = 1 - decay_factor
    keep = keep.to(param.device, dtype) if isinstance(keep, Tensor) else torch.tensor(keep, dtype=dtype)
    return torch.where(same_side, keep, torch.ones((), dtype=dtype, device=keep.device))


def adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    decay_factor: float | Tensor,
    l2: float,
    amsgrad: bool,
    maximize: bool,
    capturable: bool = False,
    cautious: bool = False,
) -> None:
    """Algorithm 2 (Adam/AdamW), one tensor at a time. Increments each ``steps`` entry by one.

    Step counts on the CPU are read as numbers (no synchronisation there). With ``capturable``, or step tensors
    on another device (CUDA), the bias corrections stay tensors on that device, so that a step never waits for
    the device (and may be captured in a CUDA graph); lr, betas and decay_factor may be 0-dim tensors then.
    With ``cautious`` the mask compares the signs of m_t and theta_{t-1}: u_t = mhat_t / (sqrt(vhat_t) + eps)
    has the sign of m_t, its denominator being positive.
    """
    masked = cautious and _nonzero(decay_factor)
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        if l2 != 0:
            grad = grad.add(param, alpha=l2)
        steps[i] += 1
        if _nonzero(decay_factor) and not masked:
            param.mul_(1 - decay_factor)
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg.lerp_(grad, 1 - beta1)
        if isinstance(beta2, Tensor):
            exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))
        else:
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        second_moment = exp_avg_sq
        if amsgrad:
            if torch.is_grad_enabled():  # differentiable=True: autograd follows neither out= nor an overwritten input
                max_exp_avg_sqs[i].copy_(torch.maximum(max_exp_avg_sqs[i].clone(), exp_avg_sq))
            else:
                torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            second_moment = max_exp_avg_sqs[i]
        if masked:  # theta_{t-1} -= decay_factor * mask * theta_{t-1}, before the step
            param.mul_(cautious_keep(exp_avg, param, decay_factor))
        if capturable or not steps[i].is_cpu:
            step = steps[i].to(torch.float64 if param.dtype == torch.float64 else torch.float32)
            bias_correction1 = 1 - beta1**step
            step_size = lr / bias_correction1
            denom = (second_moment.sqrt() / (1 - beta2**step).sqrt()).add_(eps)
            param.sub_(exp_avg / denom * step_size)
            continue
        step = steps[i].item()
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def _nonzero(value: float | Tensor) -> bool:
    """Whether a factor may be nonzero; a tensor is not read (that would wait for its device)."""
    return isinstance(value, Tensor) or value != 0


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
    cautious: bool = False,
) -> None:
    """Algorithm 1 (SGD/SGDW, the scheduled step inside the buffer), one tensor at a time.

    m = momentum * m + lr * g;  theta = (1 - decay_factor) * theta - (nesterov ? momentum * m + lr * g : m).
    ``momentum_buffers`` is unused when ``momentum`` is 0 (there is no buffer then). With ``cautious`` the
    mask's u_t is the vector subtracted: m_t, momentum * m_t + lr * g with nesterov, lr * g without momentum.
    """
    if cautious and _nonzero(decay_factor):
        _sgd_cautious(params, grads, momentum_buffers, lr=lr, momentum=momentum, nesterov=nesterov,
                      maximize=maximize, decay_factor=decay_factor)  # fmt: skip
        return
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        if l2 != 0:
            grad = grad.add(param, alpha=l2)
        if _nonzero(decay_factor):
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


def _sgd_cautious(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    maximize: bool,
    decay_factor: float,
) -> None:
    """SGDW with cautious decay: u_t first, then theta <- keep * theta - u_t (keep: :func:`cautious_keep`)."""
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        if momentum == 0:
            update = grad * lr
        else:
            buf = momentum_buffers[i]
            buf.mul_(momentum).add_(grad, alpha=lr)
            update = buf.mul(momentum).add_(grad, alpha=lr) if nesterov else buf
        param.mul_(cautious_keep(update, param, decay_factor))
        param.sub_(update)

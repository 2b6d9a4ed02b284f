"""Multi-tensor kernels built from torch's ``_foreach_*`` ops: one launch per op for a whole tensor list.

Same math and signatures as :mod:`decoupled.kernels.forloop`. Each op is a separate pass over memory, so
these are slower than the fused kernels on CPU; they run on any device and dtype torch's foreach ops take.
All tensors of one call share a device and a dtype (the dispatcher groups them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .forloop import cautious_keep

__all__ = ["adam", "cautious_decay_", "increment", "sgd"]


_REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def decay_(params: list[Tensor], decay_factor: float | Tensor) -> None:
    """theta <- (1 - decay_factor) theta for tensors of one device and dtype.

    For bfloat16/float16 the factor is passed as a float32 tensor: ``_foreach_mul_`` rounds a Python scalar to
    the tensors' dtype first, so a bf16 decay of 0.01 would become 1 - 0.98828 = 0.0117 (17% too strong).
    """
    first = params[0]
    keep: float | Tensor = 1 - decay_factor
    if isinstance(keep, Tensor):  # a capturable step's factor: on the parameters' device, never read on the host
        keep = keep.to(device=first.device, dtype=torch.float32 if first.dtype in _REDUCED_PRECISION else first.dtype)
    elif first.dtype in _REDUCED_PRECISION:
        keep = torch.tensor(keep, dtype=torch.float32, device=first.device)
    torch._foreach_mul_(params, keep)


def cautious_decay_(params: list[Tensor], directions: list[Tensor], decay_factor: float | Tensor) -> None:
    """theta <- theta - decay_factor * 1[u theta >= 0] * theta per tensor, u = ``directions`` (signs compared).

    The masks are made one tensor at a time (torch has no foreach comparison); the decay is one foreach op.
    """
    keeps = [cautious_keep(direction, param, decay_factor) for direction, param in zip(directions, params)]
    torch._foreach_mul_(params, keeps)


def increment(steps: list[Tensor]) -> None:
    """Add 1 to every step tensor (float scalars on one device)."""
    if steps[0].is_cpu:
        # A CPU scalar wrapped once: a plain 1 would be re-wrapped into a tensor for every step tensor.
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)


def _effective_grads(params: list[Tensor], grads: list[Tensor], maximize: bool, l2: float) -> list[Tensor]:
    """-grads when maximizing, plus l2 * params for the coupled convention; never writes the inputs."""
    if maximize:
        grads = torch._foreach_neg(grads)
        if l2 != 0:
            torch._foreach_add_(grads, params, alpha=l2)
    elif l2 != 0:
        grads = torch._foreach_add(grads, params, alpha=l2)
    return grads


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
    """Algorithm 2 (Adam/AdamW) over a tensor list. Increments each ``steps`` entry by one.

    Step counts on the CPU are read as numbers; with ``capturable`` or steps on another device the bias
    corrections are computed on that device, so nothing waits for it (see :func:`.forloop.adam`).
    With ``cautious`` the decay's mask compares the signs of m_t and theta_{t-1} (u_t has the sign of m_t).
    """
    if not params:
        return
    decays = isinstance(decay_factor, Tensor) or decay_factor != 0
    masked = cautious and decays
    grads = _effective_grads(params, grads, maximize, l2)
    increment(steps)
    if decays and not masked:
        decay_(params, decay_factor)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    if isinstance(beta2, Tensor):
        torch._foreach_add_(exp_avg_sqs, torch._foreach_mul(torch._foreach_mul(grads, grads), 1 - beta2))
    else:
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    del grads
    if amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        denom = torch._foreach_sqrt(max_exp_avg_sqs)
    else:
        denom = torch._foreach_sqrt(exp_avg_sqs)
    if masked:  # theta_{t-1} *= 1 - decay_factor * mask, before the step
        cautious_decay_(params, exp_avgs, decay_factor)
    if capturable or not steps[0].is_cpu:
        # On the steps' device: param -= m / (sqrt(v) / sqrt(bc2) + eps) * lr / bc1, as tensors (no host reads).
        dtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
        counts = [step.to(dtype) for step in steps]
        torch._foreach_div_(denom, [(1 - beta2**count).sqrt() for count in counts])
        torch._foreach_add_(denom, eps)
        step_sizes = [-(lr / (1 - beta1**count)) for count in counts]
        torch._foreach_mul_(denom, [1 / size for size in step_sizes])  # denom / (-step size)
        torch._foreach_addcdiv_(params, exp_avgs, denom)
        return
    step_values = [step.item() for step in steps]
    torch._foreach_div_(denom, [(1 - beta2**step) ** 0.5 for step in step_values])
    torch._foreach_add_(denom, eps)
    step_sizes = [-lr / (1 - beta1**step) for step in step_values]
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


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
    """Algorithm 1 (SGD/SGDW, the scheduled step inside the buffer) over a tensor list.

    With ``cautious`` the decay's mask takes u_t = the vector subtracted (m_t; momentum m_t + lr g with
    nesterov; lr g without momentum).
    """
    if not params:
        return
    grads = _effective_grads(params, grads, maximize, l2)
    if cautious and decay_factor != 0:
        if momentum == 0:
            updates = torch._foreach_mul(grads, lr)
        else:
            torch._foreach_mul_(momentum_buffers, momentum)
            torch._foreach_add_(momentum_buffers, grads, alpha=lr)
            updates = momentum_buffers
            if nesterov:
                updates = torch._foreach_mul(momentum_buffers, momentum)
                torch._foreach_add_(updates, grads, alpha=lr)
        cautious_decay_(params, updates, decay_factor)
        torch._foreach_sub_(params, updates)
        return
    if decay_factor != 0:
        decay_(params, decay_factor)
    if momentum == 0:
        torch._foreach_add_(params, grads, alpha=-lr)
        return
    torch._foreach_mul_(momentum_buffers, momentum)
    torch._foreach_add_(momentum_buffers, grads, alpha=lr)
    if nesterov:
        torch._foreach_add_(params, momentum_buffers, alpha=-momentum)
        torch._foreach_add_(params, grads, alpha=-lr)
    else:
        torch._foreach_sub_(params, momentum_buffers)

"""Fused kernels: one pass over memory per step, at the memory-bandwidth floor of each update.

Adam/AdamW map exactly onto torch's own fused kernels. torch's fused AdamW computes
``theta <- theta (1 - lr wd) - lr mhat / (sqrt(vhat) + eps)``, so the paper's decay factor eta_t * lambda (or
any other per-step factor f) is obtained with ``wd = f / lr``: torch's fused AdamW with weight_decay =
lambda / alpha and lr = eta_t * alpha *is* the paper's AdamW. The coupled "l2" convention is torch's fused Adam.
torch's kernel cannot mask the decay, so cautious AdamW on the CPU runs the native Adam kernel
(:mod:`decoupled.kernels.native`), which is also the default for bfloat16 CPU tensors, where it is faster than
torch's (docs/benchmark.md). Elsewhere (CUDA, float16, no C compiler) a cautious decay is applied in a pass of
its own before torch's fused step: the mask needs m_t, recomputed there as lerp(m_{t-1}, g, 1 - beta1).

SGD/SGDW has no torch counterpart (torch keeps the learning rate outside the momentum buffer and knows
only L2 decay), so on the CPU it runs :mod:`decoupled.kernels.native`, one C loop over all tensors.
Elsewhere (CUDA, or a CPU without a C compiler) torch's fused SGD is made to compute the paper's buffer
``m = mu m + lr g``: with ``dampening = 1 - lr``, ``lr = 1`` and a zero-initialised buffer
(``is_first_step=False``) its update ``buf = mu buf + (1 - dampening) g; theta -= 1 * buf`` is Algorithm 1,
exact wherever 1 - (1 - lr) rounds to lr within the dtype's precision (else the step runs the foreach path);
a decoupled decay then costs one extra pass (``_foreach_mul_``) before it.
This is the path a CUDA tensor takes. bfloat16/float16 CPU tensors without the native kernel take the foreach
path instead: torch's fused CPU SGD leaves them unchanged (torch 2.13.0; see :func:`sgd_torch`).
All tensors of one call share a device and a dtype (the dispatcher groups them).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from . import foreach, layout, lowp, native

__all__ = ["adam", "adam_lowp", "adam_torch", "sgd", "sgd_lowp", "sgd_torch"]


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
    capturable: bool = False,
    cautious: bool = False,
) -> None:
    """Algorithm 2 in one pass: the native kernel where it is needed (cautious) or faster (bfloat16) on CPU
    tensors it can take, torch's fused Adam(W) kernel (:func:`adam_torch`) for the rest. Increments ``steps``.

    The dispatcher hands this only tensors a one-pass kernel may walk as raw memory (:mod:`.layout`).
    """
    if not params:
        return
    if capturable:
        raise ValueError("the fused Adam path does not take capturable steps (the foreach path does)")
    if decay_factor != 0 and l2 != 0:
        raise ValueError("the fused Adam kernel takes a decay factor or an L2 coefficient, not both")
    states = [exp_avgs, exp_avg_sqs, *([max_exp_avg_sqs] if amsgrad else [])]
    numels = _check_sizes(params, grads, *states)
    cautious = cautious and decay_factor != 0
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, l2=l2, amsgrad=amsgrad, maximize=maximize)
    first = params[0]
    if first.is_cpu and (cautious or native.adam_preferred(first.dtype)) and native.supports_adam_dtype(first.dtype):
        if native.adam_steps_code(steps) is not None:
            if _native_layout_ok([params, grads, *states]) and all(map(_native_takes, params, grads, *states)):
                native.adam_(
                    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                    keep=1 - decay_factor, cautious=cautious, numels=numels, **hyper,
                )  # fmt: skip
                return
            mine = [i for i in range(len(params)) if _native_takes(params[i], grads[i], *(s[i] for s in states))]
            if mine and _native_layout_ok([layout.pick(tensors, mine) for tensors in (params, grads, *states)]):
                native.adam_(
                    *(layout.pick(tensors, mine) for tensors in (params, grads, exp_avgs, exp_avg_sqs)),
                    layout.pick(max_exp_avg_sqs, mine) if amsgrad else [], layout.pick(steps, mine),
                    keep=1 - decay_factor, cautious=cautious, **hyper,
                )  # fmt: skip
                rest = sorted(set(range(len(params))) - set(mine))
                params, grads, exp_avgs, exp_avg_sqs, steps = (
                    layout.pick(tensors, rest) for tensors in (params, grads, exp_avgs, exp_avg_sqs, steps)
                )
                max_exp_avg_sqs = layout.pick(max_exp_avg_sqs, rest) if amsgrad else []
    adam_torch(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
        decay_factor=decay_factor, cautious=cautious, **hyper,
    )  # fmt: skip


def adam_torch(
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
    cautious: bool = False,
) -> None:
    """Algorithm 2 on torch's fused Adam(W) kernel (any device it supports); a cautious decay is a pass of its
    own before it (see the module docstring). Increments each ``steps`` entry by one."""
    if not params:
        return
    if cautious and decay_factor != 0:
        # m_t as the kernel will compute it (up to rounding, which only matters where m_t is 0 to round-off).
        effective = torch._foreach_neg(grads) if maximize else grads
        foreach.cautious_decay_(params, torch._foreach_lerp(exp_avgs, effective, 1 - beta1), decay_factor)
        decay_factor = 0.0
    if decay_factor != 0 and lr == 0:
        # wd = factor / lr is undefined; the Adam step itself is zero, so only the decay remains.
        foreach.decay_(params, decay_factor)
        decay_factor = 0.0
    foreach.increment(steps)  # a CPU scalar wrapped once: 4x faster than a plain 1 on many CPU step tensors
    kernel = torch._fused_adam_ if l2 != 0 else torch._fused_adamw_
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs if amsgrad else [],
        steps,
        amsgrad=amsgrad,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=l2 if l2 != 0 else (decay_factor / lr if decay_factor != 0 else 0.0),
        eps=eps,
        maximize=maximize,
        grad_scale=None,
        found_inf=None,
    )


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
    """Algorithm 1 in one pass: the native C kernel for CPU tensors, :func:`sgd_torch` for the rest.

    The dispatcher hands this only tensors a one-pass kernel may walk as raw memory (dense, one layout per
    parameter: :mod:`.layout`). A grad or buffer of another dtype than its parameter goes to torch's kernel,
    which checks dtypes; a group may mix both, and each tensor takes the path it can.
    """
    if not params:
        return
    buffers = momentum_buffers if momentum != 0 else None
    numels = _check_sizes(params, grads, buffers or [])
    hyper = dict(
        lr=lr, momentum=momentum, nesterov=nesterov, maximize=maximize, cautious=cautious and decay_factor != 0
    )
    if native_eligible(params, grads, buffers):
        native.sgd_(params, grads, buffers, keep=1 - decay_factor, l2=l2, numels=numels, **hyper)
        return
    first = params[0]
    if first.is_cpu and native.supports_dtype(first.dtype):
        mine = [i for i in range(len(params)) if _native_takes(params[i], grads[i], buffers and buffers[i])]
        lists = [params, grads, *([buffers] if buffers else [])]
        if mine and _native_layout_ok([layout.pick(tensors, mine) for tensors in lists]):  # as for Adam: raw writes
            native.sgd_(
                layout.pick(params, mine), layout.pick(grads, mine), layout.pick(buffers, mine) if buffers else None,
                keep=1 - decay_factor, l2=l2, **hyper,
            )  # fmt: skip
            rest = sorted(set(range(len(params))) - set(mine))
            params, grads = layout.pick(params, rest), layout.pick(grads, rest)
            momentum_buffers = layout.pick(buffers, rest) if buffers else []
    sgd_torch(params, grads, momentum_buffers, decay_factor=decay_factor, l2=l2, **hyper)


_numel = Tensor.numel


def _check_sizes(params: list[Tensor], *others: list[Tensor]) -> list[int]:
    """The parameters' element counts, after checking that every non-empty list matches them.

    Fused kernels write through each state tensor as if it had its parameter's size; torch's own fused
    SGD and Adam(W) CPU kernels do not check this (a momentum buffer of the wrong size, e.g. loaded from a
    checkpoint of another model, corrupts the heap), so it is checked here, at about 0.1 us per tensor.
    """
    numels = list(map(_numel, params))
    for tensors in others:
        if tensors and list(map(_numel, tensors)) != numels:
            index, tensor = next((i, t) for i, t in enumerate(tensors) if t.numel() != numels[i])
            raise RuntimeError(
                f"a gradient or state tensor of shape {tuple(tensor.shape)} does not match its parameter of "
                f"shape {tuple(params[index].shape)} (tensor {index} of a group); was the optimizer state "
                "loaded from another model?"
            )
    return numels


def _native_takes(param: Tensor, *others: Tensor | None) -> bool:
    """Whether a parameter's grad and state tensors (None: a state the update does not keep) have its dtype."""
    dtype = param.dtype
    return all(t is None or t.dtype is dtype for t in others)


def _native_layout_ok(lists: list[list[Tensor]]) -> bool:
    """Whether every parameter of ``lists`` (parameters first, then tensors of their shape) can be walked as raw
    memory (:func:`.layout.split_walkable`; the dispatcher made sure of it, checked again before raw writes)."""
    return not layout.split_walkable(lists, len(lists))[1]


def native_eligible(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor] | None) -> bool:
    """Whether the native kernel takes all of these tensors: CPU, a dtype it supports, every grad and buffer of
    its parameter's dtype, and (checked here too, since the kernel writes through raw addresses) one walkable
    layout per parameter. The layout check is one ``is_contiguous`` per tensor in the common case."""
    first = params[0]
    if not (first.is_cpu and native.supports_dtype(first.dtype)):
        return False
    dtype = first.dtype
    others = grads if buffers is None else [*grads, *buffers]
    if not all(t.dtype is dtype for t in others):
        return False
    return _native_layout_ok([params, grads] if buffers is None else [params, grads, buffers])


def sgd_torch(
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
    """Algorithm 1 on torch's fused SGD kernel (any device it supports); see the module docstring.

    Nesterov momentum with the step inside the buffer (theta -= mu m + lr g) has no such mapping and runs
    the foreach kernel; so does a step whose lr the mapping would round (:func:`_dampening_is_exact`: float64
    at most lrs). So do bfloat16/float16 CPU tensors: torch's fused CPU SGD computes wrong values for them
    (torch 2.13.0, contiguous or not: its vectorized reduced-precision loop never writes the parameters and
    reads the momentum buffer as float32, so ``torch.optim.SGD(fused=True)`` leaves all but the last few
    elements of each bf16 tensor where they were; fp32/fp64 and torch's fused Adam are correct).
    """
    if nesterov or _torch_sgd_miscomputes(params) or (momentum != 0 and not _dampening_is_exact(lr, params[0].dtype)):
        foreach.sgd(
            params, grads, momentum_buffers, lr=lr, momentum=momentum, nesterov=nesterov,
            maximize=maximize, decay_factor=decay_factor, l2=l2, cautious=cautious,
        )  # fmt: skip
        return
    if cautious and decay_factor != 0:
        # u_t = mu m_{t-1} + lr g (lr g without momentum), computed beside the kernel's own (to round-off).
        effective = torch._foreach_neg(grads) if maximize else grads
        if momentum != 0:
            updates = torch._foreach_mul(momentum_buffers, momentum)
            torch._foreach_add_(updates, effective, alpha=lr)
        else:
            updates = torch._foreach_mul(effective, lr)
        foreach.cautious_decay_(params, updates, decay_factor)
    elif decay_factor != 0:
        foreach.decay_(params, decay_factor)
    # With momentum: buf = mu buf + lr (g + l2 theta); theta -= buf. Without: theta -= lr (g + l2 theta).
    step_lr, dampening = (1.0, 1.0 - lr) if momentum != 0 else (lr, 0.0)
    torch._fused_sgd_(
        params, grads, momentum_buffers if momentum != 0 else [], weight_decay=l2, momentum=momentum,
        lr=step_lr, dampening=dampening, nesterov=False, maximize=maximize, is_first_step=False,
        grad_scale=None, found_inf=None,
    )  # fmt: skip


_REDUCED = (torch.bfloat16, torch.float16)


def _dampening_is_exact(lr: float, dtype: torch.dtype) -> bool:
    """Whether torch's fused SGD with ``dampening = 1 - lr`` scales gradients by lr to within a quarter of the
    dtype's own rounding.

    Its kernels (CPU and CUDA) compute ``(1 - dampening) * g`` in double, so the gradient is scaled by
    1 - (1 - lr), which is lr plus an error of up to 2^-54: relative 5e-9 at lr 1e-8, all of it below 1.1e-16.
    For float32 and narrower that error is far below the dtype's rounding for any lr above about 4e-9; for
    float64 it rarely is, and such steps (and any lr too small) take the foreach path, which is exact.
    """
    if lr == 0:
        return True  # 1 - (1 - 0) == 0 exactly
    return abs((1.0 - (1.0 - lr)) - lr) <= lr * torch.finfo(dtype).eps / 4


def _torch_sgd_miscomputes(params: list[Tensor]) -> bool:
    """Whether torch's fused SGD would get these wrong: bfloat16/float16 CPU tensors (see :func:`sgd_torch`)."""
    return bool(params) and params[0].is_cpu and params[0].dtype in _REDUCED


def adam_lowp(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    remainders: list[Tensor],
    streams: list[Tensor],
    *,
    precision: str,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    decay_factor: float,
    l2: float,
    amsgrad: bool,
    maximize: bool,
    cautious: bool,
) -> None:
    """Algorithm 2 on low-precision parameters in one pass (:mod:`.lowp`'s float32 step): the native kernel for
    the CPU tensors it takes, a Triton kernel for CUDA tensors where Triton is installed, and :func:`.lowp.adam`
    (the same bits, several passes) for the rest. Increments ``steps``."""
    if not params:
        return
    states = [exp_avgs, exp_avg_sqs, *([max_exp_avg_sqs] if amsgrad else [])]
    _check_sizes(params, grads, *states, remainders)
    extras = remainders if precision == "exact" else streams
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, l2=l2, amsgrad=amsgrad, maximize=maximize)
    one_pass = _lowp_one_pass(params, grads, states, remainders, streams, steps)
    if one_pass:
        pick = functools.partial(_pick_each, one_pass)
        kernel = native.adam_lowp_ if params[0].is_cpu else _triton().adam_lowp_
        kernel(
            *pick(params, grads, exp_avgs, exp_avg_sqs), pick(max_exp_avg_sqs) if amsgrad else [], pick(steps),
            pick(extras), precision=precision, decay_factor=decay_factor, cautious=cautious and decay_factor != 0,
            **hyper,
        )  # fmt: skip
        rest = sorted(set(range(len(params))) - set(one_pass))
        if not rest:
            return
        pick = functools.partial(_pick_each, rest)
        params, grads, exp_avgs, exp_avg_sqs, steps, remainders, streams = pick(
            params, grads, exp_avgs, exp_avg_sqs, steps, remainders, streams
        )
        max_exp_avg_sqs = pick(max_exp_avg_sqs) if amsgrad else []
    lowp.adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, remainders, streams, precision=precision,
        decay_factor=decay_factor, cautious=cautious, foreach=True, **hyper,
    )  # fmt: skip


def sgd_lowp(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    remainders: list[Tensor],
    streams: list[Tensor],
    *,
    precision: str,
    lr: float,
    momentum: float,
    nesterov: bool,
    maximize: bool,
    decay_factor: float,
    l2: float,
    cautious: bool,
) -> None:
    """Algorithm 1 on low-precision parameters in one pass, as :func:`adam_lowp` picks its kernels."""
    if not params:
        return
    buffers = momentum_buffers if momentum != 0 else []
    _check_sizes(params, grads, buffers, remainders)
    extras = remainders if precision == "exact" else streams
    hyper = dict(lr=lr, momentum=momentum, nesterov=nesterov, maximize=maximize, l2=l2)
    one_pass = _lowp_one_pass(params, grads, [buffers] if buffers else [], remainders, streams, None)
    if one_pass:
        pick = functools.partial(_pick_each, one_pass)
        kernel = native.sgd_lowp_ if params[0].is_cpu else _triton().sgd_lowp_
        kernel(
            *pick(params, grads, buffers, extras), precision=precision, decay_factor=decay_factor,
            cautious=cautious and decay_factor != 0, **hyper,
        )  # fmt: skip
        rest = sorted(set(range(len(params))) - set(one_pass))
        if not rest:
            return
        params, grads, buffers, remainders, streams = _pick_each(rest, params, grads, buffers, remainders, streams)
    lowp.sgd(
        params, grads, buffers, remainders, streams, precision=precision, decay_factor=decay_factor,
        cautious=cautious, foreach=True, **hyper,
    )  # fmt: skip


def _pick_each(indices: list[int], *lists: list[Tensor]) -> Any:
    """:func:`.layout.pick` of every list (one list alone when one is given)."""
    picked = [layout.pick(tensors, indices) for tensors in lists]
    return picked[0] if len(picked) == 1 else picked


def _triton() -> Any:
    from . import triton_lowp

    return triton_lowp


def _lowp_one_pass(
    params: list[Tensor],
    grads: list[Tensor],
    moments: list[list[Tensor]],
    remainders: list[Tensor],
    streams: list[Tensor],
    steps: list[Tensor] | None,
) -> list[int]:
    """The positions of the parameters a one-pass low-precision kernel takes: CPU tensors of a dtype the native
    kernel supports (step counts it can read), or CUDA tensors where Triton is installed; each with a grad of its
    dtype, float32 moments (``moments``: the lists kept, empty when none), a remainder of its dtype's kind, an
    int64 (key, count) stream on its device, and one dense layout for all of them."""
    first = params[0]
    if first.is_cpu:
        if not native.supports_lowp_dtype(first.dtype) or (steps is not None and native.adam_steps_code(steps) is None):
            return []
    elif not (first.is_cuda and _triton_available()):
        return []
    dtype, remainder_dtype = first.dtype, lowp.remainder_dtype(first.dtype)

    def takes(index: int) -> bool:
        param = params[index]
        return (
            grads[index].dtype is dtype
            and all(tensors[index].dtype is torch.float32 for tensors in moments)
            and (not remainders or remainders[index].dtype is remainder_dtype)
            and (not streams or _stream_ok(streams[index], param))
        )

    chosen = [index for index in range(len(params)) if takes(index)]
    if not chosen:
        return []
    lists = [layout.pick(tensors, chosen) for tensors in (params, grads, *moments, remainders)]
    walkable = {id(param) for param in layout.split_walkable(lists, len(lists))[0][0]}
    return [index for index in chosen if id(params[index]) in walkable]


def _stream_ok(stream: Tensor, param: Tensor) -> bool:
    return (
        stream.dtype is torch.int64
        and stream.numel() == 2
        and stream.is_contiguous()
        and (stream.device == param.device)
    )


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    try:
        from . import triton_lowp
    except ImportError:
        return False
    return triton_lowp.available()

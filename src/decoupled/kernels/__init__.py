"""Pure update math over tensor lists, and the one dispatcher that picks how it runs.

Three interchangeable implementations share each family's signature:

* ``forloop`` (:mod:`.forloop`): one tensor at a time;
* ``foreach`` (:mod:`.foreach`): torch's multi-tensor ``_foreach_*`` ops;
* ``fused`` (:mod:`.fused`): one pass over memory per step: for Adam torch's fused Adam(W) kernel, or on the
  CPU a native C kernel (:mod:`.native`) for cautious decay and bfloat16; for SGD the native C kernel on the
  CPU or torch's fused SGD elsewhere.

``foreach=``/``fused=`` mean what they mean in torch.optim: when the user sets neither, the fastest path that
supports the tensors is chosen (fused, then foreach, then the for-loop); an explicit request that cannot be
honoured raises a ValueError naming the tensors' device or dtype. Tensors are grouped by device and dtype
first, and each group is updated once per step. The fused kernels walk raw memory, so parameters whose gradient
or state is laid out unlike them (or that are not dense) take the strided foreach path instead
(:mod:`.layout`), and overlapping parameters are refused before anything is written.

The kernels know nothing of decay conventions: they take ``decay_factor`` (theta <- (1 - decay_factor) theta)
and ``l2`` (g <- g + l2 theta), which :func:`decoupled.conventions.decay_terms` computes, and ``cautious``
(apply the decay only where the update direction u_t and theta_{t-1} do not have opposite signs).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils._foreach_utils import (
    _get_foreach_kernels_supported_devices,
    _get_fused_kernels_supported_devices,
    _group_tensors_by_device_and_dtype,
)

from . import foreach as _foreach
from . import forloop as _forloop
from . import fused as _fused
from . import layout, lowp, native

__all__ = ["IMPLEMENTATIONS", "PRECISIONS", "adam", "decay_", "layout", "lowp", "native", "resolve", "sgd"]

IMPLEMENTATIONS: tuple[str, ...] = ("forloop", "foreach", "fused")
# How a step writes a bfloat16/float16 parameter (see decoupled.precision): "nearest" in the parameter's own
# arithmetic, as torch does; "exact" and "stochastic" from the float32 step of :mod:`.lowp`.
PRECISIONS: tuple[str, ...] = ("exact", "stochastic", "nearest")
_MODULES = {"forloop": _forloop, "foreach": _foreach, "fused": _fused}
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fused_unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type not in _get_fused_kernels_supported_devices():
        return f"device {device.type!r} (fused kernels run on {_get_fused_kernels_supported_devices()})"
    if dtype not in _FUSED_DTYPES:
        return f"dtype {dtype} (fused kernels take float16, bfloat16, float32 and float64)"
    return None


def _foreach_unsupported(device: torch.device) -> str | None:
    supported = ["cpu", *_get_foreach_kernels_supported_devices()]
    if device.type not in supported:
        return f"device {device.type!r} (foreach kernels run on {supported})"
    return None


def resolve(device: torch.device, dtype: torch.dtype, *, foreach: bool | None, fused: bool | None) -> str:
    """The implementation ("forloop", "foreach" or "fused") for tensors of one device and dtype.

    >>> resolve(torch.device("cpu"), torch.float32, foreach=None, fused=None)
    'fused'
    """
    if foreach and fused:
        raise ValueError("foreach=True and fused=True cannot be combined; set at most one")
    if fused:
        reason = _fused_unsupported(device, dtype)
        if reason is not None:
            raise ValueError(f"fused=True is not supported for {reason}")
        return "fused"
    if foreach:
        reason = _foreach_unsupported(device)
        if reason is not None:
            raise ValueError(f"foreach=True is not supported for {reason}")
        return "foreach"
    if fused is None and foreach is None:
        if _fused_unsupported(device, dtype) is None:
            return "fused"
        if _foreach_unsupported(device) is None:
            return "foreach"
    return "forloop"


def _run(
    family: str, lists: list[list[Tensor]], elementwise: int, foreach: bool | None, fused: bool | None, hyper: dict
) -> None:
    """Run ``family``'s kernel over parallel tensor lists, once per device and dtype.

    The one-pass (fused) kernels walk raw memory, so they get only the parameters whose tensors are laid out
    alike (:func:`.layout.split_walkable`; all of them in the common case); the rest take the foreach path, or
    the for-loop path where foreach is not supported. ``elementwise``: how many leading lists hold tensors of
    the parameters' shape (the rest, e.g. Adam's step counts, follow their parameter).
    """
    params = lists[0]
    if not params:
        return
    layout.check_no_overlap(params)  # before anything is written: a failed step must change nothing
    first = params[0]
    dtype = first.dtype
    if first.is_cpu and all(p.dtype is dtype and p.is_cpu for p in params):
        # The common case, one CPU dtype: grouping (about 0.5 us per tensor and list) would find one group.
        # Grads and state are not re-checked here: every kernel checks them (torch's ops raise on a dtype
        # mismatch; the fused kernels check sizes and dtypes themselves before they run).
        buckets = [((first.device, dtype), lists)]
    else:
        buckets = [(key, bucket) for key, (bucket, _) in _group_tensors_by_device_and_dtype(lists).items()]
    for (device, dtype), bucket in buckets:
        implementation = resolve(device, dtype, foreach=foreach, fused=fused)
        if implementation == "fused":
            bucket, rest = layout.split_walkable(bucket, elementwise)
            if rest:
                strided = "foreach" if _foreach_unsupported(device) is None else "forloop"
                getattr(_MODULES[strided], family)(*rest, **hyper)
        kernel: Callable[..., None] = getattr(_MODULES[implementation], family)
        kernel(*bucket, **hyper)


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
    cautious: bool = False,
    capturable: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    precision: str = "nearest",
    remainders: list[Tensor] | None = None,
    streams: list[Tensor] | None = None,
) -> None:
    """One step of Algorithm 2 (Adam with L2 when ``l2`` != 0, AdamW when ``decay_factor`` != 0).

    Per tensor, with t = step + 1 and g = (maximize ? -grad : grad) + l2 * theta::

        m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2;   vmax = max(vmax, v)   (amsgrad)
        u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
        theta = (1 - c decay_factor) theta - lr u,   c = cautious ? 1[u theta >= 0] : 1

    ``max_exp_avg_sqs`` may be empty unless ``amsgrad``. ``steps`` are float scalar tensors, incremented here.
    With ``capturable`` (or step tensors off the CPU) the bias corrections are computed on the steps' device,
    without reading a step on the host; ``lr``, ``beta1``, ``beta2`` and ``decay_factor`` may then be 0-dim
    Tensors. Capturable steps run the foreach path (the for-loop path where foreach is not supported).

    ``precision`` "exact" or "stochastic" (bfloat16/float16 parameters only, with float32 moments): the float32
    step of :mod:`.lowp` on every path, with ``remainders`` ("exact") or ``streams`` ("stochastic").
    """
    if precision != "nearest":
        if capturable:
            raise ValueError(f"precision={precision!r} does not take capturable steps")
        lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else []]
        lists += [steps, remainders or [], streams or []]
        hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, decay_factor=decay_factor, l2=l2, amsgrad=amsgrad)
        _run_lowp("adam", lists, foreach, fused, dict(hyper, maximize=maximize, cautious=cautious), precision)
        return
    if cautious and l2 != 0:
        raise ValueError("cautious weight decay masks a decoupled decay; it has no meaning for an L2 penalty")
    lists = [params, grads, exp_avgs, exp_avg_sqs]
    lists += [max_exp_avg_sqs if amsgrad else [], steps]
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, decay_factor=decay_factor, l2=l2, amsgrad=amsgrad)
    if capturable and fused:
        raise ValueError("fused=True cannot run a capturable step; leave fused unset or set foreach=True")
    if capturable and foreach is None and fused is None and params:
        foreach = True if _foreach_unsupported(params[0].device) is None else False
    _run("adam", lists, 5, foreach, fused, dict(hyper, maximize=maximize, capturable=capturable, cautious=cautious))


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
    foreach: bool | None = None,
    fused: bool | None = None,
    precision: str = "nearest",
    remainders: list[Tensor] | None = None,
    streams: list[Tensor] | None = None,
) -> None:
    """One step of Algorithm 1 (SGD with L2 when ``l2`` != 0, SGDW when ``decay_factor`` != 0).

    Per tensor, with g = (maximize ? -grad : grad) + l2 * theta and the scheduled step inside the buffer::

        m = momentum m + lr g;   u = nesterov ? momentum m + lr g : m
        theta = (1 - c decay_factor) theta - u,   c = cautious ? 1[u theta >= 0] : 1

    and u = lr g when ``momentum`` is 0 (``momentum_buffers`` may be empty then). ``precision`` as for
    :func:`adam` (float32 momentum buffers).
    """
    if cautious and l2 != 0:
        raise ValueError("cautious weight decay masks a decoupled decay; it has no meaning for an L2 penalty")
    hyper = dict(lr=lr, momentum=momentum, nesterov=nesterov, maximize=maximize)
    if precision != "nearest":
        lists = [params, grads, momentum_buffers if momentum != 0 else [], remainders or [], streams or []]
        hyper.update(decay_factor=decay_factor, l2=l2, cautious=cautious)
        _run_lowp("sgd", lists, foreach, fused, hyper, precision)
        return
    lists = [params, grads, momentum_buffers if momentum != 0 else []]
    _run("sgd", lists, 3, foreach, fused, dict(hyper, decay_factor=decay_factor, l2=l2, cautious=cautious))


def _run_lowp(
    family: str, lists: list[list[Tensor]], foreach: bool | None, fused: bool | None, hyper: dict, precision: str
) -> None:
    """Run ``family``'s low-precision step over parallel lists (in the order of its kernels' signatures), once per
    device and dtype: the one-pass kernel by default and for ``fused=True``, the
    float32 torch ops of :mod:`.lowp` for foreach (one launch per op) and the for-loop path (one tensor at a time).
    Every path computes the same bits."""
    if precision not in ("exact", "stochastic"):
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    params = lists[0]
    if not params:
        return
    wrong = next((p for p in params if p.dtype not in lowp.LOW_PRECISION_DTYPES), None)
    if wrong is not None:
        raise ValueError(f"precision={precision!r} steps bfloat16 and float16 parameters, got {wrong.dtype}")
    layout.check_no_overlap(params)
    keys = [(p.device, p.dtype) for p in params]
    if all(key == keys[0] for key in keys):
        buckets = [(keys[0], lists)]
    else:
        positions: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for index, key in enumerate(keys):
            positions.setdefault(key, []).append(index)
        buckets = [(key, [layout.pick(tensors, where) for tensors in lists]) for key, where in positions.items()]
    for (device, dtype), bucket in buckets:
        implementation = resolve(device, dtype, foreach=foreach, fused=fused)
        if implementation == "fused":
            getattr(_fused, f"{family}_lowp")(*bucket, precision=precision, **hyper)
        else:
            getattr(lowp, family)(*bucket, precision=precision, foreach=implementation == "foreach", **hyper)


def decay_(params: list[Tensor], decay_factor: float) -> None:
    """theta <- (1 - decay_factor) theta for every tensor, once per step (the decay :func:`decoupled.decouple`
    applies before the inner optimizer's step); one multiply per device and dtype."""
    if not params or decay_factor == 0:
        return
    for (bucket, *_), _ in _group_tensors_by_device_and_dtype([params]).values():
        _foreach.decay_(bucket, decay_factor)

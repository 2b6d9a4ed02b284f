"""bfloat16 and float16 parameters stepped exactly in float32: the split of a float32 master into a parameter and
a remainder, stochastic rounding, and the float32 step itself, as torch ops that run on any device.

A step of a low-precision parameter reads its float32 value theta (the *master*), applies the float32 update of
its optimizer, and writes the result back:

* ``exact``: the parameter holds the master rounded to nearest and a *remainder* in the optimizer state holds
  the rest, so that ``join(param, remainder)`` is the float32 master bit for bit. For bfloat16 the remainder is
  the master's low 16 bits (stored bit-cast in a bfloat16 tensor: torch's load-time cast of optimizer state to
  the parameter's dtype and the collectives of DDP, FSDP2 and DCP, which have no int16, then move it untouched;
  ``.view(torch.int16)`` reads it) and the parameter its high 16 bits rounded up when those low bits are
  0x8000 or more: round to nearest, ties away from zero, the split TransformerEngine's FusedAdam uses with
  ``store_param_remainders``. (Ties to even cannot be undone: an even bfloat16 value is the nearest of 65537
  float32 values, one more than 16 bits can tell apart.) For float16, whose range is not float32's, the
  remainder is the float32 ``master - float(param)``, exact by Sterbenz' lemma, with the parameter the master
  rounded to nearest, ties to even (torch's cast); a master beyond float16's range makes the parameter inf
  and the remainder 0.
* ``stochastic``: no remainder; the parameter is rounded from the float32 result up or down with probabilities
  that make its expectation that result (:func:`round_stochastic_`), with random bits from a counter-based hash
  of (stream key, count, element index; :func:`element_indices`: the place in memory): reproducible from the
  optimizer's seed and independent of the thread count and the kernel path.

The float32 step is one fixed sequence of IEEE operations, each rounded to float32 once (no fused
multiply-adds), with the hyperparameters rounded to float32 once from the double values computed on the host.
The native C kernels (:mod:`.native`) and the Triton kernels compute the same sequence, so every path gives the
same bits; tests/reference.py emulates it in float64.

Per element, with hyperparameters as float32 values (``step_size = lr / (1 - beta1^t)``,
``inv_bc2 = 1 / sqrt(1 - beta2^t)`` and ``keep = 1 - decay_factor`` computed in double first)::

    Adam:  g = (maximize ? -grad : grad) [+ l2 * theta];  m = beta1 * m + (1 - beta1) * g
           v = beta2 * v + (1 - beta2) * (g * g);  s = amsgrad ? (vmax = max(vmax, v)) : v
           theta = k * theta - (step_size * m) / (sqrt(s) * inv_bc2 + eps)
    SGD:   g = grad [+ l2' * theta];  m = mu * m + lr' * g;  u = nesterov ? mu * m + lr' * g : m   (u = lr' * g
           without momentum);  theta = k * theta - u,   with lr' = sign * lr, l2' = sign * l2 (sign -1 to maximize)

with k = keep, or 1 where cautious decay masks it (u and theta of opposite signs; Adam's u has m's sign).
``exact`` writes that float32 theta back. ``stochastic`` instead rounds the exact ``theta - delta`` with
``delta = f * theta + u`` (f = decay_factor, 0 where masked, u the update above, both float32), so that a change
far below a float32 ulp of theta (a decay of 1e-7 per step is a fifth of one) is kept on average.
"""

from __future__ import annotations

import math
import struct
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import layout

__all__ = [
    "LOW_PRECISION_DTYPES",
    "adam",
    "decay_",
    "element_indices",
    "join",
    "mix32",
    "random_bits",
    "remainder_dtype",
    "round_stochastic_",
    "sgd",
    "split_",
    "stream_key",
]

LOW_PRECISION_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)
_MASK32 = 0xFFFFFFFF


def remainder_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of an ``exact`` parameter's remainder: bfloat16 for bfloat16 (the master's low 16 bits, bit-cast),
    float32 for float16 (the master minus the parameter)."""
    if dtype == torch.bfloat16:
        return torch.bfloat16
    if dtype == torch.float16:
        return torch.float32
    raise ValueError(f"only bfloat16 and float16 parameters keep a remainder, got {dtype}")


def f32(value: float) -> float:
    """``value`` rounded to the nearest float32 (as C's ``(float)`` cast of a double), as a Python float."""
    return struct.unpack("f", struct.pack("f", value))[0]


# ------------------------------------------------------------------------------------------------------------
# The split and the join


def join(param: Tensor, remainder: Tensor) -> Tensor:
    """The float32 master of a low-precision parameter and its remainder (a new tensor)."""
    if param.dtype == torch.bfloat16:
        # (high << 16) + sign-extended low: int32 arithmetic, which cannot overflow for a pair split_ wrote.
        low = remainder.view(torch.int16).to(torch.int32)
        bits = param.view(torch.int16).to(torch.int32).mul_(65536).add_(low)
        return bits.view(torch.float32)
    return param.float().add_(remainder)


def split_(master: Tensor, param: Tensor, remainder: Tensor) -> None:
    """Write ``master`` (float32) into ``param`` (its value rounded to nearest) and ``remainder`` (the rest)."""
    if param.dtype == torch.bfloat16:
        bits = master.view(torch.int32)
        high = (bits + 0x8000) >> 16  # round half up on the bit pattern: ties away from zero
        nan = master != master  # a NaN stays a (quiet) NaN: the rounding above could carry it into the sign
        high = torch.where(nan, (bits >> 16) | 0x40, high)
        param.view(torch.int16).copy_(high.to(torch.int16))
        remainder.view(torch.int16).copy_((bits & 0xFFFF).to(torch.int16))  # read back sign-extended by join
        return
    rounded = master.to(torch.float16)
    param.copy_(rounded)
    rest = master - rounded.float()  # exact (Sterbenz): |master - rounded| <= half an ulp of rounded
    remainder.copy_(torch.where(rounded.isinf(), torch.zeros((), device=rest.device), rest))


# ------------------------------------------------------------------------------------------------------------
# Counter-based random bits


def mix32(x: int) -> int:
    """A 32-bit integer hash with full avalanche (Wellons' lowbias32 constants), on Python ints."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & _MASK32
    x ^= x >> 15
    x = (x * 0x735A2D97) & _MASK32
    x ^= x >> 15
    return x


def stream_key(seed: int, index: int) -> int:
    """The 32-bit key of parameter number ``index`` of an optimizer seeded with ``seed`` (any int)."""
    seed &= (1 << 64) - 1
    return mix32((seed & _MASK32) ^ mix32((seed >> 32) ^ mix32(index)))


def _mul32(x: Tensor, constant: int) -> Tensor:
    """(x * constant) mod 2^32 for int64 tensors x in [0, 2^32), in halves so that nothing overflows int64."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32_tensor(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


def element_indices(like: Tensor) -> Tensor:
    """Each element's index as the one-pass kernels number it (int64, ``like``'s shape): its place in memory
    from the first element for a dense tensor (contiguous, channels_last, transposed: the order the native and
    Triton kernels walk), and its row-major index for any other (which only the torch-op paths take)."""
    index = torch.empty_like(like, dtype=torch.int64, device=like.device)  # a dense tensor keeps its strides
    if index.stride() == like.stride() and layout.is_dense(like):
        index.as_strided((index.numel(),), (1,)).copy_(torch.arange(index.numel(), device=like.device))
        return index
    return torch.arange(like.numel(), dtype=torch.int64, device=like.device).view(like.shape)


def random_bits(index: Tensor | int, stream: Tensor) -> Tensor:
    """The 32 random bits (int64 values in [0, 2^32)) of elements at one rounding: ``index`` holds their
    int64 indices (:func:`element_indices`; an int n means 0 .. n-1).

    ``stream`` is the parameter's int64 pair (key, count), read on its device (never on the host). Element i
    gets mix32(lo32(i) ^ mix32(S + hi32(i))) with S = mix32(key ^ mix32(count)): the native and Triton kernels
    compute the same bits, so the rounding does not depend on the path or the thread count.
    """
    if isinstance(index, int):
        index = torch.arange(index, dtype=torch.int64, device=stream.device)
    key, count = stream[0] & _MASK32, stream[1] & _MASK32
    step_key = _mix32_tensor(key ^ _mix32_tensor(count))
    block_key = _mix32_tensor((step_key + (index >> 32)) & _MASK32)
    return _mix32_tensor((index & _MASK32) ^ block_key)


def round_stochastic_(theta: Tensor, delta: Tensor, param: Tensor, stream: Tensor) -> None:
    """Write ``theta - delta`` into ``param`` (bfloat16 or float16) rounded stochastically without bias: to the
    neighbour above or below with probabilities that make its expectation the exact difference. ``theta`` is
    the parameter's own value (float32, exactly a value of ``param``'s dtype), ``delta`` the step's change.
    Advances ``stream``'s count.

    A change smaller than the gap to the next value in its direction (the tiny steps, a late decay of 1e-7 of
    theta among them) moves there with probability |delta| / gap, decided on 32 random bits: no float32 rounding
    of ``theta - delta`` enters (it would be up to half a float32 ulp, a fifth of a 1e-7 decay). A larger change
    rounds the float32 difference: bfloat16 adds 16 random bits to the 16 it drops (exact: every dropped bit is
    randomized); float16 does so with 13 bits in its normal range and compares the fraction on the grid of
    2^-24 with 32 random bits below it. NaN stays NaN; overflow gives inf.
    """
    stream[1] += 1
    bits = random_bits(element_indices(param), stream)
    own = theta.to(param.dtype).view(torch.int16).to(torch.int64) & 0xFFFF  # theta's own bits (it is exact)
    # The small change: the neighbour in the direction of -delta and the gap to it (exact in float32).
    sign_bit = 0x8000
    away = ((delta < 0) == (theta > 0)) | (theta == 0)
    neighbour = torch.where(away, own + 1, own - 1)
    neighbour = torch.where(theta == 0, torch.where(delta > 0, sign_bit | 1, 1), neighbour)
    gap = (_as_float(neighbour, param.dtype) - theta).abs()
    small = (delta.abs() < gap) & torch.isfinite(theta)
    threshold = (delta.abs() / gap * 2.0**32).nan_to_num(0.0).to(torch.int64)
    moved = torch.where(bits < threshold, neighbour, own)
    # The larger change: the float32 difference, rounded on its dropped bits.
    value = theta - delta
    raw = value.view(torch.int32).to(torch.int64) & _MASK32
    nan = value != value
    if param.dtype == torch.bfloat16:
        rounded = torch.where(nan, (raw >> 16) | 0x40, (raw + (bits >> 16)) >> 16)
    else:
        rounded = _round_float16_stochastic(raw, bits, nan)
    param.view(torch.int16).copy_(torch.where(small, moved, rounded).to(torch.int16))


def _as_float(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """int64 bit patterns of ``dtype`` (bfloat16/float16) as float32 values."""
    return bits.to(torch.int16).view(dtype).float()


def _round_float16_stochastic(raw: Tensor, bits: Tensor, nan: Tensor) -> Tensor:
    """float16 bit patterns (int64) of float32 bit patterns ``raw`` rounded stochastically with ``bits``."""
    sign = (raw >> 16) & 0x8000
    magnitude = raw & 0x7FFFFFFF
    exponent = magnitude >> 23
    # Normal range (|x| >= 2^-14, biased float32 exponent >= 113): drop 13 bits, then rebias the exponent.
    normal = ((magnitude + (bits & 0x1FFF)) >> 13) - (112 << 10)
    normal = torch.clamp(normal, max=0x7C00)  # past the largest float16: inf
    # Subnormal range: the fraction of mantissa / 2^shift on the grid of 2^-24, against 32 random bits.
    mantissa = torch.where(exponent > 0, (magnitude & 0x7FFFFF) | 0x800000, magnitude & 0x7FFFFF)
    shift = 126 - torch.clamp(exponent, min=1)
    scaled = torch.where(shift < 56, (mantissa << 32) >> torch.clamp(shift, 0, 55), torch.zeros_like(mantissa))
    subnormal = (scaled >> 32) + ((scaled & _MASK32) > bits).to(torch.int64)
    high = torch.where(exponent >= 113, normal, subnormal)
    return torch.where(nan, torch.full_like(high, 0x7E00), sign | high)


# ------------------------------------------------------------------------------------------------------------
# The float32 step over tensor lists


class _Ops:
    """Elementwise float32 ops over tensor lists: one ``_foreach_*`` launch per op, or one op per tensor.

    Only ops that round once each (mul, add, sub, div, sqrt, neg, maximum); never alpha= or addcmul/lerp, which
    may be computed with a fused multiply-add.
    """

    def __init__(self, foreach: bool) -> None:
        self.foreach = foreach

    def _map(self, name: str, a: list[Tensor], b: Sequence[Tensor] | Tensor) -> list[Tensor]:
        if self.foreach:
            return list(getattr(torch, f"_foreach_{name}")(a, b))
        op: Callable[[Tensor, Tensor], Tensor] = getattr(torch, name)
        if isinstance(b, Tensor):
            return [op(x, b) for x in a]
        return [op(x, y) for x, y in zip(a, b)]

    def mul(self, a: list[Tensor], b: Sequence[Tensor] | Tensor) -> list[Tensor]:
        return self._map("mul", a, b)

    def add(self, a: list[Tensor], b: Sequence[Tensor] | Tensor) -> list[Tensor]:
        return self._map("add", a, b)

    def sub(self, a: list[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
        return self._map("sub", a, b)

    def div(self, a: list[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
        return self._map("div", a, b)

    def maximum(self, a: list[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
        return self._map("maximum", a, b)

    def sqrt(self, a: list[Tensor]) -> list[Tensor]:
        # torch's float32 sqrt on the CPU is not correctly rounded (MKL's vectorized sqrt: about one element in
        # six is an ulp off); the float64 sqrt rounded to float32 is (a float32's square root lies at least
        # ~2^-49 of itself from a rounding boundary, far beyond a float64 ulp).
        doubles = [x.double() for x in a]
        roots = torch._foreach_sqrt(doubles) if self.foreach else [x.sqrt_() for x in doubles]
        return [root.float() for root in roots]

    def neg(self, a: list[Tensor]) -> list[Tensor]:
        return list(torch._foreach_neg(a)) if self.foreach else [-x for x in a]


def _scalar(value: float, like: Tensor) -> Tensor:
    """A 0-dim float32 tensor of ``value`` rounded once to float32, on ``like``'s device."""
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def _opposite(a: Tensor, b: Tensor) -> Tensor:
    return ((a > 0) & (b < 0)) | ((a < 0) & (b > 0))


def _masked(directions: list[Tensor], thetas: list[Tensor], value: Tensor, masked: Tensor, cautious: bool):
    """``value``, or per element ``masked`` where cautious decay skips the decay (u and theta of opposite signs)."""
    if not cautious:
        return value
    return [torch.where(_opposite(u, theta), masked, value) for u, theta in zip(directions, thetas)]


def _masters(params: list[Tensor], remainders: list[Tensor], precision: str) -> list[Tensor]:
    if precision == "exact":
        return [join(p, r) for p, r in zip(params, remainders)]
    return [p.float() for p in params]


def _finish(
    ops: _Ops,
    thetas: list[Tensor],
    update: list[Tensor],
    directions: list[Tensor],
    decay_factor: float,
    cautious: bool,
    params: list[Tensor],
    remainders: list[Tensor],
    streams: list[Tensor],
    precision: str,
) -> None:
    """Apply ``theta <- (1 - decay_factor) theta - update`` (the decay masked by ``directions`` when cautious) and
    write the parameters back: "exact" as ``keep * theta - update`` on the master, split into parameter and
    remainder (the float32 step, bit for bit); "stochastic" as ``theta - (decay_factor * theta + update)``
    rounded stochastically from the exact difference (:func:`round_stochastic_`)."""
    like = params[0]
    zero, one = torch.zeros((), device=like.device), torch.ones((), device=like.device)
    if precision == "exact":
        keeps = _masked(directions, thetas, _scalar(1.0 - decay_factor, like), one, cautious)
        for theta, param, remainder in zip(ops.sub(ops.mul(thetas, keeps), update), params, remainders):
            split_(theta, param, remainder)
        return
    factors = _masked(directions, thetas, _scalar(decay_factor, like), zero, cautious)
    deltas = ops.add(ops.mul(thetas, factors), update)
    for theta, delta, param, stream in zip(thetas, deltas, params, streams):
        round_stochastic_(theta, delta, param, stream)


def adam(
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
    foreach: bool,
) -> None:
    """Algorithm 2 on low-precision parameters with float32 moments, the float32 sequence of the module
    docstring (``precision`` "exact": ``remainders``; "stochastic": ``streams``). Increments ``steps``."""
    if not params:
        return
    ops, like = _Ops(foreach), params[0]
    for step in steps:
        step += 1
    counts = [step.item() for step in steps]
    step_sizes = [_scalar(lr / (1.0 - beta1**t), like) for t in counts]
    inv_bc2 = [_scalar(1.0 / math.sqrt(1.0 - beta2**t), like) for t in counts]
    thetas = _masters(params, remainders, precision)
    g = [grad.float() for grad in grads]
    if maximize:
        g = ops.neg(g)
    if l2 != 0:
        g = ops.add(g, ops.mul(thetas, _scalar(l2, like)))
    new_m = ops.add(ops.mul(exp_avgs, _scalar(beta1, like)), ops.mul(g, _scalar(1.0 - beta1, like)))
    new_v = ops.add(ops.mul(exp_avg_sqs, _scalar(beta2, like)), ops.mul(ops.mul(g, g), _scalar(1.0 - beta2, like)))
    second = new_v
    if amsgrad:
        second = ops.maximum(max_exp_avg_sqs, new_v)
    denom = ops.add(ops.mul(ops.sqrt(second), inv_bc2), _scalar(eps, like))
    update = ops.div(ops.mul(new_m, step_sizes), denom)
    for targets, values in ((exp_avgs, new_m), (exp_avg_sqs, new_v), (max_exp_avg_sqs if amsgrad else [], second)):
        for target, value in zip(targets, values):
            target.copy_(value)
    _finish(ops, thetas, update, new_m, decay_factor, cautious, params, remainders, streams, precision)


def sgd(
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
    foreach: bool,
) -> None:
    """Algorithm 1 on low-precision parameters with a float32 momentum buffer, the float32 sequence of the
    module docstring (the scheduled step inside the buffer)."""
    if not params:
        return
    ops, like = _Ops(foreach), params[0]
    sign = -1.0 if maximize else 1.0
    scaled_lr = _scalar(sign * lr, like)
    thetas = _masters(params, remainders, precision)
    g = [grad.float() for grad in grads]
    if l2 != 0:
        g = ops.add(g, ops.mul(thetas, _scalar(sign * l2, like)))
    step = ops.mul(g, scaled_lr)
    if momentum != 0:
        mu = _scalar(momentum, like)
        new_m = ops.add(ops.mul(momentum_buffers, mu), step)
        for target, value in zip(momentum_buffers, new_m):
            target.copy_(value)
        update = ops.add(ops.mul(new_m, mu), step) if nesterov else new_m
    else:
        update = step
    _finish(ops, thetas, update, update, decay_factor, cautious, params, remainders, streams, precision)


def decay_(
    params: list[Tensor], remainders: list[Tensor], streams: list[Tensor], decay_factor: float, precision: str
) -> None:
    """theta <- (1 - decay_factor) theta on the float32 masters, written back as ``precision`` says (the decay
    decoupled.decouple applies before the inner optimizer's own step)."""
    if not params or decay_factor == 0:
        return
    thetas = _masters(params, remainders, precision)
    zeros = [torch.zeros_like(theta) for theta in thetas]
    _finish(_Ops(False), thetas, zeros, zeros, decay_factor, False, params, remainders, streams, precision)

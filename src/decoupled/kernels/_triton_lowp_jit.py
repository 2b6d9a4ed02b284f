"""The Triton kernels of :mod:`.triton_lowp` (imported only where Triton is installed; the design, the launch
layout and what the host reads are in that module's docstring).

Every float32 operation below is one IEEE operation rounded once, as in :mod:`.lowp`: ``*``, ``+`` and ``-``
(compiled without contraction: the launches pass ``enable_fp_fusion=False``), :func:`tl.div_rn`,
:func:`tl.sqrt_rn` and :func:`tl.maximum` with NaN propagation. Every rounding to 16 bits but float16's round to
nearest is integer arithmetic on the bit patterns (the interpreter truncates float32-to-bfloat16 casts). The
16-bit tensors (parameters, gradients, bfloat16 remainders) arrive as int16 views.
"""

import triton
import triton.language as tl

_SIGN_MAGNITUDE = tl.constexpr(0x7FFFFFFF)  # a float32's bits without the sign
_EXPONENT = tl.constexpr(0x7F800000)  # its exponent bits: all set for inf and NaN


@triton.jit
def _mix32(x):
    """lowp.mix32 on uint32 tensors (multiplications modulo 2^32)."""
    x = x ^ (x >> 16)
    x = x * tl.full(x.shape, 0x21F0AAAD, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full(x.shape, 0x735A2D97, tl.uint32)
    return x ^ (x >> 15)


@triton.jit
def _random_bits(index, step_key):
    """lowp.random_bits of the int64 element indices ``index`` (uint32 results): mix32(lo32(i) ^ mix32(S + hi32(i)))
    with S the tensor's key of this rounding (``step_key``, an int32 holding its bits)."""
    key = step_key.to(tl.uint32, bitcast=True)
    block = _mix32(key + (index >> 32).to(tl.uint32))
    return _mix32(index.to(tl.uint32) ^ block)


@triton.jit
def _bits16(ptr, offsets, mask):
    """The 16-bit patterns at ``ptr`` (an int16 view) as int32 values in [0, 2^16)."""
    return tl.load(ptr + offsets, mask=mask, other=0).to(tl.int32) & 0xFFFF


@triton.jit
def _as_float(bits, BF16: tl.constexpr):
    """bfloat16 or float16 bit patterns (int32 in [0, 2^16)) as float32 values (exact)."""
    if BF16:
        return (bits << 16).to(tl.float32, bitcast=True)
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _theta(p_ptr, x_ptr, offsets, mask, BF16: tl.constexpr, EXACT: tl.constexpr):
    """(theta, own): each element's float32 value (the master under "exact": lowp.join) and its parameter's bits."""
    own = _bits16(p_ptr, offsets, mask)
    if EXACT:
        if BF16:
            # (high << 16) + the sign-extended low 16 bits, modulo 2^32.
            low = tl.load(x_ptr + offsets, mask=mask, other=0).to(tl.int32).to(tl.uint32, bitcast=True)
            theta = ((own.to(tl.uint32) << 16) + low).to(tl.float32, bitcast=True)
        else:
            theta = _as_float(own, BF16) + tl.load(x_ptr + offsets, mask=mask, other=0.0)
    else:
        theta = _as_float(own, BF16)
    return theta, own


@triton.jit
def _begin(p_ptr, g_ptr, x_ptr, numel, BF16: tl.constexpr, EXACT: tl.constexpr, BLOCK: tl.constexpr):
    """This program's elements [pid * BLOCK, (pid + 1) * BLOCK) of ``numel`` (int64 offsets and their mask), their
    theta and own bits (:func:`_theta`) and their gradients as float32."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    theta, own = _theta(p_ptr, x_ptr, offsets, mask, BF16, EXACT)
    return offsets, mask, theta, own, _as_float(_bits16(g_ptr, offsets, mask), BF16)


@triton.jit
def _opposite(a, b):
    return ((a > 0) & (b < 0)) | ((a < 0) & (b > 0))


@triton.jit
def _round_stochastic(theta, delta, own, random, BF16: tl.constexpr):
    """lowp.round_stochastic_: the bit pattern (int32) of ``theta - delta`` rounded stochastically with the
    element's 32 ``random`` bits; ``own`` is theta's own bit pattern."""
    # The small change: to the neighbour in the direction of -delta with probability |delta| / gap.
    away = ((delta < 0) == (theta > 0)) | (theta == 0)
    neighbour = tl.where(away, own + 1, own - 1)
    neighbour = tl.where(theta == 0, tl.where(delta > 0, 0x8001, 1), neighbour)
    gap = tl.abs(_as_float(neighbour & 0xFFFF, BF16) - theta)
    size = tl.abs(delta)
    finite = (theta.to(tl.uint32, bitcast=True) & _EXPONENT) != _EXPONENT
    small = (size < gap) & finite
    ratio = tl.where(small, tl.div_rn(size, tl.where(small, gap, 1.0)), 0.0)
    threshold = (ratio * 4294967296.0).to(tl.int64)  # below 2^32: size < gap
    moved = tl.where(random.to(tl.int64) < threshold, neighbour, own)
    # The larger change: the float32 difference, rounded on its dropped bits (int64 arithmetic, as lowp's).
    value = theta - delta
    raw = value.to(tl.uint32, bitcast=True).to(tl.int64)
    nan = value != value
    bits = random.to(tl.int64)
    if BF16:
        rounded = tl.where(nan, (raw >> 16) | 0x40, (raw + (bits >> 16)) >> 16)
    else:
        sign = (raw >> 16) & 0x8000
        magnitude = raw & _SIGN_MAGNITUDE
        exponent = magnitude >> 23
        normal = tl.minimum(((magnitude + (bits & 0x1FFF)) >> 13) - (112 << 10), 0x7C00)
        mantissa = tl.where(exponent > 0, (magnitude & 0x7FFFFF) | 0x800000, magnitude & 0x7FFFFF)
        shift = 126 - tl.maximum(exponent, 1)
        scaled = tl.where(shift < 56, (mantissa << 32) >> tl.minimum(tl.maximum(shift, 0), 55), 0)
        subnormal = (scaled >> 32) + ((scaled & 0xFFFFFFFF) > bits).to(tl.int64)
        high = tl.where(exponent >= 113, normal, subnormal)
        rounded = tl.where(nan, 0x7E00, sign | high)
    return tl.where(small, moved, rounded.to(tl.int32))


@triton.jit
def _write(
    p_ptr,
    x_ptr,
    offsets,
    mask,
    theta,
    own,
    update,
    masked,
    keep,
    factor,
    step_key,
    BF16: tl.constexpr,
    EXACT: tl.constexpr,
    CAUTIOUS: tl.constexpr,
):
    """lowp._finish for one block: "exact" writes ``k * theta - update`` (k = keep, 1 where ``masked``) as parameter
    and remainder (lowp.split_); "stochastic" rounds ``theta - (f * theta + update)`` (f = factor, 0 where masked)."""
    if EXACT:
        if CAUTIOUS:
            keep = tl.where(masked, 1.0, keep)
        master = theta * keep - update
        if BF16:
            bits = master.to(tl.uint32, bitcast=True)
            nan = (bits & _SIGN_MAGNITUDE) > _EXPONENT
            high = tl.where(nan, (bits >> 16) | 0x40, (bits + 0x8000) >> 16)  # ties away from zero
            tl.store(p_ptr + offsets, high.to(tl.int16), mask=mask)
            tl.store(x_ptr + offsets, (bits & 0xFFFF).to(tl.int16), mask=mask)
        else:
            rounded = master.to(tl.float16)  # round to nearest, ties to even (numpy's cast in the interpreter)
            back = rounded.to(tl.float32)
            infinite = (back.to(tl.uint32, bitcast=True) & _SIGN_MAGNITUDE) == _EXPONENT
            tl.store(p_ptr + offsets, rounded.to(tl.int16, bitcast=True), mask=mask)
            tl.store(x_ptr + offsets, tl.where(infinite, 0.0, master - back), mask=mask)
    else:
        if CAUTIOUS:
            factor = tl.where(masked, 0.0, factor)
        delta = theta * factor + update
        random = _random_bits(offsets, step_key)
        tl.store(p_ptr + offsets, _round_stochastic(theta, delta, own, random, BF16).to(tl.int16), mask=mask)


@triton.jit(do_not_specialize=["step_key"])
def adam_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    vmax_ptr,
    x_ptr,
    numel,
    step_size,
    inv_bc2,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    keep,
    factor,
    l2,
    step_key,
    BF16: tl.constexpr,
    EXACT: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_L2: tl.constexpr,
    CAUTIOUS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """lowp.adam on one tensor, one block of it per program."""
    offsets, mask, theta, own, g = _begin(p_ptr, g_ptr, x_ptr, numel, BF16, EXACT, BLOCK)
    if MAXIMIZE:
        g = -g
    if HAS_L2:
        g = g + theta * l2
    m = tl.load(m_ptr + offsets, mask=mask, other=0.0) * beta1 + g * one_minus_beta1
    v = tl.load(v_ptr + offsets, mask=mask, other=0.0) * beta2 + (g * g) * one_minus_beta2
    second = v
    if AMSGRAD:
        second = tl.maximum(tl.load(vmax_ptr + offsets, mask=mask, other=0.0), v, propagate_nan=tl.PropagateNan.ALL)
        tl.store(vmax_ptr + offsets, second, mask=mask)
    update = tl.div_rn(m * step_size, tl.sqrt_rn(second) * inv_bc2 + eps)
    tl.store(m_ptr + offsets, m, mask=mask)
    tl.store(v_ptr + offsets, v, mask=mask)
    masked = _opposite(m, theta)  # cautious decay: Adam's update has m's sign (unused, and removed, otherwise)
    _write(p_ptr, x_ptr, offsets, mask, theta, own, update, masked, keep, factor, step_key, BF16, EXACT, CAUTIOUS)


@triton.jit(do_not_specialize=["step_key"])
def sgd_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    x_ptr,
    numel,
    scaled_lr,
    momentum,
    keep,
    factor,
    scaled_l2,
    step_key,
    BF16: tl.constexpr,
    EXACT: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    HAS_L2: tl.constexpr,
    CAUTIOUS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """lowp.sgd on one tensor, one block of it per program (``scaled_lr`` and ``scaled_l2`` carry the sign of
    maximize)."""
    offsets, mask, theta, own, g = _begin(p_ptr, g_ptr, x_ptr, numel, BF16, EXACT, BLOCK)
    if HAS_L2:
        g = g + theta * scaled_l2
    step = g * scaled_lr
    update = step
    if HAS_MOMENTUM:
        m = tl.load(m_ptr + offsets, mask=mask, other=0.0) * momentum + step
        tl.store(m_ptr + offsets, m, mask=mask)
        update = m
        if NESTEROV:
            update = m * momentum + step
    masked = _opposite(update, theta)
    _write(p_ptr, x_ptr, offsets, mask, theta, own, update, masked, keep, factor, step_key, BF16, EXACT, CAUTIOUS)

"""Low-precision parameters stepped in float32 on the GPU: :mod:`.lowp`'s step as one Triton kernel per tensor.

:func:`adam_lowp_` and :func:`sgd_lowp_` take the arguments of :func:`.native.adam_lowp_` and
:func:`.native.sgd_lowp_` (bfloat16/float16 parameters and gradients, float32 moments, float32 step counts,
remainders or int64 (key, count) streams, all on one device) and give the bits of :func:`.lowp.adam` and
:func:`.lowp.sgd`, for "exact" and "stochastic", every flag. They need the optional ``triton`` extra; on a
machine without CUDA, ``TRITON_INTERPRET=1`` runs them on CPU tensors (the interpreter, numpy underneath).

Design:

* Host: the step counts are incremented on the device (one ``_foreach_add_``), then read once per call (one
  host transfer), and the bias corrections are computed from them in Python double exactly as lowp.adam does
  (``step_size = lr / (1 - beta1^t)``, ``inv_bc2 = 1 / sqrt(1 - beta2^t)``); "stochastic" likewise advances the
  streams' counts on the device and reads the streams once, and each tensor's rounding key
  ``S = mix32(key ^ mix32(count))`` (lowp.random_bits) is computed on the host. Every hyperparameter reaches
  the kernel as a float32 value rounded once from its double (Triton passes Python floats as fp32).
* Launch: one launch per tensor, a 1-D grid of ``ceil(numel / BLOCK)`` programs; program k updates elements
  [k BLOCK, (k + 1) BLOCK) of the tensor's memory (int64 offsets, so tensors past 2^31 elements work). Each
  element is independent of every other; its random bits are a hash of its int64 offset in its tensor, so
  the result does not depend on the block size or the grid. The tensors are walked as raw memory from their
  data pointers, as the native kernels walk them: the dispatcher hands this module dense tensors that share
  one layout per parameter (:mod:`.layout`). For contiguous tensors the offset is the element's index; for
  other dense layouts (channels_last, transposed) it is its place in memory, as in the native kernels and in
  lowp's torch ops (:func:`.lowp.element_indices`), so "stochastic" gives the same bits on every path too.
* Float32 arithmetic: the sequence of lowp's docstring, each operation rounded once. Triton contracts
  ``a * b + c`` into a fused multiply-add on CUDA unless told not to; every launch passes
  ``enable_fp_fusion=False``, a Triton compile option (part of the kernel's cache key) with which LLVM's NVPTX
  backend emits ``mul.rn.f32``/``add.rn.f32`` (the explicit rounding forbids ptxas to contract them) and ptxas
  runs with ``--fmad=false``: tests/test_triton.py compiles the kernels for sm_90 without a GPU and finds no
  ``fma`` in their PTX. An option rather than rounding each intermediate through inline assembly: it keeps the
  kernels plain Triton, which the interpreter runs as they are. Division is :func:`triton.language.div_rn` and
  the square root :func:`triton.language.sqrt_rn` (``div.rn.f32``, ``sqrt.rn.f32``: IEEE, correctly rounded;
  Triton 3.9 compiles ``/`` to ``div.full.f32`` and ``sqrt`` to ``sqrt.approx.ftz.f32``), subnormals are kept
  (no ``.ftz``); the interpreter computes all of them with numpy's IEEE float32 operations.
* Rounding to 16 bits: integer operations on the bit patterns (the interpreter truncates float32-to-bfloat16
  casts), as lowp's: bfloat16 round half away from zero on the bit pattern with NaN kept quiet (the "exact"
  split), stochastic rounding on 32 random bits. The one float cast is float16's round to nearest, ties to
  even ("exact" on float16: ``cvt.rn.f16.f32`` on CUDA, numpy's cast in the interpreter).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from typing import Any

import torch
from torch import Tensor

from . import lowp

__all__ = ["BLOCK", "LAUNCH_OPTIONS", "adam_lowp_", "available", "sgd_lowp_"]

BLOCK = 1024  # elements per program: 8 per thread at 4 warps
# The compile options of every launch: no contraction into fused multiply-adds (see the module docstring).
LAUNCH_OPTIONS = {"num_warps": 4, "enable_fp_fusion": False}
_MASK32 = 0xFFFFFFFF


def available() -> bool:
    """Whether the Triton kernels can run here: Triton is installed, and a CUDA device is visible or
    ``TRITON_INTERPRET=1`` is set (the interpreter, on CPU tensors). Never raises."""
    try:
        if importlib.util.find_spec("triton") is None:
            return False
        if os.environ.get("TRITON_INTERPRET") == "1":
            return True
        return bool(torch.cuda.is_available())
    except Exception:  # a broken install, a driver that fails to answer: no Triton path
        return False


def _jit() -> Any:
    from . import _triton_lowp_jit

    return _triton_lowp_jit


def _f32(value: float) -> float:
    """``value`` rounded once to float32, as a Python float (inf beyond float32's range, as torch's cast)."""
    try:
        return lowp.f32(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def _int16(tensor: Tensor) -> Tensor:
    return tensor.detach().view(torch.int16)


def _host_values(tensors: list[Tensor]) -> list[Any]:
    """The values of small device tensors of one dtype, in one transfer to the host."""
    return torch.stack([t.detach() for t in tensors]).tolist()


def _rounding_keys(streams: list[Tensor]) -> list[int]:
    """Advance each (key, count) stream and return the int32 bits of its key for this rounding,
    mix32(key ^ mix32(count)) on the low 32 bits (lowp.random_bits)."""
    torch._foreach_add_(streams, [torch.tensor([0, 1], dtype=torch.int64, device=streams[0].device)] * len(streams))
    keys = []
    for key, count in _host_values(streams):
        bits = lowp.mix32((key & _MASK32) ^ lowp.mix32(count & _MASK32))
        keys.append(bits - (1 << 32) if bits >= 1 << 31 else bits)  # one int32 type for every key: one kernel
    return keys


def _launches(params: list[Tensor], extras: list[Tensor], exact: bool):
    """(index, numel, parameter, extra) of each non-empty parameter as its kernel takes them: the parameter as int16,
    its remainder ("exact": int16 for bfloat16, float32 for float16) or, where no remainder is read, the
    parameter again."""
    for index, param in enumerate(params):
        numel = param.numel()
        if numel == 0:
            continue
        p = _int16(param)
        if not exact:
            yield index, numel, p, p
        else:
            yield index, numel, p, _int16(extras[index]) if param.dtype == torch.bfloat16 else extras[index]


def _check(params: list[Tensor], precision: str) -> None:
    if precision not in ("exact", "stochastic"):
        raise ValueError(f"the Triton kernels take precision 'exact' or 'stochastic', got {precision!r}")
    dtype = params[0].dtype
    if dtype not in lowp.LOW_PRECISION_DTYPES:
        raise ValueError(f"the Triton kernels take bfloat16 or float16 parameters, got {dtype}")


def _launch(kernel: Any, numel: int, device: torch.device, *args: Any, **kwargs: Any) -> None:
    grid = (-(-numel // BLOCK),)  # ceil(numel / BLOCK) programs
    # Triton launches on the current CUDA device: make it the tensors' own.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        kernel[grid](*args, BLOCK=BLOCK, **LAUNCH_OPTIONS, **kwargs)


def adam_lowp_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    extras: list[Tensor],
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
    """lowp.adam's step, bit for bit, one Triton launch per tensor; ``extras`` are the remainders ("exact") or
    the rounding streams ("stochastic"). Increments ``steps`` (and the streams' counts). The caller guarantees
    dtypes, sizes and one dense layout per parameter (:func:`decoupled.kernels.fused.adam_lowp` checks them)."""
    if not params:
        return
    _check(params, precision)
    exact = precision == "exact"
    torch._foreach_add_(steps, 1)
    counts = _host_values(steps)
    keys = [0] * len(params) if exact else _rounding_keys(extras)
    shared = dict(
        beta1=_f32(beta1), one_minus_beta1=_f32(1.0 - beta1), beta2=_f32(beta2), one_minus_beta2=_f32(1.0 - beta2),
        eps=_f32(eps), keep=_f32(1.0 - decay_factor), factor=_f32(decay_factor), l2=_f32(l2),
    )  # fmt: skip
    flags = dict(
        BF16=params[0].dtype == torch.bfloat16, EXACT=exact, AMSGRAD=bool(amsgrad), MAXIMIZE=bool(maximize),
        HAS_L2=l2 != 0, CAUTIOUS=bool(cautious),
    )  # fmt: skip
    kernel = _jit().adam_kernel
    for index, numel, p, x in _launches(params, extras, exact):
        t = counts[index]
        m, v = exp_avgs[index], exp_avg_sqs[index]
        _launch(
            kernel, numel, p.device, p, _int16(grads[index]), m, v, max_exp_avg_sqs[index] if amsgrad else v, x,
            numel, step_size=_f32(lr / (1.0 - beta1**t)), inv_bc2=_f32(1.0 / math.sqrt(1.0 - beta2**t)),
            step_key=keys[index], **shared, **flags,
        )  # fmt: skip


def sgd_lowp_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    extras: list[Tensor],
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
    """lowp.sgd's step, bit for bit, one Triton launch per tensor; ``extras`` as for :func:`adam_lowp_`
    (``momentum_buffers`` is ignored without momentum). Same guarantees from the caller."""
    if not params:
        return
    _check(params, precision)
    exact = precision == "exact"
    keys = [0] * len(params) if exact else _rounding_keys(extras)
    sign = -1.0 if maximize else 1.0
    shared = dict(
        scaled_lr=_f32(sign * lr), momentum=_f32(momentum), keep=_f32(1.0 - decay_factor), factor=_f32(decay_factor),
        scaled_l2=_f32(sign * l2),
    )  # fmt: skip
    flags = dict(
        BF16=params[0].dtype == torch.bfloat16, EXACT=exact, HAS_MOMENTUM=momentum != 0, NESTEROV=bool(nesterov),
        HAS_L2=l2 != 0, CAUTIOUS=bool(cautious),
    )  # fmt: skip
    kernel = _jit().sgd_kernel
    for index, numel, p, x in _launches(params, extras, exact):
        buffer = momentum_buffers[index] if momentum != 0 else p
        _launch(
            kernel, numel, p.device, p, _int16(grads[index]), buffer, x, numel, step_key=keys[index], **shared,
            **flags,
        )  # fmt: skip

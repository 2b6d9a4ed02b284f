"""The Triton kernels of decoupled.kernels.triton_lowp: bit for bit the float32 step of decoupled.kernels.lowp.

Run on the CPU (the default) they run under Triton's interpreter (``TRITON_INTERPRET=1`` while the kernels are
decorated; numpy underneath); with ``DECOUPLED_TEST_DEVICE=cuda`` (benchmarks/gpu_check.py) they are compiled
and run on the GPU. Either way every result is compared with lowp.adam/lowp.sgd run on CPU copies of the same
tensors: parameters, remainders, moments, step counts and rounding streams, bit for bit (two NaNs count as
equal: their payloads are not part of the step's contract, and a GPU's differ from a CPU's).

Covered: every flag combination of both families on bfloat16 and float16 under "exact" and "stochastic"; 20
scheduled steps of tensors of 1, 7, 1000 and 4097 elements and an empty one, with NaN, inf, huge and subnormal
gradients and values at the edges of each dtype's range; the split at float16's ties, subnormals and overflow;
random bits past 2^32 elements; independence of the block size; the optimizers' dispatch into the kernels;
and, without a GPU, the compiled PTX (no fused multiply-add, IEEE division and square root).
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

triton = pytest.importorskip("triton")
tl = triton.language

from device import TEST_DEVICE  # noqa: E402
from test_precision import _bits  # noqa: E402

import decoupled  # noqa: E402
from decoupled.kernels import lowp, native, triton_lowp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INTERPRET = TEST_DEVICE.type == "cpu"
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("exact", "stochastic")


def _random_bits_kernel(index_ptr, out_ptr, numel, step_key, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    index = tl.load(index_ptr + offsets, mask=mask, other=0)
    tl.store(out_ptr + offsets, jit._random_bits(index, step_key).to(tl.int64), mask=mask)


# Triton decides at decoration time whether a kernel is interpreted: decorate (again) with the interpreter on for
# CPU tensors, off for the GPU.
with mock.patch.dict(os.environ):  # restored afterwards
    if INTERPRET:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    _name = "decoupled.kernels._triton_lowp_jit"
    jit = importlib.reload(sys.modules[_name]) if _name in sys.modules else importlib.import_module(_name)
    random_bits_kernel = triton.jit(do_not_specialize=["step_key"])(_random_bits_kernel)


# ------------------------------------------------------------------------------------------------------------
# Helpers: one state, stepped by lowp (on CPU copies) and by the Triton kernels (on the test device)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str, ignore: torch.Tensor | None = None) -> None:
    """Bit for bit, except where both are NaN or ``ignore`` is True."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    differ = _bits(actual) != _bits(expected)
    if actual.is_floating_point():
        differ &= ~(actual.isnan() & expected.isnan())
    if ignore is not None:
        differ &= ~ignore
    assert not differ.any(), (
        f"{what}: {int(differ.sum())} of {differ.numel()} elements differ, first at index "
        f"{differ.flatten().nonzero()[:3].flatten().tolist()}: {actual.flatten()[differ.flatten()][:3].tolist()} "
        f"vs {expected.flatten()[differ.flatten()][:3].tolist()}"
    )


# Values at the edges of each dtype's range, placed at the start of the tensors that have room for them: signed
# zeros, the largest finite values and values that overflow after a step, normal and subnormal minima.
EDGES = {
    torch.bfloat16: [0.0, -0.0, 3.3895e38, -3.38e38, 3.39e38, 2.0**-126, 2.0**-133, -(2.0**-130), 1e-30, 3.0e38],
    torch.float16: [0.0, -0.0, 65504.0, -65504.0, 65519.0, 2.0**-14, 2.0**-24, -3e-7, 1e-5, 65000.0],
}


def _masters(numel: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-6, 3, (numel,), generator=generator).float()
    master = torch.randn(numel, generator=generator) * scale
    edges = torch.tensor(EDGES[dtype])[: numel if numel >= 100 else 0]
    master[: len(edges)] = edges
    return master


def _gradient(numel: int, dtype: torch.dtype, step: int, seed: int) -> torch.Tensor:
    """Random gradients; in tensors of 100 elements or more, a NaN, an inf and a -inf now and then, a huge and a
    subnormal gradient at every step, a push across the overflow edge of the values above, none for the subnormal
    values."""
    generator = torch.Generator().manual_seed(1000 * seed + step)
    grad = torch.randn(numel, generator=generator) * 10.0 ** torch.randint(-4, 2, (numel,), generator=generator)
    if numel >= 100:
        huge = 3.0e38 if dtype == torch.bfloat16 else 6.0e4
        grad[10] = math.nan if step % 7 == 2 else grad[10]
        grad[11] = math.inf if step % 5 == 1 else grad[11]
        grad[12] = -math.inf if step == 6 else grad[12]
        grad[13] = huge
        grad[14] = -huge
        grad[15] = 2.0**-130 if dtype == torch.bfloat16 else 2.0**-24
        grad[4] = -huge  # at the value just below the overflow edge
        grad[9] = -huge if step % 3 == 0 else huge
        grad[5:8] = 0  # the subnormal values: decayed only, they stay subnormal
    return grad.to(dtype)


class State:
    """A list of low-precision parameters with their float32 moments, remainders, streams and step counts."""

    def __init__(self, dtype: torch.dtype, sizes: list[int], precision: str, seed: int = 0) -> None:
        self.params, self.remainders = [], []
        for index, numel in enumerate(sizes):
            master = _masters(numel, dtype, seed + index)
            param = torch.empty(numel, dtype=dtype)
            remainder = torch.zeros(numel, dtype=lowp.remainder_dtype(dtype))
            if precision == "exact":
                lowp.split_(master, param, remainder)
            else:
                param.copy_(master)
            self.params.append(param)
            self.remainders.append(remainder)
        self.first = [torch.zeros(n) for n in sizes]
        self.second = [torch.zeros(n) for n in sizes]
        self.third = [torch.zeros(n) for n in sizes]
        self.streams = [torch.tensor([lowp.stream_key(seed, i), 5 * i], dtype=torch.int64) for i in range(len(sizes))]
        self.steps = [torch.zeros(()) for _ in sizes]

    def lists(self) -> dict[str, list[torch.Tensor]]:
        return {"params": self.params, "remainders": self.remainders, "first": self.first, "second": self.second,
                "third": self.third, "streams": self.streams, "steps": self.steps}  # fmt: skip

    def to(self, device: torch.device) -> State:
        copy = object.__new__(State)
        for name, tensors in self.lists().items():
            setattr(copy, name, [t.to(device, copy=True) for t in tensors])
        return copy


def assert_states_equal(actual: State, expected: State, precision: str, what: str) -> None:
    for name, tensors in expected.lists().items():
        for index, (a, e) in enumerate(zip(actual.lists()[name], tensors)):
            ignore = None
            if name == "remainders":
                if precision != "exact":
                    continue
                ignore = lowp.join(expected.params[index], e).isnan()  # a NaN master's remainder: its payload
            assert_same(a, e, f"{what}: {name}[{index}]", ignore)


# The hyperparameters of step t: a schedule whose lr changes at every step, from tiny changes (far below a
# float32 ulp: the stochastic small-step rule) to large ones.
LR_MULTIPLIERS = [1.0, 0.3, 2.0, 1e-4, 0.7, 1e-7, 5.0, 0.05]


def adam_step(impl: str, state: State, grads: list[torch.Tensor], step: int, precision: str, flags: dict) -> None:
    lr = 1e-2 * LR_MULTIPLIERS[step % len(LR_MULTIPLIERS)]
    hyper = dict(
        precision=precision, lr=lr, beta1=0.9, beta2=0.99, eps=1e-8, decay_factor=lr * 0.1,
        l2=0.01 if flags["l2"] else 0.0, amsgrad=flags["amsgrad"], maximize=flags["maximize"],
        cautious=flags["cautious"],
    )  # fmt: skip
    s = state
    if impl == "lowp":
        lowp.adam(s.params, grads, s.first, s.second, s.third, s.steps, s.remainders, s.streams, foreach=False, **hyper)
    else:
        extras = s.remainders if precision == "exact" else s.streams
        maxima = s.third if flags["amsgrad"] else []
        triton_lowp.adam_lowp_(s.params, grads, s.first, s.second, maxima, s.steps, extras, **hyper)


def sgd_step(impl: str, state: State, grads: list[torch.Tensor], step: int, precision: str, flags: dict) -> None:
    lr = 0.05 * LR_MULTIPLIERS[step % len(LR_MULTIPLIERS)]
    hyper = dict(
        precision=precision, lr=lr, momentum={"none": 0.0, "heavy-ball": 0.9, "nesterov": 0.8}[flags["momentum"]],
        nesterov=flags["momentum"] == "nesterov", maximize=flags["maximize"], decay_factor=lr * 0.1,
        l2=0.01 if flags["l2"] else 0.0, cautious=flags["cautious"],
    )  # fmt: skip
    s = state
    buffers = s.first if flags["momentum"] != "none" else []
    if impl == "lowp":
        lowp.sgd(s.params, grads, buffers, s.remainders, s.streams, foreach=False, **hyper)
    else:
        extras = s.remainders if precision == "exact" else s.streams
        triton_lowp.sgd_lowp_(s.params, grads, buffers, extras, **hyper)


FAMILIES = {"adam": adam_step, "sgd": sgd_step}


def run_both(family: str, dtype: torch.dtype, precision: str, sizes: list[int], steps: int, flags: dict, seen=None):
    """(Triton's state on the test device, lowp's on the CPU) after ``steps`` steps from the same state; ``seen``
    (a list) collects lowp's parameters after every step."""
    expected = State(dtype, sizes, precision)
    actual = expected.to(TEST_DEVICE)
    step_fn = FAMILIES[family]
    for step in range(steps):
        grads = [_gradient(n, dtype, step, seed) for seed, n in enumerate(sizes)]
        step_fn("lowp", expected, grads, step, precision, flags)
        step_fn("triton", actual, [g.to(TEST_DEVICE) for g in grads], step, precision, flags)
        if seen is not None:
            seen.append([p.float() for p in expected.params])
    return actual, expected


def _flag_id(flags: dict) -> str:
    return "-".join(k if v is True else str(v) for k, v in flags.items() if v) or "plain"


ADAM_FLAGS = [
    dict(zip(("amsgrad", "maximize", "l2", "cautious"), values))
    for values in itertools.product((False, True), repeat=4)
]
SGD_FLAGS = [
    dict(momentum=momentum, maximize=maximize, l2=l2, cautious=cautious)
    for momentum in ("none", "heavy-ball", "nesterov")
    for maximize, l2, cautious in itertools.product((False, True), repeat=3)
]
KINDS = [(name, dtype, precision) for name, dtype in LOW.items() for precision in PRECISIONS]


def _rotated(combinations: list[dict]) -> list:
    """Each flag combination once, on one (dtype, precision) pair, the pairs taken in turn and shifted by one every
    four combinations, so that every pair sees every flag on and off (the interpreter is slow: no full product)."""
    return [
        pytest.param(KINDS[(i + i // 4) % 4][1], KINDS[(i + i // 4) % 4][2], flags,
                     id=f"{KINDS[(i + i // 4) % 4][0]}-{KINDS[(i + i // 4) % 4][2]}-{_flag_id(flags)}")
        for i, flags in enumerate(combinations)
    ]  # fmt: skip


# The interpreter computes with numpy, which warns where IEEE arithmetic overflows or makes a NaN (on purpose here).
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)


# ------------------------------------------------------------------------------------------------------------
# Bit for bit against lowp


@pytest.mark.parametrize(("dtype", "precision", "flags"), _rotated(ADAM_FLAGS))
def test_adam_is_lowp_bit_for_bit_for_every_flag_combination(dtype: torch.dtype, precision: str, flags: dict) -> None:
    actual, expected = run_both("adam", dtype, precision, [33, 0], 4, flags)
    assert_states_equal(actual, expected, precision, "adam")


@pytest.mark.parametrize(("dtype", "precision", "flags"), _rotated(SGD_FLAGS))
def test_sgd_is_lowp_bit_for_bit_for_every_flag_combination(dtype: torch.dtype, precision: str, flags: dict) -> None:
    actual, expected = run_both("sgd", dtype, precision, [33, 0], 4, flags)
    assert_states_equal(actual, expected, precision, "sgd")


def test_every_dtype_and_precision_sees_every_flag_on_and_off() -> None:
    for combinations in (ADAM_FLAGS, SGD_FLAGS):
        for kind in KINDS:
            seen = [p.values[2] for p in _rotated(combinations) if p.values[:2] == kind[1:]]
            for flag in combinations[0]:
                values = {flags[flag] for flags in combinations}
                assert {flags[flag] for flags in seen} == values, (kind, flag)


LONG_FLAGS = {
    "adam": dict(amsgrad=True, maximize=True, l2=False, cautious=True),
    "sgd": dict(momentum="nesterov", maximize=True, l2=False, cautious=True),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
@pytest.mark.parametrize("family", FAMILIES)
def test_twenty_scheduled_steps_of_odd_sizes_and_extreme_values(
    family: str, dtype: torch.dtype, precision: str
) -> None:
    """Tensors of 1, 7, 1000 and 4097 elements (a partial last block) and an empty one, 20 steps with the lr
    changing at every step, NaN/inf/huge/subnormal gradients and values at both ends of the dtype's range."""
    seen: list[list[torch.Tensor]] = []
    actual, expected = run_both(family, dtype, precision, [1, 7, 1000, 0, 4097], 20, LONG_FLAGS[family], seen)
    assert_states_equal(actual, expected, precision, family)
    values = torch.stack([params[2] for params in seen])  # the 1000 elements' values after each step
    overflowed = values if family == "sgd" else expected.second[2]  # Adam's steps are too small to overflow
    assert values.isnan().any() and overflowed.isinf().any(), "the NaN and overflow cases were reached"
    assert ((values != 0) & (values.abs() < torch.finfo(dtype).tiny)).any(), "subnormal values were reached"


@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
def test_the_exact_split_at_ties_subnormals_and_the_overflow_edge(dtype: torch.dtype) -> None:
    """Masters placed exactly on the float16/bfloat16 rounding ties, in the subnormal range, at the overflow edge,
    inf and NaN, and random bit patterns: a zero step (lr 0, no decay) writes back the split lowp.split_ makes."""
    generator = torch.Generator().manual_seed(3)
    halves = torch.arange(-(2**15), 2**15, dtype=torch.int32)
    if dtype == torch.float16:  # every float16 value and the midpoint above it: the ties of the round to nearest
        values = halves.to(torch.int16).view(torch.float16).float()
        above = (halves + 1).to(torch.int16).view(torch.float16).float()
        ties = (values.double() + above.double()) / 2
        edges = torch.tensor([65519.996, 65520.0, -65520.0, 2.0**-25, 3 * 2.0**-26, 2.0**-149, math.inf, math.nan])
        masters = torch.cat([ties.float(), edges])
    else:
        ties = (halves << 16) | 0x8000  # the high half plus exactly half an ulp
        masters = torch.cat([ties.view(torch.float32), torch.tensor([3.3961e38, -3.3961e38, math.inf, math.nan])])
    random = torch.randint(-(2**31), 2**31, (20_000,), generator=generator, dtype=torch.int64).to(torch.int32)
    masters = torch.cat([masters, random.view(torch.float32)])
    param = torch.zeros(len(masters), dtype=dtype)
    remainder = torch.zeros(len(masters), dtype=lowp.remainder_dtype(dtype))
    lowp.split_(masters, param, remainder)
    expected_param, expected_remainder = param.clone(), remainder.clone()
    device_param, device_remainder = param.to(TEST_DEVICE), remainder.to(TEST_DEVICE)
    triton_lowp.sgd_lowp_(
        [device_param], [torch.zeros_like(device_param)], [], [device_remainder], precision="exact", lr=0.0,
        momentum=0.0, nesterov=False, maximize=False, decay_factor=0.0, l2=0.0, cautious=False,
    )  # fmt: skip
    nan = masters.isnan()
    assert_same(device_param, expected_param, "parameter")
    assert_same(device_remainder, expected_remainder, "remainder", ignore=nan)


@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
def test_stochastic_rounding_at_zero_among_subnormals_and_at_the_edges(dtype: torch.dtype) -> None:
    """Signed zeros, subnormals, the smallest normal, the largest finite values and infinities, moved by changes
    from a fraction of the gap to the next value (the small-change rule: at zero it moves to the smallest
    subnormal of the change's sign) to many gaps (the rounded difference), SGD without momentum or decay."""
    tiny = 2.0**-133 if dtype == torch.bfloat16 else 2.0**-24  # the smallest subnormal
    big = torch.finfo(dtype).max
    values = torch.tensor([0.0, -0.0, tiny, -tiny, 3 * tiny, 2.0**-14, 2.0**-126, 1.0, big, -big, math.inf, -math.inf])
    changes = torch.tensor([tiny, -tiny, 2 * tiny, -5 * tiny, 300 * tiny, 0.0, 2.0**-10, -big])
    generator = torch.Generator().manual_seed(11)
    param = values[torch.randint(len(values), (3000,), generator=generator)].to(dtype)
    expected, actual = param.clone(), param.to(TEST_DEVICE)
    streams = [torch.tensor([lowp.stream_key(5, 0), 0]) for _ in range(2)]
    streams[1] = streams[1].to(TEST_DEVICE)
    hyper = dict(precision="stochastic", momentum=0.0, nesterov=False, maximize=False, decay_factor=0.0, l2=0.0)
    moved_off_zero = 0
    for lr in (0.37, 0.9, 3.0, 0.5):
        grad = changes[torch.randint(len(changes), (3000,), generator=generator)].to(dtype)
        zeros = expected == 0
        lowp.sgd([expected], [grad], [], [], [streams[0]], lr=lr, cautious=False, foreach=False, **hyper)
        triton_lowp.sgd_lowp_([actual], [grad.to(TEST_DEVICE)], [], [streams[1]], lr=lr, cautious=False, **hyper)
        assert_same(actual, expected, f"parameter after lr {lr}")
        moved_off_zero += int((zeros & (expected != 0)).sum())
    assert torch.equal(streams[1].cpu(), streams[0])
    assert moved_off_zero > 100, "the small-change rule moved zeros to a subnormal"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_results_do_not_depend_on_the_block_size(precision: str, monkeypatch) -> None:
    runs = []
    for block in (triton_lowp.BLOCK, 128, 4096):
        monkeypatch.setattr(triton_lowp, "BLOCK", block)
        runs.append(run_both("adam", torch.bfloat16, precision, [4097, 300], 3, ADAM_FLAGS[0])[0])
    for run in runs[1:]:
        assert_states_equal(run, runs[0], precision, "another block size")


def test_random_bits_past_two_to_the_32_elements() -> None:
    """Element i's bits are mix32(lo32(i) ^ mix32(S + hi32(i))) for indices up to 2^40 (no such tensor is
    allocated: the kernels' hash is run on the indices themselves)."""
    starts = [0, 2**31 - 2, 2**32 - 3, 2**33 + 5, 2**40 - 1]
    index = torch.tensor([s + k for s in starts for k in range(4)], dtype=torch.int64)
    for key in (0, 12345, 2**31 + 7, 2**32 - 1):
        out = torch.zeros_like(index)
        device_index, device_out = index.to(TEST_DEVICE), out.to(TEST_DEVICE)
        step_key = key - 2**32 if key >= 2**31 else key
        random_bits_kernel[(1,)](device_index, device_out, len(index), step_key, BLOCK=32, **triton_lowp.LAUNCH_OPTIONS)
        expected = [lowp.mix32((i & 0xFFFFFFFF) ^ lowp.mix32((key + (i >> 32)) & 0xFFFFFFFF)) for i in index.tolist()]
        assert device_out.cpu().tolist() == expected, key
    # and the same formula as lowp.random_bits for a stream's key:
    stream = torch.tensor([lowp.stream_key(9, 1), 41])
    bits = lowp.random_bits(8, stream).tolist()
    key = lowp.mix32(int(stream[0]) ^ lowp.mix32(int(stream[1])))
    assert bits == [lowp.mix32(i ^ lowp.mix32(key)) for i in range(8)]


# ------------------------------------------------------------------------------------------------------------
# The optimizers' dispatch, availability, refusals


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("family", ["adam", "sgd"])
def test_the_optimizers_run_the_triton_kernels_and_get_the_same_bits(family: str, precision: str, monkeypatch) -> None:
    """AdamW/SGDW's one-pass path hands bf16 and fp16 tensors to triton_lowp with the signature it expects (on the
    CPU, in the native kernels' place), and the result is the foreach path's (lowp's torch ops) bit for bit."""
    calls = []
    name = f"{family}_lowp_"
    kernel = getattr(triton_lowp, name)

    def spy(*args, **kwargs):
        calls.append(args[0][0].dtype)
        return kernel(*args, **kwargs)

    if INTERPRET:
        monkeypatch.setattr(native, name, spy)
        monkeypatch.setattr(native, "supports_lowp_dtype", lambda dtype: True)
    else:
        monkeypatch.setattr(triton_lowp, name, spy)

    def run(device: torch.device, **path) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(6)
        values = [
            (torch.randn(n, generator=generator), dtype)
            for n, dtype in ((301, torch.bfloat16), (77, torch.float16), (5, torch.bfloat16))
        ]
        params = [torch.nn.Parameter(v.to(dtype).to(device)) for v, dtype in values]
        if family == "adam":
            optimizer = decoupled.AdamW(
                params, lr=3e-3, weight_decay=0.1, amsgrad=True, cautious=True, precision=precision, seed=3, **path
            )
        else:
            optimizer = decoupled.SGDW(
                params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, precision=precision, seed=3, **path
            )
        for _ in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator).to(p.dtype).to(device)
            optimizer.step()
        masters = decoupled.master_weights(optimizer)
        state = [t for p in params for t in optimizer.state[p].values() if isinstance(t, torch.Tensor)]
        return [p.detach() for p in params] + [masters[p] for p in params] + state

    actual = run(TEST_DEVICE, fused=True)
    assert calls and set(calls) == {torch.bfloat16, torch.float16}, "the one-pass path ran the Triton kernels"
    calls.clear()
    expected = run(torch.device("cpu"), foreach=True)
    assert not calls
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert_same(a, e, f"tensor {index}")


def test_available_says_whether_the_kernels_can_run(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_lowp.available()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert triton_lowp.available() == torch.cuda.is_available()

    def broken(name: str):
        raise ValueError("a broken install")

    monkeypatch.setattr(importlib.util, "find_spec", broken)
    assert triton_lowp.available() is False
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_lowp.available() is False, "no Triton installed: never available"


def test_bad_precision_and_dtype_are_named() -> None:
    p = torch.zeros(3, dtype=torch.bfloat16, device=TEST_DEVICE)
    hyper = dict(lr=0.1, momentum=0.0, nesterov=False, maximize=False, decay_factor=0.0, l2=0.0, cautious=False)
    with pytest.raises(ValueError, match="precision 'exact' or 'stochastic', got 'nearest'"):
        triton_lowp.sgd_lowp_([p], [p], [], [p], precision="nearest", **hyper)
    q = torch.zeros(3, device=TEST_DEVICE)
    with pytest.raises(ValueError, match="bfloat16 or float16 parameters, got torch.float32"):
        triton_lowp.sgd_lowp_([q], [q], [], [q], precision="exact", **hyper)


# ------------------------------------------------------------------------------------------------------------
# The compiled kernels (no GPU needed): no fused multiply-add, IEEE division and square root

_COMPILE = r"""
import json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from decoupled.kernels import _triton_lowp_jit as jit, triton_lowp

def signature(kernel, pointers, constants):
    names = kernel.arg_names
    out = {}
    for name in names:
        if name in constants:
            out[name] = "constexpr"
        elif name in pointers:
            out[name] = pointers[name]
        elif name in ("numel", "step_key"):
            out[name] = "i32"
        else:
            out[name] = "fp32"
    return out

found = {}
for family, bf16, exact in [("adam", True, True), ("adam", False, False), ("sgd", False, True), ("sgd", True, False)]:
    kernel = jit.adam_kernel if family == "adam" else jit.sgd_kernel
    flags = (dict(AMSGRAD=True, MAXIMIZE=True, HAS_L2=True, CAUTIOUS=True) if family == "adam"
             else dict(HAS_MOMENTUM=True, NESTEROV=True, HAS_L2=True, CAUTIOUS=True))
    constants = dict(BF16=bf16, EXACT=exact, BLOCK=triton_lowp.BLOCK, **flags)
    pointers = {name: "*i16" for name in ("p_ptr", "g_ptr")}
    pointers.update({name: "*fp32" for name in ("m_ptr", "v_ptr", "vmax_ptr")})
    pointers["x_ptr"] = "*fp32" if exact and not bf16 else "*i16"
    options = dict(triton_lowp.LAUNCH_OPTIONS)
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature(kernel, pointers, constants),
                                        constexprs=constants), target=GPUTarget("cuda", 90, 32), options=options)
    ptx = compiled.asm["ptx"]
    found[f"{family}-{'bf16' if bf16 else 'fp16'}-{'exact' if exact else 'stochastic'}"] = sorted(
        set(re.findall(r"\b(?:fma|mad|div|sqrt|mul|add|sub|max|cvt|rcp|rsqrt)\.[A-Za-z0-9.]*f(?:16|32)\b", ptx)))
print(json.dumps(found))
"""


def test_the_compiled_kernels_round_every_operation_once() -> None:
    """Compiled for sm_90 without a GPU, with the options every launch passes: the PTX has mul/add/sub with
    explicit round-to-nearest (which ptxas may not contract), no fma or mad, division and square root rn (IEEE),
    and no flush of subnormals to zero."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(found) == 4
    for name, instructions in found.items():
        assert not [i for i in instructions if i.startswith(("fma", "mad"))], (name, instructions)
        assert not [i for i in instructions if ".ftz" in i or "approx" in i or ".full" in i], (name, instructions)
        assert {"mul.rn.f32", "add.rn.f32"} <= set(instructions), (name, instructions)
        if name.startswith("adam"):
            assert {"div.rn.f32", "sqrt.rn.f32", "max.NaN.f32"} <= set(instructions), (name, instructions)
        if "stochastic" in name:
            assert "div.rn.f32" in instructions, (name, instructions)

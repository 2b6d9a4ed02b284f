"""Every kernel path against the for-loop path, parameters AND state, over 40+ scheduled steps.

Paths: the default (auto) choice, foreach, fused Adam (torch's fused kernel, mapped), fused SGD on the native C
kernel, and fused SGD on torch's fused SGD (the mapping CUDA tensors take; forced here by hiding the native
kernel). Each run mixes what breaks kernels: a parameter whose grad stays None, one whose grad appears late,
an empty tensor, a non-contiguous (transposed) tensor, a contiguous view at an odd offset, a large tensor
of odd length, a complex parameter, and badly scaled gradients; the learning rate
follows a warm-restart schedule so that the decay conventions differ. Also: the native kernel gives
bit-identical results at 1, 2 and 3 threads, runs on torch's own OpenMP runtime and honours
torch.set_num_threads, and never runs on tensors it cannot address safely.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import decoupled
from decoupled.kernels import native
from device import TEST_DEVICE
from reference import ReferenceSGD

STEPS = 42
DECAYS = decoupled.DECAY_CONVENTIONS
DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}
# (rtol, atol) against the for-loop path: round-off of a different order of operations.
TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 1e-6)}
# bfloat16: the for-loop path in bf16 is no exact reference (it rounds every intermediate tensor op to 8 bits:
# a decay factor of 1 - 1e-4 rounds away, 0.999 * v rounds to v), so every bf16 path, the for-loop included,
# is compared with the for-loop path run in float32 from the same bf16 values and gradients. The error of a
# tensor is max |x - reference| / max |reference|; a path passes when its error is at most
# 1.5 x the bf16 for-loop path's error + 2^-4 (measured worst: 0.08 vs 0.023, torch's own foreach Adam).
BF16_FACTOR, BF16_SLACK = 1.5, 2.0**-4

native_only = pytest.mark.skipif(not native.available(), reason=f"native kernel: {native.unavailable_reason()}")


# name -> (optimizer kwargs, context); "forloop" is the reference every other path is compared with.
ADAM_PATHS: dict[str, tuple[dict[str, Any], Callable[[], Any]]] = {
    "default": ({}, contextlib.nullcontext),
    "foreach": ({"foreach": True}, contextlib.nullcontext),
    "fused": ({"fused": True}, contextlib.nullcontext),
    "fused-native": ({"fused": True}, native.forced),  # the native Adam kernel for every dtype
    "fused-torch": ({"fused": True}, native.bypassed),  # torch's fused kernel (+ a mask pass when cautious): CUDA's
}
SGD_PATHS: dict[str, tuple[dict[str, Any], Callable[[], Any]]] = {
    "default": ({}, contextlib.nullcontext),
    "foreach": ({"foreach": True}, contextlib.nullcontext),
    "fused-native": ({"fused": True}, contextlib.nullcontext),
    "fused-torch": ({"fused": True}, native.bypassed),  # the CUDA mapping
}
FORLOOP = {"foreach": False, "fused": False}
# The bf16/fp16 runs here are of the kernels that step in the parameters' dtype (precision="nearest", torch's
# behaviour); the default precision="exact" is bit-identical on every path (test_precision).
_NEAREST = {torch.bfloat16: {"precision": "nearest"}, torch.float16: {"precision": "nearest"}}

ADAM_OPTIONS = {
    "plain": {"lr": 1e-2, "weight_decay": 1e-2},
    "amsgrad-maximize": {"lr": 1e-2, "weight_decay": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "amsgrad": True, "maximize": True},
    "cautious": {"lr": 1e-2, "weight_decay": 1e-2, "cautious": True},
    "cautious-amsgrad-maximize": {"lr": 1e-2, "weight_decay": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "amsgrad": True, "maximize": True, "cautious": True},
}  # fmt: skip
SGD_OPTIONS = {
    "momentum": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2},
    "nesterov-maximize": {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True, "weight_decay": 1e-2},
    "no-momentum": {"lr": 0.05, "momentum": 0.0, "weight_decay": 1e-2},
    "cautious-momentum": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2, "cautious": True},
    "cautious-nesterov-maximize": {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True, "weight_decay": 1e-2, "cautious": True},
    "cautious-no-momentum": {"lr": 0.05, "momentum": 0.0, "weight_decay": 1e-2, "cautious": True},
}  # fmt: skip
# Cautious decay is run here with one convention (test_parity runs it with all four against the reference,
# on every path), and "corrected" decay only cautiously: it changes nothing in a kernel but the factor.
CAUTIOUS_DECAYS = ("corrected",)


def _skip_untested(family: str, path: str, options: dict[str, Any], decay: str, dtype: torch.dtype) -> None:
    cautious = options.get("cautious", False)
    if cautious and decay not in CAUTIOUS_DECAYS:
        pytest.skip(f"cautious decay is run with {CAUTIOUS_DECAYS} here ('l2' is refused: test_cautious)")
    if not cautious and decay == "corrected":
        pytest.skip("corrected decay is run with cautious options here")
    if family == "adam":  # AdamW(fused=True) takes the native kernel when cautious or bf16, else torch's
        native_by_default = cautious or dtype == torch.bfloat16
        if path == ("fused-native" if native_by_default else "fused-torch"):
            pytest.skip("the same run as 'fused'")
    if path == "fused-native" and not native.available():
        pytest.skip(native.unavailable_reason())


def _lr_multiplier(step: int) -> float:
    """Cosine warm restarts (period 15) between 0.05 and 1: the schedule eta_t."""
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step % 15) / 15))


def _make_params(dtype: torch.dtype) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=TEST_DEVICE, dtype=dtype)

    params = [
        randn(7, 13),  # plain
        randn(40_001),  # large, odd length (the bf16 kernel works on pairs)
        randn(0, 3),  # empty
        randn(6, 5).t(),  # non-contiguous (a transposed weight)
        randn(1001)[1:],  # contiguous view at an odd element offset (bf16: not 4-byte aligned)
        randn(4, 4),  # grad stays None: must not move, must get no state
        randn(9),  # grad None for the first 10 steps, then set (frozen, then unfrozen)
    ]
    if dtype != torch.bfloat16:  # no complex bfloat16
        params.append(torch.complex(randn(3, 4), randn(3, 4)))
    return [p.requires_grad_() for p in params]


@functools.lru_cache(maxsize=None)
def _gradients(dtype: torch.dtype, biased: bool = False) -> tuple[tuple[torch.Tensor | None, ...], ...]:
    """The gradients of every step (made once per dtype; the kernels never write to gradients).

    ``biased`` (for cautious runs): each element's gradient has a mean of 3 scales with a fixed random sign, so
    that no m_t passes within round-off of 0, where the masks of two exact paths could differ (a decay of
    factor * theta on one path and not on the other). Parameters still cross 0, and the masks of the two
    signs of theta are both exercised.
    """
    generator = torch.Generator().manual_seed(99)
    params = _make_params(dtype)  # for the shapes (its own generator: the gradients' draws are unaffected)
    steps = []
    for step in range(STEPS):
        grads: list[torch.Tensor | None] = []
        for index, param in enumerate(params):
            if index == 5 or (index == 6 and step < 10):
                grads.append(None)
                continue
            scale = 10.0 ** ((index % 4) - 2)  # badly scaled: 1e-2 .. 10
            shape = param.shape + ((2,) if param.is_complex() else ())
            real = torch.randn(shape, generator=generator, dtype=torch.float64)
            if biased:
                signs = torch.Generator().manual_seed(98 + index)  # the same pattern at every step
                real += 3 * torch.randint(0, 2, shape, generator=signs, dtype=torch.float64).mul_(2).sub_(1)
            grad = (scale * (torch.view_as_complex(real) if param.is_complex() else real)).to(param.device, param.dtype)
            if index == 3:  # the transposed parameter gets a transposed (non-contiguous) gradient too
                grad = grad.t().contiguous().t()
            grads.append(grad)
        steps.append(tuple(grads))
    return tuple(steps)


@functools.lru_cache(maxsize=None)
def _reference(cls: type, dtype: torch.dtype, options_name: str, decay: str) -> Any:
    """The for-loop run every other path is compared with (cached: each is compared with several paths)."""
    options = (ADAM_OPTIONS if cls is decoupled.AdamW else SGD_OPTIONS)[options_name]
    if dtype == torch.bfloat16:  # (the upcast reference, the bf16 for-loop path's own errors)
        upcast = _run(cls, dtype, options, decay, FORLOOP, compute_dtype=torch.float32)
        return upcast, _relative_errors(_run(cls, dtype, options, decay, FORLOOP), upcast)
    return _run(cls, dtype, options, decay, FORLOOP)


def _tensors(run: tuple[list, list]) -> dict[str, torch.Tensor]:
    """Every parameter and state tensor of a run, by name."""
    params, states = run
    named = {f"param {i}": p for i, p in enumerate(params)}
    named.update({f"state {key!r} of param {i}": t for i, state in enumerate(states) for key, t in state.items()})
    return named


def _relative_errors(run: tuple[list, list], reference: tuple[list, list]) -> dict[str, float]:
    expected = _tensors(reference)
    errors = {}
    for name, tensor in _tensors(run).items():
        ref = expected[name].double()
        scale = ref.abs().max().item() if ref.numel() else 0.0
        errors[name] = (tensor.double() - ref).abs().max().item() / scale if scale else 0.0
    return errors


def _run(cls: type, dtype: torch.dtype, options: dict[str, Any], decay: str, path: dict[str, Any],
         context: Callable[[], Any] = contextlib.nullcontext, compute_dtype: torch.dtype | None = None,
         ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:  # fmt: skip
    """42 scheduled steps on the problem in ``dtype`` (run in ``compute_dtype`` when given: the upcast reference)."""
    params = _make_params(dtype)
    if compute_dtype is not None:
        params = [p.detach().to(compute_dtype).requires_grad_() for p in params]
    optimizer = cls(params, decay=decay, **options, **path, **_NEAREST.get(dtype, {}))
    base_lr = optimizer.param_groups[0]["lr"]
    with context():
        for step, grads in enumerate(_gradients(dtype, bool(options.get("cautious")))):
            optimizer.param_groups[0]["lr"] = base_lr * _lr_multiplier(step)
            for param, grad in zip(params, grads):
                param.grad = None if grad is None else grad.to(param.dtype)
            optimizer.step()
    return params, [dict(optimizer.state[p]) for p in params]


def _assert_close(actual: tuple[list, list], expected: Any, dtype: torch.dtype) -> None:
    assert actual[1][5] == {}, "a parameter without grad must get no state"
    if dtype == torch.bfloat16:
        upcast, forloop_errors = expected
        assert _tensors(actual).keys() == _tensors(upcast).keys()
        for name, error in _relative_errors(actual, upcast).items():
            bound = BF16_FACTOR * forloop_errors[name] + BF16_SLACK
            assert error <= bound, (
                f"{name}: relative error {error:.4f} > {bound:.4f} (bf16 for-loop: {forloop_errors[name]:.4f})"
            )
        return
    rtol, atol = TOLERANCES[dtype]
    tensors, reference = _tensors(actual), _tensors(expected)
    assert tensors.keys() == reference.keys()
    for name, ref in reference.items():
        torch.testing.assert_close(tensors[name], ref, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("options", ADAM_OPTIONS)
@pytest.mark.parametrize("path", ADAM_PATHS)
def test_adamw_path_matches_forloop(path: str, options: str, decay: str, dtype: torch.dtype) -> None:
    _skip_untested("adam", path, ADAM_OPTIONS[options], decay, dtype)
    expected = _reference(decoupled.AdamW, dtype, options, decay)
    kwargs, context = ADAM_PATHS[path]
    _assert_close(_run(decoupled.AdamW, dtype, ADAM_OPTIONS[options], decay, kwargs, context), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("options", SGD_OPTIONS)
@pytest.mark.parametrize("path", SGD_PATHS)
def test_sgdw_path_matches_forloop(path: str, options: str, decay: str, dtype: torch.dtype) -> None:
    _skip_untested("sgd", path, SGD_OPTIONS[options], decay, dtype)
    expected = _reference(decoupled.SGDW, dtype, options, decay)
    kwargs, context = SGD_PATHS[path]
    _assert_close(_run(decoupled.SGDW, dtype, SGD_OPTIONS[options], decay, kwargs, context), expected, dtype)


@pytest.mark.parametrize(
    "cls, options", [(decoupled.AdamW, ADAM_OPTIONS["plain"]), (decoupled.SGDW, SGD_OPTIONS["momentum"])]
)
def test_mixed_dtype_group_matches_forloop(cls: type, options: dict) -> None:
    """A group mixing dtypes goes through the dispatcher's grouping (not its one-dtype fast path)."""

    def run(path: dict[str, Any]) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(5)
        params = [
            torch.randn(50, generator=generator).to(dtype).requires_grad_()
            for dtype in (torch.float32, torch.float64, torch.float32)
        ]
        optimizer = cls(params, **options, **path)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
            optimizer.step()
        return params

    for actual, expected in zip(run({}), run(FORLOOP)):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# The native kernel: threads, OpenMP runtime, safety


def _native_run(dtype: torch.dtype, options: dict[str, Any], threads: int) -> list[torch.Tensor]:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(7)
        # 200k elements in tensors of odd sizes, above the kernel's parallel threshold: the threads' shares
        # begin mid-tensor, at odd indices (2 threads: element 93 of the second tensor), where bf16 pairs split.
        params = [torch.randn(n, generator=generator).to(dtype).requires_grad_() for n in (100_003, 65_537, 31, 34_567)]
        optimizer = decoupled.SGDW(params, fused=True, **options, **_NEAREST.get(dtype, {}))
        base_lr = optimizer.param_groups[0]["lr"]
        for step in range(STEPS):
            optimizer.param_groups[0]["lr"] = base_lr * _lr_multiplier(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator).to(dtype)
            optimizer.step()
        return [*params, *(optimizer.state[p]["momentum_buffer"] for p in params if optimizer.state[p])]
    finally:
        torch.set_num_threads(saved)


@native_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("options", SGD_OPTIONS.values(), ids=SGD_OPTIONS.keys())
def test_native_kernel_identical_at_any_thread_count(options: dict, dtype: torch.dtype) -> None:
    if not native.supports_dtype(dtype):
        pytest.skip(f"native kernel built without {dtype}")
    one = _native_run(dtype, options, 1)
    for threads in (2, 3):
        for a, b in zip(one, _native_run(dtype, options, threads)):
            assert torch.equal(a, b)


@native_only
def test_native_kernel_honours_torch_threads() -> None:
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert native.team_size(torch.get_num_threads()) == threads
    finally:
        torch.set_num_threads(saved)


@native_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_native_kernel_shares_torchs_openmp_runtime() -> None:
    # In a fresh process: other libraries of the test session (scikit-learn's wheels, say) bring their own.
    script = (
        "import pathlib, torch\n"
        "from decoupled.kernels import native\n"
        "native.team_size(2)\n"
        "maps = pathlib.Path('/proc/self/maps').read_text().splitlines()\n"
        "print(sorted({l.split()[-1] for l in maps if any(n in l for n in ('libgomp', 'libiomp', 'libomp'))}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    runtimes = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert len(runtimes) == 1, f"more than one OpenMP runtime mapped: {runtimes}"


@pytest.mark.parametrize(
    "cls, options, key",
    [
        (decoupled.AdamW, {}, "exp_avg"),
        (decoupled.AdamW, {}, "grad"),
        (decoupled.SGDW, {"lr": 0.1}, "momentum_buffer"),
        (decoupled.SGDW, {"lr": 0.1}, "grad"),
    ],
    ids=["AdamW-exp_avg", "AdamW-grad", "SGDW-momentum_buffer", "SGDW-grad"],
)
def test_fused_paths_refuse_mismatched_sizes(cls: type, options: dict, key: str) -> None:
    """A state tensor of the wrong size (e.g. from a checkpoint of another model) must raise, not reach a
    kernel that writes through it as if it had the parameter's size (torch's fused CPU SGD and AdamW do
    not check: a 5-element momentum buffer for a 10-element parameter corrupts the heap)."""
    param = torch.zeros(10, requires_grad=True)
    param.grad = torch.ones(10)
    optimizer = cls([param], fused=True, **options)
    optimizer.step()
    if key == "grad":
        param.grad = torch.ones(10)
        param.grad.resize_(5)  # the grad setter checks sizes; an in-place resize slips through
    else:
        optimizer.state[param][key] = torch.zeros(5)
    with pytest.raises(RuntimeError, match="does not match its parameter"):
        optimizer.step()


@native_only
def test_native_path_splits_a_group_by_layout() -> None:
    """One non-contiguous parameter sends only itself to torch's kernel (the rest stay on the native one)."""
    from decoupled.kernels import fused

    params = [torch.randn(8, 4), torch.randn(4, 8).t(), torch.randn(3)]
    grads = [torch.randn(p.shape) for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    assert not fused.native_eligible(params, grads, buffers)
    assert fused.native_eligible(params[::2], grads[::2], buffers[::2])


BF16_DECAY_MAKERS = {
    "AdamW-foreach": lambda p: decoupled.AdamW(
        p, lr=1e-3, weight_decay=0.01, decay="constant", foreach=True, precision="nearest"
    ),
    "AdamW-fused-lr-0": lambda p: decoupled.AdamW(
        p, lr=1e-3, weight_decay=0.01, decay="constant", fused=True, precision="nearest"
    ),
    "SGDW-foreach": lambda p: decoupled.SGDW(
        p, lr=0.1, weight_decay=0.01, decay="constant", foreach=True, precision="nearest"
    ),
    "SGDW-fused-torch": lambda p: decoupled.SGDW(
        p, lr=0.1, weight_decay=0.01, decay="constant", fused=True, precision="nearest"
    ),
    "decouple(Adam)": lambda p: decoupled.decouple(torch.optim.Adam)(
        p, lr=1e-3, weight_decay=0.01, decay="constant", precision="nearest"
    ),
}


@pytest.mark.parametrize("name", BF16_DECAY_MAKERS)
def test_bf16_decay_factor_is_applied_in_float32(name: str) -> None:
    """A zero step isolates the decay: theta <- round_bf16(0.99 * theta), not theta * round_bf16(0.99)."""
    theta = torch.randn(1000, generator=torch.Generator().manual_seed(0)).bfloat16()
    param = torch.nn.Parameter(theta.clone())
    optimizer = BF16_DECAY_MAKERS[name]([param])
    for group in optimizer.param_groups:
        group["lr"] = 0.0  # no step, only the ("constant") decay
    param.grad = torch.zeros_like(param)
    with native.bypassed() if name == "SGDW-fused-torch" else contextlib.nullcontext():
        optimizer.step()
    assert torch.equal(param.detach(), (theta.float() * 0.99).bfloat16())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sgdw_fused_without_native_kernel_moves_reduced_precision_params(dtype: torch.dtype, momentum: float) -> None:
    """torch 2.13's fused CPU SGD never writes contiguous bf16/fp16 parameters (its vectorized loop drops the
    update): SGDW(fused=True) without the native kernel must not hand them to it. One contiguous tensor, so
    that nothing else (a non-contiguous neighbour) sends the group to another path."""
    generator = torch.Generator().manual_seed(3)
    theta = torch.randn(1000, generator=generator)
    grads = [torch.randn(1000, generator=generator) for _ in range(3)]
    param, expected = torch.nn.Parameter(theta.to(dtype)), theta.to(dtype).double()
    optimizer = decoupled.SGDW([param], lr=0.1, momentum=momentum, weight_decay=0.01, fused=True)
    reference = ReferenceSGD(momentum=momentum)
    with native.bypassed():
        for grad in grads:
            param.grad = grad.to(dtype)
            optimizer.step()
            expected = reference.step(0, expected, param.grad, lr=0.1, alpha=0.1, weight_decay=0.01, decay="decoupled")
    # Within a few bf16 roundings per step (the foreach path rounds after every op); the torch kernel's
    # parameters stay where they were, 0.1 to 1 away.
    torch.testing.assert_close(param.detach().double(), expected, rtol=2**-4, atol=2**-6)


@native_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_native_kernel_keeps_nan_and_inf_where_the_forloop_path_has_them(dtype: torch.dtype) -> None:
    values = [1.0, float("nan"), float("inf"), -float("inf"), 2.0, 3.0, 0.0, -1.0, 5.0]
    grads = [float("nan"), 1.0, float("inf"), 1.0, -float("inf"), float("nan"), 1.0, 1.0, 0.5]
    runs = []
    for path in ({}, FORLOOP):
        param = torch.nn.Parameter(torch.tensor(values).to(dtype))
        optimizer = decoupled.SGDW([param], lr=0.1, momentum=0.9, weight_decay=0.01, **path)
        for _ in range(2):
            param.grad = torch.tensor(grads).to(dtype)
            optimizer.step()
        runs.append((param.detach(), optimizer.state[param]["momentum_buffer"]))
    (ours, ours_buf), (theirs, theirs_buf) = runs
    assert torch.equal(ours.isnan(), theirs.isnan()) and torch.equal(ours.isinf(), theirs.isinf())
    assert torch.equal(ours_buf.isnan(), theirs_buf.isnan()) and torch.equal(ours_buf.isinf(), theirs_buf.isinf())
    assert torch.equal(ours[ours.isinf()], theirs[theirs.isinf()])  # the same infinities, signs included

"""Memory layouts the one-pass kernels cannot walk as raw memory: every path gives the for-loop's answer or a
clear error.

torch's fused Adam(W) and SGD kernels and this package's native SGD kernel walk each tensor as ``numel``
elements from its data pointer, so they are only right when a parameter, its gradient and its state tensors
are dense, non-overlapping and laid out alike. Each scenario here breaks that in one way a user meets:
resuming a channels_last model from a checkpoint saved in the default layout, a parameter that is a column
slice of a larger tensor, a gradient set by hand with other strides, an expanded (stride-0) gradient, and an
expanded (overlapping) parameter. Every path must match the for-loop path, parameters and state, and leave
memory outside the parameters alone.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from typing import Any, Callable

import pytest
import torch

import decoupled
from decoupled.kernels import native

STEPS = 6
ADAM_PATHS: dict[str, tuple[dict[str, Any], Callable[[], Any]]] = {
    "default": ({}, contextlib.nullcontext),
    "foreach": ({"foreach": True}, contextlib.nullcontext),
    "fused": ({"fused": True}, contextlib.nullcontext),
}
SGD_PATHS: dict[str, tuple[dict[str, Any], Callable[[], Any]]] = {
    "default": ({}, contextlib.nullcontext),
    "foreach": ({"foreach": True}, contextlib.nullcontext),
    "fused-native": ({"fused": True}, contextlib.nullcontext),
    "fused-torch": ({"fused": True}, native.bypassed),  # the CUDA mapping (torch's fused SGD)
}
FORLOOP = {"foreach": False, "fused": False}
OPTIMIZERS = {
    "AdamW": (lambda params, **kw: decoupled.AdamW(params, lr=1e-2, weight_decay=1e-2, **kw), ADAM_PATHS),
    "SGDW": (lambda params, **kw: decoupled.SGDW(params, lr=0.05, momentum=0.9, weight_decay=1e-2, **kw), SGD_PATHS),
}
CASES = [(name, path) for name, (_, paths) in OPTIMIZERS.items() for path in paths]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def _grad_like(param: torch.Tensor, step: int, index: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * step + index)
    return torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)


def _steps(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], first: int, last: int,
           make_grad: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:  # fmt: skip
    base_lr = optimizer.param_groups[0]["base_lr"]
    for step in range(first, last):
        optimizer.param_groups[0]["lr"] = base_lr * (0.2 + 0.8 * math.cos(step / 3) ** 2)  # a schedule running
        for index, param in enumerate(params):
            param.grad = make_grad(param, step, index)
        optimizer.step()


def _snapshot(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    named = {f"param {i}": p.detach().clone() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        for key, value in optimizer.state[p].items():
            named[f"state {key!r} of param {i}"] = value.clone()
    return named


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    assert actual.keys() == expected.keys()
    rtol, atol = (1e-10, 1e-12) if dtype == torch.float64 else (2e-5, 1e-6)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


# Scenarios: each runs STEPS steps of an optimizer built by make(params) and returns (snapshot, extra checks).


def _channels_last_resume(make: Callable[..., torch.optim.Optimizer], dtype: torch.dtype, resumed: bool) -> dict:
    """Train a conv model in the default layout, save, then continue in channels_last from the checkpoint
    (resumed=True) or continue the same optimizer without any change of layout (resumed=False)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Tanh(), torch.nn.Conv2d(8, 4, 3)).to(dtype)
    inputs = torch.randn(4, 3, 9, 9, generator=_generator(), dtype=dtype)

    def train(optimizer: torch.optim.Optimizer, first: int, last: int, channels_last: bool) -> None:
        base_lr = optimizer.param_groups[0]["base_lr"]
        x = inputs.to(memory_format=torch.channels_last) if channels_last else inputs
        for step in range(first, last):
            optimizer.param_groups[0]["lr"] = base_lr * (0.2 + 0.8 * math.cos(step / 3) ** 2)
            optimizer.zero_grad()
            model(x * (1 + step / 10)).square().mean().backward()
            optimizer.step()

    optimizer = make(model.parameters())
    train(optimizer, 0, 3, channels_last=False)
    if resumed:
        checkpoint = optimizer.state_dict()
        model.to(memory_format=torch.channels_last)
        assert not model[0].weight.is_contiguous()  # the weight really is channels_last now
        optimizer = make(model.parameters())
        optimizer.load_state_dict(checkpoint)
    train(optimizer, 3, STEPS, channels_last=resumed)
    return _snapshot(list(model.parameters()), optimizer)


def _column_slice(make: Callable[..., torch.optim.Optimizer], dtype: torch.dtype) -> dict:
    """A parameter that is a column slice of a larger tensor (non-contiguous, not dense); the other columns of
    the base tensor must never be written."""
    base = torch.randn(6, 10, generator=_generator(), dtype=dtype)
    untouched = base[:, 5:].clone()
    param = torch.nn.Parameter(base[:, :5])  # a Parameter aliasing the slice, strides (10, 1)
    assert not param.is_contiguous() and param.data_ptr() == base.data_ptr()
    plain = torch.nn.Parameter(torch.randn(12, generator=_generator(), dtype=dtype))
    params = [param, plain]
    optimizer = make(params)
    _steps(optimizer, params, 0, STEPS, _grad_like)
    torch.testing.assert_close(base[:, 5:], untouched, rtol=0, atol=0, msg="the step wrote outside the parameter")
    return _snapshot(params, optimizer)


def _strided_grad(make: Callable[..., torch.optim.Optimizer], dtype: torch.dtype) -> dict:
    """A gradient with strides unlike its parameter's: the transpose of a contiguous (7, 5) tensor."""
    params = [torch.nn.Parameter(torch.randn(5, 7, generator=_generator(), dtype=dtype))]
    optimizer = make(params)

    def grad(param: torch.Tensor, step: int, index: int) -> torch.Tensor:
        g = _grad_like(param.t(), step, index).t()
        assert g.stride() != param.stride()
        return g

    _steps(optimizer, params, 0, STEPS, grad)
    return _snapshot(params, optimizer)


def _expanded_grad(make: Callable[..., torch.optim.Optimizer], dtype: torch.dtype) -> dict:
    """A stride-0 gradient (a row expanded over 6 rows): a kernel walking raw memory reads past its buffer."""
    params = [torch.nn.Parameter(torch.randn(6, 9, generator=_generator(), dtype=dtype))]
    optimizer = make(params)
    _steps(optimizer, params, 0, STEPS, lambda p, s, i: _grad_like(p[:1], s, i).expand(6, 9))
    return _snapshot(params, optimizer)


SCENARIOS = {
    "column-slice-param": _column_slice,
    "strided-grad": _strided_grad,
    "expanded-grad": _expanded_grad,
}


def _maker(name: str, path: str) -> tuple[Callable[..., torch.optim.Optimizer], Callable[[], Any]]:
    make, paths = OPTIMIZERS[name]
    kwargs, context = paths[path]
    if path == "fused-native" and not native.available():
        pytest.skip(native.unavailable_reason())
    return (lambda params: make(params, **kwargs)), context


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize(("name", "path"), CASES)
def test_odd_layouts_match_the_forloop(name: str, path: str, scenario: str, dtype: torch.dtype) -> None:
    make, context = _maker(name, path)
    expected = SCENARIOS[scenario](lambda params: OPTIMIZERS[name][0](params, **FORLOOP), dtype)
    with context():
        actual = SCENARIOS[scenario](make, dtype)
    _assert_same(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize(("name", "path"), CASES)
def test_channels_last_resume_matches_the_forloop(name: str, path: str, dtype: torch.dtype) -> None:
    make, context = _maker(name, path)
    expected = _channels_last_resume(lambda params: OPTIMIZERS[name][0](params, **FORLOOP), dtype, resumed=True)
    with context():
        actual = _channels_last_resume(make, dtype, resumed=True)
    _assert_same(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_channels_last_resume_continues_the_uninterrupted_run(name: str, dtype: torch.dtype) -> None:
    """The default path, resumed in channels_last, against the uninterrupted run in the default layout. The
    channels_last convolutions sum in another order, so the gradients (not the optimizer) differ by round-off:
    the tolerance is that of the model, far below the 5e-2 a layout-blind kernel is off by."""
    expected = _channels_last_resume(lambda params: OPTIMIZERS[name][0](params, **FORLOOP), dtype, resumed=False)
    actual = _channels_last_resume(OPTIMIZERS[name][0], dtype, resumed=True)
    rtol, atol = (1e-7, 1e-9) if dtype == torch.float64 else (1e-3, 1e-5)
    for key, tensor in expected.items():
        torch.testing.assert_close(actual[key], tensor, rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize(("name", "path"), CASES)
def test_resumed_state_takes_the_parameters_layout_once(name: str, path: str) -> None:
    """After a channels_last resume the state is re-laid out to match its parameter, once: later steps keep
    the same state tensors (no copy per step) and the one-pass kernel can take them again."""
    make, context = _maker(name, path)
    conv = torch.nn.Conv2d(3, 4, 3)
    optimizer = make(conv.parameters())
    conv(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    checkpoint = optimizer.state_dict()
    conv.to(memory_format=torch.channels_last)
    optimizer = make(conv.parameters())
    optimizer.load_state_dict(checkpoint)
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    with context():
        conv(x).sum().backward()
        optimizer.step()
        state = optimizer.state[conv.weight]
        tensors = {key: value for key, value in state.items() if value.dim() > 0}
        assert tensors and all(value.stride() == conv.weight.stride() for value in tensors.values())
        pointers = {key: value.data_ptr() for key, value in tensors.items()}
        conv(x).sum().backward()
        optimizer.step()
        assert {
            key: value.data_ptr() for key, value in optimizer.state[conv.weight].items() if value.dim() > 0
        } == pointers


_EXPANDED_PARAM = """
import torch, decoupled
from decoupled.kernels import native
param = torch.nn.Parameter(torch.randn(1, 64).expand(4096, 64))
param.grad = torch.randn(4096, 64)
optimizer = decoupled.{cls}([param], lr=0.1, {kwargs})
try:
    with {context}:
        optimizer.step()
except RuntimeError as error:
    print("RuntimeError:", error)
"""


@pytest.mark.parametrize(("name", "path"), CASES)
def test_an_expanded_parameter_is_a_clear_error(name: str, path: str) -> None:
    """An overlapping parameter cannot be updated in place: a RuntimeError naming it, not a crash (run in a
    subprocess: a kernel that writes through it corrupts the heap)."""
    kwargs, context = OPTIMIZERS[name][1][path]
    if path == "fused-native" and not native.available():
        pytest.skip(native.unavailable_reason())
    code = _EXPANDED_PARAM.format(
        cls=name, kwargs=", ".join(f"{k}={v!r}" for k, v in kwargs.items()),
        context="native.bypassed()" if context is native.bypassed else "open('/dev/null')",
    )  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RuntimeError:" in result.stdout and "overlap" in result.stdout, result.stdout


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("lr", [1e-16, 1e-12, 1e-8, 3e-4, 0.1])
def test_torch_fused_sgd_mapping_keeps_tiny_learning_rates_exact(lr: float, dtype: torch.dtype) -> None:
    """The mapping onto torch's fused SGD (the CUDA path) scales gradients by 1 - (1 - lr): 11% off at lr 1e-16
    in float64, and every gradient lost below 1.1e-16. Such steps must come out as the for-loop's, to the dtype's
    round-off."""
    generator = torch.Generator().manual_seed(5)
    theta, grads = (
        torch.randn(257, generator=generator, dtype=dtype),
        [torch.randn(257, generator=generator, dtype=dtype) for _ in range(4)],
    )
    runs = []
    for path, context in (({"fused": True}, native.bypassed), (FORLOOP, contextlib.nullcontext)):
        param = torch.nn.Parameter(theta.clone())
        optimizer = decoupled.SGDW([param], lr=lr, momentum=0.9, weight_decay=0.0, **path)
        with context():
            for grad in grads:
                param.grad = grad
                optimizer.step()
        runs.append((param.detach() - theta, optimizer.state[param]["momentum_buffer"]))
    (moved, buffer), (moved_ref, buffer_ref) = runs
    rtol = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(buffer, buffer_ref, rtol=rtol, atol=0)
    torch.testing.assert_close(moved, moved_ref, rtol=rtol * 8, atol=torch.finfo(dtype).eps * 4)

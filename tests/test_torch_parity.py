"""What torch.optim users meet: PyTorch's own AdamW test tables, Tensor hyperparameters, capturable and
differentiable steps, SGD's dampening, and a compiled step that does not recompile as a scheduler runs.

The tables are torch's (torch.testing._internal.common_optimizers, shipped in the wheel): every CPU error input
must raise torch's error type, and every CPU sample configuration must follow torch.optim.AdamW's trajectory
(``decay="lr"`` is torch's convention).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import pytest
import torch

import decoupled
from cases import PATHS

common = pytest.importorskip("torch.testing._internal.common_optimizers")


def _error_inputs() -> list[Any]:
    return common.optim_error_inputs_func_adamw("cpu", torch.float32)


@pytest.mark.parametrize("index", range(len(_error_inputs())))
def test_torch_adamw_error_inputs_raise_torchs_error_types(index: int) -> None:
    error_input = _error_inputs()[index]
    sample = error_input.optimizer_error_input
    params = sample.params if sample.params is not None else [torch.nn.Parameter(torch.randn(2, 2))]
    build = lambda: decoupled.AdamW(params, decay="lr", **sample.kwargs)  # noqa: E731
    if issubclass(error_input.error_type, Warning):
        with pytest.warns(error_input.error_type, match=error_input.error_regex):
            build()
        return
    with pytest.raises(error_input.error_type) as raised:
        build()
    assert type(raised.value).__module__ != "builtins" or issubclass(type(raised.value), error_input.error_type)


def test_torch_adamw_table_has_twelve_cpu_error_inputs() -> None:
    assert len(_error_inputs()) == 12  # if torch grows its table, the test above covers the new rows too


def _sample_inputs() -> list[Any]:
    return common.optim_inputs_func_adamw("cpu", torch.float64)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("index", range(len(_sample_inputs())))
def test_torch_adamw_sample_configurations_follow_torchs_trajectory(index: int, path: str) -> None:
    kwargs = dict(_sample_inputs()[index].kwargs)
    kwargs.setdefault("weight_decay", 1e-2)  # torch's default; ours (1e-5) is the same decay in the paper's units
    runs = []
    for make in (
        lambda p: decoupled.AdamW(p, decay="lr", **kwargs, **PATHS[path]),
        lambda p: torch.optim.AdamW(p, **kwargs),
    ):
        generator = torch.Generator().manual_seed(index)
        params = [torch.nn.Parameter(torch.randn(5, 3, generator=generator, dtype=torch.float64)) for _ in range(2)]
        optimizer = make(params)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=12)
        for step in range(12):
            for i, p in enumerate(params):
                p.grad = torch.sin(p.detach() * (step + 2) + i)
            optimizer.step()
            scheduler.step()
        runs.append([p.detach() for p in params])
    for ours, theirs in zip(*runs):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


# Tensor hyperparameters and capturable steps ---------------------------------------------------------------


def _adam_run(lr: Any, betas: Any, **options: Any) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(3)
    params = [
        torch.nn.Parameter(torch.randn(*s, generator=generator, dtype=torch.float64)) for s in ((4, 5), (7,), (0,))
    ]
    optimizer = decoupled.AdamW(params, lr=lr, betas=betas, weight_decay=2e-2, **options)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=7)
    for step in range(30):
        for i, p in enumerate(params):
            p.grad = torch.cos(p.detach() * (step + 1) + i) * 10.0 ** (i - 1)
        optimizer.step()
        scheduler.step()
    return [p.detach() for p in params], [dict(optimizer.state[p]) for p in params]


_CAPTURABLE_PATHS = {"default": {}, "foreach": {"foreach": True}, "forloop": {"foreach": False, "fused": False}}


@pytest.mark.parametrize("decay", decoupled.DECAY_CONVENTIONS)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("path", list(_CAPTURABLE_PATHS))
@pytest.mark.parametrize("tensors", [False, True], ids=["float-hyper", "tensor-hyper"])
def test_capturable_steps_match_the_plain_forloop(tensors: bool, path: str, amsgrad: bool, decay: str) -> None:
    """capturable=True (the bias corrections on the steps' device, Tensor lr and betas) against the plain
    for-loop path with float hyperparameters: parameters and state, 30 steps under warm restarts, float64."""
    lr, betas = 1e-2, (0.85, 0.99)
    if tensors:
        lr, betas = torch.tensor(lr, dtype=torch.float64), tuple(torch.tensor(b, dtype=torch.float64) for b in betas)
    options = dict(decay=decay, amsgrad=amsgrad)
    actual = _adam_run(lr, betas, capturable=True, **options, **_CAPTURABLE_PATHS[path])
    expected = _adam_run(1e-2, (0.85, 0.99), foreach=False, fused=False, **options)
    for got, want in zip(
        actual[0] + [t for s in actual[1] for t in s.values()],
        expected[0] + [t for s in expected[1] for t in s.values()],
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", ["foreach", "forloop"])
def test_a_capturable_step_never_reads_a_tensor_on_the_host(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No .item() (a host synchronisation per parameter on CUDA, and illegal inside a CUDA graph)."""
    params = [torch.nn.Parameter(torch.randn(3, 3)) for _ in range(3)]
    lr = torch.tensor(1e-3)
    optimizer = decoupled.AdamW(params, lr=lr, betas=(torch.tensor(0.9), torch.tensor(0.999)), capturable=True,
                                amsgrad=True, **_CAPTURABLE_PATHS[path])  # fmt: skip
    for p in params:
        p.grad = torch.randn(3, 3)
    optimizer.step()  # creates the state
    read = []
    monkeypatch.setattr(torch.Tensor, "item", lambda self: read.append(self) or 0.0)
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: read.append(self) or True)
    monkeypatch.setattr(torch.Tensor, "__float__", lambda self: read.append(self) or 0.0)
    optimizer.step()
    monkeypatch.undo()
    assert read == []


def test_tensor_lr_is_changed_in_place_by_schedulers_and_base_lr_stays_a_number() -> None:
    lr = torch.tensor(0.01)
    optimizer = decoupled.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step()
    scheduler.step()
    group = optimizer.param_groups[0]
    assert isinstance(group["base_lr"], float) and math.isclose(group["base_lr"], 0.01, rel_tol=1e-6)
    assert math.isclose(float(group["lr"]), 0.005, rel_tol=1e-6)
    assert decoupled.effective_decay(optimizer)[0] == pytest.approx(0.5 * 1e-5, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": torch.tensor([1e-3, 1e-3])}, ValueError, "Tensor lr must be 1-element"),
        ({"lr": torch.tensor(1e-3), "foreach": True}, ValueError, "capturable=False and foreach=True"),
        ({"betas": (0.9, torch.tensor(0.99))}, ValueError, "both floats or both Tensors"),
        ({"fused": True, "differentiable": True}, RuntimeError, "`fused` does not support `differentiable`"),
        ({"foreach": True, "differentiable": True}, RuntimeError, "`foreach` does not support `differentiable`"),
        ({"fused": True, "foreach": True}, RuntimeError, "`fused` and `foreach` cannot be `True` together"),
        ({"fused": True, "capturable": True}, ValueError, "capturable"),
        ({"lr": torch.tensor(-1.0)}, ValueError, "lr must be >= 0"),
        ({"capturable": 1}, TypeError, "capturable must be True or False"),
    ],
)
def test_refused_combinations(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        decoupled.AdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)


# differentiable ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "steps", "rtol"),
    [
        (lambda p: decoupled.AdamW(p, lr=0.1, weight_decay=0.1, decay="lr", differentiable=True),
         lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1, differentiable=True), 1, 1e-5),
        (lambda p: decoupled.SGDW(p, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.0, differentiable=True),
         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.2, differentiable=True), 3, 1e-12),
    ],
    ids=["AdamW", "SGDW"],
)  # fmt: skip
def test_differentiable_steps_give_torchs_gradients(ours: Any, theirs: Any, steps: int, rtol: float) -> None:
    """d(loss after the steps)/d(initial parameters and gradients), through the optimizer, equals torch.optim's.
    One Adam step (its in-place moments are saved for the backward of the next step, in torch as here), three SGD
    steps. torch's differentiable Adam computes its bias corrections from the float32 step tensor (ours in
    float64), hence rtol 1e-5 there."""
    results = []
    for make in (ours, theirs):
        start = torch.linspace(-1, 1, 6, dtype=torch.float64).requires_grad_()
        grads = [torch.cos(torch.arange(6.0, dtype=torch.float64) * (k + 1)).requires_grad_() for k in range(steps)]
        param = start.clone()  # a non-leaf parameter, so the in-place steps stay on the graph
        optimizer = make([param])
        for grad in grads:
            param.grad = grad.clone()
            optimizer.step()
        derivatives = torch.autograd.grad(param.square().sum(), [start, *grads], allow_unused=True)
        results.append((param.detach(), derivatives))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=rtol, atol=rtol * 1e-2)
    for ours_d, theirs_d in zip(results[0][1], results[1][1]):
        if theirs_d is None:  # torch's SGD detaches its first buffer (buf = clone(g).detach()); ours does not
            assert ours_d is not None
            continue
        torch.testing.assert_close(ours_d, theirs_d, rtol=max(rtol, 1e-10), atol=max(rtol, 1e-10) * 1e-2)


# dampening -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
def test_sgdw_dampening_is_torchs_at_a_constant_lr(path: str) -> None:
    runs = []
    for make in (
        lambda p: decoupled.SGDW(p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2, decay="l2", **PATHS[path]),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
    ):
        params = [
            torch.nn.Parameter(torch.linspace(-2, 2, 9, dtype=torch.float64)),
            torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64)),
        ]
        optimizer = make(params)
        for step in range(15):
            for p in params:
                p.grad = torch.cos(p.detach() * (step + 1))
            optimizer.step()
        runs.append([p.detach() for p in params])
    for ours, theirs in zip(*runs):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("path", list(PATHS))
def test_sgdw_dampening_under_a_schedule_matches_the_formula(path: str) -> None:
    """m_1 = lr_1 g_1; m_t = mu m_{t-1} + (1 - d) lr_t g_t; theta_t = theta_{t-1} - m_t - eta_t lambda theta_{t-1}.
    A parameter that first gets a gradient late starts its own buffer then (undampened)."""
    mu, d, lam, alpha = 0.9, 0.25, 1e-2, 0.05
    params = [
        torch.nn.Parameter(torch.linspace(-2, 2, 7, dtype=torch.float64)),
        torch.nn.Parameter(torch.ones(4, dtype=torch.float64)),
    ]
    expected = [p.detach().clone() for p in params]
    buffers: list[torch.Tensor | None] = [None, None]
    optimizer = decoupled.SGDW(params, lr=alpha, momentum=mu, dampening=d, weight_decay=lam, **PATHS[path])
    for step in range(12):
        lr = alpha * (0.3 + 0.7 * math.cos(step / 4) ** 2)
        optimizer.param_groups[0]["lr"] = lr
        for i, p in enumerate(params):
            if i == 1 and step < 5:
                p.grad = None
                continue
            grad = torch.cos(expected[i] * (step + 1))
            p.grad = grad.clone()
            buffers[i] = lr * grad if buffers[i] is None else mu * buffers[i] + (1 - d) * lr * grad
            expected[i] = expected[i] - buffers[i] - lr / alpha * lam * expected[i]
        optimizer.step()
    for i, p in enumerate(params):
        torch.testing.assert_close(p.detach(), expected[i], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], buffers[i], rtol=1e-12, atol=1e-14)


def test_nesterov_with_dampening_is_refused() -> None:
    with pytest.raises(ValueError, match="dampening"):
        decoupled.SGDW([torch.nn.Parameter(torch.zeros(2))], lr=0.1, nesterov=True, dampening=0.1)


# compile -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["AdamW", "SGDW"])
def test_a_compiled_step_does_not_recompile_as_a_scheduler_changes_a_tensor_lr(name: str) -> None:
    torch._dynamo.reset()
    model = torch.nn.Linear(4, 2)
    lr = torch.tensor(0.01)
    optimizer = (
        decoupled.AdamW(model.parameters(), lr=lr) if name == "AdamW" else decoupled.SGDW(model.parameters(), lr=lr)
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    x = torch.randn(8, 4)

    @torch.compile(backend="eager")
    def train_step() -> torch.Tensor:
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    with torch._dynamo.config.patch(error_on_recompile=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(6):
            train_step()
            scheduler.step()
    assert float(optimizer.param_groups[0]["lr"]) < 0.01
    with contextlib.suppress(Exception):
        torch._dynamo.reset()

"""The conventions against torch's own optimizers, and decouple() against decay-then-step, under a schedule."""

from __future__ import annotations

import pytest
import torch

import decoupled
from cases import PATHS
from device import TEST_DEVICE
from reference import decay_of_step

STEPS = 30


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(6, 4), (4,), (3, 2, 2), (0,)]
    return [
        torch.nn.Parameter(torch.randn(*s, generator=generator, dtype=torch.float64).to(TEST_DEVICE)) for s in shapes
    ]


def set_grads(params: list[torch.Tensor], step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    for index, p in enumerate(params):
        scale = 10.0 ** (index - 1)
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        p.grad = scale * (p.detach() - 0.5) + scale * noise


def run(optimizer_factory, *, scheduled: bool = True) -> list[torch.Tensor]:
    """STEPS steps from make_params(), under a cosine schedule, or at a constant lr with scheduled=False."""
    params = make_params()
    optimizer = optimizer_factory(params)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS) if scheduled else None
    for step in range(STEPS):
        set_grads(params, step)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return [p.detach() for p in params]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_lr_convention_is_torch_adamw(path, amsgrad):
    ours = run(lambda p: decoupled.AdamW(p, lr=0.01, weight_decay=0.1, decay="lr", amsgrad=amsgrad, **PATHS[path]))
    torch_run = run(lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, amsgrad=amsgrad))
    assert_same(ours, torch_run)


@pytest.mark.parametrize("path", list(PATHS))
def test_adamw_l2_convention_is_torch_adam_with_weight_decay(path):
    ours = run(lambda p: decoupled.AdamW(p, lr=0.01, weight_decay=0.1, decay="l2", **PATHS[path]))
    torch_run = run(lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1))
    assert_same(ours, torch_run)


@pytest.mark.parametrize("path", list(PATHS))
def test_migration_from_torch_adamw(path):
    """torch.optim.AdamW(lr=a, weight_decay=w) is AdamW(lr=a, weight_decay=a * w), schedule included."""
    a, w = 0.01, 0.1
    ours = run(lambda p: decoupled.AdamW(p, lr=a, weight_decay=decoupled.convert_weight_decay(w, source="lr", target="decoupled", lr=a), **PATHS[path]))
    torch_run = run(lambda p: torch.optim.AdamW(p, lr=a, weight_decay=w))
    assert_same(ours, torch_run)


@pytest.mark.parametrize("path", list(PATHS))
def test_sgdw_l2_matches_torch_sgd_while_lr_is_constant(path):
    """The lr inside the buffer (paper) or outside it (torch) is the same method while the lr is constant."""
    ours = run(
        lambda p: decoupled.SGDW(p, lr=0.05, momentum=0.9, weight_decay=0.01, decay="l2", **PATHS[path]), scheduled=False
    )
    theirs = run(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01), scheduled=False)
    assert_same(ours, theirs)


def test_sgdw_differs_from_torch_sgd_under_a_schedule():
    """The documented difference: the lr inside the buffer (the paper) vs outside (torch)."""
    ours = run(lambda p: decoupled.SGDW(p, lr=0.05, momentum=0.9, weight_decay=0.0))
    theirs = run(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    assert not torch.allclose(ours[0], theirs[0], rtol=1e-6)


INNER_OPTIMIZERS = [
    (torch.optim.RMSprop, dict(lr=0.01, momentum=0.5)),
    (torch.optim.Adagrad, dict(lr=0.05)),
    (torch.optim.Adamax, dict(lr=0.01)),
    (torch.optim.NAdam, dict(lr=0.01)),
    (torch.optim.RAdam, dict(lr=0.01)),
    (torch.optim.Adam, dict(lr=0.01)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
]


class DecayThenStep:
    """The plain composition decouple() must equal: theta *= 1 - factor, then the inner optimizer's step."""

    def __init__(self, params, inner_cls, inner_kwargs, weight_decay, decay):
        self.inner = inner_cls(params, **inner_kwargs)
        self.weight_decay, self.decay = weight_decay, decay
        self.base_lr = inner_kwargs["lr"]
        self.param_groups = self.inner.param_groups

    @torch.no_grad()
    def step(self):
        group = self.inner.param_groups[0]
        factor = decay_of_step(self.decay, group["lr"], self.base_lr, self.weight_decay)
        for p in group["params"]:
            if p.grad is not None:
                p.mul_(1 - factor)
        self.inner.step()


@pytest.mark.parametrize("decay", ["decoupled", "lr", "constant"])
@pytest.mark.parametrize("inner_cls, kwargs", INNER_OPTIMIZERS, ids=lambda x: getattr(x, "__name__", ""))
def test_decouple_is_decay_then_inner_step(inner_cls, kwargs, decay):
    decoupled_cls = decoupled.decouple(inner_cls)
    ours = run(lambda p: decoupled_cls(p, **kwargs, weight_decay=0.05, decay=decay))
    params = make_params()
    reference = DecayThenStep(params, inner_cls, kwargs, weight_decay=0.05, decay=decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(reference.inner, T_max=STEPS)
    for step in range(STEPS):
        set_grads(params, step)
        reference.step()
        scheduler.step()
    assert_same(ours, [p.detach() for p in params])


def test_decouple_l2_is_inner_optimizer_with_its_own_l2():
    RMSpropW = decoupled.decouple(torch.optim.RMSprop)
    ours = run(lambda p: RMSpropW(p, lr=0.01, weight_decay=0.05, decay="l2"))
    theirs = run(lambda p: torch.optim.RMSprop(p, lr=0.01, weight_decay=0.05))
    assert_same(ours, theirs)


def test_decouple_l2_restores_the_users_gradients():
    params = make_params()
    optimizer = decoupled.decouple(torch.optim.RMSprop)(params, lr=0.01, weight_decay=0.05, decay="l2")
    set_grads(params, 0)
    grads = [p.grad for p in params]
    saved = [g.clone() for g in grads]
    optimizer.step()
    for p, g, s in zip(params, grads, saved):
        assert p.grad is g
        torch.testing.assert_close(g, s, rtol=0, atol=0)


@pytest.mark.parametrize("path", list(PATHS))
def test_decouple_adam_is_adamw(path):
    """decouple(torch.optim.Adam) and decoupled.AdamW are the same algorithm by two routes."""
    AdamD = decoupled.decouple(torch.optim.Adam)
    ours = run(lambda p: decoupled.AdamW(p, lr=0.01, weight_decay=0.05, **PATHS[path]))
    theirs = run(lambda p: AdamD(p, lr=0.01, weight_decay=0.05))
    assert_same(ours, theirs)


def test_decouple_passes_positional_weight_decay_and_keeps_inner_decay_off():
    params = make_params()
    # RMSprop(params, lr, alpha, eps, weight_decay, ...): weight_decay given positionally.
    optimizer = decoupled.decouple(torch.optim.RMSprop)(params, 0.01, 0.99, 1e-8, 0.05)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    assert optimizer.param_groups[0]["decay"] == "decoupled"
    set_grads(params, 0)
    optimizer.step()
    assert optimizer.param_groups[0]["weight_decay"] == 0.05  # restored after the inner step


def test_decouple_supports_an_optimizer_without_weight_decay():
    class Plain(torch.optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["lr"])

    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer = decoupled.decouple(Plain)([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.ones(2, dtype=torch.float64)
    optimizer.step()
    torch.testing.assert_close(p.detach(), torch.full((2,), 0.5 - 0.1, dtype=torch.float64))


def test_decouple_with_closure_evaluates_it_once_and_returns_its_loss():
    params = make_params()
    optimizer = decoupled.decouple(torch.optim.Adam)(params, lr=0.01, weight_decay=0.05)
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert len(calls) == 1 and torch.is_tensor(loss)

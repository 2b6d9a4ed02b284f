"""Propositions 1-3 of Loshchilov & Hutter (ICLR 2019) as property tests, run through the package's optimizers."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoupled

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def quadratic_problem(seed: int, scales: torch.Tensor):
    generator = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(len(scales), generator=generator, dtype=torch.float64)
    center = torch.randn(len(scales), generator=generator, dtype=torch.float64)
    return theta0, center


def trajectory(make_optimizer, theta0, gradient, steps, schedule=None) -> torch.Tensor:
    theta = torch.nn.Parameter(theta0.clone())
    optimizer = make_optimizer([theta])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule) if schedule else None
    points = []
    for _ in range(steps):
        theta.grad = gradient(theta.detach())
        optimizer.step()
        if scheduler:
            scheduler.step()
        points.append(theta.detach().clone())
    return torch.stack(points)


@SETTINGS
@given(
    alpha=st.floats(1e-3, 0.5),
    weight_decay=st.floats(0.0, 0.05),
    seed=st.integers(0, 10_000),
    cosine=st.booleans(),
)
def test_proposition_1_plain_sgd_weight_decay_is_l2_over_alpha(alpha, weight_decay, seed, cosine):
    """Plain SGD: decay lambda == L2 with lambda' = lambda / alpha, at every step of any schedule."""
    scales = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    theta0, center = quadratic_problem(seed, scales)
    gradient = lambda theta: scales * (theta - center)  # noqa: E731
    steps = 25
    schedule = (lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))) if cosine else None
    with_decay = trajectory(
        lambda p: decoupled.SGDW(p, lr=alpha, momentum=0.0, weight_decay=weight_decay), theta0, gradient, steps, schedule
    )
    with_l2 = trajectory(
        lambda p: torch.optim.SGD(p, lr=alpha, weight_decay=weight_decay / alpha), theta0, gradient, steps, schedule
    )
    torch.testing.assert_close(with_decay, with_l2, rtol=1e-10, atol=1e-12)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    alpha=st.floats(0.01, 0.1),
    weight_decay=st.floats(0.01, 0.1),
    spread=st.floats(2.0, 3.0),
    seed=st.integers(0, 10_000),
)
def test_proposition_2_no_l2_coefficient_reproduces_adamw(alpha, weight_decay, spread, seed):
    """Adam: with unequal gradient scales, the best L2 coefficient still misses most of AdamW's decay effect.

    Searched over lambda' on a log grid of quarter decades (and 0), the L2 trajectory stays at least 30% of the decay's
    own effect (the distance between AdamW and Adam without decay) away from AdamW's.
    """
    scales = torch.tensor([10.0**-spread, 1.0, 10.0**spread], dtype=torch.float64)
    theta0, center = quadratic_problem(seed, scales)
    gradient = lambda theta: scales * (theta - center)  # noqa: E731
    steps = 60
    adamw = trajectory(lambda p: decoupled.AdamW(p, lr=alpha, weight_decay=weight_decay), theta0, gradient, steps)
    adam = trajectory(lambda p: decoupled.AdamW(p, lr=alpha, weight_decay=0.0), theta0, gradient, steps)
    effect = (adamw - adam).abs().max()
    assert effect > 0
    candidates = [0.0] + [10 ** (k / 4) for k in range(-24, 13)]  # 1e-6 ... 1e3
    best = min(
        (trajectory(lambda p: decoupled.AdamW(p, lr=alpha, weight_decay=l2, decay="l2"), theta0, gradient, steps) - adamw)
        .abs()
        .max()
        / effect
        for l2 in candidates
    )
    assert best > 0.3


class DiagonalPreconditionedSGD(torch.optim.Optimizer):
    """theta <- theta - lr * M grad f(theta) with a fixed M = diag(s)^-1 (Proposition 3's setting)."""

    def __init__(self, params, lr, scales, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.scales = scales

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad / self.scales, alpha=-group["lr"])


@SETTINGS
@given(
    alpha=st.floats(1e-3, 0.2),
    weight_decay=st.floats(0.0, 0.05),
    seed=st.integers(0, 10_000),
    log_scales=st.lists(st.floats(-2.0, 2.0), min_size=3, max_size=3),
)
def test_proposition_3_fixed_preconditioner_decay_is_scaled_l2(alpha, weight_decay, seed, log_scales):
    """With M = diag(s)^-1 fixed, decay lambda == L2 on lambda'/2 ||theta * sqrt(s)||^2, lambda' = lambda / alpha."""
    s = torch.tensor([10.0**x for x in log_scales], dtype=torch.float64)
    loss_scales = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    theta0, center = quadratic_problem(seed, loss_scales)
    steps = 25
    PreconditionedW = decoupled.decouple(DiagonalPreconditionedSGD)
    with_decay = trajectory(
        lambda p: PreconditionedW(p, lr=alpha, scales=s, weight_decay=weight_decay),
        theta0, lambda theta: loss_scales * (theta - center), steps,
    )  # fmt: skip
    l2 = weight_decay / alpha
    with_scaled_l2 = trajectory(
        lambda p: DiagonalPreconditionedSGD(p, lr=alpha, scales=s),
        theta0, lambda theta: loss_scales * (theta - center) + l2 * s * theta, steps,
    )  # fmt: skip
    torch.testing.assert_close(with_decay, with_scaled_l2, rtol=1e-9, atol=1e-11)

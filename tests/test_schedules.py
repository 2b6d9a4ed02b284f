"""Warm restarts and normalized weight decay: boundaries, restarts, fractional epochs, torch schedulers."""

from __future__ import annotations

import math

import pytest
import torch

import decoupled
from decoupled.schedules import restart_position, warm_restart_multiplier
from reference import cosine_warm_restarts


def optimizer(lr: float = 0.1, groups: int = 1):
    return decoupled.SGDW(
        [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * (i + 1)} for i in range(groups)], lr=lr
    )


@pytest.mark.parametrize(
    "step, steps_per_epoch, first, mult, expected",
    [
        (0, 1, 10, 1, (0, 0.0, 10.0)),
        (9, 1, 10, 1, (0, 9.0, 10.0)),
        (10, 1, 10, 1, (1, 0.0, 10.0)),
        (35, 1, 10, 1, (3, 5.0, 10.0)),
        (10, 1, 10, 2, (1, 0.0, 20.0)),
        (59, 2, 10, 2, (1, 19.5, 20.0)),
        (30, 1, 10, 2, (2, 0.0, 40.0)),
        (70, 1, 10, 2, (3, 0.0, 80.0)),
        (3, 10, 0.3, 1, (1, 0.0, 0.3)),  # 0.3 * 10 is 3.0000000000000004 in floating point
        (2, 3, 0.5, 3, (1, 0.0, 1.5)),  # a period of 1.5 batches lasts 2: T_cur is reset to 0, not 1/6
        (6, 3, 0.5, 3, (1, 4 / 3, 1.5)),
        (7, 3, 0.5, 3, (2, 0.0, 4.5)),
    ],
)
def test_restart_position_at_boundaries(step, steps_per_epoch, first, mult, expected):
    position = restart_position(step, steps_per_epoch, first, mult)
    assert position.restart == expected[0]
    assert position.t_cur == pytest.approx(expected[1], abs=1e-12)
    assert position.t_i == pytest.approx(expected[2])


def test_multiplier_endpoints():
    assert warm_restart_multiplier(0.0, 7.0) == 1.0
    assert warm_restart_multiplier(7.0, 7.0) == pytest.approx(0.0, abs=1e-15)
    assert warm_restart_multiplier(3.5, 7.0, eta_min=0.2, eta_max=0.8) == pytest.approx(0.5)


@pytest.mark.parametrize("steps_per_epoch, first, mult", [(1, 3, 1), (4, 2, 2), (3, 0.5, 3), (7, 1.25, 1.5)])
def test_lr_follows_equation_14_per_batch(steps_per_epoch, first, mult):
    opt = optimizer(lr=0.2, groups=2)
    scheduler = decoupled.CosineWarmRestarts(opt, first_period=first, steps_per_epoch=steps_per_epoch, period_mult=mult)
    for step in range(60):
        eta = cosine_warm_restarts(step, steps_per_epoch, first, mult)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * eta, abs=1e-12)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.4 * eta, abs=1e-12)
        opt.step()
        scheduler.step()


def test_restart_happens_on_the_exact_batch():
    opt = optimizer(lr=1.0)
    scheduler = decoupled.CosineWarmRestarts(opt, first_period=2, steps_per_epoch=5, period_mult=2)
    lrs = []
    for _ in range(31):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs[0] == 1.0 and lrs[10] == 1.0 and lrs[30] == 1.0  # periods of 10 and 20 batches
    assert lrs[9] < 0.03 and lrs[29] < 0.01
    assert all(a > b for a, b in zip(lrs[10:29], lrs[11:30]))


def test_eta_min_and_eta_max_are_multipliers_of_each_groups_lr():
    opt = optimizer(lr=0.1, groups=2)
    decoupled.CosineWarmRestarts(opt, first_period=1, eta_min=0.1, eta_max=0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1)


def test_normalized_weight_decay_matches_the_paper():
    # CIFAR-10, b=128, B=50000, T=100: lambda_norm 0.025 gives 1.26e-4 (appendix B.1).
    assert decoupled.normalized_weight_decay(0.025, 128, 50_000, 100) == pytest.approx(1.26e-4, rel=5e-3)
    assert decoupled.normalized_weight_decay(0.05, 100, 10_000, 4) == pytest.approx(0.05 * math.sqrt(100 / 40_000))


def test_normalized_weight_decay_is_recomputed_at_every_restart():
    opt = optimizer(lr=0.1, groups=2)
    scheduler = decoupled.CosineWarmRestarts(
        opt, first_period=2, steps_per_epoch=5, period_mult=2, weight_decay_norm=[0.05, 0.1]
    )
    seen = []
    for step in range(40):
        t_i = 2 if step < 10 else 4 if step < 30 else 8
        for group, norm in zip(opt.param_groups, (0.05, 0.1)):
            assert group["weight_decay"] == pytest.approx(norm * math.sqrt(1 / (5 * t_i)))
        seen.append(opt.param_groups[0]["weight_decay"])
        opt.step()
        scheduler.step()
    assert len(set(seen)) == 3  # one value per period


def test_scheduler_state_dict_round_trip_continues_exactly():
    opt = optimizer(lr=0.3)
    scheduler = decoupled.CosineWarmRestarts(opt, first_period=1.5, steps_per_epoch=4, period_mult=2, weight_decay_norm=0.05)
    for _ in range(13):
        opt.step()
        scheduler.step()
    saved_opt, saved_sched = opt.state_dict(), scheduler.state_dict()
    expected = []
    for _ in range(20):
        opt.step()
        scheduler.step()
        expected.append((opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]))

    opt2 = optimizer(lr=0.3)
    scheduler2 = decoupled.CosineWarmRestarts(opt2, first_period=1.5, steps_per_epoch=4, period_mult=2, weight_decay_norm=0.05)
    opt2.load_state_dict(saved_opt)
    scheduler2.load_state_dict(saved_sched)
    actual = []
    for _ in range(20):
        opt2.step()
        scheduler2.step()
        actual.append((opt2.param_groups[0]["lr"], opt2.param_groups[0]["weight_decay"]))
    assert actual == expected


@pytest.mark.parametrize(
    "make_scheduler, description",
    [
        (lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: s / 5 if s < 5 else 1.0), "warmup from lr 0"),
        (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20), "cosine"),
        (lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.LambdaLR(o, lambda s: s / 5), torch.optim.lr_scheduler.CosineAnnealingLR(o, 15)],
            milestones=[5]), "warmup then cosine"),  # fmt: skip
        (lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=20), "one cycle"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_eta_is_lr_over_the_lr_the_group_was_built_with(make_scheduler, description):
    """Any torch scheduler drives the decoupled decay: factor = (lr_t / base_lr) * weight_decay."""
    param = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = decoupled.AdamW([param], lr=0.1, weight_decay=0.01)
    scheduler = make_scheduler(opt)
    for _ in range(20):
        lr = opt.param_groups[0]["lr"]
        assert decoupled.effective_decay(opt) == [pytest.approx(lr / 0.1 * 0.01)]
        before = param.detach().clone()
        param.grad = torch.zeros(3, dtype=torch.float64)  # a zero gradient isolates the decay
        opt.step()
        torch.testing.assert_close(param.detach(), before * (1 - lr / 0.1 * 0.01))
        scheduler.step()


def test_one_normalized_decay_leaves_the_no_decay_group_undecayed():
    """param_groups() puts biases and norms in a weight_decay=0 group; one lambda_norm must not decay them."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = decoupled.AdamW(decoupled.param_groups(model, weight_decay=1e-4), lr=1e-3)
    scheduler = decoupled.CosineWarmRestarts(opt, first_period=1, steps_per_epoch=4, weight_decay_norm=0.05)
    for _ in range(9):
        decay_group, no_decay_group = opt.param_groups
        assert decay_group["weight_decay"] == pytest.approx(0.05 * math.sqrt(1 / 4))
        assert no_decay_group["weight_decay"] == 0.0
        assert decoupled.effective_decay(opt)[1] == 0.0
        opt.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["weight_decay_norms"] == [0.05, 0.0]


def test_one_normalized_decay_applies_to_every_group_when_none_decays_yet():
    opt = optimizer(lr=0.1, groups=2)
    for group in opt.param_groups:
        group["weight_decay"] = 0.0
    decoupled.CosineWarmRestarts(opt, first_period=2, steps_per_epoch=5, weight_decay_norm=0.05)
    assert [group["weight_decay"] for group in opt.param_groups] == [pytest.approx(0.05 * math.sqrt(1 / 10))] * 2

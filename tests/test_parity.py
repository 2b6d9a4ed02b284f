"""Every optimizer x every decay convention x float64/float32 x every kernel path against the reference.

Two parameter groups with different lr and weight decay, 45 steps of cosine warm restarts (restarts at steps
10 and 30), gradients of a badly scaled noisy quadratic, None gradients at some steps, a parameter frozen for
the first 12 steps, empty tensors and a complex parameter. Parameters AND every state tensor are compared.
"""

from __future__ import annotations

import pytest
import torch

import decoupled
from cases import (
    DECAYS,
    OPTIMIZER_CASES,
    PARAM_SPECS,
    PATHS,
    FROZEN_INDEX,
    build_groups,
    gradient,
    initial_values,
)
from reference import as_real, cosine_warm_restarts

STEPS = 45
STEPS_PER_EPOCH, FIRST_PERIOD, PERIOD_MULT = 5, 2.0, 2.0
TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def run_against_reference(case, decay: str, dtype: torch.dtype, path: dict, steps: int = STEPS):
    values = initial_values()
    groups, params = build_groups(values, dtype, case.base_lr)
    optimizer = case.make(groups, decay=decay, **path)
    scheduler = decoupled.CosineWarmRestarts(
        optimizer, first_period=FIRST_PERIOD, steps_per_epoch=STEPS_PER_EPOCH, period_mult=PERIOD_MULT
    )
    alphas = [group["base_lr"] for group in optimizer.param_groups]
    reference = case.make_reference()
    expected = [v.clone() for v in values]
    grad_options = dict(sign=-1.0 if case.maximize else 1.0, spread=case.scale_spread)
    for step in range(steps):
        eta = cosine_warm_restarts(step, STEPS_PER_EPOCH, FIRST_PERIOD, PERIOD_MULT)
        for group, alpha in zip(optimizer.param_groups, alphas):
            assert group["lr"] == pytest.approx(alpha * eta, rel=1e-12, abs=1e-15)
        for index, param in enumerate(params):
            param.grad = gradient(index, param.detach(), step, **grad_options)
        for index, (group_index, _, is_complex) in enumerate(PARAM_SPECS):
            group = optimizer.param_groups[group_index]
            new = reference.step(
                index, expected[index], gradient(index, expected[index], step, **grad_options),
                lr=group["lr"], alpha=alphas[group_index], weight_decay=group["weight_decay"], decay=decay,
            )  # fmt: skip
            expected[index] = torch.view_as_complex(new.contiguous()) if is_complex and not new.is_complex() else new
        optimizer.step()
        scheduler.step()
    return optimizer, params, reference, expected


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    torch.testing.assert_close(
        as_real(actual).double().cpu(), as_real(expected).double().cpu(), **TOLERANCES[dtype], msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "case, decay",
    [(case, decay) for case in OPTIMIZER_CASES for decay in DECAYS if decay in case.decays],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_matches_reference(case, decay, dtype, path):
    optimizer, params, reference, expected = run_against_reference(case, decay, dtype, PATHS[path])
    for index, param in enumerate(params):
        assert_close(param.detach(), expected[index], dtype, f"parameter {index}")
        state = optimizer.state.get(param, {})
        reference_state = reference.state_tensors(index)
        if not case.state_keys:
            assert "momentum_buffer" not in state, "no momentum: no buffer is kept"
            continue
        assert set(case.state_keys) <= set(reference_state) | {"step"}
        for key in case.state_keys:
            if key not in reference_state:
                assert key not in state
                continue
            assert_close(state[key], reference_state[key], dtype, f"state {key!r} of parameter {index}")


def test_frozen_parameter_has_no_state_until_it_gets_a_gradient():
    case = OPTIMIZER_CASES[0]
    optimizer, params, _, _ = run_against_reference(case, "decoupled", torch.float64, {}, steps=12)
    assert optimizer.state.get(params[FROZEN_INDEX], {}) == {}
    frozen = params[FROZEN_INDEX].detach()
    torch.testing.assert_close(frozen.cpu(), initial_values()[FROZEN_INDEX], rtol=0, atol=0)


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda c: c.name)
def test_none_gradient_means_no_decay_and_no_state_change(case):
    param = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = case.make([{"params": [param], "lr": 0.1, "weight_decay": 0.5}], decay="constant")
    param.grad = torch.ones(3, dtype=torch.float64)
    optimizer.step()
    before = param.detach().clone()
    state_before = {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[param].items()}
    param.grad = None
    optimizer.step()
    torch.testing.assert_close(param.detach(), before, rtol=0, atol=0)
    for key, value in optimizer.state[param].items():
        torch.testing.assert_close(value, state_before[key], rtol=0, atol=0)

"""torch.amp: GradScaler skips steps with inf/NaN gradients (and decays nothing then); bf16 parameters train.

GradScaler.step(optimizer) unscales the gradients, checks them for inf/NaN and calls optimizer.step() only when
they are finite. None of this package's optimizers claims ``_step_supports_amp_scaling`` (decouple() sets it to
False even where the inner torch optimizer is fused), so the scaler, not the optimizer, decides to skip, and a
skipped step touches neither the parameters nor the optimizer state: no decay either.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import decoupled
from cases import INTEGRATION_CASES, batch, make_model, schedule, train_eagerly

CASES = dict(INTEGRATION_CASES)
CASES["AdamW-fused-l2"] = lambda p: decoupled.AdamW(p, lr=1e-2, weight_decay=0.05, decay="l2", fused=True)
CASES["SGDW-fused-lr"] = lambda p: decoupled.SGDW(p, lr=0.1, weight_decay=0.5, decay="lr", fused=True)
CASES["decouple(Adam, fused)"] = lambda p: decoupled.decouple(torch.optim.Adam)(
    p, lr=1e-2, weight_decay=0.05, fused=True
)
CASES["decouple(SGD)-constant"] = lambda p: decoupled.decouple(torch.optim.SGD)(
    p, lr=0.1, momentum=0.9, weight_decay=0.05, decay="constant"
)
CASES["decouple(RMSprop)-l2"] = lambda p: decoupled.decouple(torch.optim.RMSprop)(
    p, lr=1e-3, weight_decay=0.05, decay="l2"
)


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in model.parameters()]
    for state in optimizer.state.values():
        tensors += [value.clone() for value in state.values() if isinstance(value, torch.Tensor)]
    return tensors


def scaled_step(model, optimizer, scaler, step, corrupt=None):
    x, y = batch(step)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.mse_loss(model(x), y)
    scaler.scale(loss).backward()
    if corrupt is not None:
        model[0].weight.grad[1, 2] = corrupt
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()


@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("case", list(CASES))
def test_grad_scaler_skips_nonfinite_steps_without_decay(case: str, bad: float) -> None:
    model = make_model()
    optimizer = CASES[case](model.parameters())
    scheduler = schedule(optimizer)
    assert not getattr(optimizer, "_step_supports_amp_scaling", False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaled_step(model, optimizer, scaler, 0)  # a real step first, so that there is optimizer state to keep
    scheduler.step()
    before, scale = snapshot(model, optimizer), scaler.get_scale()

    scaled_step(model, optimizer, scaler, 1, corrupt=bad)

    after = snapshot(model, optimizer)
    assert len(after) == len(before)
    for old, new in zip(before, after):
        assert torch.equal(old, new)  # bit for bit: no update, no decay, no step count
    assert scaler.get_scale() == scale / 2  # the scaler saw the inf/NaN and backed off
    scaled_step(model, optimizer, scaler, 2)  # and the next finite step goes through
    assert not torch.equal(before[0], model[0].weight)


@pytest.mark.parametrize("case", list(CASES))
def test_grad_scaler_step_is_the_plain_step(case: str) -> None:
    # Scaling by a power of two and unscaling are exact, so scaler.step(opt) == opt.step() bit for bit.
    runs = []
    for use_scaler in (False, True):
        model = make_model()
        optimizer = CASES[case](model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=use_scaler)
        for step in range(3):
            scaled_step(model, optimizer, scaler, step)
        runs.append(snapshot(model, optimizer))
    for plain, scaled in zip(*runs):
        assert torch.equal(plain, scaled)


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_parameters_train_on_every_path(case: str) -> None:
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, optimizer = train_eagerly(CASES[case], 4, dtype)
        runs[dtype] = model
        own_steps = isinstance(optimizer, (decoupled.AdamW, decoupled.SGDW))
        for state in optimizer.state.values():
            for key, value in state.items():
                if key == "remainder":  # precision="exact" (the default): the float32 master's low bits
                    assert dtype == torch.bfloat16 and value.dtype == torch.bfloat16
                elif key != "step" and isinstance(value, torch.Tensor):
                    # AdamW/SGDW step bf16 parameters in float32 with float32 moments; decouple()'s inner
                    # optimizers keep theirs in the parameters' dtype
                    assert value.dtype == (torch.float32 if own_steps else dtype), key
    initial = make_model()
    for p32, p16, p0 in zip(runs[torch.float32].parameters(), runs[torch.bfloat16].parameters(), initial.parameters()):
        assert p16.dtype == torch.bfloat16 and torch.isfinite(p16).all()
        # bf16 keeps 8 bits of mantissa: within a few bf16 ulps of the float32 run, and clearly trained.
        torch.testing.assert_close(p16.float(), p32, rtol=2e-2, atol=1e-2)
        assert (p16.float() - p0).abs().max() > 1e-2


def test_autocast_forward_with_float32_parameters() -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    optimizer = decoupled.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    x, y = batch(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        assert out.dtype == torch.bfloat16
        loss = nn.functional.mse_loss(out.float(), y)
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    optimizer.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))

"""torch.compile: a compiled model trains with these optimizers, and optimizer.step() may sit in compiled code.

step() of AdamW, SGDW and decouple()-made optimizers runs eagerly under torch.compile (a graph break around
the call; see ``_eager_under_compile`` in optimizers.py): tracing it would fail on torch's fused Adam op and on
the native SGD kernel (a ctypes call), and would recompile at every step of a schedule. So a compiled training
step must give the eager result and compile once, whatever the kernel path and the schedule.

Backends: "aot_eager" runs Dynamo and AOTAutograd, where the interaction with the optimizer lives, in a second
or two per graph. "inductor" also generates C++ for the model, ~30 s per compile on a 2-core CPU: one test
covers it, the rest use aot_eager.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as torch_dynamo
from torch import nn

import decoupled
from cases import INTEGRATION_CASES, batch, make_model, schedule, train_eagerly

CASES = dict(INTEGRATION_CASES)
CASES["decouple(SGD)-l2"] = lambda p: decoupled.decouple(torch.optim.SGD)(p, lr=0.1, weight_decay=0.05, decay="l2")
STEPS = 4


def build(case: str, model: nn.Module):
    optimizer = CASES[case](model.parameters())
    return optimizer, schedule(optimizer)


def eager_run(case: str) -> list[torch.Tensor]:
    model, _ = train_eagerly(CASES[case], STEPS)
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch_dynamo.reset()
    yield
    torch_dynamo.reset()


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_optimizer_step_equals_eager_and_compiles_once(case: str) -> None:
    model = make_model()
    optimizer, scheduler = build(case, model)
    step = torch.compile(optimizer.step, backend="aot_eager")
    for index in range(STEPS):
        x, y = batch(index)
        nn.functional.mse_loss(model(x), y).backward()
        if index == 2:  # by now the wrapper is compiled; a new lr (a float) must not recompile anything
            torch_dynamo.config.error_on_recompile = True
        try:
            step()
        finally:
            torch_dynamo.config.error_on_recompile = False
        scheduler.step()
        optimizer.zero_grad()
    for actual, expected in zip(model.parameters(), eager_run(case)):
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("case", ["AdamW-default", "SGDW-default", "AdamW-foreach", "decouple(Adam)"])
def test_compiled_training_step(case: str) -> None:
    # forward, backward and optimizer.step() in one compiled function; the scheduler steps outside.
    model = make_model()
    optimizer, scheduler = build(case, model)

    @torch.compile(backend="aot_eager")
    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    for step in range(STEPS):
        train_step(*batch(step))
        scheduler.step()
    # aot_eager runs the same ATen ops as eager mode: equal to the last bit.
    for actual, expected in zip(model.parameters(), eager_run(case)):
        assert torch.equal(actual, expected)


@pytest.mark.slow
def test_inductor_compiled_model_trains() -> None:
    # The usual use: torch.compile(model) with the default backend; the optimizer steps eagerly on its parameters.
    model = make_model()
    compiled = torch.compile(model)
    optimizer, scheduler = build("AdamW-default", model)
    for step in range(STEPS):
        x, y = batch(step)
        nn.functional.mse_loss(compiled(x), y).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    # inductor fuses and reorders the model's float32 arithmetic: equal to round-off, not to the bit.
    for actual, expected in zip(model.parameters(), eager_run("AdamW-default")):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)

"""state_dict round trips: a run stopped and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import decoupled
from cases import PATHS

TOTAL, STOP_AT = 24, 9


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(16, 5, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def train(model, optimizer, scheduler, steps: range) -> None:
    for step in steps:
        x, y = batch(step)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if step % 4 == 3:  # a frozen layer at some steps: None gradients
            model[0].weight.grad = None
        optimizer.step()
        scheduler.step()


OPTIMIZERS = {
    "AdamW": lambda groups, path: decoupled.AdamW(groups, lr=0.01, weight_decay=0.01, amsgrad=True, **path),
    "SGDW": lambda groups, path: decoupled.SGDW(groups, lr=0.1, momentum=0.9, nesterov=True, **path),
    "AdamW-l2": lambda groups, path: decoupled.AdamW(groups, lr=0.01, weight_decay=0.01, decay="l2", **path),
    "decouple(RMSprop)": lambda groups, path: decoupled.decouple(torch.optim.RMSprop)(
        groups, lr=0.01, momentum=0.5, weight_decay=0.01, **path
    ),
}
SCHEDULERS = {
    "warm-restarts-normalized": lambda opt: decoupled.CosineWarmRestarts(
        opt, first_period=1.0, steps_per_epoch=4, period_mult=2, weight_decay_norm=0.05
    ),
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=TOTAL),
}


def build(optimizer_name: str, scheduler_name: str, path: dict):
    model = make_model()
    groups = decoupled.param_groups(model, weight_decay=0.01)
    optimizer = OPTIMIZERS[optimizer_name](groups, path)
    return model, optimizer, SCHEDULERS[scheduler_name](optimizer)


@pytest.mark.parametrize("scheduler_name", list(SCHEDULERS))
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_resume_is_bit_identical(optimizer_name, path, scheduler_name):
    path_options = PATHS[path] if optimizer_name != "decouple(RMSprop)" else {k: v for k, v in PATHS[path].items() if k != "fused"}
    model, optimizer, scheduler = build(optimizer_name, scheduler_name, path_options)
    train(model, optimizer, scheduler, range(TOTAL))

    model_a, optimizer_a, scheduler_a = build(optimizer_name, scheduler_name, path_options)
    train(model_a, optimizer_a, scheduler_a, range(STOP_AT))
    buffer = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "optimizer": optimizer_a.state_dict(),
                "scheduler": scheduler_a.state_dict()}, buffer)  # fmt: skip
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    model_b, optimizer_b, scheduler_b = build(optimizer_name, scheduler_name, path_options)
    model_b.load_state_dict(checkpoint["model"])
    optimizer_b.load_state_dict(checkpoint["optimizer"])
    scheduler_b.load_state_dict(checkpoint["scheduler"])
    train(model_b, optimizer_b, scheduler_b, range(STOP_AT, TOTAL))

    for (name, expected), actual in zip(model.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(expected, actual), name
    for p, q in zip(model.parameters(), model_b.parameters()):
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, optimizer_b.state[q][key]), key
    for group, group_b in zip(optimizer.param_groups, optimizer_b.param_groups):
        assert {k: v for k, v in group.items() if k != "params"} == {k: v for k, v in group_b.items() if k != "params"}


@pytest.mark.parametrize("torch_fused", [False, True])
@pytest.mark.parametrize("path", list(PATHS))
def test_torch_adamw_checkpoint_continues_identically_in_lr_convention(path, torch_fused):
    torch.set_default_dtype(torch.float64)
    try:
        model = make_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05, fused=torch_fused)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL)
        train(model, optimizer, scheduler, range(STOP_AT))
        checkpoint = copy.deepcopy(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        )
        train(model, optimizer, scheduler, range(STOP_AT, TOTAL))

        ours_model = make_model()
        ours_model.load_state_dict(checkpoint["model"])
        ours = decoupled.AdamW(ours_model.parameters(), decay="lr", **PATHS[path])
        ours_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(ours, T_max=TOTAL)
        ours.load_state_dict(checkpoint["optimizer"])
        ours_scheduler.load_state_dict(checkpoint["scheduler"])
        assert ours.param_groups[0]["decay"] == "lr" and ours.param_groups[0]["base_lr"] == 0.01
        train(ours_model, ours, ours_scheduler, range(STOP_AT, TOTAL))
        for p, q in zip(model.parameters(), ours_model.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
            for key in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(ours.state[q][key].double(), optimizer.state[p][key].double(), rtol=1e-12, atol=1e-14)
    finally:
        torch.set_default_dtype(torch.float32)


def test_deepcopy_of_an_optimizer_keeps_groups_and_state():
    model = make_model()
    optimizer = decoupled.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL)
    train(model, optimizer, scheduler, range(3))
    clone = copy.deepcopy(optimizer)
    assert clone.param_groups[0]["decay"] == "decoupled"
    assert clone.param_groups[0]["base_lr"] == 0.01
    assert len(clone.state) == len(optimizer.state)

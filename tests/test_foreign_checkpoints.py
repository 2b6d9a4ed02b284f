"""Checkpoints of torch's own optimizers loaded into this package's: converted exactly, or kept, never silently
reinterpreted (a torch.optim.AdamW weight_decay=0.01 read as the paper's 0.01 per step is 1000x its decay)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import decoupled

TOTAL, STOP_AT = 16, 6


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()


def train(model, optimizer, scheduler, steps) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(8, 4, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        scheduler.step()


def torch_run(make_optimizer):
    """A torch optimizer trained to STOP_AT (checkpointed there), then to TOTAL under a cosine schedule."""
    model = make_model()
    optimizer = make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=TOTAL)
    train(model, optimizer, scheduler, range(STOP_AT))
    checkpoint = copy.deepcopy(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    )
    train(model, optimizer, scheduler, range(STOP_AT, TOTAL))
    return model, checkpoint


def resume(checkpoint, make_ours):
    model = make_model()
    model.load_state_dict(checkpoint["model"])
    ours = make_ours(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(ours, T_max=TOTAL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    return model, ours, scheduler, [str(w.message) for w in caught]


def assert_same_params(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("path", [{}, {"foreach": True}, {"foreach": False, "fused": False}], ids=str)
def test_torch_adamw_checkpoint_is_converted_exactly_into_the_default_convention(path):
    reference, checkpoint = torch_run(lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05))
    model, ours, scheduler, messages = resume(checkpoint, lambda p: decoupled.AdamW(p, **path))
    group = ours.param_groups[0]
    assert group["decay"] == "decoupled" and group["base_lr"] == 0.01
    assert group["weight_decay"] == pytest.approx(0.05 * 0.01)  # torch's w is w * base_lr in the paper's units
    assert len(messages) == 1 and "weight_decay=0.05 converted to decay='decoupled'" in messages[0]
    assert decoupled.effective_decay(ours) == [pytest.approx(group["lr"] * 0.05)]
    train(model, ours, scheduler, range(STOP_AT, TOTAL))
    assert_same_params(reference, model)


def test_torch_adamw_checkpoint_still_continues_silently_in_the_lr_convention():
    reference, checkpoint = torch_run(lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05))
    model, ours, scheduler, messages = resume(checkpoint, lambda p: decoupled.AdamW(p, decay="lr"))
    assert messages == [] and ours.param_groups[0]["weight_decay"] == 0.05
    train(model, ours, scheduler, range(STOP_AT, TOTAL))
    assert_same_params(reference, model)


def test_torch_adam_l2_checkpoint_keeps_its_convention_with_a_warning():
    reference, checkpoint = torch_run(lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.05))
    model, ours, scheduler, messages = resume(checkpoint, lambda p: decoupled.AdamW(p))
    assert ours.param_groups[0]["decay"] == "l2" and ours.param_groups[0]["weight_decay"] == 0.05
    assert len(messages) == 1 and "keeps the checkpoint's convention decay='l2'" in messages[0]
    train(model, ours, scheduler, range(STOP_AT, TOTAL))
    assert_same_params(reference, model)


def test_torch_adamw_checkpoint_into_decouple_adam_is_converted():
    reference, checkpoint = torch_run(lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05))
    model, ours, scheduler, messages = resume(checkpoint, lambda p: decoupled.decouple(torch.optim.Adam)(p, lr=0.01))
    assert ours.param_groups[0]["decay"] == "decoupled" and len(messages) == 1
    train(model, ours, scheduler, range(STOP_AT, TOTAL))
    assert_same_params(reference, model)


def test_a_checkpoint_whose_convention_cannot_be_told_is_refused():
    model = make_model()
    state = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05).state_dict()
    del state["param_groups"][0]["decoupled_weight_decay"]  # as an older torch wrote it, or another library
    with pytest.raises(ValueError, match=r"cannot tell the weight-decay convention of a loaded param group"):
        decoupled.AdamW(make_model().parameters()).load_state_dict(state)
    ours = decoupled.AdamW(make_model().parameters(), decay="lr")
    ours.load_state_dict(state)  # decay="lr" reads it as torch.optim.AdamW's, as before
    assert ours.param_groups[0]["decay"] == "lr"
    state["param_groups"][0]["decay"] = "lr"  # the documented way to say it
    told = decoupled.AdamW(make_model().parameters())
    told.load_state_dict(state)
    assert told.param_groups[0]["decay"] == "lr" and told.param_groups[0]["weight_decay"] == 0.05


def test_a_torch_checkpoint_without_weight_decay_loads_silently():
    state = torch.optim.Adam(make_model().parameters(), lr=0.01).state_dict()
    ours = decoupled.AdamW(make_model().parameters(), weight_decay=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.load_state_dict(state)
    assert ours.param_groups[0]["decay"] == "decoupled" and ours.param_groups[0]["weight_decay"] == 0


def test_this_packages_own_checkpoints_load_without_a_warning():
    a = decoupled.AdamW(make_model().parameters(), weight_decay=1e-4)
    b = decoupled.AdamW(make_model().parameters(), decay="lr", weight_decay=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b.load_state_dict(a.state_dict())
    assert b.param_groups[0]["decay"] == "decoupled" and b.param_groups[0]["weight_decay"] == 1e-4

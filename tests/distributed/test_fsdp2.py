"""FSDP2 (fully_shard, DTensor parameters): 2 gloo processes on CPU train like one process on the full batch.

Every optimizer case runs 5 steps under an SGDR schedule with sharded parameters, gradients and optimizer
state (tensors of 3 and 1 elements split 2 + 1 and 1 + 0, so a rank may hold an empty shard); the gathered
parameters and optimizer state must match the single-process run to float64 round-off.
"""

from __future__ import annotations

import pytest
import torch
from dist_harness import CASES, STEPS, assert_same, build, make_model, reference, run, snapshot, train
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor


def shard(model: torch.nn.Module) -> torch.nn.Module:
    fully_shard(model.inp)
    fully_shard(model.out)
    fully_shard(model)
    return model


def fsdp_task(rank: int, world_size: int, cases: list[str]) -> dict:
    results = {}
    for case in cases:
        model = shard(make_model())
        optimizer, scheduler = build(case, model)
        train(model, optimizer, scheduler, range(STEPS), rank, world_size)
        assert model.unused.grad is None and model.frozen.weight.grad is None
        # Every state tensor but the step counts (plain scalars, as in torch.optim) is sharded like its parameter.
        plain_state = [
            key
            for state in optimizer.state.values()
            for key, value in state.items()
            if key != "step" and isinstance(value, torch.Tensor) and not isinstance(value, DTensor)
        ]
        results[case] = snapshot(model, optimizer)  # gathers: a collective, same order on every rank
        results[case]["plain_state"] = plain_state
    return results


@pytest.fixture(scope="module")
def fsdp_results() -> dict:
    return run(fsdp_task, list(CASES))


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp2_matches_one_process(fsdp_results: dict, case: str) -> None:
    result = dict(fsdp_results[case])
    assert result.pop("plain_state") == [], "optimizer state should be DTensors, sharded like the parameters"
    assert_same(result, reference(case))
    initial = dict(make_model().named_parameters())
    for name in ("frozen.weight", "frozen.bias", "unused"):
        assert torch.equal(result[name], initial[name].detach())

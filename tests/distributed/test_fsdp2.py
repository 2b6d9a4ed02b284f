"""FSDP2 (fully_shard, DTensor parameters): 2 gloo processes on CPU train like one process on the full batch.

Every optimizer case runs 5 steps under an SGDR schedule with sharded parameters, gradients and optimizer
state (tensors of 3 and 1 elements split 2 + 1 and 1 + 0, so a rank may hold an empty shard); the gathered
parameters and optimizer state must match the single-process run to float64 round-off. Hand-made DTensors
with other placements (Shard(1), Replicate, and gradients placed otherwise, Partial included) follow too.
"""

from __future__ import annotations

import pytest
import torch
from dist_harness import (
    CASES, STEPS, assert_frozen_and_unused_untouched, assert_same, build, make_model, reference, run, shard, snapshot,
    train,
)  # fmt: skip
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor, init_device_mesh

# Beyond FSDP2's Shard(0): (parameter placement, gradient placement). A gradient placed unlike its parameter
# (a Partial sum, as tensor parallelism leaves it, or a replica) is redistributed to the parameter's placement.
PLACEMENTS = {
    "Shard(1)/Shard(1)": (Shard(1), Shard(1)),
    "Shard(1)/Partial": (Shard(1), Partial()),
    "Shard(0)/Replicate": (Shard(0), Replicate()),
    "Replicate/Replicate": (Replicate(), Replicate()),
}
PLACEMENT_CASES = ["AdamW-forloop", "AdamW-fused", "SGDW-foreach", "SGDW-fused"]


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
    return {"fsdp2": results, "placements": placements_task(rank, world_size)}


def placement_inputs(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(4, 6, generator=generator, dtype=torch.float64), torch.randn(4, 6, generator=generator,
                                                                                  dtype=torch.float64)  # fmt: skip


def placements_task(rank: int, world_size: int) -> dict:
    mesh = init_device_mesh("cpu", (world_size,))
    results = {}
    for case in PLACEMENT_CASES:
        for name, (param_placement, grad_placement) in PLACEMENTS.items():
            weight, _ = placement_inputs(0)
            param = torch.nn.Parameter(distribute_tensor(weight, mesh, [param_placement]))
            optimizer = CASES[case]([param])
            for step in range(3):
                _, grad = placement_inputs(step + 1)
                if isinstance(grad_placement, Partial):  # each rank holds a share of the sum
                    param.grad = DTensor.from_local(grad / world_size, mesh, [Partial()])
                else:
                    param.grad = distribute_tensor(grad, mesh, [grad_placement])
                optimizer.step()
            assert param.placements == (param_placement,)
            results[case, name] = param.full_tensor()
    return results


@pytest.fixture(scope="module")
def results() -> dict:
    return run(fsdp_task, list(CASES))


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp2_matches_one_process(results: dict, case: str) -> None:
    result = dict(results["fsdp2"][case])
    assert result.pop("plain_state") == [], "optimizer state should be DTensors, sharded like the parameters"
    assert_same(result, reference(case))
    assert_frozen_and_unused_untouched(result)


@pytest.mark.parametrize("placements", list(PLACEMENTS))
@pytest.mark.parametrize("case", PLACEMENT_CASES)
def test_other_dtensor_placements_match_one_process(results: dict, case: str, placements: str) -> None:
    weight, _ = placement_inputs(0)
    param = torch.nn.Parameter(weight)
    optimizer = CASES[case]([param])
    for step in range(3):
        param.grad = placement_inputs(step + 1)[1]
        optimizer.step()
    assert_same({"param": results["placements"][case, placements]}, {"param": param.detach()})

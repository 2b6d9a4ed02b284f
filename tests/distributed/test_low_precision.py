"""bfloat16 models under DDP, FSDP2 and torch.distributed.checkpoint keep their exact masters (decoupled.precision).

Two gloo ranks train a bf16 model 5 steps. DDP: the replicas end identical bit for bit, remainders included.
FSDP2: the remainder is sharded like its parameter (a DTensor of the bf16-typed low bits). DCP: a run saved at
step 3 and resumed in fresh ranks from another initialisation equals the uninterrupted run bit for bit, masters
and moments included; the state's dtypes (remainders, int64 rounding streams, float32 moments) survive the load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from dist_harness import LR, SGD_LR, WEIGHT_DECAY, make_model, param_groups, run, schedule, shard, snapshot, train
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

import decoupled

STEPS, SAVE_AT = 5, 3
CASES = {
    "AdamW-exact": lambda groups: decoupled.AdamW(groups, lr=LR, weight_decay=WEIGHT_DECAY),
    "AdamW-stochastic": lambda groups: decoupled.AdamW(
        groups, lr=LR, weight_decay=WEIGHT_DECAY, precision="stochastic", seed=3
    ),
    "SGDW-exact": lambda groups: decoupled.SGDW(groups, lr=SGD_LR, momentum=0.9, weight_decay=WEIGHT_DECAY),
    "decouple(Adam)-exact": lambda groups: decoupled.decouple(torch.optim.Adam)(
        groups, lr=LR, weight_decay=WEIGHT_DECAY
    ),
}


def build(case: str, model: torch.nn.Module):
    optimizer = CASES[case](param_groups(model, SGD_LR if "SGD" in case else LR))
    return optimizer, schedule(optimizer)


def bf16_model(seed: int = 0) -> torch.nn.Module:
    model = make_model(seed, dtype=torch.bfloat16)
    model.unused.requires_grad_(False)  # see test_checkpoint.freeze_unused
    return model


def state_dtypes(optimizer: torch.optim.Optimizer) -> set[tuple[str, torch.dtype, bool]]:
    return {
        (key, value.dtype, isinstance(value, DTensor))
        for state in optimizer.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and key != "step"
    }


def ddp_task(rank: int, world_size: int) -> dict:
    results = {}
    for case in CASES:
        model = bf16_model()
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        optimizer, scheduler = build(case, model)
        train(ddp, optimizer, scheduler, range(STEPS), rank, world_size)
        mine = snapshot(model, optimizer)
        replicas = [None] * world_size
        dist.all_gather_object(replicas, mine)
        results[case] = (replicas, state_dtypes(optimizer))
    return results


def fsdp_dcp_task(rank: int, world_size: int, root: str) -> dict:
    results = {}
    for case in CASES:
        path = Path(root) / case
        model = shard(bf16_model())
        optimizer, scheduler = build(case, model)
        train(model, optimizer, scheduler, range(SAVE_AT), rank, world_size)
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optimizer_state}, checkpoint_id=path)
        dist.barrier()
        train(model, optimizer, scheduler, range(SAVE_AT, STEPS), rank, world_size)
        uninterrupted = snapshot(model, optimizer)
        dtypes = state_dtypes(optimizer)

        model = shard(bf16_model(seed=1))
        optimizer, scheduler = build(case, model)
        train(model, optimizer, scheduler, range(SAVE_AT), rank, world_size)  # the scheduler's steps, a state
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optimizer_state}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        train(model, optimizer, scheduler, range(SAVE_AT, STEPS), rank, world_size)
        results[case] = (uninterrupted, snapshot(model, optimizer), dtypes, state_dtypes(optimizer))
    return results


@pytest.fixture(scope="module")
def ddp_results() -> dict:
    return run(ddp_task)


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run(fsdp_dcp_task, str(tmp_path_factory.mktemp("dcp-bf16")))


def _assert_bits(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        assert torch.equal(actual[name], value) or (value.isnan() == actual[name].isnan()).all(), name


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_replicas_keep_identical_masters(ddp_results: dict, case: str) -> None:
    replicas, dtypes = ddp_results[case]
    for other in replicas[1:]:
        _assert_bits(other, replicas[0])
    kept = {key for key, _, _ in dtypes}
    assert ("remainder" in kept) == ("exact" in case) and ("rounding_stream" in kept) == ("stochastic" in case)
    assert any(name.endswith("/remainder") or name.endswith("/rounding_stream") for name in replicas[0])


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp2_shards_the_remainder_and_dcp_resumes_bit_for_bit(fsdp_results: dict, case: str) -> None:
    uninterrupted, resumed, dtypes, resumed_dtypes = fsdp_results[case]
    _assert_bits(resumed, uninterrupted)
    assert resumed_dtypes == dtypes
    if "exact" in case:
        assert ("remainder", torch.bfloat16, True) in dtypes  # sharded like its parameter (bf16-typed bits)
    if case.startswith(("AdamW", "SGDW")):
        assert any(dtype == torch.float32 for key, dtype, _ in dtypes if key != "remainder")

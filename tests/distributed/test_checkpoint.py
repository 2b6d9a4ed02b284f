"""Sharded optimizer state through torch.distributed.checkpoint (DCP) under FSDP2.

Two gloo ranks train 3 steps, save model and optimizer with get_state_dict + dcp.save, and go on to step 5.
Fresh ranks (another init) load the checkpoint with dcp.load + set_state_dict and train steps 3-5: the result
must equal the uninterrupted run bit for bit. One process then resumes from the same 2-rank checkpoint
(resharded on load) and must match the single-process run to float64 round-off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from dist_harness import STEPS, assert_same, build, make_model, reference, run, shard, snapshot, train
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

SAVE_AT = 3
# The fused paths (torch's fused AdamW; the native SGD kernel on local shards), the coupled convention on the
# for-loop path, and a decouple()-made optimizer.
DCP_CASES = ["AdamW-default", "SGDW-default", "AdamW-forloop-l2", "decouple(Adam)"]


def freeze_unused(model: torch.nn.Module) -> torch.nn.Module:
    # A trainable parameter that never gets a gradient has no optimizer state when saved, but get_state_dict()
    # of a fresh optimizer creates state for every trainable parameter (by a zero-gradient step at lr=0), so
    # dcp.load would miss "optim.state.unused.step". Freeze it (docs/distributed.md names the alternatives).
    model.unused.requires_grad_(False)
    return model


def save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, path: Path, rank: int) -> None:
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optimizer_state}, checkpoint_id=path)
    if rank == 0:  # the scheduler's state is a few numbers, the same on every rank
        torch.save(scheduler.state_dict(), path / "scheduler.pt")


def load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, path: Path) -> None:
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optimizer_state}
    # Fills the (sharded) tensors of `state` in place; without a process group, one process reads every shard.
    dcp.load(state, checkpoint_id=path, no_dist=not torch.distributed.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(torch.load(path / "scheduler.pt"))


def dcp_task(rank: int, world_size: int, cases: list[str], root: str) -> dict:
    results = {}
    for case in cases:
        path = Path(root) / case
        model = shard(freeze_unused(make_model()))
        optimizer, scheduler = build(case, model)
        train(model, optimizer, scheduler, range(SAVE_AT), rank, world_size)
        save(model, optimizer, scheduler, path, rank)
        torch.distributed.barrier()
        train(model, optimizer, scheduler, range(SAVE_AT, STEPS), rank, world_size)
        uninterrupted = snapshot(model, optimizer)

        model = shard(freeze_unused(make_model(seed=1)))  # another init: only the checkpoint can make it right
        optimizer, scheduler = build(case, model)
        load(model, optimizer, scheduler, path)
        train(model, optimizer, scheduler, range(SAVE_AT, STEPS), rank, world_size)
        results[case] = (uninterrupted, snapshot(model, optimizer))
    return results


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dcp")
    return root, run(dcp_task, DCP_CASES, str(root))


@pytest.mark.parametrize("case", DCP_CASES)
def test_resumed_run_equals_uninterrupted_run(checkpoints: tuple[Path, dict], case: str) -> None:
    uninterrupted, resumed = checkpoints[1][case]
    assert_same(resumed, uninterrupted, exact=True)
    assert_same(uninterrupted, reference(case))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # DCP's note: one process
@pytest.mark.parametrize("case", DCP_CASES)
def test_one_process_resumes_from_the_sharded_checkpoint(checkpoints: tuple[Path, dict], case: str) -> None:
    model = freeze_unused(make_model(seed=1))
    optimizer, scheduler = build(case, model)
    load(model, optimizer, scheduler, checkpoints[0] / case)  # no process group: DCP reshards 2 -> 1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(scheduler.get_last_lr()[0])
    train(model, optimizer, scheduler, range(SAVE_AT, STEPS))
    assert_same(snapshot(model, optimizer), reference(case))


@pytest.mark.parametrize("case", ["AdamW-default", "SGDW-default", "AdamW-forloop-l2", "decouple(Adam)-lr"])
def test_state_dict_of_a_fresh_optimizer_leaves_the_parameters_alone(case: str) -> None:
    # get_state_dict() steps a fresh optimizer once with zero gradients at lr=0 to create its state. Every
    # convention but "constant" (which decays by weight_decay whatever the lr) then changes nothing.
    model = make_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer, _ = build(case, model)
    get_state_dict(model, optimizer)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
